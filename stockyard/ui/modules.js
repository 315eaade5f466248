// Modules: switch each module of the request chain on or off and edit its options from the schema;
// a 400 names the option in error.param ("guard.max_tokens") and is shown next to that field.

import { enc, get, patch, post } from "./api.js";
import { field, h, mount } from "./dom.js";

/** An input for one option, and how to read its value back (throws a message for bad JSON). */
function optionInput(name, spec, value) {
  const id = `opt-${name}`;
  if (spec.type === "bool") {
    const el = h("input", { type: "checkbox", id, checked: Boolean(value) });
    return { el, read: () => el.checked };
  }
  if (spec.type === "enum") {
    const el = h("select", { id }, spec.choices.map((c) => h("option", { value: c, selected: c === value }, c)));
    return { el, read: () => el.value };
  }
  if (spec.type === "int" || spec.type === "float") {
    const el = h("input", { type: "number", id, value: value ?? "", step: spec.type === "int" ? 1 : "any",
      min: spec.min ?? null, max: spec.max ?? null });
    return { el, read: () => (el.value === "" ? null : Number(el.value)) };
  }
  if (spec.type === "list" || spec.type === "dict") {
    const el = h("textarea", { id, rows: 3 }, JSON.stringify(value ?? spec.default, null, 1));
    return { el, read: () => {
      try { return JSON.parse(el.value); } catch { throw new Error(`not valid JSON: write a ${spec.type === "list" ? "[…] list" : "{…} object"}`); }
    } };
  }
  const el = h("input", { id, value: value ?? "" });
  return { el, read: () => el.value };
}

function moduleCard(m, reload) {
  const message = h("p", { role: "alert" });
  const errors = {};
  const readers = {};
  const fields = Object.entries(m.options).map(([name, spec]) => {
    const input = optionInput(`${m.name}-${name}`, spec, m.config[name]);
    readers[name] = input;
    errors[name] = h("small", { class: "error" });
    return field(name, input.el, [h("small", {}, spec.help), h("br", {}), errors[name]]);
  });
  const clearErrors = () => {
    message.textContent = "";
    for (const [name, el] of Object.entries(errors)) { el.textContent = ""; readers[name].el.removeAttribute("aria-invalid"); }
  };
  const showError = (param, text) => {
    const name = param && param.startsWith(m.name + ".") ? param.slice(m.name.length + 1).split(".")[0] : param;
    if (errors[name]) {
      errors[name].textContent = text;
      readers[name].el.setAttribute("aria-invalid", "true");
      readers[name].el.focus();
    } else {
      message.className = "error";
      message.textContent = text;
    }
  };
  const save = async (e) => {
    e.preventDefault();
    clearErrors();
    const config = {};
    for (const [name, input] of Object.entries(readers)) {
      try { config[name] = input.read(); } catch (err) { return showError(name, err.message); }
    }
    try {
      await patch(`/api/modules/${enc(m.name)}`, { config });
      message.className = "ok";
      message.textContent = "Saved: the next request uses these options.";
    } catch (err) { showError(err.param, err.message); }
  };
  const toggle = async () => {
    try {
      await (m.enabled ? post(`/api/modules/${enc(m.name)}/disable`) : post(`/api/modules/${enc(m.name)}/enable`));
      await reload();
    } catch (err) { showError(null, err.message); }
  };
  return h("section", { class: "card module", id: `module-${m.name}` },
    h("header", {}, h("h2", {}, `${m.position}. ${m.name} `,
      h("span", { class: m.enabled ? "badge good" : "badge" }, m.enabled ? "on" : "off")),
    h("button", { type: "button", class: m.enabled ? "secondary" : "", "aria-pressed": String(m.enabled), onclick: toggle },
      m.enabled ? `Turn ${m.name} off` : `Turn ${m.name} on`)),
    h("p", { class: "muted" }, m.summary.replace(/``/g, "")),
    m.status ? h("details", {}, h("summary", {}, "run-time state"), h("pre", {}, JSON.stringify(m.status, null, 2))) : null,
    fields.length ? h("form", { class: "inline", onsubmit: save }, fields, h("button", { type: "submit" }, "Save options"))
      : h("p", { class: "muted" }, "No options: its settings live on the keys and projects."),
    message);
}

export async function modules(view) {
  const reload = async () => {
    const { modules: list } = await get("/api/modules");
    mount(view, h("h1", {}, "Modules"),
      h("p", { class: "muted" }, "Every request passes these modules in order. Changes apply from the next request."),
      list.map((m) => moduleCard(m, reload)));
  };
  await reload();
}

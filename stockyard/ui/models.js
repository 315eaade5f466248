// Models: each model clients name with its deployments and their live health (refreshed every
// second from the server's memory): in flight (and reserved), time to first byte, cooling down until, breaker
// state, rpm/tpm used against the limits. Add and remove deployments, change the strategy.

import { del, enc, get, patch, post } from "./api.js";
import { field, h, mount, table } from "./dom.js";

const REFRESH_MS = 1000;

function used(value, limit) {
  return limit ? `${value} / ${limit}` : `${value}`;
}

/** In flight, and beside it the requests the deployment was chosen for that are not sent yet
 * (`reserved`: least-busy and latency count them busy too; one that never falls is a leak). */
function inFlight(d) {
  const live = d.health;
  if (!live) return "";
  if (!live.reserved) return String(live.in_flight);
  return h("span", {}, String(live.in_flight),
    h("span", { class: "muted", title: "chosen for requests not sent yet: counted busy" }, ` + ${live.reserved} reserved`));
}

function state(d) {
  const live = d.health;
  if (!live) return h("span", { class: "badge bad", title: d.key_status }, "not routed");
  if (live.breaker !== "closed") return h("span", { class: "badge bad" }, `breaker ${live.breaker}`);
  if (live.cooling_down_s > 0) {
    const until = new Date(live.cooldown_until * 1000).toISOString().slice(11, 19);
    return h("span", { class: "badge bad", title: `${live.cooling_down_s}s left` }, `cooling down until ${until} UTC`);
  }
  return h("span", { class: "badge good" }, "ready");
}

export async function models(view) {
  const message = h("p", { role: "alert" });
  const list = h("div", { id: "models-list" });
  const say = (cls, text) => { message.className = cls; message.textContent = text; };
  let strategies = ["weighted"];

  const act = async (fn, done) => {
    try {
      await fn();
      say("ok", done);
      await refresh();
    } catch (err) { say("error", err.message + (err.param ? ` (${err.param})` : "")); }
  };

  const strategyPicker = (m) => h("select", {
    "aria-label": `strategy of ${m.name}`,
    onchange: (e) => act(() => patch(`/api/models/${enc(m.name)}`, { strategy: e.target.value }), `${m.name}: ${e.target.value}.`),
  }, strategies.map((s) => h("option", { value: s, selected: s === m.strategy }, s)));

  const refresh = async () => {
    const body = await get("/api/models");
    strategies = body.strategies;
    mount(list, body.data.length ? body.data.map((m) => h("section", { class: "card model", "data-model": m.name },
      h("h2", {}, m.name, " ", strategyPicker(m),
        h("button", { type: "button", class: "small danger",
          onclick: () => window.confirm(`Remove model ${m.name} and its deployments?`) &&
            act(() => del(`/api/models/${enc(m.name)}`), `Removed ${m.name}.`) }, "Remove model")),
      (m.fallbacks.length || m.context_fallback) ? h("p", { class: "muted" },
        m.fallbacks.length ? `then: ${m.fallbacks.join(", ")}. ` : "",
        m.context_fallback ? `context too long: ${m.context_fallback}.` : "") : null,
      m.problems.map((p) => h("p", { class: "error" }, p)),
      table([
        { label: "deployment", value: (d) => d.name },
        { label: "provider / model", value: (d) => h("code", {}, `${d.provider}/${d.model}`) },
        { label: "weight", value: (d) => String(d.weight) },
        { label: "priority", value: (d) => String(d.priority) },
        { label: "key", value: (d) => d.key || "provider's" },
        { label: "health", value: state },
        { label: "in flight", value: inFlight },
        { label: "TTFB", value: (d) => d.health && d.health.ttfb_ms !== null ? `${d.health.ttfb_ms} ms` : "" },
        { label: "rpm", value: (d) => d.health ? used(d.health.rpm_used, d.rpm) : "" },
        { label: "tpm", value: (d) => d.health ? used(d.health.tpm_used, d.tpm) : "" },
        { label: "", value: (d) => h("button", { type: "button", class: "small danger",
          onclick: () => act(() => del(`/api/models/${enc(m.name)}/deployments/${enc(d.name)}`), `Removed ${d.name}.`) }, "Remove") },
      ], m.deployments, { empty: "No deployments: this name routes like any other.", rowAttrs: (d) => ({ "data-deployment": d.name }) }),
    )) : h("p", { class: "empty" }, "No models yet: add a deployment below."));
  };

  const inputs = {
    model: h("input", { required: true, size: 14, placeholder: "chat-prod" }),
    provider: h("input", { required: true, size: 10, placeholder: "openai" }),
    upstream: h("input", { required: true, size: 14, placeholder: "gpt-4o" }),
    weight: h("input", { type: "number", min: 1, value: 1, size: 4 }),
    priority: h("input", { type: "number", min: 0, value: 0, size: 4 }),
    rpm: h("input", { type: "number", min: 1, size: 6 }),
    tpm: h("input", { type: "number", min: 1, size: 8 }),
    api_key: h("input", { type: "password", autocomplete: "off", size: 14, placeholder: "provider's" }),
  };
  const addForm = h("form", { class: "inline", onsubmit: (e) => {
    e.preventDefault();
    const body = { provider: inputs.provider.value.trim(), model: inputs.upstream.value.trim(),
      weight: Number(inputs.weight.value), priority: Number(inputs.priority.value) };
    for (const limit of ["rpm", "tpm"]) if (inputs[limit].value) body[limit] = Number(inputs[limit].value);
    if (inputs.api_key.value) body.api_key = inputs.api_key.value;
    const name = inputs.model.value.trim();
    act(async () => { await post(`/api/models/${enc(name)}/deployments`, body); addForm.reset(); }, `Added a deployment to ${name}.`);
  } }, Object.entries(inputs).map(([n, i]) => field(n === "upstream" ? "upstream model" : n.replace("_", " "), i)),
  h("button", { type: "submit" }, "Add deployment"));

  mount(view, h("h1", {}, "Models"),
    h("p", { class: "muted" }, "Deployments of the lowest priority that is usable are picked by the model's strategy; one cooling down, with an open breaker or at its limit is skipped."),
    list, message, h("h2", {}, "Add a deployment"),
    h("p", { class: "muted" }, "The model is created when it does not exist. A key is write-only: stored encrypted, never shown again."),
    addForm);
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}

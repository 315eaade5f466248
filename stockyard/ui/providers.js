// Providers: list, add, replace a key (write-only), remove; which models route where.

import { del, enc, get, patch, post } from "./api.js";
import { field, h, mount, table } from "./dom.js";

export async function providers(view) {
  const message = h("p", { role: "alert" });
  const list = h("div", {});
  const routes = h("div", {});
  const say = (cls, text) => { message.className = cls; message.textContent = text; };

  const replaceKey = (p) => {
    const input = h("input", { type: "password", autocomplete: "off", size: 16, placeholder: "new key", "aria-label": `new key for ${p.name}` });
    return h("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await patch(`/api/providers/${enc(p.name)}`, { api_key: input.value });
        input.value = "";
        say("ok", `Replaced the key of ${p.name}.`);
        await refresh();
      } catch (err) { say("error", err.message); }
    } }, input, h("button", { type: "submit", class: "small" }, "Replace key"));
  };
  const remove = async (p) => {
    if (!window.confirm(`Remove provider ${p.name}?`)) return;
    try {
      await del(`/api/providers/${enc(p.name)}`);
      say("ok", `Removed ${p.name}.`);
      await refresh();
    } catch (err) { say("error", err.message); }
  };

  const refresh = async () => {
    const { data } = await get("/api/providers");
    mount(list, table([
      { label: "name", value: (p) => p.name },
      { label: "kind", value: (p) => p.kind },
      { label: "base URL", value: (p) => h("code", {}, p.base_url || "") },
      { label: "source", value: (p) => p.source },
      { label: "key", value: (p) => h("span", { class: p.key_status === "ok" ? "badge good" : "badge bad", title: p.key_error || null }, p.key_status || "none") },
      { label: "", value: (p) => p.source === "env" ? h("small", {}, "set by the environment") : h("span", {}, replaceKey(p),
        h("button", { type: "button", class: "small danger", onclick: () => remove(p) }, "Remove")) },
    ], data, { empty: "No providers: set OPENAI_API_KEY (or another provider's variable) or add one here." }));
    const pairs = data.flatMap((p) => (p.models || []).map((m) => ({ model: m, provider: p.name })));
    mount(routes, table([
      { label: "model name or prefix", value: (r) => h("code", {}, r.model) },
      { label: "routes to", value: (r) => r.provider },
    ], pairs, { empty: "No model patterns." }));
  };

  const spec = await get("/api/openapi.json");
  const kinds = spec.paths["/api/providers"].post.requestBody.content["application/json"].schema.properties.kind.enum;
  const inputs = {
    name: h("input", { required: true, size: 12 }),
    kind: h("select", {}, kinds.map((k) => h("option", { value: k }, k))),
    base_url: h("input", { size: 28, placeholder: "default for the kind" }),
    models: h("input", { size: 22, placeholder: "llama-, mixtral-" }),
    api_key: h("input", { type: "password", autocomplete: "off", size: 16 }),
  };
  const addForm = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    const body = { name: inputs.name.value.trim(), kind: inputs.kind.value };
    if (inputs.base_url.value.trim()) body.base_url = inputs.base_url.value.trim();
    if (inputs.models.value.trim()) body.models = inputs.models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (inputs.api_key.value) body.api_key = inputs.api_key.value;
    try {
      await post("/api/providers", body);
      addForm.reset();
      say("ok", `Added ${body.name}.`);
      await refresh();
    } catch (err) { say("error", err.message + (err.param ? ` (${err.param})` : "")); }
  } }, Object.entries(inputs).map(([n, i]) => field(n === "models" ? "models (comma-separated)" : n, i)),
  h("button", { type: "submit" }, "Add provider"));

  mount(view, h("h1", {}, "Providers"), list, message,
    h("h2", {}, "Add a provider"), h("p", { class: "muted" }, "Keys are write-only: stored encrypted and never shown again."), addForm,
    h("h2", {}, "Which models route where"), h("p", { class: "muted" }, "A request's model is matched against these names and prefixes."), routes);
  await refresh();
}

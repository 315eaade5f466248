// Keys: create (the secret shown once), edit limits, revoke, spend against budget.

import { enc, get, patch, post } from "./api.js";
import { copyButton, field, h, mount, table } from "./dom.js";
import { formatTime, formatUsd } from "./format.js";

const PERIODS = ["", "day", "month", "total"];

function limitInputs(k = {}) {
  return {
    budget_usd: h("input", { name: "budget_usd", size: 8, placeholder: "25.00", value: k.budget_uc ? formatUsd(k.budget_uc).slice(1) : "" }),
    budget_period: h("select", { name: "budget_period" }, PERIODS.map((p) => h("option", { value: p, selected: (k.budget_period || "") === p }, p || "—"))),
    rpm: h("input", { name: "rpm", type: "number", min: 1, size: 6, value: k.rpm ?? "" }),
    tpm: h("input", { name: "tpm", type: "number", min: 1, size: 8, value: k.tpm ?? "" }),
    models: h("input", { name: "models", size: 20, placeholder: "gpt-4o-mini, claude-*", value: (k.models || []).join(", ") }),
  };
}

/** The request body from the inputs: empty means "no limit" (null). */
function limits(inputs) {
  const text = (n) => inputs[n].value.trim();
  const models = text("models") ? text("models").split(",").map((m) => m.trim()).filter(Boolean) : null;
  return { budget_usd: text("budget_usd") || null, budget_period: text("budget_period") || null,
    rpm: text("rpm") ? Number(text("rpm")) : null, tpm: text("tpm") ? Number(text("tpm")) : null, models };
}

function spend(k) {
  if (!k.budget_uc) return formatUsd(k.spend_uc);
  return h("span", {}, `${formatUsd(k.spend_uc)} of ${formatUsd(k.budget_uc)} `,
    h("progress", { max: Number(k.budget_uc), value: Math.min(Number(k.spend_uc), Number(k.budget_uc)) }));
}

export async function keys(view) {
  const message = h("p", { role: "alert" });
  const created = h("div", {});
  const list = h("div", {});
  const fail = (err) => { message.className = "error"; message.textContent = err.message; };

  const refresh = async () => {
    const { keys: rows } = await get("/api/keys");
    mount(list, table([
      { label: "name", value: (k) => k.name },
      { label: "prefix", value: (k) => h("code", {}, k.prefix) },
      { label: "project", value: (k) => k.project || "—" },
      { label: "status", value: (k) => h("span", { class: k.status === "active" ? "badge good" : "badge bad" }, k.status) },
      { label: "spend this period", value: spend },
      { label: "period", value: (k) => k.budget_period ? `${k.budget_period} (${k.spend_period})` : "—" },
      { label: "rpm / tpm", value: (k) => `${k.rpm ?? "—"} / ${k.tpm ?? "—"}` },
      { label: "models", value: (k) => (k.models || []).join(", ") || "all", class: "wrap" },
      { label: "last used", value: (k) => formatTime(k.last_used_at) },
      { label: "", value: (k) => k.status === "revoked" ? "" : h("span", {},
        h("button", { type: "button", class: "small secondary", onclick: () => edit(k) }, "Edit limits"), " ",
        h("button", { type: "button", class: "small danger", onclick: () => revoke(k) }, "Revoke")) },
    ], rows, { empty: "No client keys yet: without keys the proxy is open to local programs only. Create one above." }));
  };

  const revoke = async (k) => {
    if (!window.confirm(`Revoke key "${k.name}" (${k.prefix}…)? Its next request gets a 401. This cannot be undone.`)) return;
    try {
      await post(`/api/keys/${enc(k.id)}/revoke`);
      message.className = "ok"; message.textContent = `Revoked ${k.name}.`;
      await refresh();
    } catch (err) { fail(err); }
  };

  const edit = (k) => {
    const inputs = limitInputs(k);
    const form = h("form", { class: "inline card", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await patch(`/api/keys/${enc(k.id)}`, limits(inputs));
        message.className = "ok"; message.textContent = `Saved limits of ${k.name}.`;
        mount(created);
        await refresh();
      } catch (err) { fail(err); }
    } }, h("strong", {}, `Limits of ${k.name}`), Object.entries(inputs).map(([n, i]) => field(n, i)),
    h("button", { type: "submit" }, "Save"),
    h("button", { type: "button", class: "secondary", onclick: () => mount(created) }, "Cancel"));
    mount(created, form);
    inputs.budget_usd.focus();
  };

  const name = h("input", { name: "name", required: true, size: 14 });
  const project = h("input", { name: "project", size: 10 });
  const inputs = limitInputs();
  const createForm = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const body = { name: name.value.trim(), project: project.value.trim() || null, ...limits(inputs) };
      const key = await post("/api/keys", body);
      message.textContent = "";
      mount(created, h("div", { class: "card" },
        h("p", {}, h("strong", {}, `Key "${key.name}" created. `), "Copy it now: it is shown this once and cannot be shown again."),
        h("p", { class: "secret", id: "new-key" }, key.key), copyButton(key.key, "Copy key")));
      createForm.reset();
      await refresh();
    } catch (err) { fail(err); }
  } }, field("name", name), field("project", project), Object.entries(inputs).map(([n, i]) => field(n, i)),
  h("button", { type: "submit" }, "Create key"));

  mount(view, h("h1", {}, "Keys"), h("h2", {}, "Create a key"), createForm, message, created, h("h2", {}, "All keys"), list);
  await refresh();
}

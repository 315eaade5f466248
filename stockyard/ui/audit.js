// Audit: the log with filters, paging, and a "verify chain" button with the head hash.

import { get } from "./api.js";
import { field, h, mount, table } from "./dom.js";
import { formatTime } from "./format.js";

export async function audit(view) {
  const action = h("input", { size: 18, placeholder: "e.g. key.create" });
  const since = h("input", { size: 14, placeholder: "2024-05-01" });
  const list = h("div", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const result = h("div", { role: "status" });
  const message = h("p", { class: "error", role: "alert" });
  let rows = [], next = null;

  const load = async (append) => {
    message.textContent = "";
    try {
      const page = await get("/api/audit", { action: action.value.trim(), since: since.value.trim(), limit: 100,
        after_seq: append ? next : "" });
      rows = append ? rows.concat(page.data) : page.data;
      next = page.next_after_seq;
      more.hidden = next === null;
      mount(list, table([
        { label: "seq", value: (e) => String(e.seq), class: "num" },
        { label: "time (UTC)", value: (e) => formatTime(e.ts) },
        { label: "actor", value: (e) => e.actor },
        { label: "action", value: (e) => e.action },
        { label: "target", value: (e) => e.target || "" },
        { label: "details", value: (e) => h("code", {}, JSON.stringify(e.details)), class: "wrap" },
      ], rows, { empty: "No entries match." }));
    } catch (err) { message.textContent = err.message; }
  };
  const verify = async () => {
    mount(result, "verifying…");
    try {
      const [v, head] = await Promise.all([get("/api/audit/verify"), get("/api/audit/head")]);
      mount(result, h("div", { class: "card" },
        h("p", { class: v.ok ? "ok" : "error" }, v.ok ? `Chain intact: ${v.count} entries.` : `Chain BROKEN at entry ${v.broken_seq}: ${v.reason}`),
        h("p", {}, "Head: entry ", String(head.seq), " ", h("code", { id: "audit-head" }, head.hash || "—")),
        h("small", {}, "Record the head hash elsewhere; a later check against it detects a rewritten tail.")));
    } catch (err) { mount(result, h("p", { class: "error" }, err.message)); }
  };
  more.addEventListener("click", () => load(true));
  mount(view, h("h1", {}, "Audit log"),
    h("p", {}, h("button", { type: "button", onclick: verify }, "Verify chain")), result,
    h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); load(false); } },
      field("action", action), field("since", since), h("button", { type: "submit" }, "Filter")),
    message, list, h("p", {}, more));
  await load(false);
}

// Webhooks: add (the signing secret shown once), test, remove, and the delivery log.

import { del, enc, get, post } from "./api.js";
import { copyButton, field, h, mount, table } from "./dom.js";
import { formatTime } from "./format.js";

const LOG_EVERY_MS = 2000;
const EVENTS = ["budget.warning", "budget.exhausted", "key.expiring", "breaker.opened", "breaker.closed", "error_rate.high"];

function outcome(d) {
  const cls = d.outcome === "delivered" ? "badge good" : d.outcome === "failed" ? "badge bad" : "badge";
  return h("span", { class: cls }, d.outcome);
}

export async function webhooks(view) {
  const message = h("p", { role: "alert" });
  const created = h("div", {});
  const list = h("div", {});
  const log = h("div", { id: "webhook-deliveries" });
  const fail = (err) => { message.className = "error"; message.textContent = err.message; };
  const say = (text) => { message.className = "ok"; message.textContent = text; };

  const showLog = async () => {
    const { deliveries } = await get("/api/webhooks/deliveries", { limit: 50 });
    mount(log, table([
      { label: "time (UTC)", value: (d) => formatTime(d.ts) },
      { label: "webhook", value: (d) => h("code", {}, d.webhook_id) },
      { label: "event", value: (d) => d.event },
      { label: "attempt", value: (d) => String(d.attempt), class: "num" },
      { label: "status", value: (d) => d.status === null ? "—" : String(d.status), class: "num" },
      { label: "outcome", value: outcome },
      { label: "error", value: (d) => d.error || "", class: "wrap" },
    ], deliveries, { empty: "No deliveries yet." }));
  };

  const refresh = async () => {
    const { webhooks: rows } = await get("/api/webhooks");
    mount(list, table([
      { label: "id", value: (w) => h("code", {}, w.id) },
      { label: "url", value: (w) => w.url, class: "wrap" },
      { label: "format", value: (w) => w.format },
      { label: "events", value: (w) => w.events.join(", "), class: "wrap" },
      { label: "", value: (w) => h("span", {},
        h("button", { type: "button", class: "small secondary", onclick: () => test(w) }, "Send test"), " ",
        h("button", { type: "button", class: "small danger", onclick: () => remove(w) }, "Remove")) },
    ], rows, { empty: "No webhooks yet: add one above to be told about budgets, expiring keys, breakers and errors." }));
    await showLog();
  };

  const test = async (w) => {
    try {
      await post(`/api/webhooks/${enc(w.id)}/test`);
      say(`Test event queued for ${w.id}; its delivery appears below.`);
      await refresh();
    } catch (err) { fail(err); }
  };

  const remove = async (w) => {
    if (!window.confirm(`Remove webhook ${w.id} (${w.url})? Its delivery log stays.`)) return;
    try {
      await del(`/api/webhooks/${enc(w.id)}`);
      say(`Removed ${w.id}.`);
      await refresh();
    } catch (err) { fail(err); }
  };

  const url = h("input", { name: "url", type: "url", required: true, size: 36, placeholder: "http(s) URL of the receiver" });
  const format = h("select", { name: "format" }, ["json", "slack"].map((f) => h("option", { value: f }, f)));
  const boxes = EVENTS.map((e) => h("input", { type: "checkbox", name: "events", value: e, checked: true }));
  const form = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const events = boxes.filter((b) => b.checked).map((b) => b.value);
      const hook = await post("/api/webhooks", { url: url.value.trim(), events, format: format.value });
      message.textContent = "";
      mount(created, h("div", { class: "card" },
        h("p", {}, h("strong", {}, `Webhook ${hook.id} added. `), "Copy its signing secret now: it is shown this once."),
        h("p", { class: "secret", id: "new-webhook-secret" }, hook.secret), copyButton(hook.secret, "Copy secret")));
      form.reset();
      await refresh();
    } catch (err) { fail(err); }
  } }, field("url", url), field("format", format),
  h("fieldset", { class: "events" }, h("legend", {}, "events"),
    boxes.map((b) => h("label", { class: "check" }, b, " ", b.value))),
  h("button", { type: "submit" }, "Add webhook"));

  mount(view, h("h1", {}, "Webhooks"), h("h2", {}, "Add a webhook"), form, message, created,
    h("h2", {}, "Webhooks"), list, h("h2", {}, "Deliveries"), h("p", { class: "muted" }, "newest first, refreshed every 2 s"), log);
  await refresh();
  const timer = setInterval(() => showLog().catch(fail), LOG_EVERY_MS);
  return () => clearInterval(timer);
}

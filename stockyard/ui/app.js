// The console shell: sign-in, navigation and hash routing (#/page/arg).

import { ApiError, clearKey, get, getKey, setKey, whenUnauthorized } from "./api.js";
import { h, mount } from "./dom.js";
import { overview } from "./overview.js";
import { traces, traceDetail } from "./traces.js";
import { costs } from "./costs.js";
import { keys } from "./keys.js";
import { providers } from "./providers.js";
import { models } from "./models.js";
import { modules } from "./modules.js";
import { audit } from "./audit.js";
import { webhooks } from "./webhooks.js";

const PAGES = { overview, traces, costs, keys, providers, models, modules, webhooks, audit };
const main = document.getElementById("main");
const nav = document.getElementById("nav");
let stopPage = null; // a page may return a function that stops its timers

function signIn(message) {
  nav.hidden = true;
  const input = h("input", { type: "password", id: "admin-key", autocomplete: "current-password", required: true,
    placeholder: "STOCKYARD_ADMIN_KEY" });
  const status = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "card signin", onsubmit: async (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    try {
      await get("/api/status");
      route();
    } catch (err) {
      clearKey();
      if (!(err instanceof ApiError && err.status === 401)) status.textContent = err.message;
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Enter the admin key (STOCKYARD_ADMIN_KEY). It is kept in this tab only."),
  h("label", { for: "admin-key" }, "Admin key"), input,
  h("p", {}, h("button", { type: "submit" }, "Sign in")), status);
  stop();
  mount(main, form);
  input.focus();
}

function stop() {
  if (stopPage) stopPage();
  stopPage = null;
}

async function route() {
  if (!getKey()) return signIn();
  nav.hidden = false;
  // "/ui/" has no hash: "".split("/") is [""], so an empty name also means the overview.
  const [name, ...args] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const page = name || "overview";
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.getAttribute("href") === `#/${page}`);
  stop();
  const render = page === "traces" && args[0] ? traceDetail : PAGES[page];
  if (!render) {
    mount(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/overview" }, "Go to the overview")));
    return;
  }
  const view = h("div", {});
  mount(main, view);
  try {
    const stopper = await render(view, ...args);
    if (typeof stopper === "function") stopPage = stopper;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    mount(view, h("p", { class: "error", role: "alert" }, "Could not load this page: " + err.message));
  }
}

whenUnauthorized((message) => {
  clearKey();
  signIn(message);
});
document.getElementById("signout").addEventListener("click", () => {
  clearKey();
  signIn("Signed out.");
});
window.addEventListener("hashchange", route);
route();

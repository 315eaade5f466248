// Building DOM safely: every piece of data becomes a text node or an attribute value, never HTML.
// The document is looked up when called, so this module also imports in node (tests pass a fake).

const SVG_NS = "http://www.w3.org/2000/svg";

function doc() {
  return globalThis.document;
}

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name.startsWith("on") || name === "style") {
      throw new Error(`refusing attribute ${name}: use listeners and classes`);
    } else if (name === "text") {
      el.textContent = String(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Append children: nodes as they are, strings and numbers as text, arrays flattened, null skipped. */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(typeof child === "object" ? child : doc().createTextNode(String(child)));
  }
  return el;
}

/** h("a", {href: "#/x", class: "c", onclick: fn}, "text", child…) */
export function h(tag, attrs, ...children) {
  return build(doc().createElement(tag), attrs, children);
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  return build(doc().createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace everything inside el with children. */
export function mount(el, ...children) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return append(el, children);
}

/** A table from column specs [{label, value: row => node|string, class}] and rows. */
export function table(columns, rows, { empty = "nothing here", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {},
        columns.map((c) => h("td", { class: c.class }, c.value(row))))))));
}

/** A button that copies text to the clipboard and says so. */
export function copyButton(text, label = "Copy") {
  const button = h("button", { type: "button", class: "small", onclick: async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed: select the text";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  } }, label);
  return button;
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null);
}

// Small DOM helpers shared by the page's modules: building elements, words for states and
// times, and the message strip where the page tells what went wrong (or right).

export const STATE_LABELS = {
  not_started: "Not started",
  pending: "Pending",
  processing: "Processing",
  completed: "Completed",
  error: "Error",
};

/** h("div", {class: "x", dataset: {id: 1}, onclick}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** A state badge: coloured pill, with a spinner while processing. */
export function badge(state, extraClass = "") {
  return h(
    "span",
    { class: `badge ${extraClass}`.trim(), dataset: { state } },
    state === "processing" ? h("span", { class: "spinner", "aria-hidden": "true" }) : null,
    h("span", { class: "badge-text" }, STATE_LABELS[state] ?? state),
  );
}

/** "14:03:12" today, "3 Mar 14:03" on another day; "" for nothing. */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" })
    : date.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** Words for any failure: GraphQL errors say what the server said. */
export function describeError(err) {
  if (!err) return "unknown error";
  if (err.errors) return [...new Set(err.errors.map((e) => e.message))].join("\n");
  return err.message || String(err);
}

let messageTimer = null;

/**
 * Tell the person something in the message strip.
 * @param {"error"|"info"|"success"} kind errors stay until dismissed; others fade.
 */
export function showMessage(kind, text, { title = null } = {}) {
  const strip = $("#messages");
  strip.replaceChildren(
    h(
      "div",
      { class: `message message-${kind}`, role: kind === "error" ? "alert" : "status" },
      h("div", { class: "message-body" }, title ? h("strong", {}, title, " ") : null, text),
      h("button", { class: "message-close", type: "button", "aria-label": "Dismiss", onclick: clearMessage }, "×"),
    ),
  );
  clearTimeout(messageTimer);
  if (kind !== "error") messageTimer = setTimeout(clearMessage, 5000);
}

export function clearMessage() {
  clearTimeout(messageTimer);
  $("#messages").replaceChildren();
}

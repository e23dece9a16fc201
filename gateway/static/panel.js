// The side panel: the selected node in full (its error in words, its numbers, a button to
// run it) and the activity feed (each state change as it arrives, newest first).

import { badge, formatTime, h, plural, STATE_LABELS } from "./ui.js";

const FEED_LIMIT = 200;

export class DetailsPanel {
  constructor(root, { onRunNode }) {
    this.root = root;
    this.onRunNode = onRunNode;
    this.nodeId = null;
    this.clear();
  }

  clear() {
    this.nodeId = null;
    this.root.replaceChildren(
      h("p", { class: "hint" }, "Select a node to see its details, its error message, or to run it."),
    );
  }

  show(model, nodeId) {
    const view = model.view(nodeId);
    if (!view) {
      this.clear();
      return;
    }
    this.nodeId = nodeId;
    const rows = [["Node id", view.id]];
    if (view.source) {
      const s = view.source;
      if (s.filename) rows.push(["File", s.filename]);
      if (s.fileFormat || s.dataType) rows.push(["Format", [s.fileFormat, s.dataType].filter(Boolean).join(" · ")]);
      if (s.status) rows.push(["Status", s.status]);
      rows.push(["Processed", s.processedAt ? formatTime(s.processedAt) : "never"]);
    }
    if (view.graph) {
      const g = view.graph;
      rows.push(["Contents", `${plural(g.nodeCount ?? 0, "node")} · ${plural(g.edgeCount ?? 0, "edge")}`]);
      rows.push(["Computed", g.computedDate ? formatTime(g.computedDate) : "never"]);
    }
    if (view.sequence !== null) rows.push(["Last event", `#${view.sequence}`]);

    const message = view.errorMessage
      ? h(
          "div",
          { class: view.state === "error" ? "error-box" : "note-box", role: view.state === "error" ? "alert" : null },
          h("strong", {}, view.state === "error" ? "Error: " : "Note: "),
          view.errorMessage,
        )
      : null;

    const busy = view.state === "pending" || view.state === "processing";
    const parts = [
      h("div", { class: "details-head" }, h("span", { class: "details-type" }, view.typeName), badge(view.state)),
      h("h3", { class: "details-label" }, view.label),
      message,
      h("dl", { class: "details-rows" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      h(
        "button",
        {
          type: "button",
          class: "button",
          id: "run-node",
          disabled: busy,
          title: "Runs this node and every node it depends on",
          onclick: () => this.onRunNode(nodeId),
        },
        busy ? "Running…" : "▶ Run this node",
      ),
    ];
    this.root.replaceChildren(...parts.filter(Boolean));
  }

  refresh(model) {
    if (this.nodeId) this.show(model, this.nodeId);
  }
}

export class ActivityFeed {
  constructor(root) {
    this.root = root;
    this.clear();
  }

  clear() {
    this.root.replaceChildren(h("li", { class: "feed-empty" }, "No changes yet. Execute the plan to see them here."));
  }

  /** One applied state change. */
  add(model, event) {
    const meta = event.datasourceExecution ?? event.graphExecution;
    const node = model.byId.get(event.nodeId);
    const label = node ? model.labelOf(node) : event.nodeId;
    this.#prepend(
      h(
        "li",
        {
          class: "feed-item",
          dataset: { sequence: event.sequence, nodeId: event.nodeId, state: meta.executionState },
          title: meta.errorMessage ?? "",
        },
        h("span", { class: "feed-time" }, formatTime(event.timestamp)),
        h("span", { class: "feed-label" }, label),
        h("span", { class: "feed-state", dataset: { state: meta.executionState } }, STATE_LABELS[meta.executionState]),
        h("span", { class: "feed-seq" }, `#${event.sequence}`),
      ),
    );
  }

  /** Name the nodes that were not in the plan yet when their first events came. */
  relabel(model) {
    for (const label of this.root.querySelectorAll(".feed-item .feed-label")) {
      const nodeId = label.parentElement.dataset.nodeId;
      const node = model.byId.get(nodeId);
      if (node && label.textContent === nodeId) label.textContent = model.labelOf(node);
    }
  }

  /** A line about the connection itself (resumed, re-synchronised). */
  note(text) {
    this.#prepend(h("li", { class: "feed-note" }, text));
  }

  #prepend(item) {
    this.root.querySelector(".feed-empty")?.remove();
    this.root.prepend(item);
    while (this.root.children.length > FEED_LIMIT) this.root.lastElementChild.remove();
  }
}

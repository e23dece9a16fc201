// Drawing the Plan DAG: node cards (HTML, absolutely placed) over edges (one SVG).
// Cards are kept by node id and updated in place, so a badge change touches one card.

import { layout, NODE_HEIGHT, NODE_WIDTH } from "./layout.js";
import { badge, formatTime, h, plural } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const ZOOMS = [0.5, 0.6, 0.75, 0.9, 1, 1.25, 1.5];
const MIN_FIT = 0.7; // below this, text is too small to read: scroll instead

export class DagView {
  /**
   * @param {HTMLElement} root the scrolling canvas
   * @param {{onSelect: (nodeId: string) => void}} handlers
   */
  constructor(root, { onSelect, zoomLabel }) {
    this.root = root;
    this.onSelect = onSelect;
    this.zoomLabel = zoomLabel;
    this.cards = new Map();
    this.paths = new Map();
    this.selected = null;
    this.size = { width: 0, height: 0 };
    this.zoom = null; // null: fit the plan to the canvas
    this.stage = h("div", { class: "dag-stage" });
    this.sizer = h("div", { class: "dag-sizer" }, this.stage);
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.classList.add("dag-edges");
    this.svg.append(arrowHead());
    this.stage.append(this.svg);
    // Other editors' cursors, above the cards; in the stage, so in plan coordinates.
    this.cursorLayer = h("div", { class: "dag-cursors", "aria-label": "Other editors' cursors" });
    this.cursors = new Map(); // userId -> marker
    this.stage.append(this.cursorLayer);
    root.replaceChildren(this.sizer);
    new ResizeObserver(() => this.zoom === null && this.#applyZoom()).observe(root);
  }

  /** Zoom in (+1), out (-1), or back to fitting the canvas (0). */
  zoomBy(step) {
    if (step === 0) {
      this.zoom = null;
    } else {
      const scale = this.#scale();
      const next = step > 0 ? ZOOMS.find((z) => z > scale + 0.001) : ZOOMS.findLast((z) => z < scale - 0.001);
      this.zoom = next ?? scale;
    }
    this.#applyZoom();
  }

  #scale() {
    if (this.zoom !== null) return this.zoom;
    const { width, height } = this.size;
    if (!width || !height) return 1;
    const fit = Math.min((this.root.clientWidth - 4) / width, (this.root.clientHeight - 4) / height);
    return Math.max(MIN_FIT, Math.min(1, fit));
  }

  #applyZoom() {
    const scale = this.#scale();
    this.stage.style.transform = scale === 1 ? "" : `scale(${scale})`;
    this.sizer.style.width = `${Math.ceil(this.size.width * scale)}px`;
    this.sizer.style.height = `${Math.ceil(this.size.height * scale)}px`;
    if (this.zoomLabel) {
      this.zoomLabel.textContent = `${Math.round(scale * 100)}%`;
      this.zoomLabel.title = this.zoom === null ? "fitted to the canvas" : "";
    }
  }

  /** A pointer position (client pixels) in plan coordinates: the unscaled stage's. */
  toPlan(clientX, clientY) {
    const rect = this.stage.getBoundingClientRect();
    const scale = this.#scale();
    return { x: (clientX - rect.left) / scale, y: (clientY - rect.top) / scale };
  }

  /**
   * One labelled marker per user with a cursor, at that cursor (plan coordinates); the
   * markers of users no longer listed (they left) are removed.
   * @param {{userId: string, userName: string, avatarColor: string,
   *          cursorPosition: {x: number, y: number} | null}[]} users
   */
  showCursors(users) {
    const shown = new Set();
    for (const user of users) {
      const at = user.cursorPosition;
      if (!at) continue;
      shown.add(user.userId);
      let marker = this.cursors.get(user.userId);
      if (!marker) {
        marker = h(
          "div",
          { class: "cursor-marker", dataset: { userId: user.userId }, "aria-hidden": "true" },
          h("span", { class: "cursor-pointer" }),
          h("span", { class: "cursor-label" }),
        );
        this.cursors.set(user.userId, marker);
        this.cursorLayer.append(marker);
      }
      marker.style.setProperty("--avatar", user.avatarColor);
      marker.querySelector(".cursor-label").textContent = user.userName;
      marker.style.left = `${at.x}px`;
      marker.style.top = `${at.y}px`;
      marker.dataset.x = String(at.x);
      marker.dataset.y = String(at.y);
    }
    for (const [userId, marker] of this.cursors) {
      if (shown.has(userId)) continue;
      marker.remove();
      this.cursors.delete(userId);
    }
  }

  /** Lay out and draw the whole plan (after a plan query). */
  draw(model) {
    const { positions, width, height } = layout(model.nodes, model.edges);
    this.size = { width, height };
    this.stage.style.width = `${width}px`;
    this.stage.style.height = `${height}px`;
    this.svg.setAttribute("width", width);
    this.svg.setAttribute("height", height);
    this.#applyZoom();

    for (const [id, card] of this.cards) {
      if (!model.byId.has(id)) {
        card.remove();
        this.cards.delete(id);
      }
    }
    for (const node of model.nodes) {
      let card = this.cards.get(node.id);
      if (!card) {
        card = this.#card(node.id);
        this.cards.set(node.id, card);
        this.stage.append(card);
      }
      const { x, y } = positions.get(node.id);
      card.style.left = `${x}px`;
      card.style.top = `${y}px`;
      this.update(model, node.id);
    }

    for (const path of this.paths.values()) path.remove();
    this.paths.clear();
    for (const edge of model.edges) {
      const from = positions.get(edge.source);
      const to = positions.get(edge.target);
      if (!from || !to) continue;
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", curve(from, to));
      path.setAttribute("marker-end", "url(#arrow)");
      path.classList.add("edge");
      path.dataset.source = edge.source;
      path.dataset.target = edge.target;
      path.dataset.state = model.stateOf(edge.target);
      this.svg.append(path);
      this.paths.set(edge.id, path);
    }
    this.select(this.selected && model.byId.has(this.selected) ? this.selected : null);
  }

  /** Redraw one node's card (after an event). */
  update(model, nodeId) {
    const card = this.cards.get(nodeId);
    const view = model.view(nodeId);
    if (!card || !view) return;
    card.dataset.state = view.state;
    card.dataset.type = view.type;
    card.setAttribute("aria-label", `${view.typeName} ${view.label}: ${view.state.replace("_", " ")}`);
    const name = view.id === view.label ? view.label : `${view.label} (${view.id})`;
    card.title = view.errorMessage ? `${name}\n${view.errorMessage}` : name;
    card.querySelector(".node-type").textContent = view.typeName;
    card.querySelector(".node-label").textContent = view.label;
    const current = card.querySelector(".badge");
    if (current.dataset.state !== view.state) current.replaceWith(badge(view.state));
    const detail = card.querySelector(".node-detail");
    detail.textContent = detailLine(view);
    detail.classList.toggle("node-detail-error", Boolean(view.errorMessage));
    for (const path of this.paths.values()) {
      if (path.dataset.target === nodeId) path.dataset.state = view.state;
    }
  }

  select(nodeId) {
    this.selected = nodeId;
    for (const [id, card] of this.cards) card.classList.toggle("selected", id === nodeId);
  }

  #card(nodeId) {
    const card = h(
      "div",
      {
        class: "node",
        role: "button",
        tabindex: "0",
        dataset: { nodeId },
        onclick: () => this.onSelect(nodeId),
        onkeydown: (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            this.onSelect(nodeId);
          }
        },
      },
      h("div", { class: "node-head" }, h("span", { class: "node-type" }), badge("not_started")),
      h("div", { class: "node-label" }),
      h("div", { class: "node-detail" }),
    );
    card.style.width = `${NODE_WIDTH}px`;
    card.style.height = `${NODE_HEIGHT}px`;
    return card;
  }
}

/** The one line under the badge: what a glance at the node should tell. */
export function detailLine(view) {
  if (view.errorMessage && (view.state === "error" || view.state === "not_started")) {
    return view.errorMessage;
  }
  if (view.state === "pending") return "queued";
  if (view.state === "processing") return view.source ? "parsing…" : "building…";
  if (view.source) {
    if (view.source.processedAt && view.state === "completed") {
      return `processed ${formatTime(view.source.processedAt)}`;
    }
    return view.source.filename ?? "";
  }
  if (view.graph && view.state === "completed") {
    return `${plural(view.graph.nodeCount ?? 0, "node")} · ${plural(view.graph.edgeCount ?? 0, "edge")}`;
  }
  return "";
}

function curve(from, to) {
  const x1 = from.x + NODE_WIDTH;
  const y1 = from.y + NODE_HEIGHT / 2;
  const x2 = to.x - 6;
  const y2 = to.y + NODE_HEIGHT / 2;
  const bend = Math.max(40, Math.abs(x2 - x1) / 2);
  return `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
}

function arrowHead() {
  const defs = document.createElementNS(SVG, "defs");
  const marker = document.createElementNS(SVG, "marker");
  for (const [k, v] of Object.entries({
    id: "arrow",
    viewBox: "0 0 10 10",
    refX: "8",
    refY: "5",
    markerWidth: "7",
    markerHeight: "7",
    orient: "auto-start-reverse",
  })) {
    marker.setAttribute(k, v);
  }
  const tip = document.createElementNS(SVG, "path");
  tip.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
  tip.classList.add("arrow-tip");
  marker.append(tip);
  defs.append(marker);
  return defs;
}

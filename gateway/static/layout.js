// Where each node of a Plan DAG is drawn: its stored position when it has one, otherwise
// a left-to-right layout by topological level (a node sits one column right of its
// deepest input), rows ordered to keep edges short. Pure: ids and numbers in, numbers out.

export const NODE_WIDTH = 216;
export const NODE_HEIGHT = 92;
const COLUMN_GAP = 72;
const ROW_GAP = 26;
const MARGIN = 24;

/** Column of every node; nodes on a cycle (refused by the server) go after the rest. */
export function levels(nodeIds, edges) {
  const inputs = new Map(nodeIds.map((id) => [id, []]));
  const outputs = new Map(nodeIds.map((id) => [id, []]));
  for (const { source, target } of edges) {
    if (!inputs.has(source) || !inputs.has(target)) continue;
    inputs.get(target).push(source);
    outputs.get(source).push(target);
  }
  const level = new Map();
  const waiting = new Map(nodeIds.map((id) => [id, inputs.get(id).length]));
  const ready = nodeIds.filter((id) => waiting.get(id) === 0);
  while (ready.length) {
    const id = ready.shift();
    level.set(id, Math.max(0, ...inputs.get(id).map((i) => level.get(i) + 1)));
    for (const next of outputs.get(id)) {
      waiting.set(next, waiting.get(next) - 1);
      if (waiting.get(next) === 0) ready.push(next);
    }
  }
  const last = Math.max(-1, ...level.values());
  for (const id of nodeIds) if (!level.has(id)) level.set(id, last + 1);
  return { level, inputs };
}

/**
 * @param {{id: string, positionX?: number|null, positionY?: number|null}[]} nodes
 * @param {{source: string, target: string}[]} edges
 * @returns {{positions: Map<string, {x: number, y: number}>, width: number, height: number}}
 */
export function layout(nodes, edges) {
  const positions = new Map();
  const placed = nodes.filter((n) => Number.isFinite(n.positionX) && Number.isFinite(n.positionY));
  const free = nodes.filter((n) => !placed.includes(n));

  // Stored positions are kept as they are, shifted so the drawing starts at the margin.
  let top = MARGIN;
  if (placed.length) {
    const minX = Math.min(...placed.map((n) => n.positionX));
    const minY = Math.min(...placed.map((n) => n.positionY));
    for (const n of placed) {
      positions.set(n.id, { x: n.positionX - minX + MARGIN, y: n.positionY - minY + MARGIN });
    }
    top = Math.max(...[...positions.values()].map((p) => p.y)) + NODE_HEIGHT + ROW_GAP * 2;
  }

  // The others: columns by level, rows by the mean row of their inputs (one sweep).
  const { level, inputs } = levels(
    free.map((n) => n.id),
    edges,
  );
  const columns = [];
  for (const n of free) (columns[level.get(n.id)] ??= []).push(n.id);
  const row = new Map();
  for (const column of columns) {
    if (!column) continue;
    const wanted = (id) => {
      const rows = inputs.get(id).map((i) => row.get(i)).filter((r) => r !== undefined);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
    };
    column.sort((a, b) => wanted(a) - wanted(b) || a.localeCompare(b, undefined, { numeric: true }));
    let next = 0;
    for (const id of column) {
      const want = wanted(id);
      const r = Number.isFinite(want) ? Math.max(next, Math.round(want)) : next;
      row.set(id, r);
      next = r + 1;
    }
  }
  for (const n of free) {
    positions.set(n.id, {
      x: MARGIN + level.get(n.id) * (NODE_WIDTH + COLUMN_GAP),
      y: top + row.get(n.id) * (NODE_HEIGHT + ROW_GAP),
    });
  }

  const all = [...positions.values()];
  const width = Math.max(0, ...all.map((p) => p.x)) + NODE_WIDTH + MARGIN;
  const height = Math.max(0, ...all.map((p) => p.y)) + NODE_HEIGHT + MARGIN;
  return { positions, width, height };
}

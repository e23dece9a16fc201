// Where each node of a Plan DAG is drawn: its stored position when it has one, otherwise
// a left-to-right layout by topological level (a node sits one column right of its
// deepest input), rows ordered to keep edges short. Pure: ids and numbers in, numbers out.

export const NODE_WIDTH = 224;
export const NODE_HEIGHT = 84;
const COLUMN_GAP = 56;
const ROW_GAP = 24;
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
  return { level, inputs, outputs };
}

/** One sweep: each column sorted by where its neighbours are, then packed top-down. */
function placeRows(columns, neighbours, row) {
  for (const column of columns) {
    const wanted = new Map();
    for (const id of column) {
      const rows = neighbours.get(id).map((i) => row.get(i)).filter((r) => r !== undefined);
      const mean = rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : undefined;
      wanted.set(id, mean ?? row.get(id) ?? Infinity);
    }
    column.sort((a, b) => wanted.get(a) - wanted.get(b) || a.localeCompare(b, undefined, { numeric: true }));
    let next = 0;
    for (const id of column) {
      const want = wanted.get(id);
      const r = Number.isFinite(want) ? Math.max(next, Math.round(want)) : next;
      row.set(id, r);
      next = r + 1;
    }
  }
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

  // The others: columns by level; rows ordered by the mean row of their neighbours,
  // swept forward (inputs), backward (outputs) and forward again to keep edges short.
  const { level, inputs, outputs } = levels(
    free.map((n) => n.id),
    edges,
  );
  const columns = [];
  for (const n of free) (columns[level.get(n.id)] ??= []).push(n.id);
  const present = columns.filter(Boolean);
  const row = new Map();
  placeRows(present, inputs, row);
  placeRows([...present].reverse(), outputs, row);
  placeRows(present, inputs, row);
  const firstRow = Math.min(...row.values());
  for (const n of free) {
    positions.set(n.id, {
      x: MARGIN + level.get(n.id) * (NODE_WIDTH + COLUMN_GAP),
      y: top + (row.get(n.id) - firstRow) * (NODE_HEIGHT + ROW_GAP),
    });
  }

  const all = [...positions.values()];
  const width = Math.max(0, ...all.map((p) => p.x)) + NODE_WIDTH + MARGIN;
  const height = Math.max(0, ...all.map((p) => p.y)) + NODE_HEIGHT + MARGIN;
  return { positions, width, height };
}

// One project's plan as the page knows it: the DAG from the last query, and each node's
// execution state from the events applied since. No DOM here.
//
// Events are the authority once one has been applied to a node: a later query (the plan is
// refetched when a node appears) does not move a node back to an older state. An event
// whose sequence is at or below the last one applied to its node is a repeat and ignored.

export const STATES = ["not_started", "pending", "processing", "completed", "error"];

export const TYPE_NAMES = {
  DataSourceNode: "Data source",
  GraphNode: "Graph",
  TransformNode: "Transform",
  MergeNode: "Merge",
  CopyNode: "Copy",
  OutputNode: "Output",
};

export class PlanModel {
  constructor(projectId) {
    this.projectId = projectId;
    this.project = null;
    this.nodes = []; // PlanDagNode, as queried
    this.edges = [];
    this.byId = new Map();
    this.status = new Map(); // node id -> {state, sequence, source, graph}
    this.highestSequence = null; // highest sequence applied, null before the first
    this.planVersion = null; // the sequence of the last plan edit the plan includes
  }

  /**
   * Apply one planDagChanged event (another editor's edit, or this page's own).
   * @returns {boolean} whether the plan changed (false: an edit the plan already has)
   */
  applyPlanEdit(event) {
    const sequence = event.sequence;
    if (this.planVersion !== null && sequence <= this.planVersion) return false;
    this.planVersion = sequence;
    const { change } = event;
    if (change.node) {
      const node = change.node;
      if (change.operation === "removed") {
        this.nodes = this.nodes.filter((n) => n.id !== node.id);
        this.byId.delete(node.id);
        return true;
      }
      const known = this.byId.get(node.id);
      const fields = {
        id: node.id,
        nodeType: node.nodeType,
        config: node.config,
        metadata: node.metadata,
        positionX: node.position?.x ?? null,
        positionY: node.position?.y ?? null,
      };
      if (known) Object.assign(known, fields);
      else {
        const added = { ...fields, executionState: "not_started" };
        this.nodes.push(added);
        this.byId.set(added.id, added);
        if (!this.status.has(added.id)) {
          this.status.set(added.id, { state: "not_started", sequence: null, source: null, graph: null });
        }
      }
      return true;
    }
    if (change.edge) {
      const edge = change.edge;
      this.edges = this.edges.filter((e) => e.id !== edge.id);
      if (change.operation !== "removed") this.edges.push(edge);
      return true;
    }
    return false;
  }

  /**
   * Take the result of the Plan query (api.plan). `opening`: the page is (re)opening the
   * project and its subscription's snapshot is still to come, so an event that repeats a
   * state shown here is that snapshot's echo; a later refetch's states are not echoable
   * (the live event for them may arrive after the query and must reach the feed).
   */
  setPlan({ project, planDag, dataSources, graphs }, { opening = false } = {}) {
    this.project = project;
    this.planVersion = planDag?.version ?? null;
    this.nodes = planDag?.nodes ?? [];
    this.edges = planDag?.edges ?? [];
    this.byId = new Map(this.nodes.map((n) => [n.id, n]));
    const sources = new Map((dataSources ?? []).map((d) => [d.id, d]));
    const graphRows = new Map((graphs ?? []).map((g) => [g.nodeId, g]));
    for (const node of this.nodes) {
      const known = this.status.get(node.id);
      const source = node.nodeType === "DataSourceNode" ? sources.get(node.config?.dataSourceId) : undefined;
      const graph = graphRows.get(node.id);
      if (known && known.sequence !== null) {
        // Events already speak for its state; the query only fills in what they lack.
        if (source) known.source = { ...source, ...known.source };
        if (graph) known.graph = { ...graph, ...known.graph };
        continue;
      }
      this.status.set(node.id, {
        state: node.executionState,
        sequence: null,
        echoable: opening,
        source: source ?? null,
        graph: graph ?? null,
      });
    }
  }

  /**
   * Apply one NodeExecutionStatusEvent.
   * @returns {"applied" | "repeat" | "unknown"} "unknown": applied, but the node is not
   *   in the plan this page has (it was added since): refetch the plan.
   */
  apply(event) {
    const known = this.status.get(event.nodeId);
    if (known && known.sequence !== null && event.sequence <= known.sequence) return "repeat";
    const meta = event.datasourceExecution ?? event.graphExecution;
    if (!meta) return "repeat";
    this.status.set(event.nodeId, {
      state: meta.executionState,
      sequence: event.sequence,
      source: event.datasourceExecution ? { ...known?.source, ...event.datasourceExecution } : known?.source ?? null,
      graph: event.graphExecution ? { ...known?.graph, ...event.graphExecution } : known?.graph ?? null,
      timestamp: event.timestamp,
    });
    if (this.highestSequence === null || event.sequence > this.highestSequence) {
      this.highestSequence = event.sequence;
    }
    return this.byId.has(event.nodeId) ? "applied" : "unknown";
  }

  /** Forget sequences (the server cannot resume from ours): the next snapshot re-bases. */
  forgetSequences() {
    this.highestSequence = null;
    for (const status of this.status.values()) status.sequence = null;
  }

  stateOf(nodeId) {
    return this.status.get(nodeId)?.state ?? this.byId.get(nodeId)?.executionState ?? "not_started";
  }

  /** What a person calls the node: its label, its data source's name, or its id. */
  labelOf(node) {
    const status = this.status.get(node.id);
    return (
      node.metadata?.label ||
      node.config?.label ||
      status?.source?.name ||
      node.config?.filename ||
      node.id
    );
  }

  view(nodeId) {
    const node = this.byId.get(nodeId);
    if (!node) return null;
    const status = this.status.get(nodeId) ?? {};
    const source = status.source ?? null;
    const graph = status.graph ?? null;
    return {
      id: node.id,
      type: node.nodeType,
      typeName: TYPE_NAMES[node.nodeType] ?? node.nodeType,
      label: this.labelOf(node),
      state: this.stateOf(nodeId),
      sequence: status.sequence ?? null,
      errorMessage: source?.errorMessage ?? graph?.errorMessage ?? null,
      source,
      graph,
    };
  }

  counts() {
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const node of this.nodes) counts[this.stateOf(node.id)] = (counts[this.stateOf(node.id)] ?? 0) + 1;
    return counts;
  }

  /** Nodes whose result other nodes can take as input (targets for a new data source). */
  graphLikeNodes() {
    return this.nodes.filter((n) => n.nodeType !== "DataSourceNode");
  }

  dataSourceNodeOf(dataSourceId) {
    return this.nodes.find((n) => n.nodeType === "DataSourceNode" && n.config?.dataSourceId === dataSourceId);
  }
}

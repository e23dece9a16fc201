// The planpulse operations the page uses (gateway/schema.graphql), over a gqlws Client.

const PROJECTS = `query Projects { projects { id name description updatedAt } }`;

const PLAN = `query Plan($projectId: Int!) {
  project(id: $projectId) { id name description }
  planDag(projectId: $projectId) {
    version
    nodes { id nodeType config metadata positionX positionY executionState }
    edges { id source target }
  }
  dataSources(projectId: $projectId) {
    id name filename fileFormat dataType status executionState errorMessage processedAt
  }
  graphs(projectId: $projectId) {
    nodeId executionState nodeCount edgeCount computedDate errorMessage
  }
}`;

export const STATUS_SUBSCRIPTION = `subscription Status($projectId: Int!, $afterSequence: Int, $snapshot: Boolean) {
  nodeExecutionStatusChanged(projectId: $projectId, afterSequence: $afterSequence, snapshot: $snapshot) {
    nodeId nodeType sequence timestamp
    datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
  }
}`;

export const PLAN_CHANGES = `subscription PlanDagChanged($projectId: Int!, $planId: Int, $afterSequence: Int) {
  planDagChanged(projectId: $projectId, planId: $planId, afterSequence: $afterSequence) {
    type changeId userId sequence
    change {
      ... on PlanDagNodeChange { operation node { id nodeType position { x y } metadata { label description } config } }
      ... on PlanDagEdgeChange { operation edge { id source target } }
    }
  }
}`;

export const PRESENCE = `subscription UserPresenceChanged($planId: ID!) {
  userPresenceChanged(planId: $planId) {
    userId userName avatarColor cursorPosition { x y } selectedNodeId isActive lastSeen
  }
}`;

const VIEWER = `query Viewer { viewerUserId }`;
const JOIN = `mutation Join($projectId: Int!) { joinProjectCollaboration(projectId: $projectId) }`;
const LEAVE = `mutation Leave($projectId: Int!) { leaveProjectCollaboration(projectId: $projectId) }`;
const CURSOR = `mutation Cursor($projectId: Int!, $cursor: CursorPositionInput, $selected: String) {
  updateUserPresence(projectId: $projectId, cursorPosition: $cursor, selectedNodeId: $selected)
}`;
const MOVE = `mutation Move($projectId: Int!, $nodeId: String!, $position: PositionInput!) {
  movePlanDagNode(projectId: $projectId, nodeId: $nodeId, position: $position) { id }
}`;
const DELETE_NODE = `mutation DeleteNode($projectId: Int!, $nodeId: String!) {
  deletePlanDagNode(projectId: $projectId, nodeId: $nodeId)
}`;

const CREATE_PROJECT = `mutation CreateProject($input: CreateProjectInput!) {
  createProject(input: $input) { id name }
}`;

const CREATE_DATA_SOURCE = `mutation CreateDataSource($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id name filename status executionState }
}`;

const ADD_EDGE = `mutation AddEdge($projectId: Int!, $edge: PlanDagEdgeInput!) {
  addPlanDagEdge(projectId: $projectId, edge: $edge) { id source target }
}`;

const EXECUTE_PLAN = `mutation ExecutePlan($projectId: Int!) { executePlan(projectId: $projectId) }`;
const EXECUTE_NODE = `mutation ExecuteNode($projectId: Int!, $nodeId: String!) {
  executeNode(projectId: $projectId, nodeId: $nodeId)
}`;
const STOP_PLAN = `mutation StopPlan($projectId: Int!) { stopPlanExecution(projectId: $projectId) }`;

export class Api {
  constructor(client) {
    this.client = client;
  }

  async projects() {
    return (await this.client.request(PROJECTS)).projects;
  }

  plan(projectId) {
    return this.client.request(PLAN, { projectId });
  }

  async createProject(name, description) {
    const input = { name, description: description || null };
    return (await this.client.request(CREATE_PROJECT, { input })).createProject;
  }

  async createDataSource(input) {
    return (await this.client.request(CREATE_DATA_SOURCE, { input })).createDataSource;
  }

  async addEdge(projectId, source, target) {
    const edge = { source, target };
    return (await this.client.request(ADD_EDGE, { projectId, edge })).addPlanDagEdge;
  }

  async executePlan(projectId) {
    return (await this.client.request(EXECUTE_PLAN, { projectId })).executePlan;
  }

  async executeNode(projectId, nodeId) {
    return (await this.client.request(EXECUTE_NODE, { projectId, nodeId })).executeNode;
  }

  async stopPlan(projectId) {
    return (await this.client.request(STOP_PLAN, { projectId })).stopPlanExecution;
  }

  /** This connection's userId (how other editors' presence names it). */
  async viewerUserId() {
    return (await this.client.request(VIEWER)).viewerUserId;
  }

  join(projectId) {
    return this.client.request(JOIN, { projectId });
  }

  leave(projectId) {
    return this.client.request(LEAVE, { projectId });
  }

  presence(projectId, cursor, selected) {
    return this.client.request(CURSOR, { projectId, cursor, selected });
  }

  moveNode(projectId, nodeId, position) {
    return this.client.request(MOVE, { projectId, nodeId, position });
  }

  deleteNode(projectId, nodeId) {
    return this.client.request(DELETE_NODE, { projectId, nodeId });
  }

  /** Plan edits of a project (planDagChanged). */
  watchPlan(variables, sink) {
    return this.client.subscribe(PLAN_CHANGES, variables, sink);
  }

  /** Who else edits the plan (userPresenceChanged). */
  watchPresence(variables, sink) {
    return this.client.subscribe(PRESENCE, variables, sink);
  }

  /** Status events of a project; `variables()` is asked before each (re)subscribe. */
  watch(variables, sink) {
    return this.client.subscribe(STATUS_SUBSCRIPTION, variables, sink);
  }
}

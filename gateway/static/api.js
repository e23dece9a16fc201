// The planpulse operations the page uses (gateway/schema.graphql), over a gqlws Client.

const PROJECTS = `query Projects { projects { id name description updatedAt } }`;

const PLAN = `query Plan($projectId: Int!) {
  project(id: $projectId) { id name description }
  planDag(projectId: $projectId) {
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

  /** Status events of a project; `variables()` is asked before each (re)subscribe. */
  watch(variables, sink) {
    return this.client.subscribe(STATUS_SUBSCRIPTION, variables, sink);
  }
}

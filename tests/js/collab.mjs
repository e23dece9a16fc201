// Edit and watch a project with the reference graphql-ws client, sending the Layercake
// frontend's collaboration documents unmodified (issue 15).
//
// Usage: node collab.mjs <ws-url> <projectId>
//
// It subscribes to planDagChanged, planDagDeltaChanged, userPresenceChanged and the
// current nodeExecutionStatusChanged document, joins the plan's editors, and prints
// `READY`. When it sees another user's node "py" added, it adds node "js" itself. It
// prints one JSON line per event ({kind, event}) and exits 0 once it has seen both edits
// as changes and deltas and another user present; 1 on any error, 2 after 20 s.

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const PLAN_DAG_CHANGED = `
subscription PlanDagChanged($projectId: Int!, $planId: Int) {
  planDagChanged(projectId: $projectId, planId: $planId) { type projectId changeId timestamp userId
    change {
      ... on PlanDagNodeChange { node { id nodeType position { x y } metadata { label description } config } operation }
      ... on PlanDagEdgeChange { edge { id source target metadata { label dataType } } operation }
      ... on PlanDagMetadataChange { metadata { version name description created lastModified author } } } } }
`;
const PLAN_DAG_DELTA = `
subscription PlanDagDeltaChanged($projectId: Int!, $planId: Int) {
  planDagDeltaChanged(projectId: $projectId, planId: $planId) { projectId version userId timestamp
    operations { op path value from } } }
`;
const USER_PRESENCE = `
subscription UserPresenceChanged($planId: ID!) {
  userPresenceChanged(planId: $planId) { userId userName avatarColor cursorPosition { x y } selectedNodeId isActive lastSeen } }
`;
const STATUS = `
subscription NodeExecutionStatusChanged($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) { projectId nodeId nodeType
    datasetExecution { dataSetId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage annotations }
    timestamp } }
`;
const JOIN = `mutation JoinProjectCollaboration($projectId: Int!) { joinProjectCollaboration(projectId: $projectId) }`;
const ADD_NODE = `mutation AddPlanDagNode($projectId: Int!, $node: PlanDagNodeInput!) {
  addPlanDagNode(projectId: $projectId, node: $node) { id } }`;

const [url, projectIdArg] = process.argv.slice(2);
const projectId = Number.parseInt(projectIdArg ?? '', 10);
let finished = false;
const seen = { plan: [], delta: [], presence: [] };

function exit(code, message) {
  if (finished) return;
  finished = true;
  if (message) process.stderr.write(`collab.mjs: ${message}\n`);
  Promise.resolve(client.dispose()).finally(() => process.stdout.write('', () => process.exit(code)));
}
setTimeout(() => exit(2, `timed out: ${JSON.stringify(seen)}`), 20_000);

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  connectionParams: { userName: 'Node editor' },
  on: { closed: (e) => exit(1, `unexpected close: ${e.code} ${e.reason}`) },
});

function request(query, variables) {
  return new Promise((resolve, reject) => {
    let result;
    client.subscribe({ query, variables }, {
      next: (r) => { result = r; },
      error: reject,
      complete: () => (result?.errors ? reject(result.errors) : resolve(result?.data)),
    });
  });
}

let myUserId = null;
let added = false;

function check() {
  const ids = seen.plan.map((e) => e.change.node?.id);
  const others = seen.presence.filter((p) => p.userName !== 'Node editor' && p.isActive);
  if (ids.includes('py') && ids.includes('js') && seen.delta.length >= 2 && others.length > 0) {
    exit(0);
  }
}

function watch(kind, query, variables, field) {
  client.subscribe({ query, variables }, {
    next: (result) => {
      if (result.errors?.length) return exit(1, `${kind}: ${JSON.stringify(result.errors)}`);
      const event = result.data[field];
      process.stdout.write(`${JSON.stringify({ kind, event })}\n`);
      if (kind in seen) seen[kind].push(event);
      if (kind === 'presence' && event.userName === 'Node editor') myUserId = event.userId;
      if (kind === 'plan' && event.change.node?.id === 'py' && !added) {
        added = true;
        request(ADD_NODE, { projectId, node: { id: 'js', nodeType: 'GraphNode', config: {} } })
          .catch((err) => exit(1, `add node: ${JSON.stringify(err)}`));
      }
      check();
    },
    error: (err) => exit(1, `${kind} error: ${JSON.stringify(err)}`),
    complete: () => exit(1, `${kind} completed by the server`),
  });
}

watch('plan', PLAN_DAG_CHANGED, { projectId, planId: projectId }, 'planDagChanged');
watch('delta', PLAN_DAG_DELTA, { projectId }, 'planDagDeltaChanged');
watch('presence', USER_PRESENCE, { planId: String(projectId) }, 'userPresenceChanged');
watch('status', STATUS, { projectId }, 'nodeExecutionStatusChanged');
request(JOIN, { projectId })
  .then(() => process.stdout.write('READY\n'))
  .catch((err) => exit(1, `join: ${JSON.stringify(err)}`));

// Drive planpulse with the real subscriptions-transport-ws client (the legacy `graphql-ws`
// subprotocol of Apollo Client 2/3's WebSocketLink), unmodified.
//
// Usage:
//   node legacy.mjs badge   <ws-url> <token|->              create a project and a data source
//                                                           over the socket, watch the badge
//   node legacy.mjs resume  <ws-url> <token|-> <projectId> <afterSequence> <count>
//   node legacy.mjs refused <ws-url> <token>                a refused connection_init
//   node legacy.mjs limits  <ws-url> <token|-> <bytes>      a too-deep query; a message > bytes
//
// stdout: one JSON object per line, {"step": ..., ...}; the last one is {"step":"done",...}
// with the message types the socket received. Exit 0 when the scenario ran to its end,
// 1 on an unexpected error (on stderr), 2 when 20 s pass first. The driving test
// (tests/test_e2e_js_legacy_client.py) checks what was printed.

import subscriptionsTransportWs from 'subscriptions-transport-ws';
import WebSocket from 'ws';

const { SubscriptionClient } = subscriptionsTransportWs;

// Copied verbatim from tests/helpers.py (VERBATIM_SUBSCRIPTION): the frontend's document.
const VERBATIM_SUBSCRIPTION = `
subscription NodeExecutionStatusChanged($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) {
    projectId
    nodeId
    nodeType
    datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
    timestamp
  }
}
`;

const RESUME_SUBSCRIPTION = `
subscription Resume($projectId: Int!, $after: Int) {
  nodeExecutionStatusChanged(projectId: $projectId, afterSequence: $after) {
    nodeId sequence datasourceExecution { executionState }
  }
}
`;

const CREATE_PROJECT = 'mutation($name: String!) { createProject(input: {name: $name}) { id name } }';
const CREATE_SOURCE = `
mutation($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id status executionState }
}
`;
const NODES_CSV = 'id,label,layer\nweb,Web frontend,app\napi,API,app\ndb,Database,data\n';
const TOO_DEEP = '{ a: planDag(projectId: 1) { nodes { id } } __schema { types { fields { name } } } }';

const TIMEOUT_MS = 20_000;

const received = []; // the type of every message the socket received
let lastClose = null;

/** The `ws` WebSocket, recording what arrives and how it closes; the client is unchanged. */
class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    // EventEmitter listeners: ws 7 drops addEventListener ones when `onmessage` is set.
    this.on('message', (data) => {
      try {
        received.push(JSON.parse(String(data)).type);
      } catch {
        received.push('<not json>');
      }
    });
    this.on('close', (code, reason) => {
      lastClose = { code, reason: String(reason) };
      onClose(lastClose);
    });
  }
}

let onClose = () => {};

function print(step, fields = {}) {
  process.stdout.write(`${JSON.stringify({ step, ...fields })}\n`);
}

function fail(what) {
  process.stderr.write(`${what}\n`);
  process.exit(1);
}

function describe(err) {
  if (err && typeof err === 'object') return JSON.stringify(err, Object.getOwnPropertyNames(err));
  return String(err);
}

function connect(url, token, extra = {}) {
  const connectionParams = token && token !== '-' ? { authorization: `Bearer ${token}` } : {};
  return new SubscriptionClient(
    url,
    { connectionParams, reconnect: false, ...extra },
    RecordingWebSocket,
  );
}

/** One query or mutation over `start`: resolves with its single result. */
function execute(client, query, variables) {
  return new Promise((resolve, reject) => {
    let result;
    client.request({ query, variables }).subscribe({
      next: (value) => {
        result = value;
      },
      error: (err) => reject(new Error(`operation failed: ${describe(err)}`)),
      complete: () => (result ? resolve(result) : reject(new Error('complete without data'))),
    });
  });
}

/** Subscribe and resolve with the first `count` events (then unsubscribe). */
function watch(client, query, variables, count) {
  return new Promise((resolve, reject) => {
    const events = [];
    const subscription = client.request({ query, variables }).subscribe({
      next: (value) => {
        if (value.errors) {
          reject(new Error(`GraphQL errors: ${JSON.stringify(value.errors)}`));
          return;
        }
        events.push(value.data.nodeExecutionStatusChanged);
        if (events.length === count) {
          subscription.unsubscribe();
          resolve(events);
        }
      },
      error: (err) => reject(new Error(`subscription failed: ${describe(err)}`)),
      complete: () => reject(new Error(`subscription completed after ${events.length} events`)),
    });
  });
}

async function badge(url, token) {
  const client = connect(url, token);
  const project = (await execute(client, CREATE_PROJECT, { name: 'legacy-client' })).data
    .createProject;
  print('project', { project });
  const projectId = Number(project.id);
  // Both starts leave in this order on one socket, and the server handles a socket's
  // messages in order: the subscription is in place before the mutation runs.
  const events = watch(client, VERBATIM_SUBSCRIPTION, { projectId }, 2);
  const source = execute(client, CREATE_SOURCE, {
    input: {
      projectId,
      name: 'Services',
      filename: 'services.csv',
      fileFormat: 'csv',
      dataType: 'nodes',
      content: NODES_CSV,
    },
  });
  print('source', { source: (await source).data.createDataSource });
  for (const event of await events) print('event', { event });
  client.close();
}

async function resume(url, token, projectId, after, count) {
  const client = connect(url, token);
  const events = await watch(client, RESUME_SUBSCRIPTION, { projectId, after }, count);
  for (const event of events) print('event', { event });
  client.close();
}

async function refused(url, token) {
  let connectionError = null;
  const closed = new Promise((resolve) => {
    onClose = resolve;
  });
  const client = connect(url, token, {
    connectionCallback: (error) => {
      if (error) connectionError = error;
    },
  });
  const close = await closed;
  print('connection_error', { payload: connectionError });
  print('closed', close);
  client.close();
}

async function limits(url, token, bytes) {
  const client = connect(url, token);
  const depth = await new Promise((resolve) => {
    client.request({ query: TOO_DEEP }).subscribe({
      next: (value) => resolve({ unexpected: value }),
      error: (err) => resolve(err),
      complete: () => resolve({ unexpected: 'complete' }),
    });
  });
  print('depth', { error: depth });
  const closed = new Promise((resolve) => {
    onClose = resolve;
  });
  client.request({ query: `{ projects { id } }${' '.repeat(bytes)}` }).subscribe({
    next: () => {},
    error: () => {},
  });
  print('closed', await closed);
  client.close();
}

const [scenario, url, token, ...rest] = process.argv.slice(2);
const scenarios = {
  badge: () => badge(url, token),
  resume: () => resume(url, token, Number(rest[0]), Number(rest[1]), Number(rest[2])),
  refused: () => refused(url, token),
  limits: () => limits(url, token, Number(rest[0])),
};
if (!url || !(scenario in scenarios)) {
  process.stderr.write('usage: node legacy.mjs badge|resume|refused|limits <ws-url> <token|-> ...\n');
  process.exit(64);
}
setTimeout(() => {
  process.stderr.write(`no end after ${TIMEOUT_MS} ms; received: ${received.join(',')}\n`);
  process.exit(2);
}, TIMEOUT_MS).unref();
scenarios[scenario]()
  .then(() => {
    print('done', { received, close: lastClose });
    process.exit(0);
  })
  .catch((err) => fail(`${err.stack ?? err}\nreceived: ${received.join(',')}`));

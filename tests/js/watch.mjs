// Watch a project's execution statuses with the reference graphql-ws client.
//
// Usage: node watch.mjs <ws-url> <projectId> <count>
//
// stdout: one line `SUBSCRIBED` once subscribe() has been called and the server has
// acknowledged the connection, then one JSON line per event (the
// `nodeExecutionStatusChanged` object). Exit codes: 0 after <count> events, 1 on any
// error or unexpected close (the reason on stderr), 2 when 20 s pass first.
//
// The test that drives this script (tests/test_e2e_js_client.py) reads stdout line by
// line, so every write is one whole line and nothing else goes to stdout.

import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

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

const TIMEOUT_MS = 20_000;

const [url, projectIdArg, countArg] = process.argv.slice(2);
const projectId = Number.parseInt(projectIdArg ?? '', 10);
const count = Number.parseInt(countArg ?? '', 10);
if (!url || !Number.isInteger(projectId) || !Number.isInteger(count) || count < 1) {
  process.stderr.write('usage: node watch.mjs <ws-url> <projectId> <count>\n');
  process.exit(64);
}

let finished = false;
let received = 0;
let subscribed = false;
let acknowledged = false;
let announced = false;

/** Describe an error, a CloseEvent or an array of GraphQL errors in one line. */
function describe(err) {
  if (Array.isArray(err)) return `GraphQL errors: ${JSON.stringify(err)}`;
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) {
    return `socket closed: code=${err.code} reason=${JSON.stringify(String(err.reason))}`;
  }
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  // ws hands `onerror` an ErrorEvent: { type, message, error }.
  if (err && typeof err === 'object' && 'message' in err) return String(err.message);
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

/** Leave once stdout and stderr are flushed (they are pipes when a test runs us). */
function exit(code, message) {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  if (message) process.stderr.write(`watch.mjs: ${message}\n`);
  process.stdout.write('', () => process.exit(code));
}

const timer = setTimeout(
  () => exit(2, `timed out after ${TIMEOUT_MS / 1000}s with ${received} of ${count} events`),
  TIMEOUT_MS,
);

function announceWhenReady() {
  if (announced || finished || !subscribed || !acknowledged) return;
  announced = true;
  process.stdout.write('SUBSCRIBED\n');
}

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  shouldRetry: () => false,
  onNonLazyError: (err) => exit(1, `connection failed: ${describe(err)}`),
  on: {
    connected: () => {
      acknowledged = true;
      announceWhenReady();
    },
    error: (err) => exit(1, `socket error: ${describe(err)}`),
    closed: (event) => exit(1, `unexpected close: ${describe(event)}`),
  },
});

const unsubscribe = client.subscribe(
  { query: VERBATIM_SUBSCRIPTION, variables: { projectId } },
  {
    next: (result) => {
      if (finished) return;
      if (result.errors?.length) {
        exit(1, `event carried errors: ${JSON.stringify(result.errors)}`);
        return;
      }
      const event = result.data?.nodeExecutionStatusChanged;
      if (!event) {
        exit(1, `event without data: ${JSON.stringify(result)}`);
        return;
      }
      process.stdout.write(`${JSON.stringify(event)}\n`);
      received += 1;
      if (received === count) {
        // Leave cleanly: `complete` for the subscription, then a normal close (1000).
        finished = true;
        clearTimeout(timer);
        unsubscribe();
        Promise.resolve(client.dispose()).finally(() =>
          process.stdout.write('', () => process.exit(0)),
        );
      }
    },
    error: (err) => exit(1, `subscription error: ${describe(err)}`),
    complete: () => exit(1, `server completed the subscription after ${received} of ${count} events`),
  },
);
subscribed = true;
announceWhenReady();

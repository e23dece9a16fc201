// The graphql-ws reference server: what the JavaScript ecosystem's usual stack does with the
// load the harness offers (bench/loadtest.py --server reference).
//
// graphql-ws's `useServer` on a `ws` WebSocketServer, a graphql-js schema, and an in-memory
// PubSub whose subscribers are async iterators (one unbounded queue each, the way
// graphql-subscriptions' PubSub works): for every delivery graphql-ws runs graphql-js
// `execute` on the subscriber's selection set and `JSON.stringify`s the result, which is what
// a graphql-ws server costs per delivery. No persistence: a "change" is a counter and a
// timestamp.
//
// It speaks to the harness exactly as planpulse does:
//   mutation prepareLoad(projects)                      projects 1..n exist (counters at 0)
//   mutation startLoad(projects, eventsPerSecond, seconds)
//       changes round-robin over projects 1..n at that rate in total, every TICK_MS; each
//       change takes its project's next sequence and a millisecond RFC 3339 timestamp taken
//       when it is made (planpulse stamps at persist), and is published to the project's
//       subscribers
//   subscription nodeExecutionStatusChanged(projectId)   the project's changes, live
//   query executionEvents(projectId, afterSequence, limit)  the tail check: sequences after n
//   GET /healthz, GET /metrics (planpulse_bus_changes_received_total: what the harness's loss
//   accounting compares with what it received)
//
//   node bench/reference/server.mjs --port 8799

import http from "node:http";
import process from "node:process";

import { buildSchema } from "graphql";
import { useServer } from "graphql-ws/use/ws";
import { WebSocketServer } from "ws";

const TICK_MS = 2; // as bench/baseline_server.py (planpulse's load generator: 10 ms)
const MAX_PROJECTS = 100_000;
const MAX_RATE = 1_000_000;
const STATES = ["completed", "processing"]; // by sequence parity: 1 processing, 2 completed, ...

const schema = buildSchema(`
  enum PlanDagNodeType { DataSourceNode }
  type DataSourceExecutionMetadata {
    dataSourceId: Int!
    filename: String!
    status: String!
    processedAt: String
    executionState: String!
    errorMessage: String
  }
  type NodeExecutionStatusEvent {
    projectId: Int!
    nodeId: String!
    nodeType: PlanDagNodeType!
    datasourceExecution: DataSourceExecutionMetadata
    timestamp: String!
    sequence: Int!
  }
  type Query {
    executionEvents(projectId: Int!, afterSequence: Int, limit: Int = 100): [NodeExecutionStatusEvent!]!
  }
  type Mutation {
    prepareLoad(projects: Int!): Boolean!
    startLoad(projects: Int!, eventsPerSecond: Int!, seconds: Float!): Boolean!
  }
  type Subscription {
    nodeExecutionStatusChanged(projectId: Int!, afterSequence: Int, snapshot: Boolean = false): NodeExecutionStatusEvent!
  }
`);

// --- the in-memory PubSub ------------------------------------------------------------------

/** One subscriber: an async iterator over what is published to its topic, queued unbounded. */
class Subscriber {
  constructor(topics, topic) {
    this.topics = topics;
    this.topic = topic;
    this.queue = [];
    this.waiting = null; // the resolve of a next() that found the queue empty
    this.done = false;
  }

  push(value) {
    if (this.waiting !== null) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve({ value, done: false });
    } else {
      this.queue.push(value);
    }
  }

  next() {
    if (this.queue.length > 0) return Promise.resolve({ value: this.queue.shift(), done: false });
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  return() {
    this.done = true;
    this.queue = [];
    this.topics.get(this.topic)?.delete(this);
    if (this.waiting !== null) {
      this.waiting({ value: undefined, done: true });
      this.waiting = null;
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  throw(error) {
    this.return();
    return Promise.reject(error);
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

class PubSub {
  constructor() {
    this.topics = new Map(); // project id -> Set<Subscriber>
  }

  subscribe(topic) {
    const subscriber = new Subscriber(this.topics, topic);
    let set = this.topics.get(topic);
    if (set === undefined) this.topics.set(topic, (set = new Set()));
    set.add(subscriber);
    return subscriber;
  }

  publish(topic, value) {
    const set = this.topics.get(topic);
    if (set === undefined) return;
    for (const subscriber of set) subscriber.push(value);
  }
}

// --- the load ------------------------------------------------------------------------------

const pubsub = new PubSub();
const sequences = new Map(); // project id -> last sequence
const lastTimestamps = new Map(); // project id -> timestamp of its last change
let published = 0;

function checkCount(name, value, highest) {
  if (!Number.isInteger(value) || value < 1 || value > highest) {
    throw new Error(`${name} must be an integer from 1 to ${highest}, not ${value}`);
  }
}

function event(project, sequence, timestamp) {
  const completed = sequence % 2 === 0;
  return {
    projectId: project,
    nodeId: `load_${project}`,
    nodeType: "DataSourceNode",
    datasourceExecution: {
      dataSourceId: project,
      filename: "load.csv",
      status: completed ? "active" : "processing",
      processedAt: completed ? timestamp : null,
      executionState: STATES[sequence % 2],
      errorMessage: null,
    },
    timestamp,
    sequence,
  };
}

function startLoad(projects, rate, seconds) {
  const total = Math.round(rate * seconds);
  const started = performance.now();
  let sent = 0;
  let project = 0;
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate) + 1);
    const timestamp = new Date().toISOString(); // 2026-12-04T02:19:11.123Z, as planpulse's
    while (sent < due) {
      project = (project % projects) + 1;
      const sequence = (sequences.get(project) ?? 0) + 1;
      sequences.set(project, sequence);
      lastTimestamps.set(project, timestamp);
      published += 1;
      sent += 1;
      pubsub.publish(project, { nodeExecutionStatusChanged: event(project, sequence, timestamp) });
    }
    if (sent < total) setTimeout(tick, TICK_MS);
  };
  tick();
}

const root = {
  prepareLoad({ projects }) {
    checkCount("projects", projects, MAX_PROJECTS);
    for (let p = 1; p <= projects; p++) if (!sequences.has(p)) sequences.set(p, 0);
    return true;
  },
  startLoad({ projects, eventsPerSecond, seconds }) {
    checkCount("projects", projects, MAX_PROJECTS);
    checkCount("eventsPerSecond", eventsPerSecond, MAX_RATE);
    if (!(seconds > 0)) throw new Error(`seconds must be positive, not ${seconds}`);
    startLoad(projects, eventsPerSecond, seconds);
    return true;
  },
  executionEvents({ projectId, afterSequence, limit }) {
    // No log is kept: a change is its sequence, so the tail is made again from the counter.
    const after = afterSequence ?? 0;
    const top = Math.min(sequences.get(projectId) ?? 0, after + Math.max(0, limit ?? 100));
    const stamp = lastTimestamps.get(projectId) ?? new Date().toISOString();
    const events = [];
    for (let s = after + 1; s <= top; s++) events.push(event(projectId, s, stamp));
    return events;
  },
  // graphql-js's default subscribe resolver calls this on the root value; each event is then
  // executed with the published payload as the root value.
  nodeExecutionStatusChanged({ projectId }) {
    return pubsub.subscribe(projectId);
  },
};

// --- HTTP and WebSocket --------------------------------------------------------------------

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "8799"));

const httpServer = http.createServer((request, response) => {
  const path = (request.url ?? "/").split("?", 1)[0];
  if (path === "/healthz") {
    response.writeHead(200, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ status: "ok", connections: wsServer.clients.size }));
  } else if (path === "/metrics") {
    response.writeHead(200, { "Content-Type": "text/plain; version=0.0.4" });
    response.end(
      "# TYPE planpulse_bus_changes_received counter\n" +
        `planpulse_bus_changes_received_total ${published}\n` +
        `planpulse_connections ${wsServer.clients.size}\n`,
    );
  } else {
    response.writeHead(404, { "Content-Type": "text/plain" });
    response.end("not found\n");
  }
});

const wsServer = new WebSocketServer({ server: httpServer, path: "/graphql" });
const cleanup = useServer({ schema, roots: { query: root, mutation: root, subscription: root } }, wsServer);

httpServer.listen(port, host, () => {
  console.warn(`reference listening on ws://${host}:${port}/graphql`);
});

function stop() {
  cleanup.dispose().finally(() => httpServer.close(() => process.exit(0)));
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

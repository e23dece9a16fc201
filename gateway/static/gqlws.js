// graphql-transport-ws, the client side: one WebSocket carrying queries, mutations and
// subscriptions, reconnected with backoff. It knows the protocol, nothing of planpulse.
//
// Subscriptions outlive the socket: after every reconnect each one is sent again, with
// variables asked anew from the caller, so the caller can resume (e.g. afterSequence).
// A request (query or mutation) whose socket drops before its answer is rejected, never
// silently re-sent: a mutation must not run twice behind the user's back.

export const SUBPROTOCOL = "graphql-transport-ws";

export const Status = Object.freeze({
  CONNECTING: "connecting",
  LIVE: "live",
  RECONNECTING: "reconnecting",
  REFUSED: "refused",
  STOPPED: "stopped",
});

const FORBIDDEN = 4403;
const NORMAL = 1000;
const KEEPALIVE_MS = 20000;
const PONG_TIMEOUT_MS = 10000;
const ACK_TIMEOUT_MS = 10000;

const CLOSE_REASONS = {
  1001: "the server is restarting",
  1006: "the connection was lost",
  1011: "the server hit an internal error",
  1013: "the server asked to retry later",
  4400: "the server could not read a message",
  4408: "connection_init came too late",
  4429: "too many connection_init messages",
};

/** GraphQL errors of one operation, as the server sent them. */
export class GraphQLRequestError extends Error {
  constructor(errors) {
    const list = Array.isArray(errors) && errors.length ? errors : [{ message: "unknown error" }];
    super([...new Set(list.map((e) => e.message))].join("; "));
    this.name = "GraphQLRequestError";
    this.errors = list;
    this.code = list[0]?.extensions?.code ?? null;
  }
}

/** The socket closed before the answer came, or the server refused the connection. */
export class ConnectionError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConnectionError";
  }
}

export function describeClose(code, reason) {
  const known = CLOSE_REASONS[code] ?? `closed with code ${code}`;
  return reason ? `${known} (${reason})` : known;
}

export function backoffDelay(attempt) {
  const base = Math.min(8000, 400 * 2 ** attempt);
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

export class Client {
  /**
   * @param {object} options
   * @param {string} options.url ws:// or wss:// URL of the GraphQL endpoint
   * @param {() => object} [options.connectionParams] the connection_init payload, asked each time
   * @param {(state: {status: string, detail: string, retryInMs?: number, code?: number}) => void} [options.onStatus]
   */
  constructor({ url, connectionParams = () => ({}), onStatus = () => {} }) {
    this.url = url;
    this.connectionParams = connectionParams;
    this.onStatus = onStatus;
    this.ws = null;
    this.acked = false;
    this.attempt = 0;
    this.nextId = 1;
    this.ops = new Map(); // id -> {kind, query, variables, sink, sent}
    this.timers = {};
    this.stopped = true;
    this.status = Status.STOPPED;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.#connect(Status.CONNECTING);
  }

  /** Close for good (code 1000); pending requests are rejected. */
  stop() {
    this.stopped = true;
    this.#clearTimers();
    this.#drop(NORMAL, "client stopped");
    this.#rejectRequests(new ConnectionError("the client was stopped"));
    this.#setStatus(Status.STOPPED, "stopped");
  }

  /** Reconnect at once (for example with a new token). */
  restart() {
    this.#clearTimers();
    this.#drop(NORMAL, "client restarting");
    this.#forgetSent(new ConnectionError("the connection was restarted before the server answered"));
    this.stopped = false;
    this.attempt = 0;
    this.#connect(Status.CONNECTING);
  }

  /** A query or mutation: resolves with `data`, rejects with GraphQLRequestError. */
  request(query, variables = {}) {
    return new Promise((resolve, reject) => {
      const id = String(this.nextId++);
      let data = null;
      this.ops.set(id, {
        kind: "request",
        query,
        variables,
        sent: false,
        sink: {
          next: (payload) => {
            if (payload.errors?.length) reject(new GraphQLRequestError(payload.errors));
            else data = payload.data;
          },
          error: (errors) => reject(errors instanceof Error ? errors : new GraphQLRequestError(errors)),
          complete: () => resolve(data),
        },
      });
      if (this.status === Status.REFUSED) {
        this.ops.get(id).sink.error(new ConnectionError("the server refused the connection"));
        this.ops.delete(id);
      } else if (this.acked) {
        this.#send(id);
      }
    });
  }

  /**
   * A subscription that survives reconnects.
   * @param {string} query
   * @param {() => object} variables asked before each (re)subscribe
   * @param {{next: (payload: object) => void, error?: (err: Error) => void}} sink
   * @returns {() => void} unsubscribe
   */
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.ops.set(id, { kind: "subscription", query, variables, sink, sent: false });
    if (this.acked) this.#send(id);
    return () => {
      const op = this.ops.get(id);
      if (!op) return;
      this.ops.delete(id);
      if (op.sent && this.acked) this.#write({ type: "complete", id });
    };
  }

  // --- the socket ------------------------------------------------------------------

  #connect(status) {
    this.acked = false;
    this.#setStatus(status, status === Status.CONNECTING ? "connecting…" : "reconnecting…");
    let ws;
    try {
      ws = new WebSocket(this.url, SUBPROTOCOL);
    } catch (err) {
      this.#onClosed(1006, String(err.message ?? err));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws.protocol !== SUBPROTOCOL) {
        this.#drop(NORMAL, "wrong subprotocol");
        this.#onClosed(4406, `the server did not accept ${SUBPROTOCOL}`);
        return;
      }
      this.#write({ type: "connection_init", payload: this.connectionParams() ?? {} });
      this.timers.ack = setTimeout(() => this.#lost("no connection_ack from the server"), ACK_TIMEOUT_MS);
    };
    ws.onmessage = (event) => this.#onMessage(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#onClosed(event.code, event.reason);
    };
  }

  #onMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this.#lost("the server sent a message that is not JSON");
      return;
    }
    const op = message.id !== undefined ? this.ops.get(message.id) : undefined;
    switch (message.type) {
      case "connection_ack":
        clearTimeout(this.timers.ack);
        this.acked = true;
        this.attempt = 0;
        this.#setStatus(Status.LIVE, "live");
        this.#keepAlive();
        for (const id of this.ops.keys()) this.#send(id);
        break;
      case "ping":
        this.#write({ type: "pong" });
        break;
      case "pong":
        clearTimeout(this.timers.pong);
        break;
      case "next":
        op?.sink.next(message.payload);
        break;
      case "error":
        if (op) {
          this.ops.delete(message.id);
          op.sink.error?.(new GraphQLRequestError(message.payload));
        }
        break;
      case "complete":
        if (op) {
          this.ops.delete(message.id);
          op.sink.complete?.();
        }
        break;
      default:
        break;
    }
  }

  #send(id) {
    const op = this.ops.get(id);
    if (!op || op.sent) return;
    const variables = typeof op.variables === "function" ? op.variables() : op.variables;
    op.sent = true;
    this.#write({ type: "subscribe", id, payload: { query: op.query, variables } });
  }

  #write(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  #keepAlive() {
    clearInterval(this.timers.ping);
    this.timers.ping = setInterval(() => {
      this.#write({ type: "ping" });
      clearTimeout(this.timers.pong);
      this.timers.pong = setTimeout(() => this.#lost("the server stopped answering pings"), PONG_TIMEOUT_MS);
    }, KEEPALIVE_MS);
  }

  /** Give up on a socket that looks dead without waiting for its closing handshake. */
  #lost(why) {
    this.#drop(NORMAL, why);
    this.#onClosed(1006, why);
  }

  #drop(code, reason) {
    const ws = this.ws;
    this.ws = null;
    this.acked = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(code, reason.slice(0, 120));
    } catch {
      /* already closed */
    }
  }

  #onClosed(code, reason) {
    this.#clearTimers();
    this.acked = false;
    this.#forgetSent(new ConnectionError(`${describeClose(code, reason)} before the server answered`));
    if (this.stopped) return;
    if (code === FORBIDDEN) {
      this.#rejectRequests(new ConnectionError("the server refused the connection"));
      this.#setStatus(Status.REFUSED, reason || "Forbidden", { code });
      return;
    }
    const delay = backoffDelay(this.attempt++);
    this.#setStatus(Status.RECONNECTING, describeClose(code, reason), { code, retryInMs: delay });
    this.timers.retry = setTimeout(() => this.#connect(Status.RECONNECTING), delay);
  }

  /** The socket is gone: its requests fail, its subscriptions wait for the next one. */
  #forgetSent(error) {
    for (const [id, op] of this.ops) {
      if (op.kind === "request" && op.sent) {
        this.ops.delete(id);
        op.sink.error(error);
      }
      op.sent = false;
    }
  }

  #rejectRequests(error) {
    for (const [id, op] of this.ops) {
      if (op.kind !== "request") continue;
      this.ops.delete(id);
      op.sink.error(error);
    }
  }

  #clearTimers() {
    clearTimeout(this.timers.ack);
    clearTimeout(this.timers.pong);
    clearTimeout(this.timers.retry);
    clearInterval(this.timers.ping);
  }

  #setStatus(status, detail, extra = {}) {
    this.status = status;
    this.onStatus({ status, detail, ...extra });
  }
}

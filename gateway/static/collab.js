// Collaboration on the open project: other editors' plan edits applied live
// (planDagChanged, resumed after the plan's version), and who else is here (presence).
// The cursor is sent at most 10 times a second; the server coalesces too. Presence
// reaches the page as the other editors (this connection's own user left out: its id
// is asked for on each new connection).

const CURSOR_INTERVAL_MS = 100;

export class Collaboration {
  /**
   * @param {import("./api.js").Api} api
   * @param {import("./model.js").PlanModel} model
   * @param {{onPlanEdit: (event: object) => void,
   *          onPresence: (users: object[], others: object[]) => void}} hooks
   *   onPresence gets every editor here (this page's user too) and the others only
   */
  constructor(api, model, hooks) {
    this.api = api;
    this.model = model;
    this.hooks = hooks;
    this.users = new Map(); // userId -> presence
    this.pendingCursor = null;
    this.cursorTimer = null;
    this.lastCursorAt = 0;
    this.selected = null;
    this.selfId = null; // this connection's userId, once known
    const projectId = model.projectId;
    this.unwatchPlan = api.watchPlan(
      () => ({ projectId, afterSequence: model.planVersion ?? undefined }),
      { next: (payload) => this.#onPlan(payload) },
    );
    this.unwatchPresence = api.watchPresence(
      () => {
        // (Re)subscribing means a (new) connection: join on it.
        this.users.clear();
        queueMicrotask(() => {
          api.join(projectId).catch(() => {});
          api
            .viewerUserId()
            .then((id) => {
              this.selfId = id;
              this.#render();
            })
            .catch(() => {});
        });
        return { planId: String(projectId) };
      },
      { next: (payload) => this.#onPresence(payload) },
    );
  }

  stop() {
    clearTimeout(this.cursorTimer);
    this.users.clear();
    this.#render();
    this.unwatchPlan();
    this.unwatchPresence();
    this.api.leave(this.model.projectId).catch(() => {});
  }

  /** This page's cursor (plan coordinates) moved. */
  cursor(x, y) {
    this.pendingCursor = { x, y };
    this.#schedule();
  }

  /** This page selected a node (or none). */
  select(nodeId) {
    this.selected = nodeId ?? null;
    this.#schedule();
  }

  #schedule() {
    if (this.cursorTimer) return;
    const wait = Math.max(0, this.lastCursorAt + CURSOR_INTERVAL_MS - Date.now());
    this.cursorTimer = setTimeout(() => {
      this.cursorTimer = null;
      this.lastCursorAt = Date.now();
      this.api
        .presence(this.model.projectId, this.pendingCursor, this.selected)
        .catch(() => {});
    }, wait);
  }

  #onPlan(payload) {
    const event = payload.data?.planDagChanged;
    if (event && this.model.applyPlanEdit(event)) this.hooks.onPlanEdit(event);
  }

  #onPresence(payload) {
    const user = payload.data?.userPresenceChanged;
    if (!user) return;
    if (user.isActive) this.users.set(user.userId, user);
    else this.users.delete(user.userId);
    this.#render();
  }

  #render() {
    const users = [...this.users.values()];
    this.hooks.onPresence(
      users,
      users.filter((user) => user.userId !== this.selfId),
    );
  }
}

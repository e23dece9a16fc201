// The page's wiring: one connection, the project list, the open project (its plan, its
// live status subscription) and the buttons. Each piece it wires lives in its own module.
//
// Live updates: the plan is queried, then `nodeExecutionStatusChanged(snapshot: true)` is
// subscribed; every event is applied to its node (repeats ignored by sequence). After a
// dropped connection the subscription is sent again with `afterSequence`, so the server
// replays what happened meanwhile and nothing is missed.

import { Api } from "./api.js";
import { Collaboration } from "./collab.js";
import { DagView } from "./dag.js";
import { Client, ConnectionError, Status } from "./gqlws.js";
import { PlanModel, STATES } from "./model.js";
import { ActivityFeed, DetailsPanel } from "./panel.js";
import { initPayload, storedToken, TokenDialog } from "./token.js";
import { $, describeError, h, showMessage, STATE_LABELS } from "./ui.js";
import { UploadDialog } from "./upload.js";

const RESUME_REFUSED = new Set(["RESUME_TOO_OLD", "BAD_AFTER_SEQUENCE"]);
// The server ended the subscription and said to resume with afterSequence (issue 16).
const RESUME_ASKED = new Set(["SUBSCRIBER_TOO_SLOW"]);

let token = storedToken();
const client = new Client({
  url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`,
  connectionParams: () => initPayload(token),
  onStatus: onConnectionStatus,
});
const api = new Api(client);
// For tests and the console: the page's own API on its own connection.
const dag = new DagView($("#canvas"), { onSelect: selectNode, zoomLabel: $("#zoom-level") });
window.planpulse = { api, dag, current: () => current };
// The cursor in plan coordinates (not the hovered card's offset), whatever the zoom.
$("#canvas").addEventListener("mousemove", (e) => {
  if (!current?.collab) return;
  const { x, y } = dag.toPlan(e.clientX, e.clientY);
  current.collab.cursor(x, y);
});

$("#zoom-in").addEventListener("click", () => dag.zoomBy(1));
$("#zoom-out").addEventListener("click", () => dag.zoomBy(-1));
$("#zoom-fit").addEventListener("click", () => dag.zoomBy(0));
const details = new DetailsPanel($("#details"), { onRunNode: runNode });
const feed = new ActivityFeed($("#feed"));
const upload = new UploadDialog($("#upload-dialog"), uploadDataSource);
const tokenDialog = new TokenDialog($("#token-dialog"), (newToken) => {
  token = newToken;
  client.restart();
});

/** The open project: its model and its subscription. */
let current = null; // {model, unwatch, loads, refetchTimer}
let everLive = false;
let refused = false;

// --- connection ---------------------------------------------------------------------

function onConnectionStatus({ status, detail, retryInMs }) {
  const indicator = $("#connection");
  indicator.dataset.status = status;
  document.body.dataset.connection = status;
  const words = {
    [Status.CONNECTING]: "Connecting…",
    [Status.LIVE]: "Live",
    [Status.RECONNECTING]: "Reconnecting…",
    [Status.REFUSED]: token ? "Token refused" : "Token needed",
    [Status.STOPPED]: "Offline",
  };
  $(".connection-text", indicator).textContent = words[status] ?? status;
  indicator.title =
    status === Status.RECONNECTING && retryInMs !== undefined
      ? `${detail}: retrying in ${(retryInMs / 1000).toFixed(1)} s`
      : detail;

  if (status === Status.LIVE) {
    // Requests that failed with the lost (or refused) socket are asked again; the status
    // subscription is re-sent by the client itself, resuming after the last sequence.
    if (everLive || refused) {
      loadProjects();
      if (current) refetchPlan(current, 0);
    }
    everLive = true;
    refused = false;
  } else if (status === Status.REFUSED) {
    refused = true;
    const why = token
      ? "The token was refused: enter a valid API token."
      : "This server needs an API token: enter one to connect.";
    showMessage("error", why, { title: "Not connected." });
    $("#projects").replaceChildren(h("li", { class: "hint" }, "Connect with an API token to see the projects."));
    tokenDialog.open(why);
  }
}

$("#connection").addEventListener("click", () => {
  if (client.status === Status.REFUSED) tokenDialog.open(null);
});
$("#token-button").addEventListener("click", () => tokenDialog.open(null));

// --- projects -----------------------------------------------------------------------

async function loadProjects() {
  let projects;
  try {
    projects = await api.projects();
  } catch (err) {
    // A lost or refused connection is told by the indicator; the list reloads once live.
    if (!(err instanceof ConnectionError)) {
      showMessage("error", describeError(err), { title: "Could not list the projects:" });
    }
    return;
  }
  const list = $("#projects");
  if (!projects.length) {
    list.replaceChildren(h("li", { class: "hint" }, "No projects yet: create one below."));
    return;
  }
  list.replaceChildren(
    ...projects.map((p) =>
      h(
        "li",
        {},
        h(
          "a",
          { class: "project-link", href: `#/project/${p.id}`, dataset: { projectId: p.id } },
          h("span", { class: "project-name" }, p.name),
          p.description ? h("span", { class: "project-desc" }, p.description) : null,
        ),
      ),
    ),
  );
  markActiveProject();
}

function markActiveProject() {
  for (const link of document.querySelectorAll(".project-link")) {
    link.classList.toggle("active", Number(link.dataset.projectId) === current?.model.projectId);
  }
}

$("#new-project").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("#new-project-name");
  const name = input.value.trim();
  if (!name) return;
  try {
    const project = await api.createProject(name);
    input.value = "";
    await loadProjects();
    location.hash = `#/project/${project.id}`;
  } catch (err) {
    showMessage("error", describeError(err), { title: "Could not create the project:" });
  }
});
$("#refresh-projects").addEventListener("click", loadProjects);

// --- the open project ---------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/project\/(\d+)/);
  const id = match ? Number(match[1]) : null;
  if (id === current?.model.projectId) return;
  closeProject();
  if (id !== null) openProject(id);
}

function closeProject() {
  if (!current) return;
  current.unwatch?.();
  current.collab?.stop();
  $("#presence").replaceChildren();
  clearTimeout(current.refetchTimer);
  current = null;
  $("#project").hidden = true;
  $("#empty").hidden = false;
  document.title = "planpulse";
  markActiveProject();
}

async function openProject(projectId) {
  const open = {
    model: new PlanModel(projectId),
    unwatch: null,
    loads: 0,
    refetchTimer: null,
    collab: null,
  };
  current = open;
  $("#empty").hidden = true;
  $("#project").hidden = false;
  $("#project").classList.remove("project-unavailable");
  $("#project-name").textContent = `Project ${projectId}`;
  $("#project-description").textContent = "Loading the plan…";
  feed.clear();
  details.clear();
  markActiveProject();
  // Without a connection the plan is loaded again once live; watch all the same.
  if ((await loadPlan(open, { opening: true })) !== "refused" && current === open) {
    watch(open);
    collaborate(open);
  }
}

/** Other editors: their plan edits drawn as they land, and who is here. */
function collaborate(open) {
  open.collab = new Collaboration(api, open.model, {
    onPlanEdit: () => {
      if (current === open) renderPlan(open.model);
    },
    onPresence: (users, others) => {
      if (current !== open) return;
      renderPresence(users);
      dag.showCursors(others);
    },
  });
}

function renderPresence(users) {
  $("#presence").replaceChildren(
    ...users.map((user) =>
      h(
        "span",
        {
          class: "presence-user",
          dataset: { userId: user.userId },
          title: user.selectedNodeId
            ? `${user.userName} · selected ${user.selectedNodeId}`
            : user.userName,
          style: `--avatar: ${user.avatarColor}`,
        },
        h("span", { class: "presence-dot" }),
        user.userName,
        user.selectedNodeId ? h("small", {}, ` · ${user.selectedNodeId}`) : "",
      ),
    ),
  );
}

/** The project cannot be shown (missing, or not allowed): say so where the plan would be. */
function showUnavailable(projectId, why) {
  $("#project-name").textContent = `Project ${projectId}`;
  $("#project-description").textContent = "not available";
  $("#project").classList.add("project-unavailable");
  $("#canvas").classList.add("canvas-empty");
  $("#canvas").dataset.empty = why;
}

/**
 * Query the plan and draw it: "ok"; "refused" when the server will not show this project
 * (it does not exist, or the token may not see it); "failed" for a lost connection.
 */
async function loadPlan(open, { opening = false } = {}) {
  const load = ++open.loads;
  const { projectId } = open.model;
  let result;
  try {
    result = await api.plan(projectId);
  } catch (err) {
    if (err instanceof ConnectionError || current !== open) return "failed";
    showMessage("error", describeError(err), { title: "Could not load the plan:" });
    showUnavailable(projectId, `Could not load this project: ${describeError(err)}`);
    return "refused";
  }
  if (current !== open || load !== open.loads) return "failed"; // closed, or a newer load
  if (!result.project) {
    const why = `Project ${projectId} does not exist (it may have been deleted).`;
    showMessage("error", why);
    showUnavailable(projectId, why);
    return "refused";
  }
  open.model.setPlan(result, { opening });
  $("#project").classList.remove("project-unavailable");
  renderPlan(open.model);
  return "ok";
}

function refetchPlan(open, delay = 150) {
  clearTimeout(open.refetchTimer);
  open.refetchTimer = setTimeout(() => loadPlan(open), delay);
}

function renderPlan(model) {
  const { project } = model;
  $("#project-name").textContent = project?.name ?? `Project ${model.projectId}`;
  $("#project-description").textContent =
    project?.description || `${model.nodes.length} nodes · ${model.edges.length} edges`;
  document.title = `${project?.name ?? "Project"} — planpulse`;
  $("#canvas").classList.toggle("canvas-empty", model.nodes.length === 0);
  $("#canvas").dataset.empty = "This plan has no nodes yet. Upload a data source to start one.";
  dag.draw(model);
  details.refresh(model);
  feed.relabel(model);
  renderSummary(model);
}

function renderSummary(model) {
  const counts = model.counts();
  $("#summary").replaceChildren(
    ...STATES.map((state) =>
      h(
        "span",
        {
          class: counts[state] ? "chip" : "chip chip-zero",
          dataset: { state },
          title: `${counts[state]} ${STATE_LABELS[state].toLowerCase()}`,
        },
        h("span", { class: "chip-dot" }),
        STATE_LABELS[state],
        h("b", {}, counts[state]),
      ),
    ),
  );
}

function watch(open) {
  const { model } = open;
  open.unwatch = api.watch(
    () => {
      if (model.highestSequence === null) {
        return { projectId: model.projectId, snapshot: true };
      }
      // One below the highest: a data source named by several nodes gives several events
      // with one sequence, and the socket may have dropped between them. Repeats are ignored.
      const afterSequence = Math.max(0, model.highestSequence - 1);
      feed.note(`Connection back: catching up on changes after #${afterSequence}`);
      return { projectId: model.projectId, afterSequence };
    },
    {
      next: (payload) => onStatusEvent(open, payload),
      error: (err) => onWatchError(open, err),
    },
  );
}

function onStatusEvent(open, payload) {
  if (current !== open) return;
  if (payload.errors?.length) {
    showMessage("error", describeError(payload), { title: "A status event came with errors:" });
    return;
  }
  const event = payload.data?.nodeExecutionStatusChanged;
  if (!event) return;
  const { model } = open;
  const state = (event.datasourceExecution ?? event.graphExecution)?.executionState;
  const echo = isSnapshotEcho(open, event, state);
  const outcome = model.apply(event);
  if (outcome === "repeat") return;
  if (!echo) feed.add(model, event);
  if (outcome === "unknown" || state === "pending") refetchPlan(open); // a new node, or a run starts
  if (outcome === "applied") {
    dag.update(model, event.nodeId);
    if (details.nodeId === event.nodeId) details.show(model, event.nodeId);
    renderSummary(model);
  }
}

/**
 * Does this event tell a state the plan query already showed, for a node no event has
 * reached yet? (The snapshot that opens the subscription, each item with the sequence of
 * its own latest change.) Such an event is no change: it is applied, not put in the feed.
 */
function isSnapshotEcho(open, event, state) {
  const before = open.model.status.get(event.nodeId);
  return Boolean(before && before.echoable && before.sequence === null && before.state === state);
}

async function onWatchError(open, err) {
  if (current !== open) return;
  open.unwatch = null;
  if (RESUME_ASKED.has(err.code)) {
    watch(open); // from just below the highest sequence held, as after a reconnect
    return;
  }
  if (RESUME_REFUSED.has(err.code)) {
    feed.note("The server cannot replay from where this page left off: reloading the current state.");
    open.model.forgetSequences();
    if ((await loadPlan(open, { opening: true })) !== "refused" && current === open) watch(open);
    return;
  }
  showMessage("error", describeError(err), { title: "Live updates of this project stopped:" });
}

// --- actions ------------------------------------------------------------------------

function selectNode(nodeId) {
  if (!current) return;
  dag.select(nodeId);
  details.show(current.model, nodeId);
  current.collab?.select(nodeId);
}

async function act(button, what, action) {
  if (!current) return;
  if (button) button.disabled = true;
  try {
    return await action(current.model.projectId);
  } catch (err) {
    showMessage("error", describeError(err), { title: `Could not ${what}:` });
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

$("#execute-plan").addEventListener("click", async (e) => {
  if (await act(e.currentTarget, "execute the plan", (pid) => api.executePlan(pid))) {
    showMessage("info", "The plan is running: watch the badges.");
  }
});

$("#stop-plan").addEventListener("click", async (e) => {
  const stopped = await act(e.currentTarget, "stop the plan", (pid) => api.stopPlan(pid));
  if (stopped === true) showMessage("info", "Stopping: nodes not yet done go back to not started.");
  else if (stopped === false) showMessage("info", "Nothing is running in this project.");
});

async function runNode(nodeId) {
  const label = current ? current.model.labelOf(current.model.byId.get(nodeId)) : nodeId;
  if (await act($("#run-node"), `run ${label}`, (pid) => api.executeNode(pid, nodeId))) {
    showMessage("info", `Running ${label} and what it depends on.`);
  }
}

$("#upload").addEventListener("click", () => {
  if (!current) return;
  const { model } = current;
  upload.open(model.graphLikeNodes().map((n) => ({ id: n.id, label: model.labelOf(n) })));
});

async function uploadDataSource({ feedInto, ...file }) {
  const open = current;
  if (!open) throw new Error("no project is open");
  const { model } = open;
  const source = await api.createDataSource({ projectId: model.projectId, ...file });
  await loadPlan(open);
  const node = model.dataSourceNodeOf(source.id);
  if (node) selectNode(node.id);
  if (feedInto && node) {
    try {
      await api.addEdge(model.projectId, node.id, feedInto);
      await loadPlan(open);
    } catch (err) {
      showMessage("error", describeError(err), {
        title: `Uploaded ${file.filename}, but could not connect it to ${feedInto}:`,
      });
      return;
    }
  }
  showMessage("success", `Uploaded ${file.filename}: processing started.`);
}

// --- start --------------------------------------------------------------------------

window.addEventListener("hashchange", route);
client.start();
loadProjects();
route();

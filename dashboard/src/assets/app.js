// Backporcher dashboard: plain JavaScript against /api, no build step. The fleet is loaded once,
// then kept up to date by task deltas from /api/events (SSE). Controls appear according to the
// user's role; the API enforces the same roles. Every piece of text from the API — titles,
// prompts, logs, reviews — is inserted as text (text nodes, textContent), never as markup.
"use strict";

const state = {
  me: null, tasks: new Map(), selected: null, selectedTask: null, logSource: null, events: null,
  view: "fleet", since: new Map(), activity: null, settings: null, auditBefore: null, repos: [],
};
const $ = (sel) => document.querySelector(sel);
const ROLE = { viewer: 0, operator: 1, admin: 2 };
const ENDED = ["merged", "failed", "canceled"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(method, path, body) {
  const headers = body ? { "content-type": "application/json" } : {};
  if (state.me && state.me.csrf_token && method !== "GET") headers["x-csrf-token"] = state.me.csrf_token;
  const resp = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, credentials: "same-origin" });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { message: text }; }
  if (!resp.ok) {
    const err = new Error((data && data.message) || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function can(role) { return state.me && ROLE[state.me.role] >= ROLE[role]; }

const money = (micro) => (micro == null ? "—" : "$" + (micro / 1e6).toFixed(micro !== 0 && Math.abs(micro) < 10000 ? 4 : 2));

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return Math.round(s / 86400) + " d";
}

function ago(iso) { return duration((Date.now() - Date.parse(iso)) / 1000); }

function when(iso) {
  const d = new Date(iso);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function showError(e) {
  $("#global-error").textContent = e ? (e.message || String(e)) : "";
}

// ---- Time in stage ----------------------------------------------------------------------------

// When a task entered its current status: from the agent view's data when known, else from the
// delta that changed its status (a status change bumps `updated_at`). An ended task's time in
// stage stops at its end.
function noteStatus(t) {
  const known = state.since.get(t.id);
  if (!known || known.status !== t.status) state.since.set(t.id, { status: t.status, at: t.updated_at });
}

function stageLabel(t) {
  if (ENDED.includes(t.status)) {
    const end = t.finished_at || t.updated_at;
    return `ended after ${duration((Date.parse(end) - Date.parse(t.created_at)) / 1000)}`;
  }
  const s = state.since.get(t.id);
  return ago(s && s.status === t.status ? s.at : t.updated_at);
}

// ---- Fleet ------------------------------------------------------------------------------------

function statusCell(t) {
  // A plan run (plan gate) reads as planning: the runner makes a plan, not the change.
  const shown = t.planning ? `${t.status}, planning` : t.status;
  const label = t.hold ? `${shown} (held: ${t.hold})` : shown;
  return el("span", { class: `badge s-${t.status}${t.hold ? " held" : ""}`, "data-status": t.status, "data-planning": t.planning ? "yes" : null }, label);
}

function matchesFilter(t) {
  const f = $("#filter").value.trim().toLowerCase();
  if (!f) return true;
  return [t.status, t.repo, t.title, String(t.id), t.hold || "", t.model].some((v) => v.toLowerCase().includes(f));
}

function row(t) {
  const tr = el("tr", { "data-id": String(t.id), tabindex: "0", "aria-label": `Task ${t.id}: ${t.title}, ${t.status}` },
    el("td", {}, String(t.id)),
    el("td", { class: "status" }, statusCell(t)),
    el("td", { class: "wide-only" }, t.repo),
    el("td", { class: "title" }, t.title),
    el("td", { class: "wide-only" }, t.model),
    el("td", { class: "since", "data-since": String(t.id) }, stageLabel(t)),
    el("td", { class: "wide-only" }, money(t.cost_microusd)));
  tr.addEventListener("click", () => openDetail(t.id));
  tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openDetail(t.id); } });
  if (state.selected === t.id) tr.classList.add("selected");
  tr.hidden = !matchesFilter(t);
  return tr;
}

function renderCounts() {
  const counts = {};
  for (const t of state.tasks.values()) counts[t.status] = (counts[t.status] || 0) + 1;
  $("#counts").replaceChildren(...Object.entries(counts).map(([k, v]) => el("span", { class: `s-${k}` }, `${k}: ${v}`)));
}

function upsert(t) {
  noteStatus(t);
  state.tasks.set(t.id, t);
  const body = $("#tasks tbody");
  const old = body.querySelector(`tr[data-id="${t.id}"]`);
  const fresh = row(t);
  if (old) {
    const focused = document.activeElement === old;
    old.replaceWith(fresh);
    if (focused) fresh.focus();
  } else body.prepend(fresh);
  renderCounts();
  if (state.selected === t.id) openDetail(t.id, true);
  if (state.view === "agents") scheduleActivity();
}

async function loadFleet() {
  const tasks = await api("GET", "/api/tasks?limit=200");
  state.tasks.clear();
  $("#tasks tbody").replaceChildren();
  await loadActivity().catch(() => {});
  for (const t of tasks.reverse()) upsert(t);
}

function listen() {
  if (state.events) state.events.close();
  const es = new EventSource("/api/events");
  es.addEventListener("task", (ev) => upsert(JSON.parse(ev.data)));
  es.addEventListener("resync", () => loadFleet());
  es.onerror = () => { /* EventSource reconnects by itself */ };
  state.events = es;
}

// The clock: time labels move without a reload.
function tick() {
  for (const td of document.querySelectorAll("#tasks td[data-since]")) {
    const t = state.tasks.get(Number(td.dataset.since));
    if (t) td.textContent = stageLabel(t);
  }
  for (const s of document.querySelectorAll("[data-since-at]")) s.textContent = ago(s.dataset.sinceAt);
}

// ---- Task panel -------------------------------------------------------------------------------

const LIVE = (t) => !ENDED.includes(t.status);
const APPROVABLE = (t) => t.status === "approval_hold" || t.hold === "dispatch_approval";
const ACTIONS = [
  ["approve", "Approve", APPROVABLE],
  ["reject", "Reject", (t) => APPROVABLE(t) || ["pr_open", "reviewing", "ci_wait"].includes(t.status)],
  ["hold", "Hold", (t) => !t.hold && LIVE(t)],
  // Release takes off a person's hold; the others clear by approval or by themselves.
  ["release", "Release", (t) => t.hold === "user"],
  ["escalate", "Escalate to opus", (t) => ["new", "queued", "leased", "running", "verifying"].includes(t.status) && t.model !== "opus"],
  ["dispatch", "Dispatch now", (t) => t.status === "queued"],
  ["requeue", "Requeue", (t) => ["failed", "canceled"].includes(t.status)],
  ["cancel", "Cancel", (t) => LIVE(t) && t.status !== "merging"],
];
const CONFIRM = { reject: "Reject this task's work (its PR is closed)?", cancel: "Cancel this task?" };

async function act(t, name, body) {
  if (CONFIRM[name] && !window.confirm(CONFIRM[name])) return;
  try {
    upsert(await api("POST", `/api/tasks/${t.id}/${name}`, body));
    $("#detail-error").textContent = "";
  } catch (e) { $("#detail-error").textContent = e.message; }
}

function renderReview(r) {
  const box = $("#detail-review");
  if (!r) { box.replaceChildren(el("p", { class: "muted" }, "not reviewed yet")); return; }
  const parts = [];
  const verdict = r.verdict || r.decision || (r.approved === true ? "approved" : r.approved === false ? "rejected" : null);
  if (verdict) parts.push(el("p", {}, el("strong", {}, "Verdict: "), String(verdict)));
  for (const key of ["reasons", "summary", "error"]) {
    const v = r[key];
    if (v == null || v === "") continue;
    const items = Array.isArray(v) ? v : [v];
    parts.push(el("p", {}, el("strong", {}, key[0].toUpperCase() + key.slice(1) + ": ")), el("ul", {}, ...items.map((x) => el("li", {}, typeof x === "string" ? x : JSON.stringify(x)))));
  }
  parts.push(el("details", {}, el("summary", {}, "The whole review"), el("pre", {}, JSON.stringify(r, null, 2))));
  box.replaceChildren(...parts);
}

// Best-of-N: a task's candidates with their ranks and why each lost; a candidate links its task.
async function renderCandidates(t) {
  const box = $("#detail-candidates");
  if (t.parent_id) {
    box.hidden = false;
    box.replaceChildren(`Candidate ${t.candidate} of best-of-N task `, taskLink(t.parent_id));
    return;
  }
  if (!(t.best_of > 1)) { box.hidden = true; box.replaceChildren(); return; }
  let c;
  try { c = await api("GET", `/api/tasks/${t.id}/candidates`); } catch (e) { showError(e); return; }
  if (state.selected !== t.id) return;
  const ranked = new Map();
  for (const r of c.rankings) for (const e of r.entries) if (!ranked.has(e.task_id)) ranked.set(e.task_id, { e, r });
  box.hidden = false;
  box.replaceChildren(el("h3", {}, `Best-of-${c.best_of} candidates`), el("ul", {}, ...c.candidates.map((x) => {
    const k = ranked.get(x.id);
    const what = k ? ` — rank ${k.e.rank}: ${k.e.reason}` : "";
    return el("li", {}, taskLink(x.id), ` ${x.model} · ${x.status}${x.terminal_reason ? " (" + x.terminal_reason + ")" : ""}${what}`);
  })), ...c.rankings.map((r) => el("p", { class: "muted" },
    `Round ${r.attempt}: winner #${r.winner ?? "none"}, reviewer ${r.reviewer}, ranked in ${(r.rank_micros / 1000).toFixed(1)} ms`)));
}

// Plan gate: the task's plan (text only) and, while it waits, approve / edit / reject.
async function renderPlan(t) {
  const box = $("#detail-plan");
  let p = null;
  if (t.attempt > 0 && !t.parent_id) {
    try { p = await api("GET", `/api/tasks/${t.id}/plan`); } catch (_) { p = null; }
  }
  if (state.selected !== t.id) return;
  if (!p) { box.hidden = true; return; }
  box.hidden = false;
  box.dataset.task = String(t.id);
  const meta = [`state ${p.state}${p.edited ? " (edited)" : ""}`,
    p.blast_radius != null ? `predicted blast radius ${p.blast_radius} files` : null,
    p.discarded.length ? `the plan run changed ${p.discarded.length} path(s), discarded` : null,
    p.decided_by ? `decided by ${p.decided_by}${p.note ? ": " + p.note : ""}` : `denied unless decided by ${when(p.due_at)}`].filter((x) => x);
  $("#detail-plan-meta").textContent = meta.join(" · ");
  $("#detail-plan-text").textContent = p.text;
  const waiting = p.state === "pending" && t.status === "plan_hold" && can("operator");
  $("#detail-plan-actions").hidden = !waiting;
  if (!waiting) { $("#plan-edit-form").hidden = true; $("#plan-reject-form").hidden = true; }
  if ($("#plan-edit-form").hidden) $("#plan-edit-text").value = p.text;
}

async function decidePlan(body) {
  const id = Number($("#detail-plan").dataset.task);
  try {
    await api("POST", `/api/tasks/${id}/plan`, body);
    $("#plan-error").textContent = "";
    $("#plan-edit-form").hidden = true;
    $("#plan-reject-form").hidden = true;
    openDetail(id, true);
  } catch (e) { $("#plan-error").textContent = e.message; }
}

function wirePlan() {
  $("#plan-approve").addEventListener("click", () => decidePlan({ action: "approve" }));
  $("#plan-edit").addEventListener("click", () => { $("#plan-edit-form").hidden = false; $("#plan-reject-form").hidden = true; $("#plan-edit-text").focus(); });
  $("#plan-reject").addEventListener("click", () => { $("#plan-reject-form").hidden = false; $("#plan-edit-form").hidden = true; $("#plan-reject-reason").focus(); });
  $("#plan-edit-form").addEventListener("submit", (e) => { e.preventDefault(); decidePlan({ action: "edit", text: $("#plan-edit-text").value }); });
  $("#plan-reject-form").addEventListener("submit", (e) => { e.preventDefault(); decidePlan({ action: "reject", reason: $("#plan-reject-reason").value }); });
}

function renderCost(t, usage) {
  const rows = (usage || []).map((u) => el("tr", {}, el("td", {}, u.purpose), el("td", {}, u.model), el("td", {}, String(u.calls)),
    el("td", {}, `${u.input_tokens.toLocaleString()} / ${u.output_tokens.toLocaleString()}`), el("td", {}, money(u.cost_microusd))));
  rows.push(el("tr", { class: "total" }, el("th", { scope: "row", colspan: "4" }, "Total"), el("td", {}, money(t.cost_microusd))));
  $("#detail-cost tbody").replaceChildren(...rows);
}

function renderEdit(t, body) {
  const form = $("#edit");
  const editable = ["new", "queued"].includes(t.status);
  const requeue = ["failed", "canceled"].includes(t.status);
  const box = $("#edit-box");
  box.hidden = !can("operator") || !(editable || requeue);
  if (box.hidden) return;
  // The fields follow the task until the person starts typing.
  if (form.dataset.task !== String(t.id) || (form.dataset.status !== t.status && !form.dataset.dirty)) {
    delete form.dataset.dirty;
    form.dataset.task = String(t.id);
    form.dataset.status = t.status;
    $("#edit-prompt").value = body;
    $("#edit-model").value = t.model;
    $("#edit-agent").value = t.agent || "claude";
    $("#edit-priority").value = String(t.priority);
  }
  $("#edit-title").textContent = editable ? "Edit before it runs (prompt, model, agent, priority)" : "Requeue with changes";
  $("#edit-note").textContent = editable
    ? "Changes apply to the next attempt; a running task cannot be changed (cancel it and requeue with changes)."
    : "The task ended; it goes back to the queue with these.";
  $("#edit-submit").textContent = editable ? "Save changes" : "Requeue with changes";
  form.dataset.action = editable ? "edit" : "requeue";
}

async function openDetail(id, refresh) {
  state.selected = id;
  if (!refresh) { delete $("#edit").dataset.dirty; $("#edit").dataset.task = ""; $("#edit-box").open = false; }
  document.querySelectorAll("#tasks tbody tr").forEach((r) => r.classList.toggle("selected", r.dataset.id === String(id)));
  let d;
  try { d = await api("GET", `/api/tasks/${id}`); } catch (e) { showError(e); return; }
  if (state.selected !== id) return;
  const t = d.task;
  state.selectedTask = t;
  const panel = $("#detail");
  panel.hidden = false;
  document.body.classList.add("detail-open");
  $("#detail-title").textContent = `#${t.id} ${t.title}`;
  const meta = [t.repo, `status ${t.status}${t.hold ? " (held: " + t.hold + ")" : ""}`, `model ${t.model}`, `agent ${t.agent || "claude"}`, `priority ${t.priority}`,
    `attempt ${t.attempt}`, t.runner_id ? `runner ${t.runner_id}` : null, `in stage ${stageLabel(t)}`,
    t.terminal_reason ? `ended: ${t.terminal_reason}` : null].filter((x) => x);
  $("#detail-meta").textContent = meta.join(" · ");
  const pr = $("#detail-pr");
  if (t.pr_url && /^https?:\/\//.test(t.pr_url)) {
    pr.replaceChildren("Pull request: ", el("a", { href: t.pr_url, target: "_blank", rel: "noopener noreferrer", id: "detail-pr-link" }, `#${t.pr_number ?? "?"}`),
      t.branch ? ` (branch ${t.branch})` : "");
  } else pr.replaceChildren(t.branch ? `Branch ${t.branch}; no pull request yet` : "No pull request yet");
  renderGuard(d.guard || []);
  renderQueue(d.merge_queue);
  $("#detail-error").textContent = t.error || "";
  $("#detail-prompt").textContent = d.body;
  $("#detail-environment").textContent = environmentLine(d.environment);
  // The runner's record: "reproduced: …" or "not reproduced: …" (text only).
  $("#detail-reproduction").textContent = d.reproduction ? d.reproduction.summary : "not run for this task";
  renderReview(t.review);
  loadEvidence(t);
  renderCost(t, d.usage);
  renderCandidates(t);
  renderPlan(t);
  $("#detail-timeline").replaceChildren(...d.timeline.map((e) => el("li", {}, `${when(e.at)} ${e.from_status || ""} → ${e.to_status} (${e.reason}, ${e.actor})`)));
  const actions = $("#detail-actions");
  actions.replaceChildren(...(can("operator") ? ACTIONS.filter(([, , ok]) => ok(t)).map(([name, label]) => el("button", {
    type: "button", "data-action": name, class: name === "reject" || name === "cancel" ? "danger" : null,
    onclick: () => act(t, name),
  }, label)) : []));
  renderEdit(t, d.body);
  const attempts = $("#log-attempt");
  const count = Math.max(1, t.attempt);
  const following = refresh && state.log && state.log.task === t.id;
  if (!refresh || attempts.options.length !== count) {
    attempts.replaceChildren(...Array.from({ length: count }, (_, i) => el("option", { value: String(i + 1) }, `${i + 1}${i + 1 === count ? " (latest)" : ""}`)));
    attempts.value = String(following ? state.log.attempt : count);
  }
  if (!refresh) {
    followLog(t, count);
    panel.focus();
  } else if (following && state.log.latest && t.attempt > state.log.attempt) {
    // A new attempt started while the latest one was shown: follow it.
    attempts.value = String(t.attempt);
    followLog(t, t.attempt);
  }
}

// ---- The attempt's signed evidence record (docs/evidence.md) ----------------------------------

function verifyText(v) {
  if (!v) return "not reported";
  const parts = [String(v.status || "not reported").replace(/_/g, " ")];
  if (v.exit_code != null) parts.push(`exit ${v.exit_code}`);
  if (v.duration_ms != null) parts.push(`${(v.duration_ms / 1000).toFixed(1)} s`);
  return parts.join(", ");
}

async function loadEvidence(t) {
  const box = $("#detail-evidence");
  let env;
  try { env = await api("GET", `/api/tasks/${t.id}/evidence`); } catch (e) {
    if (state.selected === t.id) box.replaceChildren(el("p", {}, e.status === 404 ? "No evidence record yet (one is made when an attempt is pushed)." : e.message));
    return;
  }
  if (state.selected !== t.id) return;
  let r;
  try { r = JSON.parse(env.record); } catch (_) { box.replaceChildren(el("p", { class: "error" }, "The record is not JSON.")); return; }
  const cov = r.coverage;
  const covText = cov && cov.fraction != null ? `${Math.round(cov.fraction * 100)} % (${(cov.covered || []).length} of ${(cov.covered || []).length + (cov.not_covered || []).length} symbols reached by a test)` : "not computed";
  const tests = (r.tests && r.tests.changed) || [];
  const rows = [
    ["Attempt", `${r.attempt} · head ${String(r.head || "").slice(0, 12)} · base ${String(r.base || "?").slice(0, 12)}`],
    ["Verify before (base)", verifyText(r.verify && r.verify.before)],
    ["Verify after (head)", verifyText(r.verify && r.verify.after)],
    ["Tests added or changed", tests.length ? tests.map((x) => `${x.path} ${x.name}: ${x.result}`).join("\n") : "none found"],
    ["Blast-radius coverage", covText],
    ["Model calls", `${((r.model_calls && r.model_calls.ledger) || []).length} ledger rows, ${money(r.model_calls && r.model_calls.total_cost_microusd)}`],
    ["Commands", ((r.commands) || []).map((c) => `${c.step} (round ${c.round}): ${c.ended}${c.exit_code != null ? " " + c.exit_code : ""}, ${c.duration_ms} ms`).join("\n") || "none reported"],
    ["Signature", `ed25519, key ${String(env.key_id).slice(0, 16)}… (check it: backporcher evidence verify ${r.task} --attempt ${r.attempt})`],
  ];
  const traj = r.trajectory && r.trajectory.url && /^\/api\//.test(r.trajectory.url) ? el("a", { href: r.trajectory.url, target: "_blank", rel: "noopener", id: "evidence-trajectory" }, `Transcript (${r.trajectory.steps} steps, JSON)`) : "";
  box.replaceChildren(
    el("table", { id: "evidence-table" }, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, el("pre", {}, v)))))),
    el("p", {}, traj),
    folded(JSON.stringify(r, null, 2), "Whole record"),
  );
}

function closeDetail() {
  $("#detail").hidden = true;
  document.body.classList.remove("detail-open");
  const id = state.selected;
  state.selected = null;
  if (state.logSource) state.logSource.close();
  document.querySelectorAll("#tasks tbody tr.selected").forEach((r) => r.classList.remove("selected"));
  const rowEl = id != null && document.querySelector(`#tasks tr[data-id="${id}"]`);
  if (rowEl) rowEl.focus();
}

// ---- The agent's work as a transcript ---------------------------------------------------------

const FOLD_CHARS = 600;
const FOLD_LINES = 8;
// Bounds: an attempt's log may hold tens of megabytes; the page keeps the latest of it.
const RAW_CAP = 400000;
const TEXT_CAP = 20000;
const MAX_ENTRIES = 1500;

// Text shown whole when short, folded (first line as the summary) when long.
function folded(text, label, cls) {
  let s = String(text ?? "").replace(/\n$/, "");
  if (s.length > TEXT_CAP) s = s.slice(0, TEXT_CAP) + `\n… ${(s.length - TEXT_CAP).toLocaleString()} more characters (the raw stream has them)`;
  const lines = s.split("\n");
  if (s.length <= FOLD_CHARS && lines.length <= FOLD_LINES) return el("pre", { class: cls || "" }, s);
  const first = lines.find((l) => l.trim()) || "";
  return el("details", { class: "fold" }, el("summary", {}, `${label ? label + ": " : ""}${first.slice(0, 120)}${first.length > 120 ? "…" : ""} (${lines.length} lines, ${s.length.toLocaleString()} characters)`),
    el("pre", { class: cls || "" }, s));
}

function toolSummary(name, input) {
  if (!input || typeof input !== "object") return "";
  const pick = input.command ?? input.file_path ?? input.path ?? input.pattern ?? input.url ?? input.query ?? input.description ?? null;
  if (pick != null) return String(pick).split("\n")[0].slice(0, 200);
  const keys = Object.keys(input);
  return keys.length ? keys.join(", ") : "";
}

function resultText(content) {
  if (content == null) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((c) => (c && c.type === "text" ? c.text : c && c.type === "image" ? "[image]" : JSON.stringify(c))).join("\n");
  return JSON.stringify(content, null, 2);
}

// Token weights of one step relative to an input token: output 5x, cache writes 1.25x, cache
// reads 0.1x (the price table's shape for every model family), so a step's share of the
// attempt's cost can be shown once the agent reports the total.
function stepWeight(u) {
  if (!u) return 0;
  return (u.input_tokens || 0) + 5 * (u.output_tokens || 0) + 1.25 * (u.cache_creation_input_tokens || 0) + 0.1 * (u.cache_read_input_tokens || 0);
}

// Keeps the last TEXT_CAP characters of a growing block of output.
function tail(pre) {
  if (pre.textContent.length > 2 * TEXT_CAP) pre.textContent = "[earlier output cut]\n" + pre.textContent.slice(-TEXT_CAP);
}

class Transcript {
  constructor(root, raw) {
    this.root = root;
    this.raw = raw;
    this.rawLen = 0;
    this.partial = {};
    this.steps = [];
    this.byMessage = new Map();
    this.tools = new Map();
    this.verify = null;
    this.started = null;
    this.lastAt = null;
    root.replaceChildren();
    raw.textContent = "";
  }

  push(chunk) {
    this.appendRaw(chunk);
    const at = chunk.at ? Date.parse(chunk.at) : Date.now();
    if (this.started == null) this.started = at;
    this.lastAt = at;
    const text = (this.partial[chunk.stream] || "") + chunk.text;
    const lines = text.split("\n");
    this.partial[chunk.stream] = lines.pop();
    for (const line of lines) this.line(chunk.stream, line, at);
  }

  flush() {
    for (const [stream, rest] of Object.entries(this.partial)) if (rest) this.line(stream, rest, this.lastAt || Date.now());
    this.partial = {};
  }

  appendRaw(chunk) {
    const prefix = chunk.stream === "agent" ? "" : `[${chunk.stream}] `;
    this.raw.append(document.createTextNode(prefix + chunk.text));
    this.rawLen += chunk.text.length;
    if (this.rawLen > RAW_CAP) {
      const keep = this.raw.textContent.slice(-RAW_CAP * 0.75);
      this.raw.textContent = "[earlier output cut]\n" + keep;
      this.rawLen = keep.length;
    }
  }

  add(node) {
    this.root.append(node);
    if (this.root.childElementCount > MAX_ENTRIES) {
      if (!this.cut) {
        this.cut = el("p", { class: "muted cut" });
        this.cutCount = 0;
      }
      while (this.root.childElementCount > MAX_ENTRIES) {
        const first = this.root.firstElementChild === this.cut ? this.cut.nextElementSibling : this.root.firstElementChild;
        first.remove();
        this.cutCount += 1;
      }
      this.cut.textContent = `${this.cutCount.toLocaleString()} earlier entries are not shown (the raw stream keeps the latest output)`;
      this.root.prepend(this.cut);
    }
    return node;
  }

  line(stream, line, at) {
    if (stream === "agent") {
      let msg = null;
      if (line.trim().startsWith("{")) { try { msg = JSON.parse(line); } catch (_) { msg = null; } }
      if (msg && typeof msg === "object") return this.message(msg, at);
      if (line.trim()) this.add(el("div", { class: "entry out" }, el("pre", {}, line)));
      return;
    }
    if (stream === "verify") return this.verifyLine(line);
    if (stream === "runner") {
      const m = /^verifying with `(.*)`$/.exec(line);
      if (m) return this.startVerify(m[1], at);
      if (/^verify failed/.test(line) && this.verify) { this.endVerify("failed", line); return; }
      if (/^verify passed/.test(line) && this.verify) { this.endVerify("passed", line); return; }
      if (!line.trim()) return;
      this.endVerifyIfOpen();
      this.add(el("div", { class: "entry note" }, el("span", { class: "who" }, "runner"), line));
      return;
    }
    if (!line.trim()) return;
    const last = this.root.lastElementChild;
    if (last && last.dataset.stream === stream) { const pre = last.querySelector("pre"); pre.append("\n" + line); tail(pre); return; }
    this.add(el("div", { class: `entry stream-${stream.replace(/[^a-z0-9_-]/gi, "_")}`, "data-stream": stream }, el("span", { class: "who" }, stream), el("pre", {}, line)));
  }

  startVerify(cmd, at) {
    this.endVerifyIfOpen();
    const out = el("pre", { class: "verify-out" });
    const status = el("span", { class: "verify-status" }, "running…");
    const node = el("details", { class: "entry verify", open: true, "data-verify": "running" },
      el("summary", {}, el("span", { class: "who" }, "verify"), el("code", {}, cmd), " · ", status, " ", el("span", { class: "step-time" })));
    node.append(out);
    this.add(node);
    this.verify = { node, out, status, at, lines: 0 };
  }

  verifyLine(line) {
    if (!this.verify) this.startVerify("(verify)", this.lastAt || Date.now());
    this.verify.out.append((this.verify.lines ? "\n" : "") + line);
    this.verify.lines += 1;
    tail(this.verify.out);
  }

  endVerify(outcome, line) {
    const v = this.verify;
    v.status.textContent = outcome;
    v.node.dataset.verify = outcome;
    v.node.classList.add(outcome === "passed" ? "ok" : "bad");
    v.node.querySelector(".step-time").textContent = `${duration(((this.lastAt || Date.now()) - v.at) / 1000)}`;
    if (v.lines > FOLD_LINES) v.node.open = outcome !== "passed";
    if (outcome === "failed") this.add(el("div", { class: "entry note" }, el("span", { class: "who" }, "runner"), line));
    this.verify = null;
  }

  endVerifyIfOpen() {
    if (this.verify) {
      const v = this.verify;
      v.status.textContent = "ended";
      v.node.dataset.verify = "ended";
      if (v.lines > FOLD_LINES) v.node.open = false;
      this.verify = null;
    }
  }

  step(id, at, model) {
    let s = id && this.byMessage.get(id);
    if (s) return s;
    this.endVerifyIfOpen();
    const prev = this.steps[this.steps.length - 1];
    if (prev && prev.end == null) { prev.end = at; this.stepMeta(prev); }
    const meta = el("span", { class: "step-meta" });
    const body = el("div", { class: "step-body" });
    const node = el("section", { class: "entry step", "aria-label": `Step ${this.steps.length + 1}` },
      el("h4", {}, `Step ${this.steps.length + 1}`, model ? el("span", { class: "muted" }, ` · ${model}`) : "", " ", meta), body);
    s = { id, node, body, meta, start: at, end: null, usage: null, cost: null };
    this.steps.push(s);
    if (id) this.byMessage.set(id, s);
    this.add(node);
    return s;
  }

  stepMeta(s) {
    const parts = [];
    if (s.end != null) parts.push(s.end - s.start < 1000 ? "<1 s" : duration((s.end - s.start) / 1000));
    if (s.usage) parts.push(`${(s.usage.input_tokens || 0) + (s.usage.cache_read_input_tokens || 0) + (s.usage.cache_creation_input_tokens || 0)} in / ${s.usage.output_tokens || 0} out tokens`);
    if (s.cost != null) parts.push(`≈${money(s.cost)}`);
    s.meta.textContent = parts.length ? "· " + parts.join(" · ") : "";
  }

  message(m, at) {
    switch (m.type) {
      case "system":
        if (m.subtype === "init") {
          const tools = Array.isArray(m.tools) ? m.tools.length : 0;
          this.add(el("div", { class: "entry note" }, el("span", { class: "who" }, "session"),
            `started · model ${m.model || "?"} · ${tools} tools${m.cwd ? " · in " + m.cwd : ""}`));
        } else {
          this.add(el("div", { class: "entry note" }, el("span", { class: "who" }, "system"), `${m.subtype || ""} ${m.message || ""}`.trim()));
        }
        return;
      case "assistant": {
        const msg = m.message || {};
        const s = this.step(msg.id, at, msg.model);
        if (msg.usage) { s.usage = msg.usage; this.stepMeta(s); }
        for (const b of Array.isArray(msg.content) ? msg.content : []) this.block(s, b);
        return;
      }
      case "user": {
        const msg = m.message || {};
        const content = Array.isArray(msg.content) ? msg.content : [{ type: "text", text: resultText(msg.content) }];
        for (const b of content) {
          if (b.type === "tool_result") this.toolResult(b);
          else if (b.type === "text" && b.text) this.add(el("div", { class: "entry user" }, el("span", { class: "who" }, "input"), folded(b.text)));
        }
        return;
      }
      case "result": return this.result(m, at);
      default:
        this.add(el("div", { class: "entry note" }, el("span", { class: "who" }, m.type || "event"), folded(JSON.stringify(m))));
    }
  }

  block(s, b) {
    if (b.type === "text") {
      if (b.text && b.text.trim()) s.body.append(el("div", { class: "said" }, folded(b.text, null, "prose")));
    } else if (b.type === "thinking") {
      s.body.append(el("details", { class: "thinking" }, el("summary", {}, "Thinking"), el("pre", {}, b.thinking || "")));
    } else if (b.type === "tool_use") {
      const result = el("div", { class: "tool-result muted" }, "waiting for the result…");
      const input = JSON.stringify(b.input ?? {}, null, 2);
      const node = el("div", { class: "tool", "data-tool": b.name || "tool" },
        el("div", { class: "tool-head" }, el("span", { class: "tool-name" }, b.name || "tool"), " ", el("code", {}, toolSummary(b.name, b.input))),
        el("details", { class: "tool-input" }, el("summary", {}, "Input"), el("pre", {}, input)),
        result);
      s.body.append(node);
      if (b.id) this.tools.set(b.id, { node, result });
    }
  }

  toolResult(b) {
    const t = this.tools.get(b.tool_use_id);
    const text = resultText(b.content);
    const body = folded(text || "(no output)", b.is_error ? "error" : "result");
    if (!t) { this.add(el("div", { class: "entry" }, el("span", { class: "who" }, "tool result"), body)); return; }
    t.result.className = `tool-result${b.is_error ? " bad" : ""}`;
    t.result.replaceChildren(body);
    if (b.is_error) t.node.classList.add("failed");
  }

  result(m, at) {
    const last = this.steps[this.steps.length - 1];
    if (last && last.end == null) last.end = at;
    const total = typeof m.total_cost_usd === "number" ? m.total_cost_usd * 1e6 : null;
    if (total != null) {
      const weights = this.steps.map((s) => stepWeight(s.usage));
      const sum = weights.reduce((a, b) => a + b, 0);
      this.steps.forEach((s, i) => { s.cost = sum > 0 ? (total * weights[i]) / sum : null; });
    }
    this.steps.forEach((s) => this.stepMeta(s));
    const ok = !m.is_error && m.subtype === "success";
    const facts = [ok ? "finished" : `ended: ${m.subtype || "error"}`, m.num_turns != null ? `${m.num_turns} turns` : null,
      m.duration_ms != null ? duration(m.duration_ms / 1000) : null, total != null ? `${money(total)} (as the agent counts it)` : null].filter((x) => x);
    this.add(el("div", { class: `entry result ${ok ? "ok" : "bad"}` }, el("span", { class: "who" }, "result"), facts.join(" · "),
      m.result ? folded(m.result, null, "prose") : ""));
  }
}

function followLog(t, attempt) {
  if (state.logSource) state.logSource.close();
  const transcript = new Transcript($("#transcript"), $("#detail-log"));
  const live = attempt === t.attempt && !ENDED.includes(t.status);
  state.log = { task: t.id, attempt, latest: attempt === Math.max(1, t.attempt), ended: false, transcript };
  $("#log-state").textContent = live ? "live" : "loading…";
  const es = new EventSource(`/api/tasks/${t.id}/logs/stream?attempt=${attempt}`);
  let any = false;
  es.addEventListener("logs", (ev) => {
    any = true;
    const near = nearBottom();
    for (const c of JSON.parse(ev.data)) transcript.push(c);
    if (near) scrollLog();
  });
  es.addEventListener("end", () => {
    es.close();
    transcript.flush();
    state.log.ended = true;
    $("#log-state").textContent = any ? "attempt ended" : "no log for this attempt";
  });
  state.logSource = es;
}

function nearBottom() {
  const p = $("#detail");
  return p.scrollHeight - p.scrollTop - p.clientHeight < 80;
}
function scrollLog() {
  if ($("#transcript").contains(document.activeElement)) return;
  const raw = $("#detail-log");
  raw.scrollTop = raw.scrollHeight;
}

// ---- Agents -----------------------------------------------------------------------------------

let activityTimer = null;
function scheduleActivity() {
  if (activityTimer) return;
  activityTimer = setTimeout(() => { activityTimer = null; loadActivity().catch(() => {}); }, 400);
}

const STAGES = ["new", "queued", "leased", "running", "verifying", "candidates", "plan_hold", "pushing", "pr_open", "reviewing", "ci_wait", "approval_hold", "merging"];
const STAGE_NAMES = { new: "New (triage)", leased: "Leased", candidates: "Best-of-N candidates", plan_hold: "Plan waits for approval", pr_open: "PR open", ci_wait: "Waiting for CI", approval_hold: "Awaiting approval" };
const stageName = (st) => STAGE_NAMES[st] || st[0].toUpperCase() + st.slice(1).replaceAll("_", " ");

async function loadActivity() {
  const a = await api("GET", "/api/activity");
  state.activity = a;
  for (const t of a.tasks) state.since.set(t.id, { status: t.status, at: t.since });
  tick();
  if (state.view === "agents") renderActivity(a);
}

function taskLink(id) {
  const t = state.tasks.get(id) || (state.activity && state.activity.tasks.find((x) => x.id === id));
  return el("button", { type: "button", class: "link", "data-task": String(id), onclick: () => { show("fleet"); openDetail(id); } }, `#${id}${t ? " " + t.title : ""}`);
}

function renderActivity(a) {
  const byId = new Map(a.tasks.map((t) => [t.id, t]));
  const runnerName = new Map(a.runners.map((r) => [r.id, r.name]));
  const sinceOf = (id) => { const t = byId.get(id); return t ? el("span", { class: "muted" }, " for ", el("span", { "data-since-at": t.since }, ago(t.since))) : ""; };
  $("#agent-cards").replaceChildren(...a.agents.map((g) => el("article", { class: `card${g.working.length ? " busy" : ""}`, "data-agent": g.name, "aria-label": `${g.name} agent` },
    el("h3", {}, g.name, " ", el("span", { class: `badge ${g.working.length ? "s-running" : "s-canceled"}` }, g.working.length ? "working" : "idle")),
    g.working.length ? el("ul", {}, ...g.working.map((id) => el("li", {}, "on ", taskLink(id), sinceOf(id)))) : el("p", { class: "muted" }, "working on nothing"),
    el("p", {}, `${g.waiting.length} waiting`, g.waiting.length ? ": " : "", ...g.waiting.slice(0, 5).flatMap((id) => [taskLink(id), " "])),
    el("p", { class: "muted" }, g.last_call ? `last call ${ago(g.last_call.at)} ago${g.last_call.task ? " for #" + g.last_call.task : ""} (${g.last_call.model}, ${money(g.last_call.cost_microusd)}); ${g.calls_last_hour} in the last hour` : "no call yet"))));
  $("#runner-cards").replaceChildren(...(a.runners.length ? a.runners.map((r) => el("article", { class: `card${r.tasks.length ? " busy" : ""}`, "data-runner": String(r.id), "aria-label": `runner ${r.name}` },
    el("h3", {}, r.name, " ", el("span", { class: `badge ${r.state === "active" ? "s-merged" : "s-approval_hold"}` }, r.state)),
    el("p", {}, `${r.tasks.length} of ${r.capacity} slots · seen ${r.last_seen_at ? ago(r.last_seen_at) + " ago" : "never"}`),
    r.tasks.length ? el("ul", {}, ...r.tasks.map((id) => { const t = byId.get(id); return el("li", {}, taskLink(id), t ? ` · ${t.status}` : "", sinceOf(id)); })) : el("p", { class: "muted" }, "idle")))
    : [el("p", { class: "muted" }, "no runner has joined")]));
  const columns = STAGES.map((st) => {
    const items = a.tasks.filter((t) => t.status === st);
    return el("section", { class: "column", "data-stage": st, "aria-label": `${st}: ${items.length}` },
      el("h3", {}, stageName(st), el("span", { class: "count" }, String(items.length))),
      el("ul", {}, ...items.map((t) => el("li", { class: `card mini worked-${t.worked_by}`, "data-task": String(t.id) },
        taskLink(t.id),
        el("div", { class: "muted" }, `${t.repo} · ${t.model}${t.hold ? " · held: " + t.hold : ""}`),
        el("div", {}, el("span", { "data-since-at": t.since }, ago(t.since)), ` · ${t.worked_by === "runner" ? "on " + (runnerName.get(t.runner_id) || "runner " + t.runner_id) : t.worked_by}`)))));
  });
  $("#board").replaceChildren(...columns);
}

// ---- Runners and repositories ------------------------------------------------------------------

async function loadRunners() {
  const rs = await api("GET", "/api/runners");
  $("#runner-table tbody").replaceChildren(...rs.map((r) => el("tr", {}, el("td", {}, String(r.id)), el("td", {}, r.name), el("td", {}, r.state), el("td", {}, `${r.leases}/${r.capacity}`), el("td", {}, r.labels.join(", ")), el("td", {}, r.last_seen_at ? ago(r.last_seen_at) + " ago" : "never"))));
}

async function loadRepos() {
  const rs = await api("GET", "/api/repos");
  state.repos = rs;
  $("#repo-table tbody").replaceChildren(...rs.map((r) => el("tr", {},
    el("td", {}, String(r.id)), el("td", {}, r.name), el("td", {}, r.settings.approval_mode || "global"),
    el("td", {}, r.settings.verify_command || "—"),
    el("td", { title: "Set in the settings, the environment wins over the repository's .backporcher.toml or devcontainer.json; otherwise those decide" },
      r.settings.env_image ? `${r.settings.env_image} (settings, ${(r.settings.env_setup || []).length} setup commands)` : "repository's files"),
    el("td", {}, String(r.active_tasks)),
    el("td", {},
      el("button", { type: "button", "data-environment": String(r.id), onclick: () => loadEnvironment(r) }, "Environment"), " ",
      el("button", { type: "button", onclick: () => loadLearnings(r) }, "Learnings")))));
}

// One line for a task's environment report (what the runner read and used).
// The post-merge guard on the task's latest merge: watching, clean, unknown, reverting or
// reverted (with the revert pull request's link).
function renderGuard(watches) {
  const box = $("#detail-guard");
  const g = watches[0];
  box.hidden = !g;
  if (!g) return box.replaceChildren();
  const parts = [`Post-merge guard: ${g.state}`];
  if (g.reason) parts.push(` (${g.reason})`);
  parts.push(` on ${g.merge_sha.slice(0, 12)}`);
  if (g.state === "watching") parts.push(` until ${when(g.until)}`);
  const nodes = [parts.join("")];
  if (g.revert_pr_url && /^https?:\/\//.test(g.revert_pr_url)) {
    nodes.push("; revert ", el("a", { href: g.revert_pr_url, target: "_blank", rel: "noopener noreferrer", id: "detail-guard-revert" }, `#${g.revert_pr ?? "?"}`));
  }
  if (g.revert_state) nodes.push(` (${g.revert_state.replace("_", " ")})`);
  if (watches.length > 1) nodes.push(` · ${watches.length - 1} earlier merge(s) watched`);
  box.replaceChildren(...nodes);
}

// The task's place in its repository's merge queue, and what it waits for (text only).
function renderQueue(q) {
  const box = $("#detail-queue");
  box.hidden = !q;
  box.textContent = q ? `Merge queue: position ${q.position}, waiting for ${q.waiting_for}` +
    (q.refreshes ? ` (brought up to date ${q.refreshes}×)` : "") : "";
}

function environmentLine(rep) {
  if (!rep) return "not read yet";
  if (rep.error) return `refused or failed: ${rep.error}`;
  const parts = [`described by ${rep.source || "?"}`, rep.image ? `image ${rep.image}` : "the runner's default image"];
  if (rep.snapshot) parts.push(`snapshot ${rep.snapshot} (setup ${rep.setup})`);
  if (rep.verify) parts.push(`verify \`${rep.verify}\` (${rep.verify_from})`);
  if (rep.commit) parts.push(`default branch at ${rep.commit.slice(0, 12)}`);
  return parts.join(" · ");
}

const list = (xs) => (xs && xs.length ? xs.join("; ") : "—");
const network = (f) => (f.setup_network == null ? null : f.setup_network ? "open" : "none");

// The environment as the settings describe it, beside what the repository's files declare and
// what the latest task used: which wins, and why.
async function loadEnvironment(r) {
  const e = await api("GET", `/api/repos/${r.id}/environment`);
  const rep = e.seen ? e.seen.report : null;
  const files = rep && rep.files ? rep.files : [];
  $("#environment").hidden = false;
  $("#environment-title").textContent = `Environment of ${e.repo}`;
  $("#environment-seen").textContent = e.seen
    ? `As task #${e.seen.task} (attempt ${e.seen.attempt}) read the default branch at ${(rep.commit || "?").slice(0, 12)}, ${ago(e.seen.at)} ago; the settings are as of now.`
    : "No task of this repository has run since environments were reported: the files' side shows after the next task.";
  $("#environment-error").textContent = rep && rep.error ? rep.error : "";
  $("#environment-files-head").textContent = files.length ? files.map((f) => f.path).join(" + ") : "Repository's files (none found)";
  const fileSays = (pick) => list(files.map((f) => { const v = pick(f); return v == null || v === "" ? null : (files.length > 1 ? `${f.path}: ${v}` : String(v)); }).filter((v) => v != null));
  // The file whose description was used, if one was: its own values are what ran.
  const used = rep ? files.find((f) => f.path === rep.source) : null;
  const usedSays = (pick) => { const v = used ? pick(used) : null; return v == null || v === "" ? "—" : String(v); };
  const rows = [
    ["Image", e.settings.image || "—", fileSays((f) => f.image), rep ? (rep.image ? `${rep.image}${rep.snapshot ? " → " + rep.snapshot : ""}` : "the runner's default image") : "—"],
    ["Setup", list(e.settings.setup), fileSays((f) => f.setup.join("; ")), rep && rep.setup ? `setup ${rep.setup}` : "—"],
    ["Verify", e.settings.verify_command || "—", fileSays((f) => f.verify), rep && rep.verify ? `${rep.verify} (from ${rep.verify_from})` : "none"],
    ["Protected paths", "—", fileSays((f) => f.protected_paths.join(", ")), rep ? list(rep.protected_paths) : "—"],
    ["Setup secrets", "—", fileSays((f) => f.secrets.join(", ")), usedSays((f) => f.secrets.join(", "))],
    ["Setup network", e.settings.image ? "open" : "—", fileSays(network), rep && rep.source === "the repository's settings" ? "open" : usedSays(network)],
    ["Variables", "—", fileSays((f) => Object.keys(f.env).join(", ")), usedSays((f) => Object.keys(f.env).join(", "))],
  ];
  $("#environment-table tbody").replaceChildren(...rows.map(([k, ...cells]) => el("tr", { "data-setting": k }, el("th", { scope: "row" }, k), ...cells.map((c) => el("td", {}, c)))));
  const notes = [
    rep ? `Used: ${rep.source || "?"} describes the environment.` : null,
    "The repository's settings win over its files (they are the operator's; the files are the repository's); .backporcher.toml wins over .devcontainer/devcontainer.json (it is made for this system). Both are read from the default branch only, never from a task branch.",
    ...(rep && rep.notes ? rep.notes : []),
  ].filter((n) => n);
  $("#environment-notes").replaceChildren(...notes.map((n) => el("li", {}, n)));
}

async function loadLearnings(r) {
  const ls = await api("GET", `/api/repos/${r.id}/learnings`);
  $("#learnings-title").textContent = `Learnings of ${r.name}`;
  $("#learnings").replaceChildren(...(ls.length ? ls.map((l) => el("li", {}, `${l.outcome === "merged" ? "+" : "!"} ${l.summary}`)) : [el("li", {}, "none yet")]));
}

// ---- Metrics as charts (inline SVG) -----------------------------------------------------------

const pct = (v) => (v == null ? "—" : Math.round(v * 100) + " %");

// A chart with its numbers one click away (for keyboards and screen readers too).
function chartCard(id, title, summary, body, head, rows) {
  const table = rows && rows.length
    ? el("details", { class: "numbers" }, el("summary", {}, "The numbers"),
      el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))))))
    : "";
  return el("figure", { class: "chart", id }, el("figcaption", {}, el("strong", {}, title), el("span", { class: "muted" }, " " + summary)), body, table);
}

// Columns per day; `series` = [{key, label, cls}] stacked bottom up.
function dayBars(days, series, label) {
  const W = 640, H = 180, pad = 28, n = Math.max(1, days.length);
  // Whole-number ticks: four steps of a whole size.
  const step = Math.max(1, Math.ceil(Math.max(0, ...days.map((d) => series.reduce((a, s) => a + (d[s.key] || 0), 0))) / 4));
  const max = step * 4;
  const bw = (W - pad * 2) / n;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H + 24}`, role: "img", "aria-label": label, class: "svgchart" }, svg("title", {}, label));
  for (let i = 0; i <= 4; i++) {
    const y = H - (H - 10) * (i / 4);
    g.append(svg("line", { x1: pad, x2: W - pad, y1: y, y2: y, class: "grid" }), svg("text", { x: 2, y: y + 4, class: "axis" }, String(step * i)));
  }
  days.forEach((d, i) => {
    let y = H;
    for (const s of series) {
      const v = d[s.key] || 0;
      if (!v) continue;
      const h = ((H - 10) * v) / max;
      y -= h;
      g.append(svg("rect", { x: pad + i * bw + 2, y, width: Math.max(2, bw - 4), height: h, class: s.cls, "data-day": d.day, "data-series": s.key }, svg("title", {}, `${d.day}: ${v} ${s.label}`)));
    }
    if (n <= 16 || i % Math.ceil(n / 8) === 0) g.append(svg("text", { x: pad + i * bw + bw / 2, y: H + 16, class: "axis", "text-anchor": "middle" }, d.day.slice(5)));
  });
  return g;
}

function lineChart(points, label, fmt) {
  const W = 640, H = 160, pad = 34, right = 24;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H + 24}`, role: "img", "aria-label": label, class: "svgchart" }, svg("title", {}, label));
  for (const f of [0, 0.5, 1]) {
    const y = H - (H - 10) * f;
    g.append(svg("line", { x1: pad, x2: W - right, y1: y, y2: y, class: "grid" }), svg("text", { x: 0, y: y + 4, class: "axis" }, fmt(f)));
  }
  const n = Math.max(1, points.length - 1);
  const xy = points.map((p, i) => [pad + ((W - pad - right) * i) / n, p.v == null ? null : H - (H - 10) * p.v]);
  let d = "";
  xy.forEach(([x, y], i) => { if (y == null) return; d += (d && xy[i - 1] && xy[i - 1][1] != null ? " L" : " M") + `${x.toFixed(1)} ${y.toFixed(1)}`; });
  if (d) g.append(svg("path", { d: d.trim(), class: "line" }));
  points.forEach((p, i) => {
    if (p.v == null) return;
    g.append(svg("circle", { cx: xy[i][0], cy: xy[i][1], r: 3.5, class: "dot", "data-day": p.day }, svg("title", {}, `${p.day}: ${fmt(p.v)} (${p.n} ended)`)));
  });
  points.forEach((p, i) => { if (points.length <= 16 || i % Math.ceil(points.length / 8) === 0) g.append(svg("text", { x: xy[i][0], y: H + 16, class: "axis", "text-anchor": "middle" }, p.day.slice(5))); });
  return g;
}

// Horizontal bars, one row per group; `bars` = [{key, label, cls}] drawn side by side.
function hbars(rows, bars, label, fmt) {
  const rowH = 14 * bars.length + 10, W = 640, left = 170, H = Math.max(1, rows.length) * rowH + 8;
  const max = Math.max(1e-9, ...rows.flatMap((r) => bars.map((b) => r[b.key] || 0)));
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, class: "svgchart" }, svg("title", {}, label));
  if (!rows.length) g.append(svg("text", { x: 8, y: 20, class: "axis" }, "no data yet"));
  rows.forEach((r, i) => {
    const y0 = 4 + i * rowH;
    g.append(svg("text", { x: left - 6, y: y0 + rowH / 2 + 2, class: "label", "text-anchor": "end" }, r.name.length > 24 ? r.name.slice(0, 23) + "…" : r.name));
    bars.forEach((b, j) => {
      const v = r[b.key];
      const y = y0 + j * 14;
      const w = v == null ? 0 : ((W - left - 90) * v) / max;
      if (v != null) g.append(svg("rect", { x: left, y, width: Math.max(1, w), height: 12, class: b.cls, "data-group": r.name, "data-series": b.key }, svg("title", {}, `${r.name}, ${b.label}: ${fmt(v)}`)));
      g.append(svg("text", { x: left + w + 4, y: y + 10, class: "value" }, v == null ? "—" : `${fmt(v)}${bars.length > 1 ? " " + b.label : ""}`));
    });
  });
  return g;
}

function legend(items) {
  return el("ul", { class: "legend" }, ...items.map(([cls, text]) => el("li", {}, svg("svg", { width: 12, height: 12, "aria-hidden": "true" }, svg("rect", { width: 12, height: 12, class: cls })), " ", text)));
}

async function loadMetrics() {
  const days = 14;
  const s = await api("GET", `/api/stats?days=${days}`);
  $("#metrics-days").textContent = String(days);
  const all = (s.window || []).find((g) => g.by === "all") || {};
  const items = [["Merged", s.merged], ["Failed", s.failed], ["Live", s.live], ["Success rate", pct(s.success_rate)], ["Retry rate", pct(s.retry_rate)],
    ["Time to merge (p50 / p90, " + days + " days)", all.merge_seconds_p50 == null ? "—" : `${duration(all.merge_seconds_p50)} / ${duration(all.merge_seconds_p90)}`],
    ["Cost per merged PR", money(s.cost_per_merged_microusd)], ["Total cost", money(s.total_cost_microusd)],
    ["Spent today", money(s.budget_today.spent_microusd) + (s.budget_today.budget_microusd == null ? "" : " of " + money(s.budget_today.budget_microusd))]];
  $("#stats").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));

  // Per day over every repository.
  const byDay = new Map();
  for (const d of s.by_day) {
    const x = byDay.get(d.day) || { day: d.day, merged: 0, failed: 0, cost: 0 };
    x.merged += d.merged; x.failed += d.failed; x.cost += d.cost_microusd;
    byDay.set(d.day, x);
  }
  const dayList = [...byDay.values()].sort((a, b) => (a.day < b.day ? -1 : 1));
  const merged = dayList.reduce((a, d) => a + d.merged, 0);
  const group = (by) => (s.window || []).filter((g) => g.by === by).map((g) => ({
    name: g.key, merged: g.merged, failed: g.failed,
    rate: g.merged + g.failed ? g.merged / (g.merged + g.failed) : null,
    p50: g.merge_seconds_p50, p90: g.merge_seconds_p90, per: g.per_merged_microusd,
  }));
  const models = group("model"), repos = group("repo");
  const charts = [
    chartCard("chart-merged", "Merged per day", `${merged} merged in ${days} days`,
      el("div", {}, dayBars(dayList, [{ key: "merged", label: "merged", cls: "c-ok" }, { key: "failed", label: "failed", cls: "c-bad" }], `Merged and failed tasks per day, last ${days} days`),
        legend([["c-ok", "merged"], ["c-bad", "failed"]])),
      ["Day", "Merged", "Failed", "Spent"], dayList.map((d) => [d.day, String(d.merged), String(d.failed), money(d.cost)])),
    chartCard("chart-success", "Success rate per day", `merged of merged + failed; all time ${pct(s.success_rate)}`,
      lineChart(dayList.map((d) => ({ day: d.day, v: d.merged + d.failed ? d.merged / (d.merged + d.failed) : null, n: d.merged + d.failed })), "Success rate per day", pct)),
  ];
  const head = (name) => [name[0].toUpperCase() + name.slice(1), "Merged", "Failed", "Success", "p50", "p90", "$ per merged PR"];
  const table = (rows) => rows.map((r) => [r.name, String(r.merged), String(r.failed), pct(r.rate), r.p50 == null ? "—" : duration(r.p50), r.p90 == null ? "—" : duration(r.p90), money(r.per)]);
  for (const [name, rows] of [["model", models], ["repository", repos]]) {
    charts.push(
      chartCard(`chart-ttm-${name}`, `Time to merge by ${name}`, "median and 90th percentile",
        el("div", {}, hbars(rows, [{ key: "p50", label: "p50", cls: "c-run" }, { key: "p90", label: "p90", cls: "c-warn" }], `Time to merge by ${name}`, duration), legend([["c-run", "p50"], ["c-warn", "p90"]])),
        head(name), table(rows)),
      chartCard(`chart-cost-${name}`, `$ per merged PR by ${name}`, "everything spent over what merged",
        hbars(rows, [{ key: "per", label: "per merged PR", cls: "c-cost" }], `Cost per merged PR by ${name}`, money)),
      chartCard(`chart-rate-${name}`, `Success rate by ${name}`, `last ${days} days`,
        hbars(rows, [{ key: "rate", label: "success", cls: "c-ok" }], `Success rate by ${name}`, pct)));
  }
  $("#charts").replaceChildren(...charts);
}

// ---- Audit, users, tokens ---------------------------------------------------------------------

async function loadAudit(more) {
  const q = more && state.auditBefore ? `?limit=100&before=${state.auditBefore}` : "?limit=100";
  const rows = await api("GET", `/api/audit${q}`);
  const body = $("#audit-table tbody");
  const trs = rows.map((a) => el("tr", { "data-action": a.action, class: a.outcome === "ok" || a.outcome.startsWith("ok") ? "" : "refused" },
    el("td", {}, when(a.at)), el("td", {}, a.actor), el("td", {}, a.action), el("td", {}, a.target || "—"), el("td", { class: "outcome" }, a.outcome)));
  if (more) body.append(...trs); else body.replaceChildren(...trs);
  state.auditBefore = rows.length ? rows[rows.length - 1].id : state.auditBefore;
  $("#audit-more").hidden = rows.length < 100;
}

async function loadUsers() {
  const us = await api("GET", "/api/users");
  $("#user-table tbody").replaceChildren(...us.map((u) => {
    const role = el("select", { "aria-label": `Role of ${u.username}`, "data-user-role": u.username },
      ...["viewer", "operator", "admin"].map((r) => el("option", { value: r, selected: r === u.role }, r)));
    role.addEventListener("change", () => patchUser(u, { role: role.value }));
    const toggle = el("button", { type: "button", "data-user-toggle": u.username, class: u.disabled ? "" : "danger",
      onclick: () => patchUser(u, { disabled: !u.disabled }) }, u.disabled ? "Enable" : "Disable");
    const self = state.me && u.id === state.me.id;
    if (self) { role.disabled = true; toggle.disabled = true; }
    return el("tr", { "data-user": u.username, class: u.disabled ? "disabled" : "" }, el("td", {}, String(u.id)), el("td", {}, u.username, self ? " (you)" : ""),
      el("td", {}, role), el("td", {}, el("span", { class: "user-state" }, u.disabled ? "disabled" : "active"), " ", toggle));
  }));
}

async function patchUser(u, patch) {
  try { await api("PATCH", `/api/users/${u.id}`, patch); $("#user-error").textContent = ""; }
  catch (e) { $("#user-error").textContent = e.message; }
  loadUsers().catch(showError);
}

async function loadTokens() {
  const ts = await api("GET", "/api/tokens");
  $("#token-table tbody").replaceChildren(...ts.map((t) => el("tr", { "data-token": t.name },
    el("td", {}, String(t.id)), el("td", {}, t.name), el("td", {}, t.last_used_at ? ago(t.last_used_at) + " ago" : "never"),
    el("td", { class: "token-state" }, t.revoked ? "revoked" : "active"),
    el("td", {}, t.revoked ? "" : el("button", { type: "button", class: "danger", "data-revoke": t.name, onclick: async () => {
      if (!window.confirm(`Revoke the token “${t.name}”? Whatever uses it stops working.`)) return;
      try { await api("DELETE", `/api/tokens/${t.id}`); } catch (e) { $("#token-error").textContent = e.message; }
      loadTokens().catch(showError);
    } }, "Revoke")))));
}

// ---- Settings: pause and the approval mode -------------------------------------------------------

function renderSettings(s) {
  state.settings = s;
  $("#paused-badge").hidden = !s.paused;
  $("#pause").hidden = !can("operator") || s.paused;
  $("#resume").hidden = !can("operator") || !s.paused;
  const mode = $("#approval-mode");
  if (document.activeElement !== mode) mode.value = s.approval_mode;
  mode.disabled = !can("admin");
}

async function refreshSettings() { renderSettings(await api("GET", "/api/settings")); }

async function setApprovalMode(mode) {
  const before = state.settings ? state.settings.approval_mode : null;
  try {
    renderSettings(await api("PATCH", "/api/settings", { approval_mode: mode }));
    showError(null);
  } catch (e) {
    showError(e);
    if (before) $("#approval-mode").value = before;
  }
}

// ---- Views ------------------------------------------------------------------------------------

const LOADERS = { fleet: loadFleet, agents: loadActivity, runners: loadRunners, repos: loadRepos, metrics: loadMetrics, audit: () => loadAudit(false), users: loadUsers, tokens: loadTokens };

function show(view) {
  state.view = view;
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== view; });
  document.querySelectorAll("#nav button").forEach((b) => b.toggleAttribute("aria-current", b.dataset.view === view));
  if (view !== "fleet" && !$("#detail").hidden) closeDetail();
  if (view === "agents" && state.activity) renderActivity(state.activity);
  LOADERS[view]().catch(showError);
}

async function openNewTask() {
  const form = $("#new-task");
  form.hidden = false;
  $("#new-task-open").setAttribute("aria-expanded", "true");
  if (!state.repos.length) state.repos = await api("GET", "/api/repos");
  const sel = $("#new-repo");
  sel.replaceChildren(...state.repos.map((r) => el("option", { value: r.name }, r.name)));
  (state.repos.length ? $("#new-title") : sel).focus();
  $("#new-error").textContent = state.repos.length ? "" : "No repository is registered yet: an admin adds one first.";
  // With a GitHub connection the task can follow an issue of its own, opened by the controller.
  $("#new-issue-label").hidden = !(state.settings && state.settings.github);
}

function closeNewTask() {
  $("#new-task").hidden = true;
  $("#new-task-open").setAttribute("aria-expanded", "false");
  $("#new-task-open").focus();
}

async function start() {
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#user").textContent = `${state.me.username} (${state.me.role})`;
  document.querySelectorAll(".op").forEach((e) => { e.hidden = !can("operator"); });
  document.querySelectorAll(".admin").forEach((e) => { e.hidden = !can("admin"); });
  await refreshSettings();
  show("fleet");
  listen();
  setInterval(tick, 1000);
  setInterval(() => {
    refreshSettings().catch(() => {});
    if (state.view === "agents") loadActivity().catch(() => {});
  }, 5000);
}

document.addEventListener("DOMContentLoaded", async () => {
  // The task panel starts below the header, however many lines the header wraps to.
  const header = document.querySelector("header");
  new ResizeObserver(() => document.documentElement.style.setProperty("--header-h", header.offsetHeight + "px")).observe(header);
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      state.me = await api("POST", "/api/login", { username: $("#login-user").value, password: $("#login-password").value });
      $("#login-error").textContent = "";
      await start();
    } catch (e) { $("#login-error").textContent = e.message; }
  });
  $("#logout").addEventListener("click", async () => { await api("POST", "/api/logout"); location.reload(); });
  wirePlan();
  $("#pause").addEventListener("click", async () => { try { renderSettings(await api("POST", "/api/pause")); } catch (e) { showError(e); } });
  $("#resume").addEventListener("click", async () => { try { renderSettings(await api("POST", "/api/resume")); } catch (e) { showError(e); } });
  $("#approval-mode").addEventListener("change", (ev) => setApprovalMode(ev.target.value));
  $("#detail-close").addEventListener("click", closeDetail);
  $("#filter").addEventListener("input", () => {
    for (const tr of document.querySelectorAll("#tasks tbody tr")) { const t = state.tasks.get(Number(tr.dataset.id)); if (t) tr.hidden = !matchesFilter(t); }
  });
  $("#new-task-open").addEventListener("click", () => openNewTask().catch(showError));
  $("#new-cancel").addEventListener("click", closeNewTask);
  $("#new-task").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { repo: $("#new-repo").value, title: $("#new-title").value, prompt: $("#new-prompt").value };
    if ($("#new-model").value.trim()) body.model = $("#new-model").value.trim();
    if ($("#new-agent").value) body.agent = $("#new-agent").value;
    if ($("#new-priority").value !== "") body.priority = Number($("#new-priority").value);
    if (!$("#new-issue-label").hidden && $("#new-issue").checked) body.open_issue = true;
    try {
      const t = await api("POST", "/api/tasks", body);
      $("#new-error").textContent = "";
      $("#new-task").reset();
      $("#new-task").hidden = true;
      $("#new-task-open").setAttribute("aria-expanded", "false");
      upsert(t);
      openDetail(t.id);
    } catch (e) { $("#new-error").textContent = e.message; }
  });
  $("#edit").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const t = state.selectedTask;
    if (!t) return;
    const body = {};
    const prompt = $("#edit-prompt").value;
    if (prompt !== $("#detail-prompt").textContent) body.prompt = prompt;
    if ($("#edit-model").value.trim() && $("#edit-model").value.trim() !== t.model) body.model = $("#edit-model").value.trim();
    if ($("#edit-agent").value !== (t.agent || "claude")) body.agent = $("#edit-agent").value;
    const p = $("#edit-priority").value;
    if (p !== "" && Number(p) !== t.priority) body.priority = Number(p);
    if (!Object.keys(body).length && $("#edit").dataset.action === "edit") { $("#detail-error").textContent = "nothing changed"; return; }
    $("#edit").dataset.status = "";
    delete $("#edit").dataset.dirty;
    await act(t, $("#edit").dataset.action, body);
  });
  // Once a person is in the form, live updates leave its fields alone.
  for (const ev of ["input", "focusin"]) $("#edit").addEventListener(ev, () => { $("#edit").dataset.dirty = "1"; });
  $("#log-attempt").addEventListener("change", (ev) => { if (state.selectedTask) followLog(state.selectedTask, Number(ev.target.value)); });
  $("#log-raw").addEventListener("click", (ev) => {
    const raw = ev.currentTarget.getAttribute("aria-pressed") !== "true";
    ev.currentTarget.setAttribute("aria-pressed", String(raw));
    ev.currentTarget.textContent = raw ? "Transcript" : "Raw stream";
    $("#detail-log").hidden = !raw;
    $("#transcript").hidden = raw;
  });
  $("#audit-more").addEventListener("click", () => loadAudit(true).catch(showError));
  $("#new-user").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/users", { username: $("#new-user-name").value, password: $("#new-user-password").value, role: $("#new-user-role").value });
      $("#new-user").reset();
      $("#user-error").textContent = "";
      loadUsers().catch(showError);
    } catch (e) { $("#user-error").textContent = e.message; }
  });
  $("#new-token").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("POST", "/api/tokens", { name: $("#new-token-name").value });
      $("#new-token").reset();
      $("#token-error").textContent = "";
      $("#token-secret").textContent = t.secret || "";
      $("#token-secret-box").hidden = false;
      $("#token-secret-done").focus();
      loadTokens().catch(showError);
    } catch (e) { $("#token-error").textContent = e.message; }
  });
  $("#token-secret-done").addEventListener("click", () => { $("#token-secret").textContent = ""; $("#token-secret-box").hidden = true; $("#new-token-name").focus(); });
  document.querySelectorAll("#nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape") return;
    if (!$("#new-task").hidden && $("#new-task").contains(document.activeElement)) closeNewTask();
    else if (!$("#detail").hidden) closeDetail();
  });
  try { state.me = await api("GET", "/api/me"); await start(); } catch (_) { $("#login-user").focus(); }
});

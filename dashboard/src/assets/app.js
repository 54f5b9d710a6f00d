// Backporcher dashboard: plain JavaScript against /api. The fleet is loaded once, then kept up to
// date by task deltas from /api/events (SSE). Controls appear according to the user's role.
"use strict";

const state = { me: null, tasks: new Map(), selected: null, logSource: null, events: null };
const $ = (sel) => document.querySelector(sel);
const ROLE = { viewer: 0, operator: 1, admin: 2 };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
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
  if (!resp.ok) throw new Error((data && data.message) || resp.statusText);
  return data;
}

function can(role) { return state.me && ROLE[state.me.role] >= ROLE[role]; }

function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function statusCell(t) {
  const label = t.hold ? `${t.status} (held: ${t.hold})` : t.status;
  return el("span", { class: `badge s-${t.status}${t.hold ? " held" : ""}`, "data-status": t.status }, label);
}

function row(t) {
  const tr = el("tr", { "data-id": String(t.id), tabindex: "0", "aria-label": `Task ${t.id}: ${t.title}` },
    el("td", {}, String(t.id)),
    el("td", { class: "status" }, statusCell(t)),
    el("td", {}, t.repo),
    el("td", {}, t.title),
    el("td", {}, t.model),
    el("td", {}, ago(t.updated_at)),
    el("td", {}, "$" + (t.cost_microusd / 1e6).toFixed(2)));
  tr.addEventListener("click", () => openDetail(t.id));
  tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openDetail(t.id); } });
  if (state.selected === t.id) tr.classList.add("selected");
  return tr;
}

function renderCounts() {
  const counts = {};
  for (const t of state.tasks.values()) counts[t.status] = (counts[t.status] || 0) + 1;
  const c = $("#counts");
  c.replaceChildren(...Object.entries(counts).map(([k, v]) => el("span", {}, `${k}: ${v}`)));
  const act = $("#activity");
  const running = [...state.tasks.values()].filter((t) => ["leased", "running", "verifying"].includes(t.status));
  act.replaceChildren(...(running.length ? running.map((t) => el("li", {}, `runner ${t.runner_id ?? "?"} → #${t.id} ${t.status}`)) : [el("li", {}, "no agent running")]));
}

function upsert(t) {
  state.tasks.set(t.id, t);
  const body = $("#tasks tbody");
  const old = body.querySelector(`tr[data-id="${t.id}"]`);
  const fresh = row(t);
  if (old) old.replaceWith(fresh);
  else body.prepend(fresh);
  renderCounts();
  if (state.selected === t.id) openDetail(t.id, true);
}

async function loadFleet() {
  const tasks = await api("GET", "/api/tasks?limit=200");
  state.tasks.clear();
  $("#tasks tbody").replaceChildren();
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

const ACTIONS = [
  ["approve", "Approve", (t) => t.status === "approval_hold" || t.hold === "dispatch_approval"],
  ["hold", "Hold", (t) => !t.hold && !["merged", "failed", "canceled"].includes(t.status)],
  ["release", "Release", (t) => !!t.hold],
  ["escalate", "Escalate to opus", (t) => ["new", "queued", "leased", "running", "verifying"].includes(t.status) && t.model !== "opus"],
  ["dispatch", "Dispatch now", (t) => t.status === "queued"],
  ["requeue", "Requeue", (t) => ["failed", "canceled"].includes(t.status)],
  ["cancel", "Cancel", (t) => !["merged", "failed", "canceled", "merging"].includes(t.status)],
];

async function openDetail(id, refresh) {
  state.selected = id;
  document.querySelectorAll("#tasks tbody tr").forEach((r) => r.classList.toggle("selected", r.dataset.id === String(id)));
  const d = await api("GET", `/api/tasks/${id}`);
  const t = d.task;
  const panel = $("#detail");
  panel.hidden = false;
  $("#detail-title").textContent = `#${t.id} ${t.title}`;
  const meta = [`${t.repo}`, `status ${t.status}${t.hold ? " (held: " + t.hold + ")" : ""}`, `model ${t.model}`, `attempt ${t.attempt}`, `cost $${(t.cost_microusd / 1e6).toFixed(2)}`];
  $("#detail-meta").replaceChildren(meta.join(" · "), t.pr_url ? el("span", {}, " · ", el("a", { href: t.pr_url, target: "_blank", rel: "noopener" }, `PR #${t.pr_number}`)) : "");
  $("#detail-error").textContent = t.error || "";
  $("#detail-environment").textContent = environmentLine(d.environment);
  $("#detail-review").textContent = t.review ? (t.review.reasons || t.review.error || JSON.stringify(t.review)) : "—";
  $("#detail-timeline").replaceChildren(...d.timeline.map((e) => el("li", {}, `${new Date(e.at).toLocaleTimeString()} ${e.from_status || ""} → ${e.to_status} (${e.reason}, ${e.actor})`)));
  const actions = $("#detail-actions");
  actions.replaceChildren(...(can("operator") ? ACTIONS.filter(([, , ok]) => ok(t)).map(([name, label]) => el("button", {
    type: "button", "data-action": name,
    onclick: async () => {
      try { upsert(await api("POST", `/api/tasks/${t.id}/${name}`)); }
      catch (e) { $("#detail-error").textContent = e.message; }
    },
  }, label)) : []));
  if (!refresh) {
    followLog(t);
    panel.focus();
  }
}

function followLog(t) {
  if (state.logSource) state.logSource.close();
  const pre = $("#detail-log");
  pre.textContent = "";
  const es = new EventSource(`/api/tasks/${t.id}/logs/stream`);
  es.addEventListener("logs", (ev) => {
    for (const c of JSON.parse(ev.data)) pre.textContent += c.text;
    if (pre.textContent.length > 200000) pre.textContent = pre.textContent.slice(-150000);
    pre.scrollTop = pre.scrollHeight;
  });
  es.addEventListener("end", () => es.close());
  state.logSource = es;
}

async function loadRunners() {
  const rs = await api("GET", "/api/runners");
  $("#runner-table tbody").replaceChildren(...rs.map((r) => el("tr", {}, el("td", {}, String(r.id)), el("td", {}, r.name), el("td", {}, r.state), el("td", {}, `${r.leases}/${r.capacity}`), el("td", {}, r.labels.join(", ")), el("td", {}, r.last_seen_at ? ago(r.last_seen_at) + " ago" : "never"))));
}

async function loadRepos() {
  const rs = await api("GET", "/api/repos");
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

async function loadMetrics() {
  const s = await api("GET", "/api/stats?days=14");
  const pct = (v) => (v == null ? "—" : Math.round(v * 100) + " %");
  const items = [["Merged", s.merged], ["Failed", s.failed], ["Live", s.live], ["Success rate", pct(s.success_rate)], ["Retry rate", pct(s.retry_rate)],
    ["Average time to merge", s.avg_seconds_to_merge == null ? "—" : Math.round(s.avg_seconds_to_merge) + " s"],
    ["Cost per task", s.avg_cost_microusd == null ? "—" : "$" + (s.avg_cost_microusd / 1e6).toFixed(2)], ["Total cost", "$" + (s.total_cost_microusd / 1e6).toFixed(2)],
    ["Cost per merged PR", s.cost_per_merged_microusd == null ? "—" : "$" + (s.cost_per_merged_microusd / 1e6).toFixed(2)],
    ...s.by_model.map((m) => [`  per merged PR, ${m.model}`, m.per_merged_microusd == null ? "—" : "$" + (m.per_merged_microusd / 1e6).toFixed(2)]),
    ["Spent today", "$" + (s.budget_today.spent_microusd / 1e6).toFixed(2) + (s.budget_today.budget_microusd == null ? "" : " of $" + (s.budget_today.budget_microusd / 1e6).toFixed(2))]];
  $("#stats").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
}

async function refreshSettings() {
  const s = await api("GET", "/api/settings");
  $("#paused-badge").hidden = !s.paused;
  $("#pause").hidden = !can("operator") || s.paused;
  $("#resume").hidden = !can("operator") || !s.paused;
}

function show(view) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== view; });
  document.querySelectorAll("#nav button").forEach((b) => b.toggleAttribute("aria-current", b.dataset.view === view));
  ({ fleet: loadFleet, runners: loadRunners, repos: loadRepos, metrics: loadMetrics })[view]().catch((e) => console.error(e));
}

async function start() {
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#user").textContent = `${state.me.username} (${state.me.role})`;
  await refreshSettings();
  show("fleet");
  listen();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      state.me = await api("POST", "/api/login", { username: $("#login-user").value, password: $("#login-password").value });
      $("#login-error").textContent = "";
      await start();
    } catch (e) { $("#login-error").textContent = e.message; }
  });
  $("#logout").addEventListener("click", async () => { await api("POST", "/api/logout"); location.reload(); });
  $("#pause").addEventListener("click", async () => { await api("POST", "/api/pause"); refreshSettings(); });
  $("#resume").addEventListener("click", async () => { await api("POST", "/api/resume"); refreshSettings(); });
  $("#detail-close").addEventListener("click", () => { $("#detail").hidden = true; state.selected = null; if (state.logSource) state.logSource.close(); });
  document.querySelectorAll("#nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("#detail").hidden) $("#detail-close").click();
  });
  try { state.me = await api("GET", "/api/me"); await start(); } catch (_) { $("#login-user").focus(); }
});

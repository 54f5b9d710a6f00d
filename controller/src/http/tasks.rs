//! Tasks: lists with filters, creation from a prompt, detail with the timeline, logs (paged and
//! followed), the actions people take on a task, and the live task deltas (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::auth::{Caller, Role};
use super::guard::StreamKind;
use super::views::*;
use super::{ApiError, ApiJson, ApiResult, AppState, audited, repo_names};
use crate::store::Status;
use crate::store::ops::Op;
use crate::store::tasks::{Edits, NewTask, TaskFilter};

/// The filters of `GET /api/tasks`.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct TaskQuery {
    /// Only tasks in this status.
    #[param(value_type = Option<api::TaskStatus>)]
    status: Option<String>,
    /// Only tasks of this repository (`owner/name`).
    repo: Option<String>,
    /// Only tasks that have not ended.
    #[serde(default)]
    live: bool,
    /// At most this many (default 200; at most 1000 are returned).
    limit: Option<i64>,
    /// Only tasks with a smaller id (the next page).
    before: Option<i64>,
}

pub(super) async fn list_tasks(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Vec<api::Task>> {
    let status = match q.status.as_deref() {
        Some(st) => Some(st.parse::<Status>().map_err(|_| {
            ApiError::Invalid(format!(
                "unknown status `{st}`; use one of: {}",
                Status::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => None,
    };
    let repo = match q.repo.as_deref() {
        Some(name) => Some(s.store.repo_by_name(name).await?.id),
        None => None,
    };
    let tasks = s
        .store
        .list_tasks(&TaskFilter {
            status,
            repo,
            live: q.live,
            limit: q.limit.unwrap_or(200),
            before: q.before,
        })
        .await?;
    let names = repo_names(&s).await?;
    Ok(Json(
        tasks
            .iter()
            .map(|t| task_view(t, names.get(&t.repo_id).map(String::as_str).unwrap_or("")))
            .collect(),
    ))
}

pub(super) async fn create_task(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::CreateTask>,
) -> ApiResult<api::Task> {
    c.require(
        &s,
        Role::Operator,
        "create_task",
        Some(&format!("repo:{}", req.repo)),
    )
    .await?;
    let result = async {
        super::check_priority(req.priority)?;
        super::check_model(req.model.as_deref())?;
        super::check_agent(req.agent.as_deref())?;
        if req.prompt.trim().is_empty() || req.title.trim().is_empty() {
            return Err(ApiError::Invalid(
                "a task needs a title and a prompt".into(),
            ));
        }
        let repo = s.store.repo_by_name(&req.repo).await?;
        let title = textguard::clean_plain(&req.title);
        let prompt = textguard::clean_plain(&req.prompt);
        let mut t = NewTask::for_issue(repo.id, 0, &title, &prompt);
        t.issue_number = None;
        t.created_by = format!("user:{}", c.user.username);
        if req.open_issue {
            let issue = open_issue_for(&s, &repo.name, &title, &prompt).await?;
            t.issue_number = Some(issue.number);
            t.author = Some(issue.author);
            t.content_hash = Some(crate::intake::snapshot_hash(&title, &prompt));
        }
        if !s.intake.default_model.is_empty() {
            t.model = s.intake.default_model.clone();
        }
        if let Some(m) = &req.model {
            t.model = m.clone();
        }
        if let Some(p) = req.priority {
            t.priority = p;
        }
        t.agent = req.agent.clone().unwrap_or_else(|| repo.agent.clone());
        t.best_of = req.best_of;
        let task = s.store.create_task(&t).await?;
        Ok(task_view(&task, &repo.name))
    }
    .await;
    audited(
        &s,
        &c.actor(),
        "create_task",
        &format!("repo:{}", req.repo),
        result,
    )
    .await
    .map(Json)
}

/// Opens the issue a new task follows. Nothing is created when GitHub refuses or is unreachable;
/// the error says so.
async fn open_issue_for(
    s: &AppState,
    repo: &str,
    title: &str,
    prompt: &str,
) -> Result<crate::forge::Issue, ApiError> {
    let Some(forge) = &s.forge else {
        // The request is well formed; this controller cannot act on it as set up.
        return Err(ApiError::Conflict(
            "no GitHub connection is configured, so no issue can be opened; create the task without `open_issue`".into(),
        ));
    };
    forge.open_issue(repo, title, prompt).await.map_err(|e| {
        tracing::warn!(repo, error = %e, "opening an issue for a new task failed");
        if e.is_transient() {
            ApiError::Unavailable(format!(
                "GitHub did not open the issue ({e}); nothing was created, try again"
            ))
        } else {
            ApiError::Conflict(format!(
                "GitHub refused to open the issue ({e}); nothing was created (the App needs the Issues write permission)"
            ))
        }
    })
}

pub(super) async fn task_detail(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<api::TaskDetail> {
    let task = s.store.task(id).await?;
    let repo = s.store.repo(task.repo_id).await?;
    let timeline = s
        .store
        .timeline(id)
        .await?
        .into_iter()
        .map(|e| api::Event {
            id: e.id,
            at: e.at,
            actor: e.actor,
            from_status: e.from_status,
            to_status: e.to_status,
            reason: e.reason,
            data: e.data.map(|d| d.0),
        })
        .collect();
    Ok(Json(api::TaskDetail {
        body: task
            .prompt_override
            .clone()
            .unwrap_or_else(|| task.issue_body.clone()),
        task: task_view(&task, &repo.name),
        timeline,
        environment: s.store.task_environment(id).await?,
        reproduction: s
            .store
            .task_reproduction(id)
            .await?
            .map(super::views::reproduction_view),
        usage: s
            .store
            .task_usage(id)
            .await?
            .into_iter()
            .map(|u| api::UsageLine {
                purpose: u.purpose,
                model: u.model,
                calls: u.calls,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost_microusd: u.cost_microusd,
            })
            .collect(),
        guard: s
            .store
            .task_guards(id)
            .await?
            .iter()
            .map(super::views::guard_view)
            .collect(),
        merge_queue: s
            .store
            .queue_entry(id)
            .await?
            .as_ref()
            .map(super::views::queue_place),
    }))
}

pub(super) async fn task_candidates(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<api::Candidates> {
    let task = s.store.task(id).await?;
    let repo = s.store.repo(task.repo_id).await?;
    let candidates = s.store.candidates_of(id).await?;
    let rankings = s.store.rankings(id).await?;
    Ok(Json(api::Candidates {
        task: id,
        best_of: task.best_of,
        candidates: candidates
            .iter()
            .map(|c| task_view(c, &repo.name))
            .collect(),
        rankings: rankings
            .into_iter()
            .map(|r| api::CandidateRanking {
                attempt: r.attempt,
                ranked_at: r.ranked_at,
                rank_micros: r.rank_micros,
                winner: r.winner,
                reviewer: r.reviewer,
                entries: match r.entries.0 {
                    serde_json::Value::Array(v) => v,
                    other => vec![other],
                },
            })
            .collect(),
    }))
}

pub(super) async fn task_dependencies(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<api::Dependencies> {
    let task = s.store.task(id).await?;
    let graph = crate::pipeline::dependencies::DependencyGraph::from_edges(
        &s.store.dependency_edges(task.repo_id).await?,
    );
    let (waits, blocks) = (graph.waits_for(id), graph.blocks(id));
    let ids: Vec<i64> = waits.iter().chain(&blocks).map(|r| r.task).collect();
    let tasks: std::collections::HashMap<i64, crate::store::Task> = s
        .store
        .tasks_by_id(&ids)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let links = |reached: Vec<crate::pipeline::dependencies::Reached>| {
        reached
            .into_iter()
            .filter_map(|r| {
                let t = tasks.get(&r.task)?;
                Some(api::DependencyLink {
                    id: r.task,
                    title: t.issue_title.clone(),
                    status: t.status.as_str().to_owned(),
                    depth: r.depth,
                    hard: r.hard,
                })
            })
            .collect()
    };
    Ok(Json(api::Dependencies {
        task: id,
        waits_for: links(waits),
        blocks: links(blocks),
    }))
}

/// Chunks a log page returns when the query names no `limit`.
const LOG_PAGE: i64 = 200;
/// Most chunks one log page (or one stream event) returns.
const MAX_LOG_PAGE: i64 = 1000;
/// How often a log stream looks for new chunks while the attempt runs.
const LOG_POLL: Duration = Duration::from_millis(300);

/// Which chunks of a log: a page after a sequence number, or the last ones.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct LogQuery {
    /// The attempt (default: the task's current one).
    attempt: Option<i32>,
    /// Only chunks with a greater sequence number (default: from the start).
    after: Option<i64>,
    /// At most this many chunks (default 200), and at most 4 MiB past the first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The last this many chunks (of those after `after`) instead of the first.
    #[param(minimum = 1, maximum = 1000)]
    tail: Option<i64>,
}

/// Which attempt's evidence.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct EvidenceQuery {
    /// The attempt (default: the newest attempt that has a record).
    attempt: Option<i32>,
}

/// `/api/tasks/{id}/attempts/{attempt}/…`.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct AttemptPath {
    /// The task.
    id: i64,
    /// The attempt.
    attempt: i32,
}

pub(super) async fn task_evidence(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
    Query(q): Query<EvidenceQuery>,
) -> ApiResult<api::SignedEvidence> {
    s.store.task(id).await?;
    let e = match q.attempt {
        Some(a) => s.store.evidence(id, a).await?,
        None => s.store.latest_evidence(id).await?,
    };
    let Some(e) = e else {
        return Err(ApiError::NotFound(match q.attempt {
            Some(a) => format!(
                "task {id} attempt {a} has no evidence record; records are made when an attempt is pushed"
            ),
            None => format!(
                "task {id} has no evidence record yet; records are made when an attempt is pushed"
            ),
        }));
    };
    Ok(Json(
        serde_json::from_value(crate::evidence::envelope(&e))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

pub(super) async fn task_trajectory(
    State(s): State<AppState>,
    _c: Caller,
    Path(AttemptPath { id, attempt }): Path<AttemptPath>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    s.store.task(id).await?;
    let Some(t) = s.store.trajectory(id, attempt).await? else {
        return Err(ApiError::NotFound(format!(
            "task {id} attempt {attempt} has no exported transcript; transcripts are exported with the evidence record when an attempt is pushed"
        )));
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], t))
}

/// Which log to follow, from where.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct StreamQuery {
    /// The attempt (default: the task's current one).
    attempt: Option<i32>,
    /// Only chunks with a greater sequence number (default: from the start).
    after: Option<i64>,
    /// At most this many chunks per event (default 200), and at most 4 MiB past the first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The page size `limit` asks for.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(LOG_PAGE),
        Some(n @ 1..=MAX_LOG_PAGE) => Ok(n),
        Some(n) => Err(ApiError::Invalid(format!(
            "limit {n} is out of range; ask for 1 to {MAX_LOG_PAGE} chunks and page on with `after`"
        ))),
    }
}

fn chunk_views(attempt: i32, rows: Vec<crate::store::logs::LogRow>) -> Vec<api::LogChunk> {
    rows.into_iter()
        .map(|(seq, stream, data, at)| api::LogChunk {
            attempt,
            seq,
            stream,
            text: String::from_utf8_lossy(&data).into_owned(),
            at: Some(at),
        })
        .collect()
}

pub(super) async fn task_logs(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Vec<api::LogChunk>> {
    let limit = page_limit(q.limit)?;
    let task = s.store.task(id).await?;
    let attempt = q.attempt.unwrap_or(task.attempt);
    let after = q.after.unwrap_or(-1);
    let rows = match q.tail {
        Some(n @ 1..=MAX_LOG_PAGE) => s.store.log_tail(id, attempt, after, n).await?,
        Some(n) => {
            return Err(ApiError::Invalid(format!(
                "tail {n} is out of range; ask for the last 1 to {MAX_LOG_PAGE} chunks"
            )));
        }
        None => s.store.log_page(id, attempt, after, limit).await?,
    };
    Ok(Json(chunk_views(attempt, rows)))
}

pub(super) async fn task_logs_stream(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let task = s.store.task(id).await?;
    let attempt = q.attempt.unwrap_or(task.attempt);
    let slot = open_stream(&s, &c, StreamKind::Logs, Some(&format!("task:{id}"))).await?;
    let task_stop = s.shutdown.clone();
    // Each poll reads only the chunks after the last one sent, a page at a time; the slot is
    // held by the stream's state and given back when the stream is dropped.
    let stream = futures::stream::unfold(
        (s, q.after.unwrap_or(-1), false, slot),
        move |(s, after, done, slot)| async move {
            if done {
                return None;
            }
            loop {
                let page = s
                    .store
                    .log_page(id, attempt, after, limit)
                    .await
                    .map(|rows| chunk_views(attempt, rows))
                    .unwrap_or_default();
                if let Some(last) = page.last() {
                    let next = last.seq;
                    let data = serde_json::to_string(&page).unwrap_or_default();
                    return Some((
                        Ok(SseEvent::default().event("logs").data(data)),
                        (s, next, false, slot),
                    ));
                }
                let ended = s
                    .store
                    .task(id)
                    .await
                    .map(|t| !t.status.is_active() || t.attempt != attempt)
                    .unwrap_or(true);
                if ended {
                    // Chunks stored between the read above and the end are sent before `end`.
                    let last = s
                        .store
                        .log_page(id, attempt, after, 1)
                        .await
                        .unwrap_or_default();
                    if last.is_empty() {
                        return Some((
                            Ok(SseEvent::default().event("end").data("{}")),
                            (s, after, true, slot),
                        ));
                    }
                    continue;
                }
                tokio::time::sleep(LOG_POLL).await;
            }
        },
    );
    let stop = s_shutdown(&task_stop);
    Ok(Sse::new(stream.take_until(stop)).keep_alive(KeepAlive::default()))
}

/// `POST /api/tasks/{id}/{action}`.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct ActionPath {
    /// The task.
    id: i64,
    /// What to do.
    #[param(value_type = api::TaskAction)]
    action: String,
}

pub(super) async fn task_action(
    State(s): State<AppState>,
    c: Caller,
    Path(ActionPath { id, action }): Path<ActionPath>,
    body: axum::body::Bytes,
) -> ApiResult<api::Task> {
    // The body is optional; when present it must be an `ActionRequest`.
    let req: api::ActionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        api::ActionRequest::default()
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::Invalid(format!(
                "the body is not an action request ({{model, priority, prompt, agent}}): {e}"
            ))
        })?;
        super::object_body(v)?
    };
    super::check_priority(req.priority)?;
    super::check_model(req.model.as_deref())?;
    super::check_agent(req.agent.as_deref())?;
    let edits = Edits {
        model: req.model.clone(),
        priority: req.priority,
        prompt: req.prompt.clone(),
        agent: req.agent.clone(),
    };
    let op = match action.as_str() {
        "approve" => Op::Approve,
        "hold" => Op::Hold,
        "release" => Op::Release,
        "cancel" => Op::Cancel,
        "reject" => Op::Reject,
        "requeue" => Op::Requeue(edits),
        "escalate" => Op::Escalate(req.model.clone().unwrap_or_else(|| "opus".into())),
        "dispatch" | "dispatch-now" => Op::DispatchNow,
        "edit" => Op::Edit(edits),
        other => {
            return Err(ApiError::NotFound(format!(
                "no task action `{other}`; use approve, hold, release, cancel, reject, requeue, escalate, dispatch or edit"
            )));
        }
    };
    c.require(&s, Role::Operator, op.name(), Some(&format!("task:{id}")))
        .await?;
    let task = s.store.perform(id, &op, &c.actor()).await?;
    let repo = s.store.repo(task.repo_id).await?;
    Ok(Json(task_view(&task, &repo.name)))
}

/// One of the caller's stream slots of `kind`; a refusal (too many open) is audited.
async fn open_stream(
    s: &AppState,
    c: &Caller,
    kind: StreamKind,
    target: Option<&str>,
) -> Result<super::guard::StreamSlot, ApiError> {
    let refused = match s.guard.open_stream(c.user.id, kind) {
        Ok(slot) => return Ok(slot),
        Err(e) => e,
    };
    let (action, outcome) = match kind {
        StreamKind::Logs => ("follow_logs", "refused: too many log streams"),
        StreamKind::Events => ("follow_events", "refused: too many live feeds"),
    };
    let _ = s
        .store
        .audit(&c.actor(), action, target, outcome, None)
        .await;
    Err(refused)
}

pub(super) async fn events(
    State(s): State<AppState>,
    c: Caller,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let slot = open_stream(&s, &c, StreamKind::Events, None).await?;
    let rx = s.events.subscribe();
    let stop = s_shutdown(&s.shutdown);
    // The slot is held by the stream's state and given back when the client goes away.
    let stream = futures::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        let event = match rx.recv().await {
            Ok(json) if json == crate::fanout::RESYNC => {
                SseEvent::default().event("resync").data("{}")
            }
            Ok(json) => SseEvent::default().event("task").data(json),
            // A slow client missed deltas: tell it to reload the list.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                SseEvent::default().event("resync").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, slot)))
    });
    Ok(Sse::new(stream.take_until(stop)).keep_alive(KeepAlive::default()))
}

fn s_shutdown(
    token: &tokio_util::sync::CancellationToken,
) -> tokio_util::sync::WaitForCancellationFutureOwned {
    token.clone().cancelled_owned()
}

/// The plan of a task as the API shows it.
fn plan_view(p: crate::store::plans::Plan) -> api::TaskPlan {
    let doc = p.plan.0;
    api::TaskPlan {
        task: p.task_id,
        attempt: p.attempt,
        state: p.state,
        files: doc.files,
        approach: doc.approach,
        risks: doc.risks,
        tests: doc.tests,
        text: p.text,
        edited: p.edited,
        blast_radius: p.blast_radius,
        discarded: p.discarded,
        decided_by: p.decided_by,
        decided_at: p.decided_at,
        note: p.note,
        posted_at: p.posted_at,
        due_at: p.due_at,
    }
}

pub(super) async fn task_plan(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<api::TaskPlan> {
    let task = s.store.task(id).await?;
    match s.store.plan(id).await? {
        Some(p) => Ok(Json(plan_view(p))),
        None => Err(ApiError::NotFound(format!(
            "task {id} has no plan (it is {}); a plan exists once the plan run of a repository with the plan gate on delivered one",
            task.status
        ))),
    }
}

pub(super) async fn decide_plan(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<api::PlanDecision>,
) -> ApiResult<api::TaskPlan> {
    use crate::store::plans::Decision;
    let decision = match req {
        api::PlanDecision::Approve {} => Decision::Approve,
        api::PlanDecision::Edit { text } => Decision::Edit(text),
        api::PlanDecision::Reject { reason } => Decision::Reject(reason),
    };
    c.require(
        &s,
        Role::Operator,
        decision.name(),
        Some(&format!("task:{id}")),
    )
    .await?;
    s.store.decide_plan(id, &decision, &c.actor()).await?;
    match s.store.plan(id).await? {
        Some(p) => Ok(Json(plan_view(p))),
        None => Err(ApiError::NotFound(format!("task {id} has no plan"))),
    }
}

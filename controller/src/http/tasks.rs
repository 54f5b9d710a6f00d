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
use super::views::*;
use super::{ApiError, ApiJson, ApiResult, AppState, audited, repo_names};
use crate::store::Status;
use crate::store::ops::Op;
use crate::store::tasks::{Edits, NewTask, TaskFilter};

#[derive(Deserialize)]
pub(super) struct TaskQuery {
    status: Option<String>,
    repo: Option<String>,
    #[serde(default)]
    live: bool,
    limit: Option<i64>,
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

#[derive(Deserialize)]
pub(super) struct CreateTask {
    repo: String,
    title: String,
    prompt: String,
    model: Option<String>,
    priority: Option<i32>,
}

pub(super) async fn create_task(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<CreateTask>,
) -> ApiResult<api::Task> {
    c.require(
        &s,
        Role::Operator,
        "create_task",
        Some(&format!("repo:{}", req.repo)),
    )
    .await?;
    let result = async {
        if req.prompt.trim().is_empty() || req.title.trim().is_empty() {
            return Err(ApiError::Invalid(
                "a task needs a title and a prompt".into(),
            ));
        }
        let repo = s.store.repo_by_name(&req.repo).await?;
        let mut t = NewTask::for_issue(
            repo.id,
            0,
            &textguard::clean_plain(&req.title),
            &textguard::clean_plain(&req.prompt),
        );
        t.issue_number = None;
        t.created_by = format!("user:{}", c.user.username);
        if !s.intake.default_model.is_empty() {
            t.model = s.intake.default_model.clone();
        }
        if let Some(m) = &req.model {
            t.model = m.clone();
        }
        if let Some(p) = req.priority {
            t.priority = p;
        }
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

#[derive(Deserialize)]
pub(super) struct LogQuery {
    attempt: Option<i32>,
    after: Option<i64>,
}

pub(super) async fn log_page(
    s: &AppState,
    id: i64,
    attempt: i32,
    after: i64,
) -> Result<Vec<api::LogChunk>, ApiError> {
    Ok(s.store
        .log_chunks_timed(id, attempt)
        .await?
        .into_iter()
        .filter(|(seq, _, _, _)| *seq > after)
        .map(|(seq, stream, data, at)| api::LogChunk {
            attempt,
            seq,
            stream,
            text: String::from_utf8_lossy(&data).into_owned(),
            at: Some(at),
        })
        .collect())
}

pub(super) async fn task_logs(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Vec<api::LogChunk>> {
    let task = s.store.task(id).await?;
    let attempt = q.attempt.unwrap_or(task.attempt);
    Ok(Json(
        log_page(&s, id, attempt, q.after.unwrap_or(-1)).await?,
    ))
}

pub(super) async fn task_logs_stream(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let task = s.store.task(id).await?;
    let attempt = q.attempt.unwrap_or(task.attempt);
    let task_stop = s.shutdown.clone();
    let stream = futures::stream::unfold(
        (s, q.after.unwrap_or(-1), false),
        move |(s, after, done)| async move {
            if done {
                return None;
            }
            loop {
                let page = log_page(&s, id, attempt, after).await.unwrap_or_default();
                if let Some(last) = page.last() {
                    let next = last.seq;
                    let data = serde_json::to_string(&page).unwrap_or_default();
                    return Some((
                        Ok(SseEvent::default().event("logs").data(data)),
                        (s, next, false),
                    ));
                }
                let ended = s
                    .store
                    .task(id)
                    .await
                    .map(|t| !t.status.is_active() || t.attempt != attempt)
                    .unwrap_or(true);
                if ended {
                    return Some((
                        Ok(SseEvent::default().event("end").data("{}")),
                        (s, after, true),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        },
    );
    let stop = s_shutdown(&task_stop);
    Ok(Sse::new(stream.take_until(stop)).keep_alive(KeepAlive::default()))
}

pub(super) async fn task_action(
    State(s): State<AppState>,
    c: Caller,
    Path((id, action)): Path<(i64, String)>,
    body: axum::body::Bytes,
) -> ApiResult<api::Task> {
    // The body is optional; when present it must be an `ActionRequest`.
    let req: api::ActionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        api::ActionRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::Invalid(format!(
                "the body is not an action request ({{model, priority, prompt}}): {e}"
            ))
        })?
    };
    let edits = Edits {
        model: req.model.clone(),
        priority: req.priority,
        prompt: req.prompt.clone(),
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

pub(super) async fn events(
    State(s): State<AppState>,
    _c: Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.events.subscribe();
    let stop = s_shutdown(&s.shutdown);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(json) if json == crate::fanout::RESYNC => {
                Some((Ok(SseEvent::default().event("resync").data("{}")), rx))
            }
            Ok(json) => Some((Ok(SseEvent::default().event("task").data(json)), rx)),
            // A slow client missed deltas: tell it to reload the list.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Some((Ok(SseEvent::default().event("resync").data("{}")), rx))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(stream.take_until(stop)).keep_alive(KeepAlive::default())
}

fn s_shutdown(
    token: &tokio_util::sync::CancellationToken,
) -> tokio_util::sync::WaitForCancellationFutureOwned {
    token.clone().cancelled_owned()
}

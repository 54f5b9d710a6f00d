//! The `/api` handlers. Each authenticates through [`Caller`], checks the role, calls the store
//! and answers with `api` types. Every mutating action is audited with the user (refusals too).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::auth::{
    COOKIE, Caller, LOGIN_ATTEMPTS, Role, check_password, hash_password, verify_password,
};
use super::{ApiError, ApiJson, AppState};
use crate::store::ops::{Actor, Op};
use crate::store::repos::{NewRepo, RepoSettings};
use crate::store::tasks::TaskFilter;
use crate::store::tasks::{Edits, NewTask};
use crate::store::{Status, Task};

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Session lifetime.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/openapi.json",
            get(|| async { Json(super::openapi::document()) }),
        )
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/tasks", get(list_tasks).post(create_task))
        .route("/api/tasks/{id}", get(task_detail))
        .route("/api/tasks/{id}/logs", get(task_logs))
        .route("/api/tasks/{id}/logs/stream", get(task_logs_stream))
        .route("/api/tasks/{id}/{action}", post(task_action))
        .route("/api/events", get(events))
        .route("/api/repos", get(list_repos).post(add_repo))
        .route("/api/repos/{id}", patch(update_repo))
        .route("/api/repos/{id}/learnings", get(learnings))
        .route("/api/runners", get(list_runners))
        .route("/api/runners/tokens", post(runner_token))
        .route("/api/runners/{id}/{state}", post(runner_state))
        .route("/api/settings", get(settings))
        .route("/api/pause", post(pause))
        .route("/api/resume", post(resume))
        .route("/api/stats", get(stats))
        .route("/api/users", get(list_users).post(add_user))
        .route("/api/users/{id}", patch(update_user))
        .route("/api/tokens", get(list_tokens).post(add_token))
        .route("/api/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/audit", get(audit))
}

/// A task as the API shows it.
pub(crate) fn task_view(t: &Task, repo: &str) -> api::Task {
    api::Task {
        id: t.id,
        repo: repo.to_owned(),
        issue_number: t.issue_number,
        title: t.issue_title.clone(),
        status: t.status.as_str().into(),
        terminal_reason: t.terminal_reason.0.map(|r| r.as_str().into()),
        hold: t.hold_kind.0.map(|h| h.as_str().into()),
        error: t.error.clone(),
        model: t.model.clone(),
        priority: t.priority,
        attempt: t.attempt,
        retries: api::Retries {
            agent: t.agent_retries,
            verify: t.verify_retries,
            review: t.review_retries,
            ci: t.ci_retries,
            conflict: t.conflict_retries,
        },
        runner_id: t.runner_id,
        branch: t.branch.clone(),
        pr_number: t.pr_number,
        pr_url: t.pr_url.clone(),
        cost_microusd: t.cost_microusd,
        review: t.review.as_ref().map(|r| r.0.clone()),
        created_at: t.created_at,
        updated_at: t.updated_at,
        finished_at: t.finished_at,
    }
}

async fn repo_names(state: &AppState) -> Result<HashMap<i64, String>, ApiError> {
    Ok(state
        .store
        .repos()
        .await?
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect())
}

async fn audited<T>(
    state: &AppState,
    actor: &Actor,
    action: &str,
    target: &str,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    state
        .store
        .audit(actor, action, Some(target), &outcome, None)
        .await?;
    result
}

// ---- sessions -------------------------------------------------------------------------------

async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<api::LoginRequest>,
) -> Result<Response, ApiError> {
    let target = format!("user:{}", req.username);
    let recent = s
        .store
        .recent_refusals("login", &target, Duration::from_secs(300))
        .await?;
    let anon = Actor {
        name: "anonymous".into(),
        user_id: None,
    };
    if recent >= LOGIN_ATTEMPTS {
        s.store
            .audit(&anon, "login", Some(&target), "refused: rate limited", None)
            .await?;
        return Err(ApiError::TooMany(
            "too many failed logins for this user; wait five minutes".into(),
        ));
    }
    let found = s.store.user_for_login(&req.username).await?;
    let user = match found {
        Some((u, hash)) if !u.disabled && verify_password(&req.password, &hash) => u,
        _ => {
            s.store
                .audit(
                    &anon,
                    "login",
                    Some(&target),
                    "refused: bad credentials",
                    None,
                )
                .await?;
            return Err(ApiError::Unauthorized("wrong user name or password".into()));
        }
    };
    let (secret, csrf) = s.store.create_session(user.id, SESSION_TTL).await?;
    let actor = Actor {
        name: format!("user:{}", user.username),
        user_id: Some(user.id),
    };
    s.store
        .audit(&actor, "login", Some(&target), "ok", None)
        .await?;
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if s.secure_cookies { "; Secure" } else { "" }
    );
    let body = api::Me {
        id: user.id,
        username: user.username,
        role: user.role,
        csrf_token: Some(csrf),
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

async fn logout(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(secret) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';').find_map(|kv| {
                kv.trim()
                    .strip_prefix(&format!("{COOKIE}="))
                    .map(str::to_owned)
            })
        })
    {
        s.store.end_session(&secret).await?;
    }
    s.store
        .audit(&caller.actor(), "logout", None, "ok", None)
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("bp_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}

async fn me(caller: Caller) -> ApiResult<api::Me> {
    Ok(Json(api::Me {
        id: caller.user.id,
        username: caller.user.username,
        role: caller.user.role,
        csrf_token: caller.csrf,
    }))
}

// ---- tasks ----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct TaskQuery {
    status: Option<String>,
    repo: Option<String>,
    #[serde(default)]
    live: bool,
    limit: Option<i64>,
    before: Option<i64>,
}

async fn list_tasks(
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
struct CreateTask {
    repo: String,
    title: String,
    prompt: String,
    model: Option<String>,
    priority: Option<i32>,
}

async fn create_task(
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

async fn task_detail(
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
    }))
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<i32>,
    after: Option<i64>,
}

async fn log_page(
    s: &AppState,
    id: i64,
    attempt: i32,
    after: i64,
) -> Result<Vec<api::LogChunk>, ApiError> {
    Ok(s.store
        .log_chunks(id, attempt)
        .await?
        .into_iter()
        .filter(|(seq, _, _)| *seq > after)
        .map(|(seq, stream, data)| api::LogChunk {
            attempt,
            seq,
            stream,
            text: String::from_utf8_lossy(&data).into_owned(),
        })
        .collect())
}

async fn task_logs(
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

async fn task_logs_stream(
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

async fn task_action(
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

async fn events(
    State(s): State<AppState>,
    _c: Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.events.subscribe();
    let stop = s_shutdown(&s.shutdown);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(json) if json == super::events::RESYNC => {
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

// ---- repositories ---------------------------------------------------------------------------

fn repo_view(r: &crate::store::repos::Repo) -> api::Repo {
    api::Repo {
        id: r.id,
        name: r.name.clone(),
        clone_url: r.clone_url.clone(),
        default_branch: r.default_branch.clone(),
        active_tasks: r.active_tasks,
        settings: api::RepoSettings {
            verify_command: r.verify_command.clone(),
            approval_mode: r.approval_mode.clone(),
            review_fail_mode: Some(r.review_fail_mode.clone()),
            egress_policy: Some(r.egress_policy.clone()),
            budget_task_microusd: r.budget_task_microusd,
            budget_daily_microusd: r.budget_daily_microusd,
            max_concurrency: r.max_concurrency,
            merge_method: Some(r.merge_method.clone()),
            ci_ignore: Some(r.ci_ignore.clone()),
            no_checks: Some(r.no_checks.clone()),
            enabled: Some(r.enabled),
            allow_workflow_changes: Some(r.allow_workflow_changes),
            agent_hooks: Some(r.agent_hooks),
        },
    }
}

async fn list_repos(State(s): State<AppState>, _c: Caller) -> ApiResult<Vec<api::Repo>> {
    Ok(Json(s.store.repos().await?.iter().map(repo_view).collect()))
}

async fn add_repo(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::NewRepo>,
) -> ApiResult<api::Repo> {
    let target = format!("repo:{}", req.name);
    c.require(&s, Role::Admin, "add_repo", Some(&target))
        .await?;
    let result = async {
        let repo = s
            .store
            .add_repo(&NewRepo {
                name: req.name.clone(),
                clone_url: req
                    .clone_url
                    .clone()
                    .unwrap_or_else(|| format!("https://github.com/{}.git", req.name)),
                default_branch: req.default_branch.clone().unwrap_or_else(|| "main".into()),
            })
            .await?;
        Ok(repo_view(&repo))
    }
    .await;
    audited(&s, &c.actor(), "add_repo", &target, result)
        .await
        .map(Json)
}

async fn update_repo(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<api::RepoSettings>,
) -> ApiResult<api::Repo> {
    let target = format!("repo:{id}");
    c.require(&s, Role::Admin, "update_repo", Some(&target))
        .await?;
    let settings = RepoSettings {
        verify_command: req.verify_command,
        approval_mode: req.approval_mode,
        review_fail_mode: req.review_fail_mode,
        egress_policy: req.egress_policy,
        budget_task_microusd: req.budget_task_microusd,
        budget_daily_microusd: req.budget_daily_microusd,
        max_concurrency: req.max_concurrency,
        runner_labels: None,
        enabled: req.enabled,
        merge_method: req.merge_method,
        ci_ignore: req.ci_ignore,
        no_checks: req.no_checks,
        no_checks_grace_secs: None,
        allow_workflow_changes: req.allow_workflow_changes,
        agent_hooks: req.agent_hooks,
    };
    let result = s
        .store
        .update_repo(id, &settings)
        .await
        .map(|r| repo_view(&r))
        .map_err(ApiError::from);
    audited(&s, &c.actor(), "update_repo", &target, result)
        .await
        .map(Json)
}

async fn learnings(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Vec<api::Learning>> {
    s.store.repo(id).await?;
    Ok(Json(
        s.store
            .recent_learnings(id, 50)
            .await?
            .into_iter()
            .map(|(outcome, summary)| api::Learning { outcome, summary })
            .collect(),
    ))
}

// ---- runners --------------------------------------------------------------------------------

fn runner_view(r: crate::store::runners::Runner, leases: i64) -> api::Runner {
    api::Runner {
        id: r.id,
        name: r.name,
        hostname: r.hostname,
        labels: r.labels,
        capacity: r.capacity,
        state: r.state,
        version: r.version,
        last_seen_at: r.last_seen_at,
        leases,
    }
}

async fn list_runners(State(s): State<AppState>, _c: Caller) -> ApiResult<Vec<api::Runner>> {
    let mut out = Vec::new();
    for r in s.store.runners().await? {
        let leases = s.store.runner_lease_count(r.id).await?;
        out.push(runner_view(r, leases));
    }
    Ok(Json(out))
}

async fn runner_token(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::JoinTokenRequest>,
) -> ApiResult<api::JoinTicket> {
    c.require(&s, Role::Admin, "runner_token", None).await?;
    let ttl = Duration::from_secs(req.ttl_minutes.unwrap_or(60).clamp(1, 7 * 24 * 60) * 60);
    let token = s
        .store
        .create_join_token(&format!("user:{}", c.user.username), ttl, &req.labels)
        .await?;
    s.store
        .audit(
            &c.actor(),
            "runner_token",
            None,
            "ok",
            Some(&json!({"labels": req.labels})),
        )
        .await?;
    Ok(Json(api::JoinTicket {
        ticket: s.pki.join_ticket(&token),
    }))
}

async fn runner_state(
    State(s): State<AppState>,
    c: Caller,
    Path((id, state)): Path<(i64, String)>,
) -> ApiResult<api::Runner> {
    let target = format!("runner:{id}");
    let wanted = match state.as_str() {
        "drain" => "draining",
        "disable" => "disabled",
        "enable" => "active",
        other => {
            return Err(ApiError::NotFound(format!(
                "no runner action `{other}`; use drain, disable or enable"
            )));
        }
    };
    c.require(&s, Role::Admin, &format!("runner_{state}"), Some(&target))
        .await?;
    let result = s
        .store
        .set_runner_state(id, wanted)
        .await
        .map_err(ApiError::from);
    let (r, _) = audited(&s, &c.actor(), &format!("runner_{state}"), &target, result).await?;
    let leases = s.store.runner_lease_count(r.id).await?;
    Ok(Json(runner_view(r, leases)))
}

// ---- switches, stats, users, tokens, audit --------------------------------------------------

async fn settings(State(s): State<AppState>, _c: Caller) -> ApiResult<api::Settings> {
    let st = s.store.settings().await?;
    Ok(Json(api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
    }))
}

async fn pause(State(s): State<AppState>, c: Caller) -> ApiResult<api::Settings> {
    c.require(&s, Role::Operator, "pause", None).await?;
    let st = s.store.pause(&format!("user:{}", c.user.username)).await?;
    s.store.audit(&c.actor(), "pause", None, "ok", None).await?;
    s.store
        .enqueue_notification(
            "paused",
            None,
            &format!("dispatch paused by {}", c.user.username),
        )
        .await?;
    Ok(Json(api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
    }))
}

async fn resume(State(s): State<AppState>, c: Caller) -> ApiResult<api::Settings> {
    c.require(&s, Role::Operator, "resume", None).await?;
    let st = s.store.resume().await?;
    s.store
        .audit(&c.actor(), "resume", None, "ok", None)
        .await?;
    Ok(Json(api::Settings {
        paused: st.queue_paused,
        approval_mode: st.approval_mode,
    }))
}

#[derive(Deserialize)]
struct StatsQuery {
    repo: Option<String>,
    days: Option<i32>,
}

async fn stats(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<StatsQuery>,
) -> ApiResult<api::Stats> {
    let repo = match q.repo.as_deref() {
        Some(name) => Some(s.store.repo_by_name(name).await?.id),
        None => None,
    };
    let st = s.store.stats(repo).await?;
    let by_day = s
        .store
        .stats_by_day(q.days.unwrap_or(14))
        .await?
        .into_iter()
        .map(|d| api::DayStats {
            repo: d.repo,
            day: d.day,
            merged: d.merged,
            failed: d.failed,
            cost_microusd: d.cost_microusd,
        })
        .collect();
    Ok(Json(api::Stats {
        merged: st.merged,
        failed: st.failed,
        canceled: st.canceled,
        live: st.live,
        success_rate: st.success_rate,
        avg_seconds_to_merge: st.avg_seconds_to_merge,
        retry_rate: st.retry_rate,
        avg_cost_microusd: st.avg_cost_microusd,
        total_cost_microusd: st.total_cost_microusd,
        by_day,
    }))
}

fn user_view(u: crate::store::users::User) -> api::User {
    api::User {
        id: u.id,
        username: u.username,
        role: u.role,
        disabled: u.disabled,
    }
}

async fn list_users(State(s): State<AppState>, c: Caller) -> ApiResult<Vec<api::User>> {
    c.require(&s, Role::Admin, "list_users", None).await?;
    Ok(Json(
        s.store.users().await?.into_iter().map(user_view).collect(),
    ))
}

async fn add_user(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::NewUser>,
) -> ApiResult<api::User> {
    let target = format!("user:{}", req.username);
    c.require(&s, Role::Admin, "add_user", Some(&target))
        .await?;
    let result = async {
        check_password(&req.password)?;
        let hash = hash_password(&req.password)?;
        Ok(user_view(
            s.store.create_user(&req.username, &hash, &req.role).await?,
        ))
    }
    .await;
    audited(&s, &c.actor(), "add_user", &target, result)
        .await
        .map(Json)
}

async fn update_user(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<api::UserPatch>,
) -> ApiResult<api::User> {
    let target = format!("user-id:{id}");
    c.require(&s, Role::Admin, "update_user", Some(&target))
        .await?;
    let result = s
        .store
        .update_user(id, req.role.as_deref(), req.disabled)
        .await
        .map(user_view)
        .map_err(ApiError::from);
    audited(&s, &c.actor(), "update_user", &target, result)
        .await
        .map(Json)
}

fn token_view(t: crate::store::users::ApiToken, secret: Option<String>) -> api::Token {
    api::Token {
        id: t.id,
        name: t.name,
        secret,
        revoked: t.revoked_at.is_some(),
        last_used_at: t.last_used_at,
    }
}

async fn list_tokens(State(s): State<AppState>, c: Caller) -> ApiResult<Vec<api::Token>> {
    Ok(Json(
        s.store
            .api_tokens(Some(c.user.id))
            .await?
            .into_iter()
            .map(|t| token_view(t, None))
            .collect(),
    ))
}

async fn add_token(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<api::NewToken>,
) -> ApiResult<api::Token> {
    if req.name.trim().is_empty() {
        return Err(ApiError::Invalid(
            "a token needs a name (where it is used)".into(),
        ));
    }
    let (t, secret) = s.store.create_api_token(c.user.id, req.name.trim()).await?;
    s.store
        .audit(
            &c.actor(),
            "add_token",
            Some(&format!("token:{}", t.id)),
            "ok",
            None,
        )
        .await?;
    Ok(Json(token_view(t, Some(secret))))
}

async fn revoke_token(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let owner = if c.role == Role::Admin {
        None
    } else {
        Some(c.user.id)
    };
    let target = format!("token:{id}");
    let result = match s.store.revoke_api_token(id, owner).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound(format!("you have no token {id}"))),
    };
    audited(&s, &c.actor(), "revoke_token", &target, result).await
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

async fn audit(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Vec<api::AuditEntry>> {
    c.require(&s, Role::Operator, "read_audit", None).await?;
    Ok(Json(
        s.store
            .audit_log(q.limit.unwrap_or(200), q.before)
            .await?
            .into_iter()
            .map(|a| api::AuditEntry {
                id: a.id,
                at: a.at,
                actor: a.actor,
                action: a.action,
                target: a.target,
                outcome: a.outcome,
            })
            .collect(),
    ))
}

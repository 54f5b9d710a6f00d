//! The one list of `/api` operations: each route with its method, path, least role, summary and
//! schemas, and the handler that serves it. The router (`router`) and the OpenAPI document
//! ([`super::openapi::document`]) are both built from it, so they cannot disagree.

use std::collections::BTreeMap;

use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router};

use utoipa::openapi::path::ParameterIn;

use super::openapi::{Operation, params_of};
use super::{AppState, activity, admin, repos, runners, session, tasks};

/// One operation of `/api` and its handler.
pub struct Route {
    /// What the OpenAPI document says of it.
    pub op: Operation,
    handler: MethodRouter<AppState>,
}

fn op(
    method: &'static str,
    path: &'static str,
    role: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    response: &'static str,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        op: Operation {
            method,
            path,
            role,
            summary,
            request,
            response,
            query: None,
            path_params: None,
        },
        handler,
    }
}

impl Route {
    /// Its query parameters are `T`'s (the handler's `Query<T>`).
    fn query<T: utoipa::IntoParams>(mut self) -> Self {
        self.op.query = Some(|| params_of::<T>(ParameterIn::Query));
        self
    }

    /// Its path parameters are `T`'s (the handler's `Path<T>`), not the default (`{id}` an
    /// int64, anything else a string).
    fn path<T: utoipa::IntoParams>(mut self) -> Self {
        self.op.path_params = Some(|| params_of::<T>(ParameterIn::Path));
        self
    }
}

/// Every operation of `/api`.
pub fn routes() -> Vec<Route> {
    vec![
        op(
            "get",
            "/api/openapi.json",
            "none",
            "This document",
            None,
            "object",
            get(openapi),
        ),
        op(
            "post",
            "/api/login",
            "none",
            "Log in with a password; sets the session cookie and returns the CSRF token",
            Some("LoginRequest"),
            "Me",
            post(session::login),
        ),
        op(
            "post",
            "/api/logout",
            "viewer",
            "End the session",
            None,
            "none",
            post(session::logout),
        ),
        op(
            "get",
            "/api/me",
            "viewer",
            "Who is calling (and the session's CSRF token)",
            None,
            "Me",
            get(session::me),
        ),
        op(
            "get",
            "/api/tasks",
            "viewer",
            "Tasks, newest first; filters status, repo, live, limit, before",
            None,
            "Task[]",
            get(tasks::list_tasks),
        )
        .query::<tasks::TaskQuery>(),
        op(
            "post",
            "/api/tasks",
            "operator",
            "Create a task from a prompt",
            Some("CreateTask"),
            "Task",
            post(tasks::create_task),
        ),
        op(
            "get",
            "/api/tasks/{id}",
            "viewer",
            "A task with its timeline",
            None,
            "TaskDetail",
            get(tasks::task_detail),
        ),
        op(
            "get",
            "/api/tasks/{id}/candidates",
            "viewer",
            "A best-of-N task's candidates and how each round was ranked (why each candidate lost)",
            None,
            "Candidates",
            get(tasks::task_candidates),
        ),
        op(
            "get",
            "/api/tasks/{id}/plan",
            "viewer",
            "Plan gate: the task's plan (files, approach, risks, tests), its predicted blast radius and the decision",
            None,
            "TaskPlan",
            get(tasks::task_plan),
        ),
        op(
            "post",
            "/api/tasks/{id}/plan",
            "operator",
            "Plan gate: approve the plan, edit it (new text, then approved) or reject it (a reason; the task fails)",
            Some("PlanDecision"),
            "TaskPlan",
            post(tasks::decide_plan),
        ),
        op(
            "get",
            "/api/tasks/{id}/dependencies",
            "viewer",
            "What the task waits for and what waits for it, directly and through others",
            None,
            "Dependencies",
            get(tasks::task_dependencies),
        ),
        op(
            "get",
            "/api/tasks/{id}/logs",
            "viewer",
            "Log chunks of an attempt after a sequence number",
            None,
            "LogChunk[]",
            get(tasks::task_logs),
        )
        .query::<tasks::LogQuery>(),
        op(
            "get",
            "/api/tasks/{id}/evidence",
            "viewer",
            "An attempt's evidence record in its signed envelope (docs/evidence.md; the key is at /evidence-key.pem)",
            None,
            "SignedEvidence",
            get(tasks::task_evidence),
        )
        .query::<tasks::EvidenceQuery>(),
        op(
            "get",
            "/api/tasks/{id}/attempts/{attempt}/trajectory",
            "viewer",
            "An attempt's transcript as backporcher.trajectory/1 (its SHA-256 is in the evidence record)",
            None,
            "object",
            get(tasks::task_trajectory),
        )
        .path::<tasks::AttemptPath>(),
        op(
            "get",
            "/api/tasks/{id}/logs/stream",
            "viewer",
            "Follow an attempt's log (SSE: logs, end)",
            None,
            "sse:LogStreamEvent",
            get(tasks::task_logs_stream),
        )
        .query::<tasks::StreamQuery>(),
        op(
            "post",
            "/api/tasks/{id}/{action}",
            "operator",
            "approve, hold, release, cancel, reject, requeue, escalate, dispatch, edit",
            Some("ActionRequest"),
            "Task",
            post(tasks::task_action),
        )
        .path::<tasks::ActionPath>(),
        op(
            "get",
            "/api/events",
            "viewer",
            "Task changes as they happen (SSE: task deltas, resync)",
            None,
            "sse:TaskStreamEvent",
            get(tasks::events),
        ),
        op(
            "get",
            "/api/repos",
            "viewer",
            "Repositories with their settings",
            None,
            "Repo[]",
            get(repos::list_repos),
        ),
        op(
            "post",
            "/api/repos",
            "admin",
            "Register a repository",
            Some("NewRepo"),
            "Repo",
            post(repos::add_repo),
        ),
        op(
            "patch",
            "/api/repos/{id}",
            "admin",
            "Change repository settings",
            Some("RepoSettings"),
            "Repo",
            patch(repos::update_repo),
        ),
        op(
            "get",
            "/api/repos/{id}/secrets",
            "admin",
            "Names of the repository's setup-only secrets (never their values)",
            None,
            "Secret[]",
            get(repos::list_secrets),
        ),
        op(
            "put",
            "/api/repos/{id}/secrets/{name}",
            "admin",
            "Set a setup-only secret (its .backporcher.toml grants it to setup by name)",
            Some("SecretValue"),
            "empty",
            put(repos::set_secret),
        )
        .path::<repos::SecretPath>(),
        op(
            "delete",
            "/api/repos/{id}/secrets/{name}",
            "admin",
            "Remove a setup-only secret",
            None,
            "empty",
            delete(repos::delete_secret),
        )
        .path::<repos::SecretPath>(),
        op(
            "get",
            "/api/repos/{id}/merge-queue",
            "viewer",
            "The repository's merge queue in merge order: each task's place and what it waits for",
            None,
            "MergeQueue",
            get(repos::merge_queue),
        ),
        op(
            "get",
            "/api/repos/{id}/environment",
            "viewer",
            "The environment as the settings describe it, beside what the repository's own files declare (the latest task's report: which wins, and why)",
            None,
            "RepoEnvironment",
            get(repos::environment),
        ),
        op(
            "get",
            "/api/repos/{id}/learnings",
            "viewer",
            "What tasks in the repository taught",
            None,
            "Learning[]",
            get(repos::learnings),
        ),
        op(
            "get",
            "/api/runners",
            "viewer",
            "Runners with their leases",
            None,
            "Runner[]",
            get(runners::list_runners),
        ),
        op(
            "post",
            "/api/runners/tokens",
            "admin",
            "Mint a one-time runner join ticket",
            Some("JoinTokenRequest"),
            "JoinTicket",
            post(runners::runner_token),
        ),
        op(
            "post",
            "/api/runners/{id}/{state}",
            "admin",
            "drain, disable or enable a runner",
            None,
            "Runner",
            post(runners::runner_state),
        )
        .path::<runners::StatePath>(),
        op(
            "get",
            "/api/settings",
            "viewer",
            "Global switches",
            None,
            "Settings",
            get(admin::settings),
        ),
        op(
            "patch",
            "/api/settings",
            "operator",
            "Change the global switches: approval_mode (admin), paused (operator); audited and announced",
            Some("SettingsPatch"),
            "Settings",
            patch(admin::update_settings),
        ),
        op(
            "post",
            "/api/cleanup",
            "operator",
            "Close the PRs and delete the branches ended tasks left on GitHub, by the cleanup policy (now: ignore its ages)",
            Some("CleanupRequest"),
            "CleanedTask[]",
            post(admin::cleanup),
        ),
        op(
            "post",
            "/api/pause",
            "operator",
            "Pause dispatch",
            None,
            "Settings",
            post(admin::pause),
        ),
        op(
            "post",
            "/api/resume",
            "operator",
            "Resume dispatch",
            None,
            "Settings",
            post(admin::resume),
        ),
        op(
            "get",
            "/api/stats",
            "viewer",
            "Merged count, success rate, time to merge, retry rate, cost; per repository and day",
            None,
            "Stats",
            get(admin::stats),
        )
        .query::<admin::StatsQuery>(),
        op(
            "get",
            "/api/activity",
            "viewer",
            "What every live task, the controller's own agents (triage, review, reflection) and each runner are doing now",
            None,
            "Activity",
            get(activity::activity),
        ),
        op(
            "get",
            "/api/users",
            "admin",
            "Users",
            None,
            "User[]",
            get(admin::list_users),
        ),
        op(
            "post",
            "/api/users",
            "admin",
            "Create a user",
            Some("NewUser"),
            "User",
            post(admin::add_user),
        ),
        op(
            "patch",
            "/api/users/{id}",
            "admin",
            "Change a user's role or disable them",
            Some("UserPatch"),
            "User",
            patch(admin::update_user),
        ),
        op(
            "get",
            "/api/tokens",
            "viewer",
            "Your API tokens",
            None,
            "Token[]",
            get(admin::list_tokens),
        ),
        op(
            "post",
            "/api/tokens",
            "viewer",
            "Mint an API token (its secret is shown once)",
            Some("NewToken"),
            "Token",
            post(admin::add_token),
        ),
        op(
            "delete",
            "/api/tokens/{id}",
            "viewer",
            "Revoke a token",
            None,
            "none",
            delete(admin::revoke_token),
        ),
        op(
            "get",
            "/api/audit",
            "operator",
            "The audit log, newest first",
            None,
            "AuditEntry[]",
            get(admin::audit),
        )
        .query::<admin::AuditQuery>(),
    ]
}

/// The OpenAPI document of every route.
pub fn document() -> serde_json::Value {
    super::openapi::document(routes().iter().map(|r| &r.op))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(document())
}

/// The `/api` router, one route per path with its methods merged.
pub(super) fn router() -> Router<AppState> {
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    for r in routes() {
        let merged = match by_path.remove(r.op.path) {
            Some(m) => m.merge(r.handler),
            None => r.handler,
        };
        by_path.insert(r.op.path, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
}

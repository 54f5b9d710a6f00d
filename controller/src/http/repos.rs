//! Repositories: the list, registration, settings and learnings.

use axum::Json;
use axum::extract::{Path, State};

use super::auth::{Caller, Role};
use super::views::*;
use super::{ApiError, ApiJson, ApiResult, AppState, audited};
use crate::store::repos::{NewRepo, RepoSettings};

pub(super) async fn list_repos(State(s): State<AppState>, _c: Caller) -> ApiResult<Vec<api::Repo>> {
    Ok(Json(s.store.repos().await?.iter().map(repo_view).collect()))
}

pub(super) async fn add_repo(
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

pub(super) async fn update_repo(
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
        no_checks_grace_secs: req.no_checks_grace_secs,
        allow_workflow_changes: req.allow_workflow_changes,
        agent_hooks: req.agent_hooks,
        agent: req.agent,
        agent_fallback: req.agent_fallback,
        env_image: req.env_image,
        env_setup: req.env_setup,
        reproduce_first: req.reproduce_first,
        reproduce_policy: req.reproduce_policy,
        guard_window_secs: req.guard_window_secs,
        guard_window_commits: req.guard_window_commits,
        best_of: req.best_of,
        best_of_models: req.best_of_models,
        plan_gate: req.plan_gate,
        plan_auto_blast: req.plan_auto_blast,
        plan_timeout_secs: req.plan_timeout_secs,
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

pub(super) async fn learnings(
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

pub(super) async fn merge_queue(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<api::MergeQueue> {
    let repo = s.store.repo(id).await?;
    let entries = s.store.merge_queue(id).await?;
    Ok(Json(api::MergeQueue {
        repo: repo.name,
        entries: entries.iter().map(super::views::queue_place).collect(),
    }))
}

pub(super) async fn environment(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<api::RepoEnvironment> {
    let repo = s.store.repo(id).await?;
    Ok(Json(api::RepoEnvironment {
        settings: api::EnvironmentSettings {
            image: repo.env_image,
            setup: repo.env_setup,
            verify_command: repo.verify_command,
        },
        repo: repo.name,
        seen: s
            .store
            .repo_environment(id)
            .await?
            .map(|(task, attempt, at, report)| api::EnvironmentSeen {
                task,
                attempt,
                at,
                report,
            }),
    }))
}

pub(super) async fn list_secrets(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Vec<api::Secret>> {
    c.require(&s, Role::Admin, "list_secrets", Some(&format!("repo:{id}")))
        .await?;
    s.store.repo(id).await?;
    Ok(Json(
        s.store
            .repo_secret_names(id)
            .await?
            .into_iter()
            .map(|(name, updated_at)| api::Secret { name, updated_at })
            .collect(),
    ))
}

/// `/api/repos/{id}/secrets/{name}`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub(super) struct SecretPath {
    /// The repository.
    id: i64,
    /// The secret's name: an environment variable name.
    #[param(pattern = "^[A-Z_][A-Z0-9_]{0,63}$")]
    name: String,
}

pub(super) async fn set_secret(
    State(s): State<AppState>,
    c: Caller,
    Path(SecretPath { id, name }): Path<SecretPath>,
    ApiJson(req): ApiJson<api::SecretValue>,
) -> ApiResult<serde_json::Value> {
    let target = format!("repo:{id}:secret:{name}");
    c.require(&s, Role::Admin, "set_secret", Some(&target))
        .await?;
    let result = s
        .store
        .set_repo_secret(id, &name, &req.value)
        .await
        .map(|()| Json(serde_json::json!({})))
        .map_err(ApiError::from);
    audited(&s, &c.actor(), "set_secret", &target, result).await
}

pub(super) async fn delete_secret(
    State(s): State<AppState>,
    c: Caller,
    Path(SecretPath { id, name }): Path<SecretPath>,
) -> ApiResult<serde_json::Value> {
    let target = format!("repo:{id}:secret:{name}");
    c.require(&s, Role::Admin, "delete_secret", Some(&target))
        .await?;
    let result = match s.store.delete_repo_secret(id, &name).await {
        Ok(true) => Ok(Json(serde_json::json!({}))),
        Ok(false) => Err(ApiError::NotFound(format!(
            "repository #{id} has no secret `{name}`"
        ))),
        Err(e) => Err(ApiError::from(e)),
    };
    audited(&s, &c.actor(), "delete_secret", &target, result).await
}

//! Registered repositories and their per-repository settings.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::lifecycle::RepoId;
use super::{Error, Result, Store, is_unique_violation};

/// A registered repository.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Repo {
    /// Id.
    pub id: RepoId,
    /// `owner/name`.
    pub name: String,
    /// Where runners clone it from.
    pub clone_url: String,
    /// Base branch of task branches.
    pub default_branch: String,
    /// Build/test command run after the agent.
    pub verify_command: Option<String>,
    /// Approval mode override (`None` follows the global setting).
    pub approval_mode: Option<String>,
    /// `open` or `closed`: what a review error means.
    pub review_fail_mode: String,
    /// `none`, `gateway-only` or `open`.
    pub egress_policy: String,
    /// Whether a task may change `.github/workflows`.
    pub allow_workflow_changes: bool,
    /// Whether the agent CLI may run the default branch's hooks and MCP servers.
    pub agent_hooks: bool,
    /// The agent backend its tasks start with: `claude` or `codex`.
    pub agent: String,
    /// Whether a task the model API rate-limited on one backend goes on with the other.
    pub agent_fallback: bool,
    /// Cost cap per task.
    pub budget_task_microusd: Option<i64>,
    /// Cost cap per day for the repository.
    pub budget_daily_microusd: Option<i64>,
    /// Most tasks on runners at once.
    pub max_concurrency: Option<i32>,
    /// Tasks on runners now.
    pub active_tasks: i32,
    /// Labels a runner needs to work on it.
    pub runner_labels: Vec<String>,
    /// Detected stack description.
    pub stack: Option<String>,
    /// Whether its tasks are dispatched.
    pub enabled: bool,
    /// `squash`, `merge` or `rebase`.
    pub merge_method: String,
    /// Check names that do not count.
    pub ci_ignore: Vec<String>,
    /// What no checks at all means: `merge`, `hold` or `wait`.
    pub no_checks: String,
    /// How long to wait for checks to appear before applying `no_checks`.
    pub no_checks_grace_secs: i32,
    /// The environment's base image, set by the operator (wins over the repository's files).
    pub env_image: Option<String>,
    /// Its setup commands.
    pub env_setup: Vec<String>,
    /// Reproduce-first: `off`, `on`, or `bugs` (tasks triage called a bug).
    pub reproduce_first: String,
    /// When no test was shown to fail on the base: `hold` for a person or `proceed` marked.
    pub reproduce_policy: String,
    /// Seconds the post-merge guard watches a merge (0: no guard).
    pub guard_window_secs: i32,
    /// Later commits on the default branch the guard watches a merge over.
    pub guard_window_commits: i32,
    /// Best-of-N: candidates per task (1: a single attempt).
    pub best_of: i32,
    /// Models the candidates cycle through.
    pub best_of_models: Vec<String>,
    /// Plan gate: tasks first run read-only and wait for an approved plan.
    pub plan_gate: bool,
    /// Plan gate: auto-approve a plan whose predicted blast radius is at most this (None: never).
    pub plan_auto_blast: Option<i32>,
    /// Plan gate: seconds an undecided plan waits before it is denied.
    pub plan_timeout_secs: i32,
    /// Registered at.
    pub created_at: DateTime<Utc>,
}

/// A repository to register.
#[derive(Debug, Clone)]
pub struct NewRepo {
    /// `owner/name`.
    pub name: String,
    /// Clone URL.
    pub clone_url: String,
    /// Default branch.
    pub default_branch: String,
}

/// Settings changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct RepoSettings {
    /// Verify command (`Some("")` clears it).
    pub verify_command: Option<String>,
    /// Approval mode (`Some("")` follows the global one).
    pub approval_mode: Option<String>,
    /// `open` or `closed`.
    pub review_fail_mode: Option<String>,
    /// `none`, `gateway-only` or `open`.
    pub egress_policy: Option<String>,
    /// Per-task budget (`Some(0)` clears it).
    pub budget_task_microusd: Option<i64>,
    /// Daily budget (`Some(0)` clears it).
    pub budget_daily_microusd: Option<i64>,
    /// Concurrency cap (`Some(0)` removes it).
    pub max_concurrency: Option<i32>,
    /// Runner labels required.
    pub runner_labels: Option<Vec<String>>,
    /// Whether tasks are dispatched.
    pub enabled: Option<bool>,
    /// `squash`, `merge` or `rebase`.
    pub merge_method: Option<String>,
    /// Check names that do not count.
    pub ci_ignore: Option<Vec<String>>,
    /// `merge`, `hold` or `wait`.
    pub no_checks: Option<String>,
    /// Seconds to wait for checks to appear.
    pub no_checks_grace_secs: Option<i32>,
    /// Whether tasks may change `.github/workflows`.
    pub allow_workflow_changes: Option<bool>,
    /// Whether the agent CLI may run the default branch's hooks and MCP servers.
    pub agent_hooks: Option<bool>,
    /// The agent backend its tasks start with ([`AGENTS`]).
    pub agent: Option<String>,
    /// Whether a rate-limited task goes on with the other backend.
    pub agent_fallback: Option<bool>,
    /// The environment's base image (`Some("")` clears it: the repository's files decide).
    pub env_image: Option<String>,
    /// The environment's setup commands.
    pub env_setup: Option<Vec<String>>,
    /// `off`, `on` or `bugs`.
    pub reproduce_first: Option<String>,
    /// `hold` or `proceed`.
    pub reproduce_policy: Option<String>,
    /// Seconds the post-merge guard watches a merge (0 turns it off).
    pub guard_window_secs: Option<i32>,
    /// Later commits the guard watches a merge over.
    pub guard_window_commits: Option<i32>,
    /// Best-of-N: candidates per task (1..=5).
    pub best_of: Option<i32>,
    /// Models the candidates cycle through (at most 5).
    pub best_of_models: Option<Vec<String>>,
    /// Plan gate on or off.
    pub plan_gate: Option<bool>,
    /// Plan gate auto-approval threshold (0..=[`MAX_PLAN_AUTO_BLAST`]; `Some(-1)`: never).
    pub plan_auto_blast: Option<i32>,
    /// Plan gate timeout ([`PLAN_TIMEOUT_SECS`]).
    pub plan_timeout_secs: Option<i32>,
}

/// Highest plan auto-approval threshold (files named plus impacted).
pub const MAX_PLAN_AUTO_BLAST: i32 = 10_000;
/// The range of a plan's approval timeout: five minutes to two weeks (default a day).
pub const PLAN_TIMEOUT_SECS: std::ops::RangeInclusive<i32> = 300..=14 * 24 * 3600;

/// Longest post-merge guard window (a week).
pub const MAX_GUARD_WINDOW_SECS: i32 = 7 * 24 * 3600;
/// Most later commits the post-merge guard watches a merge over.
pub const MAX_GUARD_WINDOW_COMMITS: i32 = 200;
/// The agent backends a task may run with (runner/src/agent.rs).
pub const AGENTS: [&str; 2] = ["claude", "codex"];

/// The backend a rate-limited task falls back to.
pub fn other_agent(agent: &str) -> &'static str {
    if agent == "codex" { "claude" } else { "codex" }
}

/// The most candidates a best-of-N task runs per round.
pub const MAX_BEST_OF: i32 = 5;

/// Highest per-repository concurrency cap (the cap is kept as that many slot rows).
pub const MAX_CONCURRENCY: i32 = 1000;

const REPO_COLUMNS: &str = "id, name, clone_url, default_branch, verify_command, approval_mode, \
    review_fail_mode, egress_policy, allow_workflow_changes, agent_hooks, agent, agent_fallback, budget_task_microusd, \
    budget_daily_microusd, max_concurrency, \
    (SELECT count(*)::int FROM tasks t WHERE t.repo_id = repos.id AND t.status IN ('leased', 'running', 'verifying')) \
      + (SELECT count(*)::int FROM task_claims c WHERE c.repo_id = repos.id) AS active_tasks, \
    runner_labels, stack, enabled, merge_method, ci_ignore, no_checks, \
    no_checks_grace_secs, env_image, env_setup, reproduce_first, reproduce_policy, \
    guard_window_secs, guard_window_commits, best_of, best_of_models, plan_gate, plan_auto_blast, \
    plan_timeout_secs, created_at";

impl Store {
    /// Registers a repository. Its name must be `owner/name`.
    pub async fn add_repo(&self, r: &NewRepo) -> Result<Repo> {
        if !valid_repo_name(&r.name) {
            return Err(Error::Invalid(format!(
                "repository name `{}` must look like owner/name",
                r.name
            )));
        }
        let res = sqlx::query_as::<_, Repo>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO repos (name, clone_url, default_branch) VALUES ($1, $2, $3) RETURNING {REPO_COLUMNS}"
        )))
        .bind(&r.name)
        .bind(&r.clone_url)
        .bind(&r.default_branch)
        .fetch_one(&self.pool)
        .await;
        match res {
            Ok(repo) => Ok(repo),
            Err(e) if is_unique_violation(&e, "repos_name_key") => Err(Error::Conflict(format!(
                "repository {} is already registered",
                r.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// One repository by `owner/name`.
    pub async fn repo_by_name(&self, name: &str) -> Result<Repo> {
        sqlx::query_as::<_, Repo>(sqlx::AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::RepoNotFound(name.to_owned()))
    }

    /// One repository by id.
    pub async fn repo(&self, id: RepoId) -> Result<Repo> {
        sqlx::query_as::<_, Repo>(sqlx::AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::RepoNotFound(id.to_string()))
    }

    /// Every repository, by name.
    pub async fn repos(&self) -> Result<Vec<Repo>> {
        Ok(sqlx::query_as::<_, Repo>(sqlx::AssertSqlSafe(format!(
            "SELECT {REPO_COLUMNS} FROM repos ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes settings of a repository; values are checked before anything is written.
    pub async fn update_repo(&self, id: RepoId, s: &RepoSettings) -> Result<Repo> {
        check_choice(
            "approval mode",
            s.approval_mode.as_deref(),
            &["", "full-auto", "review-merge", "review-all"],
        )?;
        check_choice(
            "review fail mode",
            s.review_fail_mode.as_deref(),
            &["open", "closed"],
        )?;
        check_choice(
            "egress policy",
            s.egress_policy.as_deref(),
            &["none", "gateway-only", "open"],
        )?;
        check_choice(
            "merge method",
            s.merge_method.as_deref(),
            &["squash", "merge", "rebase"],
        )?;
        check_choice(
            "no-checks policy",
            s.no_checks.as_deref(),
            &["merge", "hold", "wait"],
        )?;
        check_choice(
            "reproduce-first",
            s.reproduce_first.as_deref(),
            &["off", "on", "bugs"],
        )?;
        check_choice(
            "reproduce policy",
            s.reproduce_policy.as_deref(),
            &["hold", "proceed"],
        )?;
        check_choice("agent backend", s.agent.as_deref(), &AGENTS)?;
        for (what, v) in [
            ("no-checks grace", s.no_checks_grace_secs.map(i64::from)),
            ("task budget", s.budget_task_microusd),
            ("daily budget", s.budget_daily_microusd),
            ("concurrency cap", s.max_concurrency.map(i64::from)),
            ("guard window", s.guard_window_secs.map(i64::from)),
            (
                "guard window commits",
                s.guard_window_commits.map(i64::from),
            ),
        ] {
            if let Some(v) = v
                && v < 0
            {
                return Err(Error::Invalid(format!(
                    "{what} must not be negative (got {v})"
                )));
            }
        }
        for (what, v, max) in [
            ("guard window", s.guard_window_secs, MAX_GUARD_WINDOW_SECS),
            (
                "guard window commits",
                s.guard_window_commits,
                MAX_GUARD_WINDOW_COMMITS,
            ),
        ] {
            if let Some(v) = v
                && v > max
            {
                return Err(Error::Invalid(format!(
                    "{what} {v} is more than {max}; 0 seconds turns the guard off"
                )));
            }
        }
        if let Some(n) = s.best_of
            && !(1..=MAX_BEST_OF).contains(&n)
        {
            return Err(Error::Invalid(format!(
                "best-of-{n} is out of range: run between 1 and {} candidates",
                MAX_BEST_OF
            )));
        }
        if let Some(m) = &s.best_of_models
            && m.len() > MAX_BEST_OF as usize
        {
            return Err(Error::Invalid(format!(
                "best-of models: list at most {} model names",
                MAX_BEST_OF
            )));
        }
        if let Some(n) = s.plan_auto_blast
            && !(-1..=MAX_PLAN_AUTO_BLAST).contains(&n)
        {
            return Err(Error::Invalid(format!(
                "plan auto-approval threshold {n} is out of range: use 0 to {MAX_PLAN_AUTO_BLAST} files, or -1 (never approve automatically)"
            )));
        }
        if let Some(n) = s.plan_timeout_secs
            && !PLAN_TIMEOUT_SECS.contains(&n)
        {
            return Err(Error::Invalid(format!(
                "plan timeout {n}s is out of range: use {} to {} seconds",
                PLAN_TIMEOUT_SECS.start(),
                PLAN_TIMEOUT_SECS.end()
            )));
        }
        if let Some(cap) = s.max_concurrency
            && cap > MAX_CONCURRENCY
        {
            return Err(Error::Invalid(format!(
                "concurrency cap {cap} is more than {MAX_CONCURRENCY}; use 0 for no cap"
            )));
        }
        // A change of the cap or the daily budget waits for the repository's claims and ending
        // leases (the triggers then rebuild its slots and recount its grants).
        let mut tx = self.pool.begin().await?;
        if s.max_concurrency.is_some() || s.budget_daily_microusd.is_some() {
            super::claims::fence_repo_limits(&mut tx, id).await?;
        }
        let repo = sqlx::query_as::<_, Repo>(sqlx::AssertSqlSafe(format!(
            "UPDATE repos SET \
               verify_command = CASE WHEN $2::text IS NULL THEN verify_command ELSE NULLIF($2, '') END, \
               approval_mode = CASE WHEN $3::text IS NULL THEN approval_mode ELSE NULLIF($3, '') END, \
               review_fail_mode = COALESCE($4, review_fail_mode), \
               egress_policy = COALESCE($5, egress_policy), \
               budget_task_microusd = CASE WHEN $6::bigint IS NULL THEN budget_task_microusd ELSE NULLIF($6, 0) END, \
               budget_daily_microusd = CASE WHEN $7::bigint IS NULL THEN budget_daily_microusd ELSE NULLIF($7, 0) END, \
               max_concurrency = CASE WHEN $8::int IS NULL THEN max_concurrency ELSE NULLIF($8, 0) END, \
               runner_labels = COALESCE($9, runner_labels), \
               enabled = COALESCE($10, enabled), \
               merge_method = COALESCE($11, merge_method), \
               ci_ignore = COALESCE($12, ci_ignore), \
               no_checks = COALESCE($13, no_checks), \
               no_checks_grace_secs = COALESCE($14, no_checks_grace_secs), \
               allow_workflow_changes = COALESCE($15, allow_workflow_changes), \
               agent_hooks = COALESCE($16, agent_hooks), \
               env_image = CASE WHEN $17::text IS NULL THEN env_image ELSE NULLIF($17, '') END, \
               env_setup = COALESCE($18, env_setup), \
               reproduce_first = COALESCE($19, reproduce_first), \
               reproduce_policy = COALESCE($20, reproduce_policy), \
               guard_window_secs = COALESCE($21, guard_window_secs), \
               guard_window_commits = COALESCE($22, guard_window_commits), \
               agent = COALESCE($23, agent), \
               agent_fallback = COALESCE($24, agent_fallback), \
               best_of = COALESCE($25, best_of), \
               best_of_models = COALESCE($26, best_of_models), \
               plan_gate = COALESCE($27, plan_gate), \
               plan_auto_blast = CASE WHEN $28::int IS NULL THEN plan_auto_blast \
                 WHEN $28 < 0 THEN NULL ELSE $28 END, \
               plan_timeout_secs = COALESCE($29, plan_timeout_secs), \
               updated_at = now() \
             WHERE id = $1 RETURNING {REPO_COLUMNS}"
        )))
        .bind(id)
        .bind(&s.verify_command)
        .bind(&s.approval_mode)
        .bind(&s.review_fail_mode)
        .bind(&s.egress_policy)
        .bind(s.budget_task_microusd)
        .bind(s.budget_daily_microusd)
        .bind(s.max_concurrency)
        .bind(&s.runner_labels)
        .bind(s.enabled)
        .bind(&s.merge_method)
        .bind(&s.ci_ignore)
        .bind(&s.no_checks)
        .bind(s.no_checks_grace_secs)
        .bind(s.allow_workflow_changes)
        .bind(s.agent_hooks)
        .bind(&s.env_image)
        .bind(&s.env_setup)
        .bind(&s.reproduce_first)
        .bind(&s.reproduce_policy)
        .bind(s.guard_window_secs)
        .bind(s.guard_window_commits)
        .bind(&s.agent)
        .bind(s.agent_fallback)
        .bind(s.best_of)
        .bind(&s.best_of_models)
        .bind(s.plan_gate)
        .bind(s.plan_auto_blast)
        .bind(s.plan_timeout_secs)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::RepoNotFound(id.to_string()))?;
        tx.commit().await?;
        Ok(repo)
    }
}

fn check_choice(what: &str, value: Option<&str>, allowed: &[&str]) -> Result<()> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(Error::Invalid(format!(
            "{what} `{v}` is not one of: {}",
            allowed
                .iter()
                .filter(|a| !a.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Ok(()),
    }
}

/// `owner/name` with GitHub's allowed characters.
pub fn valid_repo_name(name: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(name.split_once('/'), Some((owner, repo)) if ok(owner) && ok(repo))
}

impl Store {
    /// Stores the setup-only secret `name` of a repository (replacing it). Names are environment
    /// variable names; values at least 12 characters (shorter ones cannot be scrubbed from logs
    /// reliably).
    pub async fn set_repo_secret(&self, repo: RepoId, name: &str, value: &str) -> Result<()> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(Error::Invalid(format!(
                "secret name `{name}` must look like an environment variable: A-Z, 0-9 and _, not starting with a digit, at most 64 characters"
            )));
        }
        if !(12..=65536).contains(&value.chars().count()) {
            return Err(Error::Invalid(
                "a secret must be 12 to 65,536 characters (a shorter one cannot be kept out of logs reliably)"
                    .into(),
            ));
        }
        self.repo(repo).await?;
        sqlx::query(
            "INSERT INTO repo_secrets (repo_id, name, value) VALUES ($1, $2, $3) \
             ON CONFLICT (repo_id, name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        )
        .bind(repo)
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a secret; whether it existed.
    pub async fn delete_repo_secret(&self, repo: RepoId, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM repo_secrets WHERE repo_id = $1 AND name = $2")
                .bind(repo)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// The names of a repository's secrets and when each was set (never the values).
    pub async fn repo_secret_names(&self, repo: RepoId) -> Result<Vec<(String, DateTime<Utc>)>> {
        Ok(sqlx::query_as(
            "SELECT name, updated_at FROM repo_secrets WHERE repo_id = $1 ORDER BY name",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?)
    }
}

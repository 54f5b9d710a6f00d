//! Domain types as the API shows them: each `api` wire type built from the store's, in one place.

use crate::store::Task;

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
        agent: t.agent.clone(),
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
        best_of: t.best_of,
        parent_id: t.parent_id,
        candidate: t.candidate,
        planning: t.planning(),
    }
}

pub(crate) fn guard_view(g: &crate::store::guard::MergeGuard) -> api::GuardWatch {
    api::GuardWatch {
        state: match g.state.as_str() {
            "watching" => api::GuardState::Watching,
            "clean" => api::GuardState::Clean,
            "guilty" => api::GuardState::Reverting,
            "reverted" => api::GuardState::Reverted,
            _ => api::GuardState::Unknown,
        },
        reason: g.reason.clone(),
        merge_sha: g.merge_sha.clone(),
        until: g.deadline,
        revert_pr: g.revert_pr_number,
        revert_pr_url: g.revert_pr_url.clone(),
        revert_state: g.revert_state.clone(),
    }
}

pub(crate) fn repo_view(r: &crate::store::repos::Repo) -> api::Repo {
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
            agent: Some(r.agent.clone()),
            agent_fallback: Some(r.agent_fallback),
            no_checks_grace_secs: Some(r.no_checks_grace_secs),
            env_image: r.env_image.clone(),
            env_setup: Some(r.env_setup.clone()),
            reproduce_first: Some(r.reproduce_first.clone()),
            reproduce_policy: Some(r.reproduce_policy.clone()),
            guard_window_secs: Some(r.guard_window_secs),
            guard_window_commits: Some(r.guard_window_commits),
            best_of: Some(r.best_of),
            best_of_models: Some(r.best_of_models.clone()),
            plan_gate: Some(r.plan_gate),
            plan_auto_blast: Some(r.plan_auto_blast.unwrap_or(-1)),
            plan_timeout_secs: Some(r.plan_timeout_secs),
        },
    }
}

pub(crate) fn runner_view(r: crate::store::runners::Runner, leases: i64) -> api::Runner {
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

pub(crate) fn user_view(u: crate::store::users::User) -> api::User {
    api::User {
        id: u.id,
        username: u.username,
        role: u.role,
        disabled: u.disabled,
    }
}

pub(crate) fn token_view(t: crate::store::users::ApiToken, secret: Option<String>) -> api::Token {
    api::Token {
        id: t.id,
        name: t.name,
        secret,
        revoked: t.revoked_at.is_some(),
        last_used_at: t.last_used_at,
    }
}

pub(crate) fn reproduction_view(r: crate::store::reproduction::Reproduction) -> api::Reproduction {
    use crate::store::reproduction::ReproStatus;
    let run = |x: crate::store::reproduction::ReproRun| api::ReproductionRun {
        exit_code: x.exit_code,
        timed_out: x.timed_out,
        output_tail: x.output_tail,
        duration_ms: x.duration_ms,
    };
    api::Reproduction {
        summary: r.summary(),
        status: match r.status {
            ReproStatus::Reproduced => api::ReproductionStatus::Reproduced,
            ReproStatus::NotReproduced => api::ReproductionStatus::NotReproduced,
            ReproStatus::NoTest => api::ReproductionStatus::NoTest,
            ReproStatus::NotFixed => api::ReproductionStatus::NotFixed,
        },
        command: r.command,
        files: r.files,
        base: r.base.map(run),
        head: r.head.map(run),
        note: r.note,
    }
}

/// A merge queue entry as the API shows it.
pub(crate) fn queue_place(e: &crate::store::merge_queue::QueueEntry) -> api::MergeQueuePlace {
    api::MergeQueuePlace {
        task: e.task_id,
        position: e.position,
        waiting_for: e.waiting_for().to_owned(),
        merging: e.merging,
        entered_at: e.entered_at,
        status: e.status.as_str().to_owned(),
        priority: e.priority,
        overlaps: e.overlaps,
        refreshes: e.refreshes,
    }
}

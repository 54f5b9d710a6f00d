//! The post-merge guard: after an agent's merge the controller watches the default branch's CI
//! for the merge commit (and the commits after it) within the repository's window, and reverts a
//! merge that turned it red.
//!
//! Guilt: a merge commit whose CI is red while the nearest earlier commit with a verdict is green.
//! A red that was red before is not the merge's. A merge commit CI did not run on (CI skipped
//! it, a later push cancelled it) is judged by the commits after it: a later green clears it; a
//! later red bisects — the merges are judged one by one in merge order, and a skipped one gets a
//! probe branch at its commit (`backporcher/guard-<task>`) so CI runs on it. A merge still
//! undecided when its window ends (time, or later commits) is `unknown` and no longer watched.
//!
//! Guilty → a revert commit made in the cache repository ([`crate::forge::revert`]) on
//! `backporcher/revert-<task>`, a pull request for it (found again by the key in its body), then
//! the task back in the queue with the failed checks' logs in its retry context — or failed at
//! its second revert — and a `reverted` chat notification; the issue comment follows from the
//! timeline ([`crate::forge::milestones`]). In full-auto the guard merges the revert once its CI
//! is green (bounded by the window again); otherwise a person does.
//!
//! Replicas: a repository's pass is claimed ([`Work::Guard`]), every effect is recorded in
//! `merge_guards` once done and read again before the next, so a pass that runs again never
//! opens a second revert or requeues twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::forge::git::Pusher;
use crate::forge::revert::RevertRequest;
use crate::forge::{
    CheckState, CiVerdict, FailedLog, Forge, ForgeError, MergeMethod, MergeOutcome, NewPullRequest,
};
use crate::loops::{LoopCtx, Next, every};
use crate::store::Store;
use crate::store::guard::{MergeGuard, Requeued};
use crate::store::repos::Repo;
use crate::store::wake::Channel;
use crate::store::work::{CLAIM_TTL, Work};

/// Commits of the default branch's history read per pass (newest first): one more than the
/// longest window (`MAX_GUARD_WINDOW_COMMITS`), so a merge not among them is past its window.
const HISTORY: usize = crate::store::repos::MAX_GUARD_WINDOW_COMMITS as usize + 1;
/// Earlier commits looked at for the verdict before a merge.
const BASELINE_DEPTH: usize = 20;

/// What the guard needs.
#[derive(Clone)]
pub struct Guard {
    /// The store.
    pub store: Store,
    /// GitHub.
    pub forge: Arc<dyn Forge>,
    /// The cache repositories the guard's git work runs in.
    pub pusher: Pusher,
}

/// What a guard's look found.
enum Look {
    /// Not decided; wait.
    Undecided,
    /// Decided or moved on.
    Done,
}

impl Guard {
    /// One pass: starts watching new merges, then works on every repository with live guards
    /// (those this replica claims). Whether any guard is still live.
    pub async fn pass(&self) -> anyhow::Result<bool> {
        self.store.start_guards().await?;
        let repos = self.store.guard_repos().await?;
        let claimed = self
            .store
            .claim_work(Work::Guard, &repos, CLAIM_TTL)
            .await?;
        let _kept = self.store.keep_work(Work::Guard, &claimed, CLAIM_TTL);
        for repo in claimed {
            let done = self.repo_pass(repo).await;
            self.store.release_work(Work::Guard, repo).await?;
            if let Err(e) = done {
                tracing::warn!(repo, error = %format!("{e:#}"), "guard pass deferred");
            }
        }
        Ok(!repos.is_empty())
    }

    async fn repo_pass(&self, repo_id: i64) -> anyhow::Result<()> {
        let guards = self.store.live_guards(repo_id).await?;
        if guards.is_empty() {
            return Ok(());
        }
        let repo = self.store.repo(repo_id).await?;
        let token = self.forge.git_token().await?;
        let history = self
            .pusher
            .first_parents(
                &repo.name,
                &repo.clone_url,
                &repo.default_branch,
                &token,
                HISTORY,
            )
            .await?;
        let mut ci = CiCache::default();
        let watching: HashSet<String> = guards
            .iter()
            .filter(|g| g.state == "watching")
            .map(|g| g.merge_sha.clone())
            .collect();
        for g in guards {
            if !self
                .store
                .renew_work(Work::Guard, repo_id, CLAIM_TTL)
                .await?
            {
                tracing::warn!(
                    repo = repo.name,
                    "the guard's claim ran out; another controller goes on"
                );
                return Ok(());
            }
            let task = g.task_id;
            let g_ref = g.clone();
            let step = match g.state.as_str() {
                "watching" => self
                    .watch(&repo, &g, &history, &watching, &token, &mut ci)
                    .await
                    .map(drop),
                "guilty" => self.revert(&repo, g, &token).await,
                // The requeue did not happen yet (the pass that opened the PR stopped).
                "reverted" if !g.requeued => self.revert(&repo, g, &token).await,
                "reverted" => self.follow_revert(&repo, &g, &mut ci).await,
                _ => Ok(()),
            };
            match step {
                Ok(()) => {}
                Err(e)
                    if e.downcast_ref::<ForgeError>()
                        .is_some_and(ForgeError::is_transient) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    let ended = self.store.guard_step_failed(&g_ref, &why).await?;
                    tracing::warn!(repo = repo.name, task, error = %why, ended, "guard step failed; tried again at the next pass unless the bound ended it");
                }
            }
        }
        Ok(())
    }

    /// Judges one watched merge.
    async fn watch(
        &self,
        repo: &Repo,
        g: &MergeGuard,
        history: &[String],
        watching: &HashSet<String>,
        token: &str,
        ci: &mut CiCache,
    ) -> anyhow::Result<Look> {
        let pos = history.iter().position(|s| *s == g.merge_sha);
        let verdict = ci.get(self.forge.as_ref(), repo, &g.merge_sha).await?;
        let look = match verdict {
            CiVerdict::Green(_) => {
                self.end(repo, g, "clean", "green", json!({"sha": g.merge_sha}))
                    .await?;
                Look::Done
            }
            CiVerdict::Red(checks) => {
                match self.baseline(repo, &g.merge_sha, watching, ci).await? {
                    Baseline::Green(before) => {
                        let logs = failed_logs(self.forge.as_ref(), repo, &checks).await?;
                        let names: Vec<&str> = logs.iter().map(|l| l.name.as_str()).collect();
                        self.store
                            .guard_guilty(
                                g,
                                &json!(logs),
                                json!({"sha": g.merge_sha, "green_before": before, "checks": names}),
                            )
                            .await?;
                        Look::Done
                    }
                    Baseline::Red(before) => {
                        self.end(
                            repo,
                            g,
                            "clean",
                            "red_before",
                            json!({"sha": g.merge_sha, "red_before": before}),
                        )
                        .await?;
                        Look::Done
                    }
                    Baseline::Unknown => Look::Undecided,
                }
            }
            CiVerdict::Pending(_) => Look::Undecided,
            CiVerdict::NoChecks => {
                // CI skipped the merge commit: the first later commit with a verdict decides
                // whether to look closer.
                let later = pos.map(|p| &history[..p]).unwrap_or_default();
                let mut found = None;
                for sha in later.iter().rev() {
                    match ci.get(self.forge.as_ref(), repo, sha).await? {
                        CiVerdict::Green(_) => {
                            found = Some((true, sha.clone()));
                            break;
                        }
                        CiVerdict::Red(_) => {
                            found = Some((false, sha.clone()));
                            break;
                        }
                        CiVerdict::Pending(_) => break,
                        CiVerdict::NoChecks => {}
                    }
                }
                match found {
                    Some((true, sha)) => {
                        self.end(
                            repo,
                            g,
                            "clean",
                            "green_later",
                            json!({"sha": g.merge_sha, "green": sha}),
                        )
                        .await?;
                        Look::Done
                    }
                    Some((false, _)) if g.probe_branch.is_none() => {
                        let branch = format!("backporcher/guard-{}", g.task_id);
                        self.pusher
                            .push_probe(
                                &repo.name,
                                &repo.clone_url,
                                &repo.default_branch,
                                &g.merge_sha,
                                &branch,
                                token,
                            )
                            .await?;
                        self.store.set_guard_probe(g, &branch).await?;
                        Look::Undecided
                    }
                    _ => Look::Undecided,
                }
            }
        };
        if matches!(look, Look::Undecided) {
            let after = pos.unwrap_or(history.len());
            let over_time = Utc::now() >= g.deadline;
            let over_commits = pos.is_none() || after > g.window_commits.max(0) as usize;
            if over_time || over_commits {
                self.end(
                    repo,
                    g,
                    "unknown",
                    "window_ended",
                    json!({"sha": g.merge_sha, "commits_after": pos, "deadline": g.deadline}),
                )
                .await?;
                return Ok(Look::Done);
            }
        }
        Ok(look)
    }

    /// Ends a watch and removes its probe branch, if it had one.
    async fn end(
        &self,
        repo: &Repo,
        g: &MergeGuard,
        state: &str,
        reason: &str,
        data: Value,
    ) -> anyhow::Result<()> {
        self.store.end_guard(g, state, reason, data).await?;
        if let Some(b) = &g.probe_branch
            && crate::store::tasks::is_task_branch(b, &repo.default_branch)
            && let Err(e) = self.forge.delete_branch(&repo.name, b).await
        {
            tracing::warn!(repo = repo.name, branch = b, error = %e, "deleting the guard's probe branch failed");
        }
        Ok(())
    }

    /// The nearest earlier commit's verdict: green or red (with the commit), or unknown (pending,
    /// an earlier watched merge not judged yet, nothing within reach).
    async fn baseline(
        &self,
        repo: &Repo,
        sha: &str,
        watching: &HashSet<String>,
        ci: &mut CiCache,
    ) -> anyhow::Result<Baseline> {
        for a in self
            .pusher
            .ancestors(&repo.name, sha, BASELINE_DEPTH)
            .await?
        {
            match ci.get(self.forge.as_ref(), repo, &a).await? {
                CiVerdict::Green(_) => return Ok(Baseline::Green(a)),
                CiVerdict::Red(_) => return Ok(Baseline::Red(a)),
                CiVerdict::Pending(_) => return Ok(Baseline::Unknown),
                // An earlier agent merge CI skipped is bisected by its own guard first.
                CiVerdict::NoChecks if watching.contains(&a) => return Ok(Baseline::Unknown),
                CiVerdict::NoChecks => {}
            }
        }
        Ok(Baseline::Unknown)
    }

    /// Works a guilty merge's revert through: commit, pull request, requeue — each once.
    async fn revert(&self, repo: &Repo, mut g: MergeGuard, token: &str) -> anyhow::Result<()> {
        let task = self.store.task(g.task_id).await?;
        let title: String = textguard::clean_plain(&task.issue_title)
            .chars()
            .filter(|c| *c != '\n')
            .take(80)
            .collect();
        let branch = format!("backporcher/revert-{}", g.task_id);
        let subject = format!("Revert \"{title}\" (task {})", g.task_id);
        if g.revert_sha.is_none() {
            let made = self
                .pusher
                .revert(&RevertRequest {
                    repo: &repo.name,
                    clone_url: &repo.clone_url,
                    default_branch: &repo.default_branch,
                    merge_sha: &g.merge_sha,
                    branch: &branch,
                    subject: &subject,
                    token,
                })
                .await?;
            let Some(sha) = made else {
                self.store
                    .guard_revert_conflict(
                        &g,
                        &format!(
                            "the revert of {} conflicts with later commits on {}; revert it by hand",
                            g.merge_sha, repo.default_branch
                        ),
                    )
                    .await?;
                return Ok(());
            };
            self.store.set_revert_commit(&g, &branch, &sha).await?;
            g = self.reload(g.id).await?;
        }
        if g.revert_pr_number.is_none() {
            let marker = format!(
                "<!-- backporcher revert task {} merge {} -->",
                g.task_id, g.merge_sha
            );
            let ours =
                |pr: &crate::forge::PullRequest| pr.body.contains(&marker) && pr.head_ref == branch;
            let pr = match self.forge.find_pull(&repo.name, &branch).await? {
                Some(pr) if ours(&pr) => pr,
                Some(pr) => {
                    self.store
                        .guard_revert_conflict(
                            &g,
                            &format!(
                                "pull request #{} uses `{branch}` but was not opened by Backporcher; close it and revert {} by hand",
                                pr.number, g.merge_sha
                            ),
                        )
                        .await?;
                    return Ok(());
                }
                None => {
                    let body = revert_body(&task, &g, &repo.default_branch, &marker);
                    let new = NewPullRequest {
                        title: &subject,
                        body: &body,
                        head: &branch,
                        base: &repo.default_branch,
                    };
                    match self.forge.create_pull(&repo.name, &new).await {
                        Ok(pr) => pr,
                        // Opened meanwhile (a lost answer): find it.
                        Err(ForgeError::Http { status: 422, .. }) => self
                            .forge
                            .find_pull(&repo.name, &branch)
                            .await?
                            .filter(|pr| ours(pr))
                            .ok_or_else(|| {
                                anyhow::anyhow!("revert PR creation refused and no PR found")
                            })?,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            let mode = match &repo.approval_mode {
                Some(m) => m.clone(),
                None => self.store.settings().await?.approval_mode,
            };
            let state = if mode == "full-auto" {
                "open"
            } else {
                "awaiting_approval"
            };
            let deadline =
                Utc::now() + chrono::Duration::seconds(i64::from(repo.guard_window_secs.max(60)));
            self.store
                .set_revert_pr(&g, pr.number, &pr.url, state, deadline)
                .await?;
            g = self.reload(g.id).await?;
        }
        if !g.requeued {
            let logs = g
                .failed_checks
                .as_ref()
                .map(|j| j.0.clone())
                .unwrap_or_default();
            let names: Vec<String> = logs
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let error = format!(
                "merging it turned CI on {} red ({}); reverted in {}",
                repo.default_branch,
                names.join(", "),
                g.revert_pr_url.clone().unwrap_or_default()
            );
            let context = json!({
                "kind": "regression",
                "error": error,
                "detail": {
                    "merge_sha": g.merge_sha,
                    "revert_pr": g.revert_pr_url,
                    "failed_checks": logs,
                    "note": "your merged change broke the default branch's CI and was reverted; start again from the current default branch and fix what the log shows",
                },
            });
            let data = json!({
                "sha": g.merge_sha,
                "merged_pr": g.pr_number,
                "revert_pr": g.revert_pr_number,
                "url": g.revert_pr_url,
                "checks": names,
            });
            let outcome = self
                .store
                .guard_requeue(&g, &error, &context, &data)
                .await?;
            tracing::info!(
                repo = repo.name,
                task = g.task_id,
                requeued = outcome != Requeued::Untouched,
                "merge reverted"
            );
        }
        Ok(())
    }

    /// A full-auto revert: merged once its CI is green; red, refused or still pending at its
    /// deadline → left to a person.
    async fn follow_revert(
        &self,
        repo: &Repo,
        g: &MergeGuard,
        ci: &mut CiCache,
    ) -> anyhow::Result<()> {
        let Some(number) = g.revert_pr_number else {
            return Ok(());
        };
        let pr = self.forge.pull(&repo.name, number).await?;
        let data = json!({"pr": number, "url": g.revert_pr_url});
        if pr.merged {
            self.store.set_revert_state(g, "merged", data).await?;
            return Ok(());
        }
        if pr.state != "open" {
            self.store.set_revert_state(g, "closed", data).await?;
            return Ok(());
        }
        // Only the revert the controller made is merged: a branch someone pushed to (or planted
        // before the revert was made) is left to a person, whatever its CI says.
        if g.revert_sha.as_deref() != Some(pr.head_sha.as_str()) {
            tracing::warn!(guard = g.id, pr = number, head = pr.head_sha, made = ?g.revert_sha, "the revert PR's head is not the revert the controller made; left to a person");
            self.store
                .set_revert_state(
                    g,
                    "moved",
                    json!({"pr": number, "url": g.revert_pr_url, "head": pr.head_sha, "made": g.revert_sha}),
                )
                .await?;
            return Ok(());
        }
        let green = match ci.get(self.forge.as_ref(), repo, &pr.head_sha).await? {
            CiVerdict::Green(_) => true,
            CiVerdict::NoChecks if repo.no_checks == "merge" => true,
            CiVerdict::Red(_) => {
                self.store.set_revert_state(g, "ci_failed", data).await?;
                return Ok(());
            }
            _ => false,
        };
        if !green {
            if g.revert_deadline.is_some_and(|d| Utc::now() >= d) {
                self.store.set_revert_state(g, "unknown", data).await?;
            }
            return Ok(());
        }
        let method: MergeMethod = repo.merge_method.parse().unwrap_or_default();
        match self
            .forge
            .merge(&repo.name, number, &pr.head_sha, method)
            .await?
        {
            MergeOutcome::Merged(sha) => {
                self.store
                    .set_revert_state(
                        g,
                        "merged",
                        json!({"pr": number, "url": g.revert_pr_url, "sha": sha}),
                    )
                    .await?;
                if let Some(b) = &g.revert_branch
                    && crate::store::tasks::is_task_branch(b, &repo.default_branch)
                    && let Err(e) = self.forge.delete_branch(&repo.name, b).await
                {
                    tracing::warn!(repo = repo.name, branch = b, error = %e, "deleting the merged revert branch failed");
                }
            }
            MergeOutcome::HeadMoved(_) => {}
            MergeOutcome::Conflict(why) | MergeOutcome::Refused(why) => {
                self.store
                    .set_revert_state(
                        g,
                        "refused",
                        json!({"pr": number, "url": g.revert_pr_url, "error": why}),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn reload(&self, id: i64) -> anyhow::Result<MergeGuard> {
        self.store
            .merge_guard(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("guard {id} disappeared"))
    }
}

/// The verdict before a merge.
enum Baseline {
    Green(String),
    Red(String),
    Unknown,
}

/// CI verdicts read in one pass, by commit.
#[derive(Default)]
struct CiCache(HashMap<String, CiVerdict>);

impl CiCache {
    async fn get(
        &mut self,
        forge: &dyn Forge,
        repo: &Repo,
        sha: &str,
    ) -> Result<CiVerdict, ForgeError> {
        if let Some(v) = self.0.get(sha) {
            return Ok(v.clone());
        }
        let v = CiVerdict::of(forge.checks(&repo.name, sha).await?, &repo.ci_ignore);
        self.0.insert(sha.to_owned(), v.clone());
        Ok(v)
    }
}

/// The logs of the failed checks (cleaned), for the task's retry context.
async fn failed_logs(
    forge: &dyn Forge,
    repo: &Repo,
    checks: &[crate::forge::Check],
) -> Result<Vec<FailedLog>, ForgeError> {
    let mut logs = Vec::new();
    for c in checks.iter().filter(|c| c.state == CheckState::Failed) {
        let log = match c.job_id {
            Some(job) => match forge.job_log(&repo.name, job).await {
                Ok(l) => l,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => format!("(log unavailable: {e})"),
            },
            None => format!("(no log; see {})", c.url.clone().unwrap_or_default()),
        };
        logs.push(FailedLog {
            name: c.name.clone(),
            log: textguard::clean_plain(&log),
        });
    }
    Ok(logs)
}

fn revert_body(
    task: &crate::store::Task,
    g: &MergeGuard,
    default_branch: &str,
    marker: &str,
) -> String {
    let pr = g.pr_number.map(|n| format!(" (#{n})")).unwrap_or_default();
    format!(
        "Backporcher's post-merge guard: merging task {}{pr} as {} turned CI on `{default_branch}` red \
         while the commit before it was green. This reverts that merge; the task goes back to its \
         agent with the failed checks' logs.\n\n{marker}\n",
        task.id, g.merge_sha
    )
}

/// Runs until `shutdown`: woken when a task merges (`bp_queue`), every CI poll interval while
/// a merge is watched, else at the sweep (nothing to do without GitHub).
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let Some(forge) = ctx.forge.clone() else {
        return;
    };
    let guard = Guard {
        store: ctx.store.clone(),
        forge,
        pusher: Pusher::new(&ctx.config.data_dir.join("guard")),
    };
    let poll = ctx.config.pipeline.ci_poll.max(Duration::from_millis(100));
    let wake = ctx.fanout.wake(Channel::Queue);
    every("guard", vec![wake], ctx.config.sweep, shutdown, || {
        let guard = guard.clone();
        async move {
            Ok(if guard.pass().await? {
                Next::WaitAtMost(poll)
            } else {
                Next::Wait
            })
        }
    })
    .await;
}

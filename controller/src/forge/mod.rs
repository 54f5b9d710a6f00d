//! The forge: everything the controller reads from and writes to GitHub.
//!
//! The controller is the only component that talks to GitHub. [`Forge`] is the seam the pipeline
//! calls (a trait, so faults can be injected); [`github::GitHub`] implements it on octocrab's HTTP
//! client with our own request loop — authentication ([`auth`]: a personal token or a GitHub App's
//! installation tokens), rate-limit backoff, and GitHub's JSON decoded into the few domain types
//! below. [`git`] pushes a runner's bundle to the task branch; [`revert`] reads the default
//! branch's history and makes revert commits for the post-merge guard. Intake of issues (webhooks and the
//! ETag poller) lives in [`crate::intake`].

pub mod auth;
pub mod git;
pub mod github;
pub mod milestones;
pub mod revert;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Labels on an issue as it moves through the pipeline.
pub mod labels {
    /// Asks for a task.
    pub const TRIGGER: &str = "backporcher";
    /// A task works on it.
    pub const IN_PROGRESS: &str = "backporcher-in-progress";
    /// Its PR merged.
    pub const DONE: &str = "backporcher-done";
    /// Its task failed.
    pub const FAILED: &str = "backporcher-failed";
    /// Asks for the stronger model.
    pub const OPUS: &str = "opus";
    /// Asks for the Codex CLI as the agent backend.
    pub const CODEX: &str = "codex";
    /// Asks for Claude Code as the agent backend (in a repository whose default is Codex).
    pub const CLAUDE: &str = "claude";
}

/// What went wrong talking to the forge.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// GitHub answered with an error status.
    #[error("GitHub answered {status} to {method} {path}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Method.
        method: String,
        /// Request path.
        path: String,
        /// GitHub's `message`.
        message: String,
    },
    /// A rate limit lasts longer than we wait in place; try again after `until`.
    #[error("GitHub rate limit: retry after {wait:?} ({kind})")]
    RateLimited {
        /// How long to wait.
        wait: Duration,
        /// `primary` or `secondary`.
        kind: &'static str,
    },
    /// The request did not get an answer.
    #[error("cannot reach GitHub at {base}: {message}")]
    Transport {
        /// API base URL.
        base: String,
        /// The transport error.
        message: String,
    },
    /// The answer was not what GitHub sends.
    #[error("unexpected answer from GitHub to {path}: {message}")]
    Decode {
        /// Request path.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// Authentication could not be set up (bad App key, token exchange failed).
    #[error("GitHub authentication failed: {0}")]
    Auth(String),
    /// A git command failed.
    #[error("git {op} failed: {message}")]
    Git {
        /// What we were doing.
        op: &'static str,
        /// git's error output.
        message: String,
    },
    /// The bundle must not be pushed (size, forbidden paths, wrong branch).
    #[error("push refused: {0}")]
    Refused(String),
}

impl ForgeError {
    /// Whether trying again later may succeed (rate limits, transport errors, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::RateLimited { .. } | ForgeError::Transport { .. } => true,
            ForgeError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status, when GitHub answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result of forge calls.
pub type Result<T, E = ForgeError> = std::result::Result<T, E>;

/// An issue as the forge shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// Number.
    pub number: i64,
    /// Title.
    pub title: String,
    /// Body (may be empty).
    pub body: String,
    /// Author's login.
    pub author: String,
    /// Label names.
    pub labels: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
    /// Whether it is a pull request.
    pub is_pull: bool,
}

/// The page of labelled issues a conditional list returned.
#[derive(Debug, Clone)]
pub enum Listing {
    /// Nothing changed since the given ETag.
    NotModified,
    /// The current list and its ETag.
    Changed {
        /// Issues.
        issues: Vec<Issue>,
        /// ETag for the next request.
        etag: Option<String>,
    },
}

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Number.
    pub number: i64,
    /// Web URL.
    pub url: String,
    /// `open` or `closed`.
    pub state: String,
    /// Whether it merged.
    pub merged: bool,
    /// Head commit.
    pub head_sha: String,
    /// Head branch.
    pub head_ref: String,
    /// Base branch.
    pub base_ref: String,
    /// Description (markdown).
    pub body: String,
    /// `Some(false)` when it conflicts with its base; `None` while GitHub computes it.
    pub mergeable: Option<bool>,
}

/// A new pull request.
#[derive(Debug, Clone)]
pub struct NewPullRequest<'a> {
    /// Title.
    pub title: &'a str,
    /// Body (markdown).
    pub body: &'a str,
    /// Head branch.
    pub head: &'a str,
    /// Base branch.
    pub base: &'a str,
}

/// One check (a check run or a commit status context).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Name (check run name or status context).
    pub name: String,
    /// Normalised state.
    pub state: CheckState,
    /// Actions job id when it is a GitHub Actions check run (for its log).
    pub job_id: Option<u64>,
    /// Link for humans.
    pub url: Option<String>,
}

/// Where one check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Queued or running.
    Pending,
    /// Passed (success, neutral, skipped).
    Passed,
    /// Failed (failure, error, timed out, cancelled, action required).
    Failed,
}

/// The CI verdict for a commit, over check runs and commit statuses, minus ignored checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CiVerdict {
    /// No check reported anything (yet).
    NoChecks,
    /// Some checks still run.
    Pending(Vec<Check>),
    /// Every check passed.
    Green(Vec<Check>),
    /// At least one failed and none runs any more.
    Red(Vec<Check>),
}

impl CiVerdict {
    /// Combines checks into a verdict (`ignore`: names of checks that do not count).
    pub fn of(checks: Vec<Check>, ignore: &[String]) -> Self {
        let checks: Vec<Check> = checks
            .into_iter()
            .filter(|c| !ignore.iter().any(|i| i.eq_ignore_ascii_case(&c.name)))
            .collect();
        if checks.is_empty() {
            CiVerdict::NoChecks
        } else if checks.iter().any(|c| c.state == CheckState::Pending) {
            CiVerdict::Pending(checks)
        } else if checks.iter().any(|c| c.state == CheckState::Failed) {
            CiVerdict::Red(checks)
        } else {
            CiVerdict::Green(checks)
        }
    }
}

/// The log of a failed check, for the retry prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedLog {
    /// Check name.
    pub name: String,
    /// The end of its log (capped).
    pub log: String,
}

/// How to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MergeMethod {
    /// One squashed commit (default).
    #[default]
    Squash,
    /// A merge commit.
    Merge,
    /// Rebased commits.
    Rebase,
}

impl MergeMethod {
    /// GitHub's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeMethod::Squash => "squash",
            MergeMethod::Merge => "merge",
            MergeMethod::Rebase => "rebase",
        }
    }
}

impl std::str::FromStr for MergeMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "squash" => Ok(MergeMethod::Squash),
            "merge" => Ok(MergeMethod::Merge),
            "rebase" => Ok(MergeMethod::Rebase),
            other => Err(format!(
                "unknown merge method `{other}`; use squash, merge or rebase"
            )),
        }
    }
}

/// What a merge attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Merged as this commit.
    Merged(String),
    /// The PR conflicts with its base.
    Conflict(String),
    /// The head moved since we looked (someone pushed); look again.
    HeadMoved(String),
    /// Refused for another reason (branch protection, required reviews, closed PR).
    Refused(String),
}

/// A human's request on a task's PR: a `@backporcher` comment or a whole submitted review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// Who asked.
    pub author: String,
    /// `comment` or `review`.
    pub kind: String,
    /// GitHub id of the comment or review (deduplicates redeliveries).
    pub id: u64,
    /// The text: the comment, or the review body followed by each line comment.
    pub comments: Vec<String>,
}

/// Everything the pipeline asks of GitHub.
#[async_trait]
pub trait Forge: Send + Sync {
    /// Open issues of `repo` carrying `label`, every page, conditional on `etag` (an ETag comes
    /// back only for a list that fits one page).
    async fn labelled_issues(&self, repo: &str, label: &str, etag: Option<&str>)
    -> Result<Listing>;
    /// One issue.
    async fn issue(&self, repo: &str, number: i64) -> Result<Issue>;
    /// Opens an issue (no labels: the trigger label would make it a second task).
    async fn open_issue(&self, repo: &str, title: &str, body: &str) -> Result<Issue>;
    /// Who last added `label` to issue `number` (from the issue's events), if anyone did;
    /// `None` too when the issue has more events than the forge reads.
    async fn label_actor(&self, repo: &str, number: i64, label: &str) -> Result<Option<String>>;
    /// Adds labels.
    async fn add_labels(&self, repo: &str, number: i64, labels: &[&str]) -> Result<()>;
    /// Removes a label (absent is fine).
    async fn remove_label(&self, repo: &str, number: i64, label: &str) -> Result<()>;
    /// Comments on an issue or PR.
    async fn comment(&self, repo: &str, number: i64, body: &str) -> Result<()>;
    /// Closes an issue.
    async fn close_issue(&self, repo: &str, number: i64) -> Result<()>;
    /// The open PR whose head is `branch`, if any.
    async fn find_pull(&self, repo: &str, branch: &str) -> Result<Option<PullRequest>>;
    /// Opens a PR.
    async fn create_pull(&self, repo: &str, pr: &NewPullRequest<'_>) -> Result<PullRequest>;
    /// One PR (with `mergeable`).
    async fn pull(&self, repo: &str, number: i64) -> Result<PullRequest>;
    /// Closes a PR without merging.
    async fn close_pull(&self, repo: &str, number: i64) -> Result<()>;
    /// Check runs and statuses of a commit, every page of each. A list longer than the forge
    /// reads ends with a pending check naming the cut, so its verdict is never green.
    async fn checks(&self, repo: &str, sha: &str) -> Result<Vec<Check>>;
    /// The end of a failed Actions job's log.
    async fn job_log(&self, repo: &str, job_id: u64) -> Result<String>;
    /// Merges a PR whose head must still be `sha`.
    async fn merge(
        &self,
        repo: &str,
        number: i64,
        sha: &str,
        method: MergeMethod,
    ) -> Result<MergeOutcome>;
    /// Deletes a branch (absent is fine).
    async fn delete_branch(&self, repo: &str, branch: &str) -> Result<()>;
    /// The review `id` on PR `number` with its line comments, as one request.
    async fn review_feedback(&self, repo: &str, number: i64, review_id: u64) -> Result<Feedback>;
    /// A token git can push with (refreshed when it is an App installation token).
    async fn git_token(&self) -> Result<String>;
}

/// The forge's last rate-limit reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateReading {
    /// Requests left in the window.
    pub remaining: Option<u64>,
    /// When the window resets (Unix seconds).
    pub reset: Option<u64>,
    /// Times we waited for a rate limit.
    pub waits: u64,
}

/// Seconds from now until Unix time `reset` (at least one).
pub(crate) fn until_reset(reset: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(reset.saturating_sub(now).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, state: CheckState) -> Check {
        Check {
            name: name.into(),
            state,
            job_id: None,
            url: None,
        }
    }

    #[test]
    fn verdicts_combine_checks_minus_the_ignored_ones() {
        let ignore = vec!["codecov/patch".to_owned()];
        assert_eq!(CiVerdict::of(vec![], &ignore), CiVerdict::NoChecks);
        assert_eq!(
            CiVerdict::of(vec![check("Codecov/Patch", CheckState::Failed)], &ignore),
            CiVerdict::NoChecks,
            "an ignored bot check counts for nothing, whatever its case"
        );
        let v = CiVerdict::of(
            vec![
                check("build", CheckState::Passed),
                check("codecov/patch", CheckState::Failed),
            ],
            &ignore,
        );
        assert!(
            matches!(v, CiVerdict::Green(ref c) if c.len() == 1),
            "{v:?}"
        );
        let v = CiVerdict::of(
            vec![
                check("build", CheckState::Failed),
                check("lint", CheckState::Pending),
            ],
            &ignore,
        );
        assert!(
            matches!(v, CiVerdict::Pending(_)),
            "a red check waits for the rest: {v:?}"
        );
        let v = CiVerdict::of(
            vec![
                check("build", CheckState::Failed),
                check("lint", CheckState::Passed),
            ],
            &ignore,
        );
        assert!(matches!(v, CiVerdict::Red(_)), "{v:?}");
    }
}

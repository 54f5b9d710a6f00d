//! The post-merge guard's git work, in the same bare cache repositories as [`super::git`]: the
//! default branch's first-parent history (which commits came after a merge, which came before),
//! a probe branch at a commit CI skipped, and the revert commit of a merge.
//!
//! A revert is made without a work tree and without `merge-tree --merge-base` (git 2.40; the
//! controller's image has 2.39): a throw-away commit with the merge's first parent's tree on top
//! of the merge ("undo"), merged into the default branch's head by `merge-tree --write-tree` —
//! their merge base is the merge itself, so the result is the head minus the merge's change, as
//! `git revert -m 1` makes it — then committed with the head as its only parent. Only branches
//! under `backporcher/` are ever pushed.

use super::Result;
use super::git::{Pusher, basic_auth, fetch_branches, git, git_as_bot, refuse_foreign_branch};

/// A revert to make and push.
#[derive(Debug, Clone)]
pub struct RevertRequest<'a> {
    /// `owner/name`.
    pub repo: &'a str,
    /// Clone URL.
    pub clone_url: &'a str,
    /// The default branch (the revert is made on its current head).
    pub default_branch: &'a str,
    /// The merge commit to revert.
    pub merge_sha: &'a str,
    /// The branch to push the revert to (`backporcher/revert-<task>`).
    pub branch: &'a str,
    /// The commit's subject line.
    pub subject: &'a str,
    /// Token for HTTPS basic auth.
    pub token: &'a str,
}

/// The line every revert commit's message carries: how a retried pass recognises its revert.
pub fn revert_marker(merge_sha: &str) -> String {
    format!("This reverts commit {merge_sha}.")
}

impl Pusher {
    /// Fetches the default branch and returns its first-parent history, newest first, at most
    /// `max` commits.
    pub async fn first_parents(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        token: &str,
        max: usize,
    ) -> Result<Vec<String>> {
        let dir = self.cache(repo).await?;
        fetch_branches(&dir, clone_url, &[default_branch], &basic_auth(token)).await?;
        let head = format!("refs/remotes/origin/{default_branch}");
        let n = max.to_string();
        let out = git(
            &dir,
            &["rev-list", "--first-parent", "-n", &n, &head],
            None,
            "rev-list",
        )
        .await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// The first-parent ancestors of `sha` (not `sha` itself), nearest first, at most `max`; the
    /// commit must be in the cache (fetched with the default branch).
    pub async fn ancestors(&self, repo: &str, sha: &str, max: usize) -> Result<Vec<String>> {
        let dir = self.cache(repo).await?;
        let n = max.to_string();
        let out = git(
            &dir,
            &["rev-list", "--first-parent", "--skip=1", "-n", &n, sha],
            None,
            "rev-list",
        )
        .await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Points `branch` (a `backporcher/` branch) at `sha`, a commit of the default branch, so CI
    /// runs on it.
    pub async fn push_probe(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        sha: &str,
        branch: &str,
        token: &str,
    ) -> Result<()> {
        refuse_foreign_branch(branch, default_branch)?;
        let dir = self.cache(repo).await?;
        git(
            &dir,
            &[
                "push",
                "--quiet",
                "--force",
                clone_url,
                &format!("{sha}:refs/heads/{branch}"),
            ],
            Some(&basic_auth(token)),
            "push",
        )
        .await
        .map(drop)
    }

    /// Makes the revert of `merge_sha` on the default branch's current head and pushes it to
    /// `branch`; the revert commit. A revert already on the branch (a retried pass) is found and
    /// returned, not made again. `Ok(None)` when the revert conflicts with what came after.
    pub async fn revert(&self, req: &RevertRequest<'_>) -> Result<Option<String>> {
        refuse_foreign_branch(req.branch, req.default_branch)?;
        let dir = self.cache(req.repo).await?;
        let auth = basic_auth(req.token);
        fetch_branches(&dir, req.clone_url, &[req.default_branch], &auth).await?;
        let theirs = format!("refs/remotes/origin/{}", req.branch);
        if fetch_branches(&dir, req.clone_url, &[req.branch], &auth)
            .await
            .is_err()
        {
            // No such branch (any more): forget a stale copy.
            let _ = git(&dir, &["update-ref", "-d", &theirs], None, "update-ref").await;
        }
        let marker = revert_marker(req.merge_sha);
        let head = git(
            &dir,
            &[
                "rev-parse",
                &format!("refs/remotes/origin/{}", req.default_branch),
            ],
            None,
            "rev-parse",
        )
        .await?;
        let parent_tree = git(
            &dir,
            &["rev-parse", &format!("{}^1^{{tree}}", req.merge_sha)],
            None,
            "rev-parse",
        )
        .await?;
        let undo = git_as_bot(
            &dir,
            &[
                "commit-tree",
                &parent_tree,
                "-p",
                req.merge_sha,
                "-m",
                "undo",
            ],
        )
        .await?;
        let Ok(tree) = git(
            &dir,
            &["merge-tree", "--write-tree", &head, &undo],
            None,
            "merge-tree",
        )
        .await
        else {
            return Ok(None);
        };
        let tree = tree.lines().next().unwrap_or_default().to_owned();
        // A revert already on the branch (a retried pass) is kept only when it is this very
        // revert — its tree and its one parent — whatever its message says: a branch somebody
        // else pushed (with the marker line copied) is replaced.
        if let Ok(sha) = git(
            &dir,
            &["rev-parse", "--verify", "--quiet", &theirs],
            None,
            "rev-parse",
        )
        .await
        {
            let shape = git(&dir, &["log", "-1", "--format=%T %P", &sha], None, "log").await?;
            if shape == format!("{tree} {head}") {
                return Ok(Some(sha));
            }
        }
        let message = format!("{}\n\n{marker}\n", req.subject);
        let commit = git_as_bot(&dir, &["commit-tree", &tree, "-p", &head, "-m", &message]).await?;
        git(
            &dir,
            &[
                "push",
                "--quiet",
                "--force",
                req.clone_url,
                &format!("{commit}:refs/heads/{}", req.branch),
            ],
            Some(&auth),
            "push",
        )
        .await?;
        Ok(Some(commit))
    }
}

//! Pushing a runner's result: the git bundle (the task branch against its base) is unpacked into a
//! bare cache repository per forge repository under the controller's data dir, checked (one
//! branch, the expected name, size, no workflow changes unless allowed), and force-pushed to the
//! task branch over HTTPS with the forge's token in an `http.extraHeader` passed through git's
//! environment (never in a URL or an argument).
//!
//! The push is idempotent: pushing the same bundle again leaves the branch where it is.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::{ForgeError, Result};

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushRequest<'a> {
    /// `owner/name`.
    pub repo: &'a str,
    /// Clone URL (https or http).
    pub clone_url: &'a str,
    /// Default branch (fetched first: the bundle's prerequisites are on it).
    pub default_branch: &'a str,
    /// The task branch the bundle must carry.
    pub branch: &'a str,
    /// The bundle bytes.
    pub bundle: &'a [u8],
    /// Whether changes under `.github/workflows/` are allowed.
    pub allow_workflow_changes: bool,
    /// Token for HTTPS basic auth.
    pub token: &'a str,
}

/// What was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The branch head now on the forge.
    pub head_sha: String,
    /// Files the branch changes against the default branch.
    pub changed_files: Vec<String>,
}

/// Pushes bundles; owns the cache repositories under `root`.
#[derive(Debug, Clone)]
pub struct Pusher {
    root: PathBuf,
}

impl Pusher {
    /// Cache repositories live under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The bare cache repository of `repo`, created on first use.
    pub(super) async fn cache(&self, repo: &str) -> Result<PathBuf> {
        let dir = self.root.join(format!("{repo}.git"));
        if !dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| git_err("init", e))?;
            git(&dir, &["init", "--quiet", "--bare"], None, "init").await?;
        }
        Ok(dir)
    }

    /// Unpacks, checks and pushes.
    pub async fn push(&self, req: &PushRequest<'_>) -> Result<Pushed> {
        refuse_foreign_branch(req.branch, req.default_branch)?;
        let dir = self.cache(req.repo).await?;
        let auth = basic_auth(req.token);
        // The bundle needs its base: the default branch and, when continuing, the task branch
        // (absent on a first push).
        fetch_branches(&dir, req.clone_url, &[req.default_branch], &auth).await?;
        let _ = fetch_branches(&dir, req.clone_url, &[req.branch], &auth).await;
        let bundle_path = dir.join(format!("incoming-{}.bundle", uuid::Uuid::new_v4()));
        tokio::fs::write(&bundle_path, req.bundle)
            .await
            .map_err(|e| git_err("write bundle", e))?;
        let result = self.check_and_push(&dir, &bundle_path, req, &auth).await;
        let _ = tokio::fs::remove_file(&bundle_path).await;
        result
    }

    async fn check_and_push(
        &self,
        dir: &Path,
        bundle: &Path,
        req: &PushRequest<'_>,
        auth: &str,
    ) -> Result<Pushed> {
        let bundle_s = bundle.to_string_lossy();
        let heads = git(
            dir,
            &["bundle", "list-heads", &bundle_s],
            None,
            "bundle list-heads",
        )
        .await
        .map_err(|e| ForgeError::Refused(format!("the result is not a git bundle: {e}")))?;
        let refs: Vec<&str> = heads
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        let wanted = format!("refs/heads/{}", req.branch);
        if refs != [wanted.as_str()] {
            return Err(ForgeError::Refused(format!(
                "the bundle must carry exactly `{wanted}`, it carries {refs:?}"
            )));
        }
        let local = format!("refs/backporcher/{}", req.branch);
        git(
            dir,
            &["fetch", "--quiet", &bundle_s, &format!("+{wanted}:{local}")],
            None,
            "fetch bundle",
        )
        .await
        .map_err(|e| {
            ForgeError::Refused(format!(
                "the bundle does not apply to the current `{}`: {e}",
                req.default_branch
            ))
        })?;
        let head = git(dir, &["rev-parse", &local], None, "rev-parse").await?;
        let base = format!("refs/remotes/origin/{}", req.default_branch);
        let merge_base = git(dir, &["merge-base", &base, &local], None, "merge-base")
            .await
            .unwrap_or_else(|_| base.clone());
        let changed = git(
            dir,
            &["diff", "--name-only", "-z", &merge_base, &local],
            None,
            "diff",
        )
        .await?;
        let changed_files: Vec<String> = changed
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if changed_files.is_empty() {
            return Err(ForgeError::Refused(
                "the branch changes nothing against the default branch".into(),
            ));
        }
        if let Some(refusal) = protected_change(dir, req.default_branch, &changed_files).await {
            return Err(ForgeError::Refused(refusal));
        }
        if !req.allow_workflow_changes
            && let Some(f) = changed_files
                .iter()
                .find(|f| f.starts_with(".github/workflows/"))
        {
            return Err(ForgeError::Refused(format!(
                "the change touches `{f}`; workflow changes are not allowed for this repository (repo setting allow_workflow_changes)"
            )));
        }
        git(
            dir,
            &[
                "push",
                "--quiet",
                "--force",
                req.clone_url,
                &format!("{local}:refs/heads/{}", req.branch),
            ],
            Some(auth),
            "push",
        )
        .await?;
        Ok(Pushed {
            head_sha: head,
            changed_files,
        })
    }
}

/// The paths the repository's `.backporcher.toml` on the default branch (as just fetched) says
/// no change may touch (`protected_paths`, globs); the refusal, if a changed file matches one. A
/// file that cannot be read or parsed protects nothing here (the runner reports its errors).
async fn protected_change(dir: &Path, default_branch: &str, changed: &[String]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RepoFile {
        #[serde(default)]
        protected_paths: Vec<String>,
    }
    let spec = format!("refs/remotes/origin/{default_branch}:.backporcher.toml");
    let text = git(dir, &["show", &spec], None, "read .backporcher.toml")
        .await
        .ok()?;
    let file: RepoFile = toml::from_str(&text).ok()?;
    let mut set = globset::GlobSetBuilder::new();
    let mut globs = Vec::new();
    for p in &file.protected_paths {
        if let Ok(g) = globset::GlobBuilder::new(p).literal_separator(true).build() {
            set.add(g);
            globs.push(p.as_str());
        }
    }
    let set = set.build().ok()?;
    changed.iter().find_map(|f| {
        set.matches(f).first().map(|&i| {
            format!(
                "the change touches `{f}`, which the repository protects (`protected_paths` pattern `{}` in .backporcher.toml on `{default_branch}`); change the issue or the repository's rules, then requeue the task",
                globs[i]
            )
        })
    })
}

/// The controller writes only the task branches it named, never the default branch.
pub(super) fn refuse_foreign_branch(branch: &str, default_branch: &str) -> Result<()> {
    if crate::store::tasks::is_task_branch(branch, default_branch) {
        Ok(())
    } else {
        Err(ForgeError::Refused(format!(
            "`{branch}` is not a task branch the controller named; it pushes nothing else"
        )))
    }
}

pub(super) fn basic_auth(token: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    format!("Authorization: Basic {b64}")
}

fn git_err(op: &'static str, e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Git {
        op,
        message: e.to_string(),
    }
}

/// Runs git in `dir`; `auth` becomes an `http.extraHeader` through the environment.
pub(super) async fn git(
    dir: &Path,
    args: &[&str],
    auth: Option<&str>,
    op: &'static str,
) -> Result<String> {
    let mut cmd = xcmd::Cmd::new("git", dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0");
    if let Some(a) = auth {
        cmd = cmd
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", a);
    }
    let out = cmd
        .to_tokio()
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| git_err(op, e))?;
    if !out.status.success() {
        return Err(git_err(
            op,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Pusher {
    /// Brings the task branch up to date with the default branch by a merge commit made without a
    /// work tree (`git merge-tree`), and pushes it. `Ok(None)` when the two conflict.
    pub async fn update_branch(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        branch: &str,
        token: &str,
    ) -> Result<Option<String>> {
        refuse_foreign_branch(branch, default_branch)?;
        let dir = self.cache(repo).await?;
        let auth = basic_auth(token);
        fetch_base_and_branch(&dir, clone_url, default_branch, branch, token).await?;
        let base = format!("refs/remotes/origin/{default_branch}");
        let head = format!("refs/remotes/origin/{branch}");
        let Ok(tree) = git(
            &dir,
            &["merge-tree", "--write-tree", &head, &base],
            None,
            "merge-tree",
        )
        .await
        else {
            return Ok(None);
        };
        let tree = tree.lines().next().unwrap_or_default().to_owned();
        let message = format!("Merge {default_branch} into {branch}");
        let commit = git_as_bot(
            &dir,
            &[
                "commit-tree",
                &tree,
                "-p",
                &head,
                "-p",
                &base,
                "-m",
                &message,
            ],
        )
        .await?;
        git(
            &dir,
            &[
                "push",
                "--quiet",
                clone_url,
                &format!("{commit}:refs/heads/{branch}"),
            ],
            Some(&auth),
            "push",
        )
        .await?;
        Ok(Some(commit))
    }
}

pub(super) async fn git_as_bot(dir: &Path, args: &[&str]) -> Result<String> {
    let out = xcmd::Cmd::new("git", dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "backporcher")
        .env("GIT_AUTHOR_EMAIL", "backporcher@localhost")
        .env("GIT_COMMITTER_NAME", "backporcher")
        .env("GIT_COMMITTER_EMAIL", "backporcher@localhost")
        .to_tokio()
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| git_err("commit-tree", e))?;
    if !out.status.success() {
        return Err(git_err(
            "commit-tree",
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A task branch's diff against the default branch, and the commit it was taken at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchDiff {
    /// The unified diff (whole, unless `complete` is false).
    pub text: String,
    /// The branch head the diff was taken at (what a review of it approves).
    pub head: String,
    /// Whether `text` is the whole diff (false: it was longer than the cap and is cut).
    pub complete: bool,
}

impl Pusher {
    /// The task branch's diff against the default branch (fetched fresh), at most `max` bytes.
    pub async fn diff(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        branch: &str,
        token: &str,
        max: usize,
    ) -> Result<BranchDiff> {
        let dir = self.cache(repo).await?;
        fetch_base_and_branch(&dir, clone_url, default_branch, branch, token).await?;
        let head_ref = format!("refs/remotes/origin/{branch}");
        let head = git(&dir, &["rev-parse", &head_ref], None, "rev-parse").await?;
        let range = format!("refs/remotes/origin/{default_branch}...{head}");
        let mut text = git(
            &dir,
            &[
                "diff",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                &range,
            ],
            None,
            "diff",
        )
        .await?;
        let complete = text.len() <= max;
        if !complete {
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Ok(BranchDiff {
            text,
            head,
            complete,
        })
    }
}

impl Pusher {
    /// The diff a result bundle carries on `branch` against the default branch (fetched fresh),
    /// at most `max` bytes, without pushing it: how the best-of-N reviewer reads a candidate.
    /// The bundle's ref is dropped from the cache repository again.
    #[allow(clippy::too_many_arguments)]
    pub async fn bundle_diff(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        branch: &str,
        bundle: &[u8],
        token: &str,
        max: usize,
    ) -> Result<BranchDiff> {
        refuse_foreign_branch(branch, default_branch)?;
        let dir = self.cache(repo).await?;
        let auth = basic_auth(token);
        fetch_branches(&dir, clone_url, &[default_branch], &auth).await?;
        let _ = fetch_branches(&dir, clone_url, &[branch], &auth).await;
        let id = uuid::Uuid::new_v4();
        let path = dir.join(format!("candidate-{id}.bundle"));
        tokio::fs::write(&path, bundle)
            .await
            .map_err(|e| git_err("write bundle", e))?;
        let local = format!("refs/backporcher-candidates/{id}");
        let path_s = path.to_string_lossy().into_owned();
        let fetched = git(
            &dir,
            &[
                "fetch",
                "--quiet",
                &path_s,
                &format!("+refs/heads/{branch}:{local}"),
            ],
            None,
            "fetch bundle",
        )
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        fetched.map_err(|e| {
            ForgeError::Refused(format!("the candidate's bundle does not apply: {e}"))
        })?;
        let diffed = async {
            let head = git(&dir, &["rev-parse", &local], None, "rev-parse").await?;
            let range = format!("refs/remotes/origin/{default_branch}...{head}");
            let text = git(
                &dir,
                &[
                    "diff",
                    "--no-color",
                    "--no-ext-diff",
                    "--no-textconv",
                    &range,
                ],
                None,
                "diff",
            )
            .await?;
            Ok::<_, ForgeError>((head, text))
        }
        .await;
        let _ = git(&dir, &["update-ref", "-d", &local], None, "update-ref").await;
        let (head, mut text) = diffed?;
        let complete = text.len() <= max;
        if !complete {
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Ok(BranchDiff {
            text,
            head,
            complete,
        })
    }
}

/// Fetches the default branch and the task branch from the forge into the cache repository.
async fn fetch_base_and_branch(
    dir: &Path,
    clone_url: &str,
    default_branch: &str,
    branch: &str,
    token: &str,
) -> Result<()> {
    fetch_branches(
        dir,
        clone_url,
        &[default_branch, branch],
        &basic_auth(token),
    )
    .await
}

/// Fetches `branches` from `clone_url` as `refs/remotes/origin/*` of the cache repository.
pub(super) async fn fetch_branches(
    dir: &Path,
    clone_url: &str,
    branches: &[&str],
    auth: &str,
) -> Result<()> {
    let refspecs: Vec<String> = branches
        .iter()
        .map(|b| format!("+refs/heads/{b}:refs/remotes/origin/{b}"))
        .collect();
    let mut args = vec!["fetch", "--quiet", "--no-tags", clone_url];
    args.extend(refspecs.iter().map(String::as_str));
    git(dir, &args, Some(auth), "fetch").await.map(drop)
}

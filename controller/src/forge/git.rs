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
            // Without rename detection a moved file is named at both paths: moving a
            // protected file (or a workflow) away is a change to where it was.
            &[
                "diff",
                "--name-only",
                "--no-renames",
                "-z",
                &merge_base,
                &local,
            ],
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

/// The arguments of the unified diff of `range` shown to reviewers: no colour, no external diff
/// driver or text conversion (the repository's attributes run nothing here).
fn diff_args(range: &str) -> [&str; 5] {
    [
        "diff",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        range,
    ]
}

/// Runs git in `dir` and keeps at most `max` bytes of what it prints: past that it is stopped and
/// the text returned cut at a character boundary, with `false` (not whole). A change made of huge
/// files (which compress to a small bundle) is never held whole in the controller's memory.
async fn git_capped(
    dir: &Path,
    args: &[&str],
    op: &'static str,
    max: usize,
) -> Result<(String, bool)> {
    use tokio::io::AsyncReadExt;
    let mut child = xcmd::Cmd::new("git", dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .to_tokio()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| git_err(op, e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // Its complaint, bounded, read beside the output so that neither pipe can fill and stall it.
    let complaint = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut head = stderr.take(16 * 1024);
        let _ = head.read_to_end(&mut kept).await;
        let _ = tokio::io::copy(&mut head.into_inner(), &mut tokio::io::sink()).await;
        kept
    });
    let mut out = Vec::new();
    let mut limited = stdout.take(max as u64 + 1);
    limited
        .read_to_end(&mut out)
        .await
        .map_err(|e| git_err(op, e))?;
    if out.len() > max {
        let _ = child.kill().await;
        complaint.abort();
        let mut text = String::from_utf8_lossy(&out).into_owned();
        let mut cut = max.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        return Ok((text, false));
    }
    let status = child.wait().await.map_err(|e| git_err(op, e))?;
    let complaint = complaint.await.unwrap_or_default();
    if !status.success() {
        return Err(git_err(
            op,
            String::from_utf8_lossy(&complaint).trim().to_owned(),
        ));
    }
    Ok((String::from_utf8_lossy(&out).trim().to_owned(), true))
}

/// What bringing a task branch up to date with the default branch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchUpdate {
    /// The branch already contains the default branch's head; it is left as it is.
    UpToDate(String),
    /// A new head was made (not pushed yet): a merge commit of the default branch into the
    /// branch, or — a repository that merges by rebase keeps a linear history — the branch's
    /// change made again as one commit on the default branch's head.
    Made {
        /// The new head.
        commit: String,
        /// Rebased: the head it replaces (the push expects the branch still there); a merge
        /// commit descends from the head and replaces nothing.
        replaces: Option<String>,
        /// The branch head it was made from: whoever brings it up to date must know that head
        /// is the one that was reviewed, or the update carries an unreviewed commit along.
        from: String,
    },
    /// The two conflict; what conflicts (bounded, cleaned text).
    Conflict(Vec<ConflictFile>),
}

/// A file the default branch and the task branch both changed in ways git cannot merge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConflictFile {
    /// Path in the repository.
    pub path: String,
    /// Its conflicting hunks (at most [`MAX_CONFLICT_HUNKS`]).
    pub hunks: Vec<ConflictHunk>,
    /// Hunks left out past the bound.
    pub more_hunks: usize,
    /// What git said of the file (a conflict without text hunks: deleted on one side, …).
    pub note: Option<String>,
}

/// One conflicting region: both sides' text, each cut at [`MAX_CONFLICT_SIDE`] characters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConflictHunk {
    /// The line of the region in the merged file (1-based).
    pub line: usize,
    /// The task branch's text.
    pub ours: String,
    /// The default branch's text.
    pub theirs: String,
}

/// Most conflicting files described.
pub const MAX_CONFLICT_FILES: usize = 10;
/// Most hunks described per file.
pub const MAX_CONFLICT_HUNKS: usize = 5;
/// Most characters kept of each side of a hunk.
pub const MAX_CONFLICT_SIDE: usize = 2000;

impl Pusher {
    /// Brings the task branch up to date with the default branch by a merge commit made without a
    /// work tree (`git merge-tree`), which [`Pusher::push_update`] pushes (so the caller can
    /// record it first). Nothing is made when the branch already contains the default branch's
    /// head; on a conflict the conflicting hunks come back.
    pub async fn update_branch(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        branch: &str,
        token: &str,
        linear: bool,
    ) -> Result<BranchUpdate> {
        refuse_foreign_branch(branch, default_branch)?;
        let dir = self.cache(repo).await?;
        fetch_base_and_branch(&dir, clone_url, default_branch, branch, token).await?;
        let base = format!("refs/remotes/origin/{default_branch}");
        let head = format!("refs/remotes/origin/{branch}");
        let head_sha = git(&dir, &["rev-parse", &head], None, "rev-parse").await?;
        if is_ancestor(&dir, &base, &head_sha).await? {
            return Ok(BranchUpdate::UpToDate(head_sha));
        }
        let (ok, out) = git_status(&dir, &["merge-tree", "--write-tree", &head, &base]).await?;
        if !ok {
            return Ok(BranchUpdate::Conflict(conflicts(&dir, &out).await));
        }
        let tree = out.lines().next().unwrap_or_default().to_owned();
        // Dated by its parents, not the clock: two replicas (or a queue head and the refresh
        // after a sibling's merge) that update the same branch at once make the same commit,
        // and the second push changes nothing.
        let dates = git(
            &dir,
            &["log", "--no-walk", "--format=%ct", &head, &base],
            None,
            "log",
        )
        .await?;
        let when = dates
            .lines()
            .filter_map(|l| l.trim().parse::<i64>().ok())
            .max()
            .unwrap_or_default();
        let when = format!("@{when} +0000");
        if linear {
            // The branch's own commits made again one by one on the default branch's head; when
            // that cannot be done, the combined tree on the head alone: the branch's change as
            // one commit, as a rebase and squash would leave it.
            let fork = git(&dir, &["merge-base", &head, &base], None, "merge-base").await?;
            let commit = match replay(&dir, &fork, &head_sha, &base, &when).await? {
                Some(commit) => commit,
                None => {
                    let message = squashed_message(&dir, &fork, &head, default_branch).await?;
                    git_as_bot_at(
                        &dir,
                        &["commit-tree", &tree, "-p", &base, "-m", &message],
                        Some(&when),
                    )
                    .await?
                }
            };
            return Ok(BranchUpdate::Made {
                commit,
                replaces: Some(head_sha.clone()),
                from: head_sha,
            });
        }
        let message = format!("Merge {default_branch} into {branch}");
        let commit = git_as_bot_at(
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
            Some(&when),
        )
        .await?;
        Ok(BranchUpdate::Made {
            commit,
            replaces: None,
            from: head_sha,
        })
    }

    /// Pushes the commit [`Pusher::update_branch`] made to the task branch: a merge commit is
    /// never forced (a branch that moved meanwhile refuses it); a rebased one (`replaces`: the
    /// head it was made from) replaces the branch only while it is still that head.
    #[allow(clippy::too_many_arguments)]
    pub async fn push_update(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        branch: &str,
        commit: &str,
        replaces: Option<&str>,
        token: &str,
    ) -> Result<()> {
        refuse_foreign_branch(branch, default_branch)?;
        let dir = self.cache(repo).await?;
        let lease = replaces.map(|old| format!("--force-with-lease=refs/heads/{branch}:{old}"));
        let refspec = format!("{commit}:refs/heads/{branch}");
        let mut args = vec!["push", "--quiet"];
        if let Some(l) = &lease {
            args.push(l);
        }
        args.extend([clone_url, refspec.as_str()]);
        git(&dir, &args, Some(&basic_auth(token)), "push")
            .await
            .map(drop)
    }

    /// Whether `head` (a commit of the task branch, fetched fresh with the default branch)
    /// contains the default branch's current head.
    pub async fn contains_default(
        &self,
        repo: &str,
        clone_url: &str,
        default_branch: &str,
        branch: &str,
        head: &str,
        token: &str,
    ) -> Result<bool> {
        let dir = self.cache(repo).await?;
        fetch_base_and_branch(&dir, clone_url, default_branch, branch, token).await?;
        let base = format!("refs/remotes/origin/{default_branch}");
        is_ancestor(&dir, &base, head).await
    }
}

/// Most commits a rebase replays one by one; a longer branch is made again as one commit.
const MAX_REPLAYED: usize = 50;
/// Longest commit message a rebase replays, bytes (a message is one argument of `git
/// commit-tree`, which the kernel caps at 128 KiB); a branch with a longer one is made again as
/// one commit.
const MAX_REPLAYED_MESSAGE: usize = 64 * 1024;

/// The task branch's own commits (those after `fork`, where it left the default branch's
/// history) made again one by one, in order, on `base`'s head — a rebase without a work tree:
/// each commit's change is merged onto the new parent with `git merge-tree --merge-base <its
/// parent>` —, each keeping its author, date and message, committed by the bot at `when` so that
/// two replicas replaying the same branch make the same commits. Returns the new head, or `None`
/// when the branch has a merge commit, more than [`MAX_REPLAYED`] commits, a message over
/// [`MAX_REPLAYED_MESSAGE`], or a commit that does not apply on its own (the change as a whole
/// does): it is then made as one commit.
async fn replay(
    dir: &Path,
    fork: &str,
    head: &str,
    base: &str,
    when: &str,
) -> Result<Option<String>> {
    let range = format!("{fork}..{head}");
    let merges = git(
        dir,
        &["rev-list", "--min-parents=2", &range],
        None,
        "rev-list",
    )
    .await?;
    if !merges.trim().is_empty() {
        return Ok(None);
    }
    let list = git(dir, &["rev-list", "--reverse", &range], None, "rev-list").await?;
    let commits: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if commits.is_empty() || commits.len() > MAX_REPLAYED {
        return Ok(None);
    }
    let mut parent = git(dir, &["rev-parse", base], None, "rev-parse").await?;
    for commit in commits {
        let (ok, out) = git_status(
            dir,
            &[
                "merge-tree",
                "--write-tree",
                "--merge-base",
                &format!("{commit}^"),
                &parent,
                commit,
            ],
        )
        .await?;
        if !ok {
            return Ok(None);
        }
        let tree = out.lines().next().unwrap_or_default().trim().to_owned();
        let meta = git(
            dir,
            &[
                "log",
                "-1",
                "--format=%an%x00%ae%x00%ad%x00%B",
                "--date=raw",
                commit,
            ],
            None,
            "log",
        )
        .await?;
        let mut fields = meta.splitn(4, '\0');
        let author = Author {
            name: fields.next().unwrap_or_default(),
            email: fields.next().unwrap_or_default(),
            date: fields.next().unwrap_or_default(),
        };
        let message = match fields.next().map(str::trim) {
            Some(m) if m.len() > MAX_REPLAYED_MESSAGE => return Ok(None),
            Some(m) if !m.is_empty() => m,
            _ => "(no message)",
        };
        parent = git_committing(
            dir,
            &["commit-tree", &tree, "-p", &parent, "-m", message],
            Some(&author),
            Some(when),
        )
        .await?;
    }
    Ok(Some(parent))
}

/// The message of a task branch made again as one commit: its own commits' messages since it
/// left the default branch at `fork` (merge commits left out), oldest first, at most 8 KiB.
async fn squashed_message(
    dir: &Path,
    fork: &str,
    head: &str,
    default_branch: &str,
) -> Result<String> {
    let log = git(
        dir,
        &[
            "log",
            "--no-merges",
            "--reverse",
            "--format=%B",
            &format!("{fork}..{head}"),
        ],
        None,
        "log",
    )
    .await?;
    let mut text: String = log.trim().chars().take(8192).collect();
    if text.is_empty() {
        text = format!("Rebase onto {default_branch}");
    }
    Ok(text)
}

/// Whether `ancestor` is an ancestor of (or is) `of`.
async fn is_ancestor(dir: &Path, ancestor: &str, of: &str) -> Result<bool> {
    let (ok, _) = git_status(dir, &["merge-base", "--is-ancestor", ancestor, of]).await?;
    Ok(ok)
}

/// Runs git in `dir` for a command whose failure is an answer (merge-tree's conflict,
/// `--is-ancestor`'s no): whether it succeeded, and its output. Exit codes past 1 are errors.
async fn git_status(dir: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = xcmd::Cmd::new("git", dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .to_tokio()
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| git_err("git", e))?;
    match out.status.code() {
        Some(0) => Ok((true, String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(1) => Ok((false, String::from_utf8_lossy(&out.stdout).into_owned())),
        _ => Err(git_err(
            "git",
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )),
    }
}

/// The conflicting files of a failed `merge-tree --write-tree` (its output: the tree with
/// conflict markers, the conflicted entries, then git's messages), each with its hunks.
async fn conflicts(dir: &Path, out: &str) -> Vec<ConflictFile> {
    let mut lines = out.lines();
    let tree = lines.next().unwrap_or_default().to_owned();
    let mut paths: Vec<String> = Vec::new();
    for l in lines.by_ref() {
        if l.is_empty() {
            break;
        }
        if let Some((_, path)) = l.split_once('\t')
            && !paths.iter().any(|p| p == path)
        {
            paths.push(path.to_owned());
        }
    }
    let messages: Vec<&str> = lines.collect();
    let mut files = Vec::new();
    for path in paths.into_iter().take(MAX_CONFLICT_FILES) {
        let text = git(dir, &["show", &format!("{tree}:{path}")], None, "show")
            .await
            .unwrap_or_default();
        let (hunks, more_hunks) = conflict_hunks(&text);
        let note = messages
            .iter()
            .filter(|m| m.contains(path.as_str()))
            .map(|m| textguard::clean_plain(m))
            .collect::<Vec<_>>()
            .join("\n");
        files.push(ConflictFile {
            path: textguard::clean_plain(&path),
            hunks,
            more_hunks,
            note: (!note.is_empty()).then(|| cut(&note, MAX_CONFLICT_SIDE)),
        });
    }
    files
}

/// The regions between git's conflict markers in `text`: ours (the task branch, first) and
/// theirs (the default branch), cleaned and cut; the first [`MAX_CONFLICT_HUNKS`] and how many
/// more there are.
pub fn conflict_hunks(text: &str) -> (Vec<ConflictHunk>, usize) {
    #[derive(PartialEq)]
    enum Side {
        Ours,
        Base,
        Theirs,
    }
    let mut hunks = Vec::new();
    let mut total = 0;
    // (line, side being read, ours, theirs)
    let mut open: Option<(usize, Side, String, String)> = None;
    for (i, l) in text.lines().enumerate() {
        let marker = |m: &str| l == m || l.starts_with(&format!("{m} "));
        match &mut open {
            None if marker("<<<<<<<") => {
                open = Some((i + 1, Side::Ours, String::new(), String::new()))
            }
            None => {}
            Some((_, side, _, _)) if marker("|||||||") && *side == Side::Ours => *side = Side::Base,
            Some((_, side, _, _)) if l == "=======" && *side != Side::Theirs => {
                *side = Side::Theirs
            }
            Some(_) if marker(">>>>>>>") => {
                if let Some((line, _, ours, theirs)) = open.take() {
                    total += 1;
                    if hunks.len() < MAX_CONFLICT_HUNKS {
                        hunks.push(ConflictHunk {
                            line,
                            ours: cut(&textguard::clean_plain(&ours), MAX_CONFLICT_SIDE),
                            theirs: cut(&textguard::clean_plain(&theirs), MAX_CONFLICT_SIDE),
                        });
                    }
                }
            }
            Some((_, side, ours, theirs)) => {
                let text = match side {
                    Side::Ours => ours,
                    Side::Theirs => theirs,
                    Side::Base => continue,
                };
                text.push_str(l);
                text.push('\n');
            }
        }
    }
    let more = total - hunks.len();
    (hunks, more)
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(super) async fn git_as_bot(dir: &Path, args: &[&str]) -> Result<String> {
    git_as_bot_at(dir, args, None).await
}

/// [`git_as_bot`] with the author and committer date set (`@<seconds> <zone>`).
async fn git_as_bot_at(dir: &Path, args: &[&str], date: Option<&str>) -> Result<String> {
    git_committing(dir, args, None, date).await
}

/// The author a replayed commit keeps: name, email and date (`--date=raw`).
struct Author<'a> {
    name: &'a str,
    email: &'a str,
    date: &'a str,
}

/// Runs a git command that makes a commit, committed by the bot (at `date` when given) and
/// authored by `author`, or by the bot too.
async fn git_committing(
    dir: &Path,
    args: &[&str],
    author: Option<&Author<'_>>,
    date: Option<&str>,
) -> Result<String> {
    let mut cmd = xcmd::Cmd::new("git", dir)
        .args(args)
        .env("GIT_COMMITTER_NAME", "backporcher")
        .env("GIT_COMMITTER_EMAIL", "backporcher@localhost");
    if let Some(d) = date {
        cmd = cmd.env("GIT_COMMITTER_DATE", d);
    }
    cmd = match author {
        Some(a) => cmd
            .env("GIT_AUTHOR_NAME", a.name)
            .env("GIT_AUTHOR_EMAIL", a.email)
            .env("GIT_AUTHOR_DATE", a.date),
        None => {
            let cmd = cmd
                .env("GIT_AUTHOR_NAME", "backporcher")
                .env("GIT_AUTHOR_EMAIL", "backporcher@localhost");
            match date {
                Some(d) => cmd.env("GIT_AUTHOR_DATE", d),
                None => cmd,
            }
        }
    };
    let out = cmd
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
        let (text, complete) = git_capped(&dir, &diff_args(&range), "diff", max).await?;
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
            let (text, complete) = git_capped(&dir, &diff_args(&range), "diff", max).await?;
            Ok::<_, ForgeError>((head, text, complete))
        }
        .await;
        let _ = git(&dir, &["update-ref", "-d", &local], None, "update-ref").await;
        let (head, text, complete) = diffed?;
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

#[cfg(test)]
mod capped_tests {
    use super::*;

    #[tokio::test]
    async fn output_past_the_cap_stops_the_command_and_comes_back_cut() {
        let dir = tempfile::tempdir().unwrap();
        // A command whose output never ends: read whole, it would never come back.
        let spew = ["-c", "alias.spew=!yes 0123456789abcdef", "spew"];
        let (text, whole) = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            git_capped(dir.path(), &spew, "spew", 1_000_000),
        )
        .await
        .expect("stopped at the cap")
        .unwrap();
        assert!(!whole);
        assert_eq!(text.len(), 1_000_000);
        // Under the cap: whole, and a failure names what git said.
        let (text, whole) = git_capped(dir.path(), &["--version"], "version", 1_000)
            .await
            .unwrap();
        assert!(whole && text.starts_with("git version"), "{text}");
        let e = git_capped(dir.path(), &["log"], "log", 1_000)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a git repository"), "{e}");
    }
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

    #[test]
    fn hunks_are_read_between_the_markers_in_both_styles() {
        let text = "a\n<<<<<<< refs/remotes/origin/backporcher/1-x\nours 1\n=======\ntheirs 1\n>>>>>>> refs/remotes/origin/main\nb\n\
<<<<<<< ours\nours 2\n||||||| base\nbase 2\n=======\ntheirs 2\ntheirs 2b\n>>>>>>> theirs\n";
        let (hunks, more) = conflict_hunks(text);
        assert_eq!(more, 0);
        assert_eq!(
            hunks,
            vec![
                ConflictHunk {
                    line: 2,
                    ours: "ours 1\n".into(),
                    theirs: "theirs 1\n".into()
                },
                ConflictHunk {
                    line: 8,
                    ours: "ours 2\n".into(),
                    theirs: "theirs 2\ntheirs 2b\n".into()
                },
            ]
        );
    }

    #[test]
    fn hunks_and_sides_are_bounded_and_cleaned() {
        let one = format!(
            "<<<<<<< a\n\u{202E}{}\n=======\nx\n>>>>>>> b\n",
            "y".repeat(MAX_CONFLICT_SIDE * 2)
        );
        let (hunks, more) = conflict_hunks(&one.repeat(MAX_CONFLICT_HUNKS + 3));
        assert_eq!((hunks.len(), more), (MAX_CONFLICT_HUNKS, 3));
        assert!(hunks[0].ours.len() <= MAX_CONFLICT_SIDE + '…'.len_utf8());
        assert!(!hunks.iter().any(|h| h.ours.contains('\u{202E}')));
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) -> String {
        let out = xcmd::Cmd::new("git", dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "agent")
            .env("GIT_AUTHOR_EMAIL", "agent@localhost")
            .env("GIT_COMMITTER_NAME", "agent")
            .env("GIT_COMMITTER_EMAIL", "agent@localhost")
            .to_std()
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn commit(dir: &Path, file: &str, text: &str, message: &str) -> String {
        std::fs::write(dir.join(file), text).unwrap();
        run(dir, &["add", "-A"]);
        run(dir, &["commit", "--quiet", "-m", message]);
        run(dir, &["rev-parse", "HEAD"])
    }

    /// A repository with `a.txt` on `main`.
    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        run(d.path(), &["init", "--quiet", "-b", "main"]);
        commit(d.path(), "a.txt", "1\n", "base");
        d
    }

    /// Each commit of the branch is made again on the new base with its message and author,
    /// and the same replay twice makes the same commits (two replicas agree).
    #[tokio::test]
    async fn a_branch_is_replayed_commit_by_commit_the_same_way_twice() {
        let d = repo();
        let dir = d.path();
        run(dir, &["checkout", "--quiet", "-b", "task"]);
        commit(dir, "a.txt", "1\nx\n", "first");
        let head = commit(dir, "a.txt", "1\nx\ny\n", "second");
        run(dir, &["checkout", "--quiet", "main"]);
        let main = commit(dir, "b.txt", "b\n", "main moved");
        let when = "@1700000000 +0000";
        let fork = run(dir, &["merge-base", &head, "main"]);
        let new = replay(dir, &fork, &head, "main", when)
            .await
            .unwrap()
            .expect("replayed");
        assert_eq!(run(dir, &["rev-parse", &format!("{new}~2")]), main);
        assert_eq!(
            run(dir, &["log", "--format=%s|%an", "-n", "2", &new]),
            "second|agent\nfirst|agent"
        );
        assert_eq!(run(dir, &["show", &format!("{new}:a.txt")]), "1\nx\ny");
        assert_eq!(run(dir, &["show", &format!("{new}:b.txt")]), "b");
        let again = replay(dir, &fork, &head, "main", when).await.unwrap();
        assert_eq!(again.as_deref(), Some(new.as_str()));
    }

    /// [`replay`] of `head` onto `main`, from where they forked.
    async fn replayed(dir: &Path, head: &str) -> Option<String> {
        let fork = run(dir, &["merge-base", head, "main"]);
        replay(dir, &fork, head, "main", "@1 +0000").await.unwrap()
    }

    /// A commit that does not apply on its own (the branch as a whole does), a merge commit in
    /// the branch, a message too long for one argument of `git commit-tree`, or more commits
    /// than [`MAX_REPLAYED`]: no replay — the caller makes the change as one commit.
    #[tokio::test]
    async fn a_step_that_does_not_apply_alone_a_merge_a_huge_message_or_too_many_commits_mean_one_commit()
     {
        let d = repo();
        let dir = d.path();
        run(dir, &["checkout", "--quiet", "-b", "task"]);
        commit(dir, "a.txt", "conflict\n", "changes the line");
        let head = commit(dir, "a.txt", "1\n", "changes it back");
        run(dir, &["checkout", "--quiet", "main"]);
        commit(dir, "a.txt", "2\n", "main changes the line too");
        assert_eq!(replayed(dir, &head).await, None);

        run(dir, &["checkout", "--quiet", "-b", "merged", "main~1"]);
        commit(dir, "c.txt", "c\n", "own change");
        run(dir, &["merge", "--quiet", "--no-edit", "main"]);
        let head = run(dir, &["rev-parse", "HEAD"]);
        run(dir, &["checkout", "--quiet", "main"]);
        commit(dir, "d.txt", "d\n", "main again");
        assert_eq!(replayed(dir, &head).await, None);

        run(dir, &["checkout", "--quiet", "-b", "wordy", "main~1"]);
        let long = "x".repeat(MAX_REPLAYED_MESSAGE + 1);
        let wordy = commit(dir, "e.txt", "e\n", &long);
        run(dir, &["checkout", "--quiet", "main"]);
        commit(dir, "f.txt", "f\n", "main once more");
        assert_eq!(replayed(dir, &wordy).await, None);
        // More commits than a replay takes.
        run(dir, &["checkout", "--quiet", "-b", "long", "main~1"]);
        let mut head = String::new();
        for i in 0..=MAX_REPLAYED {
            head = commit(dir, "g.txt", &format!("{i}\n"), &format!("step {i}"));
        }
        run(dir, &["checkout", "--quiet", "main"]);
        assert_eq!(replayed(dir, &head).await, None);
        // The same branch with a message within the bound is replayed.
        run(
            dir,
            &["checkout", "--quiet", "-b", "short", &format!("{wordy}^")],
        );
        let head = commit(dir, "e.txt", "e\n", "within the bound");
        run(dir, &["checkout", "--quiet", "main"]);
        assert!(replayed(dir, &head).await.is_some());
    }
}

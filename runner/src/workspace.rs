//! Repositories on the runner host: one bare mirror per repository (fetched on every lease, one
//! fetch at a time per repository), and for each task attempt a private checkout made from the
//! mirror on the task branch the controller named (`backporcher/<task>-<slug>`).
//!
//! The mirror is the runner's alone. Nothing of it is ever writable by the sandbox user:
//! - the checkout is a `--shared` clone, so it owns no object file of the mirror (no hard link, no
//!   shared inode); it reaches the mirror's objects through `objects/info/alternates`, which inside
//!   a container names [`MIRROR_OBJECTS`], a read-only bind mount of the runner-owned object store;
//! - after every fetch the runner records a fingerprint of every file of the mirror (size, mode,
//!   modification and change times, inode): a mirror found different at the next lease was altered
//!   by something other than this runner's git and is rebuilt from the forge, never trusted.
//!
//! Each attempt also gets a second, *trusted* git directory: a copy of the fresh checkout's `.git`
//! taken before the agent runs, with a configuration written by the runner. Only the finish step
//! mounts it; it commits the work tree with it, so nothing the agent left in its own `.git`
//! (config with filter or textconv drivers, hooks, `info/`, rewritten objects or refs) is read by
//! any later git command. After the checkout the runner never runs git in the task directory
//! again.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Mutex;

use crate::task::TaskSpec;

/// Where the mirror's object store is mounted (read-only) inside every container of a task.
pub const MIRROR_OBJECTS: &str = "/mirror/objects";

/// Pack files in a mirror above which it is repacked after a fetch.
const MAX_PACKS: usize = 32;
/// Loose objects in a mirror above which it is repacked after a fetch.
const MAX_LOOSE: usize = 4096;

/// The mirrors of this runner.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: PathBuf,
    /// One fetch (or removal) at a time per mirror, keyed by the mirror's name.
    locks: Arc<std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Attempts using each mirror (its objects are their checkouts' alternates): never pruned
    /// while above zero.
    users: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// An attempt's use of a mirror: while one lives, [`Workspaces::prune`] leaves the mirror (and
/// its graph index) alone.
#[derive(Debug)]
pub struct InUse {
    key: String,
    users: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut u = self.users.lock().expect("mirror users");
        if let Some(n) = u.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(&self.key);
            }
        }
    }
}

/// What [`Workspaces::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Mirror names (`owner__name`) removed with their indexes.
    pub repos: Vec<String>,
    /// Bytes freed.
    pub bytes: u64,
}

/// Entries walked per tree when measuring mirrors (bare mirrors are repacked: few files).
const MAX_MEASURED_ENTRIES: usize = 200_000;

/// A checkout ready for the agent.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The working tree (owned by the sandbox user; its `.git` is the agent's to use).
    pub dir: PathBuf,
    /// The trusted git directory for the finish step (never mounted while the agent runs).
    pub git_dir: PathBuf,
    /// The mirror's object store (to mount read-only at [`MIRROR_OBJECTS`]).
    pub mirror_objects: PathBuf,
    /// The mirror itself (runner-owned; read by the runner only).
    pub mirror: PathBuf,
    /// Keeps the mirror from being pruned while the attempt runs.
    pub in_use: Arc<InUse>,
    /// Task branch.
    pub branch: String,
    /// Commit the branch started from (the default branch's head, or the resumed branch's).
    pub base: String,
    /// The default branch's head as fetched (what trusted repository settings are read from).
    pub default_head: String,
}

/// Whether `branch` is a task branch this runner will check out: under `backporcher/`, made of
/// plain characters (as the controller names them), no `..`, no leading `-` anywhere.
pub fn valid_task_branch(branch: &str) -> bool {
    let Some(rest) = branch.strip_prefix("backporcher/") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 200
        && !rest.starts_with('-')
        && !rest.contains("..")
        && !rest.ends_with('/')
        && !rest.ends_with(".lock")
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// Runs git on the runner's own repositories (the mirror, or a checkout before the agent has
/// touched it), with no system or global configuration and hooks disabled.
pub async fn git(cwd: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = xcmd::Cmd::new("git", cwd)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "protocol.file.allow=always",
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .to_tokio()
        .output()
        .await
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Workspaces {
    /// Mirrors live under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            locks: Arc::default(),
            users: Arc::default(),
        }
    }

    /// The name of `repo`'s mirror (and of its graph index): `owner__name`.
    pub fn key(repo: &str) -> String {
        repo.replace('/', "__")
    }

    fn mirror_path(&self, repo: &str) -> PathBuf {
        self.root.join(format!("{}.git", Self::key(repo)))
    }

    fn lock_of(&self, key: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .expect("workspace locks")
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Marks `repo`'s mirror in use until the returned guard is dropped.
    pub fn use_repo(&self, repo: &str) -> InUse {
        let key = Self::key(repo);
        *self
            .users
            .lock()
            .expect("mirror users")
            .entry(key.clone())
            .or_default() += 1;
        InUse {
            key,
            users: self.users.clone(),
        }
    }

    fn in_use(&self, key: &str) -> bool {
        self.users
            .lock()
            .expect("mirror users")
            .get(key)
            .is_some_and(|n| *n > 0)
    }

    /// Removes the mirrors (with their code-graph indexes under `indexes`) unused for longer
    /// than `max_age`, then the least recently used while mirrors and indexes together take more
    /// than `budget` bytes — never one an attempt uses. A mirror's last use is its last fetch.
    /// Each removal holds the mirror's lock, so it never meets a fetch; a later task simply
    /// clones again.
    pub async fn prune(&self, indexes: &Path, max_age: std::time::Duration, budget: u64) -> Pruned {
        let (root, index_dir) = (self.root.clone(), indexes.to_owned());
        let measured = tokio::task::spawn_blocking(move || measure(&root, &index_dir))
            .await
            .unwrap_or_default();
        let keep: std::collections::HashSet<String> = measured
            .iter()
            .filter(|i| self.in_use(&i.key))
            .map(|i| i.key.clone())
            .collect();
        let mut pruned = Pruned::default();
        for key in crate::prune::pick(
            &measured,
            std::time::SystemTime::now(),
            max_age,
            budget,
            &keep,
        ) {
            let lock = self.lock_of(&key);
            let _held = lock.lock().await;
            if self.in_use(&key) {
                continue;
            }
            let mirror = self.root.join(format!("{key}.git"));
            let mut ok = true;
            for p in [mirror.clone(), mirror.with_extension("partial")] {
                if let Err(e) = tokio::fs::remove_dir_all(&p).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(mirror = %p.display(), error = %e, "cannot prune a mirror");
                    ok = false;
                }
            }
            for p in [
                Self::fingerprint_path(&mirror),
                indexes.join(format!("{key}.idx")),
            ] {
                if let Err(e) = tokio::fs::remove_file(&p).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %p.display(), error = %e, "cannot prune a file");
                    ok = false;
                }
            }
            if ok {
                pruned.bytes += measured
                    .iter()
                    .find(|i| i.key == key)
                    .map(|i| i.bytes)
                    .unwrap_or_default();
                pruned.repos.push(key);
            }
        }
        pruned
    }

    fn fingerprint_path(mirror: &Path) -> PathBuf {
        mirror.with_extension("fingerprint")
    }

    /// Creates or updates the mirror of `spec`'s repository; returns its path. A mirror whose
    /// files differ from what this runner left after its last fetch is rebuilt.
    pub async fn mirror(&self, spec: &TaskSpec) -> anyhow::Result<PathBuf> {
        let lock = self.lock_of(&Self::key(&spec.repo));
        let _held = lock.lock().await;
        let path = self.mirror_path(&spec.repo);
        let print = Self::fingerprint_path(&path);
        if path.join("HEAD").exists() {
            let recorded = tokio::fs::read_to_string(&print).await.unwrap_or_default();
            let now = fingerprint(&path).await?;
            if recorded != now {
                tracing::warn!(repo = %spec.repo, mirror = %path.display(), "the mirror differs from what this runner left (or has no fingerprint): rebuilding it from the forge");
                tokio::fs::remove_dir_all(&path).await.with_context(|| {
                    format!("cannot remove the altered mirror {}", path.display())
                })?;
            }
        }
        if path.join("HEAD").exists() {
            git(&path, &["fetch", "--prune", "--quiet", "origin"])
                .await
                .with_context(|| format!("fetching {}", spec.repo))?;
        } else {
            tokio::fs::create_dir_all(&self.root).await?;
            let tmp = path.with_extension("partial");
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            git(
                &self.root,
                &[
                    "clone",
                    "--mirror",
                    "--quiet",
                    &spec.clone_url,
                    &tmp.to_string_lossy(),
                ],
            )
            .await
            .with_context(|| format!("cloning {}", spec.repo))?;
            for (k, v) in [("gc.auto", "0"), ("maintenance.auto", "false")] {
                git(&tmp, &["config", k, v]).await?;
            }
            tokio::fs::rename(&tmp, &path).await?;
        }
        let mut now = fingerprint(&path).await?;
        if needs_repack(&now) {
            git(&path, &["repack", "-a", "-d", "-q", "--keep-unreachable"])
                .await
                .with_context(|| format!("repacking the mirror of {}", spec.repo))?;
            now = fingerprint(&path).await?;
        }
        tokio::fs::write(&print, now).await?;
        Ok(path)
    }

    /// Makes the task's checkout in `dir` (and its trusted git directory beside it): the task
    /// branch from the default branch, or from the existing task branch when the task resumes
    /// it. The tree is handed to the sandbox user.
    pub async fn checkout(
        &self,
        spec: &TaskSpec,
        task_id: i64,
        dir: &Path,
    ) -> anyhow::Result<Checkout> {
        let _ = task_id;
        let branch = spec
            .branch
            .clone()
            .context("the controller named no task branch for this task; upgrade the controller")?;
        anyhow::ensure!(
            valid_task_branch(&branch),
            "the task branch `{}` is not a backporcher/ branch; refusing to check it out",
            textguard::clean_plain(&branch)
        );
        // In use before the fetch: a prune waiting for the mirror's lock sees it and leaves it.
        let in_use = Arc::new(self.use_repo(&spec.repo));
        let mirror = self.mirror(spec).await?;
        let default_ref = format!("refs/heads/{}", spec.default_branch);
        let default_head = git(&mirror, &["rev-parse", "--verify", "--quiet", &default_ref])
            .await
            .with_context(|| {
                format!(
                    "the default branch `{}` does not exist in {}",
                    spec.default_branch, spec.repo
                )
            })?;
        let parent = dir.parent().context("checkout dir has no parent")?;
        let git_dir = parent.join("git");
        for d in [dir, git_dir.as_path()] {
            if d.exists() {
                tokio::fs::remove_dir_all(d).await?;
            }
        }
        tokio::fs::create_dir_all(parent).await?;
        // Clone straight onto the starting branch: a checkout during the clone is far cheaper
        // than a checkout into an empty index afterwards (measured: 1.1 s vs 14 s, 20,000 files).
        let resumable = spec.resume_branch
            && git(
                &mirror,
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("refs/heads/{branch}"),
                ],
            )
            .await
            .is_ok();
        let start = if resumable {
            branch.as_str()
        } else {
            spec.default_branch.as_str()
        };
        let (m, d) = (mirror.to_string_lossy(), dir.to_string_lossy());
        git(
            parent,
            &["clone", "--quiet", "--shared", "--branch", start, &m, &d],
        )
        .await
        .with_context(|| format!("checking out {start}"))?;
        git(dir, &["checkout", "--quiet", "-B", &branch]).await?;
        let base = git(dir, &["rev-parse", "HEAD"]).await?;
        let format = git(dir, &["rev-parse", "--show-object-format"]).await?;
        // From here on the repository is only used inside containers, where the mirror's
        // objects are a read-only mount.
        tokio::fs::write(
            dir.join(".git/objects/info/alternates"),
            format!("{MIRROR_OBJECTS}\n"),
        )
        .await?;
        copy_dir(&dir.join(".git"), &git_dir).await?;
        tokio::fs::write(git_dir.join("config"), trusted_config(&format)).await?;
        // Past this point only the sandbox touches the checkout: hand it to the sandbox user.
        for d in [dir, git_dir.as_path()] {
            hand_to_sandbox(d).await?;
        }
        Ok(Checkout {
            dir: dir.to_owned(),
            git_dir,
            mirror_objects: mirror.join("objects"),
            mirror,
            in_use,
            branch,
            base,
            default_head,
        })
    }
}

/// Each mirror under `root` and each index under `indexes`, by name: last used (the later of the
/// mirror's last fetch and the index's last write) and bytes (both together).
fn measure(root: &Path, indexes: &Path) -> Vec<crate::prune::Item> {
    let mut items: HashMap<String, crate::prune::Item> = HashMap::new();
    let mut add = |key: String, last: Option<u64>, bytes: u64| {
        let i = items.entry(key.clone()).or_insert(crate::prune::Item {
            key,
            last_used: 0,
            bytes: 0,
        });
        i.last_used = i.last_used.max(last.unwrap_or_default());
        i.bytes += bytes;
    };
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        if let Some(key) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".git"))
        {
            let last = crate::prune::modified(&Workspaces::fingerprint_path(&p))
                .or_else(|| crate::prune::modified(&p));
            add(
                key.to_owned(),
                last,
                crate::prune::dir_bytes(&p, MAX_MEASURED_ENTRIES),
            );
        }
    }
    for e in std::fs::read_dir(indexes).into_iter().flatten().flatten() {
        let p = e.path();
        if let Some(key) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".idx"))
        {
            let bytes = std::fs::symlink_metadata(&p)
                .map(|m| m.len())
                .unwrap_or_default();
            add(key.to_owned(), crate::prune::modified(&p), bytes);
        }
    }
    items.into_values().collect()
}

/// A working tree of `commit` of `mirror` at `dir` for the sandbox user (an environment's setup):
/// a `--shared` clone whose objects, like a checkout's, are read from the mirror mounted read-only
/// at [`MIRROR_OBJECTS`].
pub async fn sandbox_tree(mirror: &Path, commit: &str, dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let _ = tokio::fs::remove_dir_all(dir).await;
    git(
        parent,
        &[
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            &mirror.to_string_lossy(),
            &dir.to_string_lossy(),
        ],
    )
    .await?;
    git(dir, &["checkout", "--quiet", "--detach", commit]).await?;
    tokio::fs::write(
        dir.join(".git/objects/info/alternates"),
        format!("{MIRROR_OBJECTS}\n"),
    )
    .await?;
    hand_to_sandbox(dir).await
}

/// Hands `dir` and everything in it to the sandbox user (uid 1000).
pub async fn hand_to_sandbox(dir: &Path) -> anyhow::Result<()> {
    run(
        xcmd::Cmd::new("chown", dir.parent().unwrap_or(Path::new("/")))
            .args(["-R", "1000:1000"])
            .arg(dir),
        &format!("hand {} to the sandbox user", dir.display()),
    )
    .await
}

/// Hands `dir` (and what is in it) to the sandbox user, readable by it alone.
pub async fn give_file_to_sandbox(dir: &Path) -> anyhow::Result<()> {
    run(
        xcmd::Cmd::new("chmod", dir.parent().unwrap_or(Path::new("/")))
            .args(["-R", "u=rX,go="])
            .arg(dir),
        &format!("make {} private", dir.display()),
    )
    .await?;
    hand_to_sandbox(dir).await
}

/// The configuration of the trusted git directory: nothing that runs a program, no attribute or
/// exclude file outside the tree, and stat checks that survive the hand-over to the sandbox user
/// (`chown` changes the change time of every file, not its size or modification time).
fn trusted_config(object_format: &str) -> String {
    let (version, ext) = if object_format == "sha1" {
        (0, String::new())
    } else {
        (
            1,
            format!("[extensions]\n\tobjectFormat = {object_format}\n"),
        )
    };
    format!(
        "[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\
         \thooksPath = /dev/null\n\tfsmonitor = false\n\tattributesFile = /dev/null\n\
         \texcludesFile = /dev/null\n\tcheckStat = minimal\n\ttrustctime = false\n\
         \tuntrackedCache = false\n\tsplitIndex = false\n\tsymlinks = true\n\
         [commit]\n\tgpgSign = false\n[tag]\n\tgpgSign = false\n\
         [user]\n\tname = Backporcher\n\temail = backporcher@localhost\n\
         [gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n[diff]\n\texternal =\n{ext}"
    )
}

async fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    run(
        xcmd::Cmd::new("cp", "/")
            .args(["-a", "--no-dereference"])
            .arg(from)
            .arg(to),
        &format!("copy {} to {}", from.display(), to.display()),
    )
    .await
}

/// Runs a command to its end; its error output says why it failed.
async fn run(cmd: xcmd::Cmd, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .to_tokio()
        .output()
        .await
        .with_context(|| format!("cannot {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "cannot {what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether a mirror's fingerprint shows enough packs or loose objects to repack it.
fn needs_repack(fingerprint: &str) -> bool {
    let (mut packs, mut loose) = (0, 0);
    for line in fingerprint.lines() {
        let Some(path) = line.split(' ').nth(1) else {
            continue;
        };
        if path.starts_with("objects/pack/") && path.ends_with(".pack") {
            packs += 1;
        } else if path.len() == "objects/xx/".len() + 38 && path.as_bytes()[10] == b'/' {
            loose += 1;
        }
    }
    packs > MAX_PACKS || loose > MAX_LOOSE
}

/// A fingerprint of every entry under `dir` (path, kind, size, mode, modification and change
/// times, inode), one line each in path order. Any write, `chmod`, `chown`, rename or replacement
/// of a file changes its change time, which no unprivileged process can set back.
pub async fn fingerprint(dir: &Path) -> anyhow::Result<String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(dir.join(&rel))? {
                let entry = entry?;
                let path = rel.join(entry.file_name());
                let meta = std::fs::symlink_metadata(entry.path())?;
                let kind = if meta.is_dir() {
                    stack.push(path.clone());
                    'd'
                } else if meta.is_file() {
                    'f'
                } else {
                    'x'
                };
                if path == Path::new("FETCH_HEAD") {
                    continue;
                }
                lines.push(format!(
                    "{kind} {} {} {:o} {}.{} {}.{} {}",
                    path.display(),
                    if kind == 'd' { 0 } else { meta.len() },
                    meta.mode(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                    meta.ino()
                ));
            }
        }
        lines.sort();
        Ok::<_, std::io::Error>(lines.join("\n"))
    })
    .await?
    .with_context(|| "cannot read the mirror to fingerprint it")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn origin(dir: &Path, name: &str) -> TaskSpec {
        let src = dir.join(format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("README.md"), format!("# {name}\n")).unwrap();
        git(&src, &["init", "--quiet", "-b", "main"]).await.unwrap();
        git(&src, &["add", "-A"]).await.unwrap();
        git(
            &src,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@x",
                "commit",
                "--quiet",
                "-m",
                "one",
            ],
        )
        .await
        .unwrap();
        TaskSpec {
            repo: format!("acme/{name}"),
            clone_url: src.to_string_lossy().into_owned(),
            default_branch: "main".into(),
            ..TaskSpec::default()
        }
    }

    fn age(path: &Path, days: u64) {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[tokio::test]
    async fn mirrors_and_indexes_go_by_age_then_budget_never_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspaces::new(dir.path().join("mirrors"));
        let indexes = dir.path().join("graphs");
        std::fs::create_dir_all(&indexes).unwrap();
        let month = std::time::Duration::from_secs(30 * 86_400);
        let (old, fresh, busy) = (
            origin(dir.path(), "old").await,
            origin(dir.path(), "fresh").await,
            origin(dir.path(), "busy").await,
        );
        for spec in [&old, &fresh, &busy] {
            ws.mirror(spec).await.unwrap();
            std::fs::write(
                indexes.join(format!("{}.idx", Workspaces::key(&spec.repo))),
                vec![0u8; 4096],
            )
            .unwrap();
        }
        let mirror = |spec: &TaskSpec| ws.mirror_path(&spec.repo);
        let index = |spec: &TaskSpec| indexes.join(format!("{}.idx", Workspaces::key(&spec.repo)));
        for spec in [&old, &busy] {
            age(&Workspaces::fingerprint_path(&mirror(spec)), 40);
            age(&index(spec), 40);
        }
        let in_use = ws.use_repo(&busy.repo);
        // By age: the old one goes, the busy one (as old) stays.
        let p = ws.prune(&indexes, month, u64::MAX).await;
        assert_eq!(p.repos, vec!["acme__old".to_owned()]);
        assert!(p.bytes > 4096, "{p:?}");
        assert!(!mirror(&old).exists() && !index(&old).exists());
        assert!(mirror(&busy).exists() && mirror(&fresh).exists());
        // Over the budget: the least recently used that is not in use.
        let p = ws.prune(&indexes, month, 0).await;
        assert_eq!(p.repos, vec!["acme__fresh".to_owned()]);
        assert!(!index(&fresh).exists());
        assert!(mirror(&busy).exists() && index(&busy).exists());
        // Once the attempt is over it may go too; a later task clones it again.
        drop(in_use);
        let p = ws.prune(&indexes, month, 0).await;
        assert_eq!(p.repos, vec!["acme__busy".to_owned()]);
        assert!(!mirror(&busy).exists());
        let m = ws.mirror(&busy).await.unwrap();
        assert!(m.join("HEAD").exists());
        assert_eq!(ws.prune(&indexes, month, u64::MAX).await, Pruned::default());
    }

    #[test]
    fn only_task_branches_are_checked_out() {
        for b in ["backporcher/42-add-get-health-endpoint", "backporcher/7"] {
            assert!(valid_task_branch(b), "{b}");
        }
        for b in [
            "main",
            "backporcher/",
            "backporcher/-x",
            "backporcher/a..b",
            "backporcher/a b",
            "backporcher/x.lock",
            "refs/heads/main",
            "backporcher/a;rm",
        ] {
            assert!(!valid_task_branch(b), "{b}");
        }
    }
}

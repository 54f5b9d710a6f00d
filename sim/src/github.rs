//! A GitHub simulator: the REST endpoints the controller uses, with GitHub's JSON shapes, headers
//! and status codes, real git repositories served over smart HTTP by `git http-backend`, and
//! signed webhook deliveries.
//!
//! REST (token in `Authorization: token …` or `Bearer …`): the repository, issues (list with
//! `labels`/`state` filters and `ETag`/`If-None-Match` → 304; get; update state), issue labels
//! (add, remove), issue comments (list, create), pull requests (create — 422 when one is open for
//! the head —, list with `head`/`state`, get with `mergeable`, update, merge with a real
//! squash/merge commit in the repository or 405/409), reviews and review comments, combined status
//! and check runs of a commit, Actions job logs, deleting a branch ref. Every answer carries
//! rate-limit headers; primary and secondary rate-limit answers can be queued. Issues, issue
//! events, check runs and commit statuses are paginated as on GitHub: `per_page` (30 by default,
//! at most 100) and `page`, with a `Link` header naming the other pages.
//!
//! Git: `GET/POST /{owner}/{repo}.git/…` run `git http-backend` with HTTP basic auth (any user,
//! the token as password), so clone, fetch and push are real.
//!
//! Web pages (`pages`): the `html_url`s it hands out open as plain server-rendered HTML — the
//! repository (its files at the default branch), an issue, a pull request with its diff, checks
//! and reviews. `POST /repos/{owner}/{repo}/issues` files an issue as the token's user (a
//! person's token added with [`GitHubSim::add_user_token`]) and fires the webhook. Webhook
//! deliveries carry a random UUID in `X-GitHub-Delivery`, as GitHub's do. [`GitHubSim::save`] and
//! [`GitHubSim::load`] keep issues and pull requests across restarts.
//!
//! Tests drive it through methods: create repositories and issues, set a commit's CI result (with
//! a failed job's log, or any number of check runs and statuses, or a rule that decides it per
//! commit), submit a review with line comments, queue rate limits, and register the webhook
//! target.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod pages;
mod shapes;

/// An issue or a pull request (they share numbers, as on GitHub).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    number: u64,
    title: String,
    body: String,
    author: String,
    state: String,
    labels: Vec<String>,
    comments: Vec<(u64, String, String)>,
    pull: Option<Pull>,
    updated: u64,
    /// Timeline events (`labeled`), oldest first: (event, label, actor).
    events: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pull {
    head: String,
    base: String,
    merged: bool,
    merge_sha: Option<String>,
    /// The head commit when it merged (its branch may be deleted since).
    #[serde(default)]
    last_head: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Repo {
    default_branch: String,
    items: BTreeMap<u64, Item>,
    /// sha → (context, state)
    statuses: HashMap<String, Vec<(String, String)>>,
    /// sha → (name, status, conclusion)
    checks: HashMap<String, Vec<(String, String, Option<String>)>>,
    /// sha → log text of the failed job
    job_logs: HashMap<String, String>,
    /// pull number → reviews
    reviews: HashMap<u64, Vec<Review>>,
    version: u64,
}

/// A submitted pull request review.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    id: u64,
    user: String,
    state: String,
    body: String,
    comments: Vec<String>,
}

/// A rate-limit answer to give instead of serving a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// The hourly quota is spent: 403 with `x-ratelimit-remaining: 0` and a reset time.
    Primary,
    /// Abuse detection: 403 with `retry-after`.
    Secondary,
}

#[derive(Default)]
struct SimState {
    repos: HashMap<String, Repo>,
    next_id: u64,
    webhook: Option<(String, String)>,
    deliveries: Vec<Value>,
    /// The last delivery sent: (delivery id, event, body), to redeliver it as GitHub can.
    last_delivery: Option<(String, String, String)>,
    limits: std::collections::VecDeque<RateLimit>,
    /// (method, path) of every REST request, in order.
    requests: Vec<(String, String)>,
    /// GitHub App: (app id, installation id, RSA public key DER).
    app: Option<(u64, u64, Vec<u8>)>,
    /// Repositories anyone may clone and fetch without a token.
    public: std::collections::HashSet<String>,
    /// CI outcome of commits nobody set one for (`None`: no checks at all).
    default_ci: Option<String>,
    /// Errors to answer instead: (method, path suffix, status, message, times left).
    faults: Vec<(String, String, u16, String, usize)>,
    /// Tokens of people (token → login): REST calls with one act as that user.
    user_tokens: HashMap<String, String>,
    /// Decides the CI of commits nobody set one for, before the default CI applies.
    ci_rule: Option<CiRule>,
}

/// A CI rule: given a repository's bare git directory and a commit, the failed job's log when
/// that commit's CI fails (`None`: the default CI applies).
pub type CiRule = Arc<dyn Fn(&Path, &str) -> Option<String> + Send + Sync>;

/// The simulator; cheap to clone.
#[derive(Clone)]
pub struct GitHubSim {
    state: Arc<Mutex<SimState>>,
    root: PathBuf,
    token: Arc<String>,
    base_url: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl GitHubSim {
    /// A simulator keeping its repositories under `root`, accepting `token`.
    pub fn new(root: &Path, token: &str) -> Self {
        Self {
            state: Arc::default(),
            root: root.to_owned(),
            token: Arc::new(token.to_owned()),
            base_url: Arc::new(Mutex::new(String::new())),
            http: reqwest::Client::new(),
        }
    }

    /// Serves on `listener`.
    pub fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        if let Ok(addr) = listener.local_addr() {
            *self.base_url.lock().expect("sim lock") = format!("http://{addr}");
        }
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    /// Path of a repository's bare git directory.
    pub fn git_dir(&self, full_name: &str) -> PathBuf {
        self.root.join(format!("{full_name}.git"))
    }

    /// Creates a repository with `files` committed on its default branch.
    pub fn create_repo(
        &self,
        full_name: &str,
        default_branch: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let dir = self.git_dir(full_name);
        std::fs::create_dir_all(dir.parent().unwrap_or(&self.root))?;
        git(
            &self.root,
            &[
                "init",
                "--quiet",
                "--bare",
                "-b",
                default_branch,
                &dir.to_string_lossy(),
            ],
        )?;
        git(&dir, &["config", "http.receivepack", "true"])?;
        let seed = tempdir(&self.root, "seed")?;
        git(&seed, &["init", "--quiet", "-b", default_branch])?;
        commit_files(&seed, files, "initial commit")?;
        git(
            &seed,
            &[
                "push",
                "--quiet",
                &dir.to_string_lossy(),
                &format!("HEAD:refs/heads/{default_branch}"),
            ],
        )?;
        let _ = std::fs::remove_dir_all(seed);
        self.state.lock().expect("sim lock").repos.insert(
            full_name.to_owned(),
            Repo {
                default_branch: default_branch.to_owned(),
                ..Repo::default()
            },
        );
        Ok(())
    }

    /// Opens an issue; returns its number.
    pub fn create_issue(
        &self,
        full_name: &str,
        title: &str,
        body: &str,
        author: &str,
        labels: &[&str],
    ) -> u64 {
        let mut st = self.state.lock().expect("sim lock");
        let repo = st.repos.get_mut(full_name).expect("repository exists");
        let number = repo.items.keys().next_back().copied().unwrap_or(0) + 1;
        repo.version += 1;
        let version = repo.version;
        repo.items.insert(
            number,
            Item {
                number,
                title: title.into(),
                body: body.into(),
                author: author.into(),
                state: "open".into(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
                comments: Vec::new(),
                pull: None,
                updated: version,
                events: labels
                    .iter()
                    .map(|l| ("labeled".to_string(), l.to_string(), author.to_string()))
                    .collect(),
            },
        );
        number
    }

    /// `by` adds `label` to an issue (and the `issues` `labeled` webhook fires, sent by `by`).
    pub async fn label_issue(&self, full_name: &str, number: u64, label: &str, by: &str) {
        let item = {
            let mut st = self.state.lock().expect("sim lock");
            let repo = st.repos.get_mut(full_name).expect("repository exists");
            repo.version += 1;
            let version = repo.version;
            let item = repo.items.get_mut(&number).expect("issue exists");
            if !item.labels.iter().any(|l| l == label) {
                item.labels.push(label.into());
            }
            item.events
                .push(("labeled".into(), label.into(), by.into()));
            item.updated = version;
            item.clone()
        };
        let issue = self.item_json(full_name, &item);
        self.deliver(
            "issues",
            json!({"action": "labeled", "issue": issue, "label": shapes::label(&self.url(), full_name, label),
                   "sender": shapes::user(&self.url(), by), "repository": self.repo_json(full_name)}),
        )
        .await;
    }

    /// `by` reopens an issue (closed or not: the `issues` `reopened` webhook fires, sent by `by`).
    pub async fn reopen_issue(&self, full_name: &str, number: u64, by: &str) {
        let item = {
            let mut st = self.state.lock().expect("sim lock");
            let repo = st.repos.get_mut(full_name).expect("repository exists");
            repo.version += 1;
            let version = repo.version;
            let item = repo.items.get_mut(&number).expect("issue exists");
            item.state = "open".into();
            item.events
                .push(("reopened".into(), String::new(), by.into()));
            item.updated = version;
            item.clone()
        };
        let issue = self.item_json(full_name, &item);
        self.deliver(
            "issues",
            json!({"action": "reopened", "issue": issue,
                   "sender": shapes::user(&self.url(), by), "repository": self.repo_json(full_name)}),
        )
        .await;
    }

    /// `by` edits an issue's body (and the `issues` `edited` webhook fires, sent by `by`).
    pub async fn edit_issue(&self, full_name: &str, number: u64, body: &str, by: &str) {
        let (item, old) = {
            let mut st = self.state.lock().expect("sim lock");
            let repo = st.repos.get_mut(full_name).expect("repository exists");
            repo.version += 1;
            let version = repo.version;
            let item = repo.items.get_mut(&number).expect("issue exists");
            let old = std::mem::replace(&mut item.body, body.into());
            item.updated = version;
            (item.clone(), old)
        };
        let issue = self.item_json(full_name, &item);
        self.deliver(
            "issues",
            json!({"action": "edited", "issue": issue, "changes": {"body": {"from": old}},
                   "sender": shapes::user(&self.url(), by), "repository": self.repo_json(full_name)}),
        )
        .await;
    }

    /// Sends the last delivery again with the same delivery id (GitHub's "Redeliver"); returns
    /// the HTTP status the target answered.
    pub async fn redeliver_last(&self) -> Option<u16> {
        let (last, target) = {
            let st = self.state.lock().expect("sim lock");
            (st.last_delivery.clone(), st.webhook.clone())
        };
        let ((delivery, event, body), (url, secret)) = (last?, target?);
        self.post_delivery(&url, &secret, &delivery, &event, body)
            .await
    }

    /// Sets the CI result of a commit: a status context and a check run with that outcome
    /// (`success`, `failure`, `pending`).
    pub fn set_ci(&self, full_name: &str, sha: &str, outcome: &str) {
        let mut st = self.state.lock().expect("sim lock");
        let repo = st.repos.get_mut(full_name).expect("repository exists");
        let (statuses, checks) = ci_entries(outcome);
        repo.statuses.insert(sha.into(), statuses);
        repo.checks.insert(sha.into(), checks);
    }

    /// Sets the check runs of a commit: (name, outcome) each, the outcome as in
    /// [`GitHubSim::set_ci`]. Its statuses stay as they are.
    pub fn set_check_runs(&self, full_name: &str, sha: &str, runs: &[(&str, &str)]) {
        let mut st = self.state.lock().expect("sim lock");
        let repo = st.repos.get_mut(full_name).expect("repository exists");
        let runs = runs
            .iter()
            .map(|(name, outcome)| {
                let (status, conclusion) = run_state(outcome);
                ((*name).to_owned(), status.to_owned(), conclusion)
            })
            .collect();
        repo.checks.insert(sha.into(), runs);
    }

    /// Sets the commit statuses of a commit: (context, state) each — `success`, `failure`,
    /// `error`, `pending`. Its check runs stay as they are.
    pub fn set_statuses(&self, full_name: &str, sha: &str, statuses: &[(&str, &str)]) {
        let mut st = self.state.lock().expect("sim lock");
        let repo = st.repos.get_mut(full_name).expect("repository exists");
        let statuses = statuses
            .iter()
            .map(|(c, s)| ((*c).to_owned(), (*s).to_owned()))
            .collect();
        repo.statuses.insert(sha.into(), statuses);
    }

    /// A commit's status contexts and check runs: as set, else the default CI, else none.
    fn commit_ci(&self, full: &str, sha: &str) -> (Vec<Status>, Vec<CheckRun>) {
        let rule = {
            let st = self.state.lock().expect("sim lock");
            let set = st
                .repos
                .get(full)
                .is_some_and(|r| r.statuses.contains_key(sha) || r.checks.contains_key(sha));
            st.ci_rule.clone().filter(|_| !set)
        };
        if let Some(rule) = rule
            && let Some(log) = rule(&self.git_dir(full), sha)
        {
            self.fail_ci(full, sha, &log);
        }
        let st = self.state.lock().expect("sim lock");
        let repo = st.repos.get(full);
        let default = st.default_ci.as_deref().map(ci_entries);
        let statuses = repo
            .and_then(|r| r.statuses.get(sha).cloned())
            .or_else(|| default.clone().map(|d| d.0))
            .unwrap_or_default();
        let checks = repo
            .and_then(|r| r.checks.get(sha).cloned())
            .or_else(|| default.map(|d| d.1))
            .unwrap_or_default();
        (statuses, checks)
    }

    /// Sets the CI of a commit to failed with `log` as the failed job's log — all at once, so no
    /// reader sees the failure without its log.
    pub fn fail_ci(&self, full_name: &str, sha: &str, log: &str) {
        let mut st = self.state.lock().expect("sim lock");
        let repo = st.repos.get_mut(full_name).expect("repository exists");
        repo.job_logs.insert(sha.into(), log.into());
        repo.statuses
            .insert(sha.into(), vec![("ci/sim".into(), "failure".into())]);
        repo.checks.insert(
            sha.into(),
            vec![("build".into(), "completed".into(), Some("failure".into()))],
        );
    }

    /// The next `n` REST requests get a rate-limit answer.
    pub fn rate_limit_next(&self, kind: RateLimit, n: usize) {
        let mut st = self.state.lock().expect("sim lock");
        for _ in 0..n {
            st.limits.push_back(kind);
        }
    }

    /// A user submits a review with line comments on a pull request (and the webhook fires).
    pub async fn submit_review(
        &self,
        full_name: &str,
        number: u64,
        user: &str,
        body: &str,
        comments: &[&str],
    ) -> u64 {
        let id = {
            let mut st = self.state.lock().expect("sim lock");
            st.next_id += 1;
            let id = st.next_id;
            let repo = st.repos.get_mut(full_name).expect("repository exists");
            repo.reviews.entry(number).or_default().push(Review {
                id,
                user: user.into(),
                state: "COMMENTED".into(),
                body: body.into(),
                comments: comments.iter().map(|c| c.to_string()).collect(),
            });
            id
        };
        let review = shapes::review(&self.url(), full_name, number, id, user, "commented", body);
        let pull = self
            .item(full_name, number)
            .filter(|i| i.pull.is_some())
            .map(|i| self.pull_json(full_name, &i))
            .unwrap_or_else(|| json!({"number": number}));
        self.deliver(
            "pull_request_review",
            json!({"action": "submitted", "review": review, "pull_request": pull, "repository": self.repo_json(full_name)}),
        )
        .await;
        id
    }

    /// Opens an issue and delivers the `issues` `opened` webhook; returns its number.
    pub async fn open_issue(
        &self,
        full_name: &str,
        title: &str,
        body: &str,
        author: &str,
        labels: &[&str],
    ) -> u64 {
        let number = self.create_issue(full_name, title, body, author, labels);
        let item = self.item(full_name, number).expect("just created");
        let issue = self.item_json(full_name, &item);
        self.deliver(
            "issues",
            json!({"action": "opened", "issue": issue, "repository": self.repo_json(full_name)}),
        )
        .await;
        number
    }

    /// A user comments on an issue or pull request (and the `issue_comment` webhook fires).
    pub async fn user_comment(&self, full_name: &str, number: u64, user: &str, body: &str) -> u64 {
        let (id, item) = {
            let mut st = self.state.lock().expect("sim lock");
            st.next_id += 1;
            let id = st.next_id;
            let repo = st.repos.get_mut(full_name).expect("repository exists");
            let item = repo.items.get_mut(&number).expect("issue exists");
            item.comments.push((id, user.into(), body.into()));
            (id, item.clone())
        };
        let issue = self.item_json(full_name, &item);
        self.deliver(
            "issue_comment",
            json!({"action": "created", "issue": issue,
                   "comment": shapes::issue_comment(&self.url(), full_name, number, id, user, body),
                   "repository": self.repo_json(full_name)}),
        )
        .await;
        id
    }

    /// Commits `files` on `branch` directly (to cause a conflict with a task branch); returns
    /// the new head.
    pub fn push_commit(
        &self,
        full_name: &str,
        branch: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let dir = self.git_dir(full_name);
        let work = tempdir(&self.root, "work")?;
        git(
            &self.root,
            &[
                "clone",
                "--quiet",
                "--branch",
                branch,
                &dir.to_string_lossy(),
                &work.to_string_lossy(),
            ],
        )?;
        commit_files(&work, files, "direct commit")?;
        git(
            &work,
            &[
                "push",
                "--quiet",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        )?;
        let head = git(&work, &["rev-parse", "HEAD"])?;
        let _ = std::fs::remove_dir_all(work);
        Ok(head)
    }

    /// Every webhook payload sent so far, oldest first: `{"event": …, "payload": …}`.
    pub fn deliveries(&self) -> Vec<Value> {
        self.state.lock().expect("sim lock").deliveries.clone()
    }

    /// Head commit of a branch.
    pub fn branch_head(&self, full_name: &str, branch: &str) -> Option<String> {
        git(
            &self.git_dir(full_name),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ],
        )
        .ok()
    }

    /// The next `times` REST requests with `method` whose path ends with `path_suffix` get
    /// `status` with `message` (GitHub's error shape) instead of being served.
    pub fn fail_requests(
        &self,
        method: &str,
        path_suffix: &str,
        status: u16,
        message: &str,
        times: usize,
    ) {
        self.state.lock().expect("sim lock").faults.push((
            method.to_owned(),
            path_suffix.to_owned(),
            status,
            message.to_owned(),
            times,
        ));
    }

    /// Forgets every queued failure of [`GitHubSim::fail_requests`].
    pub fn clear_faults(&self) {
        self.state.lock().expect("sim lock").faults.clear();
    }

    /// Every commit without an explicit CI result reports `outcome` (instant CI).
    pub fn set_default_ci(&self, outcome: &str) {
        self.state.lock().expect("sim lock").default_ci = Some(outcome.to_owned());
    }

    /// Lets anyone clone and fetch `full_name` without credentials (pushes still need the token).
    pub fn set_public(&self, full_name: &str) {
        self.state
            .lock()
            .expect("sim lock")
            .public
            .insert(full_name.to_owned());
    }

    /// Accepts `token` as `login`'s own (a person's token): REST calls with it act as that user,
    /// e.g. `POST /repos/{owner}/{repo}/issues` files the issue as them.
    pub fn add_user_token(&self, token: &str, login: &str) {
        self.state
            .lock()
            .expect("sim lock")
            .user_tokens
            .insert(token.to_owned(), login.to_owned());
    }

    fn user_of(&self, token: &str) -> Option<String> {
        self.state
            .lock()
            .expect("sim lock")
            .user_tokens
            .get(token)
            .cloned()
    }

    /// Decides the CI of every commit nobody set a result for: `rule` gets the repository's git
    /// directory and the commit, and answers the failed job's log when it fails (the default CI
    /// applies otherwise). Asked once per commit.
    pub fn set_ci_rule(&self, rule: CiRule) {
        self.state.lock().expect("sim lock").ci_rule = Some(rule);
    }

    /// The failed job's log of a commit, if its CI failed with one.
    fn job_log_of(&self, full: &str, sha: &str) -> Option<String> {
        let st = self.state.lock().expect("sim lock");
        st.repos.get(full)?.job_logs.get(sha).cloned()
    }

    /// Writes what the simulator knows (issues, pull requests, reviews, CI results; the git
    /// repositories are under its root already) to `path`, so [`GitHubSim::load`] can pick it
    /// up on a later start. Written whole to a temporary file, then renamed.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Saved<'a> {
            repos: &'a HashMap<String, Repo>,
            next_id: u64,
        }
        let text = {
            let st = self.state.lock().expect("sim lock");
            serde_json::to_string(&Saved {
                repos: &st.repos,
                next_id: st.next_id,
            })?
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Loads what [`GitHubSim::save`] wrote to `path`; `false` when there is no such file.
    /// Configuration (webhook, public repositories, CI rules, tokens) is not saved: set it again.
    pub fn load(&self, path: &Path) -> anyhow::Result<bool> {
        #[derive(Deserialize)]
        struct Saved {
            repos: HashMap<String, Repo>,
            next_id: u64,
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let saved: Saved = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not the simulator's state: {e}", path.display()))?;
        for name in saved.repos.keys() {
            anyhow::ensure!(
                self.git_dir(name).exists(),
                "{} names {name}, whose git repository is gone",
                path.display()
            );
        }
        let mut st = self.state.lock().expect("sim lock");
        st.repos = saved.repos;
        st.next_id = saved.next_id;
        Ok(true)
    }

    /// Every REST request so far as (method, path with query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().expect("sim lock").requests.clone()
    }

    /// Accepts GitHub App JWTs for `app_id` signed by the key whose RSA public key (PKCS#1 DER)
    /// is given, minting installation tokens for `installation_id` (the simulator's token).
    pub fn enable_app(&self, app_id: u64, installation_id: u64, public_key_der: Vec<u8>) {
        self.state.lock().expect("sim lock").app = Some((app_id, installation_id, public_key_der));
    }

    /// Sends webhooks to `url`, signed with `secret`.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.state.lock().expect("sim lock").webhook = Some((url.into(), secret.into()));
    }

    /// Labels of an issue.
    pub fn labels(&self, full_name: &str, number: u64) -> Vec<String> {
        self.item(full_name, number)
            .map(|i| i.labels)
            .unwrap_or_default()
    }

    /// Comments on an issue or pull request.
    pub fn comments(&self, full_name: &str, number: u64) -> Vec<String> {
        self.item(full_name, number)
            .map(|i| i.comments.into_iter().map(|c| c.2).collect())
            .unwrap_or_default()
    }

    /// Title of an issue or pull request.
    pub fn title_of(&self, full_name: &str, number: u64) -> Option<String> {
        self.item(full_name, number).map(|i| i.title)
    }

    /// State of an issue or pull request (`open`, `closed`) and whether it was merged.
    pub fn state_of(&self, full_name: &str, number: u64) -> Option<(String, bool)> {
        self.item(full_name, number)
            .map(|i| (i.state.clone(), i.pull.map(|p| p.merged).unwrap_or(false)))
    }

    fn item(&self, full_name: &str, number: u64) -> Option<Item> {
        self.state
            .lock()
            .expect("sim lock")
            .repos
            .get(full_name)?
            .items
            .get(&number)
            .cloned()
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/repos/{owner}/{repo}", get(get_repo))
            .route(
                "/repos/{owner}/{repo}/issues",
                get(list_issues).post(create_issue_rest),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}",
                get(get_issue).patch(update_issue),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/labels",
                post(add_labels),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/events",
                get(list_issue_events),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/labels/{label}",
                delete(remove_label),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                get(list_comments).post(add_comment),
            )
            .route(
                "/repos/{owner}/{repo}/pulls",
                get(list_pulls).post(create_pull),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}",
                get(get_pull).patch(update_pull),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/merge",
                axum::routing::put(merge_pull),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/reviews",
                get(list_reviews),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/comments",
                get(list_review_comments),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/reviews/{review}",
                get(get_review),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/reviews/{review}/comments",
                get(list_one_review_comments),
            )
            .route(
                "/app/installations/{installation}/access_tokens",
                post(installation_token),
            )
            .route(
                "/repos/{owner}/{repo}/actions/jobs/{job}/logs",
                get(job_logs),
            )
            .route(
                "/repos/{owner}/{repo}/commits/{sha}/status",
                get(combined_status),
            )
            .route(
                "/repos/{owner}/{repo}/commits/{sha}/check-runs",
                get(check_runs),
            )
            .route(
                "/repos/{owner}/{repo}/git/refs/heads/{*branch}",
                delete(delete_branch),
            )
            .route("/{owner}/{repo}", get(repository_page))
            .route("/{owner}/{repo}/{*rest}", get(git_http).post(git_http))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                rate_limits,
            ))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if let Some(t) = v
            .strip_prefix("token ")
            .or_else(|| v.strip_prefix("Bearer "))
        {
            return t == self.token.as_str() || self.user_of(t).is_some();
        }
        if let Some(b64) = v.strip_prefix("Basic ") {
            use base64_lite::decode;
            return decode(b64).is_some_and(|d| {
                d.split_once(':')
                    .is_some_and(|(_, p)| p == self.token.as_str())
            });
        }
        false
    }

    fn url(&self) -> String {
        self.base_url.lock().expect("sim lock").clone()
    }

    fn item_json(&self, full: &str, item: &Item) -> Value {
        shapes::issue(&self.url(), &Self::issue_facts(full, item))
    }

    fn repo_json(&self, full: &str) -> Value {
        let default_branch = {
            let st = self.state.lock().expect("sim lock");
            st.repos
                .get(full)
                .map(|r| r.default_branch.clone())
                .unwrap_or_else(|| "main".into())
        };
        shapes::repository(&self.url(), full, &default_branch)
    }

    fn issue_facts<'a>(full: &'a str, item: &'a Item) -> shapes::IssueFacts<'a> {
        shapes::IssueFacts {
            full,
            number: item.number,
            title: &item.title,
            body: &item.body,
            state: &item.state,
            author: &item.author,
            labels: &item.labels,
            comments: item.comments.len(),
            is_pull: item.pull.is_some(),
        }
    }

    fn pull_json(&self, full: &str, item: &Item) -> Value {
        let pull = item.pull.clone().expect("a pull request");
        let dir = self.git_dir(full);
        let head_sha =
            git(&dir, &["rev-parse", &format!("refs/heads/{}", pull.head)]).unwrap_or_default();
        let base_sha =
            git(&dir, &["rev-parse", &format!("refs/heads/{}", pull.base)]).unwrap_or_default();
        let mergeable = if pull.merged || item.state != "open" {
            None
        } else {
            Some(merge_tree(&dir, &base_sha, &head_sha).is_ok())
        };
        let repo = self.repo_json(full);
        let default_branch = repo["default_branch"].as_str().unwrap_or("main");
        shapes::pull(
            &self.url(),
            &shapes::PullFacts {
                issue: Self::issue_facts(full, item),
                default_branch,
                head_ref: &pull.head,
                head_sha: &head_sha,
                base_ref: &pull.base,
                base_sha: &base_sha,
                merged: pull.merged,
                merge_sha: pull.merge_sha.as_deref(),
                mergeable,
            },
        )
    }

    /// Delivers an event to the webhook target (if any), signed with `X-Hub-Signature-256`, with
    /// a `sender` (the issue's or comment's author unless the payload names one, as GitHub always
    /// does); returns the HTTP status the target answered.
    pub async fn deliver(&self, event: &str, mut payload: Value) -> Option<u16> {
        let target = self.state.lock().expect("sim lock").webhook.clone();
        let (url, secret) = target?;
        if payload.get("sender").is_none() {
            let who = ["comment", "review", "issue"]
                .iter()
                .find_map(|k| payload[*k]["user"]["login"].as_str())
                .unwrap_or("octocat")
                .to_owned();
            payload["sender"] = shapes::user(&self.url(), &who);
        }
        let body = payload.to_string();
        let delivery = {
            let mut st = self.state.lock().expect("sim lock");
            st.next_id += 1;
            st.deliveries
                .push(json!({"event": event, "payload": payload}));
            // A random UUID per delivery, as GitHub's `X-GitHub-Delivery`: unique across
            // simulator restarts, so no receiver drops one as a duplicate.
            let id = delivery_id();
            st.last_delivery = Some((id.clone(), event.to_owned(), body.clone()));
            id
        };
        self.post_delivery(&url, &secret, &delivery, event, body)
            .await
    }

    async fn post_delivery(
        &self,
        url: &str,
        secret: &str,
        delivery: &str,
        event: &str,
        body: String,
    ) -> Option<u16> {
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
        mac.update(body.as_bytes());
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.http
            .post(url)
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sig)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }
}

/// A random version-4 UUID, as GitHub's delivery ids are.
fn delivery_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No system randomness: time and a counter still never repeat within this process.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b = nanos.to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Minimal base64 decoding for HTTP basic auth (standard alphabet, padding optional).
mod base64_lite {
    pub fn decode(s: &str) -> Option<String> {
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.trim().bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => continue,
                _ => return None,
            };
            bits = (bits << 6) | u32::from(v);
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        String::from_utf8(out).ok()
    }
}

fn git(cwd: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = xcmd::Cmd::new("git", cwd)
        .args([
            "-c",
            "user.name=GitHub Sim",
            "-c",
            "user.email=sim@localhost",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .to_std()
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes `files` into the work tree at `dir` and commits them.
fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> anyhow::Result<()> {
    for (path, content) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, content)?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "--quiet", "-m", message])?;
    Ok(())
}

fn tempdir(root: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = root.join(format!(
        ".{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The tree of merging `head` into `base`, or an error when they conflict.
fn merge_tree(dir: &Path, base: &str, head: &str) -> anyhow::Result<String> {
    let out = git(dir, &["merge-tree", "--write-tree", base, head])?;
    Ok(out.lines().next().unwrap_or_default().to_owned())
}

fn gh_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"message": message, "documentation_url": "https://docs.github.com/rest"})
            .to_string(),
    )
        .into_response()
}

fn with_rate(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
    h.insert("x-ratelimit-remaining", HeaderValue::from_static("4999"));
    h.insert("x-ratelimit-reset", HeaderValue::from_static("4102444800"));
    h.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static("2022-11-28"),
    );
    r
}

fn ok_json(status: StatusCode, v: Value) -> Response {
    with_rate(
        (
            status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            v.to_string(),
        )
            .into_response(),
    )
}

macro_rules! repo_or_404 {
    ($st:expr, $full:expr) => {
        match $st.repos.get_mut(&$full) {
            Some(r) => r,
            None => return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found")),
        }
    };
}

async fn get_repo(
    State(sim): State<GitHubSim>,
    UrlPath((o, r)): UrlPath<(String, String)>,
) -> Response {
    let full = format!("{o}/{r}");
    let default_branch = {
        let mut st = sim.state.lock().expect("sim lock");
        repo_or_404!(st, full).default_branch.clone()
    };
    ok_json(
        StatusCode::OK,
        shapes::repository(&sim.url(), &full, &default_branch),
    )
}

#[derive(Deserialize, Default)]
struct IssueQuery {
    labels: Option<String>,
    state: Option<String>,
}

async fn list_issues(
    State(sim): State<GitHubSim>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Query(q): Query<IssueQuery>,
    Query(page): Query<Page>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let full = format!("{o}/{r}");
    let (items, version) = {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        (
            repo.items.values().cloned().collect::<Vec<_>>(),
            repo.version,
        )
    };
    // One ETag per page, as GitHub's: it changes when anything on that page would.
    let etag = format!(
        "W/\"{version}-{}-{}-{}\"",
        q.labels.clone().unwrap_or_default(),
        q.state.clone().unwrap_or_default(),
        uri.query().unwrap_or_default()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
        return with_rate(r);
    }
    let want_state = q.state.unwrap_or_else(|| "open".into());
    let want_labels: Vec<String> = q
        .labels
        .map(|l| l.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let list: Vec<Value> = items
        .iter()
        .filter(|i| want_state == "all" || i.state == want_state)
        .filter(|i| want_labels.iter().all(|l| i.labels.contains(l)))
        .map(|i| sim.item_json(&full, i))
        .collect();
    let (list, link) = paginate(&sim, &uri, &page, list);
    let mut resp = with_link(ok_json(StatusCode::OK, Value::Array(list)), link);
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
    resp
}

/// `GET /{owner}/{repo}`: the repository's web page.
async fn repository_page(
    State(sim): State<GitHubSim>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    pages::repository(&sim, &format!("{o}/{r}"), &headers)
}

/// `POST /repos/{owner}/{repo}/issues` (`title`, `body`, `labels`): files an issue as the token's
/// user and delivers the `issues` `opened` webhook, as GitHub does.
async fn create_issue_rest(
    State(sim): State<GitHubSim>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return with_rate(gh_error(StatusCode::BAD_REQUEST, "Problems parsing JSON"));
    };
    let Some(title) = v
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
    else {
        return with_rate(gh_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: title is missing",
        ));
    };
    if !sim
        .state
        .lock()
        .expect("sim lock")
        .repos
        .contains_key(&full)
    {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    }
    let labels: Vec<&str> = v
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("token ")
                .or_else(|| h.strip_prefix("Bearer "))
        })
        .unwrap_or_default();
    let author = sim
        .user_of(token)
        .unwrap_or_else(|| "backporcher-bot".into());
    let body_text = v.get("body").and_then(Value::as_str).unwrap_or_default();
    let n = sim
        .open_issue(&full, title, body_text, &author, &labels)
        .await;
    match sim.item(&full, n) {
        Some(i) => ok_json(StatusCode::CREATED, sim.item_json(&full, &i)),
        None => with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn get_issue(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
) -> Response {
    let full = format!("{o}/{r}");
    match sim.item(&full, n) {
        Some(i) => ok_json(StatusCode::OK, sim.item_json(&full, &i)),
        None => with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn update_issue(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return with_rate(gh_error(StatusCode::BAD_REQUEST, "Problems parsing JSON"));
    };
    let item = {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        repo.version += 1;
        let version = repo.version;
        let Some(item) = repo.items.get_mut(&n) else {
            return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
        };
        if let Some(s) = v.get("state").and_then(Value::as_str) {
            item.state = s.into();
        }
        if let Some(t) = v.get("title").and_then(Value::as_str) {
            item.title = t.into();
        }
        item.updated = version;
        item.clone()
    };
    ok_json(StatusCode::OK, sim.item_json(&full, &item))
}

async fn list_issue_events(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    Query(page): Query<Page>,
    uri: Uri,
) -> Response {
    let full = format!("{o}/{r}");
    let events = {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        let Some(item) = repo.items.get(&n) else {
            return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
        };
        item.events.clone()
    };
    let (events, link) = paginate(&sim, &uri, &page, events.into_iter().enumerate().collect());
    let list: Vec<Value> = events
        .into_iter()
        .map(|(i, (event, label, actor))| {
            shapes::issue_event(
                &sim.url(),
                &full,
                n * 10_000 + i as u64,
                &event,
                &label,
                &actor,
            )
        })
        .collect();
    with_link(ok_json(StatusCode::OK, Value::Array(list)), link)
}

/// `per_page` and `page` of a paginated list.
#[derive(Deserialize)]
struct Page {
    per_page: Option<usize>,
    page: Option<usize>,
}

/// The page of `list` that `page` asks for, as GitHub serves a paginated list (`per_page` 30 by
/// default, at most 100), and the `Link` header naming the first, previous, next and last pages
/// when the list has more than one.
fn paginate<T>(
    sim: &GitHubSim,
    uri: &Uri,
    page: &Page,
    list: Vec<T>,
) -> (Vec<T>, Option<HeaderValue>) {
    let per = page.per_page.unwrap_or(30).clamp(1, 100);
    let at = page.page.unwrap_or(1).max(1);
    let last = list.len().div_ceil(per).max(1);
    let items = list.into_iter().skip((at - 1) * per).take(per).collect();
    if last == 1 {
        return (items, None);
    }
    let others: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("page="))
        .collect();
    let base = sim.url();
    let link = |n: usize, rel: &str| {
        let page = format!("page={n}");
        let query: Vec<&str> = others.iter().copied().chain([page.as_str()]).collect();
        format!("<{base}{}?{}>; rel=\"{rel}\"", uri.path(), query.join("&"))
    };
    let mut links = Vec::new();
    if at > 1 {
        links.push(link((at - 1).min(last), "prev"));
    }
    if at < last {
        links.push(link(at + 1, "next"));
        links.push(link(last, "last"));
    }
    if at > 1 {
        links.push(link(1, "first"));
    }
    (items, HeaderValue::from_str(&links.join(", ")).ok())
}

/// `response` with the `Link` header of its page, if any.
fn with_link(mut response: Response, link: Option<HeaderValue>) -> Response {
    if let Some(l) = link {
        response.headers_mut().insert(header::LINK, l);
    }
    response
}

async fn add_labels(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let labels: Vec<String> = v
        .get("labels")
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut st = sim.state.lock().expect("sim lock");
    let repo = repo_or_404!(st, full);
    repo.version += 1;
    let Some(item) = repo.items.get_mut(&n) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    for l in labels {
        if !item.labels.contains(&l) {
            item.events
                .push(("labeled".into(), l.clone(), "backporcher-bot".into()));
            item.labels.push(l);
        }
    }
    let out: Vec<Value> = item
        .labels
        .iter()
        .map(|l| shapes::label(&sim.url(), &full, l))
        .collect();
    ok_json(StatusCode::OK, Value::Array(out))
}

async fn remove_label(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n, label)): UrlPath<(String, String, u64, String)>,
) -> Response {
    let full = format!("{o}/{r}");
    let mut st = sim.state.lock().expect("sim lock");
    let repo = repo_or_404!(st, full);
    repo.version += 1;
    let Some(item) = repo.items.get_mut(&n) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    if !item.labels.contains(&label) {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Label does not exist"));
    }
    item.labels.retain(|l| *l != label);
    let out: Vec<Value> = item
        .labels
        .iter()
        .map(|l| shapes::label(&sim.url(), &full, l))
        .collect();
    ok_json(StatusCode::OK, Value::Array(out))
}

async fn list_comments(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
) -> Response {
    let full = format!("{o}/{r}");
    let Some(item) = sim.item(&full, n) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    let list: Vec<Value> = item
        .comments
        .iter()
        .map(|(id, user, body)| shapes::issue_comment(&sim.url(), &full, n, *id, user, body))
        .collect();
    ok_json(StatusCode::OK, Value::Array(list))
}

async fn add_comment(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let text = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("body").and_then(Value::as_str).map(str::to_owned));
    let Some(text) = text else {
        return with_rate(gh_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "body is missing",
        ));
    };
    let mut st = sim.state.lock().expect("sim lock");
    st.next_id += 1;
    let id = st.next_id;
    let repo = repo_or_404!(st, full);
    let Some(item) = repo.items.get_mut(&n) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    item.comments
        .push((id, "backporcher-bot".into(), text.clone()));
    ok_json(
        StatusCode::CREATED,
        shapes::issue_comment(&sim.url(), &full, n, id, "backporcher-bot", &text),
    )
}

#[derive(Deserialize, Default)]
struct PullQuery {
    head: Option<String>,
    state: Option<String>,
}

async fn list_pulls(
    State(sim): State<GitHubSim>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Query(q): Query<PullQuery>,
) -> Response {
    let full = format!("{o}/{r}");
    let items: Vec<Item> = {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        repo.items
            .values()
            .filter(|i| i.pull.is_some())
            .cloned()
            .collect()
    };
    let want_state = q.state.unwrap_or_else(|| "open".into());
    let want_head = q
        .head
        .map(|h| h.split_once(':').map(|(_, b)| b.to_owned()).unwrap_or(h));
    let list: Vec<Value> = items
        .iter()
        .filter(|i| want_state == "all" || i.state == want_state)
        .filter(|i| {
            want_head
                .as_ref()
                .is_none_or(|h| i.pull.as_ref().is_some_and(|p| &p.head == h))
        })
        .map(|i| sim.pull_json(&full, i))
        .collect();
    ok_json(StatusCode::OK, Value::Array(list))
}

async fn create_pull(
    State(sim): State<GitHubSim>,
    UrlPath((o, r)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return with_rate(gh_error(StatusCode::BAD_REQUEST, "Problems parsing JSON"));
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(title), Some(head), Some(base)) = (s("title"), s("head"), s("base")) else {
        return with_rate(gh_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: title, head and base are required",
        ));
    };
    let head = head
        .split_once(':')
        .map(|(_, b)| b.to_owned())
        .unwrap_or(head);
    if git(
        &sim.git_dir(&full),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{head}"),
        ],
    )
    .is_err()
    {
        return with_rate(gh_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: head does not exist",
        ));
    }
    let item = {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        if repo
            .items
            .values()
            .any(|i| i.state == "open" && i.pull.as_ref().is_some_and(|p| p.head == head))
        {
            return with_rate(gh_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Validation Failed: A pull request already exists for {o}:{head}."),
            ));
        }
        let number = repo.items.keys().next_back().copied().unwrap_or(0) + 1;
        repo.version += 1;
        let item = Item {
            number,
            title,
            body: s("body").unwrap_or_default(),
            author: "backporcher-bot".into(),
            state: "open".into(),
            labels: Vec::new(),
            comments: Vec::new(),
            pull: Some(Pull {
                head,
                base,
                merged: false,
                merge_sha: None,
                last_head: None,
            }),
            updated: repo.version,
            events: Vec::new(),
        };
        repo.items.insert(number, item.clone());
        item
    };
    let json = sim.pull_json(&full, &item);
    sim.deliver("pull_request", json!({"action": "opened", "number": item.number, "pull_request": json, "repository": sim.repo_json(&full)})).await;
    ok_json(StatusCode::CREATED, json)
}

async fn get_pull(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
) -> Response {
    let full = format!("{o}/{r}");
    match sim.item(&full, n).filter(|i| i.pull.is_some()) {
        Some(i) => ok_json(StatusCode::OK, sim.pull_json(&full, &i)),
        None => with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn update_pull(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let item = {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        repo.version += 1;
        let Some(item) = repo.items.get_mut(&n).filter(|i| i.pull.is_some()) else {
            return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
        };
        if let Some(s) = v.get("state").and_then(Value::as_str) {
            item.state = s.into();
        }
        if let Some(t) = v.get("title").and_then(Value::as_str) {
            item.title = t.into();
        }
        if let Some(b) = v.get("body").and_then(Value::as_str) {
            item.body = b.into();
        }
        item.clone()
    };
    ok_json(StatusCode::OK, sim.pull_json(&full, &item))
}

async fn merge_pull(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let full = format!("{o}/{r}");
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let method = v
        .get("merge_method")
        .and_then(Value::as_str)
        .unwrap_or("merge")
        .to_owned();
    let Some(item) = sim.item(&full, n).filter(|i| i.pull.is_some()) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    let pull = item.pull.clone().expect("pull");
    if pull.merged || item.state != "open" {
        return with_rate(gh_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Pull Request is not mergeable",
        ));
    }
    let dir = sim.git_dir(&full);
    let base_sha =
        git(&dir, &["rev-parse", &format!("refs/heads/{}", pull.base)]).unwrap_or_default();
    let head_sha =
        git(&dir, &["rev-parse", &format!("refs/heads/{}", pull.head)]).unwrap_or_default();
    if let Some(expected) = v.get("sha").and_then(Value::as_str)
        && expected != head_sha
    {
        return with_rate(gh_error(
            StatusCode::CONFLICT,
            "Head branch was modified. Review and try the merge again.",
        ));
    }
    let Ok(tree) = merge_tree(&dir, &base_sha, &head_sha) else {
        return with_rate(gh_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Pull Request is not mergeable",
        ));
    };
    let message = format!("{} (#{n})", item.title);
    let parents: Vec<&str> = match method.as_str() {
        "squash" | "rebase" => vec![base_sha.as_str()],
        _ => vec![base_sha.as_str(), head_sha.as_str()],
    };
    let mut args = vec!["commit-tree", tree.as_str(), "-m", message.as_str()];
    for p in &parents {
        args.push("-p");
        args.push(p);
    }
    let Ok(commit) = git(&dir, &args) else {
        return with_rate(gh_error(StatusCode::INTERNAL_SERVER_ERROR, "merge failed"));
    };
    if git(
        &dir,
        &[
            "update-ref",
            &format!("refs/heads/{}", pull.base),
            &commit,
            &base_sha,
        ],
    )
    .is_err()
    {
        return with_rate(gh_error(
            StatusCode::CONFLICT,
            "Base branch was modified. Review and try the merge again.",
        ));
    }
    {
        let mut st = sim.state.lock().expect("sim lock");
        let repo = repo_or_404!(st, full);
        repo.version += 1;
        if let Some(i) = repo.items.get_mut(&n) {
            i.state = "closed".into();
            if let Some(p) = i.pull.as_mut() {
                p.merged = true;
                p.merge_sha = Some(commit.clone());
                p.last_head = Some(head_sha.clone());
            }
        }
    }
    ok_json(StatusCode::OK, shapes::merge_result(&commit))
}

async fn combined_status(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, sha)): UrlPath<(String, String, String)>,
    Query(page): Query<Page>,
    uri: Uri,
) -> Response {
    let full = format!("{o}/{r}");
    let sha = resolve(&sim, &full, &sha);
    let (statuses, _) = sim.commit_ci(&full, &sha);
    let state = if statuses.is_empty() {
        "pending"
    } else if statuses.iter().any(|s| s.1 == "failure" || s.1 == "error") {
        "failure"
    } else if statuses.iter().all(|s| s.1 == "success") {
        "success"
    } else {
        "pending"
    };
    let total = statuses.len();
    let (statuses, link) = paginate(
        &sim,
        &uri,
        &page,
        statuses.into_iter().enumerate().collect(),
    );
    let list: Vec<Value> = statuses
        .iter()
        .map(|(i, (c, s))| shapes::status(&sim.url(), &full, &sha, *i, c, s))
        .collect();
    with_link(
        ok_json(
            StatusCode::OK,
            shapes::combined_status(&sim.url(), &full, &sha, state, total, list),
        ),
        link,
    )
}

async fn check_runs(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, sha)): UrlPath<(String, String, String)>,
    Query(page): Query<Page>,
    uri: Uri,
) -> Response {
    let full = format!("{o}/{r}");
    let sha = resolve(&sim, &full, &sha);
    let (_, runs) = sim.commit_ci(&full, &sha);
    let total = runs.len();
    let (runs, link) = paginate(&sim, &uri, &page, runs.into_iter().enumerate().collect());
    let list: Vec<Value> = runs
        .iter()
        .map(|(i, (name, status, conclusion))| {
            shapes::check_run(
                &sim.url(),
                &full,
                &sha,
                job_id(&sha, *i),
                name,
                status,
                conclusion.as_deref(),
            )
        })
        .collect();
    with_link(
        ok_json(
            StatusCode::OK,
            json!({"total_count": total, "check_runs": list}),
        ),
        link,
    )
}

/// A status context: (context, state).
type Status = (String, String);
/// A check run: (name, status, conclusion).
type CheckRun = (String, String, Option<String>);

/// The status context and the check run a CI `outcome` (`success`, `failure`, `pending`) shows.
fn ci_entries(outcome: &str) -> (Vec<Status>, Vec<CheckRun>) {
    let (status, conclusion) = run_state(outcome);
    (
        vec![("ci/sim".into(), outcome.into())],
        vec![("build".into(), status.into(), conclusion)],
    )
}

/// The `status` and `conclusion` of a check run with CI `outcome`.
fn run_state(outcome: &str) -> (&'static str, Option<String>) {
    match outcome {
        "pending" => ("in_progress", None),
        other => ("completed", Some(other.to_owned())),
    }
}

/// A stable job id for the `i`-th check of a commit.
fn job_id(sha: &str, i: usize) -> u64 {
    shapes::stable_id(sha) + i as u64
}

async fn job_logs(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, job)): UrlPath<(String, String, u64)>,
) -> Response {
    let full = format!("{o}/{r}");
    let st = sim.state.lock().expect("sim lock");
    let Some(repo) = st.repos.get(&full) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    let log = repo
        .checks
        .iter()
        .find(|(sha, runs)| (0..runs.len()).any(|i| job_id(sha, i) == job))
        .and_then(|(sha, _)| repo.job_logs.get(sha));
    match log {
        Some(text) => with_rate(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                text.clone(),
            )
                .into_response(),
        ),
        None => with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn list_reviews(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
) -> Response {
    let full = format!("{o}/{r}");
    let reviews = sim.reviews(&full, n);
    let list: Vec<Value> = reviews
        .iter()
        .map(|r| shapes::review(&sim.url(), &full, n, r.id, &r.user, &r.state, &r.body))
        .collect();
    ok_json(StatusCode::OK, Value::Array(list))
}

async fn list_review_comments(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
) -> Response {
    let full = format!("{o}/{r}");
    let reviews = sim.reviews(&full, n);
    let list: Vec<Value> = reviews
        .iter()
        .flat_map(|r| review_comments(&sim.url(), &full, n, r))
        .collect();
    ok_json(StatusCode::OK, Value::Array(list))
}

impl GitHubSim {
    /// The reviews of pull request `n` of `full`, oldest first.
    fn reviews(&self, full: &str, n: u64) -> Vec<Review> {
        let st = self.state.lock().expect("sim lock");
        st.repos
            .get(full)
            .and_then(|r| r.reviews.get(&n).cloned())
            .unwrap_or_default()
    }
}

/// A review's line comments, as GitHub lists them (each on `src/lib.rs`, one line apart).
fn review_comments(base: &str, full: &str, n: u64, review: &Review) -> Vec<Value> {
    review
        .comments
        .iter()
        .enumerate()
        .map(|(i, c)| {
            shapes::review_comment(
                base,
                full,
                (n, review.id),
                review.id * 100 + i as u64,
                &review.user,
                ("src/lib.rs", i as u64 + 1),
                c,
            )
        })
        .collect()
}

fn review_of(sim: &GitHubSim, full: &str, n: u64, id: u64) -> Option<Review> {
    let st = sim.state.lock().expect("sim lock");
    st.repos
        .get(full)?
        .reviews
        .get(&n)?
        .iter()
        .find(|r| r.id == id)
        .cloned()
}

async fn get_review(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n, id)): UrlPath<(String, String, u64, u64)>,
) -> Response {
    match review_of(&sim, &format!("{o}/{r}"), n, id) {
        Some(review) => ok_json(
            StatusCode::OK,
            shapes::review(
                &sim.url(),
                &format!("{o}/{r}"),
                n,
                review.id,
                &review.user,
                &review.state,
                &review.body,
            ),
        ),
        None => with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn list_one_review_comments(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, n, id)): UrlPath<(String, String, u64, u64)>,
) -> Response {
    let Some(review) = review_of(&sim, &format!("{o}/{r}"), n, id) else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    let list = review_comments(&sim.url(), &format!("{o}/{r}"), n, &review);
    ok_json(StatusCode::OK, Value::Array(list))
}

/// `POST /app/installations/{id}/access_tokens` with an App JWT (RS256) in `Authorization: Bearer`.
async fn installation_token(
    State(sim): State<GitHubSim>,
    UrlPath(installation): UrlPath<u64>,
    headers: HeaderMap,
) -> Response {
    let app = sim.state.lock().expect("sim lock").app.clone();
    let Some((app_id, inst, key)) = app else {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    };
    let jwt = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !jwt_valid(jwt, app_id, &key) {
        return with_rate(gh_error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        ));
    }
    if installation != inst {
        return with_rate(gh_error(StatusCode::NOT_FOUND, "Not Found"));
    }
    let expires = chrono_like_in_an_hour();
    ok_json(
        StatusCode::CREATED,
        shapes::installation_token(sim.token.as_str(), &expires),
    )
}

fn jwt_valid(jwt: &str, app_id: u64, public_key_der: &[u8]) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key_der,
    );
    if key.verify(format!("{h}.{c}").as_bytes(), &sig).is_err() {
        return false;
    }
    let Ok(claims) = URL_SAFE_NO_PAD.decode(c) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<Value>(&claims) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let iss_ok = claims["iss"].as_str() == Some(app_id.to_string().as_str())
        || claims["iss"].as_u64() == Some(app_id);
    let exp_ok = claims["exp"]
        .as_u64()
        .is_some_and(|e| e > now && e <= now + 600);
    iss_ok && exp_ok
}

fn chrono_like_in_an_hour() -> String {
    // RFC 3339 in UTC without a date library: days since the epoch → civil date.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Answers queued rate limits before anything else (git traffic excepted).
async fn rate_limits(
    State(sim): State<GitHubSim>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Queued faults apply to every path (REST and git), rate limits to REST only. A REST call
    // answered with a fault is still recorded: it reached GitHub.
    {
        let mut st = sim.state.lock().expect("sim lock");
        let path = req.uri().path().to_owned();
        let method = req.method().to_string();
        if let Some(at) = st
            .faults
            .iter()
            .position(|f| f.4 > 0 && f.0 == method && path.ends_with(&f.1))
        {
            if path.starts_with("/repos/") {
                let full = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                st.requests.push((method.clone(), full));
            }
            let f = &mut st.faults[at];
            f.4 -= 1;
            let status = StatusCode::from_u16(f.2).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return with_rate(gh_error(status, &f.3.clone()));
        }
    }
    if req.uri().path().starts_with("/repos/") {
        let limit = {
            let mut st = sim.state.lock().expect("sim lock");
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            st.requests.push((req.method().to_string(), path));
            st.limits.pop_front()
        };
        match limit {
            Some(RateLimit::Primary) => {
                let mut r = gh_error(
                    StatusCode::FORBIDDEN,
                    "API rate limit exceeded for installation.",
                );
                let reset = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() + 1)
                    .unwrap_or(0);
                let h = r.headers_mut();
                h.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
                h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
                h.insert(
                    "x-ratelimit-reset",
                    HeaderValue::from_str(&reset.to_string()).expect("header"),
                );
                return r;
            }
            Some(RateLimit::Secondary) => {
                let mut r = gh_error(
                    StatusCode::FORBIDDEN,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return r;
            }
            None => {}
        }
        // Every REST call needs the token; git over HTTP checks its own basic auth.
        if !sim.authorized(req.headers()) {
            return with_rate(gh_error(StatusCode::UNAUTHORIZED, "Bad credentials"));
        }
    }
    next.run(req).await
}

fn resolve(sim: &GitHubSim, full: &str, r: &str) -> String {
    git(
        &sim.git_dir(full),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{r}^{{commit}}"),
        ],
    )
    .unwrap_or_else(|_| r.to_owned())
}

async fn delete_branch(
    State(sim): State<GitHubSim>,
    UrlPath((o, r, branch)): UrlPath<(String, String, String)>,
) -> Response {
    let dir = sim.git_dir(&format!("{o}/{r}"));
    match git(&dir, &["update-ref", "-d", &format!("refs/heads/{branch}")]) {
        Ok(_) => with_rate(StatusCode::NO_CONTENT.into_response()),
        Err(_) => with_rate(gh_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Reference does not exist",
        )),
    }
}

/// Smart HTTP through `git http-backend` (CGI).
async fn git_http(
    State(sim): State<GitHubSim>,
    UrlPath((owner, repo, rest)): UrlPath<(String, String, String)>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !repo.ends_with(".git") && method == Method::GET {
        return pages::item_page(&sim, &format!("{owner}/{repo}"), &rest, &headers);
    }
    let read_only = !rest.contains("git-receive-pack")
        && !uri.query().unwrap_or_default().contains("git-receive-pack");
    let public = read_only && {
        let name = repo.strip_suffix(".git").unwrap_or(&repo);
        sim.state
            .lock()
            .expect("sim lock")
            .public
            .contains(&format!("{owner}/{name}"))
    };
    if !public && !sim.authorized(&headers) {
        let mut r = (StatusCode::UNAUTHORIZED, "authentication required").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"GitHub\""),
        );
        return r;
    }
    let Some(name) = repo.strip_suffix(".git") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let full = format!("{owner}/{name}");
    if !sim.git_dir(&full).exists() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut cmd = xcmd::Cmd::new("git", &sim.root)
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &sim.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", format!("/{full}.git/{rest}"))
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("REMOTE_USER", "sim")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string());
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        cmd = cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(enc) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        cmd = cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(p) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        cmd = cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = match cmd
        .to_tokio()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    }
    let Ok(out) = child.wait_with_output().await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // CGI output: headers, blank line, body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                let code = v
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(200);
                resp = resp.status(code);
            } else {
                resp = resp.header(k.trim(), v.trim());
            }
        }
    }
    resp.body(Body::from(raw[at + sep..].to_vec()))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

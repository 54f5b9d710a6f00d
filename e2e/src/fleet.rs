//! A fleet under load, for the throughput benchmark and its short form in the tests: labelled
//! issues across repositories on the GitHub simulator (webhooks, real git, real merges, instant
//! CI), the real controller on PostgreSQL, and runners over mTLS whose executor commits a file
//! per task and hands back a real git bundle ([`CommitExecutor`]) — everything but the agent.
//! [`run`] waits until every task has ended and reports throughput, CPU and the CI→merge tail.
//! With `controllers` > 1 the fleet runs on that many controller replicas on one database (the
//! runners spread over them, the webhooks alternating between them); with `model` the
//! controllers' triage and review calls go to the scripted model API, where they are counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::forge::github::GitHubConfig;
use controller::forge::labels;
use controller::llm::ModelConfig;
use controller::store::repos::{NewRepo, RepoSettings};
use runner::executor::{Executor, TaskContext};
use runner::task::{ExecResult, Outcome, Usage};
use sim::github::GitHubSim;
use sim::model::{ModelSim, Script};

use crate::harness::{Configure, Options, TestController, enroll, spawn_runner_with, state_dir};

const TOKEN: &str = "ghs_fleet";
const SECRET: &str = "whsec-fleet";
/// The model API key the simulator expects.
pub const MODEL_KEY: &str = "sk-fleet";

/// An executor that leaves behind what an agent's run would, without the agent and at the least
/// cost, so the benchmark measures the controller rather than its stand-in runners: one new file
/// committed on the task's branch and handed back as a real git bundle. Each repository is cloned
/// once (bare); a task's commit is made with plumbing on the repository's first `main` (no
/// checkout, no fetch), which merges cleanly since every task adds its own file.
pub struct CommitExecutor {
    work: PathBuf,
    mirrors: tokio::sync::Mutex<std::collections::HashMap<String, Arc<Mirror>>>,
}

/// A bare clone and what a commit on its first `main` needs.
struct Mirror {
    dir: PathBuf,
    base: String,
    /// `git ls-tree` of the base commit's root, one entry per line.
    tree: String,
}

async fn git_in(
    cwd: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = xcmd::Cmd::new("git", cwd)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "fleet")
        .env("GIT_AUTHOR_EMAIL", "fleet@example.invalid")
        .env("GIT_COMMITTER_NAME", "fleet")
        .env("GIT_COMMITTER_EMAIL", "fleet@example.invalid")
        .to_tokio()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl CommitExecutor {
    /// Works under `work`.
    pub fn new(work: PathBuf) -> Self {
        Self {
            work,
            mirrors: Default::default(),
        }
    }

    async fn mirror(&self, clone_url: &str, default_branch: &str) -> anyhow::Result<Arc<Mirror>> {
        let mut all = self.mirrors.lock().await;
        if let Some(m) = all.get(clone_url) {
            return Ok(m.clone());
        }
        let dir = self.work.join(format!("mirror-{}", all.len()));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        git_in(
            &self.work,
            &[
                "clone",
                "--quiet",
                "--bare",
                "--branch",
                default_branch,
                clone_url,
                &dir.to_string_lossy(),
            ],
            None,
        )
        .await?;
        let base = git_in(&dir, &["rev-parse", "HEAD"], None).await?;
        let tree = git_in(&dir, &["ls-tree", &base], None).await?;
        let m = Arc::new(Mirror { dir, base, tree });
        all.insert(clone_url.to_owned(), m.clone());
        Ok(m)
    }

    async fn commit(&self, ctx: &TaskContext) -> anyhow::Result<ExecResult> {
        let spec = &ctx.assignment.spec;
        let lease = &ctx.assignment.lease;
        let branch = spec
            .branch
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the controller named no branch"))?;
        let m = self.mirror(&spec.clone_url, &spec.default_branch).await?;
        let file = format!("task-{}-{}.txt", lease.task_id, lease.attempt);
        let blob = git_in(
            &m.dir,
            &["hash-object", "-w", "--stdin"],
            Some(&format!("{}\n", spec.title)),
        )
        .await?;
        let listing = format!("{}\n100644 blob {blob}\t{file}\n", m.tree);
        let tree = git_in(&m.dir, &["mktree"], Some(&listing)).await?;
        let head = git_in(
            &m.dir,
            &["commit-tree", &tree, "-p", &m.base, "-m", &spec.title],
            None,
        )
        .await?;
        let local = format!("refs/heads/{branch}");
        git_in(&m.dir, &["update-ref", &local, &head], None).await?;
        let out = self
            .work
            .join(format!("{}-{}.bundle", lease.task_id, lease.attempt));
        git_in(
            &m.dir,
            &[
                "bundle",
                "create",
                "--quiet",
                &out.to_string_lossy(),
                &local,
                &format!("^{}", m.base),
            ],
            None,
        )
        .await?;
        let bundle = tokio::fs::read(&out).await?;
        let _ = tokio::fs::remove_file(&out).await;
        let mut r = ExecResult::new(Outcome::Succeeded);
        r.branch = Some(branch);
        r.head_sha = Some(head);
        r.bundle = Some(bundle);
        r.summary = format!("added {file}");
        r.usage = Usage {
            input_tokens: 1000,
            output_tokens: 100,
            cost_microusd: 4_500,
            ..Usage::default()
        };
        Ok(r)
    }
}

#[async_trait::async_trait]
impl Executor for CommitExecutor {
    fn backends(&self) -> Vec<String> {
        vec!["claude".into()]
    }

    async fn run(&self, ctx: TaskContext) -> ExecResult {
        match self.commit(&ctx).await {
            Ok(r) => r,
            Err(e) => {
                let mut r = ExecResult::new(Outcome::AgentFailed);
                r.error = Some(format!("{e:#}"));
                r
            }
        }
    }
}

/// The size of a fleet run.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Labelled issues filed.
    pub issues: usize,
    /// Repositories they are spread over.
    pub repos: usize,
    /// Runners (one task at a time each).
    pub runners: usize,
    /// Stages each controller works on at once.
    pub stage_concurrency: usize,
    /// Controller replicas on the one database.
    pub controllers: usize,
    /// Whether triage and review go to the scripted model API (else no model is configured).
    pub model: bool,
    /// Longest the run may take before what is left counts as stuck.
    pub limit: Duration,
}

/// What a fleet run measured.
#[derive(Clone)]
pub struct Report {
    /// From the first issue filed to the last task ended.
    pub wall: Duration,
    /// Tasks merged.
    pub merged: usize,
    /// Tasks that ended otherwise (failed, canceled), with their status and error.
    pub ended_otherwise: Vec<(i64, String, Option<String>)>,
    /// Tasks still under way at the limit.
    pub stuck: Vec<(i64, String)>,
    /// CPU seconds of this process (controller, runners, simulator) and of the git processes it
    /// waited for, over the run.
    pub cpu_process: f64,
    /// CPU seconds of the git children.
    pub cpu_children: f64,
    /// CPU seconds of PostgreSQL's processes.
    pub cpu_postgres: f64,
    /// `ci_wait` (green) → merged, p50 and p99, seconds.
    pub ci_to_merged: (f64, f64),
    /// The simulators as the run left them (comments, requests).
    pub sims: Sims,
    /// The issues filed: repository and number.
    pub issues: Vec<(String, u64)>,
}

/// This process's (user + system, children's user + system) CPU seconds.
fn own_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // After the command: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
    let at = |n: usize| f.get(n - 3).copied().unwrap_or(0.0) / 100.0;
    (at(14) + at(15), at(16) + at(17))
}

/// CPU seconds of every `postgres` process on the machine.
fn postgres_cpu() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if !stat.contains("(postgres)") {
            continue;
        }
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        total += (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0;
    }
    total
}

/// The simulators a fleet works against — GitHub (repositories `fleet/repo<i>`, each public
/// with one commit on `main`, CI green by default) and, optionally, the scripted model API with
/// enough answers for every triage and review call — both served on `bind`.
#[derive(Clone)]
pub struct Sims {
    /// The GitHub simulator.
    pub gh: GitHubSim,
    /// Its URL.
    pub gh_url: String,
    /// The model simulator.
    pub model: Option<ModelSim>,
    /// Its URL.
    pub model_url: Option<String>,
    /// The repositories' names.
    pub names: Vec<String>,
}

impl Sims {
    /// Starts the simulators for `repos` repositories and `issues` issues.
    pub async fn start(
        bind: std::net::IpAddr,
        token: &str,
        repos: usize,
        issues: usize,
        model: bool,
    ) -> Self {
        let gh = GitHubSim::new(&state_dir("fleet-gh"), token);
        gh.set_default_ci("success");
        let names: Vec<String> = (0..repos).map(|i| format!("fleet/repo{i}")).collect();
        for name in &names {
            gh.create_repo(name, "main", &[("README.md", "# fleet\n")])
                .expect("repository");
            gh.set_public(name);
        }
        let l = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
        let gh_url = format!("http://{}", l.local_addr().unwrap());
        gh.serve(l);
        let model = model.then(|| ModelSim::new(Some(MODEL_KEY.into())));
        let mut model_url = None;
        if let Some(m) = &model {
            let l = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
            model_url = Some(format!("http://{}", l.local_addr().unwrap()));
            m.serve(l);
            // Enough answers for every triage and review call the run can make.
            let triage: Vec<&str> = vec!["[]"; issues];
            m.add_script(Script::says("Triage these issues", &triage));
            let single: Vec<&str> =
                vec!["{\"model\": \"sonnet\", \"complexity\": \"simple\"}"; issues];
            m.add_script(Script::says("Classify this issue", &single));
            let approve: Vec<&str> = vec!["VERDICT: APPROVE"; 2 * issues];
            m.add_script(Script::says("review this pull request", &approve));
        }
        Self {
            gh,
            gh_url,
            model,
            model_url,
            names,
        }
    }

    /// Registers the repositories with the controller, fully automatic.
    pub async fn add_repos(&self, store: &controller::store::Store) {
        for name in &self.names {
            let repo = store
                .add_repo(&NewRepo {
                    name: name.clone(),
                    clone_url: format!("{}/{name}.git", self.gh_url),
                    default_branch: "main".into(),
                })
                .await
                .unwrap();
            store
                .update_repo(
                    repo.id,
                    &RepoSettings {
                        approval_mode: Some("full-auto".into()),
                        ..RepoSettings::default()
                    },
                )
                .await
                .unwrap();
        }
    }

    /// Files `n` labelled issues (`Fleet change <i>`, by alice) round the repositories, each
    /// with the webhook GitHub sends for the label, delivered to the webhook URLs in turn.
    pub async fn file_issues(
        &self,
        n: usize,
        secret: &str,
        webhooks: &[String],
    ) -> Vec<(String, u64)> {
        let mut issues = Vec::new();
        for i in 0..n {
            let repo = &self.names[i % self.names.len()];
            let title = format!("Fleet change {i}");
            let number =
                self.gh
                    .create_issue(repo, &title, "add one file", "alice", &[labels::TRIGGER]);
            issues.push((repo.clone(), number));
            self.gh.set_webhook(&webhooks[i % webhooks.len()], secret);
            self.gh
                .deliver(
                    "issues",
                    serde_json::json!({
                        "action": "labeled",
                        "label": {"name": labels::TRIGGER},
                        "issue": {"number": number, "title": title, "body": "add one file", "state": "open",
                                  "user": {"login": "alice"}, "labels": [{"name": labels::TRIGGER}]},
                        "repository": {"full_name": repo},
                    }),
                )
                .await;
        }
        issues
    }

    /// What was done more (or less) than once for `issues`, each meant to end merged: every
    /// milestone comment once and no comment twice, one pull request and one commit on `main`
    /// per task, one triage call per issue (with a model). Empty when all is as it should be.
    pub fn effects_not_once(&self, issues: &[(String, u64)]) -> Vec<String> {
        let mut wrong = Vec::new();
        for (repo, n) in issues {
            let comments = self.gh.comments(repo, *n);
            let mut unique = comments.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != comments.len() {
                wrong.push(format!("{repo}#{n}: a comment posted twice: {comments:#?}"));
            }
            for milestone in ["accepted this issue", "Opened pull request", "Merged in"] {
                let times = comments.iter().filter(|c| c.contains(milestone)).count();
                if times != 1 {
                    wrong.push(format!(
                        "{repo}#{n}: `{milestone}` {times} times: {comments:#?}"
                    ));
                }
            }
        }
        let requests = self.gh.requests();
        let pulls = requests
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/pulls"))
            .count();
        if pulls != issues.len() {
            wrong.push(format!(
                "{pulls} pull requests opened for {} tasks",
                issues.len()
            ));
        }
        // A merge refused because another one just moved the base branch is tried again (as
        // on GitHub), so requests may exceed merges; what counts is the effect: one commit on
        // each repository's main per task merged there (squash), none twice.
        let mut merges = 0;
        for repo in &self.names {
            let out = xcmd::Cmd::new("git", self.gh.git_dir(repo))
                .args(["rev-list", "--count", "refs/heads/main"])
                .to_std()
                .output()
                .unwrap();
            let commits: usize = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(1);
            merges += commits - 1;
        }
        if merges != issues.len() {
            wrong.push(format!(
                "{merges} merges on main for {} tasks",
                issues.len()
            ));
        }
        if let Some(model) = &self.model {
            let triage: Vec<String> = model
                .received()
                .iter()
                .filter(|q| {
                    q.last_user_text.contains("Triage these issues")
                        || q.last_user_text.contains("Classify this issue")
                })
                .map(|q| q.last_user_text.clone())
                .collect();
            for i in 0..issues.len() {
                // The title as the prompt fences it, on a line of its own.
                let title = format!("\nFleet change {i}\n");
                let calls = triage.iter().filter(|t| t.contains(&title)).count();
                if calls != 1 {
                    wrong.push(format!("issue {i} triaged in {calls} calls"));
                }
            }
        }
        wrong
    }
}

/// Runs a fleet and waits until every task has ended (or the limit passed).
pub async fn run(fleet: Fleet) -> Report {
    crate::harness::init();
    let sims = Sims::start(
        "127.0.0.1".parse().unwrap(),
        TOKEN,
        fleet.repos,
        fleet.issues,
        fleet.model,
    )
    .await;
    let (gh_for_config, concurrency) = (sims.gh_url.clone(), fleet.stage_concurrency);
    let model_url = sims.model_url.clone();
    let options = Options {
        lease: Duration::from_secs(60),
        heartbeat: Duration::from_secs(5),
        configure: Configure(Some(Arc::new(move |cfg| {
            cfg.github = Some(GitHubConfig::with_token(&gh_for_config, TOKEN));
            if let Some(url) = &model_url {
                cfg.model = Some(ModelConfig {
                    base_url: url.clone(),
                    api_key: MODEL_KEY.into(),
                    timeout: Duration::from_secs(30),
                    cli: None,
                });
            }
            cfg.webhook_secret = SECRET.into();
            cfg.allowed_users = vec!["alice".into()];
            cfg.poll_interval = Duration::from_secs(3600);
            cfg.pipeline.ci_poll = Duration::from_millis(200);
            cfg.pipeline.concurrency = concurrency;
            cfg.max_db_connections = 40;
        }))),
        ..Options::default()
    };
    let mut controllers = vec![TestController::start(options.clone()).await];
    for _ in 1..fleet.controllers.max(1) {
        controllers.push(
            TestController::start_on_database(controllers[0].db_url().to_owned(), options.clone())
                .await,
        );
    }
    let c = &controllers[0];
    sims.add_repos(&c.store).await;
    let work = state_dir("fleet-work");
    std::fs::create_dir_all(&work).unwrap();
    let exec = Arc::new(CommitExecutor::new(work));
    let mut runners = Vec::new();
    for i in 0..fleet.runners {
        let at = &controllers[i % controllers.len()];
        let (id, dir) = enroll(at, &format!("fleet-r{i}"), &[]).await;
        runners.push(spawn_runner_with(id, &dir, exec.clone(), 1));
    }

    let cpu0 = (own_cpu(), postgres_cpu());
    let t0 = Instant::now();
    let webhooks: Vec<String> = controllers
        .iter()
        .map(|c| format!("http://{}/api/github/webhook", c.http))
        .collect();
    let issues = sims.file_issues(fleet.issues, SECRET, &webhooks).await;
    // Every issue becomes a task, and every task ends.
    let deadline = t0 + fleet.limit;
    let terminal = controller::store::lifecycle::status_texts(controller::store::Status::TERMINAL);
    loop {
        let (total, open): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status <> ALL($1)) FROM tasks")
                .bind(&terminal)
                .fetch_one(c.store.pool())
                .await
                .unwrap();
        if (total as usize >= fleet.issues && open == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed();
    // Milestones follow each task's timeline on their own: give them a bounded time to reflect
    // the last entries on GitHub before the controllers stop.
    let caught_up = Instant::now() + Duration::from_secs(60);
    while Instant::now() < caught_up {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE source = 'issue' AND forge_synced_seq < ev_seq",
        )
        .fetch_one(c.store.pool())
        .await
        .unwrap();
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu1 = (own_cpu(), postgres_cpu());
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, error FROM tasks ORDER BY id")
            .fetch_all(c.store.pool())
            .await
            .unwrap();
    let merged = rows.iter().filter(|r| r.1 == "merged").count();
    let ended_otherwise = rows
        .iter()
        .filter(|r| matches!(r.1.as_str(), "failed" | "canceled"))
        .cloned()
        .collect();
    let stuck = rows
        .iter()
        .filter(|r| !matches!(r.1.as_str(), "merged" | "failed" | "canceled"))
        .map(|r| (r.0, r.1.clone()))
        .collect();
    let tail: (Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH m AS (SELECT task_id, at FROM task_events WHERE to_status = 'merged'), \
              c AS (SELECT DISTINCT ON (e.task_id) e.task_id, EXTRACT(EPOCH FROM m.at - e.at)::float8 AS s \
                    FROM task_events e JOIN m ON m.task_id = e.task_id \
                    WHERE e.to_status = 'ci_wait' AND e.at <= m.at ORDER BY e.task_id, e.at DESC) \
         SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s) FROM c",
    )
    .fetch_one(c.store.pool())
    .await
    .unwrap();
    for r in runners {
        let _ = r.stop().await;
    }
    for c in controllers {
        c.stop().await;
    }
    Report {
        wall,
        merged,
        ended_otherwise,
        stuck,
        cpu_process: (cpu1.0.0 - cpu0.0.0),
        cpu_children: (cpu1.0.1 - cpu0.0.1),
        cpu_postgres: cpu1.1 - cpu0.1,
        ci_to_merged: (tail.0.unwrap_or(0.0), tail.1.unwrap_or(0.0)),
        sims,
        issues,
    }
}

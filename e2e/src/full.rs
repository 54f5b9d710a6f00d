//! The whole system on one machine for tests and benchmarks: the GitHub simulator with a
//! repository, the scripted model server, a controller configured for both, and one runner with
//! the real Docker sandbox and the real agent CLIs (Claude Code, and the Codex CLI through the
//! simulator's Responses API).

use std::sync::Arc;
use std::time::Duration;

use controller::forge::github::GitHubConfig;
use controller::llm::ModelConfig;
use controller::store::Task;
use controller::store::repos::{NewRepo, Repo, RepoSettings};
use runner::gateway::Credential;
use runner::sandbox_executor::ExecConfig;
use sim::github::GitHubSim;
use sim::model::{ModelSim, Script};

use crate::harness::{
    Configure, Options, RunnerHandle, TestController, enroll, free_port, spawn_runner_with,
    state_dir,
};

/// API key of the model simulator.
pub const KEY: &str = "sk-model-key";
/// Token of the GitHub simulator.
pub const TOKEN: &str = "ghs_e2e";
/// Webhook secret.
pub const SECRET: &str = "whsec-e2e";

/// A running system.
pub struct FullSystem {
    /// The controller.
    pub c: TestController,
    /// GitHub.
    pub gh: GitHubSim,
    /// The model API.
    pub model: ModelSim,
    /// The runner.
    pub runner: RunnerHandle,
    /// The repository, as registered.
    pub repo: Repo,
    /// Its `owner/name`.
    pub name: String,
}

/// A script that answers every request containing `selector` with `texts`, in order.
pub fn says(selector: &str, texts: &[&str]) -> Script {
    Script::says(selector, texts)
}

/// An agent that writes `first` to `path`, and when a later prompt contains `fix_when` (a CI
/// log, review feedback), writes `fixed` instead.
pub fn agent_script(mark: &str, path: &str, first: &str, fix_when: &str, fixed: &str) -> Script {
    Script::writes_then_fixes(mark, path, first, fix_when, fixed)
}

impl FullSystem {
    /// Starts everything; `files` seed the repository, `settings` configure it.
    pub async fn start(tag: &str, files: &[(&str, &str)], settings: RepoSettings) -> Self {
        crate::harness::init();
        let name = format!("acme/{tag}");
        let gh = GitHubSim::new(&state_dir("gh"), TOKEN);
        gh.create_repo(&name, "main", files).expect("repository");
        gh.set_public(&name);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gh_url = format!("http://{}", l.local_addr().unwrap());
        gh.serve(l);
        let model = ModelSim::new(Some(KEY.into()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let model_url = format!("http://{}", l.local_addr().unwrap());
        model.serve(l);

        let (gh_for_config, model_for_config) = (gh_url.clone(), model_url.clone());
        let c = TestController::start(Options {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            configure: Configure(Some(Arc::new(move |cfg| {
                cfg.github = Some(GitHubConfig::with_token(&gh_for_config, TOKEN));
                cfg.model = Some(ModelConfig {
                    base_url: model_for_config.clone(),
                    api_key: KEY.into(),
                    timeout: Duration::from_secs(30),
                    cli: None,
                });
                cfg.webhook_secret = SECRET.into();
                cfg.allowed_users = vec!["alice".into()];
                cfg.poll_interval = Duration::from_secs(3600);
                cfg.pipeline.ci_poll = Duration::from_millis(250);
            }))),
            ..Options::default()
        })
        .await;
        gh.set_webhook(&format!("http://{}/api/github/webhook", c.http), SECRET);
        let repo = c
            .store
            .add_repo(&NewRepo {
                name: name.clone(),
                clone_url: format!("{gh_url}/{name}.git"),
                default_branch: "main".into(),
            })
            .await
            .unwrap();
        let repo = c.store.update_repo(repo.id, &settings).await.unwrap();

        let runner_name = format!("{tag}-{}", std::process::id());
        let (id, dir) = enroll(&c, &runner_name, &[]).await;
        let exec = runner::start::executor(runner::start::Setup {
            name: runner_name,
            image: None,
            model_api: model_url.clone(),
            credential: Credential::ApiKey(KEY.into()),
            // The same simulator answers the Codex CLI's Responses API.
            openai: Some(runner::start::OpenAi {
                url: model_url.clone(),
                key: KEY.into(),
            }),
            exec: ExecConfig {
                agent_timeout: Duration::from_secs(120),
                stall_timeout: Duration::from_secs(120),
                verify_timeout: Duration::from_secs(60),
                max_verify_fixes: 1,
                ..ExecConfig::new(dir.clone(), free_port())
            },
        })
        .await
        .expect("docker, the agent image, and the executor starts");
        let runner = spawn_runner_with(id, &dir, Arc::new(exec), 1);
        Self {
            c,
            gh,
            model,
            runner,
            repo,
            name,
        }
    }

    /// The task the webhook made for issue `number` (waits up to 30 s).
    pub async fn task_of_issue(&self, number: u64) -> i64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row: Option<i64> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE repo_id = $1 AND issue_number = $2")
                    .bind(self.repo.id)
                    .bind(number as i64)
                    .fetch_optional(self.c.store.pool())
                    .await
                    .unwrap();
            if let Some(id) = row {
                return id;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the webhook made no task for issue {number}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `cond` holds for the task; panics with its timeline after `timeout`.
    pub async fn wait_for(
        &self,
        id: i64,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Task) -> bool,
    ) -> Task {
        self.c.wait_for(id, what, timeout, cond).await
    }

    /// Stops the runner and the controller.
    pub async fn stop(self) {
        self.runner.stop().await.unwrap();
        self.c.stop().await;
    }
}

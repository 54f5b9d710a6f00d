//! The whole path on real parts: a labelled issue on the GitHub simulator (webhook) → task →
//! triage by the model → a runner over mTLS → the real Claude Code CLI in a Docker sandbox,
//! driven by the scripted model → bundle → push → PR → the reviewer model approves → CI red, the
//! failed log goes back to the agent on the same branch (after a reflection) → CI green → merged,
//! issue closed, labels moved, a learning written. Skipped with `BP_SKIP_DOCKER=1`.

use std::sync::Arc;
use std::time::Duration;

use controller::forge::github::GitHubConfig;
use controller::forge::labels;
use controller::model::ModelConfig;
use controller::store::repos::{NewRepo, RepoSettings};
use controller::store::{Status, Task};
use e2e::harness::{
    Configure, Options, TestController, enroll, free_port, skip_docker, spawn_runner_with,
    state_dir,
};
use runner::gateway::{Credential, Gateway, Prices};
use runner::sandbox::{Sandbox, SandboxConfig};
use runner::sandbox_executor::{ExecConfig, SandboxExecutor};
use sim::github::GitHubSim;
use sim::model::{Match, ModelSim, Script, Step, ToolCall};

const KEY: &str = "sk-model-key";
const TOKEN: &str = "ghs_e2e";
const SECRET: &str = "whsec-e2e";
const REPO: &str = "acme/full";

fn says(selector: &str, texts: &[&str]) -> Script {
    Script {
        selector: selector.into(),
        steps: texts
            .iter()
            .map(|t| Step {
                text: (*t).into(),
                ..Step::default()
            })
            .collect(),
    }
}

async fn wait_for(c: &TestController, id: i64, what: &str, cond: impl Fn(&Task) -> bool) -> Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let t = c.store.task(id).await.unwrap();
        if cond(&t) {
            return t;
        }
        if tokio::time::Instant::now() > deadline {
            let timeline: Vec<String> = c
                .store
                .timeline(id)
                .await
                .unwrap()
                .iter()
                .map(|e| {
                    format!(
                        "{} → {} ({}) {:?}",
                        e.from_status.clone().unwrap_or_default(),
                        e.to_status,
                        e.reason,
                        e.data.as_ref().map(|d| d.0.to_string())
                    )
                })
                .collect();
            panic!(
                "timed out waiting for {what}; task is {} ({:?})\n{}",
                t.status,
                t.error,
                timeline.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_labelled_issue_becomes_a_merged_pr_through_the_real_cli_with_a_ci_retry() {
    if skip_docker() {
        return;
    }
    e2e::harness::init();
    // GitHub and the model API, simulated.
    let gh = GitHubSim::new(&state_dir("gh"), TOKEN);
    gh.create_repo(
        REPO,
        "main",
        &[("README.md", "# full\n"), ("config/values.txt", "one=1\n")],
    )
    .unwrap();
    gh.set_public(REPO);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gh_url = format!("http://{}", l.local_addr().unwrap());
    gh.serve(l);
    let model = ModelSim::new(Some(KEY.into()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model_url = format!("http://{}", l.local_addr().unwrap());
    model.serve(l);
    // The controller's own calls first: their prompts also quote the issue.
    model.add_script(says(
        "Classify this issue",
        &["{\"model\": \"sonnet\", \"complexity\": \"simple\"}"],
    ));
    model.add_script(says(
        "review this pull request",
        &[
            "Adds the value as asked.\nVERDICT: APPROVE",
            "Now returns two.\nVERDICT: APPROVE",
        ],
    ));
    model.add_script(says(
        "How the attempt ended",
        &["Cause: the check expects two=2.\nNext: set two=2."],
    ));
    // The agent: writes a wrong value, then fixes it when the CI log comes back.
    model.add_script(Script {
        selector: "MARK-FULL".into(),
        steps: vec![
            Step {
                when: Match {
                    tool_result: Some(false),
                    ..Match::default()
                },
                tools: vec![ToolCall::write("/workspace/config/two.txt", "two=3\n")],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Added config/two.txt.".into(),
                ..Step::default()
            },
            Step {
                when: Match {
                    contains: Some("expected two=2".into()),
                    ..Match::default()
                },
                tools: vec![ToolCall::edit(
                    "/workspace/config/two.txt",
                    "two=3",
                    "two=2",
                )],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Fixed the value.".into(),
                ..Step::default()
            },
        ],
    });

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
            name: REPO.into(),
            clone_url: format!("{gh_url}/{REPO}.git"),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    c.store
        .update_repo(
            repo.id,
            &RepoSettings {
                approval_mode: Some("full-auto".into()),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();

    // A runner with the real sandbox.
    let name = format!("full-{}", std::process::id());
    let (id, dir) = enroll(&c, &name, &[]).await;
    let gateway = Gateway::new(
        &model_url,
        Credential::ApiKey(KEY.into()),
        Prices::default(),
    )
    .unwrap();
    let sandbox = Sandbox::connect(SandboxConfig {
        runner: name.clone(),
        ..SandboxConfig::default()
    })
    .await
    .expect("docker and the agent image");
    let exec = SandboxExecutor::start(
        ExecConfig {
            state_dir: dir.clone(),
            agent_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            verify_timeout: Duration::from_secs(60),
            max_verify_fixes: 1,
            gateway_port: free_port(),
        },
        sandbox,
        gateway,
    )
    .await
    .expect("executor starts");
    let runner = spawn_runner_with(id, &dir, Arc::new(exec), 1);

    // Someone labels an issue.
    let number = gh
        .open_issue(
            REPO,
            "Add two MARK-FULL",
            "Add config/two.txt with two=2.",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let task_id = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row: Option<i64> =
                sqlx::query_scalar("SELECT id FROM tasks WHERE issue_number = $1")
                    .bind(number as i64)
                    .fetch_optional(c.store.pool())
                    .await
                    .unwrap();
            if let Some(id) = row {
                break id;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the webhook made no task"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // First round: the PR is opened, reviewed, and CI goes red with a log.
    let t = wait_for(&c, task_id, "CI of the first push", |t| {
        t.status == Status::CiWait
    })
    .await;
    let first_head = t.head_sha.clone().unwrap();
    let pr = t.pr_number.unwrap() as u64;
    gh.fail_ci(
        REPO,
        &first_head,
        "check config: expected two=2, found two=3\nError: Process completed with exit code 1.",
    );
    // Second round on the same branch and PR.
    let t = wait_for(&c, task_id, "CI of the fix", |t| {
        t.status == Status::CiWait && t.head_sha.as_deref() != Some(first_head.as_str())
    })
    .await;
    assert_eq!(t.pr_number, Some(pr as i64), "the same PR");
    assert_eq!(t.ci_retries, 1);
    gh.set_ci(REPO, t.head_sha.as_deref().unwrap(), "success");
    let t = wait_for(&c, task_id, "the merge", |t| t.status == Status::Merged).await;

    // GitHub shows it.
    assert_eq!(gh.state_of(REPO, pr), Some(("closed".into(), true)));
    let main = gh.branch_head(REPO, "main").unwrap();
    let out = xcmd::Cmd::new("git", gh.git_dir(REPO))
        .args(["show", &format!("{main}:config/two.txt")])
        .to_std()
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two=2\n");
    assert_eq!(
        gh.branch_head(REPO, t.branch.as_deref().unwrap()),
        None,
        "branch deleted"
    );
    let issue_done = async {
        loop {
            let labels = gh.labels(REPO, number);
            if labels.contains(&labels::DONE.to_owned())
                && gh.state_of(REPO, number).map(|s| s.0) == Some("closed".into())
            {
                return labels;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let labels = tokio::time::timeout(Duration::from_secs(20), issue_done)
        .await
        .expect("issue labelled done and closed");
    assert!(
        !labels.contains(&labels::IN_PROGRESS.to_owned()),
        "{labels:?}"
    );
    assert!(!labels.contains(&labels::TRIGGER.to_owned()), "{labels:?}");
    let comments = gh.comments(REPO, number);
    for want in ["accepted", "Opened pull request", "Merged"] {
        assert!(
            comments.iter().any(|c| c.contains(want)),
            "{want} missing in {comments:?}"
        );
    }

    // The CI log and the diagnosis reached the agent's second run.
    let received = model.received();
    let fix_prompt = received
        .iter()
        .find(|r| {
            let body = r.body.to_string();
            body.contains("Earlier attempts") && body.contains("expected two=2")
        })
        .expect("the retry prompt carries the CI log");
    if !fix_prompt
        .body
        .to_string()
        .contains("the check expects two=2")
    {
        let fix_prompt = fix_prompt.body.to_string();
        let timeline: Vec<String> = c
            .store
            .timeline(task_id)
            .await
            .unwrap()
            .iter()
            .map(|e| format!("{:?} → {} ({})", e.from_status, e.to_status, e.reason))
            .collect();
        let asked: Vec<String> = received
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.model,
                    r.last_user_text.chars().take(80).collect::<String>()
                )
            })
            .collect();
        panic!(
            "the diagnosis is not in the retry prompt:\n{}\n\n{}\n\n{}",
            fix_prompt,
            timeline.join("\n"),
            asked.join("\n")
        );
    }
    assert!(
        gh.requests()
            .iter()
            .any(|(_, p)| p.contains("/actions/jobs/")),
        "the failed job log was fetched"
    );
    // Every purpose is in the usage ledger; a learning records the outcome.
    let purposes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT purpose FROM usage_ledger WHERE task_id = $1 ORDER BY 1",
    )
    .bind(task_id)
    .fetch_all(c.store.pool())
    .await
    .unwrap();
    for p in ["reflection", "review", "triage"] {
        assert!(
            purposes.contains(&p.to_owned()),
            "{p} missing in {purposes:?}"
        );
    }
    let learning = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = c.store.recent_learnings(repo.id, 5).await.unwrap();
            if let Some(x) = l.into_iter().find(|(o, _)| o == "merged") {
                return x.1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a learning for the merge");
    assert!(learning.contains("config/two.txt"), "{learning}");

    runner.stop().await.unwrap();
    c.stop().await;
}

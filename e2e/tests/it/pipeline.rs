//! The whole path on real parts: a labelled issue on the GitHub simulator (webhook) → task →
//! triage by the model → a runner over mTLS → the real Claude Code CLI in a Docker sandbox,
//! driven by the scripted model → bundle → push → PR → the reviewer model approves → CI red, the
//! failed log goes back to the agent on the same branch (after a reflection) → CI green → merged,
//! issue closed, labels moved, a learning written. Skipped with `BP_SKIP_DOCKER=1`.

use std::time::Duration;

use controller::forge::labels;
use controller::store::repos::RepoSettings;
use controller::store::{Status, Task};
use e2e::full::{FullSystem, agent_script, says};
use e2e::harness::skip_docker;

const REPO: &str = "acme/full";

async fn wait_for(sys: &FullSystem, id: i64, what: &str, cond: impl Fn(&Task) -> bool) -> Task {
    sys.wait_for(id, what, Duration::from_secs(240), cond).await
}

#[tokio::test]
async fn a_labelled_issue_becomes_a_merged_pr_through_the_real_cli_with_a_ci_retry() {
    if skip_docker() {
        return;
    }
    let sys = FullSystem::start(
        "full",
        &[("README.md", "# full\n"), ("config/values.txt", "one=1\n")],
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            verify_command: Some("grep -q one=1 config/values.txt".into()),
            ..RepoSettings::default()
        },
    )
    .await;
    let (gh, model, c, repo) = (&sys.gh, &sys.model, &sys.c, &sys.repo);
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
    model.add_script(agent_script(
        "MARK-FULL",
        "/workspace/config/two.txt",
        "two=3\n",
        "expected two=2",
        "two=2\n",
    ));

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
    let task_id = sys.task_of_issue(number).await;

    // First round: the PR is opened, reviewed, and CI goes red with a log.
    let t = wait_for(&sys, task_id, "CI of the first push", |t| {
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
    let t = wait_for(&sys, task_id, "CI of the fix", |t| {
        t.status == Status::CiWait && t.head_sha.as_deref() != Some(first_head.as_str())
    })
    .await;
    assert_eq!(t.pr_number, Some(pr as i64), "the same PR");
    assert_eq!(t.ci_retries, 1);
    gh.set_ci(REPO, t.head_sha.as_deref().unwrap(), "success");
    let t = wait_for(&sys, task_id, "the merge", |t| t.status == Status::Merged).await;

    // GitHub shows it.
    assert_eq!(gh.state_of(REPO, pr), Some(("closed".into(), true)));
    let main = gh.branch_head(REPO, "main").unwrap();
    let out = xcmd::Cmd::new("git", gh.git_dir(REPO))
        .args(["show", &format!("{main}:config/two.txt")])
        .to_std()
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two=2\n");
    // The branch goes right after the merge is recorded: wait for it (bounded).
    let branch = t.branch.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while gh.branch_head(REPO, &branch).is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("branch deleted");
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
    for p in ["agent", "reflection", "review", "triage"] {
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

    // Both pushed attempts carry a signed record: the sandbox's commands, verify on the base
    // and the head, the ledger, the transcript's hash; the second is named on the same PR.
    let signer = controller::evidence::Signer::load(&c.store).await.unwrap();
    let stored = c
        .store
        .evidence(task_id, t.attempt)
        .await
        .unwrap()
        .expect("the merged attempt's record");
    let record = controller::evidence::valid(&signer, &t, &stored.head_sha, &stored)
        .expect("signed by the controller");
    assert!(
        c.store.evidence(task_id, 1).await.unwrap().is_some(),
        "the first push's record"
    );
    assert_eq!(record["runner_reported"], true, "{record}");
    let steps: Vec<&str> = record["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["verify_base", "agent", "verify", "finish"],
        "{record}"
    );
    assert!(
        record["commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["exit_code"] == 0 && c["duration_ms"].is_u64())
    );
    assert_eq!(record["verify"]["before"]["status"], "passed", "{record}");
    assert_eq!(record["verify"]["after"]["status"], "passed", "{record}");
    let purposes: Vec<&str> = record["model_calls"]["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["purpose"].as_str().unwrap())
        .collect();
    for p in ["triage", "review", "agent"] {
        assert!(purposes.contains(&p), "{p} missing in {purposes:?}");
    }
    assert!(
        record["model_calls"]["agent_turns"].as_i64().unwrap() >= 1,
        "{record}"
    );
    let trajectory = c
        .store
        .trajectory(task_id, t.attempt)
        .await
        .unwrap()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&trajectory).unwrap();
    assert_eq!(doc["format"], "backporcher.trajectory/1");
    assert!(
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "tool_call"),
        "{doc}"
    );
    use sha2::Digest;
    assert_eq!(
        record["trajectory"]["sha256"],
        hex::encode(sha2::Sha256::digest(trajectory.as_bytes()))
    );
    assert!(
        gh.comments(REPO, pr)
            .iter()
            .any(|c| c.contains(&format!("### Evidence (attempt {}", t.attempt))),
        "the second attempt's record is named on the PR"
    );

    sys.stop().await;
}

/// The `claude` binary of the agent image, copied out once per test process.
fn claude_from_image() -> std::path::PathBuf {
    let dir = e2e::harness::state_dir("claude-cli");
    let run = |args: &[&str]| {
        let out = xcmd::Cmd::new("docker", &dir)
            .args(args)
            .to_std()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let id = run(&["create", "backporcher-agent:latest", "true"]);
    let dest = dir.join("claude");
    run(&[
        "cp",
        &format!("{id}:/usr/local/bin/claude"),
        &dest.to_string_lossy(),
    ]);
    run(&["rm", &id]);
    dest
}

#[tokio::test]
async fn subscription_users_get_the_controllers_calls_through_claude_p() {
    if skip_docker() {
        return;
    }
    e2e::harness::init();
    let db = pgembed::testing::cluster()
        .await
        .fresh_database(&controller::store::MIGRATOR)
        .await
        .unwrap();
    let store = controller::store::Store::connect(&db.url, 4).await.unwrap();
    let repo = store
        .add_repo(&controller::store::repos::NewRepo {
            name: "acme/cli".into(),
            clone_url: "https://example.invalid/acme/cli.git".into(),
            default_branch: "main".into(),
        })
        .await
        .unwrap();
    let task = store
        .create_task(&controller::store::tasks::NewTask::for_issue(
            repo.id, 1, "Add two", "please",
        ))
        .await
        .unwrap();
    let sim = sim::model::ModelSim::new(Some("sk-ant-oat01-test".into()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    sim.serve(l);
    sim.add_script(says(
        "review this pull request",
        &["Looks right.\nVERDICT: APPROVE"],
    ));
    let client = controller::llm::ModelClient::new(
        controller::llm::ModelConfig {
            base_url: url,
            api_key: "sk-ant-oat01-test".into(),
            timeout: Duration::from_secs(60),
            cli: Some(claude_from_image()),
        },
        store.clone(),
    )
    .unwrap();
    let reviewer = controller::pipeline::review::ModelReviewer {
        client,
        model: "sonnet".into(),
    };
    use controller::pipeline::Reviewer;
    let v = reviewer
        .review(&controller::pipeline::ReviewInput {
            task: task.id,
            repo: repo.id,
            title: "Add two".into(),
            body: "please".into(),
            diff: "+two".into(),
            blast_radius: None,
            plan: None,
            evidence: None,
        })
        .await
        .unwrap();
    assert!(v.approve, "{v:?}");
    let got = sim.received();
    assert!(
        got.iter().any(|r| r.credential == "sk-ant-oat01-test"
            && r.last_user_text.contains("review this pull request")),
        "the OAuth token reached the API through the CLI"
    );
    // The CLI runs on the controller's host with a prompt of untrusted text: it offers the
    // model no tool at all.
    for r in got
        .iter()
        .filter(|r| r.last_user_text.contains("review this pull request"))
    {
        let tools = r
            .body
            .get("tools")
            .and_then(|t| t.as_array())
            .map_or(0, Vec::len);
        assert_eq!(tools, 0, "tools offered: {}", r.body["tools"]);
    }
    let ledger: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_ledger WHERE purpose = 'review' AND input_tokens > 0",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(ledger, 1);
}

#[tokio::test]
async fn the_reviewer_rejects_once_and_review_merge_waits_for_an_approval() {
    if skip_docker() {
        return;
    }
    let sys = FullSystem::start("rej", &[("README.md", "# rej\n")], RepoSettings::default()).await;
    sys.gh.set_default_ci("success");
    sys.model
        .add_script(says("Classify this issue", &["{\"model\": \"sonnet\"}"]));
    sys.model.add_script(says(
        "review this pull request",
        &[
            "VERDICT: REJECT - the value must be two=2",
            "Correct now.\nVERDICT: APPROVE",
        ],
    ));
    sys.model.add_script(says(
        "How the attempt ended",
        &["Cause: wrong value.\nNext: write two=2."],
    ));
    sys.model.add_script(agent_script(
        "MARK-REJ",
        "/workspace/two.txt",
        "two=3\n",
        "must be two=2",
        "two=2\n",
    ));
    let number = sys
        .gh
        .open_issue(
            &sys.name,
            "Add two",
            "Write two.txt. MARK-REJ",
            "alice",
            &["backporcher"],
        )
        .await;
    let id = sys.task_of_issue(number).await;
    let t = sys
        .wait_for(id, "the approval hold", Duration::from_secs(240), |t| {
            t.status == Status::ApprovalHold
        })
        .await;
    assert_eq!(t.review_retries, 1);
    let timeline = sys.c.store.timeline(id).await.unwrap();
    assert!(timeline.iter().any(|e| e.reason == "review_rejected"));
    // The rejected PR was closed unmerged; the new one waits for a human.
    let pulls: Vec<(String, String)> = sys
        .gh
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "PATCH" && p.contains("/pulls/"))
        .collect();
    assert_eq!(pulls.len(), 1, "the rejected PR was closed: {pulls:?}");
    let pr = t.pr_number.unwrap() as u64;
    assert_eq!(sys.gh.state_of(&sys.name, pr), Some(("open".into(), false)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sys.c.store.task(id).await.unwrap().status,
        Status::ApprovalHold,
        "nothing merges by itself"
    );
    let who = controller::store::ops::Actor {
        name: "user:erin".into(),
        user_id: None,
    };
    sys.c
        .store
        .perform(id, &controller::store::ops::Op::Approve, &who)
        .await
        .unwrap();
    sys.wait_for(id, "the merge", Duration::from_secs(60), |t| {
        t.status == Status::Merged
    })
    .await;
    assert_eq!(
        sys.gh.state_of(&sys.name, pr),
        Some(("closed".into(), true))
    );
    let main = sys.gh.branch_head(&sys.name, "main").unwrap();
    let out = xcmd::Cmd::new("git", sys.gh.git_dir(&sys.name))
        .args(["show", &format!("{main}:two.txt")])
        .to_std()
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two=2\n");
    sys.stop().await;
}

#[tokio::test]
async fn two_dependent_issues_run_in_order() {
    if skip_docker() {
        return;
    }
    let sys = FullSystem::start(
        "dep",
        &[("README.md", "# dep\n")],
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            ..RepoSettings::default()
        },
    )
    .await;
    sys.gh.set_default_ci("success");
    let first = sys.gh.create_issue(
        &sys.name,
        "Create the table",
        "Add schema.sql. MARK-DEP-A",
        "alice",
        &[],
    );
    let second = sys.gh.create_issue(
        &sys.name,
        "Use the table",
        "Add query.sql. MARK-DEP-B",
        "alice",
        &[],
    );
    sys.model.add_script(says(
        "Triage these issues",
        &[&format!("[{{\"issue\": {first}, \"priority\": 50}}, {{\"issue\": {second}, \"priority\": 10, \"depends_on\": [{first}]}}]")],
    ));
    sys.model.add_script(says(
        "review this pull request",
        &["VERDICT: APPROVE", "VERDICT: APPROVE"],
    ));
    sys.model.add_script(agent_script(
        "MARK-DEP-A",
        "/workspace/schema.sql",
        "create table t();\n",
        "never",
        "",
    ));
    sys.model.add_script(agent_script(
        "MARK-DEP-B",
        "/workspace/query.sql",
        "select * from t;\n",
        "never",
        "",
    ));
    // Both labelled at once: one triage batch.
    for n in [first, second] {
        sys.gh.deliver("issues", serde_json::json!({
            "action": "labeled",
            "label": {"name": "backporcher"},
            "issue": {"number": n, "title": format!("issue {n}"), "body": if n == first { "Add schema.sql. MARK-DEP-A" } else { "Add query.sql. MARK-DEP-B" }, "state": "open", "user": {"login": "alice"}, "labels": [{"name": "backporcher"}]},
            "repository": {"full_name": sys.name},
        })).await;
    }
    let a = sys.task_of_issue(first).await;
    let b = sys.task_of_issue(second).await;
    sys.wait_for(b, "the second merge", Duration::from_secs(240), |t| {
        t.status == Status::Merged
    })
    .await;
    let a_events = sys.c.store.timeline(a).await.unwrap();
    let b_events = sys.c.store.timeline(b).await.unwrap();
    let a_merged = a_events
        .iter()
        .find(|e| e.to_status == "merged")
        .expect("the first merged")
        .at;
    let b_leased = b_events
        .iter()
        .find(|e| e.to_status == "leased")
        .unwrap()
        .at;
    assert!(
        b_leased > a_merged,
        "the dependent task waited for the first to merge"
    );
    assert_eq!(sys.c.store.dependencies(b).await.unwrap(), vec![a]);
    sys.stop().await;
}

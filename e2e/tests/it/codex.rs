//! The whole path with the second agent CLI: a labelled issue (`codex`) → task → triage → a runner
//! over mTLS → the real Codex CLI (`codex exec --json`, from the agent image) in a Docker sandbox,
//! driven by the scripted model over the Responses API through the runner's metering gateway →
//! bundle → push → PR → review → CI red, the log back to Codex on the same branch → CI green →
//! merged. And the fallback: a repository whose backend is Codex, the Responses API rate-limited,
//! the task goes on with Claude Code and merges, the switch on its timeline.
//! Skipped with `BP_SKIP_DOCKER=1`.

use std::time::Duration;

use controller::forge::labels;
use controller::store::repos::RepoSettings;
use controller::store::{Status, Task};
use e2e::full::{FullSystem, KEY, agent_script, says};
use e2e::harness::skip_docker;
use sim::model::Failure;

async fn wait_for(sys: &FullSystem, id: i64, what: &str, cond: impl Fn(&Task) -> bool) -> Task {
    sys.wait_for(id, what, Duration::from_secs(240), cond).await
}

/// The text of every agent log line of the task's `attempt`.
async fn agent_log(sys: &FullSystem, task: i64, attempt: i32) -> String {
    let mut out = String::new();
    for (_, stream, data) in sys.c.store.log_chunks(task, attempt).await.unwrap() {
        if stream == "agent" {
            out.push_str(&String::from_utf8_lossy(&data));
        }
    }
    out
}

#[tokio::test]
async fn a_codex_labelled_issue_becomes_a_merged_pr_through_the_real_codex_cli() {
    if skip_docker() {
        return;
    }
    let sys = FullSystem::start(
        "codex",
        &[("README.md", "# codex\n"), ("config/values.txt", "one=1\n")],
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            ..RepoSettings::default()
        },
    )
    .await;
    let (gh, model, c) = (&sys.gh, &sys.model, &sys.c);
    let repo = sys.name.clone();
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
    // The agent: writes a wrong value (an apply_patch through Codex), then fixes it when the CI
    // log comes back.
    model.add_script(agent_script(
        "MARK-CODEX",
        "/workspace/config/two.txt",
        "two=3\n",
        "expected two=2",
        "two=2\n",
    ));

    let number = gh
        .open_issue(
            &repo,
            "Add two MARK-CODEX",
            "Add config/two.txt with two=2.",
            "alice",
            &[labels::TRIGGER, labels::CODEX],
        )
        .await;
    let task_id = sys.task_of_issue(number).await;
    assert_eq!(
        c.store.task(task_id).await.unwrap().agent,
        "codex",
        "the label chose Codex"
    );

    let t = wait_for(&sys, task_id, "CI of the first push", |t| {
        t.status == Status::CiWait
    })
    .await;
    let first_head = t.head_sha.clone().unwrap();
    let pr = t.pr_number.unwrap() as u64;
    gh.fail_ci(
        &repo,
        &first_head,
        "check config: expected two=2, found two=3\nError: Process completed with exit code 1.",
    );
    let t = wait_for(&sys, task_id, "CI of the fix", |t| {
        t.status == Status::CiWait && t.head_sha.as_deref() != Some(first_head.as_str())
    })
    .await;
    assert_eq!(t.pr_number, Some(pr as i64), "the same PR");
    gh.set_ci(&repo, t.head_sha.as_deref().unwrap(), "success");
    let t = wait_for(&sys, task_id, "the merge", |t| t.status == Status::Merged).await;
    assert_eq!(t.agent, "codex");
    assert_eq!(gh.state_of(&repo, pr), Some(("closed".into(), true)));
    let main = gh.branch_head(&repo, "main").unwrap();
    let out = xcmd::Cmd::new("git", gh.git_dir(&repo))
        .args(["show", &format!("{main}:config/two.txt")])
        .to_std()
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two=2\n");

    // The agent spoke only the Responses API, with the real key the gateway swapped in (the
    // container's token never reached the model API) and an OpenAI model for the task's tier.
    let received = model.received();
    let agent_calls: Vec<_> = received
        .iter()
        .filter(|r| r.body.to_string().contains("MARK-CODEX") && !r.path.contains("messages"))
        .collect();
    assert!(
        agent_calls.len() >= 4,
        "two runs of at least two calls each: {}",
        agent_calls.len()
    );
    for r in &agent_calls {
        assert_eq!(r.path, "/v1/responses");
        assert_eq!(r.credential, KEY);
        assert_eq!(r.model, runner::agent::CODEX_DEFAULT_MODEL);
        assert!(r.stream);
    }
    // No call offering Codex's tools went to the Messages API.
    let offers_codex_tools = |r: &&sim::model::Received| {
        r.body["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "exec_command"))
    };
    assert!(
        !received
            .iter()
            .filter(|r| r.path.starts_with("/v1/messages"))
            .any(|r| offers_codex_tools(&r)),
        "no Codex call went to the Messages API"
    );
    let fix = agent_calls
        .iter()
        .find(|r| r.last_user_text.contains("expected two=2"))
        .expect("the retry prompt carries the CI log");
    assert!(
        fix.body.to_string().contains("the check expects two=2"),
        "with the diagnosis"
    );

    // The gateway metered the Codex calls into the ledger at the price table's rate.
    let agent_cost: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(cost_microusd), 0)::bigint FROM usage_ledger WHERE task_id = $1 AND purpose = 'agent'",
    )
    .bind(task_id)
    .fetch_one(c.store.pool())
    .await
    .unwrap();
    assert!(agent_cost > 0, "the agent's calls are in the ledger");

    // The transcript: Codex's events as the stream-json the dashboard renders.
    let log = agent_log(&sys, task_id, 1).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "system" && l["subtype"] == "init" && l["agent"] == "codex"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"]["content"][0]["type"] == "tool_use"
                && l["message"]["content"][0]["name"] == "apply_patch"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"]["content"][0]["type"] == "tool_result"
                && l["message"]["content"][0]["is_error"] == false),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "result" && l["subtype"] == "success"),
        "{log}"
    );
    sys.stop().await;
}

#[tokio::test]
async fn a_rate_limited_codex_task_falls_back_to_claude_where_the_repository_allows() {
    if skip_docker() {
        return;
    }
    let sys = FullSystem::start(
        "codexfb",
        &[("README.md", "# fallback\n")],
        RepoSettings {
            approval_mode: Some("full-auto".into()),
            agent: Some("codex".into()),
            agent_fallback: Some(true),
            ..RepoSettings::default()
        },
    )
    .await;
    let (gh, model, c) = (&sys.gh, &sys.model, &sys.c);
    let repo = sys.name.clone();
    model.add_script(says(
        "Classify this issue",
        &["{\"model\": \"sonnet\", \"complexity\": \"simple\"}"],
    ));
    model.add_script(says(
        "review this pull request",
        &["Adds the file.\nVERDICT: APPROVE"],
    ));
    model.add_script(says(
        "How the attempt ended",
        &["Cause: the model API was rate limited.\nNext: try again."],
    ));
    model.add_script(agent_script(
        "MARK-FALLBACK",
        "/workspace/three.txt",
        "three=3\n",
        "never",
        "three=3\n",
    ));
    // The Responses API refuses Codex's call and its one retry; Messages calls go through.
    model.fail_next_responses(Failure::RateLimit, 2);

    let number = gh
        .open_issue(
            &repo,
            "Add three MARK-FALLBACK",
            "Add three.txt with three=3.",
            "alice",
            &[labels::TRIGGER],
        )
        .await;
    let task_id = sys.task_of_issue(number).await;
    assert_eq!(
        c.store.task(task_id).await.unwrap().agent,
        "codex",
        "the repository's backend"
    );
    let t = wait_for(&sys, task_id, "CI after the fallback", |t| {
        t.status == Status::CiWait
    })
    .await;
    assert_eq!(t.agent, "claude", "went on with Claude Code");
    gh.set_ci(&repo, t.head_sha.as_deref().unwrap(), "success");
    wait_for(&sys, task_id, "the merge", |t| t.status == Status::Merged).await;

    let timeline = c.store.timeline(task_id).await.unwrap();
    let switch = timeline
        .iter()
        .find(|e| e.reason == "agent_fallback")
        .expect("the switch is on the timeline");
    assert_eq!(
        switch.data.as_ref().map(|d| d.0.clone()),
        Some(serde_json::json!({"from": "codex", "to": "claude", "why": "rate_limited"}))
    );
    let received = model.received();
    let codex_tries = received
        .iter()
        .filter(|r| r.path == "/v1/responses" && r.body.to_string().contains("MARK-FALLBACK"))
        .count();
    assert_eq!(
        codex_tries, 2,
        "Codex tried once and retried once, then gave up"
    );
    assert!(
        received.iter().any(|r| r.path.starts_with("/v1/messages")
            && r.body.to_string().contains("MARK-FALLBACK")
            && r.body.to_string().contains("\"Write\"")),
        "Claude Code did the work"
    );
    sys.stop().await;
}

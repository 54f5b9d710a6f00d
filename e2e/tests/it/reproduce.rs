//! Reproduce-first for real: the real agent CLI (driven by the scripted model) writes a test and
//! names it in `.backporcher/repro.json`; the runner runs it in the Docker sandbox on the head and
//! on a fresh checkout of the base with only the test's files. Skipped with `BP_SKIP_DOCKER=1`.

use std::time::Duration;

use controller::store::HoldKind;
use controller::store::repos::RepoSettings;
use controller::store::reproduction::ReproStatus;
use e2e::harness::skip_docker;
use sim::model::{Match, Script, Step, ToolCall};

use crate::sandbox::{Env, Setup, setup};

/// A repository with a bug: `add` subtracts.
const CALC: &str = "add() { echo $(( $1 - $2 )); }\nsub() { echo $(( $1 - $2 )); }\n";
const CALC_FIXED: &str = "add() { echo $(( $1 + $2 )); }\nsub() { echo $(( $1 - $2 )); }\n";

/// An agent that writes `test` as `tests/test_calc.sh`, names it in `repro.json`, and fixes
/// `calc.sh`, for tasks whose prompt contains `marker`.
fn agent(marker: &str, test: &str) -> Script {
    Script {
        selector: marker.into(),
        steps: vec![
            Step {
                when: Match {
                    tool_result: Some(false),
                    ..Match::default()
                },
                tools: vec![
                    ToolCall::write("/workspace/tests/test_calc.sh", test),
                    ToolCall::write(
                        "/workspace/.backporcher/repro.json",
                        r#"{"command": "bash tests/test_calc.sh", "files": ["tests/test_calc.sh"]}"#,
                    ),
                    ToolCall::write("/workspace/calc.sh", CALC_FIXED),
                ],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Wrote the test and fixed add.".into(),
                ..Step::default()
            },
        ],
    }
}

async fn env(tag: &str, reproduce_first: &str, policy: &str) -> Env {
    let env = setup(
        tag,
        Setup {
            files: vec![("calc.sh", CALC)],
            ..Setup::default()
        },
    )
    .await;
    env.c
        .store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                reproduce_first: Some(reproduce_first.into()),
                reproduce_policy: Some(policy.into()),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    env
}

/// The `completed` event's reproduce-first data.
async fn completed_data(env: &Env, task: i64) -> serde_json::Value {
    env.c
        .store
        .timeline(task)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.reason == "completed")
        .and_then(|e| e.data.map(|d| d.0))
        .expect("a completed event with data")
}

#[tokio::test]
async fn a_test_that_fails_on_the_base_and_passes_on_the_head_reproduces_the_bug_and_proceeds() {
    if skip_docker() {
        return;
    }
    let env = env("repro-ok", "on", "hold").await;
    env.sim.add_script(agent(
        "MARK-REPRO-OK",
        ". ./calc.sh\n[ \"$(add 2 3)\" = 5 ] || { echo \"add 2 3 gave $(add 2 3)\"; exit 1; }\n",
    ));
    // (Which leases ask for it — the setting and triage's bug verdict — is tested in the
    // controller's `reproduce` module without Docker.)
    let t = env
        .task("add subtracts MARK-REPRO-OK", "add 2 3 prints -1")
        .await;
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(180))
        .await;
    let task = env.c.store.task(t.id).await.unwrap();
    assert_eq!(task.hold_kind.0, None, "a reproduced bug is not held");
    let r = env
        .c
        .store
        .task_reproduction(t.id)
        .await
        .unwrap()
        .expect("the attempt's reproduction record");
    assert_eq!(r.status, ReproStatus::Reproduced, "{r:?}");
    assert_eq!(r.command, "bash tests/test_calc.sh");
    assert_eq!(r.files, vec!["tests/test_calc.sh"]);
    let base = r.base.as_ref().expect("the base run");
    let head = r.head.as_ref().expect("the head run");
    assert_eq!(base.exit_code, 1, "{base:?}");
    assert!(
        base.output_tail.contains("add 2 3 gave -1"),
        "the base run's output: {base:?}"
    );
    assert_eq!(head.exit_code, 0, "{head:?}");
    assert!(!base.timed_out && !head.timed_out);
    assert!(r.summary().starts_with("reproduced:"), "{}", r.summary());
    assert_eq!(
        completed_data(&env, t.id).await["reproduction"],
        "reproduced"
    );
    // The prompt asked for the test first.
    assert!(
        env.sim
            .received()
            .iter()
            .any(|m| m.last_user_text.contains("Reproduce the issue first")),
        "the prompt has the reproduce-first section"
    );
    // The test and the fix are committed; repro.json is not.
    let (_, bundle) = env
        .c
        .store
        .bundle(t.id, task.attempt)
        .await
        .unwrap()
        .expect("bundle");
    let check = e2e::harness::state_dir("repro-check");
    std::fs::write(check.join("result.bundle"), &bundle).unwrap();
    crate::sandbox::git(
        &check,
        &["clone", "--quiet", env.origin.to_str().unwrap(), "repo"],
    );
    let repo = check.join("repo");
    let branch = task.branch.clone().expect("branch");
    crate::sandbox::git(
        &repo,
        &[
            "fetch",
            "--quiet",
            "../result.bundle",
            &format!("{branch}:check"),
        ],
    );
    let files = crate::sandbox::git(&repo, &["diff", "--name-only", "main", "check"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        vec!["calc.sh", "tests/test_calc.sh"],
        "{files}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_test_that_passes_on_the_base_is_caught_and_the_task_is_held_under_the_hold_policy() {
    if skip_docker() {
        return;
    }
    let env = env("repro-weak", "on", "hold").await;
    // The test checks `sub`, which was never broken: it passes on the base too.
    env.sim.add_script(agent(
        "MARK-REPRO-WEAK",
        ". ./calc.sh\n[ \"$(sub 5 3)\" = 2 ]\n",
    ));
    let t = env
        .task("add subtracts MARK-REPRO-WEAK", "add 2 3 prints -1")
        .await;
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(180))
        .await;
    let r = env
        .c
        .store
        .task_reproduction(t.id)
        .await
        .unwrap()
        .expect("the attempt's reproduction record");
    assert_eq!(r.status, ReproStatus::NotReproduced, "{r:?}");
    assert_eq!(r.base.as_ref().map(|b| b.exit_code), Some(0), "{r:?}");
    assert_eq!(r.head.as_ref().map(|h| h.exit_code), Some(0), "{r:?}");
    assert!(
        r.summary().starts_with("not reproduced:"),
        "{}",
        r.summary()
    );
    // `hold`: held for a person, with the reason on the timeline.
    let task = env.c.store.task(t.id).await.unwrap();
    assert_eq!(task.hold_kind.0, Some(HoldKind::User));
    let data = completed_data(&env, t.id).await;
    assert_eq!(data["reproduction"], "not_reproduced", "{data}");
    assert_eq!(data["policy"], "hold", "{data}");
    let message = data["message"].as_str().expect("the hold's reason");
    assert!(
        message.contains("not reproduced") && message.contains("backporcher release"),
        "{message}"
    );
    env.finish().await;
}

#[tokio::test]
async fn no_test_under_the_proceed_policy_is_marked_not_reproduced_and_not_held() {
    if skip_docker() {
        return;
    }
    let env = env("repro-none", "on", "proceed").await;
    env.sim.add_script(Script::writes(
        "MARK-REPRO-NONE",
        "/workspace/calc.sh",
        CALC_FIXED,
    ));
    let t = env
        .task("add subtracts MARK-REPRO-NONE", "add 2 3 prints -1")
        .await;
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(180))
        .await;
    let r = env
        .c
        .store
        .task_reproduction(t.id)
        .await
        .unwrap()
        .expect("the attempt's reproduction record");
    assert_eq!(r.status, ReproStatus::NoTest, "{r:?}");
    assert!(r.note.contains("repro.json"), "{r:?}");
    assert!(r.base.is_none() && r.head.is_none());
    let task = env.c.store.task(t.id).await.unwrap();
    assert_eq!(task.hold_kind.0, None, "`proceed` does not hold");
    let data = completed_data(&env, t.id).await;
    assert_eq!(data["reproduction"], "no_test", "{data}");
    assert!(data["message"].is_null(), "{data}");
    env.finish().await;
}

#[tokio::test]
async fn a_test_that_fails_on_the_head_gives_the_agent_a_fix_round() {
    if skip_docker() {
        return;
    }
    let env = env("repro-round", "on", "hold").await;
    let test =
        ". ./calc.sh\n[ \"$(add 2 3)\" = 5 ] || { echo \"add 2 3 gave $(add 2 3)\"; exit 1; }\n";
    env.sim.add_script(Script {
        selector: "MARK-REPRO-ROUND".into(),
        steps: vec![
            Step {
                when: Match {
                    tool_result: Some(false),
                    ..Match::default()
                },
                // A wrong fix first: the test still fails on the change.
                tools: vec![
                    ToolCall::write("/workspace/tests/test_calc.sh", test),
                    ToolCall::write(
                        "/workspace/.backporcher/repro.json",
                        r#"{"command": "bash tests/test_calc.sh", "files": ["tests/test_calc.sh"]}"#,
                    ),
                    ToolCall::write("/workspace/calc.sh", CALC.replace("- $2", "* $2").as_str()),
                ],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Fixed add.".into(),
                ..Step::default()
            },
            Step {
                when: Match {
                    contains: Some("fails on your change".into()),
                    ..Match::default()
                },
                tools: vec![ToolCall::write("/workspace/calc.sh", CALC_FIXED)],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Really fixed add.".into(),
                ..Step::default()
            },
        ],
    });
    let t = env
        .task("add subtracts MARK-REPRO-ROUND", "add 2 3 prints -1")
        .await;
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(180))
        .await;
    assert!(
        env.sim
            .received()
            .iter()
            .any(|m| m.last_user_text.contains("add 2 3 gave 6")),
        "the failing head run's output reached the agent"
    );
    let r = env.c.store.task_reproduction(t.id).await.unwrap().unwrap();
    assert_eq!(r.status, ReproStatus::Reproduced, "{r:?}");
    let logs = env.logs(t.id).await;
    assert!(
        logs.contains("the reproduction test fails on the change; giving its output to the agent (fix round 1)")
            && !logs.contains("fix round 2"),
        "one fix round: {logs}"
    );
    assert_eq!(env.c.store.task(t.id).await.unwrap().hold_kind.0, None);
    env.finish().await;
}

#[tokio::test]
async fn a_repro_file_linked_to_a_secret_is_not_followed_and_counts_as_no_test() {
    if skip_docker() {
        return;
    }
    let env = env("repro-link", "on", "hold").await;
    env.sim.add_script(Script {
        selector: "MARK-REPRO-LINK".into(),
        steps: vec![
            Step {
                when: Match {
                    tool_result: Some(false),
                    ..Match::default()
                },
                tools: vec![
                    ToolCall::write("/workspace/calc.sh", CALC_FIXED),
                    ToolCall::bash(
                        "mkdir -p /workspace/.backporcher && ln -s /proc/self/environ /workspace/.backporcher/repro.json",
                    ),
                ],
                ..Step::default()
            },
            Step {
                when: Match {
                    tool_result: Some(true),
                    ..Match::default()
                },
                text: "Done.".into(),
                ..Step::default()
            },
        ],
    });
    let t = env
        .task("add subtracts MARK-REPRO-LINK", "add 2 3 prints -1")
        .await;
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(180))
        .await;
    let r = env.c.store.task_reproduction(t.id).await.unwrap().unwrap();
    assert_eq!(r.status, ReproStatus::NoTest, "{r:?}");
    assert!(r.note.contains("wrote no"), "{r:?}");
    assert_eq!(
        env.c.store.task(t.id).await.unwrap().hold_kind.0,
        Some(HoldKind::User),
        "`hold`: held for a person"
    );
    let logs = env.logs(t.id).await;
    assert!(!logs.contains(crate::sandbox::REAL_KEY), "no secret read");
    env.finish().await;
}

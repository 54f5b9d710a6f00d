//! The plan gate for real: the real agent CLI, driven by the scripted model, tries to write during
//! its plan run — with the Write tool and through the shell — and cannot; nothing is committed,
//! bundled or pushed; its plan waits for a person; once approved, the implementation run gets
//! it in its prompt. Skipped with `BP_SKIP_DOCKER=1`.

use std::time::Duration;

use controller::store::ops::Actor;
use controller::store::plans::Decision;
use controller::store::repos::RepoSettings;
use e2e::harness::skip_docker;
use sim::model::{Match, Script, Step, ToolCall};

use crate::sandbox::{Setup, setup};

const PLAN: &str = r#"{"files": ["README.md"], "approach": "Say hello louder.", "risks": ["none"], "tests": ["read it"]}"#;

#[tokio::test]
async fn a_scripted_agent_cannot_write_during_the_plan_run() {
    if skip_docker() {
        return;
    }
    let env = setup("plan-gate", Setup::default()).await;
    env.c
        .store
        .update_repo(
            env.repo.id,
            &RepoSettings {
                plan_gate: Some(true),
                ..RepoSettings::default()
            },
        )
        .await
        .unwrap();
    let fresh = Match {
        tool_result: Some(false),
        ..Match::default()
    };
    let after_tools = Match {
        tool_result: Some(true),
        ..Match::default()
    };
    env.sim.add_script(Script {
        selector: "MARK-PLAN-GATE".into(),
        steps: vec![
            // The plan run: it tries to write, both ways, then answers with its plan.
            Step {
                when: Match {
                    contains: Some("planning run".into()),
                    ..fresh.clone()
                },
                tools: vec![
                    ToolCall::write("/workspace/planted.txt", "planted\n"),
                    ToolCall::bash(
                        "echo overwritten > /workspace/README.md; echo \"shell write exit=$?\"; touch /workspace/.git/hooks/x; echo \"hook exit=$?\"",
                    ),
                ],
                ..Step::default()
            },
            Step {
                when: after_tools.clone(),
                text: format!("Here is my plan.\n{PLAN}"),
                ..Step::default()
            },
            // The implementation run, after approval.
            Step {
                when: Match {
                    contains: Some("Approved plan".into()),
                    ..fresh
                },
                tools: vec![ToolCall::write("/workspace/README.md", "HELLO\n")],
                ..Step::default()
            },
            Step {
                when: after_tools,
                text: "Done.".into(),
                ..Step::default()
            },
        ],
    });
    let t = env
        .task("louder MARK-PLAN-GATE", "make the greeting louder")
        .await;
    env.c
        .wait_status(t.id, "plan_hold", Duration::from_secs(180))
        .await;
    let plan = env
        .c
        .store
        .plan(t.id)
        .await
        .unwrap()
        .expect("the plan run delivered a plan");
    assert_eq!(plan.state, "pending");
    assert_eq!(plan.plan.0.files, vec!["README.md"]);
    assert_eq!(plan.plan.0.approach, "Say hello louder.");
    assert_eq!(plan.blast_radius, Some(1), "the code graph's prediction");
    assert!(
        plan.discarded.is_empty(),
        "nothing changed: {:?}",
        plan.discarded
    );
    // The writes failed inside the sandbox: the shell's on the read-only mount, the Write tool
    // because it is off (or, if the CLI offered it, on the mount too).
    let tool_results: String = env
        .sim
        .received()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert!(
        tool_results.contains("Read-only file system"),
        "the shell's write hit the read-only mount"
    );
    assert!(
        !tool_results.contains("shell write exit=0") && !tool_results.contains("hook exit=0"),
        "no write succeeded"
    );
    // Nothing of the plan run is kept: no bundle, no branch pushed, the origin untouched.
    assert!(env.c.store.bundle(t.id, 1).await.unwrap().is_none());
    let out = xcmd::Cmd::new("git", &env.origin)
        .args(["branch", "--list", "backporcher/*"])
        .to_std()
        .output()
        .unwrap();
    let branches = String::from_utf8_lossy(&out.stdout);
    assert!(branches.trim().is_empty(), "nothing pushed: {branches}");
    let out = xcmd::Cmd::new("git", &env.origin)
        .args(["show", "main:README.md"])
        .to_std()
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let logs = env.logs(t.id).await;
    assert!(
        logs.contains("plan run: the workspace is read-only"),
        "{logs}"
    );
    // No second lease while it waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.c.store.task(t.id).await.unwrap().attempt, 1);

    env.c
        .store
        .decide_plan(
            t.id,
            &Decision::Approve,
            &Actor {
                name: "user:olga".into(),
                user_id: None,
            },
        )
        .await
        .unwrap();
    env.c
        .wait_status(t.id, "pushing", Duration::from_secs(180))
        .await;
    let prompts: Vec<String> = env
        .sim
        .received()
        .into_iter()
        .map(|r| r.last_user_text)
        .collect();
    assert!(
        prompts
            .iter()
            .any(|p| p.contains("Approved plan") && p.contains("Say hello louder.")),
        "the implementation run follows the approved plan"
    );
    env.finish().await;
}

//! The fleet benchmark's short form: every labelled issue across several repositories and
//! runners ends merged, none stuck, none failed (real controller, PostgreSQL, mTLS runners, the
//! GitHub simulator with real git and merges).

use std::time::Duration;

use e2e::fleet::{Fleet, run};

#[tokio::test(flavor = "multi_thread")]
async fn every_issue_of_a_busy_fleet_ends_merged() {
    let r = run(Fleet {
        issues: 30,
        repos: 3,
        runners: 4,
        stage_concurrency: 8,
        controllers: 1,
        model: false,
        limit: Duration::from_secs(240),
    })
    .await;
    assert!(r.stuck.is_empty(), "stuck: {:?}", r.stuck);
    assert!(
        r.ended_otherwise.is_empty(),
        "ended otherwise: {:?}",
        r.ended_otherwise
    );
    assert_eq!(r.merged, 30);
}

/// Two controller replicas on one database (each with its own pool, loops, gRPC and HTTP
/// listeners; the runners spread over both, the webhooks alternating between them), 20 issues:
/// every task merges, with one comment per milestone, one pull request and one merge commit per task,
/// and each task triaged in exactly one model call — counted at the simulators.
#[tokio::test(flavor = "multi_thread")]
async fn two_controller_replicas_do_everything_once() {
    let r = run(Fleet {
        issues: 20,
        repos: 3,
        runners: 4,
        stage_concurrency: 4,
        controllers: 2,
        model: true,
        limit: Duration::from_secs(300),
    })
    .await;
    assert!(r.stuck.is_empty(), "stuck: {:?}", r.stuck);
    assert!(
        r.ended_otherwise.is_empty(),
        "ended otherwise: {:?}",
        r.ended_otherwise
    );
    assert_eq!(r.merged, 20);
    for (repo, n) in &r.issues {
        let comments = r.gh.comments(repo, *n);
        let mut unique = comments.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            comments.len(),
            "{repo}#{n}: a comment posted twice: {comments:#?}"
        );
        for milestone in ["accepted this issue", "Opened pull request", "Merged in"] {
            assert_eq!(
                comments.iter().filter(|c| c.contains(milestone)).count(),
                1,
                "{repo}#{n}: `{milestone}` {comments:#?}"
            );
        }
    }
    let requests = r.gh.requests();
    let count = |method: &str, suffix: &str| {
        requests
            .iter()
            .filter(|(m, p)| m == method && p.ends_with(suffix))
            .count()
    };
    assert_eq!(count("POST", "/pulls"), 20, "one pull request per task");
    // A merge refused because another one just moved the base branch is tried again (as on
    // GitHub), so requests may exceed merges; what counts is the effect: one commit on each
    // repository's main per task merged there (squash), none twice.
    assert!(count("PUT", "/merge") >= 20);
    let mut repos: Vec<&String> = r.issues.iter().map(|(repo, _)| repo).collect();
    repos.sort();
    repos.dedup();
    let mut merges = 0;
    for repo in repos {
        let out = xcmd::Cmd::new("git", r.gh.git_dir(repo))
            .args(["rev-list", "--count", "refs/heads/main"])
            .to_std()
            .output()
            .unwrap();
        let commits: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        merges += commits - 1;
    }
    assert_eq!(merges, 20, "one merge per task");
    let model = r.model.expect("the model simulator");
    let triage: Vec<String> = model
        .received()
        .iter()
        .filter(|q| {
            q.last_user_text.contains("Triage these issues")
                || q.last_user_text.contains("Classify this issue")
        })
        .map(|q| q.last_user_text.clone())
        .collect();
    for i in 0..20 {
        // The title as the prompt fences it, on a line of its own.
        let title = format!("\nFleet change {i}\n");
        let calls = triage.iter().filter(|t| t.contains(&title)).count();
        assert_eq!(calls, 1, "issue {i} triaged in {calls} calls: {triage:#?}");
    }
}

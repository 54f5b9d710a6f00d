//! The cleanup sweep against the GitHub simulator: a failed task's open PR is closed and its
//! branch deleted once it is old enough under the policy, once (a second pass finds nothing),
//! never when the policy says never; the background loop and `POST /api/cleanup` (operator,
//! refusals audited) do the same.

use std::time::Duration;

use controller::cleanup::{CleanupPolicy, sweep};
use controller::config::Config;
use controller::store::cleanup::Sweep;
use controller::store::{Status, TerminalReason};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::forge::{REPO, drive, env, pipeline, task_at_pushing};

/// A task of `env` that failed with its PR open and its branch pushed, `days_ago` days ago.
async fn failed_with_open_pr(env: &crate::forge::Env, days_ago: f64) -> (i64, u64, String) {
    let n = env.sim.create_issue(REPO, "Add two", "", "alice", &[]) as i64;
    let task = task_at_pushing(env, n, &[("src/two.rs", "pub fn two() {}\n")]).await;
    let t = drive(env, &pipeline(env, vec![]), task.id, Status::CiWait).await;
    env.store
        .fail(
            t.id,
            TerminalReason::CiFailed,
            "red",
            &crate::note("ci red"),
        )
        .await
        .unwrap();
    sqlx::query("UPDATE tasks SET finished_at = now() - make_interval(secs => $2) WHERE id = $1")
        .bind(t.id)
        .bind(days_ago * 86_400.0)
        .execute(env.store.pool())
        .await
        .unwrap();
    (t.id, t.pr_number.unwrap() as u64, t.branch.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_tasks_pr_and_branch_are_cleaned_by_policy_once() {
    let env = env().await;
    let policy = CleanupPolicy::default();
    let (id, pr, branch) = failed_with_open_pr(&env, 3.0).await;
    assert_eq!(env.sim.state_of(REPO, pr), Some(("open".into(), false)));
    // Three days: younger than the failed tasks' seven.
    let swept = sweep(&env.store, env.forge.as_ref(), &policy.sweep, None)
        .await
        .unwrap();
    assert!(swept.is_empty(), "{swept:?}");
    // Never, whatever the age.
    let never = Sweep {
        failed: None,
        ..policy.sweep
    };
    let immediate_never = CleanupPolicy {
        sweep: never,
        ..policy
    }
    .immediate();
    assert!(
        sweep(&env.store, env.forge.as_ref(), &immediate_never, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(env.sim.branch_head(REPO, &branch).is_some());
    // Eight days: closed and deleted, once.
    sqlx::query("UPDATE tasks SET finished_at = now() - interval '8 days' WHERE id = $1")
        .bind(id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let swept = sweep(&env.store, env.forge.as_ref(), &policy.sweep, None)
        .await
        .unwrap();
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(
        (
            swept[0].task,
            swept[0].pr_closed,
            swept[0].branch_deleted.as_deref(),
            swept[0].error.as_deref()
        ),
        (id, Some(pr as i64), Some(branch.as_str()), None)
    );
    assert_eq!(env.sim.state_of(REPO, pr), Some(("closed".into(), false)));
    assert_eq!(env.sim.branch_head(REPO, &branch), None);
    let swept = sweep(&env.store, env.forge.as_ref(), &policy.immediate(), None)
        .await
        .unwrap();
    assert!(swept.is_empty(), "swept once: {swept:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_and_the_api_sweep_by_the_same_policy() {
    let env = env().await;
    // The background loop, with a short interval.
    let (loop_id, loop_pr, _) = failed_with_open_pr(&env, 10.0).await;
    let mut ctx = controller::loops::LoopCtx::for_store(
        env.store.clone(),
        Config {
            cleanup: CleanupPolicy {
                interval: Duration::from_millis(200),
                ..CleanupPolicy::default()
            },
            ..Config::default()
        },
    );
    ctx.forge = Some(env.forge.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(controller::cleanup::run(ctx, stop.clone()));
    let sim = env.sim.clone();
    crate::eventually(Duration::from_secs(10), "the loop to close the PR", || {
        let sim = sim.clone();
        async move { sim.state_of(REPO, loop_pr) == Some(("closed".into(), false)) }
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    let swept: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT swept_at FROM tasks WHERE id = $1")
            .bind(loop_id)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert!(swept.is_some());

    // POST /api/cleanup: a viewer is refused (and audited); an operator cleans a young failure
    // with `now`, not without it.
    let (_id, pr, branch) = failed_with_open_pr(&env, 1.0).await;
    let server = crate::Serving::start(Config {
        database_url: Some(env.db_url.clone()),
        data_dir: tempfile::tempdir().unwrap().keep(),
        github: Some(controller::forge::github::GitHubConfig::with_token(
            &env.base,
            crate::forge::TOKEN,
        )),
        ..Config::default()
    })
    .await;
    let base = format!("http://{}", server.addr);
    for (name, role) in [("olga", "operator"), ("vic", "viewer")] {
        let hash = controller::http::auth::hash_password("a long password 1").unwrap();
        env.store.create_user(name, &hash, role).await.unwrap();
    }
    let olga = crate::api::Api::login(&base, "olga", "a long password 1").await;
    let vic = crate::api::Api::login(&base, "vic", "a long password 1").await;
    let (code, _) = vic
        .call(Method::POST, "/api/cleanup", Some(json!({"now": true})))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor = 'user:vic' AND action = 'cleanup' AND outcome LIKE 'refused%'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(refused, 1);
    assert_eq!(env.sim.state_of(REPO, pr), Some(("open".into(), false)));
    let (code, body) = olga
        .call(Method::POST, "/api/cleanup", Some(json!({"repo": REPO})))
        .await;
    assert_eq!(
        (code, body.clone()),
        (StatusCode::OK, json!([])),
        "one day is too young"
    );
    let (code, body) = olga
        .call(
            Method::POST,
            "/api/cleanup",
            Some(json!({"repo": REPO, "now": true})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body[0]["pr_closed"], pr, "{body}");
    assert_eq!(body[0]["branch_deleted"], branch, "{body}");
    assert_eq!(body[0]["status"], "failed", "{body}");
    assert_eq!(env.sim.state_of(REPO, pr), Some(("closed".into(), false)));
    let (code, body) = olga
        .call(
            Method::POST,
            "/api/cleanup",
            Some(json!({"repo": "acme/none"})),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

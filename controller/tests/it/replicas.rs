//! Two controller replicas on one database (two processes' stores: separate pools and claim
//! holders): work with an effect outside the database is done once, whichever replica wins —
//! each GitHub milestone comment, each triage call, each chat message, each learning — and a
//! singleton loop's lock is proved alive, taken over when its session dies, and never parked in
//! the pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::forge::labels;
use controller::forge::milestones::sync_once;
use controller::loops::{Leading, lead, singleton};
use controller::pipeline::feedback::Loops;
use controller::pipeline::triage;
use controller::store::{Status, Store, TerminalReason};

use crate::forge::REPO;
use crate::loops::{client, model_sim, new_task};

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_post_each_milestone_once() {
    let env = crate::forge::env().await;
    let a = env.store.clone();
    let b = Store::connect(&env.db_url, 10).await.unwrap();
    assert_ne!(a.replica(), b.replica());
    let mut tasks = Vec::new();
    for i in 0..12 {
        let n = env.sim.create_issue(
            REPO,
            &format!("Issue {i}"),
            "x",
            "alice",
            &[labels::TRIGGER],
        );
        let t = new_task(&a, env.repo.id, n as i64, &format!("Issue {i}"), "x").await;
        tasks.push((t.id, n));
    }
    let both = || async {
        let forge = env.forge.as_ref();
        let (x, y) = tokio::join!(sync_once(&a, forge), sync_once(&b, forge));
        x.unwrap() + y.unwrap()
    };
    assert_eq!(both().await, 12, "each accepted milestone applied once");
    assert_eq!(both().await, 0);
    // Two more timeline entries on every task (queued, failed), walked by both replicas at once.
    for (id, _) in &tasks {
        a.triage(
            *id,
            &controller::store::tasks::Triage::default(),
            &crate::note("triaged"),
        )
        .await
        .unwrap();
        a.fail(
            *id,
            TerminalReason::AgentFailed,
            "no luck",
            &crate::note("test"),
        )
        .await
        .unwrap();
    }
    let mut applied = 0;
    for _ in 0..3 {
        applied += both().await;
    }
    assert_eq!(applied, 24, "each entry applied once");
    for (_, n) in &tasks {
        let comments = env.sim.comments(REPO, *n);
        assert_eq!(comments.len(), 2, "issue {n}: {comments:?}");
        assert!(comments[0].contains("accepted"), "{comments:?}");
        assert!(comments[1].contains("failed"), "{comments:?}");
    }
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM work_claims")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(claims, 0, "every claim released");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_triage_a_batch_with_one_model_call() {
    let (a, url) = crate::store_and_url().await;
    let b = Store::connect(&url, 10).await.unwrap();
    let repo = crate::repo(&a, "acme/replicas").await;
    let (sim, model_url) = model_sim().await;
    for _ in 0..2 {
        sim.add_script(sim::model::Script::says(
            "Triage these issues",
            &["[{\"issue\": 1, \"priority\": 10}, {\"issue\": 2, \"depends_on\": [1]}, {\"issue\": 3}]"],
        ));
    }
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(
            new_task(&a, repo.id, n, &format!("Issue {n}"), "x")
                .await
                .id,
        );
    }
    let (ma, mb) = (client(&a, &model_url), client(&b, &model_url));
    let (x, y) = tokio::join!(
        triage::run_once(&a, Some(&ma), "haiku"),
        triage::run_once(&b, Some(&mb), "haiku")
    );
    assert_eq!(x.unwrap() + y.unwrap(), 3, "each task queued once");
    let calls = sim
        .received()
        .iter()
        .filter(|r| r.last_user_text.contains("Triage these issues"))
        .count();
    assert_eq!(calls, 1, "one model call for the batch");
    for id in &ids {
        assert_eq!(a.task(*id).await.unwrap().status, Status::Queued);
    }
    assert_eq!(
        a.dependencies(ids[1]).await.unwrap(),
        vec![ids[0]],
        "the batch's plan kept (no replica queued it without its dependencies)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_send_each_message_and_record_each_learning_once() {
    let (a, url) = crate::store_and_url().await;
    let b = Store::connect(&url, 10).await.unwrap();
    let repo = crate::repo(&a, "acme/notes").await;
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                // Slow enough that both replicas are in a pass at once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                sink.lock()
                    .unwrap()
                    .push(v["text"].as_str().unwrap_or_default().to_owned());
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let loops = |store: &Store| Loops {
        store: store.clone(),
        model: None,
        reflection_model: "haiku".into(),
        notify_urls: vec![hook.clone()],
        notify_events: controller::config::NotifyEvents::parse(&["all".into()]).unwrap(),
        http: reqwest::Client::new(),
        budgets_lock: Default::default(),
    };
    let (la, lb) = (loops(&a), loops(&b));
    for i in 0..10 {
        a.enqueue_notification("paused", Some(repo.id), &format!("message {i}"))
            .await
            .unwrap();
    }
    let mut ended = Vec::new();
    for i in 0..6 {
        let t = crate::queued(&a, &repo, &format!("ends {i}")).await;
        a.fail(t.id, TerminalReason::CiFailed, "red", &crate::note("test"))
            .await
            .unwrap();
        ended.push(t.id);
    }
    for _ in 0..3 {
        let (x, y) = tokio::join!(la.run_once(), lb.run_once());
        x.unwrap();
        y.unwrap();
    }
    let mut texts = got.lock().unwrap().clone();
    texts.sort();
    let mut unique = texts.clone();
    unique.dedup();
    assert_eq!(texts, unique, "no message sent twice");
    for i in 0..10 {
        assert!(texts.contains(&format!("message {i}")), "{texts:?}");
    }
    let learnings: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT task_id, count(*) FROM learnings WHERE repo_id = $1 GROUP BY task_id",
    )
    .bind(repo.id)
    .fetch_all(a.pool())
    .await
    .unwrap();
    assert_eq!(learnings.len(), ended.len(), "{learnings:?}");
    assert!(learnings.iter().all(|(_, n)| *n == 1), "{learnings:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_singleton_lock_is_proved_alive_taken_over_when_its_session_dies_and_never_parked() {
    let (a, url) = crate::store_and_url().await;
    let b = Store::connect(&url, 10).await.unwrap();
    let (mut la, mut lb) = (None, None);
    assert_eq!(
        lead(&a, singleton::REAPER, &mut la).await.unwrap(),
        Leading::Now
    );
    assert_eq!(
        lead(&a, singleton::REAPER, &mut la).await.unwrap(),
        Leading::Still
    );
    assert_eq!(
        lead(&b, singleton::REAPER, &mut lb).await.unwrap(),
        Leading::No
    );
    // The holder's session dies (a cut connection, a database restart): the holder notices at
    // its next check and the other replica takes over.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()",
    )
    .fetch_one(b.pool())
    .await
    .unwrap();
    assert_eq!(killed, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        lead(&b, singleton::REAPER, &mut lb).await.unwrap(),
        Leading::Now
    );
    assert_eq!(
        lead(&a, singleton::REAPER, &mut la).await.unwrap(),
        Leading::No,
        "the old holder learns it lost the lead"
    );
    // Dropped, a lock ends with its session: the other replica takes it at once, although the
    // dropping pool is still open.
    drop(lb.take());
    let mut taken = Leading::No;
    for _ in 0..50 {
        taken = lead(&a, singleton::REAPER, &mut la).await.unwrap();
        if taken != Leading::No {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(taken, Leading::Now, "the dropped lock was parked in a pool");
}

/// A stage lease names its holder: a replica whose lease lapsed and was taken neither renews the
/// new holder's lease nor puts the stage back under it.
#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_stage_lease_taken_by_another_replica_stays_theirs() {
    use controller::store::stages::STAGE_STATUSES;
    let (a, url) = crate::store_and_url().await;
    let b = Store::connect(&url, 10).await.unwrap();
    let repo = crate::repo(&a, "acme/stages").await;
    let runner = crate::runner(&a, "r1").await;
    let t = crate::queued(&a, &repo, "staged").await;
    crate::force_status(&a, t.id, Status::CiWait, runner).await;
    let lease = Duration::from_secs(60);
    let mine = a.claim_stages(STAGE_STATUSES, lease, 10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert!(
        b.claim_stages(STAGE_STATUSES, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(a.extend_stage_lease(t.id, lease).await.unwrap());
    // A's lease lapses (a stalled process); B takes the stage.
    sqlx::query("UPDATE tasks SET stage_lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(t.id)
        .execute(a.pool())
        .await
        .unwrap();
    assert_eq!(
        b.claim_stages(STAGE_STATUSES, lease, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let until = |s: Store| async move {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT stage_lease_until FROM tasks WHERE id = $1",
        )
        .bind(t.id)
        .fetch_one(s.pool())
        .await
        .unwrap()
    };
    let before = until(a.clone()).await;
    assert!(
        !a.extend_stage_lease(t.id, lease).await.unwrap(),
        "A learns the stage is B's"
    );
    a.reschedule_stage(t.id, Status::CiWait, Duration::from_secs(30), true)
        .await
        .unwrap();
    assert_eq!(until(a.clone()).await, before, "B's lease untouched");
    assert!(
        a.claim_stages(STAGE_STATUSES, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(b.extend_stage_lease(t.id, lease).await.unwrap());
}

/// A claim on work is short and kept alive while the work runs: held by a keeper it outlasts its
/// length many times and nobody else can take it; once the keeper is gone (its process died) it
/// runs out within that length and another replica takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_work_claim_outlasts_its_length_and_a_dead_holders_runs_out() {
    use controller::store::work::Work;
    let env = crate::forge::env().await;
    let a = env.store.clone();
    let b = Store::connect(&env.db_url, 10).await.unwrap();
    let ttl = Duration::from_millis(900);
    assert_eq!(
        a.claim_work(Work::Triage, &[7, 8], ttl).await.unwrap(),
        [7, 8]
    );
    let keeper = a.keep_work(Work::Triage, &[7, 8], ttl);
    tokio::time::sleep(ttl * 3).await;
    assert!(
        b.claim_work(Work::Triage, &[7, 8], ttl)
            .await
            .unwrap()
            .is_empty(),
        "a kept claim is nobody else's"
    );
    drop(keeper);
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(
        b.claim_work(Work::Triage, &[7, 8], ttl).await.unwrap(),
        [7, 8],
        "a claim nobody keeps runs out"
    );
    assert!(
        !a.renew_work(Work::Triage, 7, ttl).await.unwrap(),
        "the first holder learns it lost the claim"
    );
}

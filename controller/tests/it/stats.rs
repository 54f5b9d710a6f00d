//! All-time statistics come from rollups the triggers keep (migration 0023) rather than from an
//! aggregate over every row; whatever happens to a task after it ended — requeued, charged late,
//! retried, deleted — they equal that aggregate.

use controller::store::Status;

/// The statistics as the rows say, aggregated directly (what `/api/stats` computed before).
async fn from_rows(
    store: &controller::store::Store,
) -> (i64, i64, i64, i64, i64, Vec<(String, i64)>) {
    let t: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'merged'), count(*) FILTER (WHERE status = 'failed'), \
                count(*) FILTER (WHERE status = 'canceled'), \
                count(*) FILTER (WHERE status NOT IN ('merged', 'failed', 'canceled')), \
                COALESCE(sum(cost_microusd), 0)::bigint FROM tasks",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let models: Vec<(String, i64)> = sqlx::query_as(
        "SELECT model, sum(cost_microusd)::bigint FROM usage_ledger GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    (t.0, t.1, t.2, t.3, t.4, models)
}

async fn from_rollups(
    store: &controller::store::Store,
) -> (i64, i64, i64, i64, i64, Vec<(String, i64)>) {
    let s = store.stats(None).await.unwrap();
    let models = store
        .cost_by_model(None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.model, m.cost_microusd))
        .collect();
    (
        s.merged,
        s.failed,
        s.canceled,
        s.live,
        s.total_cost_microusd,
        models,
    )
}

#[tokio::test]
async fn rolled_up_statistics_equal_the_rows_through_ends_requeues_late_costs_and_deletes() {
    let (store, _) = crate::store_and_url().await;
    let repo = crate::repo(&store, "acme/stats").await;
    let runner = crate::runner(&store, "r1").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(crate::queued(&store, &repo, &format!("t{i}")).await.id);
    }
    let charge = |task: i64, model: &'static str, cost: i64| {
        let store = store.clone();
        let repo = repo.id;
        async move {
            sqlx::query(
                "INSERT INTO usage_ledger (task_id, repo_id, purpose, model, cost_microusd) \
                 VALUES ($1, $2, 'agent', $3, $4)",
            )
            .bind(task)
            .bind(repo)
            .bind(model)
            .bind(cost)
            .execute(store.pool())
            .await
            .unwrap();
            sqlx::query("UPDATE tasks SET cost_microusd = cost_microusd + $2 WHERE id = $1")
                .bind(task)
                .bind(cost)
                .execute(store.pool())
                .await
                .unwrap();
        }
    };
    charge(ids[0], "sonnet", 1_000).await;
    crate::force_status(&store, ids[0], Status::Merged, runner).await;
    charge(ids[1], "opus", 5_000).await;
    crate::force_status(&store, ids[1], Status::Failed, runner).await;
    crate::force_status(&store, ids[2], Status::Canceled, runner).await;
    crate::force_status(&store, ids[3], Status::Running, runner).await;
    charge(ids[3], "sonnet", 700).await;
    assert_eq!(from_rollups(&store).await, from_rows(&store).await);

    // Charged after it ended (a learning's call), retried, requeued, ended again, deleted.
    charge(ids[0], "haiku", 30).await;
    sqlx::query("UPDATE tasks SET ci_retries = ci_retries + 1 WHERE id = $1")
        .bind(ids[0])
        .execute(store.pool())
        .await
        .unwrap();
    crate::force_status(&store, ids[1], Status::Queued, runner).await;
    assert_eq!(from_rollups(&store).await, from_rows(&store).await);
    crate::force_status(&store, ids[1], Status::Merged, runner).await;
    sqlx::query("DELETE FROM tasks WHERE id = $1")
        .bind(ids[2])
        .execute(store.pool())
        .await
        .unwrap();
    let rolled = from_rollups(&store).await;
    assert_eq!(rolled, from_rows(&store).await);
    assert_eq!((rolled.0, rolled.1, rolled.2), (2, 0, 0), "{rolled:?}");
    let s = store.stats(None).await.unwrap();
    assert_eq!(s.success_rate, Some(1.0));
    assert_eq!(
        s.retry_rate,
        Some(0.5),
        "one of the two merged needed a retry"
    );
}

/// `/metrics`' all-time figures as the rows say (what it computed before migration 0028).
async fn metrics_from_rows(
    store: &controller::store::Store,
) -> (
    Vec<(String, i64)>,
    i64,
    i64,
    i64,
    i64,
    Vec<(String, String, i64)>,
    i64,
) {
    let p = store.pool();
    let by_status = sqlx::query_as("SELECT status, count(*) FROM tasks GROUP BY 1 ORDER BY 1")
        .fetch_all(p)
        .await
        .unwrap();
    let (expired, requeues, retries): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE reason = 'lease_expired'), count(*) FILTER (WHERE reason = 'requeue'), \
                count(*) FILTER (WHERE to_status = 'queued' AND reason IN ('agent_failed', 'timed_out', 'stalled', \
                   'verify_failed', 'review_rejected', 'ci_failed', 'merge_conflict')) FROM task_events",
    )
    .fetch_one(p)
    .await
    .unwrap();
    let dropped =
        sqlx::query_scalar("SELECT COALESCE(sum(dropped_chunks), 0)::bigint FROM log_totals")
            .fetch_one(p)
            .await
            .unwrap();
    let cost = sqlx::query_as(
        "SELECT purpose, model, COALESCE(sum(cost_microusd), 0)::bigint FROM usage_ledger GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(p)
    .await
    .unwrap();
    let merged = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'merged'")
        .fetch_one(p)
        .await
        .unwrap();
    (by_status, expired, requeues, retries, dropped, cost, merged)
}

async fn metrics_now(
    store: &controller::store::Store,
) -> (
    Vec<(String, i64)>,
    i64,
    i64,
    i64,
    i64,
    Vec<(String, String, i64)>,
    i64,
) {
    let m = store.metrics().await.unwrap();
    (
        m.tasks_by_status,
        m.expired_leases,
        m.requeues,
        m.retries,
        m.log_chunks_dropped,
        m.cost,
        m.merged,
    )
}

/// `/metrics` reads no aggregate over every row: its all-time figures come from counters and
/// rollups the triggers keep (migration 0028). Through an expired lease, a retry after a failure,
/// a person's requeue, dropped log chunks and charges for several purposes they equal what the
/// rows say; after a task is deleted the counters keep what happened (they only grow) while
/// the per-status counts follow the rows.
#[tokio::test]
async fn metrics_from_counters_and_rollups_equal_the_rows() {
    use controller::store::completion::{Completion, Outcome};
    use controller::store::tasks::{Edits, RetryPolicy};

    let (store, _) = crate::store_and_url().await;
    let repo = crate::repo(&store, "acme/metrics").await;
    let r = crate::runner(&store, "r1").await;
    let first = crate::queued(&store, &repo, "expires").await;
    let (t, _) = crate::claim(&store, r).await;
    assert_eq!(t.id, first.id);
    crate::expire_now(&store, t.id).await;
    assert_eq!(store.reap_expired(10).await.unwrap().len(), 1);
    let (t, lease) = crate::claim(&store, r).await;
    store
        .complete(
            &lease,
            &Completion::new(Outcome::AgentFailed),
            &RetryPolicy::default(),
        )
        .await
        .unwrap();
    assert_eq!(store.task(t.id).await.unwrap().status, Status::Queued);
    let second = crate::queued(&store, &repo, "requeued").await;
    crate::force_status(&store, second.id, Status::Failed, r).await;
    store
        .requeue(second.id, &Edits::default(), &crate::note("requeue"))
        .await
        .unwrap();
    let third = crate::queued(&store, &repo, "merged").await;
    crate::force_status(&store, third.id, Status::Merged, r).await;
    let p = store.pool();
    sqlx::query("INSERT INTO log_totals (task_id, attempt, dropped_chunks) VALUES ($1, 1, 3)")
        .bind(first.id)
        .execute(p)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE log_totals SET dropped_chunks = dropped_chunks + 2 WHERE task_id = $1 AND attempt = 1",
    )
    .bind(first.id)
    .execute(p)
    .await
    .unwrap();
    for (purpose, model, cost) in [
        ("agent", "sonnet", 1_000),
        ("agent", "opus", 4_000),
        ("review", "sonnet", 70),
        ("triage", "haiku", 5),
        ("agent", "sonnet", 500),
    ] {
        sqlx::query(
            "INSERT INTO usage_ledger (task_id, repo_id, purpose, model, cost_microusd) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(third.id)
        .bind(repo.id)
        .bind(purpose)
        .bind(model)
        .bind(cost)
        .execute(p)
        .await
        .unwrap();
    }
    let now = metrics_now(&store).await;
    assert_eq!(now, metrics_from_rows(&store).await);
    assert_eq!(
        (now.1, now.2, now.3, now.4, now.6),
        (1, 1, 1, 5, 1),
        "{now:?}"
    );

    // Deleted: the per-status counts follow the rows, the counters keep what happened.
    sqlx::query("DELETE FROM tasks WHERE id = $1")
        .bind(first.id)
        .execute(p)
        .await
        .unwrap();
    let after = metrics_now(&store).await;
    let rows = metrics_from_rows(&store).await;
    assert_eq!(after.0, rows.0);
    assert_eq!((after.1, after.3, after.4), (1, 1, 5), "{after:?}");
    assert_eq!((rows.1, rows.3, rows.4), (0, 0, 0), "{rows:?}");
}

/// Ends task `id` as `status` after `seconds` from its creation, on `model`, having cost `cost`.
async fn ended(
    store: &controller::store::Store,
    runner: i64,
    id: i64,
    status: Status,
    model: &str,
    seconds: i64,
    cost: i64,
) {
    sqlx::query("UPDATE tasks SET model = $2, cost_microusd = $3 WHERE id = $1")
        .bind(id)
        .bind(model)
        .bind(cost)
        .execute(store.pool())
        .await
        .unwrap();
    crate::force_status(store, id, status, runner).await;
    sqlx::query(
        "UPDATE tasks SET created_at = finished_at - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(seconds as f64)
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn the_window_gives_time_to_merge_percentiles_and_cost_per_merged_pr_by_model_and_repository()
{
    let (store, _) = crate::store_and_url().await;
    let web = crate::repo(&store, "acme/web").await;
    let api = crate::repo(&store, "acme/api").await;
    let runner = crate::runner(&store, "r1").await;
    let cases = [
        (&web, "sonnet", Status::Merged, 100, 1_000),
        (&web, "sonnet", Status::Merged, 200, 1_000),
        (&web, "sonnet", Status::Merged, 300, 1_000),
        (&web, "opus", Status::Merged, 1_000, 9_000),
        (&api, "sonnet", Status::Failed, 50, 500),
        (&api, "opus", Status::Merged, 400, 3_000),
        (&api, "haiku", Status::Canceled, 10, 200),
    ];
    for (i, (repo, model, status, seconds, cost)) in cases.iter().enumerate() {
        let t = crate::queued(&store, repo, &format!("t{i}")).await;
        ended(&store, runner, t.id, *status, model, *seconds, *cost).await;
    }
    // Outside the window: ended a month ago.
    let old = crate::queued(&store, &web, "old").await;
    ended(&store, runner, old.id, Status::Merged, "sonnet", 5, 99_000).await;
    sqlx::query("UPDATE tasks SET finished_at = now() - interval '30 days', created_at = now() - interval '31 days' WHERE id = $1")
        .bind(old.id)
        .execute(store.pool())
        .await
        .unwrap();
    // A live task does not count.
    crate::queued(&store, &web, "live").await;

    let w = store.window_stats(14, None).await.unwrap();
    let get = |by: &str, key: &str| {
        w.iter()
            .find(|g| g.by == by && g.key == key)
            .unwrap_or_else(|| panic!("no {by} {key} in {w:?}"))
            .clone()
    };
    let close = |a: Option<f64>, b: f64| {
        assert!(a.is_some_and(|a| (a - b).abs() < 1e-6), "{a:?} != {b}");
    };
    let all = get("all", "");
    assert_eq!((all.merged, all.failed, all.cost_microusd), (5, 1, 15_700));
    // Merged after 100, 200, 300, 400, 1,000 s: median 300, p90 400 + 0.6 × 600.
    close(all.merge_seconds_p50, 300.0);
    close(all.merge_seconds_p90, 760.0);
    let sonnet = get("model", "sonnet");
    assert_eq!(
        (sonnet.merged, sonnet.failed, sonnet.cost_microusd),
        (3, 1, 3_500)
    );
    close(sonnet.merge_seconds_p50, 200.0);
    close(sonnet.merge_seconds_p90, 280.0);
    let opus = get("model", "opus");
    close(opus.merge_seconds_p50, 700.0);
    assert_eq!(opus.cost_microusd, 12_000);
    let haiku = get("model", "haiku");
    assert_eq!(
        (haiku.merged, haiku.failed, haiku.merge_seconds_p50),
        (0, 0, None)
    );
    let web_row = get("repo", "acme/web");
    assert_eq!((web_row.merged, web_row.cost_microusd), (4, 12_000));
    close(web_row.merge_seconds_p50, 250.0);
    close(web_row.merge_seconds_p90, 790.0);
    let api_row = get("repo", "acme/api");
    assert_eq!(
        (api_row.merged, api_row.failed, api_row.cost_microusd),
        (1, 1, 3_700)
    );
    assert_eq!(w.len(), 1 + 3 + 2, "{w:?}");

    // One repository only; a window wide enough for the old task.
    let only = store.window_stats(14, Some(api.id)).await.unwrap();
    assert_eq!(only.iter().find(|g| g.by == "all").unwrap().merged, 1);
    assert!(only.iter().all(|g| g.key != "acme/web"));
    let wide = store.window_stats(60, None).await.unwrap();
    assert_eq!(wide.iter().find(|g| g.by == "all").unwrap().merged, 6);
}

/// The window's percentiles need its rows, so a computed window is served again until a task
/// ends (or is charged after its end): a change the window would show but that ends nothing is
/// not read again; the next end brings everything in.
#[tokio::test]
async fn a_window_is_computed_again_once_a_task_ends() {
    let (store, _) = crate::store_and_url().await;
    let web = crate::repo(&store, "acme/web").await;
    let runner = crate::runner(&store, "r1").await;
    let first = crate::queued(&store, &web, "first").await;
    ended(
        &store,
        runner,
        first.id,
        Status::Merged,
        "sonnet",
        100,
        1_000,
    )
    .await;
    let merged = |w: &[controller::store::metrics::GroupStats], key: &str| {
        w.iter()
            .find(|g| g.by == "model" && g.key == key)
            .map_or(0, |g| g.merged)
    };
    let w = store.window_stats(14, None).await.unwrap();
    assert_eq!(merged(&w, "sonnet"), 1);
    // Nothing ended: the window is served as it was computed.
    sqlx::query("UPDATE tasks SET model = 'opus' WHERE id = $1")
        .bind(first.id)
        .execute(store.pool())
        .await
        .unwrap();
    let w = store.window_stats(14, None).await.unwrap();
    assert_eq!((merged(&w, "sonnet"), merged(&w, "opus")), (1, 0));
    // A task ends: computed again, with both changes.
    let second = crate::queued(&store, &web, "second").await;
    ended(
        &store,
        runner,
        second.id,
        Status::Merged,
        "sonnet",
        200,
        1_000,
    )
    .await;
    let w = store.window_stats(14, None).await.unwrap();
    assert_eq!((merged(&w, "sonnet"), merged(&w, "opus")), (1, 1));
}

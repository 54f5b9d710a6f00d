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

//! Numbers for the Prometheus endpoint (rendered by `http::health`), read from the store in the
//! background (so every replica reports the same fleet-wide values): queue depth by required
//! labels, schedule-to-start latency, leases close to expiry, expired leases, requeues, cancel
//! latency, log gaps, cost. None of the reads grows with history: all-time figures come from the
//! rollups and counters the triggers keep (migrations 0023 and 0028), recent ones through indexes.

use serde::Serialize;

use super::lifecycle::{Status, status_texts};
use super::{RepoId, Result, Store};

/// One scrape's values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// (labels joined by `,`, queued tasks not held).
    pub queue_depth: Vec<(String, i64)>,
    /// Tasks per status.
    pub tasks_by_status: Vec<(String, i64)>,
    /// Seconds from `queued` to `leased` over the last hour: (p50, p90, p99) of the hour's latest
    /// [`SCHEDULE_SAMPLE`] leases, and the count of all of them.
    pub schedule_to_start: (f64, f64, f64, i64),
    /// Live leases with less than a third of their length left.
    pub leases_near_expiry: i64,
    /// Leases that expired (reaper), all time.
    pub expired_leases: i64,
    /// Requeues (by people) and retries (by failure), all time.
    pub requeues: i64,
    /// Automatic retries, all time.
    pub retries: i64,
    /// Mean seconds from a cancel request to the task being canceled, last day.
    pub cancel_latency: f64,
    /// Log chunks dropped past the per-attempt cap, all time.
    pub log_chunks_dropped: i64,
    /// (purpose, model, micro-dollars), all time.
    pub cost: Vec<(String, String, i64)>,
    /// Runners per state.
    pub runners: Vec<(String, i64)>,
    /// Tasks merged, all time (the denominator of cost per merged PR).
    pub merged: i64,
    /// Today's daily budgets: (scope — `fleet` or a repository —, spent, granted, budget).
    pub budgets_today: Vec<(String, i64, i64, Option<i64>)>,
}

/// All-time statistics: ended tasks from `task_rollups`, live ones from `tasks`. The status lists
/// are written out (`Status::TERMINAL`, `Status::OUTCOMES`; checked by a test) so the live part
/// matches the `tasks_live` partial index. Binds: $1 repository (NULL: all).
const STATS_SQL: &str = "WITH ended AS ( \
       SELECT COALESCE(sum(tasks) FILTER (WHERE status = 'merged'), 0)::bigint AS merged, \
              COALESCE(sum(tasks) FILTER (WHERE status = 'failed'), 0)::bigint AS failed, \
              COALESCE(sum(tasks) FILTER (WHERE status = 'canceled'), 0)::bigint AS canceled, \
              sum(seconds) FILTER (WHERE status = 'merged') AS merge_seconds, \
              COALESCE(sum(retried) FILTER (WHERE status IN ('merged', 'failed')), 0)::float8 AS retried, \
              COALESCE(sum(cost_microusd) FILTER (WHERE status IN ('merged', 'failed')), 0)::float8 AS outcome_cost, \
              COALESCE(sum(cost_microusd), 0)::bigint AS ended_cost \
         FROM task_rollups WHERE $1::bigint IS NULL OR repo_id = $1), \
     live AS ( \
       SELECT count(*) AS live, COALESCE(sum(cost_microusd), 0)::bigint AS cost FROM tasks \
        WHERE status NOT IN ('merged', 'failed', 'canceled', 'finished') AND ($1::bigint IS NULL OR repo_id = $1)) \
     SELECT merged, failed, canceled, live.live, \
            merged::float8 / NULLIF(merged + failed, 0) AS success_rate, \
            merge_seconds / NULLIF(merged, 0) AS avg_seconds_to_merge, \
            retried / NULLIF(merged + failed, 0) AS retry_rate, \
            outcome_cost / NULLIF(merged + failed, 0) AS avg_cost_microusd, \
            (ended_cost + live.cost)::bigint AS total_cost_microusd, \
            (ended_cost + live.cost)::float8 / NULLIF(merged, 0) AS cost_per_merged_microusd \
       FROM ended, live";

/// The most leases of the last hour whose waits the schedule-to-start quantiles are taken from.
pub const SCHEDULE_SAMPLE: i64 = 5_000;

impl Store {
    /// Reads every metric.
    pub async fn metrics(&self) -> Result<Metrics> {
        let p = &self.pool;
        let queue_depth = sqlx::query_as(
            "SELECT array_to_string(required_labels, ','), count(*) FROM tasks \
             WHERE status = 'queued' AND hold_kind IS NULL GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(p)
        .await?;
        let tasks_by_status = sqlx::query_as(TASKS_BY_STATUS_SQL).fetch_all(p).await?;
        // The quantiles come from the hour's latest leases (at most `SCHEDULE_SAMPLE`, each
        // looking up when its task last entered the queue), the count from all of them: a busy
        // fleet's hour of leases would otherwise cost a lookup each at every computation.
        let schedule_to_start: (Option<f64>, Option<f64>, Option<f64>, i64) = sqlx::query_as(
            "WITH recent AS MATERIALIZED ( \
               SELECT l.task_id, l.id, l.at FROM task_events l \
               WHERE l.to_status = 'leased' AND l.at > now() - interval '1 hour' ORDER BY l.at DESC LIMIT $1), \
             waits AS MATERIALIZED ( \
               SELECT EXTRACT(EPOCH FROM r.at - (SELECT q.at FROM task_events q \
                        WHERE q.task_id = r.task_id AND q.to_status = 'queued' AND q.id < r.id \
                        ORDER BY q.task_id DESC, q.id DESC LIMIT 1))::float8 AS s FROM recent r) \
             SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.9) WITHIN GROUP (ORDER BY s), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY s), \
                    (SELECT count(*) FROM task_events WHERE to_status = 'leased' AND at > now() - interval '1 hour') \
             FROM waits",
        )
        .bind(SCHEDULE_SAMPLE)
        .fetch_one(p)
        .await?;
        let leases_near_expiry = sqlx::query_scalar(LEASES_NEAR_EXPIRY_SQL)
            .fetch_one(p)
            .await?;
        let counters: Vec<(String, i64)> = sqlx::query_as("SELECT name, n FROM metric_counters")
            .fetch_all(p)
            .await?;
        let counter = |name: &str| {
            counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        };
        let cancel_latency: Option<f64> = sqlx::query_scalar(
            "SELECT avg(EXTRACT(EPOCH FROM finished_at - cancel_requested_at))::float8 FROM tasks \
             WHERE status = 'canceled' AND cancel_requested_at IS NOT NULL AND finished_at > now() - interval '1 day'",
        )
        .fetch_one(p)
        .await?;
        let cost = sqlx::query_as(
            "SELECT purpose, model, COALESCE(sum(cost_microusd), 0)::bigint FROM usage_rollups \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(p)
        .await?;
        let runners = sqlx::query_as("SELECT state, count(*) FROM runners GROUP BY 1 ORDER BY 1")
            .fetch_all(p)
            .await?;
        let merged = sqlx::query_scalar(
            "SELECT COALESCE(sum(tasks), 0)::bigint FROM task_rollups WHERE status = 'merged'",
        )
        .fetch_one(p)
        .await?;
        let budgets_today = sqlx::query_as(
            "SELECT 'fleet', CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END, \
                    day_granted_microusd, budget_global_daily_microusd FROM settings \
             UNION ALL \
             SELECT name, CASE WHEN spend_day = (now() AT TIME ZONE 'UTC')::date THEN day_spent_microusd ELSE 0 END, \
                    day_granted_microusd, budget_daily_microusd FROM repos ORDER BY 1",
        )
        .fetch_all(p)
        .await?;
        Ok(Metrics {
            queue_depth,
            tasks_by_status,
            schedule_to_start: (
                schedule_to_start.0.unwrap_or(0.0),
                schedule_to_start.1.unwrap_or(0.0),
                schedule_to_start.2.unwrap_or(0.0),
                schedule_to_start.3,
            ),
            leases_near_expiry,
            expired_leases: counter("expired_leases"),
            requeues: counter("requeues"),
            retries: counter("retries"),
            cancel_latency: cancel_latency.unwrap_or(0.0),
            log_chunks_dropped: counter("log_chunks_dropped"),
            cost,
            runners,
            merged,
            budgets_today,
        })
    }
}

/// Fleet statistics.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct Stats {
    /// Tasks merged.
    pub merged: i64,
    /// Tasks failed.
    pub failed: i64,
    /// Tasks canceled.
    pub canceled: i64,
    /// Tasks not ended.
    pub live: i64,
    /// merged / (merged + failed).
    pub success_rate: Option<f64>,
    /// Mean seconds from creation to merge.
    pub avg_seconds_to_merge: Option<f64>,
    /// Share of ended tasks that needed any retry.
    pub retry_rate: Option<f64>,
    /// Mean cost of ended tasks, micro-dollars.
    pub avg_cost_microusd: Option<f64>,
    /// Total cost, micro-dollars.
    pub total_cost_microusd: i64,
    /// What a merged PR cost: all spending (failed and canceled tasks included) over the merged
    /// count, micro-dollars.
    pub cost_per_merged_microusd: Option<f64>,
}

/// Spending on one model, from the ledger.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ModelCost {
    /// Model (as called).
    pub model: String,
    /// Spent on it, micro-dollars.
    pub cost_microusd: i64,
}

/// Per repository and day.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DayStats {
    /// Repository name.
    pub repo: String,
    /// Day (UTC).
    pub day: chrono::NaiveDate,
    /// Merged that day.
    pub merged: i64,
    /// Failed that day.
    pub failed: i64,
    /// Model spending that day, micro-dollars.
    pub cost_microusd: i64,
}

impl Store {
    /// Fleet statistics (optionally for one repository).
    pub async fn stats(&self, repo: Option<RepoId>) -> Result<Stats> {
        // Ended tasks from their rollups (migration 0023), live ones from `tasks` through the
        // `tasks_live` partial index: the cost does not grow with history.
        Ok(sqlx::query_as(STATS_SQL)
            .bind(repo)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Spending per model (optionally for one repository), all time, dearest first.
    pub async fn cost_by_model(&self, repo: Option<RepoId>) -> Result<Vec<ModelCost>> {
        Ok(sqlx::query_as(
            "SELECT model, COALESCE(sum(cost_microusd), 0)::bigint AS cost_microusd FROM usage_rollups \
             WHERE $1::bigint IS NULL OR repo_id = $1 GROUP BY 1 ORDER BY 2 DESC, 1",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Outcomes and spending per repository and day, last `days` days.
    pub async fn stats_by_day(&self, days: i32) -> Result<Vec<DayStats>> {
        Ok(sqlx::query_as(
            "WITH days AS (SELECT g::date AS day FROM generate_series(current_date - ($1 - 1), current_date, interval '1 day') g), \
                  ended AS (SELECT repo_id, day, \
                                   sum(tasks) FILTER (WHERE status = 'merged')::bigint AS merged, \
                                   sum(tasks) FILTER (WHERE status = 'failed')::bigint AS failed \
                            FROM task_rollups WHERE status = ANY($2) AND day >= current_date - ($1 - 1) \
                            GROUP BY 1, 2), \
                  spent AS (SELECT repo_id, day, sum(cost_microusd)::bigint AS cost \
                            FROM usage_rollups WHERE day >= current_date - ($1 - 1) GROUP BY 1, 2) \
             SELECT r.name AS repo, d.day, COALESCE(e.merged, 0) AS merged, COALESCE(e.failed, 0) AS failed, \
                    COALESCE(s.cost, 0)::bigint AS cost_microusd \
             FROM repos r CROSS JOIN days d \
             LEFT JOIN ended e ON e.repo_id = r.id AND e.day = d.day \
             LEFT JOIN spent s ON s.repo_id = r.id AND s.day = d.day \
             ORDER BY r.name, d.day",
        )
        .bind(days.clamp(1, 366))
        .bind(status_texts(Status::OUTCOMES))
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Tasks per status: ended ones from `task_rollups`, live ones through the `tasks_live` partial
/// index (`Status::TERMINAL` written out, checked by a test).
const TASKS_BY_STATUS_SQL: &str = "SELECT status, sum(tasks)::bigint FROM task_rollups \
    GROUP BY 1 HAVING sum(tasks) > 0 \
    UNION ALL \
    SELECT status, count(*) FROM tasks WHERE status NOT IN ('merged', 'failed', 'canceled', 'finished') GROUP BY 1 \
    ORDER BY 1";

/// Outcomes of the tasks that ended in a window, for the whole fleet (`by` = `all`), per
/// repository (`repo`) and per model (`model`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GroupStats {
    /// `all`, `repo` or `model`.
    pub by: String,
    /// The repository or the model (empty for `all`).
    pub key: String,
    /// Merged in the window.
    pub merged: i64,
    /// Failed in the window.
    pub failed: i64,
    /// Median seconds from creation to merge.
    pub merge_seconds_p50: Option<f64>,
    /// 90th percentile of the seconds from creation to merge.
    pub merge_seconds_p90: Option<f64>,
    /// What the tasks that ended in the window cost (canceled ones too), micro-dollars.
    pub cost_microusd: i64,
}

/// Tasks ended in the last `$1` days (optionally of repository `$2`), through the `tasks_finished`
/// index: bounded by the window, not by history. Percentiles need the rows, which the rollups do
/// not keep.
const WINDOW_SQL: &str = "SELECT CASE WHEN GROUPING(r.name) = 0 THEN 'repo' WHEN GROUPING(t.model) = 0 THEN 'model' ELSE 'all' END AS by, \
       COALESCE(CASE WHEN GROUPING(r.name) = 0 THEN r.name WHEN GROUPING(t.model) = 0 THEN t.model END, '') AS key, \
       count(*) FILTER (WHERE t.status = 'merged') AS merged, \
       count(*) FILTER (WHERE t.status = 'failed') AS failed, \
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM t.finished_at - t.created_at)::float8) \
           FILTER (WHERE t.status = 'merged') AS merge_seconds_p50, \
       percentile_cont(0.9) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM t.finished_at - t.created_at)::float8) \
           FILTER (WHERE t.status = 'merged') AS merge_seconds_p90, \
       COALESCE(sum(t.cost_microusd), 0)::bigint AS cost_microusd \
  FROM tasks t JOIN repos r ON r.id = t.repo_id \
 WHERE t.finished_at >= now() - make_interval(days => $1) AND t.status IN ('merged', 'failed', 'canceled') \
   AND ($2::bigint IS NULL OR t.repo_id = $2) \
 GROUP BY GROUPING SETS ((), (r.name), (t.model)) ORDER BY 1, 2";

/// The longest a window's statistics are served again while no task ended (the window's edge
/// moves meanwhile): percentiles need the window's rows (a busy fleet's fortnight costs a
/// hundred milliseconds or more), and every dashboard that opens asks for them.
pub const WINDOW_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Most windows kept at once (by days and repository); past it all are forgotten.
const WINDOWS_KEPT: usize = 64;

/// What changes whenever a task ends, is requeued from an end or charged after it: the totals
/// of the ended tasks' rollup (a few hundred rows, not the tasks).
const ENDED_TOTALS_SQL: &str = "SELECT COALESCE(sum(tasks), 0)::bigint, \
    COALESCE(sum(cost_microusd), 0)::bigint, COALESCE(sum(seconds), 0)::float8 FROM task_rollups";

type EndedTotals = (i64, i64, f64);
type WindowKey = (i32, Option<RepoId>);
type KeptWindow = (EndedTotals, std::time::Instant, Vec<GroupStats>);

/// Window statistics computed lately, per process, each with the ended tasks' totals it was
/// computed at.
#[derive(Debug, Clone, Default)]
pub(super) struct WindowCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<WindowKey, KeptWindow>>>,
);

impl Store {
    /// Outcomes, time to merge (p50, p90) and cost of the tasks that ended in the last `days`
    /// days (1 to 366), for the fleet and per repository and model. Computed again when a task
    /// ended since the last computation (or [`WINDOW_KEPT_FOR`] passed), else served as before.
    pub async fn window_stats(&self, days: i32, repo: Option<RepoId>) -> Result<Vec<GroupStats>> {
        let key = (days.clamp(1, 366), repo);
        let totals: EndedTotals = sqlx::query_as(ENDED_TOTALS_SQL)
            .fetch_one(&self.pool)
            .await?;
        let kept = self
            .windows
            .0
            .lock()
            .expect("window cache")
            .get(&key)
            .cloned();
        if let Some((at_totals, at, v)) = kept
            && at_totals == totals
            && at.elapsed() < WINDOW_KEPT_FOR
        {
            return Ok(v);
        }
        let v: Vec<GroupStats> = sqlx::query_as(WINDOW_SQL)
            .bind(key.0)
            .bind(repo)
            .fetch_all(&self.pool)
            .await?;
        let mut kept = self.windows.0.lock().expect("window cache");
        if kept.len() >= WINDOWS_KEPT {
            kept.clear();
        }
        kept.insert(key, (totals, std::time::Instant::now(), v.clone()));
        Ok(v)
    }
}

/// Leases with less than a third of their time left: `Status::ACTIVE` written out for the
/// `tasks_live_leases` index.
const LEASES_NEAR_EXPIRY_SQL: &str = "SELECT count(*) FROM tasks \
    WHERE status IN ('leased', 'running', 'verifying') \
    AND lease_expires_at - now() < (lease_expires_at - leased_at) / 3";

#[cfg(test)]
mod tests {
    use super::super::lifecycle::sql_list;
    use super::*;

    #[test]
    fn the_statistics_lists_are_the_sets_and_the_live_one_matches_its_index() {
        let terminal = format!("status NOT IN {}", sql_list(Status::TERMINAL));
        assert!(STATS_SQL.contains(&terminal));
        assert!(TASKS_BY_STATUS_SQL.contains(&terminal));
        assert!(STATS_SQL.contains(&format!("status IN {}", sql_list(Status::OUTCOMES))));
        let schema = include_str!("../../../migrations/0032_best_of.sql");
        assert!(schema.contains(&format!("tasks_live ON tasks (repo_id) WHERE {terminal}")));
    }

    #[test]
    fn the_written_out_list_is_the_active_set() {
        assert!(
            LEASES_NEAR_EXPIRY_SQL.contains(&format!("status IN {}", sql_list(Status::ACTIVE)))
        );
    }
}

//! Retention: what piles up is pruned by age, in bounded batches, so no statement holds locks for
//! long and a large backlog drains over several passes — log chunks and result bundles of tasks
//! that ended long enough ago (never of a task under way), webhook delivery ids (which only
//! de-duplicate redeliveries) and audit rows.

use std::time::Duration;

use super::{Result, Store};

/// How long each kind of row is kept (`None`: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Log chunks of tasks that ended this long ago.
    pub logs: Option<Duration>,
    /// Result bundles of tasks that ended this long ago.
    pub bundles: Option<Duration>,
    /// Webhook delivery ids received this long ago.
    pub deliveries: Option<Duration>,
    /// Audit rows this old.
    pub audit: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            logs: Some(Duration::from_secs(30 * DAY)),
            bundles: Some(Duration::from_secs(14 * DAY)),
            deliveries: Some(Duration::from_secs(7 * DAY)),
            audit: Some(Duration::from_secs(365 * DAY)),
        }
    }
}

/// Rows removed by one [`Store::prune_batch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Log chunks.
    pub logs: u64,
    /// Bundles.
    pub bundles: u64,
    /// Webhook deliveries.
    pub deliveries: u64,
    /// Audit rows.
    pub audit: u64,
}

impl Pruned {
    /// Rows removed in all.
    pub fn total(&self) -> u64 {
        self.logs + self.bundles + self.deliveries + self.audit
    }
}

/// What each kind prunes: its rows past an age (`$1`, seconds), at most `$2` of them.
const PRUNE: [&str; 4] = [
    // Log chunks of ended tasks.
    "DELETE FROM log_chunks WHERE (task_id, attempt, seq) IN ( \
       SELECT c.task_id, c.attempt, c.seq FROM tasks t JOIN log_chunks c ON c.task_id = t.id \
       WHERE t.finished_at < now() - make_interval(secs => $1) LIMIT $2)",
    // Bundles of ended tasks.
    "DELETE FROM task_bundles WHERE (task_id, attempt) IN ( \
       SELECT b.task_id, b.attempt FROM tasks t JOIN task_bundles b ON b.task_id = t.id \
       WHERE t.finished_at < now() - make_interval(secs => $1) LIMIT $2)",
    // Webhook delivery ids.
    "DELETE FROM webhook_deliveries WHERE delivery_id IN ( \
       SELECT delivery_id FROM webhook_deliveries \
       WHERE received_at < now() - make_interval(secs => $1) LIMIT $2)",
    // Audit rows.
    "DELETE FROM audit_log WHERE id IN ( \
       SELECT id FROM audit_log WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
];

impl Store {
    /// Removes at most `batch` rows of each kind past `keep`; call again while it removes a
    /// full batch of any kind.
    pub async fn prune_batch(&self, keep: &Retention, batch: i64) -> Result<Pruned> {
        let ages = [keep.logs, keep.bundles, keep.deliveries, keep.audit];
        let mut removed = [0u64; 4];
        for ((sql, age), n) in PRUNE.iter().zip(ages).zip(removed.iter_mut()) {
            let Some(age) = age else { continue };
            *n = sqlx::query(*sql)
                .bind(age.as_secs_f64())
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        let [logs, bundles, deliveries, audit] = removed;
        Ok(Pruned {
            logs,
            bundles,
            deliveries,
            audit,
        })
    }
}

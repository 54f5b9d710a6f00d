//! The usage ledger: one row per model call the controller makes (and, written with each runner
//! completion in `completion.rs`, one per attempt for the agent's metered calls), attributed to its
//! task and repository. Sums are read by the stats and metrics queries.

use super::{RepoId, Result, Store, TaskId};

/// One line of a task's cost breakdown: its calls for one purpose and model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageLine {
    /// `agent`, `triage`, `review`, `reflection`, …
    pub purpose: String,
    /// The model called.
    pub model: String,
    /// How many ledger rows (calls, or agent attempts).
    pub calls: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_microusd: i64,
}

impl Store {
    /// Records one model call.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_usage(
        &self,
        task: Option<TaskId>,
        repo: Option<RepoId>,
        purpose: &str,
        model: &str,
        input_tokens: i64,
        output_tokens: i64,
        cost_microusd: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO usage_ledger (task_id, repo_id, purpose, model, input_tokens, output_tokens, cost_microusd) \
             VALUES ($1, COALESCE($2, (SELECT repo_id FROM tasks WHERE id = $1)), $3, $4, $5, $6, $7)",
        )
        .bind(task)
        .bind(repo)
        .bind(purpose)
        .bind(model)
        .bind(input_tokens)
        .bind(output_tokens)
        .bind(cost_microusd)
        .execute(&mut *tx)
        .await?;
        if let Some(t) = task {
            sqlx::query("UPDATE tasks SET cost_microusd = cost_microusd + $2 WHERE id = $1")
                .bind(t)
                .bind(cost_microusd)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A task's spending per purpose and model, dearest first (through `usage_ledger_task`).
    pub async fn task_usage(&self, task: TaskId) -> Result<Vec<UsageLine>> {
        Ok(sqlx::query_as(
            "SELECT purpose, model, count(*) AS calls, COALESCE(sum(input_tokens), 0)::bigint AS input_tokens, \
                    COALESCE(sum(output_tokens), 0)::bigint AS output_tokens, \
                    COALESCE(sum(cost_microusd), 0)::bigint AS cost_microusd \
             FROM usage_ledger WHERE task_id = $1 GROUP BY 1, 2 ORDER BY 6 DESC, 1, 2",
        )
        .bind(task)
        .fetch_all(&self.pool)
        .await?)
    }
}

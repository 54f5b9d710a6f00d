//! The usage ledger: one row per model call the controller makes (and, written with each runner
//! completion in `completion.rs`, one per attempt for the agent's metered calls), attributed to its
//! task and repository. Sums are read by the stats and metrics queries.

use super::{RepoId, Result, Store, TaskId};

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
}

//! The usage ledger: one row per model call made anywhere (controller calls here; runner calls
//! arrive with their results), and the sums the dashboard and budgets read.

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

    /// Ledger rows of a task: (purpose, model, input, output, cost).
    pub async fn usage_of(&self, task: TaskId) -> Result<Vec<(String, String, i64, i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT purpose, model, input_tokens, output_tokens, cost_microusd FROM usage_ledger WHERE task_id = $1 ORDER BY id",
        )
        .bind(task)
        .fetch_all(&self.pool)
        .await?)
    }
}

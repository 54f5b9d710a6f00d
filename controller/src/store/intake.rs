//! What intake stores: webhook deliveries handled, the poller's ETags, the live task of an issue
//! or of a pull request, and PR feedback acted on (once per comment or review).

use serde_json::Value;

use super::lifecycle::{RepoId, Status, TaskId, status_texts, task_columns};
use super::{Note, Result, Store, Task, lifecycle};

impl Store {
    /// Whether a webhook delivery was handled already: its id, or its body (by SHA-256: a
    /// signed body sent again under another id is the same event).
    pub async fn delivery_seen(&self, delivery: &str, body_sha256: &[u8]) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE delivery_id = $1 OR body_sha256 = $2)",
        )
        .bind(delivery)
        .bind(body_sha256)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records a handled webhook delivery by id and body digest; `false` when it was recorded
    /// before.
    pub async fn record_delivery(
        &self,
        delivery: &str,
        event: &str,
        body_sha256: &[u8],
    ) -> Result<bool> {
        Ok(sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, event, body_sha256) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(delivery)
        .bind(event)
        .bind(body_sha256)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// The live task of an issue, if there is one.
    pub async fn live_task_of_issue(&self, repo: RepoId, issue: i64) -> Result<Option<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE repo_id = $1 AND issue_number = $2 ",
            "AND status <> ALL($3)"
        ))
        .bind(repo)
        .bind(issue)
        .bind(status_texts(Status::TERMINAL))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The live task whose PR is `number` in repository `repo`.
    pub async fn task_by_pr(&self, repo: &str, number: i64) -> Result<Option<Task>> {
        Ok(sqlx::query_as::<_, Task>(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE repo_id = (SELECT id FROM repos WHERE name = $1) AND pr_number = $2 ",
            "AND status <> ALL($3) ORDER BY id DESC LIMIT 1"
        ))
        .bind(repo)
        .bind(number)
        .bind(status_texts(Status::TERMINAL))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Re-opens a task for PR feedback `key` unless that feedback was acted on already
    /// (`Ok(None)`). One transaction: the key and the transition land together.
    pub async fn reopen_once(
        &self,
        id: TaskId,
        key: &str,
        context: &Value,
        note: &Note,
    ) -> Result<Option<Task>> {
        let mut tx = self.pool.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO task_feedback (task_id, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(None);
        }
        let row = super::tasks::reopen_in(&mut tx, id, context, note).await?;
        match row {
            Some(t) => {
                tx.commit().await?;
                Ok(Some(t))
            }
            None => {
                drop(tx);
                Err(self.refused(id, lifecycle::REOPEN).await)
            }
        }
    }

    /// The poller's ETag for a repository.
    pub async fn poll_etag(&self, repo: RepoId) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT poll_etag FROM repos WHERE id = $1")
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Stores the poller's ETag.
    pub async fn set_poll_etag(&self, repo: RepoId, etag: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE repos SET poll_etag = $2 WHERE id = $1")
            .bind(repo)
            .bind(etag)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

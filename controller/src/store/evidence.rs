//! Evidence records and their signing key (migration 0029): the controller's Ed25519 key, kept
//! like the runner CA — one row, created once under an advisory lock, shared by replicas —, one
//! signed record per attempt that reached push, with the attempt's transcript, and the ledger
//! rows a record lists. The record's meaning and its signing live in [`crate::evidence`].

use chrono::{DateTime, Utc};

use super::{Error, Result, Store, TaskId};

/// A stored, signed record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvidence {
    /// Task.
    pub task_id: TaskId,
    /// Attempt.
    pub attempt: i32,
    /// The head commit the record is about.
    pub head_sha: String,
    /// The record, exactly the bytes that were signed.
    pub record: String,
    /// Ed25519 signature over `record`.
    pub signature: Vec<u8>,
    /// SHA-256 (hex) of the public key that signed.
    pub key_id: String,
    /// Whether the PR names this record yet.
    pub announced: bool,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// One row of the usage ledger, as a record lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerRow {
    /// Ledger id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// `agent`, `triage`, `review`, …
    pub purpose: String,
    /// Model.
    pub model: String,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// Cache writes.
    pub cache_write_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_microusd: i64,
}

impl Store {
    /// The evidence signing key (PKCS#8 and raw public key), creating it with `make` when there
    /// is none yet. Replicas starting together agree on one: creation happens under an advisory
    /// lock.
    pub async fn load_or_create_evidence_key(
        &self,
        make: impl FnOnce() -> std::result::Result<(Vec<u8>, Vec<u8>), String>,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        if let Some(pair) = self.evidence_key().await? {
            return Ok(pair);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backporcher.evidence_key'))")
            .execute(&mut *tx)
            .await?;
        let row: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT pkcs8, public_key FROM evidence_key")
                .fetch_optional(&mut *tx)
                .await?;
        let pair = match row {
            Some(r) => r,
            None => {
                let (pkcs8, public) = make().map_err(Error::Invalid)?;
                sqlx::query("INSERT INTO evidence_key (pkcs8, public_key) VALUES ($1, $2)")
                    .bind(&pkcs8)
                    .bind(&public)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!("created the evidence signing key");
                (pkcs8, public)
            }
        };
        tx.commit().await?;
        Ok(pair)
    }

    /// The evidence signing key, if it was made.
    pub async fn evidence_key(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(sqlx::query_as("SELECT pkcs8, public_key FROM evidence_key")
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Stores an attempt's signed record unless it has one; returns the one stored (the first
    /// made wins, so a retried push keeps the record the PR names).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_evidence(
        &self,
        task: TaskId,
        attempt: i32,
        head_sha: &str,
        record: &str,
        signature: &[u8],
        key_id: &str,
        trajectory: &str,
    ) -> Result<StoredEvidence> {
        sqlx::query(
            "INSERT INTO evidence_records (task_id, attempt, head_sha, record, signature, key_id, trajectory) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (task_id, attempt) DO NOTHING",
        )
        .bind(task)
        .bind(attempt)
        .bind(head_sha)
        .bind(record)
        .bind(signature)
        .bind(key_id)
        .bind(trajectory)
        .execute(&self.pool)
        .await?;
        self.evidence(task, attempt)
            .await?
            .ok_or(Error::TaskNotFound(task))
    }

    /// An attempt's signed record.
    pub async fn evidence(&self, task: TaskId, attempt: i32) -> Result<Option<StoredEvidence>> {
        Ok(sqlx::query_as(
            "SELECT task_id, attempt, head_sha, record, signature, key_id, announced, created_at \
             FROM evidence_records WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The newest signed record of a task (its highest attempt that has one).
    pub async fn latest_evidence(&self, task: TaskId) -> Result<Option<StoredEvidence>> {
        Ok(sqlx::query_as(
            "SELECT task_id, attempt, head_sha, record, signature, key_id, announced, created_at \
             FROM evidence_records WHERE task_id = $1 ORDER BY attempt DESC LIMIT 1",
        )
        .bind(task)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// An attempt's transcript (`backporcher.trajectory/1`), as its record hashed it.
    pub async fn trajectory(&self, task: TaskId, attempt: i32) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT trajectory FROM evidence_records WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks an attempt's record as named by its PR.
    pub async fn set_evidence_announced(&self, task: TaskId, attempt: i32) -> Result<()> {
        sqlx::query(
            "UPDATE evidence_records SET announced = true WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every usage-ledger row of a task, oldest first (at most `limit`).
    pub async fn ledger_rows(&self, task: TaskId, limit: i64) -> Result<Vec<LedgerRow>> {
        Ok(sqlx::query_as(
            "SELECT id, at, purpose, model, input_tokens, output_tokens, cache_read_tokens, \
                    cache_write_tokens, cost_microusd \
             FROM usage_ledger WHERE task_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(task)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

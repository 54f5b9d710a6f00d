//! What a runner ships while it works: log chunks (acknowledged once stored, idempotent per
//! sequence number, capped per attempt with the rest counted) and the result bundle — each write
//! fenced by the lease key. Readers page: chunks after a sequence number up to a count and a byte
//! budget ([`Store::log_page`]), or the last chunks ([`Store::log_tail`]); neither reads more of
//! an attempt's log than it returns.

use super::claims::LeaseRef;
use super::lifecycle::{Status, TaskId, status_texts};
use super::{Error, Result, Store};

/// Largest log chunk accepted, in bytes. Larger chunks must be split by the runner.
pub const MAX_LOG_CHUNK: usize = 256 * 1024;
/// Most log bytes stored per attempt; the rest is acknowledged, counted and dropped.
pub const MAX_LOG_BYTES: i64 = proto::limits::MAX_LOG_BYTES as i64;
/// Most chunks stored per attempt (a log is bounded in rows as well as in bytes): past it, chunks
/// are acknowledged, counted and dropped like those past the byte cap. An honest runner's chunks
/// average far more than the 256 bytes this leaves each one of a full log.
pub const MAX_LOG_CHUNKS: i64 = MAX_LOG_BYTES / 256;
/// The longest stream name a chunk may carry (`agent`, `agent.stderr`, `verify`, …).
pub const MAX_STREAM_NAME: usize = 32;

/// The lease that may store a bundle: live, this runner's, and not a read-only plan run. Binds
/// $1 task, $2 attempt, $3 token, $4 runner, $5 the active statuses.
const BUNDLE_LEASE: &str = "id = $1 AND attempt = $2 AND lease_token = $3 AND runner_id = $4 \
    AND status = ANY($5) AND plan_attempt IS DISTINCT FROM attempt";

/// Whether `s` is a stream name a log chunk may carry.
fn stream_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STREAM_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
/// Most bytes one page of log returns (at least one chunk is returned, whatever its size).
pub const MAX_LOG_PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// A stored log chunk: (seq, stream, bytes, when the controller received it).
pub type LogRow = (i64, String, Vec<u8>, chrono::DateTime<chrono::Utc>);

impl Store {
    /// Stores the result bundle of an attempt (replacing an earlier upload of the same attempt).
    pub async fn store_bundle(&self, lease: &LeaseRef, data: &[u8], sha256: &str) -> Result<()> {
        let stored = self
            .fenced(lease, || self.store_bundle_once(lease, data, sha256))
            .await?;
        match stored {
            Some(()) => Ok(()),
            None => Err(self.bundle_refusal(lease).await),
        }
    }

    /// One try of [`Store::store_bundle`]: `None` when the lease did not take it.
    async fn store_bundle_once(
        &self,
        lease: &LeaseRef,
        data: &[u8],
        sha256: &str,
    ) -> Result<Option<()>> {
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO task_bundles (task_id, attempt, size, sha256, data) \
             SELECT id, attempt, $6, $7, $8 FROM tasks WHERE {BUNDLE_LEASE} \
             ON CONFLICT (task_id, attempt) DO UPDATE SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, \
               data = EXCLUDED.data, received_at = now()"
        )))
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(lease.runner_id)
        .bind(status_texts(Status::ACTIVE))
        .bind(data.len() as i64)
        .bind(sha256)
        .bind(data)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((n > 0).then_some(()))
    }

    /// Whether `lease` may upload a bundle now ([`Store::store_bundle`]'s own condition), so
    /// that nothing of an upload is kept for a lease that cannot store it.
    pub async fn check_bundle_lease(&self, lease: &LeaseRef) -> Result<()> {
        match self.fenced(lease, || self.bundle_lease_ok(lease)).await? {
            Some(()) => Ok(()),
            None => Err(self.bundle_refusal(lease).await),
        }
    }

    /// `Some` when `lease` is one that may store a bundle now.
    async fn bundle_lease_ok(&self, lease: &LeaseRef) -> Result<Option<()>> {
        let ok: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM tasks WHERE {BUNDLE_LEASE}"
        )))
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(lease.runner_id)
        .bind(status_texts(Status::ACTIVE))
        .fetch_optional(&self.pool)
        .await?;
        Ok(ok.map(|_| ()))
    }

    /// Why `lease` may not store a bundle.
    async fn bundle_refusal(&self, lease: &LeaseRef) -> Error {
        {
            // Plan gate: a plan run's lease takes no bundle (nothing of it is ever pushed).
            let plan_run: Option<bool> = match sqlx::query_scalar(
                "SELECT plan_attempt = attempt FROM tasks WHERE id = $1 AND attempt = $2",
            )
            .bind(lease.task_id)
            .bind(lease.attempt)
            .fetch_optional(&self.pool)
            .await
            {
                Ok(p) => p.flatten(),
                Err(e) => return e.into(),
            };
            if plan_run == Some(true) {
                return Error::Invalid(format!(
                    "task {} attempt {} is a read-only plan run: it takes no bundle and nothing of it is pushed",
                    lease.task_id, lease.attempt
                ));
            }
            self.lease_lost(lease).await
        }
    }

    /// The stored bundle of an attempt: (sha256, bytes).
    pub async fn bundle(&self, task: TaskId, attempt: i32) -> Result<Option<(String, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT sha256, data FROM task_bundles WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ranges of log sequence numbers missing below the highest one stored, as inclusive
    /// `(first, last)` pairs: a gap in an attempt's log is visible, never silent.
    pub async fn log_gaps(&self, task: TaskId, attempt: i32) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT prev + 1, seq - 1 FROM ( \
               SELECT seq, COALESCE(lag(seq) OVER (ORDER BY seq), -1) AS prev \
               FROM log_chunks WHERE task_id = $1 AND attempt = $2) s \
             WHERE seq > prev + 1 ORDER BY seq",
        )
        .bind(task)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores one log chunk. Idempotent on (task, attempt, seq): a resent chunk is acknowledged
    /// again and stored once. Returns whether it was newly stored.
    pub async fn append_log(
        &self,
        lease: &LeaseRef,
        seq: i64,
        stream: &str,
        data: &[u8],
    ) -> Result<bool> {
        let (_, stored) = self
            .store_logs(
                lease,
                &[(seq, stream.to_owned(), data.to_vec())],
                MAX_LOG_BYTES,
                MAX_LOG_CHUNKS,
            )
            .await?;
        Ok(stored == 1)
    }

    /// Stores a batch of log chunks; idempotent on (task, attempt, seq). Returns the sequence
    /// numbers acknowledged (all of them: new ones, resends, and chunks past the cap).
    pub async fn append_logs(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
    ) -> Result<Vec<i64>> {
        self.append_logs_capped(lease, chunks, MAX_LOG_BYTES).await
    }

    /// [`Store::append_logs`] with an explicit per-attempt cap in bytes. Chunks past the cap are
    /// acknowledged (the runner must not stall) but not stored; they are counted in `log_totals`
    /// and show as a gap in the sequence numbers.
    pub async fn append_logs_capped(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
        cap: i64,
    ) -> Result<Vec<i64>> {
        Ok(self.store_logs(lease, chunks, cap, MAX_LOG_CHUNKS).await?.0)
    }

    /// [`Store::append_logs_capped`] with an explicit cap in chunks as well.
    pub async fn append_logs_bounded(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
        cap: i64,
        rows_cap: i64,
    ) -> Result<Vec<i64>> {
        Ok(self.store_logs(lease, chunks, cap, rows_cap).await?.0)
    }

    /// The one log-writing path: fenced, idempotent, capped. Returns the acknowledged sequence
    /// numbers and how many chunks were newly stored.
    async fn store_logs(
        &self,
        lease: &LeaseRef,
        chunks: &[(i64, String, Vec<u8>)],
        cap: i64,
        rows_cap: i64,
    ) -> Result<(Vec<i64>, i64)> {
        if let Some((seq, _, data)) = chunks.iter().find(|(_, _, d)| d.len() > MAX_LOG_CHUNK) {
            return Err(Error::Invalid(format!(
                "log chunk {seq} of {} bytes exceeds the {MAX_LOG_CHUNK}-byte limit; split it",
                data.len()
            )));
        }
        if let Some((seq, _, _)) = chunks.iter().find(|(s, _, _)| *s < 0) {
            return Err(Error::Invalid(format!("log sequence {seq} is negative")));
        }
        if let Some((seq, stream, _)) = chunks.iter().find(|(_, s, _)| !stream_name_ok(s)) {
            return Err(Error::Invalid(format!(
                "log chunk {seq} names its stream `{}`: a stream name is 1 to {MAX_STREAM_NAME} letters, digits, '.', '-' or '_'",
                stream.chars().take(MAX_STREAM_NAME).collect::<String>()
            )));
        }
        let mut tx = self.pool.begin().await?;
        let stored: Option<(i64, i64)> = sqlx::query_as(
            "INSERT INTO log_totals (task_id, attempt) \
             SELECT id, attempt FROM tasks WHERE id = $1 AND attempt = $2 AND lease_token = $3 \
               AND runner_id = $4 AND status = ANY($5) \
             ON CONFLICT (task_id, attempt) DO UPDATE SET bytes = log_totals.bytes RETURNING bytes, chunks",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(lease.token)
        .bind(lease.runner_id)
        .bind(status_texts(Status::ACTIVE))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((stored, stored_chunks)) = stored else {
            drop(tx);
            if self.start_claim_now(lease).await? {
                return Box::pin(self.store_logs(lease, chunks, cap, rows_cap)).await;
            }
            return Err(self.lease_lost(lease).await);
        };
        // Resends of stored chunks are acknowledged again and count against nothing.
        let all: Vec<i64> = chunks.iter().map(|c| c.0).collect();
        let present: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM log_chunks WHERE task_id = $1 AND attempt = $2 AND seq = ANY($3)",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(&all)
        .fetch_all(&mut *tx)
        .await?;
        let mut room = cap - stored;
        let (mut keep, mut dropped) = (Vec::new(), 0i64);
        // Empty chunks are acknowledged and not stored; the rest count against both caps.
        let mut rows_left = rows_cap - stored_chunks;
        for c in chunks
            .iter()
            .filter(|c| !present.contains(&c.0) && !c.2.is_empty())
        {
            let len = c.2.len() as i64;
            if len <= room && rows_left > 0 {
                room -= len;
                rows_left -= 1;
                keep.push(c);
            } else {
                dropped += 1;
            }
        }
        let seqs: Vec<i64> = keep.iter().map(|c| c.0).collect();
        let streams: Vec<&str> = keep.iter().map(|c| c.1.as_str()).collect();
        let data: Vec<&[u8]> = keep.iter().map(|c| c.2.as_slice()).collect();
        let (inserted, stored_new): (i64, i64) = sqlx::query_as(
            "WITH ins AS (INSERT INTO log_chunks (task_id, attempt, seq, stream, data) \
               SELECT $1, $2, c.seq, c.stream, c.data FROM unnest($3::bigint[], $4::text[], $5::bytea[]) AS c(seq, stream, data) \
               ON CONFLICT (task_id, attempt, seq) DO NOTHING RETURNING length(data) AS n) \
             SELECT COALESCE(sum(n), 0)::bigint, count(*) FROM ins",
        )
        .bind(lease.task_id)
        .bind(lease.attempt)
        .bind(&seqs)
        .bind(&streams)
        .bind(&data)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE log_totals SET bytes = bytes + $3, dropped_chunks = dropped_chunks + $4, chunks = chunks + $5 WHERE task_id = $1 AND attempt = $2")
            .bind(lease.task_id)
            .bind(lease.attempt)
            .bind(inserted)
            .bind(dropped)
            .bind(stored_new)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if dropped > 0 {
            tracing::warn!(
                task = lease.task_id,
                attempt = lease.attempt,
                dropped,
                cap,
                "log over its cap; chunks dropped"
            );
        }
        Ok((chunks.iter().map(|c| c.0).collect(), stored_new))
    }

    /// Bytes stored and chunks dropped (over the cap) for an attempt's log.
    pub async fn log_totals(&self, task: TaskId, attempt: i32) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT bytes, dropped_chunks FROM log_totals WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or((0, 0)))
    }

    /// The stored log of one attempt, in sequence order: (seq, stream, bytes).
    pub async fn log_chunks(
        &self,
        task: TaskId,
        attempt: i32,
    ) -> Result<Vec<(i64, String, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT seq, stream, data FROM log_chunks WHERE task_id = $1 AND attempt = $2 ORDER BY seq",
        )
        .bind(task)
        .bind(attempt)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One page of an attempt's log: the chunks with `seq > after`, in order, at most `limit` of
    /// them and, past the first, at most [`MAX_LOG_PAGE_BYTES`] in all. The next page starts
    /// after the last `seq` returned.
    pub async fn log_page(
        &self,
        task: TaskId,
        attempt: i32,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LogRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, stream, data, received_at FROM ( \
               SELECT seq, stream, data, received_at, sum(length(data)) OVER (ORDER BY seq) - length(data) AS before \
               FROM log_chunks WHERE task_id = $1 AND attempt = $2 AND seq > $3 ORDER BY seq LIMIT $4) p \
             WHERE before = 0 OR before + length(data) <= $5 ORDER BY seq",
        )
        .bind(task)
        .bind(attempt)
        .bind(after)
        .bind(limit.max(0))
        .bind(MAX_LOG_PAGE_BYTES)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The last `n` chunks of an attempt's log with `seq > after`, in order (at most
    /// [`MAX_LOG_PAGE_BYTES`] of them counted from the end, the last chunk always).
    pub async fn log_tail(
        &self,
        task: TaskId,
        attempt: i32,
        after: i64,
        n: i64,
    ) -> Result<Vec<LogRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, stream, data, received_at FROM ( \
               SELECT seq, stream, data, received_at, sum(length(data)) OVER (ORDER BY seq DESC) - length(data) AS after \
               FROM log_chunks WHERE task_id = $1 AND attempt = $2 AND seq > $5 \
               ORDER BY seq DESC LIMIT $3) t \
             WHERE after = 0 OR after + length(data) <= $4 ORDER BY seq",
        )
        .bind(task)
        .bind(attempt)
        .bind(n.max(0))
        .bind(MAX_LOG_PAGE_BYTES)
        .bind(after)
        .fetch_all(&self.pool)
        .await?)
    }
}

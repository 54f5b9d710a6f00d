//! Keyed claims on work whose effect lies outside the database — a GitHub comment, a model call, a
//! chat message — so that any number of controller replicas do each piece once.
//!
//! A loop reads its candidates as it always did, claims them here, then reads each claimed item
//! again before acting (another replica may have finished it and released its claim in between),
//! renews the claim before each step that cannot be undone, and releases it when the work is
//! recorded. A claim is one row taken atomically by `INSERT … ON CONFLICT`: of two replicas that
//! saw the same work, one gets it. Claims are short ([`CLAIM_TTL`]) and kept alive while the work
//! is under way ([`Store::keep_work`]), so a holder that dies leaves its claims to run out within
//! seconds, after which anyone may take them; work done meanwhile is at most the one step in
//! flight.

use std::time::Duration;

use super::{Result, Store};

/// How long a claim lasts unless renewed: the longest a replica that died holds up the work it
/// had claimed. While the work is under way [`Store::keep_work`] renews it every third of this.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// Renews a set of claims in the background until dropped (see [`Store::keep_work`]).
#[must_use = "the claims are kept only while the keeper lives"]
pub struct WorkKeeper(tokio::task::JoinHandle<()>);

impl Drop for WorkKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The kinds of claimed work (one place, so no two loops share a kind by accident).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// An issue task's GitHub milestones (labels and comments), keyed by task.
    Forge,
    /// Triage of a new task (a model call), keyed by task.
    Triage,
    /// Reflection on a failure (a model call), keyed by task.
    Reflection,
    /// A chat notification, keyed by outbox row.
    Notify,
    /// The post-merge guard's pass over a repository's merges, keyed by repository.
    Guard,
}

impl Work {
    fn as_str(self) -> &'static str {
        match self {
            Work::Forge => "forge",
            Work::Triage => "triage",
            Work::Reflection => "reflection",
            Work::Notify => "notify",
            Work::Guard => "guard",
        }
    }
}

impl Store {
    /// Claims those of `keys` no live claim of another holder covers, for `ttl`; returns the keys
    /// now held by this process (ascending). Keys this process already holds are renewed.
    pub async fn claim_work(&self, kind: Work, keys: &[i64], ttl: Duration) -> Result<Vec<i64>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = keys.to_vec();
        // One order for every claimant: no two claims wait on each other in a cycle.
        keys.sort_unstable();
        keys.dedup();
        let mut got: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO work_claims (kind, key, holder, until) \
             SELECT $1, k, $3, now() + make_interval(secs => $4) FROM unnest($2::bigint[]) AS k ORDER BY k \
             ON CONFLICT (kind, key) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until \
             WHERE work_claims.until <= now() OR work_claims.holder = EXCLUDED.holder \
             RETURNING key",
        )
        .bind(kind.as_str())
        .bind(&keys)
        .bind(self.replica)
        .bind(ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        got.sort_unstable();
        Ok(got)
    }

    /// Extends this process's claim on `key` by `ttl` from now; `false` when the claim is no
    /// longer this process's (it ran out and another took it): stop before the next step.
    pub async fn renew_work(&self, kind: Work, key: i64, ttl: Duration) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE work_claims SET until = now() + make_interval(secs => $4) \
             WHERE kind = $1 AND key = $2 AND holder = $3",
        )
        .bind(kind.as_str())
        .bind(key)
        .bind(self.replica)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Keeps this process's claims on `keys` alive — renewed every third of `ttl` — until the
    /// returned keeper is dropped, however long the work takes (a GitHub rate-limit wait, a slow
    /// model). A renewal that fails is tried again at the next tick; a claim another holder took
    /// meanwhile is not taken back (the work's own [`Store::renew_work`] before each step says so).
    pub fn keep_work(&self, kind: Work, keys: &[i64], ttl: Duration) -> WorkKeeper {
        let store = self.clone();
        let keys = keys.to_vec();
        WorkKeeper(tokio::spawn(async move {
            if keys.is_empty() {
                return;
            }
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = sqlx::query(
                    "UPDATE work_claims SET until = now() + make_interval(secs => $4) \
                     WHERE kind = $1 AND key = ANY($2) AND holder = $3",
                )
                .bind(kind.as_str())
                .bind(&keys)
                .bind(store.replica)
                .bind(ttl.as_secs_f64())
                .execute(&store.pool)
                .await
                {
                    tracing::warn!(kind = kind.as_str(), error = %e, "could not renew work claims");
                }
            }
        }))
    }

    /// Releases this process's claim on `key` (the work is recorded).
    pub async fn release_work(&self, kind: Work, key: i64) -> Result<()> {
        sqlx::query("DELETE FROM work_claims WHERE kind = $1 AND key = $2 AND holder = $3")
            .bind(kind.as_str())
            .bind(key)
            .bind(self.replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes claims that ran out more than an hour ago (their holders died); how many.
    pub async fn prune_work_claims(&self) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM work_claims WHERE until < now() - interval '1 hour'")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// This controller process's identity as a claim holder.
    pub fn replica(&self) -> uuid::Uuid {
        self.replica
    }
}

//! The intake backstop: every interval, each enabled repository's open issues carrying the
//! trigger label are listed with `If-None-Match`, so an unchanged list costs a 304 (which GitHub
//! does not count against the rate limit). Issues found go through the same
//! [`crate::intake::accept_issue`] as webhooks, so a webhook and the poller seeing the same issue
//! make one task. The poller also checks who added the label (the issue's events), as the
//! webhook checks the event's sender. One replica polls at a time ([`crate::loops::lead`]); the
//! task is keyed by the issue anyway, so an overlap costs reads, never a second task.

use tokio_util::sync::CancellationToken;

use crate::forge::{Forge, Listing, labels};
use crate::intake::{self, Intake, IntakeConfig};
use crate::loops::{Leading, LoopCtx, Next, every, lead, singleton};
use crate::store::Store;

/// One pass over every enabled repository; returns the tasks created.
pub async fn poll_once(
    store: &Store,
    forge: &dyn Forge,
    config: &IntakeConfig,
) -> anyhow::Result<Vec<i64>> {
    let mut created = Vec::new();
    for repo in store.repos().await? {
        if !repo.enabled {
            continue;
        }
        let etag = store.poll_etag(repo.id).await?;
        let listing = match forge
            .labelled_issues(&repo.name, labels::TRIGGER, etag.as_deref())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(repo = repo.name, error = %e, "polling issues failed; next pass retries");
                continue;
            }
        };
        let Listing::Changed { issues, etag } = listing else {
            continue;
        };
        let mut complete = true;
        for issue in &issues {
            // Whoever labelled the issue must be on the allowlist too (one read per issue that
            // has no live task yet).
            if !issue.is_pull
                && store
                    .live_task_of_issue(repo.id, issue.number)
                    .await?
                    .is_none()
            {
                match forge
                    .label_actor(&repo.name, issue.number, labels::TRIGGER)
                    .await
                {
                    Ok(actor) if intake::allowed(config, actor.as_deref().unwrap_or_default()) => {}
                    Ok(actor) => {
                        tracing::warn!(repo = repo.name, issue = issue.number, actor = ?actor, "labelled by someone off the allowlist; no task");
                        continue;
                    }
                    Err(e) => {
                        complete = false;
                        tracing::warn!(repo = repo.name, issue = issue.number, error = %e, "reading who labelled the issue failed; next pass retries");
                        continue;
                    }
                }
            }
            match intake::accept_issue(store, config, &repo.name, issue, "github:poller").await {
                Ok(Intake::Created(id)) => created.push(id),
                Ok(_) => {}
                Err(e) => {
                    complete = false;
                    tracing::warn!(repo = repo.name, issue = issue.number, error = %e, "accepting a polled issue failed");
                }
            }
        }
        // Keep the old ETag when something failed, so the next pass sees the list again.
        if complete {
            store.set_poll_etag(repo.id, etag.as_deref()).await?;
        }
    }
    Ok(created)
}

/// Polls every `poll_interval` until `shutdown` (nothing to poll without GitHub).
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    let Some(forge) = ctx.forge.clone() else {
        return;
    };
    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(None));
    every(
        "poller",
        Vec::new(),
        ctx.config.poll_interval,
        shutdown,
        || {
            let (ctx, forge, lock) = (ctx.clone(), forge.clone(), lock.clone());
            async move {
                if lead(&ctx.store, singleton::POLLER, &mut *lock.lock().await).await?
                    == Leading::No
                {
                    return Ok(Next::Wait);
                }
                poll_once(&ctx.store, forge.as_ref(), &ctx.intake).await?;
                Ok(Next::Wait)
            }
        },
    )
    .await;
}

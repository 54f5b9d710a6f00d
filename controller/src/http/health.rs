//! Health and monitoring: `/healthz` (the process answers), `/readyz` (its database answers) and
//! `/metrics` (Prometheus text). The metrics are computed in the background every
//! `metrics_interval` ([`run`], one of the loops) and a scrape serves the last computation with
//! its age, so scrapes cost no database work however often they come; with `metrics_token` set a
//! scrape must bring it as a bearer token.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::loops::{LoopCtx, Next, every};
use crate::store::metrics::Metrics;

/// The health and metrics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/ca.pem", get(ca_pem))
        .route("/evidence-key.pem", get(evidence_key_pem))
}

/// The public key evidence records are signed with (public; made on first use).
async fn evidence_key_pem(
    State(s): State<AppState>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), axum::http::StatusCode> {
    match crate::evidence::Signer::load(&s.store).await {
        Ok(k) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
            k.public_pem(),
        )),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot load the evidence key");
            Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// The controller's CA certificate (public): what clients trust for HTTPS from `--tls-own-ca`
/// and runners pin by its fingerprint.
async fn ca_pem(
    State(s): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        s.pki.ca_pem().to_owned(),
    )
}

/// Computes the metrics every `metrics_interval` until `shutdown`.
pub async fn run(ctx: LoopCtx, shutdown: CancellationToken) {
    every(
        "metrics",
        Vec::new(),
        ctx.config.metrics_interval,
        shutdown,
        || {
            let ctx = ctx.clone();
            async move {
                let m = ctx.store.metrics().await?;
                ctx.metrics.set(render(&m));
                Ok(Next::Wait)
            }
        },
    )
    .await;
}

async fn metrics(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
) {
    let ct = [(
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4",
    )];
    if let Some(token) = &s.metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok =
            given.is_some_and(|g| super::auth::constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                ct,
                "# /metrics needs the metrics token: Authorization: Bearer <metrics_token>\n"
                    .into(),
            );
        }
    }
    match s.metrics.get() {
        Some((at, text)) => {
            let age = at.elapsed().as_secs_f64();
            (
                StatusCode::OK,
                ct,
                format!(
                    "{text}# HELP backporcher_metrics_age_seconds Seconds since these metrics were computed.\n# TYPE backporcher_metrics_age_seconds gauge\nbackporcher_metrics_age_seconds {age:.3}\n\
                     # HELP backporcher_password_checks_total Password verifications this controller ran (logins past the limits, known user or not).\n# TYPE backporcher_password_checks_total counter\nbackporcher_password_checks_total {}\n",
                    s.guard.passwords.verifications()
                ),
            )
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            ct,
            "# the metrics have not been computed yet (the database may be unreachable); try again shortly\n"
                .into(),
        ),
    }
}

async fn ready(State(s): State<AppState>) -> (StatusCode, &'static str) {
    match s.store.ping().await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    }
}

/// Renders metrics in the Prometheus text format.
pub fn render(m: &Metrics) -> String {
    fn esc(v: &str) -> String {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', " ")
    }
    let block = |out: &mut String, name: &str, kind: &str, help: &str| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    };
    let mut out = String::new();
    block(
        &mut out,
        "backporcher_queue_depth",
        "gauge",
        "Queued, unheld tasks by the runner labels they need.",
    );
    for (labels, v) in &m.queue_depth {
        out.push_str(&format!(
            "backporcher_queue_depth{{labels=\"{}\"}} {v}\n",
            esc(labels)
        ));
    }
    block(&mut out, "backporcher_tasks", "gauge", "Tasks by status.");
    for (st, v) in &m.tasks_by_status {
        out.push_str(&format!(
            "backporcher_tasks{{status=\"{}\"}} {v}\n",
            esc(st)
        ));
    }
    block(
        &mut out,
        "backporcher_schedule_to_start_seconds",
        "summary",
        &format!(
            "Time from queued to leased over the last hour (quantiles of its latest {} leases).",
            crate::store::metrics::SCHEDULE_SAMPLE
        ),
    );
    let (p50, p90, p99, count) = m.schedule_to_start;
    out.push_str(&format!(
        "backporcher_schedule_to_start_seconds{{quantile=\"0.5\"}} {p50}\nbackporcher_schedule_to_start_seconds{{quantile=\"0.9\"}} {p90}\nbackporcher_schedule_to_start_seconds{{quantile=\"0.99\"}} {p99}\nbackporcher_schedule_to_start_seconds_count {count}\n"
    ));
    block(
        &mut out,
        "backporcher_leases_near_expiry",
        "gauge",
        "Live leases with less than a third of their length left (late renewals).",
    );
    out.push_str(&format!(
        "backporcher_leases_near_expiry {}\n",
        m.leases_near_expiry
    ));
    block(
        &mut out,
        "backporcher_expired_leases_total",
        "counter",
        "Leases taken back by the reaper.",
    );
    out.push_str(&format!(
        "backporcher_expired_leases_total {}\n",
        m.expired_leases
    ));
    block(
        &mut out,
        "backporcher_requeues_total",
        "counter",
        "Tasks re-queued by people.",
    );
    out.push_str(&format!("backporcher_requeues_total {}\n", m.requeues));
    block(
        &mut out,
        "backporcher_retries_total",
        "counter",
        "Automatic retries after failures.",
    );
    out.push_str(&format!("backporcher_retries_total {}\n", m.retries));
    block(
        &mut out,
        "backporcher_cancel_latency_seconds",
        "gauge",
        "Mean time from a cancel request to the task being canceled (last day).",
    );
    out.push_str(&format!(
        "backporcher_cancel_latency_seconds {}\n",
        m.cancel_latency
    ));
    block(
        &mut out,
        "backporcher_log_chunks_dropped_total",
        "counter",
        "Log chunks dropped past the per-attempt cap (gaps).",
    );
    out.push_str(&format!(
        "backporcher_log_chunks_dropped_total {}\n",
        m.log_chunks_dropped
    ));
    block(
        &mut out,
        "backporcher_cost_usd_total",
        "counter",
        "Model spending by purpose and model.",
    );
    for (purpose, model, micro) in &m.cost {
        out.push_str(&format!(
            "backporcher_cost_usd_total{{purpose=\"{}\",model=\"{}\"}} {}\n",
            esc(purpose),
            esc(model),
            *micro as f64 / 1e6
        ));
    }
    block(
        &mut out,
        "backporcher_cost_per_merged_pr_usd",
        "gauge",
        "All model spending over the merged PRs, by model (failed and canceled tasks included).",
    );
    let mut by_model: std::collections::BTreeMap<&str, i64> = Default::default();
    for (_, model, micro) in &m.cost {
        *by_model.entry(model).or_default() += micro;
    }
    let per_merged = |micro: i64| {
        if m.merged > 0 {
            micro as f64 / 1e6 / m.merged as f64
        } else {
            0.0
        }
    };
    out.push_str(&format!(
        "backporcher_cost_per_merged_pr_usd{{model=\"all\"}} {}\n",
        per_merged(by_model.values().sum())
    ));
    for (model, micro) in &by_model {
        out.push_str(&format!(
            "backporcher_cost_per_merged_pr_usd{{model=\"{}\"}} {}\n",
            esc(model),
            per_merged(*micro)
        ));
    }
    block(
        &mut out,
        "backporcher_budget_today_usd",
        "gauge",
        "Today's (UTC) daily budgets: spent, granted to running attempts, and the budget where set; scope is `fleet` or a repository.",
    );
    for (scope, spent, granted, budget) in &m.budgets_today {
        for (kind, v) in [
            ("spent", Some(*spent)),
            ("granted", Some(*granted)),
            ("budget", *budget),
        ] {
            if let Some(v) = v {
                out.push_str(&format!(
                    "backporcher_budget_today_usd{{scope=\"{}\",kind=\"{kind}\"}} {}\n",
                    esc(scope),
                    v as f64 / 1e6
                ));
            }
        }
    }
    block(
        &mut out,
        "backporcher_runners",
        "gauge",
        "Runners by state.",
    );
    for (st, v) in &m.runners {
        out.push_str(&format!(
            "backporcher_runners{{state=\"{}\"}} {v}\n",
            esc(st)
        ));
    }
    out
}

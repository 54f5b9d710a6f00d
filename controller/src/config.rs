//! Controller configuration: where the database is, where the controller listens, and the lease
//! timings it dictates to runners; and the shape of the TOML file the binary layers under its
//! flags ([`FileConfig`], parsed by [`parse_file`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL URL; `None` runs an embedded server under `data_dir/postgres`.
    pub database_url: Option<String>,
    /// State directory (embedded database, keys).
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Runner gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// Names (DNS or IP) runners use to reach the gRPC listener; they go into its certificate.
    pub server_names: Vec<String>,
    /// Validity of runner client certificates (renewed by runners at a third left).
    pub client_cert_validity: Duration,
    /// How often runners heartbeat.
    pub heartbeat_interval: Duration,
    /// Longest lease long-poll.
    pub lease_wait: Duration,
    /// Lease length given to runners.
    pub lease: Duration,
    /// Extra time live leases get when a controller starts.
    pub restart_grace: Duration,
    /// Longest pause between two reaper sweeps.
    pub reaper_interval: Duration,
    /// Sweep interval of the background loops woken by notifications (a backstop: a
    /// notification normally wakes them at once).
    pub sweep: Duration,
    /// Database pool size.
    pub max_db_connections: u32,
    /// Shared secret of GitHub webhooks (deliveries are refused while it is empty).
    pub webhook_secret: String,
    /// GitHub logins whose labelled issues start tasks.
    pub allowed_users: Vec<String>,
    /// GitHub: API base and credentials (`None`: no forge; tasks stop at `pushing`).
    pub github: Option<crate::forge::github::GitHubConfig>,
    /// How often the issue poller backs up the webhooks.
    pub poll_interval: Duration,
    /// The model API for triage, review and reflection (`None`: reviews fail per repo setting).
    pub model: Option<crate::llm::ModelConfig>,
    /// Reviewer model alias.
    pub review_model: String,
    /// Triage model alias.
    pub triage_model: String,
    /// Reflection model alias (a cheap one).
    pub reflection_model: String,
    /// Slack/Discord-compatible webhook URLs (`notify_urls`, `BACKPORCHER_WEBHOOK_URL`).
    pub notify_urls: Vec<String>,
    /// Which events go to them (`BACKPORCHER_WEBHOOK_EVENTS`; default hold, failed).
    pub notify_events: NotifyEvents,
    /// The approval mode the configuration sets (`BACKPORCHER_APPROVAL_MODE`); `None`: the one
    /// stored (set at run time, or the default `review-merge`) stays. See
    /// [`crate::store::Store::apply_configured_approval_mode`].
    pub approval_mode: Option<String>,
    /// The model new tasks start with (`BACKPORCHER_DEFAULT_MODEL`); the `opus` label and
    /// triage may choose another.
    pub default_model: String,
    /// Whether runners give agents the code graph's navigation map (`BACKPORCHER_NAVIGATION_ENABLED`).
    pub navigation: bool,
    /// Ended tasks' leftovers on GitHub: when the sweep closes their PRs and deletes their
    /// branches.
    pub cleanup: crate::store::cleanup::CleanupPolicy,
    /// Pipeline stage settings.
    pub pipeline: PipelineConfig,
    /// Mark the session cookie `Secure` (the controller is served over HTTPS).
    pub secure_cookies: bool,
    /// HTTPS on the HTTP listener (off: plain HTTP, behind a TLS proxy or on loopback).
    pub http_tls: crate::http::tls::HttpTls,
    /// The price table for every model call, the controller's and the agents'.
    pub prices: proto::prices::Prices,
    /// A task's budget across its attempts where its repository sets none, micro-dollars.
    pub task_budget_microusd: i64,
    /// The fleet's daily budget, micro-dollars (`None`: no fleet-wide limit).
    pub daily_budget_microusd: Option<i64>,
    /// How long a task may be under way after its first lease, across its attempts.
    pub task_deadline: Duration,
    /// How long logs, bundles, webhook deliveries and audit rows are kept.
    pub retention: crate::store::retention::Retention,
    /// How often the retention loop prunes.
    pub retention_interval: Duration,
    /// How often `/metrics` is computed (scrapes read the last computation).
    pub metrics_interval: Duration,
    /// A bearer token `/metrics` requires (`None`: open, as on a private address).
    pub metrics_token: Option<String>,
    /// Proxies in front of the HTTP listener whose `X-Forwarded-For` names the client (login
    /// limits count per client address); from anyone else the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from(".backporcher"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            client_cert_validity: Duration::from_secs(30 * 24 * 3600),
            heartbeat_interval: Duration::from_secs(25),
            lease_wait: Duration::from_secs(50),
            lease: Duration::from_secs(75),
            restart_grace: Duration::from_secs(60),
            reaper_interval: Duration::from_secs(1),
            sweep: Duration::from_secs(2),
            max_db_connections: 20,
            webhook_secret: String::new(),
            allowed_users: Vec::new(),
            github: None,
            poll_interval: Duration::from_secs(60),
            model: None,
            review_model: "sonnet".into(),
            triage_model: "haiku".into(),
            reflection_model: "haiku".into(),
            notify_urls: Vec::new(),
            notify_events: NotifyEvents::default(),
            approval_mode: None,
            default_model: "sonnet".into(),
            navigation: true,
            cleanup: crate::store::cleanup::CleanupPolicy::default(),
            pipeline: PipelineConfig::default(),
            secure_cookies: false,
            http_tls: crate::http::tls::HttpTls::Off,
            prices: proto::prices::Prices::default(),
            task_budget_microusd: 10_000_000,
            daily_budget_microusd: None,
            task_deadline: Duration::from_secs(12 * 3600),
            retention: crate::store::retention::Retention::default(),
            retention_interval: Duration::from_secs(3600),
            metrics_interval: Duration::from_secs(15),
            metrics_token: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The TOML configuration file. Unknown keys are errors that name the key.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// PostgreSQL URL.
    pub database_url: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    pub listen: Option<String>,
    /// gRPC listen address.
    pub grpc_listen: Option<String>,
    /// Names in the server certificate.
    pub server_names: Option<Vec<String>>,
    /// Lease length in seconds.
    pub lease_seconds: Option<u64>,
    /// Webhook secret.
    pub webhook_secret: Option<String>,
    /// Who may trigger work.
    pub allowed_users: Option<Vec<String>>,
    /// Poll interval in seconds.
    pub poll_seconds: Option<u64>,
    /// Leases a task may lose in a row before it fails.
    pub max_lease_losses: Option<u32>,
    /// A task's budget in USD where its repository sets none.
    pub task_budget_usd: Option<f64>,
    /// The fleet's daily budget in USD.
    pub daily_budget_usd: Option<f64>,
    /// A task's deadline from its first lease, in hours.
    pub task_deadline_hours: Option<f64>,
    /// Chat webhook URLs.
    pub notify_urls: Option<Vec<String>>,
    /// One chat webhook URL (the reference's name; added to `notify_urls`).
    pub webhook_url: Option<String>,
    /// Events sent to the chat webhooks: hold, failed, completed, paused, settings (or all).
    pub webhook_events: Option<StringList>,
    /// The default approval mode: full-auto, review-merge or review-all.
    pub approval_mode: Option<String>,
    /// The model new tasks start with.
    pub default_model: Option<String>,
    /// The reviewer model (the reference's name for `[model] review_model`).
    pub coordinator_model: Option<String>,
    /// Whether agents get the code graph's navigation map.
    pub navigation_enabled: Option<bool>,
    /// Accepted for the reference's sake; navigation uses no model.
    pub navigation_model: Option<String>,
    /// CI failures retried per task.
    pub max_ci_retries: Option<i32>,
    /// Agent failures retried per task (escalating sonnet → opus).
    pub max_task_retries: Option<i32>,
    /// Seconds between two looks at a pending CI.
    pub ci_check_interval: Option<u64>,
    /// Seconds between issue polls (the reference's name for `poll_seconds`).
    pub poll_interval: Option<u64>,
    /// Address the dashboard and API listen on (with `dashboard_port`; `listen` wins).
    pub dashboard_host: Option<String>,
    /// Port the dashboard and API listen on.
    pub dashboard_port: Option<u16>,
    /// Agent hard-kill timeout in seconds — a runner setting: named here only to say so.
    pub task_timeout: Option<u64>,
    /// `[cleanup]`.
    pub cleanup: Option<CleanupFile>,
    /// Whether session cookies are `Secure`.
    pub secure_cookies: Option<bool>,
    /// HTTPS with a certificate from the controller's own CA.
    pub tls_own_ca: Option<bool>,
    /// HTTPS certificate chain file (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Its key file (PEM).
    pub tls_key: Option<PathBuf>,
    /// `[github]`.
    pub github: Option<GitHubFile>,
    /// `[model]`.
    pub model: Option<ModelFile>,
    /// `[prices]`: model family → `[input, output]` USD per million tokens (cache writes at
    /// 1.25×, reads at 0.1× the input price); replaces the default table.
    pub prices: Option<std::collections::BTreeMap<String, [f64; 2]>>,
    /// `[retention]`.
    pub retention: Option<RetentionFile>,
    /// Seconds between two computations of `/metrics`.
    pub metrics_seconds: Option<u64>,
    /// A bearer token `/metrics` requires.
    pub metrics_token: Option<String>,
    /// IP addresses of the proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<String>>,
}

/// A list written either as a TOML array or as one comma-separated string (as in the
/// environment: `webhook_events = "hold,failed"`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum StringList {
    /// `["hold", "failed"]`.
    List(Vec<String>),
    /// `"hold,failed"`.
    Text(String),
}

impl StringList {
    /// The items, trimmed, empty ones dropped.
    pub fn items(&self) -> Vec<String> {
        let raw: Vec<&str> = match self {
            StringList::List(v) => v.iter().map(String::as_str).collect(),
            StringList::Text(t) => t.split(',').collect(),
        };
        raw.into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// `[cleanup]` of the configuration file: days after its end an ended task's PR is closed and
/// its branch deleted (0: never).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupFile {
    /// Failed tasks (default 7).
    pub failed_days: Option<f64>,
    /// Canceled tasks (default 1; a cancel closes and deletes at once, this catches stragglers).
    pub canceled_days: Option<f64>,
    /// Merged tasks: their branch is deleted at the merge; the sweep checks it is gone
    /// (default 1).
    pub merged_days: Option<f64>,
    /// Seconds between two sweeps (default 3600).
    pub interval_seconds: Option<u64>,
}

/// A chat notification's event, as `BACKPORCHER_WEBHOOK_EVENTS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotifyEvent {
    /// A task waits for a person's approval (of its merge, or of its plan).
    Hold,
    /// A task failed.
    Failed,
    /// A task was merged.
    Completed,
    /// Dispatch was paused or resumed (by a person or a circuit breaker).
    Paused,
    /// The global approval mode was changed.
    Settings,
    /// The post-merge guard reverted a merge that turned the default branch's CI red.
    Reverted,
}

impl NotifyEvent {
    /// Every event, in the order the docs list them.
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::Hold,
        NotifyEvent::Failed,
        NotifyEvent::Completed,
        NotifyEvent::Paused,
        NotifyEvent::Settings,
        NotifyEvent::Reverted,
    ];

    /// Its name in `BACKPORCHER_WEBHOOK_EVENTS`.
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Hold => "hold",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Completed => "completed",
            NotifyEvent::Paused => "paused",
            NotifyEvent::Settings => "settings",
            NotifyEvent::Reverted => "reverted",
        }
    }

    /// The event of a notification kind in the outbox (`None`: a kind no filter names, sent
    /// always).
    pub fn of_kind(kind: &str) -> Option<NotifyEvent> {
        Some(match kind {
            "approval_hold" | "plan_hold" | "hold" => NotifyEvent::Hold,
            "failed" => NotifyEvent::Failed,
            "merged" | "completed" => NotifyEvent::Completed,
            "paused" | "resumed" => NotifyEvent::Paused,
            "settings" => NotifyEvent::Settings,
            "reverted" => NotifyEvent::Reverted,
            _ => return None,
        })
    }
}

/// The events chat webhooks receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyEvents(pub std::collections::BTreeSet<NotifyEvent>);

impl Default for NotifyEvents {
    /// The reference's default (hold, failed) and a revert of the default branch by the
    /// post-merge guard, which a team wants to hear of whatever else it filters.
    fn default() -> Self {
        Self(
            [
                NotifyEvent::Hold,
                NotifyEvent::Failed,
                NotifyEvent::Reverted,
            ]
            .into_iter()
            .collect(),
        )
    }
}

impl NotifyEvents {
    /// Parses names (`all` for every event); an unknown name is an error naming the known ones.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut set = std::collections::BTreeSet::new();
        for n in names {
            let n = n.trim().to_ascii_lowercase();
            if n == "all" {
                set.extend(NotifyEvent::ALL);
                continue;
            }
            match NotifyEvent::ALL.iter().find(|e| e.name() == n) {
                Some(e) => {
                    set.insert(*e);
                }
                None => {
                    return Err(format!(
                        "webhook event `{n}` is not one of: hold, failed, completed, paused, settings (or all)"
                    ));
                }
            }
        }
        Ok(Self(set))
    }

    /// Whether a notification of outbox `kind` is sent.
    pub fn sends(&self, kind: &str) -> bool {
        NotifyEvent::of_kind(kind).is_none_or(|e| self.0.contains(&e))
    }

    /// The names, comma-separated.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `[retention]` of the configuration file: days each kind of row is kept (0: forever).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Log chunks of ended tasks (default 30).
    pub logs_days: Option<f64>,
    /// Result bundles of ended tasks (default 14).
    pub bundles_days: Option<f64>,
    /// Webhook delivery ids (default 7).
    pub deliveries_days: Option<f64>,
    /// Audit rows (default 365).
    pub audit_days: Option<f64>,
}

/// `[github]` of the configuration file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubFile {
    /// API base URL.
    pub api: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// GitHub App id.
    pub app_id: Option<u64>,
    /// App installation id.
    pub installation_id: Option<u64>,
    /// App private key file.
    pub app_key_file: Option<PathBuf>,
}

/// `[model]` of the configuration file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// API base URL.
    pub api: Option<String>,
    /// API key.
    pub api_key: Option<String>,
    /// Subscription OAuth token.
    pub oauth_token: Option<String>,
    /// The `claude` CLI for subscription calls.
    pub claude_cli: Option<PathBuf>,
    /// Reviewer model.
    pub review_model: Option<String>,
    /// Triage model.
    pub triage_model: Option<String>,
    /// Reflection model.
    pub reflection_model: Option<String>,
}

/// Parses the text of a configuration file (unknown keys are errors that name the key).
pub fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Retry budgets and model escalation.
    pub retry: crate::store::tasks::RetryPolicy,
    /// How often a pending CI is looked at again.
    pub ci_poll: Duration,
    /// Stage lease, renewed every third of it while the step runs: a replica that dies mid-stage
    /// holds its task's stage this long at most before another replica takes it over.
    pub stage_lease: Duration,
    /// Failures in a row after which a stage fails its task (`internal_error`).
    pub stage_error_tries: u32,
    /// Transient failures in a row (GitHub unavailable or rate-limited, a git command failing)
    /// after which a stage fails its task.
    pub stage_transient_tries: u32,
    /// The first wait after a stage failed; it doubles with each try, up to two minutes.
    pub stage_retry_base: Duration,
    /// Stages worked on at once.
    pub concurrency: usize,
    /// Sweep interval when no notification arrives.
    pub sweep: Duration,
    /// Longest time a review may take before it counts as failed.
    pub review_timeout: Duration,
    /// How long triage waits after the first new task, so issues filed together are triaged
    /// together (one call, dependencies between them).
    pub triage_debounce: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            retry: crate::store::tasks::RetryPolicy::default(),
            ci_poll: Duration::from_secs(10),
            stage_lease: Duration::from_secs(30),
            stage_error_tries: 5,
            stage_transient_tries: 30,
            stage_retry_base: Duration::from_secs(5),
            concurrency: 8,
            sweep: Duration::from_secs(1),
            review_timeout: Duration::from_secs(300),
            triage_debounce: Duration::from_millis(300),
        }
    }
}

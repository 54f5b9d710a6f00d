//! The controller binary's configuration: flags and environment variables (clap) layered over a
//! TOML file (`--config`) layered over defaults — a value given on the command line or in the
//! environment wins over the file — and `check-config`, which explains every problem it finds.

use std::path::Path;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use controller::config::{Config, FileConfig, parse_file};

use super::ServeArgs;

/// One finding.
#[derive(Debug, Clone)]
pub struct Problem {
    /// An error stops the controller; a warning does not.
    pub error: bool,
    /// What is wrong and what to do.
    pub message: String,
}

fn error(message: impl Into<String>) -> Problem {
    Problem {
        error: true,
        message: message.into(),
    }
}

fn warning(message: impl Into<String>) -> Problem {
    Problem {
        error: false,
        message: message.into(),
    }
}

/// Reads the file, naming the file and the key on any error.
pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!("cannot read the configuration file {}: {e}", path.display())
    })?;
    parse_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Flags/environment over the file over defaults; returns the configuration and what is wrong.
pub fn resolve(args: ServeArgs, matches: &ArgMatches) -> anyhow::Result<(Config, Vec<Problem>)> {
    let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(matches);
    let given = |id: &str| {
        matches!(
            sub.try_get_raw(id).ok().flatten().and(sub.value_source(id)),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let mut problems = Vec::new();
    let parity = reference_settings(&args, &mut file, &given, &mut problems);
    let prices = match file.prices {
        None => proto::prices::Prices::default(),
        Some(table) if table.is_empty() => {
            problems.push(error(
                "`[prices]` is empty: name at least one model family, e.g. opus = [5, 25]"
                    .to_owned(),
            ));
            proto::prices::Prices::default()
        }
        Some(table) => {
            let mut rates = Vec::new();
            for (family, [input, output]) in table {
                if !(input.is_finite() && output.is_finite() && input >= 0.0 && output >= 0.0) {
                    problems.push(error(format!(
                        "`[prices] {family} = [{input}, {output}]` is not a pair of USD prices per million input and output tokens"
                    )));
                    continue;
                }
                // OpenAI's models bill no cache writes; Anthropic's do.
                let rate = if family.starts_with("gpt") {
                    proto::prices::Rate::usd_responses(input, output)
                } else {
                    proto::prices::Rate::usd(input, output)
                };
                rates.push((family, rate));
            }
            proto::prices::Prices(rates)
        }
    };
    let gh_file = file.github.unwrap_or_default();
    let model_file = file.model.unwrap_or_default();

    macro_rules! pick {
        ($id:literal, $cli:expr, $file:expr) => {
            if given($id) {
                $cli
            } else {
                $file.unwrap_or($cli)
            }
        };
    }
    let parse_addr = |what: &str, v: Option<String>, problems: &mut Vec<Problem>| {
        v.and_then(|s| match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(error(format!(
                    "`{what} = \"{s}\"` is not an address like 0.0.0.0:8080"
                )));
                None
            }
        })
    };
    let listen_file = parse_addr("listen", file.listen, &mut problems);
    let grpc_file = parse_addr("grpc_listen", file.grpc_listen, &mut problems);
    let lease_seconds = pick!("lease_seconds", args.lease_seconds, file.lease_seconds);
    if !(15..=3600).contains(&lease_seconds) {
        problems.push(error(format!(
            "a lease of {lease_seconds} s is outside 15–3600 s; runners heartbeat at a third of it"
        )));
    }
    let lease = Duration::from_secs(lease_seconds.clamp(15, 3600));
    let max_lease_losses = pick!(
        "max_lease_losses",
        args.max_lease_losses,
        file.max_lease_losses
    );
    if max_lease_losses == 0 {
        problems.push(error(
            "max_lease_losses = 0 would fail a task on its first lost lease; use 1 or more"
                .to_owned(),
        ));
    }
    let usd = |what: &str, v: f64, problems: &mut Vec<Problem>| -> Option<i64> {
        if (0.0..1e9).contains(&v) {
            Some((v * 1e6).round() as i64)
        } else {
            problems.push(error(format!(
                "`{what} = {v}` is not an amount of US dollars (0 or more)"
            )));
            None
        }
    };
    let task_budget = pick!(
        "task_budget_usd",
        args.task_budget_usd,
        file.task_budget_usd
    );
    let task_budget_microusd = match usd("task_budget_usd", task_budget, &mut problems) {
        Some(0) => {
            problems.push(error(
                "task_budget_usd = 0 would refuse every model call; set the budget a task may spend"
                    .to_owned(),
            ));
            None
        }
        b => b,
    };
    let daily_budget = if given("daily_budget_usd") {
        args.daily_budget_usd
    } else {
        file.daily_budget_usd.or(args.daily_budget_usd)
    };
    let daily_budget_microusd =
        daily_budget.and_then(|d| usd("daily_budget_usd", d, &mut problems));
    let deadline_hours = pick!(
        "task_deadline_hours",
        args.task_deadline_hours,
        file.task_deadline_hours
    );
    let task_deadline =
        if deadline_hours.is_finite() && (0.1..=24.0 * 30.0).contains(&deadline_hours) {
            Duration::from_secs_f64(deadline_hours * 3600.0)
        } else {
            problems.push(error(format!(
                "`task_deadline_hours = {deadline_hours}` is outside 0.1–720 hours"
            )));
            Duration::from_secs(12 * 3600)
        };

    let retention = {
        let r = file.retention.unwrap_or_default();
        let d = controller::store::retention::Retention::default();
        let mut days = |key: &str, v: Option<f64>, default: Option<Duration>| match v {
            None => default,
            Some(0.0) => None,
            Some(days) if days.is_finite() && (0.01..=36_500.0).contains(&days) => {
                Some(Duration::from_secs_f64(days * 24.0 * 3600.0))
            }
            Some(days) => {
                problems.push(error(format!(
                    "`[retention] {key} = {days}` is not a number of days (0.01–36500, or 0 to keep forever)"
                )));
                default
            }
        };
        controller::store::retention::Retention {
            logs: days("logs_days", r.logs_days, d.logs),
            bundles: days("bundles_days", r.bundles_days, d.bundles),
            deliveries: days("deliveries_days", r.deliveries_days, d.deliveries),
            audit: days("audit_days", r.audit_days, d.audit),
        }
    };
    let metrics_interval = match file.metrics_seconds {
        None => Duration::from_secs(15),
        Some(s) if (1..=3600).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            problems.push(error(format!("`metrics_seconds = {s}` is outside 1–3600")));
            Duration::from_secs(15)
        }
    };

    let http_tls = {
        let own_ca = args.tls_own_ca || (!given("tls_own_ca") && file.tls_own_ca.unwrap_or(false));
        let cert = args.tls_cert.clone().or(file.tls_cert.clone());
        let key = args.tls_key.clone().or(file.tls_key.clone());
        match (own_ca, cert, key) {
            (false, None, None) => controller::http::tls::HttpTls::Off,
            (true, None, None) => controller::http::tls::HttpTls::OwnCa,
            (false, Some(cert), Some(key)) => controller::http::tls::HttpTls::Files { cert, key },
            (true, _, _) => {
                problems.push(error(
                    "`tls_own_ca` and `tls_cert`/`tls_key` exclude each other: choose the controller's CA or your certificate",
                ));
                controller::http::tls::HttpTls::Off
            }
            (false, _, _) => {
                problems.push(error(
                    "`tls_cert` and `tls_key` go together: set both (PEM files) or neither",
                ));
                controller::http::tls::HttpTls::Off
            }
        }
    };

    let mut gh = args.github;
    if !given("github_api")
        && let Some(a) = gh_file.api
    {
        gh.github_api = a;
    }
    if !given("github_token") && gh.github_token.is_none() {
        gh.github_token = gh_file.token;
    }
    if !given("github_app_id") && gh.github_app_id.is_none() {
        gh.github_app_id = gh_file.app_id;
    }
    if !given("github_installation_id") && gh.github_installation_id.is_none() {
        gh.github_installation_id = gh_file.installation_id;
    }
    if !given("github_app_key_file") && gh.github_app_key_file.is_none() {
        gh.github_app_key_file = gh_file.app_key_file;
    }
    let github = match gh.config() {
        Ok(g) => g,
        Err(e) => {
            problems.push(error(format!("{e:#}")));
            None
        }
    };

    let model_api = pick!("model_api", args.model_api, model_file.api);
    let api_key = args
        .model_api_key
        .or(model_file.api_key)
        .filter(|k| !k.is_empty());
    let oauth = args
        .oauth_token
        .or(model_file.oauth_token)
        .filter(|k| !k.is_empty());
    let claude_cli = pick!("claude_cli", args.claude_cli, model_file.claude_cli);
    let model = match (api_key, oauth) {
        (Some(api_key), _) => Some(controller::llm::ModelConfig {
            base_url: model_api,
            api_key,
            timeout: Duration::from_secs(300),
            cli: None,
        }),
        (None, Some(token)) => Some(controller::llm::ModelConfig {
            base_url: model_api,
            api_key: token,
            timeout: Duration::from_secs(300),
            cli: Some(claude_cli),
        }),
        (None, None) => None,
    };
    let mut trusted_proxies = Vec::new();
    for p in file.trusted_proxies.iter().flatten() {
        match p.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => trusted_proxies.push(ip.to_canonical()),
            Err(_) => problems.push(error(format!(
                "trusted_proxies: `{p}` is not an IP address; list the proxies' addresses (no names, no ranges)"
            ))),
        }
    }
    let defaults = Config::default();
    let config = Config {
        database_url: args.database_url.or(file.database_url),
        data_dir: pick!("data_dir", args.data_dir, file.data_dir),
        http_listen: if given("listen") {
            args.listen
        } else {
            match (parity.listen, parity.listen_given) {
                (Some(l), true) => l,
                (l, _) => listen_file.or(l).unwrap_or(args.listen),
            }
        },
        grpc_listen: if given("grpc_listen") {
            args.grpc_listen
        } else {
            grpc_file.unwrap_or(args.grpc_listen)
        },
        server_names: pick!("server_names", args.server_names, file.server_names),
        lease,
        heartbeat_interval: lease / 3,
        webhook_secret: pick!("webhook_secret", args.webhook_secret, file.webhook_secret),
        allowed_users: if given("allowed_users") {
            args.allowed_users
        } else {
            file.allowed_users.unwrap_or(args.allowed_users)
        },
        github,
        model,
        review_model: parity.review_model.unwrap_or(pick!(
            "review_model",
            args.review_model,
            model_file.review_model
        )),
        triage_model: model_file
            .triage_model
            .unwrap_or(defaults.triage_model.clone()),
        reflection_model: model_file
            .reflection_model
            .unwrap_or(defaults.reflection_model.clone()),
        poll_interval: Duration::from_secs(
            parity
                .poll_seconds
                .unwrap_or(pick!("poll_seconds", args.poll_seconds, file.poll_seconds))
                .max(5),
        ),
        notify_urls: parity.notify_urls,
        notify_events: parity.notify_events,
        approval_mode: parity.approval_mode,
        default_model: parity.default_model,
        navigation: parity.navigation,
        cleanup: parity.cleanup,
        // Sessions served over HTTPS are marked Secure.
        secure_cookies: file.secure_cookies.unwrap_or(false)
            || http_tls != controller::http::tls::HttpTls::Off,
        http_tls,
        pipeline: controller::config::PipelineConfig {
            retry: controller::store::tasks::RetryPolicy {
                lease_losses: max_lease_losses.max(1),
                agent: parity.max_task_retries,
                ci: parity.max_ci_retries,
                ..defaults.pipeline.retry.clone()
            },
            ci_poll: parity.ci_poll,
            ..defaults.pipeline.clone()
        },
        task_budget_microusd: task_budget_microusd.unwrap_or(defaults.task_budget_microusd),
        daily_budget_microusd,
        task_deadline,
        prices,
        retention,
        metrics_interval,
        metrics_token: file.metrics_token.filter(|t| !t.is_empty()),
        trusted_proxies,
        ..defaults
    };
    Ok((config, problems))
}

/// The settings the reference names (its variables, and the same names as file keys), resolved:
/// a flag or variable given wins over the file, the file over the default.
struct Parity {
    listen: Option<std::net::SocketAddr>,
    /// Whether `listen` comes from the environment or a flag (and so wins over the file).
    listen_given: bool,
    review_model: Option<String>,
    poll_seconds: Option<u64>,
    notify_urls: Vec<String>,
    notify_events: controller::config::NotifyEvents,
    approval_mode: Option<String>,
    default_model: String,
    navigation: bool,
    max_ci_retries: i32,
    max_task_retries: i32,
    ci_poll: Duration,
    cleanup: controller::cleanup::CleanupPolicy,
}

fn reference_settings(
    args: &ServeArgs,
    file: &mut FileConfig,
    given: &dyn Fn(&str) -> bool,
    problems: &mut Vec<Problem>,
) -> Parity {
    let defaults = Config::default();
    // Host and port compose the listen address; `listen` (flag, variable or key) wins.
    let host = if given("dashboard_host") {
        args.dashboard_host.clone()
    } else {
        file.dashboard_host.take()
    };
    let port = if given("dashboard_port") {
        args.dashboard_port
    } else {
        file.dashboard_port.take()
    };
    let listen_given = given("dashboard_host") || given("dashboard_port");
    let listen = match (host, port) {
        (None, None) => None,
        (host, port) => {
            if given("listen") || file.listen.is_some() {
                problems.push(warning(
                    "both `listen` (BACKPORCHER_LISTEN) and the dashboard host/port (BACKPORCHER_DASHBOARD_HOST/_PORT) are set: `listen` wins; keep one",
                ));
            }
            let host = host.unwrap_or_else(|| defaults.http_listen.ip().to_string());
            let port = port.unwrap_or(defaults.http_listen.port());
            let text = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            match text.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(error(format!(
                        "dashboard host `{host}` (BACKPORCHER_DASHBOARD_HOST / `dashboard_host`) is not an IP address like 127.0.0.1 or 0.0.0.0"
                    )));
                    None
                }
            }
        }
    };

    // The reviewer: BACKPORCHER_REVIEW_MODEL, or its reference name BACKPORCHER_COORDINATOR_MODEL.
    let coordinator = if given("coordinator_model") {
        args.coordinator_model.clone()
    } else {
        file.coordinator_model.take()
    };
    let review_model = match coordinator {
        Some(c) if given("review_model") && c != args.review_model => {
            problems.push(error(format!(
                "BACKPORCHER_REVIEW_MODEL = `{}` and BACKPORCHER_COORDINATOR_MODEL (its reference name) = `{c}` differ: set one",
                args.review_model
            )));
            None
        }
        Some(c) if c.trim().is_empty() => {
            problems.push(error(
                "the coordinator (review) model is empty: name a model such as sonnet",
            ));
            None
        }
        c => c,
    };
    if given("navigation_model") || file.navigation_model.is_some() {
        problems.push(warning(
            "BACKPORCHER_NAVIGATION_MODEL / `navigation_model` is accepted but unused: navigation here is computed from the code graph and calls no model (switch it with BACKPORCHER_NAVIGATION_ENABLED)",
        ));
    }
    if given("task_timeout") || file.task_timeout.is_some() {
        problems.push(warning(
            "BACKPORCHER_TASK_TIMEOUT / `task_timeout` is a runner setting (the agent's hard-kill timeout): set it on each runner host for `backporcher-runner run`; the controller's own bound is `task_deadline_hours`",
        ));
    }

    let poll_seconds = if given("poll_interval") {
        if given("poll_seconds") && args.poll_interval != Some(args.poll_seconds) {
            problems.push(warning(
                "both BACKPORCHER_POLL_SECONDS and BACKPORCHER_POLL_INTERVAL (its reference name) are set: BACKPORCHER_POLL_INTERVAL wins; keep one",
            ));
        }
        args.poll_interval
    } else if given("poll_seconds") {
        None
    } else {
        file.poll_interval.take()
    };
    if let Some(p) = poll_seconds.filter(|p| *p < 5) {
        problems.push(warning(format!(
            "a poll interval of {p} s is raised to 5 s (the poller is the webhooks' backstop)"
        )));
    }

    let mut notify_urls = file.notify_urls.take().unwrap_or_default();
    let webhook_url = if given("webhook_url") {
        args.webhook_url.clone()
    } else {
        file.webhook_url.take()
    };
    if let Some(u) = webhook_url.filter(|u| !u.trim().is_empty())
        && !notify_urls.contains(&u)
    {
        notify_urls.push(u);
    }
    let event_names = if given("webhook_events") {
        args.webhook_events.clone()
    } else {
        file.webhook_events
            .take()
            .map(|l| l.items())
            .unwrap_or_else(|| args.webhook_events.clone())
    };
    let notify_events = match controller::config::NotifyEvents::parse(&event_names) {
        Ok(e) => e,
        Err(e) => {
            problems.push(error(format!(
                "{e} (BACKPORCHER_WEBHOOK_EVENTS / `webhook_events`)"
            )));
            controller::config::NotifyEvents::default()
        }
    };

    let approval_mode = if given("approval_mode") {
        args.approval_mode.clone()
    } else {
        file.approval_mode.take()
    };
    if let Some(m) = &approval_mode
        && controller::store::settings::check_approval_mode(m).is_err()
    {
        problems.push(error(format!(
            "approval mode `{m}` (BACKPORCHER_APPROVAL_MODE / `approval_mode`) is not one of: full-auto, review-merge, review-all"
        )));
    }
    let default_model = if given("default_model") {
        args.default_model.clone()
    } else {
        file.default_model
            .take()
            .unwrap_or(args.default_model.clone())
    };
    if !(matches!(default_model.as_str(), "sonnet" | "opus" | "haiku")
        || default_model.starts_with("claude-"))
    {
        problems.push(error(format!(
            "default model `{default_model}` (BACKPORCHER_DEFAULT_MODEL / `default_model`) is not sonnet, opus, haiku or a full claude-* name"
        )));
    }
    let navigation = if given("navigation_enabled") {
        args.navigation_enabled
    } else {
        file.navigation_enabled.unwrap_or(args.navigation_enabled)
    };
    let mut retries = |id: &str, key: &str, var: &str, arg: i32, from_file: Option<i32>| {
        let v = if given(id) {
            arg
        } else {
            from_file.unwrap_or(arg)
        };
        if (0..=20).contains(&v) {
            v
        } else {
            problems.push(error(format!(
                "{var} / `{key}` = {v} is outside 0–20 retries"
            )));
            arg.clamp(0, 20)
        }
    };
    let max_ci_retries = retries(
        "max_ci_retries",
        "max_ci_retries",
        "BACKPORCHER_MAX_CI_RETRIES",
        args.max_ci_retries,
        file.max_ci_retries,
    );
    let max_task_retries = retries(
        "max_task_retries",
        "max_task_retries",
        "BACKPORCHER_MAX_TASK_RETRIES",
        args.max_task_retries,
        file.max_task_retries,
    );
    let ci_secs = if given("ci_check_interval") {
        args.ci_check_interval
    } else {
        file.ci_check_interval.unwrap_or(args.ci_check_interval)
    };
    let ci_poll = if (1..=3600).contains(&ci_secs) {
        Duration::from_secs(ci_secs)
    } else {
        problems.push(error(format!(
            "BACKPORCHER_CI_CHECK_INTERVAL / `ci_check_interval` = {ci_secs} is outside 1–3600 seconds"
        )));
        defaults.pipeline.ci_poll
    };

    let cleanup = {
        let c = file.cleanup.take().unwrap_or_default();
        let d = controller::cleanup::CleanupPolicy::default();
        let mut days = |key: &str, v: Option<f64>, default: Option<Duration>| match v {
            None => default,
            Some(0.0) => None,
            Some(days) if days.is_finite() && (0.0..=36_500.0).contains(&days) => {
                Some(Duration::from_secs_f64(days * 24.0 * 3600.0))
            }
            Some(days) => {
                problems.push(error(format!(
                    "`[cleanup] {key} = {days}` is not a number of days (up to 36500, or 0 for never)"
                )));
                default
            }
        };
        let sweep = controller::store::cleanup::Sweep {
            failed: days("failed_days", c.failed_days, d.sweep.failed),
            canceled: days("canceled_days", c.canceled_days, d.sweep.canceled),
            merged: days("merged_days", c.merged_days, d.sweep.merged),
        };
        let interval = match c.interval_seconds {
            None => d.interval,
            Some(s) if (10..=7 * 24 * 3600).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                problems.push(error(format!(
                    "`[cleanup] interval_seconds = {s}` is outside 10–604800"
                )));
                d.interval
            }
        };
        controller::cleanup::CleanupPolicy { sweep, interval }
    };

    Parity {
        listen,
        listen_given,
        review_model,
        poll_seconds,
        notify_urls,
        notify_events,
        approval_mode,
        default_model,
        navigation,
        max_ci_retries,
        max_task_retries,
        ci_poll,
        cleanup,
    }
}

/// Prints the effective value of every setting the reference names (`check-config --show`).
pub fn show(c: &Config) {
    let secs = |d: Duration| d.as_secs();
    let r = &c.pipeline.retry;
    let days = |d: Option<Duration>| {
        d.map(|d| format!("{}", d.as_secs_f64() / 86_400.0))
            .unwrap_or_else(|| "never".into())
    };
    for (name, value) in [
        (
            "approval_mode",
            c.approval_mode
                .clone()
                .unwrap_or_else(|| "(not set: the stored mode stays)".into()),
        ),
        ("default_model", c.default_model.clone()),
        ("coordinator_model", c.review_model.clone()),
        ("navigation_enabled", c.navigation.to_string()),
        ("max_ci_retries", r.ci.to_string()),
        ("max_task_retries", r.agent.to_string()),
        ("ci_check_interval", secs(c.pipeline.ci_poll).to_string()),
        ("poll_interval", secs(c.poll_interval).to_string()),
        ("listen", c.http_listen.to_string()),
        ("webhook_urls", c.notify_urls.len().to_string()),
        ("webhook_events", c.notify_events.names()),
        ("cleanup.failed_days", days(c.cleanup.sweep.failed)),
        ("cleanup.canceled_days", days(c.cleanup.sweep.canceled)),
        ("cleanup.merged_days", days(c.cleanup.sweep.merged)),
    ] {
        println!("{name} = {value}");
    }
}

/// Checks that go beyond parsing: the database, the data dir, GitHub, the model, the webhooks.
pub async fn check(config: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    match &config.database_url {
        Some(url) => {
            let connect = tokio::time::timeout(
                Duration::from_secs(5),
                controller::store::Store::connect(url, 1),
            )
            .await;
            match connect {
                Ok(Ok(store)) => {
                    if let (Some(m), Ok(s)) = (&config.approval_mode, store.settings().await)
                        && s.approval_mode_configured.as_deref() == Some(m.as_str())
                        && s.approval_mode != *m
                    {
                        p.push(warning(format!(
                            "approval mode: the configured `{m}` was applied at an earlier start and {} changed it to `{}` at run time; the run-time value stays until the configured value changes (or set it with `backporcher settings set approval-mode`)",
                            s.approval_mode_by.as_deref().unwrap_or("someone"),
                            s.approval_mode
                        )));
                    }
                }
                Ok(Err(e)) => p.push(error(format!(
                    "DATABASE_URL does not connect: {e}; check host, port, user and password"
                ))),
                Err(_) => p.push(error(
                    "DATABASE_URL did not answer within 5 s; is PostgreSQL running and reachable?",
                )),
            }
        }
        None => {
            if !std::path::Path::new("/usr/lib/postgresql").exists() {
                p.push(error("no DATABASE_URL and no PostgreSQL binaries under /usr/lib/postgresql: install postgresql (15) or set DATABASE_URL"));
            }
        }
    }
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        p.push(error(format!(
            "the data dir {} cannot be created: {e}",
            config.data_dir.display()
        )));
    }
    match &config.github {
        None => p.push(warning("no GitHub credentials (GITHUB_TOKEN or the GitHub App settings): tasks stop once their result is stored")),
        Some(gh) => {
            if let Err(e) = controller::forge::github::GitHub::new(gh.clone()) {
                p.push(error(format!("{e}")));
            }
            if config.webhook_secret.is_empty() {
                p.push(warning("no webhook secret (BACKPORCHER_WEBHOOK_SECRET): webhooks are refused and issues arrive only by polling"));
            }
        }
    }
    if config.allowed_users.is_empty() {
        p.push(warning(
            "no allowed users (BACKPORCHER_ALLOWED_USERS): no labelled issue will start a task",
        ));
    }
    if config.model.is_none() {
        p.push(warning("no model credentials (ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN): triage uses defaults and reviews follow each repository's fail mode"));
    }
    for url in &config.notify_urls {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            p.push(error(format!(
                "notification URL `{url}` is not an http(s) URL"
            )));
        }
    }
    if !config.http_listen.ip().is_loopback() && !config.secure_cookies {
        p.push(warning(format!(
            "listening on {} without `secure_cookies = true`: put HTTPS in front and set it, or sessions travel in clear",
            config.http_listen
        )));
    }
    p
}

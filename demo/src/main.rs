//! `backporcher-up`: the whole system on one machine from one command. The controller (with its
//! own PostgreSQL under the data dir unless `DATABASE_URL` is set), a local runner enrolled
//! through a real join ticket, the agent image built if it is missing — and, when no GitHub or
//! model credentials are configured, the GitHub simulator with a sample repository and labelled
//! sample issues (filed `--sample-interval` seconds apart: one fails CI and is fixed, one waits
//! for a person's approval) plus the scripted model, which handles any other issue by writing a
//! note quoting it. Prints the dashboard URL, the admin login and what to try next.
//!
//! The simulator keeps its state under the data dir with the controller's, so a second start
//! finds the same issues and pull requests. Subcommands: `file-issue` files an issue on the
//! running demo's simulator; `reset-admin-password` gives `admin` a new password.
//!
//! With `GITHUB_TOKEN` (and `BACKPORCHER_REPOS=owner/name,…`) it works against real GitHub; with
//! `ANTHROPIC_API_KEY` (or `CLAUDE_CODE_OAUTH_TOKEN`) against the real model API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use controller::config::Config;
use controller::forge::github::GitHubConfig;
use controller::llm::ModelConfig;
use controller::store::repos::{NewRepo, RepoSettings};
use sim::demo;
use sim::github::GitHubSim;
use sim::model::ModelSim;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "backporcher-up",
    version,
    about = "Run the whole Backporcher system on this machine"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// State directory (database, runner, simulators).
    #[arg(long, env = "BACKPORCHER_DATA_DIR", default_value = ".backporcher")]
    data_dir: PathBuf,
    /// Dashboard / API address.
    #[arg(long, env = "BACKPORCHER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Runner gRPC address.
    #[arg(
        long,
        env = "BACKPORCHER_GRPC_LISTEN",
        default_value = "127.0.0.1:7443"
    )]
    grpc_listen: SocketAddr,
    /// Simulated GitHub's address (when no GitHub token is set).
    #[arg(long, default_value = "127.0.0.1:8090")]
    sim_listen: SocketAddr,
    /// Repositories to serve (real GitHub only), comma-separated `owner/name`.
    #[arg(long, env = "BACKPORCHER_REPOS", value_delimiter = ',')]
    repos: Vec<String>,
    /// GitHub logins whose labelled issues start tasks (real GitHub only).
    #[arg(long, env = "BACKPORCHER_ALLOWED_USERS", value_delimiter = ',')]
    allowed_users: Vec<String>,
    /// Seconds between the sample issues being filed (simulator only), so each is seen at work.
    #[arg(long, default_value_t = 20)]
    sample_interval: u64,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// File an issue on the running demo's simulated GitHub, labelled `backporcher`, as the demo
    /// user; it goes through like the samples (with no model credential a scripted model writes
    /// a note quoting it).
    FileIssue {
        /// The issue's title.
        title: String,
        /// The issue's body.
        #[arg(default_value = "")]
        body: String,
        /// The simulator's URL (what `backporcher-up` printed).
        #[arg(long, default_value = "http://127.0.0.1:8090")]
        sim_url: String,
    },
    /// Give the dashboard's `admin` a new password (printed once). Stop `backporcher-up` first:
    /// it opens the same data directory's database.
    ResetAdminPassword,
}

const SECRET: &str = "whsec-demo";
/// Longest the agent image build may take (it is mostly downloads: about a minute here).
const IMAGE_BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The name of the admin's API token each start mints for the printed commands.
const TOKEN_NAME: &str = "backporcher-up";

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let mut args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work = async {
        match args.command.take() {
            Some(Cmd::FileIssue {
                title,
                body,
                sim_url,
            }) => file_issue(&sim_url, &title, &body).await,
            Some(Cmd::ResetAdminPassword) => reset_admin_password(&args).await,
            None => run(args).await,
        }
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the agent image if it is missing, its output kept in `log` (the tail is shown if the
/// build fails).
async fn ensure_image(log: PathBuf) -> anyhow::Result<()> {
    if agent_image_present().await {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent/build-offline.sh");
    eprintln!(
        "building the agent image (first run only; about a minute; output in {})…",
        log.display()
    );
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut build = xcmd::Cmd::new("bash", Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .arg(script)
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .to_tokio();
    let child = build
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .status();
    // Downloads that stall must not keep the demo waiting for ever.
    let status = tokio::time::timeout(IMAGE_BUILD_LIMIT, child)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "building the agent image took more than {} minutes and was stopped (see {}); \
                 check the network to the Debian mirror and PyPI, then start again",
                IMAGE_BUILD_LIMIT.as_secs() / 60,
                log.display()
            )
        })?
        .context("cannot run deploy/agent/build-offline.sh")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        anyhow::bail!(
            "building the agent image failed ({}); its last lines:\n{tail}",
            log.display()
        );
    }
    eprintln!("agent image built");
    Ok(())
}

/// Whether the agent image exists (asked through the docker CLI, so no engine client here).
async fn agent_image_present() -> bool {
    xcmd::Cmd::new("docker", std::env::temp_dir())
        .args(["image", "inspect", "backporcher-agent:latest"])
        .to_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // The agent image builds (first start only) while the controller starts: the dashboard is
    // up before it, and the local runner joins once it is there.
    let image = tokio::spawn(ensure_image(data_dir.join("agent-image-build.log")));
    let shutdown = CancellationToken::new();

    // GitHub: real, or the simulator with a sample repository.
    let github_token = std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty());
    let mut sim = None;
    let mut fresh_sim = false;
    let (github, repos, allowed) = match &github_token {
        Some(token) => {
            anyhow::ensure!(
                !args.repos.is_empty(),
                "with GITHUB_TOKEN set, name the repositories: BACKPORCHER_REPOS=owner/name"
            );
            anyhow::ensure!(
                !args.allowed_users.is_empty(),
                "with GITHUB_TOKEN set, name who may trigger work: BACKPORCHER_ALLOWED_USERS=login"
            );
            (
                GitHubConfig::with_token("https://api.github.com", token),
                args.repos.clone(),
                args.allowed_users.clone(),
            )
        }
        None => {
            // The simulator's state lives with the controller's: a second start finds the same
            // issues and pull requests the controller's tasks point at.
            let root = data_dir.join("sim-github");
            let gh = GitHubSim::new(&root, demo::GITHUB_TOKEN);
            let state = root.join("state.json");
            let loaded = match gh.load(&state) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("starting the GitHub simulator afresh: {e:#}");
                    false
                }
            };
            if loaded {
                demo::configure(&gh);
            } else {
                let _ = std::fs::remove_dir_all(&root);
                demo::sample_repo(&gh)?;
                fresh_sim = true;
            }
            keep_saving(gh.clone(), state, shutdown.clone());
            let l = tokio::net::TcpListener::bind(args.sim_listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.sim_listen))?;
            let url = format!("http://{}", l.local_addr()?);
            gh.serve(l);
            sim = Some((gh, url.clone()));
            (
                GitHubConfig::with_token(&url, demo::GITHUB_TOKEN),
                vec![demo::REPO.to_owned()],
                vec![demo::USER.to_owned()],
            )
        }
    };

    // The model: real, or scripted.
    let (model, runner_upstream, runner_key) = match (
        std::env::var("ANTHROPIC_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        std::env::var("CLAUDE_CODE_OAUTH_TOKEN")
            .ok()
            .filter(|k| !k.is_empty()),
    ) {
        (Some(key), _) => (
            ModelConfig {
                base_url: "https://api.anthropic.com".into(),
                api_key: key.clone(),
                timeout: Duration::from_secs(300),
                cli: None,
            },
            "https://api.anthropic.com".to_owned(),
            runner::gateway::Credential::ApiKey(key),
        ),
        (None, Some(token)) => (
            ModelConfig {
                base_url: "https://api.anthropic.com".into(),
                api_key: token.clone(),
                timeout: Duration::from_secs(300),
                cli: Some("claude".into()),
            },
            "https://api.anthropic.com".to_owned(),
            runner::gateway::Credential::OAuth(token),
        ),
        (None, None) => {
            let m = ModelSim::new(Some(demo::MODEL_KEY.into()));
            demo::scripts(&m);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", l.local_addr()?);
            m.serve(l);
            (
                ModelConfig {
                    base_url: url.clone(),
                    api_key: demo::MODEL_KEY.into(),
                    timeout: Duration::from_secs(60),
                    cli: None,
                },
                url,
                runner::gateway::Credential::ApiKey(demo::MODEL_KEY.into()),
            )
        }
    };

    // The controller.
    let mut config = Config {
        database_url: std::env::var("DATABASE_URL").ok(),
        data_dir: data_dir.join("controller"),
        http_listen: args.listen,
        grpc_listen: args.grpc_listen,
        webhook_secret: SECRET.into(),
        allowed_users: allowed,
        github: Some(github),
        model: Some(model),
        ..Config::default()
    };
    config.poll_interval = Duration::from_secs(if sim.is_some() { 5 } else { 60 });
    config.pipeline.ci_poll = Duration::from_secs(2);
    let listeners = controller::server::Listeners::bind(&config).await?;
    let server = controller::server::start(config.clone(), listeners, shutdown.clone()).await?;
    let db = controller::server::Database::open_for_admin(&config)
        .await?
        .store;
    for name in &repos {
        let repo = match db.repo_by_name(name).await {
            Ok(r) => r,
            Err(_) => {
                let clone_url = match &sim {
                    Some((_, url)) => format!("{url}/{name}.git"),
                    None => format!("https://github.com/{name}.git"),
                };
                db.add_repo(&NewRepo {
                    name: name.clone(),
                    clone_url,
                    default_branch: "main".into(),
                })
                .await?
            }
        };
        if sim.is_some() {
            db.update_repo(
                repo.id,
                &RepoSettings {
                    approval_mode: Some("full-auto".into()),
                    ..RepoSettings::default()
                },
            )
            .await?;
        }
    }
    let password = if db.has_admin().await? {
        None
    } else {
        Some(controller::http::bootstrap_admin(&db, "admin").await?)
    };
    // An API token of the admin's for the commands printed below: a new one each start, the
    // previous start's revoked, so only the one on the screen works.
    let api_token = match db.user_for_login("admin").await? {
        Some((admin, _)) => {
            for t in db.api_tokens(Some(admin.id)).await? {
                if t.name == TOKEN_NAME && t.revoked_at.is_none() {
                    db.revoke_api_token(t.id, Some(admin.id)).await?;
                }
            }
            Some(db.create_api_token(admin.id, TOKEN_NAME).await?.1)
        }
        None => None,
    };

    // Sample issues on the simulator, labelled as a person would, spaced out so each is seen
    // at work — filed once the runner is there (below).
    if let Some((gh, url)) = &sim {
        gh.set_webhook(
            &format!("http://{}/api/github/webhook", args.listen),
            SECRET,
        );
        println!(
            "GitHub simulator:   {url}/{} (token {}; the demo user's token {})",
            demo::REPO,
            demo::GITHUB_TOKEN,
            demo::USER_TOKEN
        );
    }
    let dashboard = format!("http://{}", args.listen);
    println!("Dashboard:          {dashboard}/");
    match &password {
        Some(p) => println!("Admin login:        admin / {p}"),
        None => println!(
            "Admin login:        admin, password printed on the first start (lost it? stop this, run `backporcher-up --data-dir {} reset-admin-password`)",
            args.data_dir.display()
        ),
    }
    if let Some((_, url)) = &sim {
        print_tour(&dashboard, url, &args, api_token.as_deref());
    }
    println!("Ctrl-C stops everything.");

    if !image.is_finished() {
        println!(
            "Building the agent image (first start only, about a minute): the local runner joins \
             when it is ready; until then the dashboard shows tasks waiting in the queue."
        );
    }
    let built = tokio::select! {
        r = image => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm() => None,
    };
    let built = match built {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(anyhow::anyhow!("building the agent image stopped: {e}")),
        None => {
            eprintln!("stopping…");
            shutdown.cancel();
            server.stopped().await?;
            return Ok(());
        }
    };
    if let Err(e) = built {
        shutdown.cancel();
        server.stopped().await?;
        return Err(e);
    }

    // A local runner, enrolled through a real join ticket.
    let runner_dir = data_dir.join("runner");
    let identity = match runner::identity::Identity::load(&runner_dir) {
        Ok(id) => id,
        Err(_) => {
            let token = db
                .create_join_token("backporcher-up", Duration::from_secs(600), &[])
                .await?;
            let pki =
                controller::pki::Pki::load_or_create(&db, config.client_cert_validity).await?;
            let ticket: runner::identity::Ticket = pki.join_ticket(&token).parse()?;
            runner::identity::join(
                &format!("https://localhost:{}", args.grpc_listen.port()),
                &ticket,
                "local",
                &runner_dir,
            )
            .await?
        }
    };
    let control = runner::daemon::Control::default();
    let runner = runner::start::start(
        identity,
        runner::start::Setup {
            name: "local".into(),
            image: None,
            model_api: runner_upstream,
            credential: runner_key,
            openai: None,
            exec: runner::sandbox_executor::ExecConfig {
                agent_timeout: Duration::from_secs(1800),
                stall_timeout: Duration::from_secs(600),
                verify_timeout: Duration::from_secs(900),
                ..runner::sandbox_executor::ExecConfig::new(runner_dir, free_port()?)
            },
        },
        2,
        vec![],
        control.clone(),
    )
    .await?;

    println!("Local runner:       `local` enrolled; agents start now");
    if let Some((gh, _)) = &sim
        && fresh_sim
    {
        let gh = gh.clone();
        let interval = Duration::from_secs(args.sample_interval);
        tokio::spawn(async move { demo::file_samples(&gh, interval).await });
    }

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm() => {}
    }
    eprintln!("stopping…");
    control.drain.cancel();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), runner.stopped()).await;
    server.stopped().await?;
    Ok(())
}

/// What to try next, with the exact commands.
fn print_tour(dashboard: &str, sim_url: &str, args: &Args, token: Option<&str>) {
    let token = token.unwrap_or("<an API token: dashboard → Tokens>");
    let interval = args.sample_interval;
    println!(
        "
Try this:
  1. Open {dashboard}/ and log in. {n} sample issues arrive {interval} s apart: one fails CI and the
     agent fixes it from the failed job's log, one waits for your approval after its review.
     Each task's PR link opens the simulator's page with the diff, checks and review
     ({sim_url}/{repo} lists them all).
  2. Approve the held task (the one in `approval_hold`) with the dashboard's Approve button, or:
       curl -s -H 'Authorization: Bearer {token}' {dashboard}/api/tasks?status=approval_hold
       curl -s -X POST -H 'Authorization: Bearer {token}' {dashboard}/api/tasks/<id>/approve
  3. File your own issue and watch it become a merged PR (with no model credential a scripted
     model writes a note quoting it):
       cargo run -p demo --bin backporcher-up -- file-issue --sim-url {sim_url} \
         \"Say hello\" \"Add a greeting to the README\"
     or with curl, as on GitHub:
       curl -s -H 'Authorization: token {user_token}' -d '{{\"title\": \"Say hello\", \"labels\": [\"backporcher\"]}}' \
         {sim_url}/repos/{repo}/issues
A real repository: stop this, then start it again with GITHUB_TOKEN=<token>,
BACKPORCHER_REPOS=owner/name and BACKPORCHER_ALLOWED_USERS=<your login> (and ANTHROPIC_API_KEY or
CLAUDE_CODE_OAUTH_TOKEN for a real model); label an issue `backporcher` there.
",
        n = demo::SAMPLES.len(),
        repo = demo::REPO,
        user_token = demo::USER_TOKEN,
    );
}

/// `file-issue`: files an issue on the running demo's simulator.
async fn file_issue(sim_url: &str, title: &str, body: &str) -> anyhow::Result<()> {
    let (number, page) = demo::file_issue(sim_url, title, body).await?;
    println!("filed issue #{number}: {page}");
    Ok(())
}

/// `reset-admin-password`: a new password for `admin` in the data directory's database.
async fn reset_admin_password(args: &Args) -> anyhow::Result<()> {
    let data_dir = std::fs::canonicalize(&args.data_dir).with_context(|| {
        format!(
            "no data directory {} (--data-dir names it)",
            args.data_dir.display()
        )
    })?;
    let config = Config {
        database_url: std::env::var("DATABASE_URL").ok(),
        data_dir: data_dir.join("controller"),
        ..Config::default()
    };
    let db = controller::server::Database::open_for_admin(&config).await?;
    let result = controller::http::reset_password(&db.store, "admin").await;
    db.close().await;
    println!("Admin login:        admin / {}", result?);
    Ok(())
}

async fn sigterm() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        s.recv().await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// Saves the simulator's state every second, and once more at shutdown.
fn keep_saving(gh: GitHubSim, path: PathBuf, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if let Err(e) = gh.save(&path) {
                eprintln!(
                    "cannot save the GitHub simulator's state to {}: {e:#}",
                    path.display()
                );
            }
            if stop {
                return;
            }
        }
    });
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

//! `backporcher`: the operator CLI. It talks to the controller's REST API only, with an API token
//! kept (with the controller URL) in a 0600 file, and prints either text for people or `--json`
//! for scripts. Exit codes scripts can rely on: 0 ok, 1 failed, 2 usage, 3 not found,
//! 4 not allowed (401/403), 5 conflict (the task is not in a state for that), 6 controller
//! unreachable.

mod client;
mod evidence;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};

use client::{CliError, Client, Config};

#[derive(Parser)]
#[command(
    name = "backporcher",
    version,
    about = "Steer a Backporcher fleet from the terminal"
)]
struct Cli {
    /// Print JSON instead of text (read commands).
    #[arg(long, global = true)]
    json: bool,
    /// Config file (default: $XDG_CONFIG_HOME/backporcher/cli.toml).
    #[arg(long, global = true, env = "BACKPORCHER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in with a password and store an API token for this machine.
    Login {
        /// Controller URL, e.g. https://backporcher.example.com
        #[arg(long)]
        url: String,
        /// User name.
        #[arg(long)]
        user: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Store a controller URL and an existing API token.
    Config {
        /// Controller URL.
        #[arg(long)]
        url: String,
        /// API token (`bpt_…`).
        #[arg(long)]
        token: String,
    },
    /// Live tasks (with --watch: keep updating).
    Fleet {
        /// Follow changes as they happen.
        #[arg(long)]
        watch: bool,
    },
    /// One task: its fields and timeline (and its log with --logs). With no id: live tasks and
    /// the 10 most recent ended ones, with counts by status.
    Status {
        /// Task id (none: the overview).
        id: Option<i64>,
        /// Also print the log of the current attempt.
        #[arg(long)]
        logs: bool,
    },
    /// A task's log (with -f: follow it).
    Logs {
        /// Task id.
        id: i64,
        /// Follow until the attempt ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Approve what a task waits for: its merge (approval hold) or its dispatch (review-all).
    Approve { id: i64 },
    /// Put a user hold on a task.
    Hold { id: i64 },
    /// Release a user hold (approval holds are `approve`'s; the others release themselves).
    Release { id: i64 },
    /// Create a task from a prompt.
    New {
        /// Repository `owner/name` (registered).
        repo: String,
        /// Title.
        #[arg(long)]
        title: String,
        /// What the agent is to do (`-` reads it from standard input).
        #[arg(long)]
        prompt: String,
        /// Model (sonnet, opus, haiku or a full claude-* name; default: the configured one).
        #[arg(long)]
        model: Option<String>,
        /// Priority (lower runs first).
        #[arg(long)]
        priority: Option<i32>,
        /// Also open an issue on GitHub for it, which the task then follows.
        #[arg(long)]
        open_issue: bool,
    },
    /// Change a task's prompt, model, agent or priority before it starts.
    Edit {
        id: i64,
        /// New prompt (`-` reads it from standard input).
        #[arg(long)]
        prompt: Option<String>,
        /// New model (sonnet, opus, haiku or a full claude-* name).
        #[arg(long)]
        model: Option<String>,
        /// New agent backend (claude or codex).
        #[arg(long)]
        agent: Option<String>,
        /// New priority (lower runs first).
        #[arg(long)]
        priority: Option<i32>,
    },
    /// Cancel a task.
    Cancel { id: i64 },
    /// Re-queue an ended task.
    Requeue {
        id: i64,
        /// With another model.
        #[arg(long)]
        model: Option<String>,
    },
    /// Run a task with a stronger model.
    Escalate {
        id: i64,
        #[arg(long, default_value = "opus")]
        model: String,
    },
    /// Close the PRs and delete the branches ended tasks left on GitHub, by the controller's
    /// cleanup policy (failed after some days, canceled and merged stragglers).
    Cleanup {
        /// Only this repository (`owner/name`).
        #[arg(long)]
        repo: Option<String>,
        /// Do not wait for the policy's ages (kinds it never cleans stay untouched).
        #[arg(long)]
        now: bool,
    },
    /// Cancel every live task of a repository that is held, and list what was canceled.
    CancelHeld {
        /// Repository `owner/name`.
        repo: String,
    },
    /// Pause dispatch.
    Pause,
    /// Resume dispatch.
    Resume,
    /// The global switches: approval mode and dispatch pause.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Merged count, success rate, time to merge, retry rate, cost.
    Stats {
        /// One repository.
        #[arg(long)]
        repo: Option<String>,
    },
    /// A task's signed evidence record: show it, verify it, download the agent's transcript.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Plan gate: a task's plan — show it, approve it, edit it (then approved) or reject it.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Runners.
    #[command(subcommand)]
    Runner(RunnerCommand),
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PlanCommand {
    /// The plan: files, approach, risks, tests, its predicted blast radius and the decision.
    Show {
        /// Task id.
        id: i64,
    },
    /// Approve it: the task is implemented following it.
    Approve {
        /// Task id.
        id: i64,
    },
    /// Replace its text (from a file, `-` for standard input), then approve it.
    Edit {
        /// Task id.
        id: i64,
        /// The new plan text.
        #[arg(long)]
        file: PathBuf,
    },
    /// Reject it: the task fails with the reason.
    Reject {
        /// Task id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Plan gate: each task first runs read-only and waits for its plan to be approved.
    PlanGate {
        /// `owner/name`.
        name: String,
        /// `on` or `off`.
        state: String,
        /// Approve plans automatically when their predicted blast radius (files) is at most
        /// this; -1: never.
        #[arg(long)]
        auto_blast: Option<i32>,
        /// Seconds an undecided plan waits before it is denied (300 to 1209600).
        #[arg(long)]
        timeout: Option<i32>,
    },
    /// Register a repository.
    Add {
        /// `owner/name`.
        name: String,
        /// Default branch.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Clone URL (default: GitHub's).
        #[arg(long)]
        clone_url: Option<String>,
    },
    /// List repositories.
    List,
    /// Set (or with no command, clear) the verify command.
    Verify {
        /// `owner/name`.
        name: String,
        /// The command.
        command: Vec<String>,
    },
    /// What tasks in the repository taught.
    Learnings {
        /// `owner/name`.
        name: String,
    },
    /// The environment: the settings beside what the repository's files declare (as the latest
    /// task read them), which wins and why.
    Environment {
        /// `owner/name`.
        name: String,
    },
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// The record's figures (with --json: the signed envelope, to save and verify later).
    Show {
        /// Task id.
        task: i64,
        /// Attempt (default: the newest with a record).
        #[arg(long)]
        attempt: Option<i32>,
    },
    /// Check the record's signature with the controller's public key; exits 1 naming what was
    /// changed when it does not verify.
    Verify {
        /// Task id.
        task: i64,
        /// Attempt (default: the newest with a record).
        #[arg(long)]
        attempt: Option<i32>,
        /// A saved envelope (`backporcher --json evidence show <task> > F`) instead of the
        /// controller's.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The public key (PEM) instead of the controller's `/evidence-key.pem`.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// The agent's transcript (backporcher.trajectory/1, JSON).
    Trajectory {
        /// Task id.
        task: i64,
        /// Attempt.
        #[arg(long)]
        attempt: i32,
        /// Write it to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Show them.
    Get,
    /// Change one: `approval-mode full-auto|review-merge|review-all` (admin) or
    /// `paused true|false` (operator).
    Set {
        /// `approval-mode` or `paused`.
        key: String,
        /// The value.
        value: String,
    },
}

#[derive(Subcommand)]
enum RunnerCommand {
    /// List runners.
    List,
    /// Mint a one-time join ticket.
    Token {
        /// Labels (comma-separated).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
    },
    /// Drain a runner (finish its work, take no more).
    Drain { id: i64 },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "backporcher",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let path = cli.config.clone().unwrap_or_else(Config::default_path);
    match cli.command {
        Command::Login {
            url,
            user,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let token = Client::login(&url, &user, &password).await?;
            Config { url, token }.save(&path)?;
            println!("logged in as {user}; token stored in {}", path.display());
            return Ok(());
        }
        Command::Config { url, token } => {
            Config { url, token }.save(&path)?;
            println!("stored in {}", path.display());
            return Ok(());
        }
        Command::Evidence(EvidenceCommand::Verify {
            task,
            attempt,
            file,
            key,
        }) if file.is_some() && key.is_some() => {
            // Offline when it can be; the controller, when configured, says what was changed.
            let c = Config::load(&path).ok().and_then(|c| Client::new(c).ok());
            let args = evidence::VerifyArgs {
                task,
                attempt,
                file,
                key,
            };
            println!("{}", evidence::verify(c.as_ref(), &args).await?);
            return Ok(());
        }
        _ => {}
    }
    let c = Client::new(Config::load(&path)?)?;
    let json = cli.json;
    match cli.command {
        Command::Login { .. } | Command::Config { .. } | Command::Completions { .. } => {
            unreachable!("handled above")
        }
        Command::Fleet { watch } => fleet(&c, json, watch).await,
        Command::Status { id: None, .. } => overview(&c, json).await,
        Command::Status { id: Some(id), logs } => {
            let d: api::TaskDetail = c.get(&format!("/api/tasks/{id}")).await?;
            if json {
                return print_json(&d);
            }
            print_task(&d.task);
            for e in &d.timeline {
                println!(
                    "  {}  {:<14} → {:<14} {} ({})",
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    e.from_status.clone().unwrap_or_default(),
                    e.to_status,
                    e.reason,
                    e.actor
                );
            }
            if logs {
                let chunks = c.all_logs(id).await?;
                for ch in chunks {
                    print!("{}", ch.text);
                }
            }
            Ok(())
        }
        Command::Logs { id, follow } => {
            if follow {
                c.follow_logs(id).await
            } else {
                let chunks = c.all_logs(id).await?;
                if json {
                    return print_json(&chunks);
                }
                for ch in chunks {
                    print!("{}", ch.text);
                }
                Ok(())
            }
        }
        Command::Approve { id } => action(&c, id, "approve", None, json).await,
        Command::Hold { id } => action(&c, id, "hold", None, json).await,
        Command::Release { id } => action(&c, id, "release", None, json).await,
        Command::Cancel { id } => action(&c, id, "cancel", None, json).await,
        Command::Requeue { id, model } => {
            action(&c, id, "requeue", Some(json!({"model": model})), json).await
        }
        Command::Escalate { id, model } => {
            action(&c, id, "escalate", Some(json!({"model": model})), json).await
        }
        Command::New {
            repo,
            title,
            prompt,
            model,
            priority,
            open_issue,
        } => {
            let prompt = if prompt == "-" {
                let mut p = String::new();
                std::io::stdin()
                    .read_to_string(&mut p)
                    .map_err(|e| CliError::Failed(format!("cannot read the prompt: {e}")))?;
                p
            } else {
                prompt
            };
            let body = json!({
                "repo": repo, "title": title, "prompt": prompt, "model": model,
                "priority": priority, "open_issue": open_issue,
            });
            let t: api::Task = c.post("/api/tasks", Some(body)).await?;
            if json {
                return print_json(&t);
            }
            print_task(&t);
            Ok(())
        }
        Command::Edit {
            id,
            prompt,
            model,
            agent,
            priority,
        } => {
            let prompt = match prompt.as_deref() {
                Some("-") => {
                    let mut p = String::new();
                    std::io::stdin()
                        .read_to_string(&mut p)
                        .map_err(|e| CliError::Failed(format!("cannot read the prompt: {e}")))?;
                    Some(p)
                }
                _ => prompt,
            };
            if prompt.is_none() && model.is_none() && agent.is_none() && priority.is_none() {
                return Err(CliError::Usage(
                    "nothing to edit: give --prompt, --model, --agent and/or --priority".into(),
                ));
            }
            let body =
                json!({"prompt": prompt, "model": model, "agent": agent, "priority": priority});
            action(&c, id, "edit", Some(body), json).await
        }
        Command::Cleanup { repo, now } => {
            let done: Vec<api::CleanedTask> = c
                .post("/api/cleanup", Some(json!({"repo": repo, "now": now})))
                .await?;
            if json {
                return print_json(&done);
            }
            for t in &done {
                let mut what = Vec::new();
                if let Some(n) = t.pr_closed {
                    what.push(format!("closed PR #{n}"));
                }
                if let Some(b) = &t.branch_deleted {
                    what.push(format!("deleted branch {b}"));
                }
                if let Some(e) = &t.error {
                    what.push(format!("not now: {e}"));
                }
                if what.is_empty() {
                    what.push("nothing left on GitHub".into());
                }
                println!("#{} {} [{}]: {}", t.task, t.repo, t.status, what.join(", "));
            }
            println!(
                "cleaned {} ended task(s){}",
                done.iter().filter(|t| t.error.is_none()).count(),
                match done.iter().filter(|t| t.error.is_some()).count() {
                    0 => String::new(),
                    n => format!("; {n} failed and will be tried again by the next sweep"),
                }
            );
            Ok(())
        }
        Command::Settings(cmd) => settings(&c, cmd, json).await,
        Command::Evidence(cmd) => evidence_command(&c, cmd, json).await,
        Command::CancelHeld { repo } => {
            let tasks: Vec<api::Task> = c.get(&format!("/api/tasks?live=true&repo={repo}")).await?;
            let mut done = Vec::new();
            for t in tasks.iter().filter(|t| t.hold.is_some()) {
                let t: api::Task = c.post(&format!("/api/tasks/{}/cancel", t.id), None).await?;
                done.push(t);
            }
            if json {
                return print_json(&done);
            }
            println!("canceled {} held task(s)", done.len());
            Ok(())
        }
        Command::Pause => {
            let s: api::Settings = c.post("/api/pause", None).await?;
            print_settings(&s, json)
        }
        Command::Resume => {
            let s: api::Settings = c.post("/api/resume", None).await?;
            print_settings(&s, json)
        }
        Command::Stats { repo } => {
            let q = repo.map(|r| format!("?repo={r}")).unwrap_or_default();
            let s: api::Stats = c.get(&format!("/api/stats{q}")).await?;
            if json {
                return print_json(&s);
            }
            println!(
                "merged {}  failed {}  canceled {}  live {}",
                s.merged, s.failed, s.canceled, s.live
            );
            let pct = |v: Option<f64>| {
                v.map(|x| format!("{:.0} %", x * 100.0))
                    .unwrap_or_else(|| "–".into())
            };
            println!(
                "success rate {}  retry rate {}",
                pct(s.success_rate),
                pct(s.retry_rate)
            );
            println!(
                "time to merge {}  cost per task {}  total cost ${:.2}",
                s.avg_seconds_to_merge
                    .map(|x| format!("{:.0} s", x))
                    .unwrap_or_else(|| "–".into()),
                s.avg_cost_microusd
                    .map(|x| format!("${:.2}", x / 1e6))
                    .unwrap_or_else(|| "–".into()),
                s.total_cost_microusd as f64 / 1e6
            );
            let usd = |micro: Option<f64>| {
                micro
                    .map(|x| format!("${:.2}", x / 1e6))
                    .unwrap_or_else(|| "–".into())
            };
            println!("cost per merged PR {}", usd(s.cost_per_merged_microusd));
            for m in &s.by_model {
                println!(
                    "  {:<24} ${:>9.2}  per merged PR {}",
                    m.model,
                    m.cost_microusd as f64 / 1e6,
                    usd(m.per_merged_microusd)
                );
            }
            let b = &s.budget_today;
            println!(
                "today: spent ${:.2}, ${:.2} granted to running tasks, daily budget {}",
                b.spent_microusd as f64 / 1e6,
                b.granted_microusd as f64 / 1e6,
                b.budget_microusd
                    .map(|x| format!("${:.2}", x as f64 / 1e6))
                    .unwrap_or_else(|| "none".into())
            );
            Ok(())
        }
        Command::Plan(p) => plan(&c, p, json).await,
        Command::Repo(r) => repo(&c, r, json).await,
        Command::Runner(r) => runner(&c, r, json).await,
    }
}

fn print_settings(s: &api::Settings, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(s);
    }
    println!("dispatch {}", if s.paused { "paused" } else { "running" });
    println!("approval mode {}", s.approval_mode);
    Ok(())
}

async fn settings(c: &Client, cmd: SettingsCommand, json: bool) -> Result<(), CliError> {
    let s: api::Settings = match cmd {
        SettingsCommand::Get => c.get("/api/settings").await?,
        SettingsCommand::Set { key, value } => {
            let body = match key.as_str() {
                "approval-mode" | "approval_mode" => json!({"approval_mode": value}),
                "paused" => match value.as_str() {
                    "true" | "yes" | "on" => json!({"paused": true}),
                    "false" | "no" | "off" => json!({"paused": false}),
                    other => {
                        return Err(CliError::Usage(format!(
                            "`paused` takes true or false, not `{other}`"
                        )));
                    }
                },
                other => {
                    return Err(CliError::Usage(format!(
                        "unknown setting `{other}`; use approval-mode or paused"
                    )));
                }
            };
            c.patch("/api/settings", body).await?
        }
    };
    print_settings(&s, json)
}

/// `status` with no id: live tasks and the 10 most recent ended ones, counts by status.
async fn overview(c: &Client, json: bool) -> Result<(), CliError> {
    let live: Vec<api::Task> = c.get("/api/tasks?live=true").await?;
    let mut ended = Vec::new();
    for st in ["merged", "failed", "canceled"] {
        let v: Vec<api::Task> = c.get(&format!("/api/tasks?status={st}&limit=10")).await?;
        ended.extend(v);
    }
    ended.sort_by(|a, b| b.finished_at.cmp(&a.finished_at).then(b.id.cmp(&a.id)));
    ended.truncate(10);
    let stats: api::Stats = c.get("/api/stats").await?;
    let mut counts = std::collections::BTreeMap::<String, i64>::new();
    for t in &live {
        *counts.entry(t.status.clone()).or_default() += 1;
    }
    counts.insert("merged".into(), stats.merged);
    counts.insert("failed".into(), stats.failed);
    counts.insert("canceled".into(), stats.canceled);
    if json {
        return print_json(&json!({"counts": counts, "live": live, "recent": ended}));
    }
    println!(
        "{}",
        counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!("live ({}):", live.len());
    for t in &live {
        println!("{}", fleet_line(t));
    }
    println!("recently ended ({}):", ended.len());
    for t in &ended {
        println!(
            "{:>6}  {:<9} {:<22} {}  {}",
            t.id,
            t.status,
            t.repo,
            t.finished_at
                .map(|f| f.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default(),
            t.title.chars().take(60).collect::<String>()
        );
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> Result<String, CliError> {
    let mut s = String::new();
    if !from_stdin && std::io::stdin().is_terminal() {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
        std::io::stdin()
            .read_line(&mut s)
            .map_err(|e| CliError::Failed(e.to_string()))?;
    } else {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Failed(e.to_string()))?;
    }
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| CliError::Failed(e.to_string()))?
    );
    Ok(())
}

fn print_task(t: &api::Task) {
    println!(
        "#{} {} [{}{}] {} — {}",
        t.id,
        t.repo,
        t.status,
        t.hold
            .as_ref()
            .map(|h| format!(", held: {h}"))
            .unwrap_or_default(),
        t.model,
        t.title
    );
    if let Some(u) = &t.pr_url {
        println!("  PR {u}");
    }
    if let Some(e) = &t.error {
        println!("  error: {e}");
    }
}

fn fleet_line(t: &api::Task) -> String {
    let age = (chrono_now() - t.created_at.timestamp()).max(0);
    format!(
        "{:>6}  {:<14} {:<22} {:<7} {:>6}s  ${:<6.2} {}",
        t.id,
        match &t.hold {
            Some(h) => format!("{} ({h})", t.status),
            None => t.status.clone(),
        },
        t.repo,
        t.model,
        age,
        t.cost_microusd as f64 / 1e6,
        t.title.chars().take(60).collect::<String>()
    )
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn fleet(c: &Client, json: bool, watch: bool) -> Result<(), CliError> {
    let tasks: Vec<api::Task> = c.get("/api/tasks?live=true").await?;
    if json && !watch {
        return print_json(&tasks);
    }
    if !json {
        let paused: api::Settings = c.get("/api/settings").await?;
        if paused.paused {
            println!("DISPATCH PAUSED");
        }
        println!(
            "{:>6}  {:<14} {:<22} {:<7} {:>7}  {:<7} title",
            "id", "status", "repo", "model", "age", "cost"
        );
        for t in &tasks {
            println!("{}", fleet_line(t));
        }
    }
    if watch {
        c.watch(|t: api::Task| {
            if json {
                println!("{}", serde_json::to_string(&t).unwrap_or_default());
            } else {
                println!("{}", fleet_line(&t));
            }
        })
        .await?;
    }
    Ok(())
}

async fn action(
    c: &Client,
    id: i64,
    what: &str,
    body: Option<Value>,
    json: bool,
) -> Result<(), CliError> {
    let t: api::Task = c.post(&format!("/api/tasks/{id}/{what}"), body).await?;
    if json {
        return print_json(&t);
    }
    print_task(&t);
    Ok(())
}

async fn find_repo(c: &Client, name: &str) -> Result<api::Repo, CliError> {
    let repos: Vec<api::Repo> = c.get("/api/repos").await?;
    repos.into_iter().find(|r| r.name == name).ok_or_else(|| {
        CliError::NotFound(format!(
            "repository {name} is not registered; add it with `backporcher repo add {name}`"
        ))
    })
}

async fn plan(c: &Client, cmd: PlanCommand, json: bool) -> Result<(), CliError> {
    let (id, body) = match cmd {
        PlanCommand::Show { id } => {
            let p: api::TaskPlan = c.get(&format!("/api/tasks/{id}/plan")).await?;
            if json {
                return print_json(&p);
            }
            print_plan(&p);
            return Ok(());
        }
        PlanCommand::Approve { id } => (id, json!({"action": "approve"})),
        PlanCommand::Edit { id, file } => {
            let text = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .map_err(|e| CliError::Failed(format!("cannot read the plan: {e}")))?;
                t
            } else {
                std::fs::read_to_string(&file).map_err(|e| {
                    CliError::Failed(format!("cannot read the plan from {}: {e}", file.display()))
                })?
            };
            (id, json!({"action": "edit", "text": text}))
        }
        PlanCommand::Reject { id, reason } => (id, json!({"action": "reject", "reason": reason})),
    };
    let p: api::TaskPlan = c.post(&format!("/api/tasks/{id}/plan"), Some(body)).await?;
    if json {
        return print_json(&p);
    }
    println!("task {id}: plan {}", p.state);
    Ok(())
}

/// A plan as text.
fn print_plan(p: &api::TaskPlan) {
    println!(
        "task {} plan (attempt {}): {}{}",
        p.task,
        p.attempt,
        p.state,
        if p.edited { ", edited" } else { "" }
    );
    if let Some(b) = p.blast_radius {
        println!("predicted blast radius: {b} files");
    }
    if !p.discarded.is_empty() {
        println!(
            "the plan run changed (discarded): {}",
            p.discarded.join(", ")
        );
    }
    match (&p.decided_by, &p.decided_at) {
        (Some(by), Some(at)) => println!(
            "decided by {by} at {at}{}",
            p.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
        _ => println!("undecided; denied at {}", p.due_at),
    }
    println!("\n{}", p.text);
}

async fn repo(c: &Client, cmd: RepoCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        RepoCommand::PlanGate {
            name,
            state,
            auto_blast,
            timeout,
        } => {
            let on = match state.as_str() {
                "on" => true,
                "off" => false,
                other => {
                    return Err(CliError::Usage(format!(
                        "plan gate `{other}`: say on or off"
                    )));
                }
            };
            let r = find_repo(c, &name).await?;
            let r: api::Repo = c
                .patch(
                    &format!("/api/repos/{}", r.id),
                    json!({"plan_gate": on, "plan_auto_blast": auto_blast, "plan_timeout_secs": timeout}),
                )
                .await?;
            if json {
                return print_json(&r);
            }
            println!(
                "{}: plan gate {}, auto-approve {}, timeout {} s",
                r.name,
                if r.settings.plan_gate == Some(true) {
                    "on"
                } else {
                    "off"
                },
                match r.settings.plan_auto_blast {
                    Some(n) if n >= 0 => format!("at most {n} files"),
                    _ => "never".into(),
                },
                r.settings.plan_timeout_secs.unwrap_or_default()
            );
            Ok(())
        }
        RepoCommand::Add {
            name,
            branch,
            clone_url,
        } => {
            let r: api::Repo = c
                .post(
                    "/api/repos",
                    Some(json!({"name": name, "default_branch": branch, "clone_url": clone_url})),
                )
                .await?;
            if json {
                return print_json(&r);
            }
            println!("added {} (id {})", r.name, r.id);
            Ok(())
        }
        RepoCommand::List => {
            let repos: Vec<api::Repo> = c.get("/api/repos").await?;
            if json {
                return print_json(&repos);
            }
            for r in repos {
                println!(
                    "{:>4}  {:<30} {:<8} verify: {}  approval: {}",
                    r.id,
                    r.name,
                    r.default_branch,
                    r.settings
                        .verify_command
                        .clone()
                        .unwrap_or_else(|| "–".into()),
                    r.settings
                        .approval_mode
                        .clone()
                        .unwrap_or_else(|| "global".into())
                );
            }
            Ok(())
        }
        RepoCommand::Verify { name, command } => {
            let r = find_repo(c, &name).await?;
            let r: api::Repo = c
                .patch(
                    &format!("/api/repos/{}", r.id),
                    json!({"verify_command": command.join(" ")}),
                )
                .await?;
            if json {
                return print_json(&r);
            }
            println!(
                "{}: verify {}",
                r.name,
                r.settings
                    .verify_command
                    .map(|v| format!("`{v}`"))
                    .unwrap_or_else(|| "cleared".into())
            );
            Ok(())
        }
        RepoCommand::Environment { name } => {
            let r = find_repo(c, &name).await?;
            let e: api::RepoEnvironment =
                c.get(&format!("/api/repos/{}/environment", r.id)).await?;
            if json {
                return print_json(&e);
            }
            print_environment(&e);
            Ok(())
        }
        RepoCommand::Learnings { name } => {
            let r = find_repo(c, &name).await?;
            let l: Vec<api::Learning> = c.get(&format!("/api/repos/{}/learnings", r.id)).await?;
            if json {
                return print_json(&l);
            }
            for x in l {
                println!(
                    "{} {}",
                    if x.outcome == "merged" { "+" } else { "!" },
                    x.summary
                );
            }
            Ok(())
        }
    }
}

/// The environment view as text: the settings, then each of the repository's files, then what
/// the latest task used and why.
fn print_environment(e: &api::RepoEnvironment) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "—".to_owned()
        } else {
            v.join("; ")
        }
    };
    println!("{}", e.repo);
    println!("  settings (win over the repository's files):");
    println!(
        "    image   {}",
        e.settings
            .image
            .as_deref()
            .unwrap_or("— (the files decide)")
    );
    println!("    setup   {}", list(&e.settings.setup));
    println!(
        "    verify  {}",
        e.settings.verify_command.as_deref().unwrap_or("—")
    );
    let Some(seen) = &e.seen else {
        println!("  no task has reported the repository's files yet");
        return;
    };
    let rep = &seen.report;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("—").to_owned();
    let strings = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let commit = text(&rep["commit"]);
    println!(
        "  the default branch at {} (task #{}, {}):",
        &commit[..12.min(commit.len())],
        seen.task,
        seen.at.format("%Y-%m-%d %H:%M")
    );
    for f in rep["files"].as_array().into_iter().flatten() {
        println!("    {}", text(&f["path"]));
        println!("      image   {}", text(&f["image"]));
        println!("      setup   {}", list(&strings(&f["setup"])));
        println!("      verify  {}", text(&f["verify"]));
        println!("      protected  {}", list(&strings(&f["protected_paths"])));
    }
    println!("  used: {}", text(&rep["source"]));
    println!(
        "    image   {}{}",
        rep["image"]
            .as_str()
            .unwrap_or("the runner's default image"),
        rep["snapshot"]
            .as_str()
            .map(|s| format!(" → {s} (setup {})", text(&rep["setup"])))
            .unwrap_or_default()
    );
    if let Some(v) = rep["verify"].as_str() {
        println!("    verify  {v} (from {})", text(&rep["verify_from"]));
    }
    for n in strings(&rep["notes"]) {
        println!("    note: {n}");
    }
    if let Some(err) = rep["error"].as_str() {
        println!("    error: {err}");
    }
}

async fn runner(c: &Client, cmd: RunnerCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        RunnerCommand::List => {
            let rs: Vec<api::Runner> = c.get("/api/runners").await?;
            if json {
                return print_json(&rs);
            }
            for r in rs {
                println!(
                    "{:>4}  {:<24} {:<9} {}/{} leases  labels: {}",
                    r.id,
                    r.name,
                    r.state,
                    r.leases,
                    r.capacity,
                    r.labels.join(",")
                );
            }
            Ok(())
        }
        RunnerCommand::Token { labels } => {
            let t: api::JoinTicket = c
                .post("/api/runners/tokens", Some(json!({"labels": labels})))
                .await?;
            println!("{}", t.ticket);
            Ok(())
        }
        RunnerCommand::Drain { id } => {
            let r: api::Runner = c.post(&format!("/api/runners/{id}/drain"), None).await?;
            if json {
                return print_json(&r);
            }
            println!("runner {} is {}", r.name, r.state);
            Ok(())
        }
    }
}

async fn evidence_command(c: &Client, cmd: EvidenceCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        EvidenceCommand::Show { task, attempt } => {
            let env = evidence::fetch(c, task, attempt).await?;
            if json {
                return print_json(&env);
            }
            let record: Value = serde_json::from_str(&env.record)
                .map_err(|e| CliError::Failed(format!("the record is not JSON: {e}")))?;
            println!(
                "evidence of task {} attempt {} ({}), head {}, signed by key {}",
                record["task"],
                record["attempt"],
                record["repo"].as_str().unwrap_or("?"),
                record["head"].as_str().unwrap_or("?"),
                env.key_id
            );
            let verify = |v: &Value| {
                format!(
                    "{}{}",
                    v["status"].as_str().unwrap_or("not_reported"),
                    v["exit_code"]
                        .as_i64()
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default()
                )
            };
            println!("  verify before: {}", verify(&record["verify"]["before"]));
            println!("  verify after:  {}", verify(&record["verify"]["after"]));
            for t in record["tests"]["changed"].as_array().into_iter().flatten() {
                println!(
                    "  test {} {}: {}",
                    t["path"].as_str().unwrap_or("?"),
                    t["name"].as_str().unwrap_or("?"),
                    t["result"].as_str().unwrap_or("unknown")
                );
            }
            match record["coverage"]["fraction"].as_f64() {
                Some(f) => println!("  blast-radius coverage: {:.0} %", f * 100.0),
                None => println!("  blast-radius coverage: not computed"),
            }
            for cmd in record["commands"].as_array().into_iter().flatten() {
                println!(
                    "  ran {} (round {}): {} exit {} in {} ms",
                    cmd["step"].as_str().unwrap_or("?"),
                    cmd["round"],
                    cmd["ended"].as_str().unwrap_or("?"),
                    cmd["exit_code"],
                    cmd["duration_ms"]
                );
            }
            println!(
                "  model calls: {} ledger rows, USD {:.4}",
                record["model_calls"]["ledger"]
                    .as_array()
                    .map_or(0, Vec::len),
                record["model_calls"]["total_cost_microusd"]
                    .as_i64()
                    .unwrap_or(0) as f64
                    / 1e6
            );
            println!(
                "  transcript: {} steps, `backporcher evidence trajectory {task} --attempt {}`",
                record["trajectory"]["steps"], record["attempt"]
            );
            Ok(())
        }
        EvidenceCommand::Verify {
            task,
            attempt,
            file,
            key,
        } => {
            let args = evidence::VerifyArgs {
                task,
                attempt,
                file,
                key,
            };
            let line = evidence::verify(Some(c), &args).await?;
            if json {
                return print_json(&json!({"ok": true, "message": line}));
            }
            println!("{line}");
            Ok(())
        }
        EvidenceCommand::Trajectory { task, attempt, out } => {
            let text = c
                .get_text(&format!("/api/tasks/{task}/attempts/{attempt}/trajectory"))
                .await?;
            match out {
                Some(f) => std::fs::write(&f, text)
                    .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", f.display()))),
                None => {
                    println!("{text}");
                    Ok(())
                }
            }
        }
    }
}

//! A private PostgreSQL server started from the binaries installed on the machine.
//!
//! Two users share this crate:
//! - the controller's embedded default: with no `DATABASE_URL`, it runs its own durable server under
//!   its data directory ([`Server::start`] with [`ServerConfig::durable`]);
//! - the test harness ([`testing`]): one throw-away server per test binary, a migrated template
//!   database, and a fresh copy of it for every test.
//!
//! `initdb` refuses to run as root, so when this process is root the server runs as an
//! unprivileged OS user (`postgres` when it exists, otherwise `nobody`). The server is a child of a
//! dedicated thread that lives exactly as long as the server, and it is asked to shut down (fast
//! mode) when this process dies, so a crashed test binary or controller leaves no server behind.
//!
//! This crate does nothing else: it knows no schema and runs no migrations of its own.
#![deny(missing_docs)]

mod sys;
pub mod testing;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::sync::oneshot;

/// What can go wrong while preparing or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL binaries found (looked in $PG_BIN, /usr/lib/postgresql/*/bin and PATH); install postgresql or set PG_BIN to the directory holding initdb and postgres"
    )]
    BinariesNotFound,
    /// The process is root and no unprivileged user exists to run the server.
    #[error(
        "running as root and neither a `postgres` nor a `nobody` user exists to run the server; create one or set DATABASE_URL"
    )]
    NoServiceUser,
    /// A directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed for {data_dir}: {output}")]
    InitDb {
        /// The cluster directory.
        data_dir: PathBuf,
        /// What initdb printed.
        output: String,
    },
    /// Another server already runs on this data directory.
    #[error(
        "a PostgreSQL server (pid {pid}) already runs on {data_dir}; stop it (pg_ctl -D {data_dir} stop) or point DATABASE_URL at it"
    )]
    AlreadyRunning {
        /// The cluster directory.
        data_dir: PathBuf,
        /// The running postmaster.
        pid: u32,
    },
    /// The server exited or never became ready.
    #[error("PostgreSQL did not start: {reason}; server log {log} ends with:\n{tail}")]
    Start {
        /// Why we gave up.
        reason: String,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// A SQL statement of the harness failed.
    #[error("database setup failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// Running migrations on the template failed.
    #[error("migrating the template database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The cluster directory (`PGDATA`); created and initialised when empty.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Directory holding `initdb` and `postgres`; `None` searches the usual places.
    pub bin_dir: Option<PathBuf>,
    /// `true` keeps fsync and full-page writes on (real data); `false` trades durability for speed (tests).
    pub durable: bool,
    /// Password of the `postgres` superuser; `None` means trust authentication on loopback.
    pub password: Option<String>,
}

/// A running server. Dropping it asks the server to shut down without waiting; prefer [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    pid: u32,
    port: u16,
    data_dir: PathBuf,
    password: Option<String>,
    exited: Option<oneshot::Receiver<std::io::Result<ExitStatus>>>,
}

impl Server {
    /// Initialises the cluster when needed, starts the server and waits until it accepts connections.
    pub async fn start(config: &ServerConfig) -> Result<Server, Error> {
        let bin = match &config.bin_dir {
            Some(b) => b.clone(),
            None => find_bin_dir().ok_or(Error::BinariesNotFound)?,
        };
        let user = sys::service_user()?;
        prepare_dir(&config.data_dir, user.as_ref())?;
        if !config.data_dir.join("PG_VERSION").exists() {
            init_cluster(&bin, config, user.as_ref()).await?;
        }
        if let Some(pid) = running_postmaster(&config.data_dir) {
            return Err(Error::AlreadyRunning {
                data_dir: config.data_dir.clone(),
                pid,
            });
        }

        let mut last_error = None;
        // A port picked as free can be taken before the server binds it; try a few.
        for _ in 0..5 {
            let port = match config.port {
                Some(p) => p,
                None => free_port().map_err(io_err(&config.data_dir))?,
            };
            match spawn_and_wait(&bin, config, user.as_ref(), port).await {
                Ok(server) => return Ok(server),
                Err(e) if config.port.is_none() && e.port_in_use() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(Error::BinariesNotFound))
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        match &self.password {
            Some(p) => format!("postgres://postgres:{p}@127.0.0.1:{}/{database}", self.port),
            None => format!("postgres://postgres@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> Result<(), Error> {
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            let sql = format!("CREATE DATABASE {}", quote_ident(database));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Shuts the server down (fast mode: open transactions are rolled back) and waits for it to exit.
    pub async fn stop(mut self) -> Result<(), Error> {
        sys::signal_fast_shutdown(self.pid);
        if let Some(rx) = self.exited.take() {
            match tokio::time::timeout(Duration::from_secs(60), rx).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        pid = self.pid,
                        "postgres did not stop within 60 s; killing it"
                    );
                    sys::signal_kill(self.pid);
                }
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_some() {
            sys::signal_fast_shutdown(self.pid);
        }
    }
}

impl Error {
    fn port_in_use(&self) -> bool {
        matches!(self, Error::Start { tail, .. } if tail.contains("Address already in use") || tail.contains("could not bind"))
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return has_server(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| has_server(p))
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_server(d)))
}

fn prepare_dir(dir: &Path, user: Option<&sys::User>) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).map_err(io_err(dir))?;
        // The service user must be able to reach the directory.
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(ancestor) else {
                continue;
            };
            if meta.mode() & 0o001 == 0 && meta.uid() != u.uid {
                return Err(Error::Io {
                    path: ancestor.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "user {} cannot traverse this directory; choose a data dir outside it or chmod o+x it",
                            u.name
                        ),
                    ),
                });
            }
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    Ok(())
}

async fn init_cluster(
    bin: &Path,
    config: &ServerConfig,
    user: Option<&sys::User>,
) -> Result<(), Error> {
    let dir = &config.data_dir;
    let mut cmd = xcmd::Cmd::new(bin.join("initdb"), dir)
        .arg("-D")
        .arg(dir)
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C"]);
    // Outside the data directory: initdb wants that one empty.
    let pwfile = std::env::temp_dir().join(format!("pgembed-pw-{}", uuid::Uuid::new_v4()));
    match &config.password {
        Some(p) => {
            fs::write(&pwfile, p).map_err(io_err(&pwfile))?;
            fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))
                .map_err(io_err(&pwfile))?;
            if let Some(u) = user {
                std::os::unix::fs::chown(&pwfile, Some(u.uid), Some(u.gid))
                    .map_err(io_err(&pwfile))?;
            }
            cmd = cmd
                .args(["-A", "scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()));
        }
        None => cmd = cmd.args(["-A", "trust"]),
    }
    if !config.durable {
        cmd = cmd.arg("--no-sync");
    }
    let mut std_cmd = cmd.to_std();
    if let Some(u) = user {
        sys::run_as(&mut std_cmd, u);
    }
    let out = tokio::task::spawn_blocking(move || std_cmd.output())
        .await
        .expect("initdb thread")
        .map_err(io_err(dir))?;
    let _ = fs::remove_file(&pwfile);
    if !out.status.success() {
        return Err(Error::InitDb {
            data_dir: dir.clone(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    tracing::info!(data_dir = %dir.display(), "initialised PostgreSQL cluster");
    Ok(())
}

fn running_postmaster(dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("postgres")
        .then_some(pid)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn spawn_and_wait(
    bin: &Path,
    config: &ServerConfig,
    user: Option<&sys::User>,
    port: u16,
) -> Result<Server, Error> {
    let dir = config.data_dir.clone();
    let log_path = dir.join("postgres.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = xcmd::Cmd::new(bin.join("postgres"), &dir)
        .arg("-D")
        .arg(&dir)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        .args(["-c", "max_connections=300"])
        .args(["-c", "shared_buffers=128MB"]);
    if !config.durable {
        for opt in [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            cmd = cmd.args(["-c", opt]);
        }
    }
    let mut std_cmd = cmd.to_std();
    std_cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_err(&log_path))?)
        .stderr(log);
    if let Some(u) = user {
        sys::run_as(&mut std_cmd, u);
    }
    sys::die_with_parent(&mut std_cmd);

    let (pid_tx, pid_rx) = oneshot::channel();
    let (exit_tx, mut exit_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("postmaster".into())
        .spawn(move || match std_cmd.spawn() {
            Ok(mut child) => {
                let _ = pid_tx.send(Ok(child.id()));
                let _ = exit_tx.send(child.wait());
            }
            Err(e) => {
                let _ = pid_tx.send(Err(e));
            }
        })
        .map_err(io_err(&dir))?;
    let pid = pid_rx
        .await
        .expect("postmaster thread reports")
        .map_err(io_err(&dir))?;

    let mut server = Server {
        pid,
        port,
        data_dir: dir.clone(),
        password: config.password.clone(),
        exited: None,
    };
    let url = server.url("postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    let fail = |reason: String| Error::Start {
        reason,
        tail: log_tail(&log_path, log_start),
        log: log_path.clone(),
    };
    loop {
        if let Ok(status) = exit_rx.try_recv() {
            return Err(fail(format!("the server exited ({status:?})")));
        }
        match sqlx::PgConnection::connect(&url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                break;
            }
            Err(e) if Instant::now() > deadline => {
                sys::signal_kill(pid);
                return Err(fail(format!("not ready after 60 s ({e})")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    tracing::info!(pid, port, data_dir = %dir.display(), "PostgreSQL is ready");
    server.exited = Some(exit_rx);
    Ok(server)
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

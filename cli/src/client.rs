//! The CLI's side of the REST API: the stored configuration (controller URL and API token in a
//! 0600 TOML file), requests with the token, and errors mapped to exit codes.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where and as whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Controller URL.
    pub url: String,
    /// API token.
    pub token: String,
}

/// What went wrong, by exit code.
#[derive(Debug)]
pub enum CliError {
    /// 1.
    Failed(String),
    /// 2: the command line asks for nothing or something impossible.
    Usage(String),
    /// 3.
    NotFound(String),
    /// 4.
    NotAllowed(String),
    /// 5.
    Conflict(String),
    /// 6.
    Unreachable(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::NotAllowed(_) => 4,
            CliError::Conflict(_) => 5,
            CliError::Unreachable(_) => 6,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Failed(m)
            | CliError::Usage(m)
            | CliError::NotFound(m)
            | CliError::NotAllowed(m)
            | CliError::Conflict(m)
            | CliError::Unreachable(m) => f.write_str(m),
        }
    }
}

impl Config {
    /// `$XDG_CONFIG_HOME/backporcher/cli.toml`, else `~/.config/backporcher/cli.toml`.
    pub fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("backporcher").join("cli.toml")
    }

    /// Reads the file; `BACKPORCHER_URL` and `BACKPORCHER_TOKEN` override it.
    pub fn load(path: &Path) -> Result<Config, CliError> {
        let from_file = std::fs::read_to_string(path).ok().map(|text| {
            toml::from_str::<Config>(&text).map_err(|e| {
                CliError::Failed(format!("{} is not a valid CLI config: {e}", path.display()))
            })
        });
        let file = match from_file {
            Some(r) => Some(r?),
            None => None,
        };
        let url = std::env::var("BACKPORCHER_URL")
            .ok()
            .or_else(|| file.as_ref().map(|f| f.url.clone()));
        let token = std::env::var("BACKPORCHER_TOKEN")
            .ok()
            .or_else(|| file.map(|f| f.token));
        match (url, token) {
            (Some(url), Some(token)) => Ok(Config { url, token }),
            _ => Err(CliError::NotAllowed(format!(
                "not logged in: run `backporcher login --url <controller> --user <name>` (or set BACKPORCHER_URL and BACKPORCHER_TOKEN); looked in {}",
                path.display()
            ))),
        }
    }

    /// Writes the file with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let fail =
            |e: std::io::Error| CliError::Failed(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = toml::to_string(self).map_err(|e| CliError::Failed(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)
    }
}

/// A REST client with the stored token.
pub struct Client {
    http: reqwest::Client,
    config: Config,
}

fn unreachable(url: &str, e: reqwest::Error) -> CliError {
    CliError::Unreachable(format!("cannot reach the controller at {url}: {e}"))
}

async fn answer<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, CliError> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        let text = if text.is_empty() {
            "null".to_owned()
        } else {
            text
        };
        return serde_json::from_str(&text)
            .map_err(|e| CliError::Failed(format!("unexpected answer from the controller: {e}")));
    }
    let message = serde_json::from_str::<api::ErrorBody>(&text)
        .map(|b| b.message)
        .unwrap_or(text);
    Err(match status.as_u16() {
        401 | 403 => CliError::NotAllowed(message),
        404 => CliError::NotFound(message),
        409 => CliError::Conflict(message),
        _ => CliError::Failed(format!("{status}: {message}")),
    })
}

impl Client {
    /// A client for `config`.
    pub fn new(config: Config) -> Result<Client, CliError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| CliError::Failed(e.to_string()))?;
        Ok(Client { http, config })
    }

    /// Logs in with a password and mints an API token for this machine.
    pub async fn login(url: &str, user: &str, password: &str) -> Result<String, CliError> {
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{url}/api/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .map_err(|e| unreachable(url, e))?;
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let me: api::Me = answer(resp).await?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
        let resp = http
            .post(format!("{url}/api/tokens"))
            .header("cookie", cookie.unwrap_or_default())
            .header("x-csrf-token", me.csrf_token.unwrap_or_default())
            .json(&json!({"name": format!("cli@{host}")}))
            .send()
            .await
            .map_err(|e| unreachable(url, e))?;
        let token: api::Token = answer(resp).await?;
        token
            .secret
            .ok_or_else(|| CliError::Failed("the controller returned no token secret".into()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }

    /// Sends a request with the token and an optional JSON body; an unreachable controller is
    /// named.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response, CliError> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.config.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .map_err(|e| unreachable(&self.config.url, e))
    }

    /// GET.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        answer(self.send(reqwest::Method::GET, path, None).await?).await
    }

    /// GET of a text body (a PEM key, a transcript).
    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let resp = self.send(reqwest::Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return answer::<Value>(resp).await.map(|_| String::new());
        }
        resp.text()
            .await
            .map_err(|e| unreachable(&self.config.url, e))
    }

    /// POST with an optional JSON body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, CliError> {
        answer(self.send(reqwest::Method::POST, path, body).await?).await
    }

    /// PATCH.
    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, CliError> {
        answer(self.send(reqwest::Method::PATCH, path, Some(body)).await?).await
    }

    async fn sse(
        &self,
        path: &str,
        mut on: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), CliError> {
        let resp = self.send(reqwest::Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return answer::<Value>(resp).await.map(drop);
        }
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| unreachable(&self.config.url, e))?;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = if e.trim() == "task" {
                            "task"
                        } else if e.trim() == "logs" {
                            "logs"
                        } else if e.trim() == "end" {
                            "end"
                        } else {
                            "other"
                        };
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if !on(event, &data) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The whole log of a task's current attempt, page after page (the API pages by sequence).
    pub async fn all_logs(&self, id: i64) -> Result<Vec<api::LogChunk>, CliError> {
        let mut all: Vec<api::LogChunk> = Vec::new();
        loop {
            let after = all.last().map_or(-1, |c| c.seq);
            let page: Vec<api::LogChunk> = self
                .get(&format!("/api/tasks/{id}/logs?after={after}&limit=1000"))
                .await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Prints an attempt's log as it grows, until the attempt ends.
    pub async fn follow_logs(&self, id: i64) -> Result<(), CliError> {
        self.sse(&format!("/api/tasks/{id}/logs/stream"), |event, data| {
            if event == "end" {
                return false;
            }
            if event == "logs"
                && let Ok(chunks) = serde_json::from_str::<Vec<api::LogChunk>>(data)
            {
                for c in chunks {
                    print!("{}", c.text);
                }
            }
            true
        })
        .await
    }

    /// Calls `on` with every task change until the stream ends.
    pub async fn watch(&self, mut on: impl FnMut(api::Task)) -> Result<(), CliError> {
        self.sse("/api/events", |event, data| {
            if event == "task"
                && let Ok(t) = serde_json::from_str::<api::Task>(data)
            {
                on(t);
            }
            true
        })
        .await
    }
}

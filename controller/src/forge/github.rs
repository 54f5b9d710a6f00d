//! [`Forge`] on GitHub's REST API, through octocrab's HTTP client.
//!
//! Every request goes through [`GitHub::send`]: it adds the credentials, reads the rate-limit
//! headers of every answer, waits out primary (`x-ratelimit-remaining: 0` until
//! `x-ratelimit-reset`) and secondary (`retry-after`, or a minute doubling) limits in place when
//! the wait is short, and otherwise returns [`ForgeError::RateLimited`] so the caller reschedules
//! the work instead of failing the task. Server errors are retried a few times. JSON is decoded
//! into the forge's own types, reading only the fields we use.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{AUTHORIZATION, ETAG, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH};
use http::{Method, StatusCode};
use octocrab::Octocrab;
use serde_json::{Value, json};

use super::auth::{AppKey, Credentials, TokenCache};
use super::{
    Check, CheckState, Feedback, Forge, ForgeError, Issue, Listing, MergeMethod, MergeOutcome,
    NewPullRequest, PullRequest, RateReading, Result, until_reset,
};

/// How to reach GitHub.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// API base, e.g. `https://api.github.com` (or a simulator's URL).
    pub api_base: String,
    /// Credentials.
    pub credentials: Credentials,
    /// Longest rate-limit wait taken in place; longer ones are returned to the caller.
    pub max_inline_wait: Duration,
    /// Longest log tail kept from a failed job.
    pub max_log_bytes: usize,
}

impl GitHubConfig {
    /// GitHub at `api_base` with a token.
    pub fn with_token(api_base: &str, token: &str) -> Self {
        Self {
            api_base: api_base.trim_end_matches('/').to_owned(),
            credentials: Credentials::Token(token.to_owned()),
            max_inline_wait: Duration::from_secs(90),
            max_log_bytes: 64 * 1024,
        }
    }
}

/// The GitHub forge.
pub struct GitHub {
    octo: Octocrab,
    config: GitHubConfig,
    app: Option<AppKey>,
    tokens: TokenCache,
    rate: Mutex<RateReading>,
}

/// An answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self, path: &str) -> Result<Value> {
        serde_json::from_str(&self.body).map_err(|e| ForgeError::Decode {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

impl GitHub {
    /// A client for `config` (checks an App key at once).
    pub fn new(config: GitHubConfig) -> Result<Self> {
        let octo = Octocrab::builder()
            .base_uri(config.api_base.as_str())
            .map_err(|e| {
                ForgeError::Auth(format!("bad GitHub API URL `{}`: {e}", config.api_base))
            })?
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_read_timeout(Some(Duration::from_secs(60)))
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| ForgeError::Auth(format!("cannot build the GitHub client: {e}")))?;
        let app = match &config.credentials {
            Credentials::App {
                app_id,
                installation_id,
                private_key_pem,
            } => Some(AppKey::new(*app_id, *installation_id, private_key_pem)?),
            Credentials::Token(_) => None,
        };
        Ok(Self {
            octo,
            config,
            app,
            tokens: TokenCache::default(),
            rate: Mutex::new(RateReading::default()),
        })
    }

    /// The last rate-limit reading.
    pub fn rate(&self) -> RateReading {
        *self.rate.lock().expect("rate lock")
    }

    async fn token(&self) -> Result<String> {
        let Some(app) = &self.app else {
            let Credentials::Token(t) = &self.config.credentials else {
                return Err(ForgeError::Auth("no credentials".into()));
            };
            return Ok(t.clone());
        };
        if let Some(t) = self.tokens.fresh().await {
            return Ok(t);
        }
        let path = format!("/app/installations/{}/access_tokens", app.installation_id());
        let auth = format!("Bearer {}", app.jwt()?);
        let answer = self
            .send_with(Method::POST, &path, Some(&json!({})), &[], Some(&auth))
            .await?;
        let v = answer.json(&path)?;
        let token = v["token"].as_str().ok_or_else(|| ForgeError::Decode {
            path: path.clone(),
            message: "no `token` in the answer".into(),
        })?;
        let ttl = v["expires_at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| (t.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(3600));
        self.tokens.store(token, ttl).await;
        tracing::info!(
            installation = app.installation_id(),
            "minted a GitHub App installation token"
        );
        Ok(token.to_owned())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(HeaderName, String)],
    ) -> Result<Answer> {
        let auth = format!("token {}", self.token().await?);
        self.send_with(method, path, body, headers, Some(&auth))
            .await
    }

    /// The request loop: rate limits and server errors are waited out here (within limits).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(HeaderName, String)],
        auth: Option<&str>,
    ) -> Result<Answer> {
        let mut secondary_wait = Duration::from_secs(60);
        let mut server_errors = 0;
        loop {
            let answer = self.once(&method, path, body, headers, auth).await?;
            self.read_rate(&answer.headers);
            let limited = matches!(answer.status.as_u16(), 403 | 429);
            let header_num = |name: &str| {
                answer
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let wait = if !limited {
                None
            } else if let Some(secs) = header_num("retry-after") {
                Some((Duration::from_secs(secs.max(1)), "secondary"))
            } else if header_num("x-ratelimit-remaining") == Some(0) {
                Some((
                    until_reset(header_num("x-ratelimit-reset").unwrap_or(0)),
                    "primary",
                ))
            } else if answer
                .body
                .to_ascii_lowercase()
                .contains("secondary rate limit")
            {
                let w = secondary_wait;
                secondary_wait *= 2;
                Some((w, "secondary"))
            } else {
                None
            };
            if let Some((wait, kind)) = wait {
                if wait > self.config.max_inline_wait {
                    tracing::warn!(path, ?wait, kind, "GitHub rate limit; rescheduling");
                    return Err(ForgeError::RateLimited { wait, kind });
                }
                tracing::warn!(path, ?wait, kind, "GitHub rate limit; waiting");
                self.rate.lock().expect("rate lock").waits += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            if answer.status.is_server_error() && server_errors < 3 {
                server_errors += 1;
                tokio::time::sleep(Duration::from_millis(500 << server_errors)).await;
                continue;
            }
            if answer.status.is_success() || answer.status == StatusCode::NOT_MODIFIED {
                return Ok(answer);
            }
            let message = serde_json::from_str::<Value>(&answer.body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| answer.body.chars().take(200).collect());
            return Err(ForgeError::Http {
                status: answer.status.as_u16(),
                method: method.to_string(),
                path: path.to_owned(),
                message,
            });
        }
    }

    async fn once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(HeaderName, String)],
        auth: Option<&str>,
    ) -> Result<Answer> {
        let transport = |e: &dyn std::fmt::Display| ForgeError::Transport {
            base: self.config.api_base.clone(),
            message: e.to_string(),
        };
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(a) = auth {
            builder = builder.header(AUTHORIZATION, a);
        }
        for (k, v) in headers {
            builder = builder.header(k, v);
        }
        let request = self
            .octo
            .build_request(builder, body)
            .map_err(|e| transport(&e))?;
        let response = self
            .octo
            .execute(request)
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = self
            .octo
            .body_to_string(response)
            .await
            .map_err(|e| transport(&e))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn read_rate(&self, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let mut rate = self.rate.lock().expect("rate lock");
        if let Some(r) = num("x-ratelimit-remaining") {
            rate.remaining = Some(r);
        }
        if let Some(r) = num("x-ratelimit-reset") {
            rate.reset = Some(r);
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        self.send(Method::GET, path, None, &[]).await?.json(path)
    }
}

fn issue_of(v: &Value) -> Issue {
    Issue {
        number: v["number"].as_i64().unwrap_or_default(),
        title: v["title"].as_str().unwrap_or_default().to_owned(),
        body: v["body"].as_str().unwrap_or_default().to_owned(),
        author: v["user"]["login"].as_str().unwrap_or_default().to_owned(),
        labels: v["labels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["name"].as_str().or_else(|| l.as_str()))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        state: v["state"].as_str().unwrap_or("open").to_owned(),
        is_pull: v.get("pull_request").is_some_and(|p| !p.is_null()),
    }
}

/// Most pages read of a paginated list (a hundred items each).
const MAX_PAGES: u32 = 20;

fn pull_of(v: &Value) -> PullRequest {
    PullRequest {
        number: v["number"].as_i64().unwrap_or_default(),
        url: v["html_url"].as_str().unwrap_or_default().to_owned(),
        state: v["state"].as_str().unwrap_or_default().to_owned(),
        merged: v["merged"].as_bool().unwrap_or(false) || v["merged_at"].is_string(),
        head_sha: v["head"]["sha"].as_str().unwrap_or_default().to_owned(),
        head_ref: v["head"]["ref"].as_str().unwrap_or_default().to_owned(),
        base_ref: v["base"]["ref"].as_str().unwrap_or_default().to_owned(),
        body: v["body"].as_str().unwrap_or_default().to_owned(),
        mergeable: v["mergeable"].as_bool(),
    }
}

/// Percent-encodes a path segment (label names may hold spaces and slashes).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Keeps the last `max` bytes of `text` (on a character boundary), marking the cut.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {} earlier bytes omitted …]\n{}", start, &text[start..])
}

#[async_trait]
impl Forge for GitHub {
    async fn labelled_issues(
        &self,
        repo: &str,
        label: &str,
        etag: Option<&str>,
    ) -> Result<Listing> {
        let path = format!(
            "/repos/{repo}/issues?labels={}&state=open&per_page=100",
            segment(label)
        );
        let headers: Vec<(HeaderName, String)> = etag
            .map(|e| vec![(IF_NONE_MATCH, e.to_owned())])
            .unwrap_or_default();
        let answer = self.send(Method::GET, &path, None, &headers).await?;
        if answer.status == StatusCode::NOT_MODIFIED {
            return Ok(Listing::NotModified);
        }
        let etag = answer
            .headers
            .get(ETAG)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned);
        let issues = answer
            .json(&path)?
            .as_array()
            .map(|a| a.iter().map(issue_of).collect())
            .unwrap_or_default();
        Ok(Listing::Changed { issues, etag })
    }

    async fn issue(&self, repo: &str, number: i64) -> Result<Issue> {
        Ok(issue_of(
            &self
                .get_json(&format!("/repos/{repo}/issues/{number}"))
                .await?,
        ))
    }

    async fn label_actor(&self, repo: &str, number: i64, label: &str) -> Result<Option<String>> {
        // Events come oldest first, a hundred a page; the last `labeled` event for the label wins.
        let mut actor = None;
        for page in 1..=MAX_PAGES {
            let list = self
                .get_json(&format!(
                    "/repos/{repo}/issues/{number}/events?per_page=100&page={page}"
                ))
                .await?;
            let events = list.as_array().cloned().unwrap_or_default();
            for e in &events {
                if e["event"] == "labeled" && e["label"]["name"] == label {
                    actor = e["actor"]["login"].as_str().map(str::to_owned);
                }
            }
            if events.len() < 100 {
                break;
            }
        }
        Ok(actor)
    }

    async fn add_labels(&self, repo: &str, number: i64, labels: &[&str]) -> Result<()> {
        self.send(
            Method::POST,
            &format!("/repos/{repo}/issues/{number}/labels"),
            Some(&json!({ "labels": labels })),
            &[],
        )
        .await
        .map(drop)
    }

    async fn remove_label(&self, repo: &str, number: i64, label: &str) -> Result<()> {
        match self
            .send(
                Method::DELETE,
                &format!("/repos/{repo}/issues/{number}/labels/{}", segment(label)),
                None,
                &[],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn comment(&self, repo: &str, number: i64, body: &str) -> Result<()> {
        self.send(
            Method::POST,
            &format!("/repos/{repo}/issues/{number}/comments"),
            Some(&json!({ "body": body })),
            &[],
        )
        .await
        .map(drop)
    }

    async fn close_issue(&self, repo: &str, number: i64) -> Result<()> {
        self.send(
            Method::PATCH,
            &format!("/repos/{repo}/issues/{number}"),
            Some(&json!({"state": "closed", "state_reason": "completed"})),
            &[],
        )
        .await
        .map(drop)
    }

    async fn find_pull(&self, repo: &str, branch: &str) -> Result<Option<PullRequest>> {
        let owner = repo.split('/').next().unwrap_or_default();
        let path = format!(
            "/repos/{repo}/pulls?head={}&state=open",
            segment(&format!("{owner}:{branch}"))
        );
        let list = self.get_json(&path).await?;
        Ok(list
            .as_array()
            .and_then(|a| a.iter().map(pull_of).find(|p| p.head_ref == branch)))
    }

    async fn create_pull(&self, repo: &str, pr: &NewPullRequest<'_>) -> Result<PullRequest> {
        let path = format!("/repos/{repo}/pulls");
        let body = json!({"title": pr.title, "body": pr.body, "head": pr.head, "base": pr.base, "maintainer_can_modify": true});
        Ok(pull_of(
            &self
                .send(Method::POST, &path, Some(&body), &[])
                .await?
                .json(&path)?,
        ))
    }

    async fn pull(&self, repo: &str, number: i64) -> Result<PullRequest> {
        Ok(pull_of(
            &self
                .get_json(&format!("/repos/{repo}/pulls/{number}"))
                .await?,
        ))
    }

    async fn close_pull(&self, repo: &str, number: i64) -> Result<()> {
        self.send(
            Method::PATCH,
            &format!("/repos/{repo}/pulls/{number}"),
            Some(&json!({"state": "closed"})),
            &[],
        )
        .await
        .map(drop)
    }

    async fn checks(&self, repo: &str, sha: &str) -> Result<Vec<Check>> {
        let runs = self
            .get_json(&format!(
                "/repos/{repo}/commits/{sha}/check-runs?per_page=100"
            ))
            .await?;
        let mut checks: Vec<Check> = runs["check_runs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let state = match (r["status"].as_str(), r["conclusion"].as_str()) {
                            (Some("completed"), Some("success" | "neutral" | "skipped")) => {
                                CheckState::Passed
                            }
                            (Some("completed"), _) => CheckState::Failed,
                            _ => CheckState::Pending,
                        };
                        let actions = r["app"]["slug"].as_str() == Some("github-actions");
                        Check {
                            name: r["name"].as_str().unwrap_or_default().to_owned(),
                            state,
                            job_id: if actions { r["id"].as_u64() } else { None },
                            url: r["details_url"].as_str().map(str::to_owned),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let combined = self
            .get_json(&format!("/repos/{repo}/commits/{sha}/status"))
            .await?;
        if let Some(statuses) = combined["statuses"].as_array() {
            for s in statuses {
                let state = match s["state"].as_str() {
                    Some("success") => CheckState::Passed,
                    Some("failure" | "error") => CheckState::Failed,
                    _ => CheckState::Pending,
                };
                checks.push(Check {
                    name: s["context"].as_str().unwrap_or_default().to_owned(),
                    state,
                    job_id: None,
                    url: s["target_url"].as_str().map(str::to_owned),
                });
            }
        }
        Ok(checks)
    }

    async fn job_log(&self, repo: &str, job_id: u64) -> Result<String> {
        let answer = self
            .send(
                Method::GET,
                &format!("/repos/{repo}/actions/jobs/{job_id}/logs"),
                None,
                &[],
            )
            .await?;
        Ok(tail(&answer.body, self.config.max_log_bytes))
    }

    async fn merge(
        &self,
        repo: &str,
        number: i64,
        sha: &str,
        method: MergeMethod,
    ) -> Result<MergeOutcome> {
        let path = format!("/repos/{repo}/pulls/{number}/merge");
        let body = json!({"sha": sha, "merge_method": method.as_str()});
        match self.send(Method::PUT, &path, Some(&body), &[]).await {
            Ok(answer) => {
                let v = answer.json(&path)?;
                Ok(MergeOutcome::Merged(
                    v["sha"].as_str().unwrap_or_default().to_owned(),
                ))
            }
            Err(ForgeError::Http {
                status: 409,
                message,
                ..
            }) => Ok(MergeOutcome::HeadMoved(message)),
            Err(ForgeError::Http {
                status: 405,
                message,
                ..
            }) => {
                // 405 covers both conflicts and unmet requirements; the PR tells which.
                let pr = self.pull(repo, number).await?;
                if pr.mergeable == Some(false) {
                    Ok(MergeOutcome::Conflict(message))
                } else {
                    Ok(MergeOutcome::Refused(message))
                }
            }
            Err(ForgeError::Http {
                status: 422,
                message,
                ..
            }) => Ok(MergeOutcome::Refused(message)),
            Err(e) => Err(e),
        }
    }

    async fn delete_branch(&self, repo: &str, branch: &str) -> Result<()> {
        match self
            .send(
                Method::DELETE,
                &format!("/repos/{repo}/git/refs/heads/{branch}"),
                None,
                &[],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(404 | 422)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn review_feedback(&self, repo: &str, number: i64, review_id: u64) -> Result<Feedback> {
        let review = self
            .get_json(&format!("/repos/{repo}/pulls/{number}/reviews/{review_id}"))
            .await?;
        let comments = self
            .get_json(&format!(
                "/repos/{repo}/pulls/{number}/reviews/{review_id}/comments?per_page=100"
            ))
            .await?;
        let mut texts = Vec::new();
        if let Some(body) = review["body"].as_str().filter(|b| !b.trim().is_empty()) {
            texts.push(body.to_owned());
        }
        for c in comments.as_array().into_iter().flatten() {
            let body = c["body"].as_str().unwrap_or_default();
            match (c["path"].as_str(), c["line"].as_u64()) {
                (Some(p), Some(l)) => texts.push(format!("{p}:{l}: {body}")),
                (Some(p), None) => texts.push(format!("{p}: {body}")),
                _ => texts.push(body.to_owned()),
            }
        }
        Ok(Feedback {
            author: review["user"]["login"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            kind: "review".into(),
            id: review_id,
            comments: texts,
        })
    }

    async fn git_token(&self) -> Result<String> {
        self.token().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        let t = tail("0123456789", 4);
        assert!(t.ends_with("\n6789"), "{t}");
        assert!(t.contains("6 earlier bytes"), "{t}");
        // never splits a character
        let t = tail("ééééé", 3);
        assert!(t.ends_with('é'));
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("needs review/x"), "needs%20review%2Fx");
        assert_eq!(segment("backporcher"), "backporcher");
    }
}

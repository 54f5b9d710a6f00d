//! [`Forge`] on GitHub's REST API, through octocrab's HTTP client.
//!
//! Every request goes through [`GitHub::send`]: it adds the credentials, reads the rate-limit
//! headers of every answer, waits out primary (`x-ratelimit-remaining: 0` until
//! `x-ratelimit-reset`) and secondary (`retry-after`, or a minute doubling) limits in place when
//! the wait is short, and otherwise returns [`ForgeError::RateLimited`] so the caller reschedules
//! the work instead of failing the task. Server errors are retried a few times.
//!
//! Answers are decoded into octocrab's models of GitHub's REST API (issues, pull requests,
//! combined statuses, reviews and review comments, merge results, installation tokens), and into
//! small typed structs of this module where octocrab has no model with the fields we read (check
//! runs without `status` and `app`, issue events without `label`); a field GitHub always sends
//! that is missing is a decode error naming the request, never a silent default. The simulator's
//! answers are tested against the same models.
//!
//! Lists GitHub paginates (labelled issues, issue events, check runs, commit statuses) are read
//! whole by [`GitHub::pages`], a hundred items a page, up to [`MAX_PAGES`] pages. A list cut at
//! the cap is logged and marked incomplete, and each caller treats the rest as unknown: an
//! incomplete CI read is pending, never green.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{AUTHORIZATION, ETAG, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH, LINK};
use http::{Method, StatusCode};
use octocrab::Octocrab;
use octocrab::models;
use serde::Deserialize;
use serde::de::DeserializeOwned;
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
    /// The body decoded as `T`; an error names the request and what did not fit.
    fn decode<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        serde_json::from_str(&self.body).map_err(|e| decode_error(path, e))
    }
}

fn decode_error(path: &str, e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Decode {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// A check run, with the fields octocrab's `CheckRun` lacks (`status`, `app`).
#[derive(Deserialize)]
struct CheckRunRow {
    id: u64,
    name: String,
    status: String,
    conclusion: Option<String>,
    details_url: Option<String>,
    app: Option<AppRef>,
}

/// The app that made a check run.
#[derive(Deserialize)]
struct AppRef {
    slug: Option<String>,
}

/// A page of `GET …/commits/{sha}/check-runs`.
#[derive(Deserialize)]
struct CheckRunList {
    check_runs: Vec<CheckRunRow>,
}

/// Items asked for per page: GitHub's maximum for every list read here.
const PER_PAGE: usize = 100;

/// Most pages read of one list (a thousand items); the rest of a longer list is not read.
const MAX_PAGES: usize = 10;

/// A paginated list as [`GitHub::pages`] read it.
struct Pages<T> {
    items: Vec<T>,
    /// Every page was read; `false` when [`MAX_PAGES`] cut the list.
    complete: bool,
    /// The ETag of the list when it came whole in one page (a page's ETag says nothing about the
    /// pages after it).
    etag: Option<String>,
}

/// An issue event with the label it concerns (octocrab's `IssueEvent` has no `label`).
#[derive(Deserialize)]
struct IssueEventRow {
    event: String,
    /// `null` for a deleted account.
    actor: Option<Login>,
    label: Option<Named>,
}

#[derive(Deserialize)]
struct Login {
    login: String,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// GitHub's error body.
#[derive(Deserialize)]
struct ErrorBody {
    message: String,
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
        let minted: models::InstallationToken = answer.decode(&path)?;
        let token = minted.token.as_str();
        let ttl = minted
            .expires_at
            .as_deref()
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
            let message = serde_json::from_str::<ErrorBody>(&answer.body)
                .map(|e| e.message)
                .unwrap_or_else(|_| answer.body.chars().take(200).collect());
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

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(Method::GET, path, None, &[]).await?.decode(path)
    }

    /// Reads every page of the list at `path` (a path without `per_page` and `page`):
    /// `per_page=100&page=1, 2, …` while GitHub's `Link` header names a `rel="next"` page (an
    /// answer without a `Link` header: while pages are full), at most [`MAX_PAGES`] pages; a
    /// longer list is logged and comes back incomplete. `rows` takes the items out of a page's
    /// answer. With `etag` the first page is asked for conditionally, and `None` comes back when
    /// it has not changed.
    async fn pages_if_changed<P: DeserializeOwned, T>(
        &self,
        path: &str,
        etag: Option<&str>,
        rows: impl Fn(P) -> Vec<T>,
    ) -> Result<Option<Pages<T>>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut first_etag = None;
        for page in 1..=MAX_PAGES {
            let page_path = format!("{path}{sep}per_page={PER_PAGE}&page={page}");
            let headers: Vec<(HeaderName, String)> = match etag {
                Some(e) if page == 1 => vec![(IF_NONE_MATCH, e.to_owned())],
                _ => Vec::new(),
            };
            let answer = self.send(Method::GET, &page_path, None, &headers).await?;
            if answer.status == StatusCode::NOT_MODIFIED {
                if page == 1 {
                    return Ok(None);
                }
                return Err(decode_error(
                    &page_path,
                    "304 Not Modified to a plain request",
                ));
            }
            if page == 1 {
                first_etag = answer
                    .headers
                    .get(ETAG)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .map(str::to_owned);
            }
            let got = rows(answer.decode(&page_path)?);
            let full = got.len() >= PER_PAGE;
            items.extend(got);
            if !next_page(&answer.headers, full) {
                return Ok(Some(Pages {
                    items,
                    complete: true,
                    etag: if page == 1 { first_etag } else { None },
                }));
            }
        }
        tracing::warn!(
            path,
            pages = MAX_PAGES,
            items = items.len(),
            "GitHub list longer than the page cap; the rest is not read and counts as unknown"
        );
        Ok(Some(Pages {
            items,
            complete: false,
            etag: None,
        }))
    }

    /// Every page of the list at `path`, as [`GitHub::pages_if_changed`] reads it.
    async fn pages<P: DeserializeOwned, T>(
        &self,
        path: &str,
        rows: impl Fn(P) -> Vec<T>,
    ) -> Result<Pages<T>> {
        self.pages_if_changed(path, None, rows)
            .await?
            .ok_or_else(|| decode_error(path, "304 Not Modified to a plain request"))
    }
}

/// Whether another page follows the one whose answer had `headers`: GitHub's `Link` header names
/// a `rel="next"` page; without a `Link` header, a `full` page may have one after it.
fn next_page(headers: &HeaderMap, full: bool) -> bool {
    let Some(link) = headers.get(LINK).and_then(|v| v.to_str().ok()) else {
        return full;
    };
    link.split(',')
        .any(|l| l.split(';').skip(1).any(|p| p.trim() == "rel=\"next\""))
}

fn number(path: &str, n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| decode_error(path, format!("number {n} out of range")))
}

fn issue_state(state: &models::IssueState) -> &'static str {
    match state {
        models::IssueState::Open => "open",
        _ => "closed",
    }
}

fn issue_of(path: &str, i: models::issues::Issue) -> Result<Issue> {
    Ok(Issue {
        number: number(path, i.number)?,
        title: i.title,
        body: i.body.unwrap_or_default(),
        author: i.user.login,
        labels: i.labels.into_iter().map(|l| l.name).collect(),
        state: issue_state(&i.state).to_owned(),
        is_pull: i.pull_request.is_some(),
    })
}

fn pull_of(path: &str, p: models::pulls::PullRequest) -> Result<PullRequest> {
    let missing = |field: &str| decode_error(path, format!("the pull request has no `{field}`"));
    Ok(PullRequest {
        number: number(path, p.number)?,
        url: p.html_url.ok_or_else(|| missing("html_url"))?.to_string(),
        state: issue_state(p.state.as_ref().ok_or_else(|| missing("state"))?).to_owned(),
        merged: p.merged == Some(true) || p.merged_at.is_some(),
        head_sha: p.head.sha,
        head_ref: p.head.ref_field,
        base_ref: p.base.ref_field,
        body: p.body.unwrap_or_default(),
        mergeable: p.mergeable,
    })
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
        let path = format!("/repos/{repo}/issues?labels={}&state=open", segment(label));
        let Some(pages) = self
            .pages_if_changed(&path, etag, |page: Vec<models::issues::Issue>| page)
            .await?
        else {
            return Ok(Listing::NotModified);
        };
        let issues = pages
            .items
            .into_iter()
            .map(|i| issue_of(&path, i))
            .collect::<Result<_>>()?;
        // A list longer than the cap is read again in full at the next poll (no ETag).
        Ok(Listing::Changed {
            issues,
            etag: pages.etag,
        })
    }

    async fn issue(&self, repo: &str, number: i64) -> Result<Issue> {
        let path = format!("/repos/{repo}/issues/{number}");
        issue_of(&path, self.get(&path).await?)
    }

    async fn open_issue(&self, repo: &str, title: &str, body: &str) -> Result<Issue> {
        let path = format!("/repos/{repo}/issues");
        let created: models::issues::Issue = self
            .send(
                Method::POST,
                &path,
                Some(&json!({ "title": title, "body": body })),
                &[],
            )
            .await?
            .decode(&path)?;
        issue_of(&path, created)
    }

    async fn label_actor(&self, repo: &str, number: i64, label: &str) -> Result<Option<String>> {
        // Events come oldest first; the last `labeled` event for the label wins.
        let events = self
            .pages(
                &format!("/repos/{repo}/issues/{number}/events"),
                |page: Vec<IssueEventRow>| page,
            )
            .await?;
        if !events.complete {
            // The latest events were not read: whoever labelled it last is unknown.
            tracing::warn!(
                repo,
                issue = number,
                "too many issue events to tell who added the label; nobody is assumed"
            );
            return Ok(None);
        }
        Ok(events
            .items
            .iter()
            .rev()
            .find(|e| e.event == "labeled" && e.label.as_ref().is_some_and(|l| l.name == label))
            .and_then(|e| e.actor.as_ref().map(|a| a.login.clone())))
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
        let list: Vec<models::pulls::PullRequest> = self.get(&path).await?;
        for p in list {
            let p = pull_of(&path, p)?;
            if p.head_ref == branch {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    async fn create_pull(&self, repo: &str, pr: &NewPullRequest<'_>) -> Result<PullRequest> {
        let path = format!("/repos/{repo}/pulls");
        let body = json!({"title": pr.title, "body": pr.body, "head": pr.head, "base": pr.base, "maintainer_can_modify": true});
        let created = self
            .send(Method::POST, &path, Some(&body), &[])
            .await?
            .decode(&path)?;
        pull_of(&path, created)
    }

    async fn pull(&self, repo: &str, number: i64) -> Result<PullRequest> {
        let path = format!("/repos/{repo}/pulls/{number}");
        pull_of(&path, self.get(&path).await?)
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
            .pages(
                &format!("/repos/{repo}/commits/{sha}/check-runs"),
                |page: CheckRunList| page.check_runs,
            )
            .await?;
        let mut checks: Vec<Check> = runs
            .items
            .into_iter()
            .map(|r| {
                let state = match (r.status.as_str(), r.conclusion.as_deref()) {
                    ("completed", Some("success" | "neutral" | "skipped")) => CheckState::Passed,
                    ("completed", _) => CheckState::Failed,
                    _ => CheckState::Pending,
                };
                let actions = r.app.and_then(|a| a.slug).as_deref() == Some("github-actions");
                Check {
                    name: r.name,
                    state,
                    job_id: actions.then_some(r.id),
                    url: r.details_url,
                }
            })
            .collect();
        let path = format!("/repos/{repo}/commits/{sha}/status");
        let statuses = self
            .pages(&path, |page: models::CombinedStatus| page.statuses)
            .await?;
        for s in statuses.items {
            let state = match s.state {
                models::StatusState::Success => CheckState::Passed,
                models::StatusState::Failure | models::StatusState::Error => CheckState::Failed,
                _ => CheckState::Pending,
            };
            checks.push(Check {
                name: s
                    .context
                    .ok_or_else(|| decode_error(&path, "a status has no `context`"))?,
                state,
                job_id: None,
                url: s.target_url,
            });
        }
        // What was not read is not known to pass: a cut list is pending, never green.
        for (what, complete) in [
            ("check runs", runs.complete),
            ("commit statuses", statuses.complete),
        ] {
            if !complete {
                checks.push(Check {
                    name: format!(
                        "(more than {} {what}; the rest not read)",
                        PER_PAGE * MAX_PAGES
                    ),
                    state: CheckState::Pending,
                    job_id: None,
                    url: None,
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
                let merged: models::pulls::Merge = answer.decode(&path)?;
                let sha = merged
                    .sha
                    .ok_or_else(|| decode_error(&path, "the merge answer has no `sha`"))?;
                Ok(MergeOutcome::Merged(sha))
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
        let review: models::pulls::Review = self
            .get(&format!("/repos/{repo}/pulls/{number}/reviews/{review_id}"))
            .await?;
        let comments: Vec<models::pulls::ReviewComment> = self
            .get(&format!(
                "/repos/{repo}/pulls/{number}/reviews/{review_id}/comments?per_page=100"
            ))
            .await?;
        let mut texts = Vec::new();
        if let Some(body) = review.body.filter(|b| !b.trim().is_empty()) {
            texts.push(body);
        }
        for c in comments {
            match c.line {
                Some(l) => texts.push(format!("{}:{l}: {}", c.path, c.body)),
                None => texts.push(format!("{}: {}", c.path, c.body)),
            }
        }
        Ok(Feedback {
            // A deleted account shows as GitHub's `ghost`.
            author: review.user.map_or_else(|| "ghost".to_owned(), |u| u.login),
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
    fn the_link_header_says_whether_a_page_follows() {
        let link = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(LINK, HeaderValue::from_str(v).unwrap());
            h
        };
        let next = link(
            r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#,
        );
        assert!(next_page(&next, false), "a short page with a next link");
        let last = link(
            r#"<https://api.github.com/x?page=1>; rel="first", <https://api.github.com/x?page=4>; rel="prev""#,
        );
        assert!(!next_page(&last, true), "a full last page");
        // Without a `Link` header only a full page may have another after it.
        assert!(next_page(&HeaderMap::new(), true));
        assert!(!next_page(&HeaderMap::new(), false));
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("needs review/x"), "needs%20review%2Fx");
        assert_eq!(segment("backporcher"), "backporcher");
    }
}

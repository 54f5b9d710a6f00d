//! The web pages a person opens from a link the controller shows (the `html_url` of a
//! repository, issue or pull request): plain server-rendered HTML, every piece of text escaped.
//!
//! - `/{owner}/{repo}`: the files at the default branch, and the issues and pull requests;
//! - `/{owner}/{repo}/issues/{n}`: an issue's state, author, labels, body and comments (a pull
//!   request's number redirects to its page, as on GitHub);
//! - `/{owner}/{repo}/pull/{n}`: a pull request's state (open, closed, merged), description, diff,
//!   checks, reviews and comments.
//!
//! A repository that is not public answers 404 without the token, as GitHub does.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{GitHubSim, Item, git};

/// Most files of the repository page shown with their content, and most bytes of each.
const FILES_SHOWN: usize = 30;
const FILE_BYTES: usize = 20_000;
/// Most bytes of a diff shown.
const DIFF_BYTES: usize = 200_000;

/// Escapes text for HTML element content and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… ({} more bytes not shown)",
        &text[..end],
        text.len() - end
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#1f2328}\
pre{background:#f6f8fa;padding:.75rem;overflow-x:auto;border-radius:6px}\
.label{background:#ddf4ff;border-radius:1rem;padding:0 .5rem;margin-right:.25rem}\
.state{font-weight:bold}.add{color:#116329}.del{color:#82071e}.hunk{color:#6639ba}\
.note{color:#59636e}section{border-top:1px solid #d1d9e0;margin-top:1rem}";

fn page(title: &str, repo: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head>\
         <body><p class=\"note\">GitHub simulator · <a href=\"/{}\">{}</a></p>\n{body}\n</body></html>\n",
        esc(title),
        esc(repo),
        esc(repo)
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Not Found</title><h1>404</h1><p>This is not a page of the GitHub simulator.</p>\n",
    )
        .into_response()
}

/// Whether the caller may see `full`'s pages: it exists and is public, or the token is given.
fn visible(sim: &GitHubSim, full: &str, headers: &HeaderMap) -> bool {
    let st = sim.state.lock().expect("sim lock");
    st.repos.contains_key(full) && (st.public.contains(full) || sim.authorized(headers))
}

/// `GET /{owner}/{repo}`.
pub(super) fn repository(sim: &GitHubSim, full: &str, headers: &HeaderMap) -> Response {
    if !visible(sim, full, headers) {
        return not_found();
    }
    let (branch, items) = {
        let st = sim.state.lock().expect("sim lock");
        let repo = &st.repos[full];
        (
            repo.default_branch.clone(),
            repo.items.values().rev().cloned().collect::<Vec<_>>(),
        )
    };
    let dir = sim.git_dir(full);
    let files = git(
        &dir,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            &format!("refs/heads/{branch}"),
        ],
    )
    .unwrap_or_default();
    let mut body = format!(
        "<h1>{}</h1><p>Default branch <code>{}</code> · clone <code>{}/{}.git</code></p>",
        esc(full),
        esc(&branch),
        esc(&sim.url()),
        esc(full)
    );
    body.push_str("<section><h2>Issues and pull requests</h2><ul>");
    for item in &items {
        let (kind, link) = match &item.pull {
            Some(p) if p.merged => ("merged pull request", "pull"),
            Some(_) => ("pull request", "pull"),
            None => ("issue", "issues"),
        };
        body.push_str(&format!(
            "<li><a href=\"/{}/{link}/{}\">#{} {}</a> <span class=\"note\">{kind}, {}</span></li>",
            esc(full),
            item.number,
            item.number,
            esc(&item.title),
            esc(&item.state)
        ));
    }
    if items.is_empty() {
        body.push_str("<li class=\"note\">none yet</li>");
    }
    body.push_str("</ul></section>");
    let names: Vec<&str> = files.lines().filter(|l| !l.is_empty()).collect();
    body.push_str(&format!(
        "<section><h2>Files on {} ({})</h2>",
        esc(&branch),
        names.len()
    ));
    for name in names.iter().take(FILES_SHOWN) {
        let content = git(&dir, &["show", &format!("refs/heads/{branch}:{name}")])
            .unwrap_or_else(|_| "(unreadable)".into());
        body.push_str(&format!(
            "<h3><code>{}</code></h3><pre>{}</pre>",
            esc(name),
            esc(&cut(&content, FILE_BYTES))
        ));
    }
    if names.len() > FILES_SHOWN {
        body.push_str(&format!(
            "<p class=\"note\">… and {} more files</p>",
            names.len() - FILES_SHOWN
        ));
    }
    body.push_str("</section>");
    page(full, full, &body)
}

/// `GET /{owner}/{repo}/{rest}`: an issue or a pull request page.
pub(super) fn item_page(sim: &GitHubSim, full: &str, rest: &str, headers: &HeaderMap) -> Response {
    if !visible(sim, full, headers) {
        return not_found();
    }
    let (kind, number) = match rest.split_once('/') {
        Some((k @ ("issues" | "pull"), n)) => match n.trim_end_matches('/').parse::<u64>() {
            Ok(n) => (k, n),
            Err(_) => return not_found(),
        },
        _ => return not_found(),
    };
    let Some(item) = sim.item(full, number) else {
        return not_found();
    };
    match (kind, item.pull.is_some()) {
        ("issues", false) => issue(sim, full, &item),
        ("pull", true) => pull(sim, full, &item),
        // GitHub sends each number to its kind's page.
        (_, is_pull) => {
            let to = format!(
                "/{full}/{}/{number}",
                if is_pull { "pull" } else { "issues" }
            );
            (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
        }
    }
}

fn header_of(full: &str, item: &Item, state: &str) -> String {
    let labels: String = item
        .labels
        .iter()
        .map(|l| format!("<span class=\"label\">{}</span>", esc(l)))
        .collect();
    format!(
        "<h1>{} <span class=\"note\">#{}</span></h1><p><span class=\"state\">{}</span> · opened by <b>{}</b> in <a href=\"/{}\">{}</a> {labels}</p>",
        esc(&item.title),
        item.number,
        esc(state),
        esc(&item.author),
        esc(full),
        esc(full)
    )
}

fn comments_of(item: &Item) -> String {
    let mut s = format!("<section><h2>Comments ({})</h2>", item.comments.len());
    for (_, who, text) in &item.comments {
        s.push_str(&format!(
            "<p><b>{}</b></p><pre>{}</pre>",
            esc(who),
            esc(text)
        ));
    }
    s.push_str("</section>");
    s
}

fn issue(_sim: &GitHubSim, full: &str, item: &Item) -> Response {
    let mut body = header_of(full, item, &item.state);
    body.push_str(&format!("<pre>{}</pre>", esc(&item.body)));
    body.push_str(&comments_of(item));
    page(
        &format!("{} · Issue #{}", item.title, item.number),
        full,
        &body,
    )
}

fn pull(sim: &GitHubSim, full: &str, item: &Item) -> Response {
    let p = item.pull.clone().expect("a pull request");
    let state = if p.merged {
        "merged"
    } else {
        item.state.as_str()
    };
    let dir = sim.git_dir(full);
    let live_head = sim.branch_head(full, &p.head);
    let head = live_head.clone().or(p.last_head.clone());
    let mut body = header_of(full, item, state);
    body.push_str(&format!(
        "<p>wants to merge <code>{}</code> into <code>{}</code>{}</p>",
        esc(&p.head),
        esc(&p.base),
        match (&p.merge_sha, live_head.is_some()) {
            (Some(sha), _) => format!(" · merged as <code>{}</code>", esc(sha)),
            (None, false) => " · the branch was deleted".into(),
            _ => String::new(),
        }
    ));
    body.push_str(&format!(
        "<section><h2>Description</h2><pre>{}</pre></section>",
        esc(&item.body)
    ));
    // What the pull request changes: the merge commit against its first parent once merged,
    // else the head against where it forked from the base.
    let diff = match (&p.merge_sha, &live_head) {
        (Some(sha), _) => git(&dir, &["diff", &format!("{sha}^1"), sha]).ok(),
        (None, Some(h)) => git(&dir, &["diff", &format!("refs/heads/{}...{h}", p.base)]).ok(),
        (None, None) => None,
    };
    body.push_str("<section><h2>Diff</h2>");
    match diff {
        Some(d) if !d.is_empty() => {
            body.push_str("<pre>");
            for line in cut(&d, DIFF_BYTES).lines() {
                let class = if line.starts_with("+++") || line.starts_with("---") {
                    ""
                } else if line.starts_with('+') {
                    "add"
                } else if line.starts_with('-') {
                    "del"
                } else if line.starts_with("@@") {
                    "hunk"
                } else {
                    ""
                };
                body.push_str(&format!("<span class=\"{class}\">{}</span>\n", esc(line)));
            }
            body.push_str("</pre>");
        }
        Some(_) => body.push_str("<p class=\"note\">no changes</p>"),
        None => body.push_str("<p class=\"note\">the diff is gone with the branch</p>"),
    }
    body.push_str("</section><section><h2>Checks</h2><ul>");
    match &head {
        Some(h) => {
            let (statuses, runs) = sim.commit_ci(full, h);
            for (context, state) in &statuses {
                body.push_str(&format!(
                    "<li>status <code>{}</code>: <b>{}</b></li>",
                    esc(context),
                    esc(state)
                ));
            }
            for (name, status, conclusion) in &runs {
                body.push_str(&format!(
                    "<li>check run <code>{}</code>: <b>{}</b></li>",
                    esc(name),
                    esc(conclusion.as_deref().unwrap_or(status))
                ));
            }
            if let Some(log) = sim.job_log_of(full, h) {
                body.push_str(&format!(
                    "<li>failed job's log:<pre>{}</pre></li>",
                    esc(&cut(&log, FILE_BYTES))
                ));
            }
            if statuses.is_empty() && runs.is_empty() {
                body.push_str("<li class=\"note\">no checks reported</li>");
            }
            body.push_str(&format!(
                "<li class=\"note\">of head <code>{}</code></li>",
                esc(h)
            ));
        }
        None => body.push_str("<li class=\"note\">no head commit</li>"),
    }
    body.push_str("</ul></section>");
    let reviews = sim.reviews(full, item.number);
    body.push_str(&format!("<section><h2>Reviews ({})</h2>", reviews.len()));
    for r in &reviews {
        body.push_str(&format!(
            "<p><b>{}</b> {}</p><pre>{}</pre>",
            esc(&r.user),
            esc(&r.state),
            esc(&r.body)
        ));
        for c in &r.comments {
            body.push_str(&format!("<pre>{}</pre>", esc(c)));
        }
    }
    body.push_str("</section>");
    body.push_str(&comments_of(item));
    page(
        &format!("{} · Pull Request #{}", item.title, item.number),
        full,
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}

//! The JSON the simulator answers with, shaped as GitHub's REST API documents it: every field
//! GitHub always sends is here, so a client decoding into complete models (octocrab's) works
//! against the simulator exactly as against GitHub. A test decodes every answer into those
//! models, so these shapes cannot drift from the real ones unnoticed.

use serde_json::{Value, json};

/// When everything in the simulator happened (GitHub sends ISO 8601 UTC).
pub(super) const CREATED: &str = "2026-01-01T00:00:00Z";

/// A stable number for a name (user ids, job ids): FNV-1a, shifted to stay well inside `i64`.
pub(super) fn stable_id(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h >> 12
}

/// A user (`simple-user`).
pub(super) fn user(base: &str, login: &str) -> Value {
    let api = format!("{base}/users/{login}");
    json!({
        "login": login,
        "id": stable_id(login) % 100_000_000 + 1,
        "node_id": format!("U_{login}"),
        "avatar_url": format!("{base}/avatars/{login}"),
        "gravatar_id": "",
        "url": api,
        "html_url": format!("{base}/{login}"),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": if login.ends_with("[bot]") { "Bot" } else { "User" },
        "site_admin": false,
    })
}

/// A label of repository `full`.
pub(super) fn label(base: &str, full: &str, name: &str) -> Value {
    json!({
        "id": stable_id(&format!("{full}#{name}")) % 1_000_000_000 + 1,
        "node_id": format!("LA_{}", stable_id(name)),
        "url": format!("{base}/repos/{full}/labels/{}", name.replace(' ', "%20")),
        "name": name,
        "description": null,
        "color": "ededed",
        "default": false,
    })
}

/// A repository (`repository`, the fields a pull request's head and base carry).
pub(super) fn repository(base: &str, full: &str, default_branch: &str) -> Value {
    let (owner, name) = full.split_once('/').unwrap_or((full, full));
    json!({
        "id": stable_id(full) % 1_000_000_000 + 1,
        "node_id": format!("R_{}", stable_id(full)),
        "name": name,
        "full_name": full,
        "owner": user(base, owner),
        "private": false,
        "html_url": format!("{base}/{full}"),
        "description": null,
        "fork": false,
        "url": format!("{base}/repos/{full}"),
        "clone_url": format!("{base}/{full}.git"),
        "default_branch": default_branch,
        "visibility": "public",
        "created_at": CREATED,
        "updated_at": CREATED,
        "pushed_at": CREATED,
    })
}

/// What an issue or pull request is, for [`issue`].
pub(super) struct IssueFacts<'a> {
    pub full: &'a str,
    pub number: u64,
    pub title: &'a str,
    pub body: &'a str,
    pub state: &'a str,
    pub author: &'a str,
    pub labels: &'a [String],
    pub comments: usize,
    pub is_pull: bool,
}

/// An issue (`issue`); pull requests are issues too, with a `pull_request` link.
pub(super) fn issue(base: &str, f: &IssueFacts<'_>) -> Value {
    let (full, n) = (f.full, f.number);
    let api = format!("{base}/repos/{full}/issues/{n}");
    let closed = f.state != "open";
    let mut v = json!({
        "id": n * 1000 + 7,
        "node_id": format!("I_{n}"),
        "url": api,
        "repository_url": format!("{base}/repos/{full}"),
        "labels_url": format!("{api}/labels{{/name}}"),
        "comments_url": format!("{api}/comments"),
        "events_url": format!("{api}/events"),
        "html_url": format!("{base}/{full}/issues/{n}"),
        "number": n,
        "state": f.state,
        "state_reason": if closed { json!("completed") } else { Value::Null },
        "title": f.title,
        "body": f.body,
        "user": user(base, f.author),
        "labels": f.labels.iter().map(|l| label(base, full, l)).collect::<Vec<_>>(),
        "assignee": null,
        "assignees": [],
        "milestone": null,
        "locked": false,
        "active_lock_reason": null,
        "comments": f.comments,
        "closed_at": if closed { json!(CREATED) } else { Value::Null },
        "created_at": CREATED,
        "updated_at": CREATED,
        "author_association": "MEMBER",
    });
    if f.is_pull {
        v["pull_request"] = json!({
            "url": format!("{base}/repos/{full}/pulls/{n}"),
            "html_url": format!("{base}/{full}/pull/{n}"),
            "diff_url": format!("{base}/{full}/pull/{n}.diff"),
            "patch_url": format!("{base}/{full}/pull/{n}.patch"),
        });
    }
    v
}

/// What a pull request is, for [`pull`].
pub(super) struct PullFacts<'a> {
    pub issue: IssueFacts<'a>,
    pub default_branch: &'a str,
    pub head_ref: &'a str,
    pub head_sha: &'a str,
    pub base_ref: &'a str,
    pub base_sha: &'a str,
    pub merged: bool,
    pub merge_sha: Option<&'a str>,
    pub mergeable: Option<bool>,
}

/// A pull request (`pull-request`).
pub(super) fn pull(base: &str, f: &PullFacts<'_>) -> Value {
    let (full, n) = (f.issue.full, f.issue.number);
    let api = format!("{base}/repos/{full}/pulls/{n}");
    let html = format!("{base}/{full}/pull/{n}");
    let owner = full.split('/').next().unwrap_or(full);
    let repo = repository(base, full, f.default_branch);
    let closed = f.issue.state != "open";
    let side = |r: &str, sha: &str| json!({"label": format!("{owner}:{r}"), "ref": r, "sha": sha, "user": user(base, owner), "repo": repo});
    let links = json!({
        "self": {"href": api},
        "html": {"href": html},
        "issue": {"href": format!("{base}/repos/{full}/issues/{n}")},
        "comments": {"href": format!("{base}/repos/{full}/issues/{n}/comments")},
        "review_comments": {"href": format!("{api}/comments")},
        "review_comment": {"href": format!("{base}/repos/{full}/pulls/comments{{/number}}")},
        "commits": {"href": format!("{api}/commits")},
        "statuses": {"href": format!("{base}/repos/{full}/statuses/{}", f.head_sha)},
    });
    let mut v = json!({
        "id": n * 1000 + 9,
        "node_id": format!("PR_{n}"),
        "url": api,
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": format!("{base}/repos/{full}/issues/{n}"),
        "commits_url": format!("{api}/commits"),
        "review_comments_url": format!("{api}/comments"),
        "review_comment_url": format!("{base}/repos/{full}/pulls/comments{{/number}}"),
        "comments_url": format!("{base}/repos/{full}/issues/{n}/comments"),
        "statuses_url": format!("{base}/repos/{full}/statuses/{}", f.head_sha),
        "number": n,
        "state": f.issue.state,
        "locked": false,
        "title": f.issue.title,
        "user": user(base, f.issue.author),
        "body": f.issue.body,
        "labels": f.issue.labels.iter().map(|l| label(base, full, l)).collect::<Vec<_>>(),
        "milestone": null,
        "active_lock_reason": null,
        "created_at": CREATED,
        "updated_at": CREATED,
        "closed_at": if closed { json!(CREATED) } else { Value::Null },
        "merged_at": if f.merged { json!(CREATED) } else { Value::Null },
        "merge_commit_sha": f.merge_sha,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "head": side(f.head_ref, f.head_sha),
        "base": side(f.base_ref, f.base_sha),
        "_links": links,
    });
    let rest = json!({
        "author_association": "MEMBER",
        "draft": false,
        "merged": f.merged,
        "mergeable": f.mergeable,
        "rebaseable": f.mergeable,
        "mergeable_state": match f.mergeable { Some(true) => "clean", Some(false) => "dirty", None => "unknown" },
        "merged_by": if f.merged { user(base, "backporcher-bot") } else { Value::Null },
        "comments": f.issue.comments,
        "review_comments": 0,
        "maintainer_can_modify": true,
        "commits": 1,
        "additions": 1,
        "deletions": 0,
        "changed_files": 1,
    });
    if let (Some(v), Value::Object(rest)) = (v.as_object_mut(), rest) {
        v.extend(rest);
    }
    v
}

/// A comment on an issue or pull request (`issue-comment`).
pub(super) fn issue_comment(
    base: &str,
    full: &str,
    n: u64,
    id: u64,
    login: &str,
    body: &str,
) -> Value {
    json!({
        "id": id,
        "node_id": format!("IC_{id}"),
        "url": format!("{base}/repos/{full}/issues/comments/{id}"),
        "html_url": format!("{base}/{full}/issues/{n}#issuecomment-{id}"),
        "issue_url": format!("{base}/repos/{full}/issues/{n}"),
        "body": body,
        "user": user(base, login),
        "created_at": CREATED,
        "updated_at": CREATED,
        "author_association": "MEMBER",
    })
}

/// An issue event (`issue-event`) with the label it concerns (`labeled`, `unlabeled`).
pub(super) fn issue_event(
    base: &str,
    full: &str,
    id: u64,
    event: &str,
    label_name: &str,
    actor: &str,
) -> Value {
    let mut e = json!({
        "id": id,
        "node_id": format!("LE_{id}"),
        "url": format!("{base}/repos/{full}/issues/events/{id}"),
        "actor": user(base, actor),
        "event": event,
        "commit_id": null,
        "commit_url": null,
        "created_at": CREATED,
        "performed_via_github_app": null,
    });
    // Only label events name a label.
    if event.ends_with("labeled") {
        let l = label(base, full, label_name);
        e["label"] = json!({"name": l["name"], "color": l["color"]});
    }
    e
}

/// A commit status (`status`) in a combined status.
pub(super) fn status(
    base: &str,
    full: &str,
    sha: &str,
    i: usize,
    context: &str,
    state: &str,
) -> Value {
    json!({
        "id": stable_id(sha) + i as u64,
        "node_id": format!("SC_{i}"),
        "url": format!("{base}/repos/{full}/statuses/{sha}"),
        "avatar_url": null,
        "state": state,
        "description": null,
        "target_url": format!("{base}/ci/{sha}"),
        "context": context,
        "created_at": CREATED,
        "updated_at": CREATED,
        "creator": user(base, "ci-bot"),
    })
}

/// A page of a combined status (`combined-commit-status`) of `total` statuses in all.
pub(super) fn combined_status(
    base: &str,
    full: &str,
    sha: &str,
    state: &str,
    total: usize,
    statuses: Vec<Value>,
) -> Value {
    json!({
        "state": state,
        "sha": sha,
        "total_count": total,
        "statuses": statuses,
        "repository": repository(base, full, "main"),
        "commit_url": format!("{base}/repos/{full}/commits/{sha}"),
        "url": format!("{base}/repos/{full}/commits/{sha}/status"),
    })
}

/// A check run of GitHub Actions (`check-run`).
pub(super) fn check_run(
    base: &str,
    full: &str,
    sha: &str,
    id: u64,
    name: &str,
    status: &str,
    conclusion: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "node_id": format!("CR_{id}"),
        "head_sha": sha,
        "external_id": "",
        "url": format!("{base}/repos/{full}/check-runs/{id}"),
        "html_url": format!("{base}/{full}/runs/{id}"),
        "details_url": format!("{base}/{full}/actions/runs/{id}/job/{id}"),
        "status": status,
        "conclusion": conclusion,
        "started_at": CREATED,
        "completed_at": if status == "completed" { json!(CREATED) } else { Value::Null },
        "output": {"title": null, "summary": null, "text": null, "annotations_count": 0,
                   "annotations_url": format!("{base}/repos/{full}/check-runs/{id}/annotations")},
        "name": name,
        "check_suite": {"id": id / 2},
        "app": {"id": 15368, "slug": "github-actions", "node_id": "MDM6QXBwMTUzNjg=", "name": "GitHub Actions",
                "owner": user(base, "github"), "description": "Automate your workflow", "external_url": "https://help.github.com/en/actions",
                "html_url": "https://github.com/apps/github-actions", "created_at": CREATED, "updated_at": CREATED,
                "permissions": {}, "events": []},
        "pull_requests": [],
    })
}

/// A pull request review (`pull-request-review`).
pub(super) fn review(
    base: &str,
    full: &str,
    n: u64,
    id: u64,
    login: &str,
    state: &str,
    body: &str,
) -> Value {
    let html = format!("{base}/{full}/pull/{n}#pullrequestreview-{id}");
    let pr = format!("{base}/repos/{full}/pulls/{n}");
    json!({
        "id": id,
        "node_id": format!("PRR_{id}"),
        "user": user(base, login),
        "body": body,
        "state": state.to_ascii_uppercase(),
        "html_url": html,
        "pull_request_url": pr,
        "_links": {"html": {"href": html}, "pull_request": {"href": pr}},
        "submitted_at": CREATED,
        "commit_id": "0000000000000000000000000000000000000000",
        "author_association": "MEMBER",
    })
}

/// A review comment (`review-comment`) of review `review_id` on pull request `n`, on `path` at
/// `line`.
pub(super) fn review_comment(
    base: &str,
    full: &str,
    (n, review_id): (u64, u64),
    id: u64,
    login: &str,
    (path, line): (&str, u64),
    body: &str,
) -> Value {
    let pr = format!("{base}/repos/{full}/pulls/{n}");
    let api = format!("{base}/repos/{full}/pulls/comments/{id}");
    let html = format!("{base}/{full}/pull/{n}#discussion_r{id}");
    json!({
        "url": api,
        "pull_request_review_id": review_id,
        "id": id,
        "node_id": format!("PRRC_{id}"),
        "diff_hunk": "@@ -1 +1 @@",
        "path": path,
        "position": line,
        "original_position": line,
        "commit_id": "0000000000000000000000000000000000000000",
        "original_commit_id": "0000000000000000000000000000000000000000",
        "user": user(base, login),
        "body": body,
        "created_at": CREATED,
        "updated_at": CREATED,
        "html_url": html,
        "pull_request_url": pr,
        "author_association": "MEMBER",
        "_links": {"self": {"href": api}, "html": {"href": html}, "pull_request": {"href": pr}},
        "line": line,
        "original_line": line,
        "side": "RIGHT",
    })
}

/// The answer to a merge (`pull-request-merge-result`).
pub(super) fn merge_result(sha: &str) -> Value {
    json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"})
}

/// An installation access token (`installation-token`).
pub(super) fn installation_token(token: &str, expires_at: &str) -> Value {
    json!({
        "token": token,
        "expires_at": expires_at,
        "permissions": {"contents": "write", "issues": "write", "pull_requests": "write", "checks": "read", "actions": "read"},
        "repository_selection": "selected",
    })
}

//! The OpenAPI 3.1 document of `/api`, built from one table of operations (method, path, role,
//! summary, request and response schema), so the document lists exactly the routes served —
//! the tests compare the two.

use serde_json::{Map, Value, json};

/// (method, path, least role, summary, request schema, response schema)
pub type Operation = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

/// Every operation of `/api`.
pub const OPERATIONS: &[Operation] = &[
    (
        "get",
        "/api/openapi.json",
        "none",
        "This document",
        None,
        "object",
    ),
    (
        "post",
        "/api/login",
        "none",
        "Log in with a password; sets the session cookie and returns the CSRF token",
        Some("LoginRequest"),
        "Me",
    ),
    (
        "post",
        "/api/logout",
        "viewer",
        "End the session",
        None,
        "empty",
    ),
    (
        "get",
        "/api/me",
        "viewer",
        "Who is calling (and the session's CSRF token)",
        None,
        "Me",
    ),
    (
        "get",
        "/api/tasks",
        "viewer",
        "Tasks, newest first; filters status, repo, live, limit, before",
        None,
        "Task[]",
    ),
    (
        "post",
        "/api/tasks",
        "operator",
        "Create a task from a prompt",
        Some("CreateTask"),
        "Task",
    ),
    (
        "get",
        "/api/tasks/{id}",
        "viewer",
        "A task with its timeline",
        None,
        "TaskDetail",
    ),
    (
        "get",
        "/api/tasks/{id}/logs",
        "viewer",
        "Log chunks of an attempt after a sequence number",
        None,
        "LogChunk[]",
    ),
    (
        "get",
        "/api/tasks/{id}/logs/stream",
        "viewer",
        "Follow an attempt's log (SSE: logs, end)",
        None,
        "text/event-stream",
    ),
    (
        "post",
        "/api/tasks/{id}/{action}",
        "operator",
        "approve, hold, release, cancel, reject, requeue, escalate, dispatch, edit",
        Some("ActionRequest"),
        "Task",
    ),
    (
        "get",
        "/api/events",
        "viewer",
        "Task changes as they happen (SSE: task deltas, resync)",
        None,
        "text/event-stream",
    ),
    (
        "get",
        "/api/repos",
        "viewer",
        "Repositories with their settings",
        None,
        "Repo[]",
    ),
    (
        "post",
        "/api/repos",
        "admin",
        "Register a repository",
        Some("NewRepo"),
        "Repo",
    ),
    (
        "patch",
        "/api/repos/{id}",
        "admin",
        "Change repository settings",
        Some("RepoSettings"),
        "Repo",
    ),
    (
        "get",
        "/api/repos/{id}/learnings",
        "viewer",
        "What tasks in the repository taught",
        None,
        "Learning[]",
    ),
    (
        "get",
        "/api/runners",
        "viewer",
        "Runners with their leases",
        None,
        "Runner[]",
    ),
    (
        "post",
        "/api/runners/tokens",
        "admin",
        "Mint a one-time runner join ticket",
        Some("JoinTokenRequest"),
        "JoinTicket",
    ),
    (
        "post",
        "/api/runners/{id}/{state}",
        "admin",
        "drain, disable or enable a runner",
        None,
        "Runner",
    ),
    (
        "get",
        "/api/settings",
        "viewer",
        "Global switches",
        None,
        "Settings",
    ),
    (
        "post",
        "/api/pause",
        "operator",
        "Pause dispatch",
        None,
        "Settings",
    ),
    (
        "post",
        "/api/resume",
        "operator",
        "Resume dispatch",
        None,
        "Settings",
    ),
    (
        "get",
        "/api/stats",
        "viewer",
        "Merged count, success rate, time to merge, retry rate, cost; per repository and day",
        None,
        "Stats",
    ),
    ("get", "/api/users", "admin", "Users", None, "User[]"),
    (
        "post",
        "/api/users",
        "admin",
        "Create a user",
        Some("NewUser"),
        "User",
    ),
    (
        "patch",
        "/api/users/{id}",
        "admin",
        "Change a user's role or disable them",
        Some("UserPatch"),
        "User",
    ),
    (
        "get",
        "/api/tokens",
        "viewer",
        "Your API tokens",
        None,
        "Token[]",
    ),
    (
        "post",
        "/api/tokens",
        "viewer",
        "Mint an API token (its secret is shown once)",
        Some("NewToken"),
        "Token",
    ),
    (
        "delete",
        "/api/tokens/{id}",
        "viewer",
        "Revoke a token",
        None,
        "empty",
    ),
    (
        "get",
        "/api/audit",
        "operator",
        "The audit log, newest first",
        None,
        "AuditEntry[]",
    ),
];

fn schema_ref(name: &str) -> Value {
    match name {
        "empty" => json!({}),
        "object" => json!({"type": "object"}),
        "text/event-stream" => json!({"type": "string"}),
        n if n.ends_with("[]") => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{}", &n[..n.len() - 2])}})
        }
        n => json!({"$ref": format!("#/components/schemas/{n}")}),
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for (method, path, role, summary, request, response) in OPERATIONS {
        let mut op = json!({
            "summary": summary,
            "x-role": role,
            "responses": {
                "200": {"description": "OK", "content": {
                    if *response == "text/event-stream" { "text/event-stream" } else { "application/json" }: {"schema": schema_ref(response)}
                }},
                "default": {"description": "Error: what was wrong and what to do", "content": {"application/json": {"schema": schema_ref("ErrorBody")}}}
            },
        });
        if *role != "none" {
            op["security"] = json!([{"session": [], "csrf": []}, {"token": []}]);
        }
        if let Some(r) = request {
            op["requestBody"] = json!({"content": {"application/json": {"schema": schema_ref(r)}}});
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": if p == "id" { "integer" } else { "string" }}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
        for name in [request.unwrap_or("empty"), response.trim_end_matches("[]")] {
            if name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                schemas.insert(name.to_owned(), json!({"type": "object"}));
            }
        }
    }
    schemas.insert(
        "ErrorBody".into(),
        json!({"type": "object", "required": ["error", "message"], "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Backporcher controller API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "bp_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
                "token": {"type": "http", "scheme": "bearer"},
            }
        }
    })
}

//! The OpenAPI 3.1 document of `/api`, built from the one list of operations in
//! [`super::routes`] (method, path, role, summary, request and response schema) that the router
//! is built from too.

use serde_json::{Map, Value, json};

/// One operation as the document describes it.
pub struct Operation {
    /// `get`, `post`, `patch`, `delete`.
    pub method: &'static str,
    /// Path template (`/api/tasks/{id}`).
    pub path: &'static str,
    /// Least role that may call it (`none`, `viewer`, `operator`, `admin`).
    pub role: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Request body schema, if any.
    pub request: Option<&'static str>,
    /// Response schema (`Task`, `Task[]`, `empty`, `object`, `text/event-stream`).
    pub response: &'static str,
}

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

/// The document of `ops`.
pub fn document<'a>(ops: impl IntoIterator<Item = &'a Operation>) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in ops {
        let (method, path, role, summary, request, response) = (
            &r.method,
            &r.path,
            &r.role,
            &r.summary,
            &r.request,
            &r.response,
        );
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

//! The OpenAPI 3.1 document of `/api`, built from the one list of operations in
//! [`super::routes`] (method, path, role, summary, request and response schema names, the
//! parameters of the handler's query and path types) that the router is built from too. Every
//! schema is derived from the `api` crate's wire types ([`api::schemas`], `utoipa` derives) and
//! every parameter from the handlers' query and path types (`utoipa::IntoParams`): nothing here is
//! written by hand but the envelope.

use serde_json::{Map, Value, json};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{ObjectBuilder, Required, Type};

/// The parameters of one operation (its query or path type's `IntoParams`).
pub type Params = fn() -> Vec<Parameter>;

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
    /// Request body schema (a name in [`api::schemas`]), if any.
    pub request: Option<&'static str>,
    /// Response schema: a name in [`api::schemas`], `Name[]`, `empty` (`{}`), `none` (204),
    /// `object` or `text/event-stream`.
    pub response: &'static str,
    /// Query parameters.
    pub query: Option<Params>,
    /// Path parameters; without them, each `{id}` is an int64 and any other a string.
    pub path_params: Option<Params>,
}

/// The query or path parameters of `T`.
pub fn params_of<T: utoipa::IntoParams>(at: ParameterIn) -> Vec<Parameter> {
    T::into_params(|| Some(at.clone()))
}

fn schema_ref(name: &str, known: &Map<String, Value>) -> Value {
    let named = |n: &str| {
        assert!(
            known.contains_key(n),
            "schema `{n}` is not among api::schemas(); derive ToSchema on it and list it there"
        );
        json!({"$ref": format!("#/components/schemas/{n}")})
    };
    match name {
        "empty" => json!({"type": "object", "maxProperties": 0}),
        "object" => json!({"type": "object"}),
        "text/event-stream" => json!({"type": "string"}),
        n if n.ends_with("[]") => json!({"type": "array", "items": named(&n[..n.len() - 2])}),
        n => named(n),
    }
}

fn default_path_params(path: &str) -> Vec<Parameter> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| {
            let schema = if p == "id" {
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .build()
            } else {
                ObjectBuilder::new().schema_type(Type::String).build()
            };
            ParameterBuilder::new()
                .name(p)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(schema))
                .build()
        })
        .collect()
}

/// The document of `ops`.
pub fn document<'a>(ops: impl IntoIterator<Item = &'a Operation>) -> Value {
    let schemas: Map<String, Value> = api::schemas()
        .into_iter()
        .map(|(name, schema)| {
            let v = serde_json::to_value(schema).expect("a schema serialises");
            (name, v)
        })
        .collect();
    let mut paths = Map::new();
    for r in ops {
        let ok = match r.response {
            "none" => json!({"204": {"description": "Done"}}),
            "text/event-stream" => json!({"200": {"description": "OK", "content": {
                "text/event-stream": {"schema": schema_ref(r.response, &schemas)}}}}),
            other => json!({"200": {"description": "OK", "content": {
                "application/json": {"schema": schema_ref(other, &schemas)}}}}),
        };
        let mut responses = ok;
        responses["default"] = json!({"description": "Error: what was wrong and what to do",
            "content": {"application/json": {"schema": schema_ref("ErrorBody", &schemas)}}});
        let mut op = json!({
            "operationId": operation_id(r.method, r.path),
            "summary": r.summary,
            "x-role": r.role,
            "responses": responses,
        });
        if r.role != "none" {
            op["security"] = json!([{"session": [], "csrf": []}, {"token": []}]);
        }
        if let Some(req) = r.request {
            op["requestBody"] = json!({"required": true,
                "content": {"application/json": {"schema": schema_ref(req, &schemas)}}});
        }
        let mut params = match r.path_params {
            Some(f) => f(),
            None => default_path_params(r.path),
        };
        if let Some(q) = r.query {
            params.extend(q());
        }
        if !params.is_empty() {
            op["parameters"] = serde_json::to_value(params).expect("parameters serialise");
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
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

/// `get /api/tasks/{id}/logs` → `get_tasks_id_logs`.
fn operation_id(method: &str, path: &str) -> String {
    let rest: Vec<&str> = path
        .trim_start_matches("/api/")
        .split('/')
        .map(|s| s.trim_start_matches('{').trim_end_matches('}'))
        .collect();
    format!("{method}_{}", rest.join("_")).replace(['.', '-'], "_")
}

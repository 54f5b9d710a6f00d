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
    /// `object`, or `sse:Name` (server-sent events, each event an object of that schema).
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

/// The pattern of a text with no other constraint: no NUL (PostgreSQL stores none, so the API
/// refuses them with 400 and never answers one).
const NO_NUL: &str = r"^[^\u0000]*$";

/// The pattern of a text that must not be blank: something besides whitespace (what the API
/// trims), and no NUL.
const NOT_BLANK: &str = r"^[^\u0000]*[^\u0000\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

/// Gives every string schema without an enum, format or pattern of its own the [`NO_NUL`] pattern
/// (the one rule every text shares, stated once here rather than on every field) — or
/// [`NOT_BLANK`] where its description says `not blank`, as the `api` types' fields do that the
/// API refuses blank.
fn no_nul(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let is_string = match o.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                _ => false,
            };
            let not_blank = o
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.contains("not blank"));
            if is_string && not_blank && !o.contains_key("pattern") {
                o.insert("pattern".into(), Value::String(NOT_BLANK.into()));
            }
            if is_string
                && !["enum", "format", "pattern"]
                    .iter()
                    .any(|k| o.contains_key(*k))
            {
                o.insert("pattern".into(), Value::String(NO_NUL.into()));
            }
            o.values_mut().for_each(no_nul);
        }
        Value::Array(a) => a.iter_mut().for_each(no_nul),
        _ => {}
    }
}

/// Closes the variants of a tagged enum (a `oneOf` of objects told apart by a one-value enum
/// property): the API's tagged enums refuse unknown fields (`deny_unknown_fields`, the one
/// tagged enum being [`api::PlanDecision`]), which the derived schema does not state per variant.
fn closed_variants(v: &mut Value) {
    let Some(Value::Array(members)) = v.get_mut("oneOf") else {
        return;
    };
    let tagged = members.iter().all(|m| {
        m["type"] == "object"
            && m["properties"].as_object().is_some_and(|p| {
                p.values()
                    .any(|f| f["enum"].as_array().is_some_and(|e| e.len() == 1))
            })
    });
    if tagged {
        for m in members {
            m["additionalProperties"] = Value::Bool(false);
        }
    }
}

/// The document of `ops`.
pub fn document<'a>(ops: impl IntoIterator<Item = &'a Operation>) -> Value {
    let schemas: Map<String, Value> = api::schemas()
        .into_iter()
        .map(|(name, schema)| {
            let mut v = serde_json::to_value(schema).expect("a schema serialises");
            no_nul(&mut v);
            closed_variants(&mut v);
            (name, v)
        })
        .collect();
    let mut paths = Map::new();
    for r in ops {
        let ok = match r.response {
            "none" => json!({"204": {"description": "Done"}}),
            sse if sse.starts_with("sse:") => json!({"200": {"description": "OK", "content": {
                "text/event-stream": {"schema": schema_ref(&sse[4..], &schemas)}}}}),
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
            let mut v = serde_json::to_value(params).expect("parameters serialise");
            no_nul(&mut v);
            op["parameters"] = v;
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    add_links(&mut paths, &schemas);
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

/// Links for stateful testing and clients, by one rule: what a `POST` on a collection creates
/// (an answer with an `id`) is what every operation under `collection/{id}` takes as its `id`.
fn add_links(paths: &mut Map<String, Value>, schemas: &Map<String, Value>) {
    let targets: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().into_iter().flatten().map(move |(_, op)| {
                let id = op["operationId"].as_str().unwrap_or_default();
                (path.clone(), id.to_owned())
            })
        })
        .collect();
    for (path, ops) in paths.iter_mut() {
        let Some(post) = ops.get_mut("post") else {
            continue;
        };
        let created = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .and_then(|name| schemas.get(name));
        if !created.is_some_and(|s| s["properties"]["id"].is_object()) {
            continue;
        }
        let under = format!("{path}/{{id}}");
        let mut links = Map::new();
        for (p, op_id) in &targets {
            if p == &under || p.starts_with(&format!("{under}/")) {
                links.insert(
                    op_id.clone(),
                    json!({"operationId": op_id, "parameters": {"id": "$response.body#/id"}}),
                );
            }
        }
        if !links.is_empty() {
            post["responses"]["200"]["links"] = Value::Object(links);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        super::super::routes::document()
    }

    fn enum_of(doc: &Value, name: &str) -> Vec<String> {
        doc["components"]["schemas"][name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_schema_describes_its_fields_and_closed_sets_are_enums() {
        let doc = doc();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (name, s) in schemas {
            // A tagged enum is a `oneOf` of closed objects, each with its fields described.
            let variants = s["oneOf"].as_array().is_some_and(|m| {
                m.iter()
                    .all(|m| m.get("properties").is_some() && m["additionalProperties"] == false)
            });
            assert!(
                s.get("properties").is_some() || s.get("enum").is_some() || variants,
                "{name} is a bare schema: {s}"
            );
        }
        let plan = &schemas["PlanDecision"]["oneOf"];
        assert_eq!(plan[1]["required"], json!(["text", "action"]));
        // Texts the API refuses blank say so in the document, the others refuse only NUL.
        assert_eq!(plan[1]["properties"]["text"]["pattern"], NOT_BLANK);
        assert_eq!(plan[2]["properties"]["reason"]["pattern"], NOT_BLANK);
        assert_eq!(
            schemas["CreateTask"]["properties"]["title"]["pattern"],
            NOT_BLANK
        );
        assert_eq!(
            schemas["NewToken"]["properties"]["name"]["pattern"],
            NOT_BLANK
        );
        assert_eq!(
            schemas["CreateTask"]["properties"]["repo"]["pattern"],
            NO_NUL
        );
        let task = &schemas["Task"];
        assert_eq!(
            task["properties"]["status"]["$ref"],
            "#/components/schemas/TaskStatus"
        );
        assert_eq!(task["properties"]["created_at"]["format"], "date-time");
        assert_eq!(task["properties"]["id"]["format"], "int64");
        let required: Vec<&str> = task["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"status") && !required.contains(&"pr_url"));
        // The wire enums are the controller's own sets.
        let statuses: Vec<String> = crate::store::Status::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(enum_of(&doc, "TaskStatus"), statuses);
        assert_eq!(enum_of(&doc, "Role"), ["viewer", "operator", "admin"]);
        assert!(enum_of(&doc, "RepoApprovalMode").contains(&String::new()));
    }

    #[test]
    fn every_operation_declares_its_path_parameters_and_answers() {
        let doc = doc();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                let in_path: Vec<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .collect();
                assert_eq!(declared, in_path, "{method} {path}");
                assert!(op["responses"]["default"].is_object(), "{method} {path}");
                assert!(op["operationId"].is_string(), "{method} {path}");
            }
        }
        let list = &doc["paths"]["/api/tasks"]["get"]["parameters"];
        let status = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "status")
            .unwrap();
        assert_eq!(status["in"], "query");
        // What a POST creates links to the operations under its id.
        let links = &doc["paths"]["/api/tasks"]["post"]["responses"]["200"]["links"];
        assert_eq!(
            links["get_tasks_id"]["parameters"]["id"],
            "$response.body#/id"
        );
        assert!(links["post_tasks_id_action"].is_object(), "{links}");
    }
}

//! The management API's route table: every `/api/v1` operation is registered through [`Api`],
//! which adds the axum route and records its description (method, path, parameters, request
//! body schema derived from the request type, answers) in one step. `GET /api/v1/openapi.json`
//! serves the OpenAPI 3 document built from that record, so the document cannot drift from
//! the routes: a route that is not described does not exist.

use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::AppState;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// Thing, thing type and thing group names (AWS's rule).
pub const THING_NAME: &str = "^[a-zA-Z0-9:_-]{1,128}$";
/// Certificate and CA certificate ids: the SHA-256 of the DER, hex.
pub const CERT_ID: &str = "^[0-9a-f]{64}$";
/// Policy names (AWS's rule).
pub const POLICY_NAME: &str = "^[A-Za-z0-9_+=,.@-]{1,128}$";

fn subschema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn inline_schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.root_schema_for::<T>()
}

/// A JSON request body: the schema of its request type, and whether it may be left out.
#[derive(Clone, Copy)]
struct JsonBody {
    schema: SchemaFn,
    required: bool,
}

/// What an operation answers when it succeeds.
#[derive(Clone, Copy)]
enum ReplyDoc {
    /// JSON with this status.
    Json(u16),
    /// No body.
    Empty(u16),
}

/// One operation's description, built next to its route.
#[derive(Clone)]
pub struct Op {
    method: Method,
    path: String,
    id: &'static str,
    summary: &'static str,
    tag: &'static str,
    json_body: Option<JsonBody>,
    raw_body: Option<&'static str>,
    query: Option<SchemaFn>,
    reply: ReplyDoc,
    /// Patterns of path parameters, by name.
    patterns: Vec<(&'static str, &'static str)>,
}

impl Op {
    fn new(method: Method, path: impl Into<String>, id: &'static str, summary: &'static str) -> Op {
        Op {
            method,
            path: path.into(),
            id,
            summary,
            tag: "",
            json_body: None,
            raw_body: None,
            query: None,
            reply: ReplyDoc::Json(200),
            patterns: Vec::new(),
        }
    }
    /// `GET path`: `id` is the operationId, `summary` one line for people.
    pub fn get(path: impl Into<String>, id: &'static str, summary: &'static str) -> Op {
        Op::new(Method::GET, path, id, summary)
    }
    /// `POST path`.
    pub fn post(path: impl Into<String>, id: &'static str, summary: &'static str) -> Op {
        Op::new(Method::POST, path, id, summary)
    }
    /// `PUT path`.
    pub fn put(path: impl Into<String>, id: &'static str, summary: &'static str) -> Op {
        Op::new(Method::PUT, path, id, summary)
    }
    /// `PATCH path`.
    pub fn patch(path: impl Into<String>, id: &'static str, summary: &'static str) -> Op {
        Op::new(Method::PATCH, path, id, summary)
    }
    /// `DELETE path`.
    pub fn delete(path: impl Into<String>, id: &'static str, summary: &'static str) -> Op {
        Op::new(Method::DELETE, path, id, summary)
    }
    /// A JSON body of type `T`, required.
    pub fn body<T: JsonSchema>(mut self) -> Op {
        self.json_body = Some(JsonBody {
            schema: subschema::<T>,
            required: true,
        });
        self
    }
    /// A JSON body of type `T` that may be left out (every field has a default).
    pub fn optional_body<T: JsonSchema>(mut self) -> Op {
        self.json_body = Some(JsonBody {
            schema: subschema::<T>,
            required: false,
        });
        self
    }
    /// A raw body of `media_type` (besides the JSON one, when there is one).
    pub fn raw_body(mut self, media_type: &'static str) -> Op {
        self.raw_body = Some(media_type);
        self
    }
    /// Query parameters: the fields of `T`.
    pub fn query<T: JsonSchema>(mut self) -> Op {
        self.query = Some(inline_schema::<T>);
        self
    }
    /// Succeeds with JSON and `status` (default 200).
    pub fn status(mut self, status: u16) -> Op {
        self.reply = ReplyDoc::Json(status);
        self
    }
    /// Succeeds with no body and `status` (204, usually).
    pub fn empty(mut self, status: u16) -> Op {
        self.reply = ReplyDoc::Empty(status);
        self
    }
}

/// A router whose routes are described: build with [`Api::op`], then [`Api::merge`] the
/// modules and take the router and the document with [`Api::finish`].
pub struct Api {
    router: Router<AppState>,
    ops: Vec<Op>,
    tag: &'static str,
    patterns: Vec<(&'static str, &'static str)>,
}

impl Api {
    /// Operations under `tag` (a section of the document).
    pub fn new(tag: &'static str) -> Api {
        Api {
            router: Router::new(),
            ops: Vec::new(),
            tag,
            patterns: Vec::new(),
        }
    }

    /// The regular expression every value of path parameter `name` matches, in the operations
    /// added after this call (what the handlers accept; others get 400 or 404).
    pub fn param(mut self, name: &'static str, pattern: &'static str) -> Api {
        self.patterns.push((name, pattern));
        self
    }

    /// Routes `op` to `handler`.
    pub fn op<H, T>(self, op: Op, handler: H) -> Api
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = filter_of(&op.method);
        self.route(op, axum::routing::on(filter, handler))
    }

    /// Routes `op` to a method router (for one with layers, e.g. a larger body limit). The
    /// router must serve `op`'s method only.
    pub fn route(mut self, mut op: Op, method_router: MethodRouter<AppState>) -> Api {
        self.router = self.router.route(&op.path, method_router);
        if op.tag.is_empty() {
            op.tag = self.tag;
        }
        op.patterns.extend(self.patterns.iter().copied());
        self.ops.push(op);
        self
    }

    /// Adds routes that the document leaves out (AWS's own paths, described by AWS).
    pub fn undocumented(mut self, router: Router<AppState>) -> Api {
        self.router = self.router.merge(router);
        self
    }

    /// The routes without their descriptions.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }

    /// Both route sets.
    pub fn merge(mut self, other: Api) -> Api {
        self.router = self.router.merge(other.router);
        self.ops.extend(other.ops);
        self
    }

    /// The router, and the OpenAPI document of its described operations.
    pub fn finish(self) -> (Router<AppState>, Arc<Value>) {
        let doc = document(&self.ops);
        (self.router, Arc::new(doc))
    }
}

fn filter_of(method: &Method) -> MethodFilter {
    match *method {
        Method::GET => MethodFilter::GET,
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::PATCH => MethodFilter::PATCH,
        _ => MethodFilter::DELETE,
    }
}

/// The names of a path's `{parameters}`.
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

/// The OpenAPI 3.0 document of `ops`.
fn document(ops: &[Op]) -> Value {
    let mut generator = SchemaSettings::openapi3().for_deserialize().into_generator();
    let mut paths: Map<String, Value> = Map::new();
    let mut tags: Vec<&str> = Vec::new();
    for op in ops {
        if !op.tag.is_empty() && !tags.contains(&op.tag) {
            tags.push(op.tag);
        }
        let mut params: Vec<Value> = path_params(&op.path)
            .map(|p| {
                let mut schema = json!({ "type": "string", "minLength": 1 });
                if let Some((_, pattern)) = op.patterns.iter().find(|(n, _)| *n == p) {
                    schema["pattern"] = json!(pattern);
                }
                json!({ "name": p, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        if let Some(query) = op.query {
            let schema = query(&mut generator).to_value();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (name, s) in props {
                    let mut s = s.clone();
                    // A query parameter is absent or a string: never null.
                    let description = s.as_object_mut().and_then(|o| {
                        o.remove("nullable");
                        o.remove("default");
                        o.remove("description")
                    });
                    let mut p = json!({
                        "name": name, "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": s,
                    });
                    if let Some(d) = description {
                        p["description"] = d;
                    }
                    params.push(p);
                }
            }
        }
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": params,
        });
        let mut content = Map::new();
        let required = op.raw_body.is_some() || op.json_body.is_some_and(|b| b.required);
        if let Some(body) = op.json_body {
            content.insert(
                "application/json".into(),
                json!({ "schema": (body.schema)(&mut generator).to_value() }),
            );
        }
        if let Some(media) = op.raw_body {
            content.insert(
                media.into(),
                json!({ "schema": { "type": "string", "format": "binary" } }),
            );
        }
        if !content.is_empty() {
            operation["requestBody"] = json!({ "required": required, "content": content });
        }
        let success = match op.reply {
            ReplyDoc::Json(status) => (
                status,
                json!({ "description": "Success.", "content": json_content(json!({ "type": "object" })) }),
            ),
            ReplyDoc::Empty(status) => (status, json!({ "description": "Success, no body." })),
        };
        operation["responses"] = json!({
            success.0.to_string(): success.1,
            "default": {
                "description": "An error: the status says which kind, the body and the \
                                x-amzn-ErrorType header say what went wrong.",
                "headers": { "x-amzn-ErrorType": { "schema": { "type": "string" } } },
                "content": json_content(json!({ "$ref": "#/components/schemas/Error" })),
            },
        });
        let entry = paths.entry(op.path.clone()).or_insert_with(|| json!({}));
        entry[op.method.as_str().to_ascii_lowercase()] = operation;
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": { "message": { "type": "string" } },
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Shoal management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Shoal's own API under /api/v1: identities, the thing registry, access \
                keys, plugins, rules and streams. Every request is signed with AWS Signature \
                Version 4 (any region; signing name iot, iotdata, iotdevicegateway or \
                execute-api) with an admin access key. AWS's own control-plane and data-plane \
                paths (/things, /policies, /topics, ...) are described by AWS's service models \
                and are not repeated here.",
        },
        "tags": tags.iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "sigv4": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "AWS Signature Version 4 (AWS4-HMAC-SHA256), or a presigned URL.",
                },
            },
        },
        "security": [ { "sigv4": [] } ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Create {
        /// Said once.
        description: String,
        #[serde(default)]
        admin: bool,
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Page {
        /// At most this many.
        max_results: Option<u32>,
    }

    async fn nothing() {}

    #[test]
    fn the_document_follows_the_routes() {
        let (_, doc) = Api::new("keys")
            .op(
                Op::post("/api/v1/keys", "CreateKey", "Create").body::<Create>(),
                nothing,
            )
            .op(
                Op::get("/api/v1/keys", "ListKeys", "List").query::<Page>(),
                nothing,
            )
            .op(
                Op::delete("/api/v1/keys/{id}", "DeleteKey", "Delete").empty(204),
                nothing,
            )
            .finish();
        let keys = &doc["paths"]["/api/v1/keys"];
        assert_eq!(keys["post"]["operationId"], "CreateKey");
        let body = &keys["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/Create");
        let create = &doc["components"]["schemas"]["Create"];
        assert_eq!(create["additionalProperties"], false);
        assert_eq!(create["required"], json!(["description"]));
        let q = &keys["get"]["parameters"][0];
        assert_eq!(q["name"], "maxResults");
        assert_eq!(q["in"], "query");
        assert_eq!(q["required"], false);
        assert_eq!(q["description"], "At most this many.");
        let del = &doc["paths"]["/api/v1/keys/{id}"]["delete"];
        assert_eq!(del["parameters"][0]["name"], "id");
        assert!(del["responses"]["204"].is_object());
        assert!(del["responses"]["default"].is_object());
        assert_eq!(doc["tags"][0]["name"], "keys");
    }
}

//! The API's OpenAPI 3.1 document: generated from the request and answer types (their
//! `utoipa::ToSchema`, feature `openapi` of the crates that define them) and the handlers'
//! `#[utoipa::path]` annotations, then completed from the two tables that drive the server, so
//! that neither is copied by hand:
//!
//! - who may call each operation, from [`Route::access`] (its `security` and `x-allowly-access`);
//! - every problem `code` each operation can answer with, by status, from [`Route::problems`]
//!   (built with the constructors and the engine mapping of [`crate::problem`]): each error
//!   response's schema is the problem document with `code` restricted to those codes, and
//!   `x-problem-codes` lists them all.
//!
//! `docs/openapi.json` is this document; `GET /v1/openapi.json` serves it. Regenerate the file
//! with `cargo run -q -p allowly-server --bin allowly -- openapi > docs/openapi.json` (a unit
//! test fails while they differ, and another when a route is missing from it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::auth::Access;
use crate::handlers;
use crate::routes::Route;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Allowly",
        description = "Runtime permission layer for AI agents: record a user's approval (`POST /v1/authorizations`), ask before every agent action (`POST /v1/check` → allow, deny, confirm or escalate), and get a signed, tamper-evident receipt of every decision, verifiable offline (docs/receipt-format.md). Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`; every POST honours `Idempotency-Key`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::metrics,
        handlers::openapi,
        handlers::admin_key_rotate,
        handlers::admin_backup,
        handlers::admin_key_list,
        handlers::admin_key_revoke,
        handlers::workspace_create,
        handlers::workspace_get,
        handlers::scope_rules_put,
        handlers::rate_limit_put,
        handlers::api_key_create,
        handlers::api_key_revoke,
        handlers::keys,
        handlers::keys_rotate,
        handlers::log_checkpoint,
        handlers::log_inclusion,
        handlers::log_consistency,
        handlers::log_export,
        handlers::log_resync,
        handlers::authorization_create,
        handlers::authorization_get,
        handlers::authorization_list,
        handlers::authorization_revoke,
        handlers::authorization_export,
        handlers::check,
        handlers::confirmation_answer,
        handlers::confirmation_get,
        handlers::confirmation_list,
        handlers::escalation_get,
        handlers::escalation_list,
        handlers::escalation_resolve,
        handlers::webhook_create,
        handlers::webhook_list,
        handlers::webhook_get,
        handlers::webhook_disable,
        handlers::webhook_enable,
        handlers::webhook_rotate_secret,
        handlers::webhook_delete,
        handlers::delivery_list,
        handlers::delivery_get,
        handlers::delivery_retry,
        handlers::receipt_get,
        handlers::receipt_list,
    ),
    components(schemas(crate::problem::ProblemDoc)),
    tags(
        (name = "decisions", description = "Checks, confirmations and escalations"),
        (name = "authorizations", description = "What users approved"),
        (name = "receipts", description = "The signed record of every decision"),
        (name = "log", description = "The workspace's transparency log and its keys"),
        (name = "webhooks", description = "Outgoing events"),
        (name = "workspaces", description = "Workspaces and their API keys"),
        (name = "admin", description = "The instance's operator"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

/// The document, as served and committed.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// The document's text: `docs/openapi.json`, byte for byte.
pub fn text() -> String {
    let mut s = serde_json::to_string_pretty(document()).unwrap_or_default();
    s.push('\n');
    s
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    doc["components"]["securitySchemes"] = json!({
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`alw_…`) of the workspace, or the instance admin key",
        }
    });
    for &route in Route::ALL {
        let Some(spec) = route.spec() else { continue };
        let op = &mut doc["paths"][spec.path][spec.method];
        if op.is_null() {
            // No annotation for this route: left missing, for the test to name.
            continue;
        }
        op["operationId"] = json!(route.name());
        let access = route.access();
        op["x-allowly-access"] = json!(access_name(access));
        if access != Access::Public {
            op["security"] = json!([{ "apiKey": [] }]);
        }
        let mut by_status: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
        for p in route.problems() {
            by_status.entry(p.status().as_u16()).or_default().insert(p.code());
        }
        op["x-problem-codes"] = json!(by_status.values().flatten().collect::<BTreeSet<_>>());
        for (status, codes) in by_status {
            let response = &mut op["responses"][status.to_string()];
            if response.is_null() {
                let list = codes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
                *response = json!({ "description": format!("Problem: {list}") });
            }
            response["content"]["application/problem+json"] = json!({
                "schema": {
                    "allOf": [
                        { "$ref": "#/components/schemas/Problem" },
                        { "type": "object", "properties": { "code": { "enum": codes } } },
                    ]
                }
            });
            if status == 429 || status == 503 {
                response["headers"]["Retry-After"] = json!({
                    "description": "Seconds to wait before retrying (absent when it does not pass by itself)",
                    "schema": { "type": "integer", "minimum": 1 },
                });
            }
        }
    }
    add_links(&mut doc);
    // `handlers::check` adds the request's `context` to a `confirm` answer (the engine's
    // `ConfirmationInfo` does not carry it: only its hash is kept, in the receipt).
    doc["components"]["schemas"]["ConfirmationInfo"]["properties"]["context"] = json!({
        "description": "The check request's `context`, echoed: what to show the user (absent when the request had none)"
    });
    doc
}

/// OpenAPI links: how one answer's ids feed the next request (what schemathesis' stateful
/// phase follows): an authorization is read, checked and revoked, and a check's receipt read.
fn add_links(doc: &mut Value) {
    let authorization = "$response.body#/authorization/id";
    let receipt = "$response.body#/receipt/receipt_id";
    doc["paths"]["/v1/authorizations"]["post"]["responses"]["201"]["links"] = json!({
        "GetAuthorization": { "operationId": "authorization_get", "parameters": { "id": authorization } },
        "CheckAuthorization": {
            "operationId": "check",
            "requestBody": { "authorization_id": authorization, "scopes": ["files.read"] },
        },
        "GetCreationReceipt": { "operationId": "receipt_get", "parameters": { "id": receipt } },
        "GetTrail": { "operationId": "receipt_list", "parameters": { "authorization_id": authorization } },
        "RevokeAuthorization": { "operationId": "authorization_revoke", "parameters": { "id": authorization } },
    });
    doc["paths"]["/v1/check"]["post"]["responses"]["200"]["links"] = json!({
        "GetCheckReceipt": { "operationId": "receipt_get", "parameters": { "id": receipt } },
    });
}

fn access_name(a: Access) -> &'static str {
    use allowly_store::Role;
    match a {
        Access::Public => "public",
        Access::InstanceAdmin => "instance_admin",
        Access::InstanceAdminOr(Role::Admin) => "instance_admin_or_admin",
        Access::InstanceAdminOr(Role::Read) => "instance_admin_or_read",
        Access::InstanceAdminOr(Role::Check) => "instance_admin_or_check",
        Access::Workspace(Role::Admin) => "admin",
        Access::Workspace(Role::Read) => "read",
        Access::Workspace(Role::Check) => "check",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::routes::{match_route, Matched};

    /// The committed file is the generated document.
    #[test]
    fn docs_openapi_json_is_the_generated_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text(),
            "docs/openapi.json differs from the document the server generates; regenerate it with\n  cargo run -q -p allowly-server --bin allowly -- openapi > docs/openapi.json"
        );
    }

    /// Every route of the router is in the document, under its method, with a success answer
    /// and its problem codes.
    #[test]
    fn every_route_is_documented() {
        let doc = document();
        for &route in Route::ALL {
            let spec = route.spec().unwrap();
            let op = &doc["paths"][spec.path][spec.method];
            assert!(
                op.is_object(),
                "{} {} ({}) is missing from the OpenAPI document",
                spec.method,
                spec.path,
                route.name()
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|s| s.starts_with('2')), "{}: no success answer", route.name());
            let codes: BTreeSet<&str> = route.problems().iter().map(|p| p.code()).collect();
            let listed: BTreeSet<&str> =
                op["x-problem-codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            assert_eq!(codes, listed, "{}", route.name());
        }
        // Nothing documented that the router does not route.
        let ops: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(ops, Route::ALL.len());
    }

    /// `Route::spec` names the method and path that `match_route` routes to the route.
    #[test]
    fn specs_agree_with_the_router() {
        for &route in Route::ALL {
            let spec = route.spec().unwrap();
            let path = spec
                .path
                .replace("{ws}", "ws_1")
                .replace("{key_id}", "key_1")
                .replace("{nonce}", "cn_1")
                .replace("{id}", "x_1");
            let method = http::Method::from_bytes(spec.method.to_uppercase().as_bytes()).unwrap();
            match match_route(&method, &path) {
                Matched::Found(t) => assert_eq!(t.route, route, "{method} {path}"),
                other => panic!("{method} {path} ({}): {other:?}", route.name()),
            }
        }
    }

    /// Each error response lists the codes of its status, and each code's status is where
    /// the problem mapping sends it.
    #[test]
    fn problem_codes_are_listed_under_their_status() {
        let doc = document();
        let check = &doc["paths"]["/v1/check"]["post"];
        let codes = |status: &str| -> Vec<String> {
            let schema = &check["responses"][status]["content"]["application/problem+json"]["schema"];
            serde_json::from_value(schema["allOf"][1]["properties"]["code"]["enum"].clone()).unwrap()
        };
        assert!(codes("503").contains(&"signer_unavailable".to_owned()));
        assert!(codes("503").contains(&"commit_timeout".to_owned()));
        assert!(codes("429").contains(&"rate_limited".to_owned()));
        assert!(codes("401").contains(&"unauthenticated".to_owned()));
        let answer = &doc["paths"]["/v1/escalations/{id}/resolve"]["post"];
        assert!(answer["x-problem-codes"].as_array().unwrap().contains(&json!("escalation_already_resolved")));
        assert!(check["security"].is_array());
        assert!(doc["paths"]["/v1/workspaces/{ws}/keys"]["get"]["security"].is_null(), "the key set is public");
    }
}

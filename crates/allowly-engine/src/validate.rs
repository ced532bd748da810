//! Checks on request fields, before anything reaches an actor or the store. Limits are part of
//! the API (documented on the model types); each failure names the field.

use std::collections::BTreeMap;

use allowly_store::{Role, ScopeRule};

use crate::decide::validate_scope;
use crate::error::{EngineError, Result};
use crate::model::{Answer, CheckRequest, NewAuthorization};

/// Most scopes in one grant or check.
pub const MAX_SCOPES: usize = 64;
/// Most resource constraints in one grant.
pub const MAX_RESOURCES: usize = 64;
/// Longest resource name or constraint, in bytes.
pub const MAX_RESOURCE_LEN: usize = 1024;
/// Longest subject, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Largest metadata or context, as compact JSON.
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// Longest note with an answer (bytes).
pub const MAX_NOTE_BYTES: usize = 4096;
/// Most scope rules per workspace.
pub const MAX_SCOPE_RULES: usize = 256;

fn bad(field: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::invalid(field, message)
}

/// Printable text: no control characters, 1..=max bytes.
fn text(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(bad(field, format!("must be 1..={max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

fn json_size(field: &'static str, v: &serde_json::Value) -> Result<()> {
    let n = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if n > MAX_JSON_BYTES {
        return Err(bad(field, format!("must be at most {MAX_JSON_BYTES} bytes of JSON")));
    }
    // Receipts carry its RFC 8785 hash, so it must have a canonical form (e.g. no
    // integers beyond 2^53, which JSON consumers would silently round).
    allowly_receipt::jcs::to_canonical_vec(v).map_err(|e| bad(field, format!("has no canonical form: {e}")))?;
    Ok(())
}

fn scopes(field: &'static str, list: &[String], patterns: bool) -> Result<()> {
    if list.is_empty() || list.len() > MAX_SCOPES {
        return Err(bad(field, format!("must hold 1..={MAX_SCOPES} scopes")));
    }
    for s in list {
        if !validate_scope(s, patterns) {
            let what = if patterns { "scope or pattern (`*`, `a.b.*`)" } else { "scope name (no patterns)" };
            return Err(bad(field, format!("{s:?} is not a valid {what}: dot-separated [a-z0-9_:-] segments")));
        }
    }
    Ok(())
}

/// A workspace or key display name.
pub fn name(s: &str) -> Result<()> {
    text("name", s, 200)
}

pub fn scope_rules(rules: &BTreeMap<String, ScopeRule>) -> Result<()> {
    if rules.len() > MAX_SCOPE_RULES {
        return Err(bad("scope_rules", format!("at most {MAX_SCOPE_RULES} rules")));
    }
    for k in rules.keys() {
        if !validate_scope(k, true) {
            return Err(bad("scope_rules", format!("{k:?} is not a valid scope or pattern")));
        }
    }
    Ok(())
}

/// Largest accepted `requests_per_second` and `burst` of a rate limit: beyond it, a limit
/// limits nothing a single server could serve.
pub const MAX_RATE: u32 = 1_000_000;

pub fn rate_limit(limit: &allowly_store::RateLimit) -> Result<()> {
    if let allowly_store::RateLimit::PerKey { requests_per_second, burst } = *limit {
        for (field, v) in [("rate_limit.requests_per_second", requests_per_second), ("rate_limit.burst", burst)] {
            if !(1..=MAX_RATE).contains(&v) {
                return Err(bad(field, format!("must be within 1..={MAX_RATE}")));
            }
        }
    }
    Ok(())
}

/// Roles of a new key: non-empty; returned sorted and without duplicates.
pub fn roles(mut roles: Vec<Role>) -> Result<Vec<Role>> {
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err(bad("roles", "at least one of check, read, admin"));
    }
    Ok(roles)
}

/// Checks a grant's shape. (That `expires_at` is in the future is checked when the grant is
/// recorded, after its `Idempotency-Key` is looked up: a repeat must get the first answer even
/// once that time has passed.)
pub fn new_authorization(req: &NewAuthorization) -> Result<()> {
    text("subject", &req.subject, MAX_SUBJECT_LEN)?;
    scopes("scopes", &req.scopes, true)?;
    if req.resources.len() > MAX_RESOURCES {
        return Err(bad("resources", format!("at most {MAX_RESOURCES} constraints")));
    }
    for r in &req.resources {
        text("resources", r, MAX_RESOURCE_LEN)?;
    }

    if let Some(m) = &req.metadata {
        json_size("metadata", m)?;
    }
    Ok(())
}

pub fn check(req: &CheckRequest) -> Result<()> {
    if allowly_receipt::types::validate_id("authorization_id", &req.authorization_id).is_err() {
        return Err(bad("authorization_id", "not an authorization id"));
    }
    scopes("scopes", &req.scopes, false)?;
    if let Some(r) = &req.resource {
        text("resource", r, MAX_RESOURCE_LEN)?;
    }
    if let Some(c) = &req.context {
        json_size("context", c)?;
    }
    Ok(())
}

/// A confirmation's or an escalation's answer (one vocabulary, see [`Answer`]).
pub fn answer(a: &Answer) -> Result<()> {
    text("by", &a.by, MAX_SUBJECT_LEN)?;
    if let Some(shown) = &a.shown {
        if shown.len() > MAX_JSON_BYTES {
            return Err(bad("shown", format!("must be at most {MAX_JSON_BYTES} bytes")));
        }
        if a.shown_hash.is_some() {
            return Err(bad("shown_hash", "give `shown` or `shown_hash`, not both"));
        }
    }
    if a.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return Err(bad("note", format!("must be at most {MAX_NOTE_BYTES} bytes")));
    }
    Ok(())
}

/// A new grant's expiry must be in the future (checked in the actor: see [`new_authorization`]).
pub fn expires_in_future(req: &NewAuthorization, now_ms: u64) -> Result<()> {
    match req.expires_at {
        Some(t) if t.unix_ms() <= now_ms => Err(bad("expires_at", "must be in the future")),
        _ => Ok(()),
    }
}

//! Who may call what. The API key (`Authorization: Bearer <secret>`) is resolved by the engine
//! to a [`Principal`]; [`authorize`] then decides, for the route's [`Access`], which workspace
//! the request acts on, or refuses it.
//!
//! - A workspace key acts on its own workspace only. Naming another workspace in the path is a
//!   404, exactly like a workspace that does not exist, so keys cannot probe for other tenants.
//! - Roles: `check` may call `POST /v1/check`; `read` the GET endpoints; `admin` everything in
//!   its workspace (admin implies every role).
//! - The instance admin key (no workspace) may only create workspaces and manage a workspace's
//!   settings and API keys; it cannot read receipts or make decisions.
//! - `/metrics` is public unless `--metrics-token-file` is set; then it takes that token as a
//!   bearer ([`MetricsToken`]; not an API key: a scraper needs no workspace).

use allowly_engine::model::Principal;
use allowly_store::Role;
use http::header::AUTHORIZATION;
use http::HeaderMap;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::problem::Problem;

/// Secrets are `alw_` + 64 hex digits; anything much longer is not worth hashing.
const MAX_SECRET_LEN: usize = 256;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no key.
    Public,
    /// The instance admin key only (creating workspaces).
    InstanceAdmin,
    /// The instance admin key, or a key of the workspace in the path holding the role.
    InstanceAdminOr(Role),
    /// A key of the caller's own workspace holding the role.
    Workspace(Role),
}

/// The bearer secret of a request, or why there is none.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| Problem::unauthenticated("an API key is required (Authorization: Bearer <key>)"))?;
    let malformed = || Problem::unauthenticated("the Authorization header must be `Bearer <key>`");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, secret) = value.split_once(' ').ok_or_else(malformed)?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(malformed());
    }
    Ok(secret)
}

/// The bearer token `/metrics` requires (`--metrics-token-file`). Only its SHA-256 is kept, so
/// the token is in no dump or debug output of this process; a presented token is hashed and the
/// digests compared in constant time (equal-length inputs: neither content nor length leaks).
#[derive(Clone, PartialEq, Eq)]
pub struct MetricsToken {
    digest: [u8; 32],
}

/// Longest accepted token file.
const MAX_TOKEN_FILE: u64 = 4096;

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    /// The token in `path`: its content without surrounding whitespace (a trailing newline),
    /// non-empty, printable ASCII without spaces (what a bearer header carries), at most 256
    /// bytes (the longest bearer [`bearer`] accepts).
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        file.take(MAX_TOKEN_FILE + 1).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_TOKEN_FILE {
            return Err(format!("{}: longer than {MAX_TOKEN_FILE} bytes", path.display()));
        }
        Self::new(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn new(token: &str) -> Result<Self, &'static str> {
        if token.is_empty() {
            return Err("the token is empty");
        }
        if token.len() > MAX_SECRET_LEN {
            return Err("the token is longer than 256 bytes");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces");
        }
        Ok(Self { digest: Sha256::digest(token.as_bytes()).into() })
    }

    /// Whether the request carries this token as its bearer (401 otherwise).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let presented = bearer(headers)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(Problem::unauthenticated("/metrics needs the metrics bearer token"))
        }
    }
}

/// The workspace a request acts on, given the caller, the route's access rule and the workspace
/// named in the path (if any). `None` means "no workspace" (only for creating one).
pub fn authorize(p: &Principal, access: Access, path_ws: Option<&str>) -> Result<Option<String>, Problem> {
    let instance_admin = p.workspace_id.is_none();
    match access {
        Access::Public => Ok(path_ws.map(str::to_owned)),
        Access::InstanceAdmin => {
            if instance_admin && p.has(Role::Admin) {
                Ok(path_ws.map(str::to_owned))
            } else {
                Err(Problem::forbidden("only the instance admin key may do this"))
            }
        }
        Access::InstanceAdminOr(_) if instance_admin => {
            if p.has(Role::Admin) {
                Ok(path_ws.map(str::to_owned))
            } else {
                Err(Problem::forbidden("this key may not do this"))
            }
        }
        Access::Workspace(_) if instance_admin => {
            Err(Problem::forbidden("the instance admin key only manages workspaces and their API keys"))
        }
        Access::InstanceAdminOr(role) | Access::Workspace(role) => {
            let own = p.workspace_id.as_deref().unwrap_or_default();
            if path_ws.is_some_and(|ws| ws != own) {
                return Err(Problem::not_found());
            }
            if !p.has(role) {
                return Err(Problem::forbidden(format!("this API key lacks the `{}` role", role_name(role))));
            }
            Ok(Some(own.to_owned()))
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Check => "check",
        Role::Read => "read",
        Role::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(ws: Option<&str>, roles: &[Role]) -> Principal {
        Principal { key_id: "k".into(), workspace_id: ws.map(Into::into), roles: roles.to_vec() }
    }

    fn check(p: &Principal, access: Access, path_ws: Option<&str>, expect: Result<Option<&str>, &str>) {
        let got = authorize(p, access, path_ws);
        let got = got.as_ref().map(|w| w.as_deref()).map_err(|e| e.code());
        assert_eq!(got, expect, "{p:?} {access:?} {path_ws:?}");
    }

    #[test]
    fn the_access_table() {
        let admin = key(None, &[Role::Admin]);
        let ws_admin = key(Some("ws_a"), &[Role::Admin]);
        let reader = key(Some("ws_a"), &[Role::Read]);
        let checker = key(Some("ws_a"), &[Role::Check]);

        check(&admin, Access::InstanceAdmin, None, Ok(None));
        check(&ws_admin, Access::InstanceAdmin, None, Err("forbidden"));
        check(&admin, Access::InstanceAdminOr(Role::Admin), Some("ws_b"), Ok(Some("ws_b")));
        check(&admin, Access::Workspace(Role::Read), None, Err("forbidden"));
        check(&admin, Access::Workspace(Role::Read), Some("ws_b"), Err("forbidden"));

        check(&ws_admin, Access::InstanceAdminOr(Role::Admin), Some("ws_a"), Ok(Some("ws_a")));
        check(&ws_admin, Access::InstanceAdminOr(Role::Admin), Some("ws_b"), Err("not_found"));
        check(&ws_admin, Access::Workspace(Role::Check), None, Ok(Some("ws_a")));
        check(&ws_admin, Access::Workspace(Role::Read), Some("ws_a"), Ok(Some("ws_a")));

        check(&reader, Access::Workspace(Role::Read), None, Ok(Some("ws_a")));
        check(&reader, Access::Workspace(Role::Check), None, Err("forbidden"));
        check(&reader, Access::Workspace(Role::Admin), None, Err("forbidden"));
        // Another workspace is a 404 even when the role is missing too.
        check(&checker, Access::Workspace(Role::Read), Some("ws_b"), Err("not_found"));
        check(&checker, Access::Workspace(Role::Read), Some("ws_a"), Err("forbidden"));
        check(&checker, Access::Workspace(Role::Check), None, Ok(Some("ws_a")));
    }

    #[test]
    fn the_metrics_token_is_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let t = MetricsToken::read(&path).unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        let mut h = HeaderMap::new();
        assert_eq!(t.check(&h).unwrap_err().code(), "unauthenticated");
        for (v, ok) in [("Bearer s3cret-token", true), ("Bearer s3cret-toke", false), ("Bearer s3cret-token2", false)] {
            h.insert(AUTHORIZATION, v.parse().unwrap());
            assert_eq!(t.check(&h).is_ok(), ok, "{v}");
        }
        let long = "t".repeat(257);
        for bad in ["", " \n", "two words", "é", long.as_str()] {
            std::fs::write(&path, bad).unwrap();
            assert!(MetricsToken::read(&path).is_err(), "{bad:?}");
        }
        assert!(MetricsToken::read(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().code(), "unauthenticated");
        for (v, ok) in [
            ("Bearer alw_x", Some("alw_x")),
            ("bearer  alw_x ", Some("alw_x")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("alw_x", None),
        ] {
            h.insert(AUTHORIZATION, v.parse().unwrap());
            assert_eq!(bearer(&h).ok(), ok, "{v:?}");
        }
        h.insert(AUTHORIZATION, format!("Bearer {}", "a".repeat(300)).parse().unwrap());
        assert!(bearer(&h).is_err());
    }
}

//! The decision table of the product, as a pure function: no IO, no clock, no state. The
//! engine's workspace actor feeds it the authorization as it is and the workspace's scope rules;
//! the offline verifier (`allowly-receipt`'s semantic verification, docs/receipt-format.md §7.4)
//! feeds it the grant, revocation and rules a log shows before a decision and compares. One
//! function for both, in a crate of its own with no dependencies, so the two cannot drift and
//! the verifier links nothing of the server.
//!
//! Order of checks (the first that applies decides):
//!
//! | # | condition | decision | reason |
//! |---|---|---|---|
//! | 1 | authorization revoked | deny | `revoked` |
//! | 2 | authorization expired (`now ≥ expires_at`) | deny | `expired` |
//! | 3 | a requested scope is not covered by the grant | deny | `scope_not_granted` |
//! | 4 | the grant has resource constraints and the resource is absent or not covered | deny | `resource_not_covered` |
//! | 5 | a requested scope matches an `escalate` rule | escalate | `escalation_required` |
//! | 6 | a requested scope matches a `confirm` rule | confirm | `confirmation_required` |
//! | 7 | otherwise | allow | `granted` |
//!
//! (An unknown authorization is decided by the caller: deny, `unknown_authorization`, recorded
//! as a workspace event since there is no trail.) Escalation
//! wins over confirmation because it is the stronger requirement.
//!
//! Patterns (grants and rules): `*` matches every scope; `a.b.*` matches every scope that starts
//! with `a.b.` and has at least one more segment (`a.b.c`, `a.b.c.d`, not `a.b`); anything else
//! matches exactly. Resource constraints: an entry ending in `*` matches every resource that
//! starts with the part before the `*`; anything else matches exactly; an empty list means any
//! resource (and no resource at all).

use std::collections::BTreeMap;

/// What Allowly answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Confirm,
    Escalate,
}

/// Stable reason codes (they appear in receipts and in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Granted,
    UnknownAuthorization,
    Revoked,
    Expired,
    ScopeNotGranted,
    ResourceNotCovered,
    ConfirmationRequired,
    EscalationRequired,
}

impl Reason {
    /// Every reason, in declaration order (`ALL[r as usize] == r`).
    pub const ALL: [Reason; 8] = [
        Self::Granted,
        Self::UnknownAuthorization,
        Self::Revoked,
        Self::Expired,
        Self::ScopeNotGranted,
        Self::ResourceNotCovered,
        Self::ConfirmationRequired,
        Self::EscalationRequired,
    ];

    /// The one verdict this reason comes with (the table above): so the decision metric's
    /// label pairs are a closed set of eight, counted without a label lookup.
    pub fn verdict(self) -> Verdict {
        match self {
            Self::Granted => Verdict::Allow,
            Self::ConfirmationRequired => Verdict::Confirm,
            Self::EscalationRequired => Verdict::Escalate,
            Self::UnknownAuthorization
            | Self::Revoked
            | Self::Expired
            | Self::ScopeNotGranted
            | Self::ResourceNotCovered => Verdict::Deny,
        }
    }

    /// The code as written in receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::UnknownAuthorization => "unknown_authorization",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::ScopeNotGranted => "scope_not_granted",
            Self::ResourceNotCovered => "resource_not_covered",
            Self::ConfirmationRequired => "confirmation_required",
            Self::EscalationRequired => "escalation_required",
        }
    }
}

/// A workspace's extra requirement for a scope pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Confirm,
    Escalate,
}

/// The parts of an authorization a decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub scopes: &'a [String],
    pub resources: &'a [String],
    pub expires_at_ms: Option<u64>,
    pub revoked: bool,
}

/// One check.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub scopes: &'a [String],
    pub resource: Option<&'a str>,
    pub now_ms: u64,
}

/// Whether a scope pattern matches a scope name.
pub fn scope_matches(pattern: &str, scope: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            scope.len() > prefix.len() + 1 && scope.starts_with(prefix) && scope.as_bytes()[prefix.len()] == b'.'
        }
        None => pattern == scope,
    }
}

/// Whether a resource constraint matches a resource.
pub fn resource_matches(constraint: &str, resource: &str) -> bool {
    match constraint.strip_suffix('*') {
        Some(prefix) => resource.starts_with(prefix),
        None => constraint == resource,
    }
}

/// Decides one check. `rules` maps scope patterns to the workspace's extra requirement.
pub fn decide(grant: Grant<'_>, ask: Ask<'_>, rules: &BTreeMap<String, Rule>) -> (Verdict, Reason) {
    if let Some(reason) = denial(grant, ask) {
        return (Verdict::Deny, reason);
    }
    match required(ask, rules) {
        Some(Rule::Escalate) => (Verdict::Escalate, Reason::EscalationRequired),
        Some(Rule::Confirm) => (Verdict::Confirm, Reason::ConfirmationRequired),
        None => (Verdict::Allow, Reason::Granted),
    }
}

/// Rows 1-4 of the table: why the authorization alone denies the check, if it does. They do not
/// depend on the scope rules, so a verifier that does not know the rules in force can still
/// judge them.
pub fn denial(grant: Grant<'_>, ask: Ask<'_>) -> Option<Reason> {
    if grant.revoked {
        return Some(Reason::Revoked);
    }
    if grant.expires_at_ms.is_some_and(|t| ask.now_ms >= t) {
        return Some(Reason::Expired);
    }
    if !ask.scopes.iter().all(|s| grant.scopes.iter().any(|g| scope_matches(g, s))) {
        return Some(Reason::ScopeNotGranted);
    }
    if !grant.resources.is_empty() {
        let covered = ask.resource.is_some_and(|r| grant.resources.iter().any(|c| resource_matches(c, r)));
        if !covered {
            return Some(Reason::ResourceNotCovered);
        }
    }
    None
}

/// Rows 5-6: what the rules ask of a check the authorization allows; escalation wins over
/// confirmation because it is the stronger requirement.
pub fn required(ask: Ask<'_>, rules: &BTreeMap<String, Rule>) -> Option<Rule> {
    let rule_for = |want: Rule| {
        rules.iter().any(|(pattern, rule)| *rule == want && ask.scopes.iter().any(|s| scope_matches(pattern, s)))
    };
    [Rule::Escalate, Rule::Confirm].into_iter().find(|r| rule_for(*r))
}

/// Validates a scope name or pattern: 1..=128 chars of `[a-z0-9_:-]` in dot-separated non-empty
/// segments, optionally ending in `.*`, or exactly `*` (patterns only).
pub fn validate_scope(s: &str, allow_pattern: bool) -> bool {
    if allow_pattern && s == "*" {
        return true;
    }
    let body = if allow_pattern { s.strip_suffix(".*").unwrap_or(s) } else { s };
    !s.is_empty()
        && s.len() <= 128
        && body.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:-".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    /// One row of the decision table: grant scopes, resources, expiry, revoked; ask; rules; expect.
    fn check(
        grant: (&[&str], &[&str], Option<u64>, bool),
        ask: (&[&str], Option<&str>, u64),
        rules: &[(&str, Rule)],
        expect: (Verdict, Reason),
    ) {
        let (gs, gr) = (v(grant.0), v(grant.1));
        let scopes = v(ask.0);
        let rules: BTreeMap<String, Rule> = rules.iter().map(|(p, r)| (p.to_string(), *r)).collect();
        let got = decide(
            Grant { scopes: &gs, resources: &gr, expires_at_ms: grant.2, revoked: grant.3 },
            Ask { scopes: &scopes, resource: ask.1, now_ms: ask.2 },
            &rules,
        );
        assert_eq!(got, expect, "grant {grant:?} ask {ask:?} rules {rules:?}");
        assert_eq!(got.1.verdict(), got.0, "the metric counts {:?} as {:?}", got.1, got.1.verdict());
    }

    #[test]
    fn all_reasons_in_declaration_order() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn the_decision_table() {
        use Reason::*;
        use Verdict::*;
        let g = |s, r| (s, r, Some(1000), false);
        check(g(&["files.read"][..], &[][..]), (&["files.read"], None, 1), &[], (Allow, Granted));
        check((&["files.read"], &[], None, true), (&["files.read"], None, 1), &[], (Deny, Revoked));
        check(g(&["files.read"], &[]), (&["files.read"], None, 1000), &[], (Deny, Expired));
        check(g(&["files.read"], &[]), (&["files.read"], None, 999), &[], (Allow, Granted));
        check(g(&["files.read"], &[]), (&["files.read", "files.write"], None, 1), &[], (Deny, ScopeNotGranted));
        check(g(&["files.*"], &[]), (&["files.read", "files.write.all"], None, 1), &[], (Allow, Granted));
        check(g(&["files.*"], &[]), (&["files"], None, 1), &[], (Deny, ScopeNotGranted));
        check(g(&["files.*"], &[]), (&["filesystem.read"], None, 1), &[], (Deny, ScopeNotGranted));
        check(g(&["*"], &[]), (&["anything.at.all"], None, 1), &[], (Allow, Granted));
        check(
            g(&["files.read"], &["drive:file/*"]),
            (&["files.read"], Some("drive:file/a.pdf"), 1),
            &[],
            (Allow, Granted),
        );
        check(
            g(&["files.read"], &["drive:file/*"]),
            (&["files.read"], Some("drive:dir/a"), 1),
            &[],
            (Deny, ResourceNotCovered),
        );
        check(g(&["files.read"], &["drive:file/*"]), (&["files.read"], None, 1), &[], (Deny, ResourceNotCovered));
        check(g(&["files.read"], &["acct:9"]), (&["files.read"], Some("acct:99"), 1), &[], (Deny, ResourceNotCovered));
        check(
            g(&["pay.send"], &[]),
            (&["pay.send"], None, 1),
            &[("pay.send", Rule::Confirm)],
            (Confirm, ConfirmationRequired),
        );
        check(
            g(&["pay.send"], &[]),
            (&["pay.send"], None, 1),
            &[("pay.*", Rule::Escalate)],
            (Escalate, EscalationRequired),
        );
        check(
            g(&["pay.send", "files.read"], &[]),
            (&["pay.send", "files.read"], None, 1),
            &[("files.read", Rule::Confirm), ("pay.send", Rule::Escalate)],
            (Escalate, EscalationRequired),
        );
        // Denials come before rules: a rule never turns a deny into a prompt.
        check(
            (&["pay.send"], &[], None, true),
            (&["pay.send"], None, 1),
            &[("pay.send", Rule::Confirm)],
            (Deny, Revoked),
        );
    }

    #[test]
    fn scope_validation() {
        for ok in ["files.read", "a", "a_b:c-d.e", "x.y.z"] {
            assert!(validate_scope(ok, false), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A.b", "a b", "a.*", "*", &"a".repeat(129)] {
            assert!(!validate_scope(bad, false), "{bad}");
        }
        for ok in ["*", "a.*", "a.b.*", "a.b"] {
            assert!(validate_scope(ok, true), "{ok}");
        }
        for bad in [".*", "a.*.b", "a*", "**"] {
            assert!(!validate_scope(bad, true), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn exact_grant_allows_exactly_its_scopes(a in "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}", b in "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}") {
            let grant = vec![a.clone()];
            let (verdict, _) = decide(
                Grant { scopes: &grant, resources: &[], expires_at_ms: None, revoked: false },
                Ask { scopes: std::slice::from_ref(&b), resource: None, now_ms: 0 },
                &BTreeMap::new(),
            );
            prop_assert_eq!(verdict == Verdict::Allow, a == b);
        }

        #[test]
        fn wildcard_matches_exactly_the_longer_names(p in "[a-z]{1,4}(\\.[a-z]{1,4}){0,2}", s in "[a-z]{1,4}(\\.[a-z]{1,4}){0,3}") {
            let pattern = format!("{p}.*");
            prop_assert_eq!(scope_matches(&pattern, &s), s.starts_with(&format!("{p}.")));
        }

        #[test]
        fn revoked_or_expired_is_never_allowed(scopes in proptest::collection::vec("[a-z]{1,3}", 1..4), now in 0u64..100, exp in 0u64..100, revoked in any::<bool>()) {
            let grant = vec!["*".to_string()];
            let (verdict, _) = decide(
                Grant { scopes: &grant, resources: &[], expires_at_ms: Some(exp), revoked },
                Ask { scopes: &scopes, resource: None, now_ms: now },
                &BTreeMap::new(),
            );
            prop_assert_eq!(verdict == Verdict::Allow, !revoked && now < exp);
        }

        #[test]
        fn prefix_resource_constraint(prefix in "[a-z:/]{0,8}", r in "[a-z:/]{0,12}") {
            prop_assert_eq!(resource_matches(&format!("{prefix}*"), &r), r.starts_with(&prefix));
            prop_assert_eq!(resource_matches(&prefix, &r), prefix == r);
        }
    }
}

//! Semantic verification (docs/receipt-format.md §7.4): do the decisions in a bundle follow from
//! the grants, revocations, expiries and scope rules that precede them in the same log?
//!
//! Only what gives something away is judged: an `allow`, a `confirm` or an `escalate`, and an
//! answer that allows. A `deny` is never unjustified (Allowly may deny for reasons a verifier
//! cannot see, and a deny permits nothing). Decisions are re-derived with the engine's own
//! decision function (`allowly-decide`), so the verifier and the engine cannot disagree on what a
//! grant covers.
//!
//! The check reads receipts in log order and assumes the rest of the verification found
//! nothing: on a bundle with a hole or an altered receipt it would judge decisions against an
//! incomplete history (a missing `confirm` check would make its answer look unasked), so the
//! caller runs it only on a bundle without findings.

use std::collections::{BTreeMap, HashMap};

use allowly_decide::{self as decide, Ask, Reason, Rule, Verdict};

use super::{Code, ReceiptFacts, Report};
use crate::types::{ApprovalOutcome, Decision, EventKind, ReceiptBody, RuleKind};

/// What an answer's receipt says when the answer was refused rather than given (§4.2): it uses
/// up nothing, and it denies.
const REFUSED_ANSWERS: [&str; 2] = ["confirmation_used", "confirmation_expired"];

/// A `confirm` check's request, waiting for its one answer.
struct OpenConfirmation<'a> {
    scopes: &'a [String],
    resource: Option<&'a str>,
    /// `expires_at` of the check (format 1.1); `None`: no deadline is known.
    deadline_ms: Option<u64>,
    answered: bool,
}

/// An `escalate` check's escalation.
struct OpenEscalation {
    deadline_ms: Option<u64>,
    resolved: bool,
}

/// One authorization whose `authorization.created` receipt is in the bundle.
struct TrailState<'a> {
    body: &'a ReceiptBody,
    /// The `revocation` or `expiry` receipt that ended it, if one came before.
    ended: Option<&'a ReceiptBody>,
    confirmations: Vec<OpenConfirmation<'a>>,
    escalations: HashMap<&'a str, OpenEscalation>,
}

impl TrailState<'_> {
    fn expires_at_ms(&self) -> Option<u64> {
        self.body.grant.as_ref().and_then(|g| g.expires_at).map(|t| t.unix_ms())
    }
}

/// The rules in force and the receipt that set them.
struct Rules<'a> {
    set: BTreeMap<String, Rule>,
    at: &'a ReceiptBody,
}

/// Runs §7.4 over the receipts of a bundle that has no other finding. Returns how many
/// decisions were judged.
pub(super) fn check(facts: &[ReceiptFacts], report: &mut Report) -> usize {
    // Log order; a receipt carried twice counts once (it has one log index and no conflict).
    let mut bodies: Vec<&ReceiptBody> = facts.iter().map(|f| &f.body).collect();
    bodies.sort_by_key(|b| b.log_index);
    bodies.dedup_by_key(|b| b.log_index);

    let mut rules: Option<Rules<'_>> = None;
    let mut trails: HashMap<&str, TrailState<'_>> = HashMap::new();
    let (mut judged, mut unknown_trail, mut unknown_rules) = (0usize, 0usize, 0usize);
    for b in bodies {
        if b.kind == EventKind::ScopeRulesChanged {
            let set = b.scope_rules.iter().flatten().map(|(p, r)| (p.clone(), rule(*r))).collect();
            rules = Some(Rules { set, at: b });
            continue;
        }
        let Some(auth) = b.authorization_id.as_deref() else { continue };
        if b.kind == EventKind::AuthorizationCreated {
            trails.insert(
                auth,
                TrailState { body: b, ended: None, confirmations: Vec::new(), escalations: HashMap::new() },
            );
            continue;
        }
        let Some(trail) = trails.get_mut(auth) else {
            // A log export that starts after the grant: what the trail allowed is unknown.
            unknown_trail += usize::from(matches!(
                b.kind,
                EventKind::Check | EventKind::Confirmation | EventKind::EscalationResolved
            ));
            continue;
        };
        let broken = match b.kind {
            EventKind::Revocation | EventKind::Expiry => {
                trail.ended = trail.ended.or(Some(b));
                None
            }
            EventKind::Check => {
                judged += 1;
                if rules.is_none() {
                    unknown_rules += 1;
                }
                judge_check(b, trail, rules.as_ref())
            }
            EventKind::Confirmation => {
                judged += 1;
                judge_confirmation(b, trail)
            }
            EventKind::EscalationResolved => {
                judged += 1;
                judge_resolution(b, trail)
            }
            _ => None,
        };
        if let Some(rule) = broken {
            report.push(Code::DecisionUnjustified, format!("receipt {} (log index {})", b.id, b.log_index), rule);
        }
    }
    if unknown_trail > 0 {
        report.notes.push(format!(
            "{unknown_trail} decisions not judged: their authorization.created receipt is not in the bundle"
        ));
    }
    if unknown_rules > 0 {
        report.notes.push(format!(
            "{unknown_rules} checks precede every scope_rules.changed receipt of the bundle: the rules they were \
             decided under are unknown, so only whether their authorization allowed them was judged"
        ));
    }
    judged
}

fn rule(r: RuleKind) -> Rule {
    match r {
        RuleKind::Confirm => Rule::Confirm,
        RuleKind::Escalate => Rule::Escalate,
    }
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Confirm => "confirm",
        Verdict::Escalate => "escalate",
    }
}

/// A `check`: an allow, confirm or escalate must be what the decision table gives for the grant,
/// its revocation or expiry and (when the bundle shows them) the rules in force.
fn judge_check<'a>(b: &'a ReceiptBody, trail: &mut TrailState<'a>, rules: Option<&Rules<'_>>) -> Option<String> {
    let ask = Ask { scopes: &b.scopes, resource: b.resource.as_deref(), now_ms: b.time.unix_ms() };
    let deadline_ms = b.expires_at.map(|t| t.unix_ms());
    // What the check opened is open whatever the verdict on it: it was asked.
    match b.decision {
        Some(Decision::Confirm) => trail.confirmations.push(OpenConfirmation {
            scopes: &b.scopes,
            resource: b.resource.as_deref(),
            deadline_ms,
            answered: false,
        }),
        Some(Decision::Escalate) => {
            if let Some(id) = b.escalation_id.as_deref() {
                trail.escalations.insert(id, OpenEscalation { deadline_ms, resolved: false });
            }
        }
        _ => {}
    }
    let recorded = match b.decision? {
        Decision::Deny => return None,
        Decision::Allow => Verdict::Allow,
        Decision::Confirm => Verdict::Confirm,
        Decision::Escalate => Verdict::Escalate,
    };
    let grant = trail.body.grant.as_ref()?;
    let g = decide::Grant {
        scopes: &grant.scopes,
        resources: &grant.resources,
        expires_at_ms: trail.expires_at_ms(),
        revoked: trail.ended.is_some(),
    };
    let word = verdict_word(recorded);
    if let Some(reason) = decide::denial(g, ask) {
        let why = match (reason, trail.ended) {
            (Reason::Revoked, Some(end)) => format!("the authorization ended at log index {}", end.log_index),
            _ => format!("the grant (log index {}) gives deny, {}", trail.body.log_index, reason.as_str()),
        };
        return Some(format!("{word}, but {why}"));
    }
    let rules = rules?;
    let expected = match decide::required(ask, &rules.set) {
        Some(Rule::Escalate) => Verdict::Escalate,
        Some(Rule::Confirm) => Verdict::Confirm,
        None => Verdict::Allow,
    };
    (expected != recorded).then(|| {
        format!(
            "{word}, but the scope rules in force (log index {}) call for {}",
            rules.at.log_index,
            verdict_word(expected)
        )
    })
}

/// Why an answer that allows is not justified by the trail's state alone (rows 1-2 and the
/// person's outcome), if it is not.
fn judge_allowing_answer(b: &ReceiptBody, trail: &TrailState<'_>) -> Option<String> {
    if let Some(end) = trail.ended {
        return Some(format!("allow, but the authorization ended at log index {}", end.log_index));
    }
    if trail.expires_at_ms().is_some_and(|t| b.time.unix_ms() >= t) {
        return Some("allow, but the authorization had expired".into());
    }
    if b.approval.as_ref().map(|a| a.outcome) != Some(ApprovalOutcome::Approved) {
        return Some("allow, but no answer approved it".into());
    }
    None
}

/// A `confirmation`: an answer (not a refused attempt) uses up one open confirmation of the same
/// request, in time; an allow must also be justified by the trail and the person's outcome.
fn judge_confirmation(b: &ReceiptBody, trail: &mut TrailState<'_>) -> Option<String> {
    let answers = !b.reason.as_deref().is_some_and(|r| REFUSED_ANSWERS.contains(&r));
    let now = b.time.unix_ms();
    let mut found = false;
    if answers {
        // Of the confirmations this answer could be for, the one whose deadline comes first:
        // whichever the person answered, this choice leaves the most later answers justified.
        let open = trail
            .confirmations
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| {
                !c.answered
                    && c.scopes == b.scopes.as_slice()
                    && c.resource == b.resource.as_deref()
                    && c.deadline_ms.is_none_or(|d| now < d)
            })
            .min_by_key(|(i, c)| (c.deadline_ms.unwrap_or(u64::MAX), *i));
        if let Some((_, c)) = open {
            c.answered = true;
            found = true;
        }
    }
    if b.decision != Some(Decision::Allow) {
        return None;
    }
    judge_allowing_answer(b, trail).or_else(|| {
        (!found).then(|| {
            "allow, but it answers no open confirmation of this request (never asked, already answered, or too late)"
                .into()
        })
    })
}

/// An `escalation.resolved`: it resolves an escalation its trail opened, once; an allow must be
/// in time and justified by the trail and the person's outcome.
fn judge_resolution(b: &ReceiptBody, trail: &mut TrailState<'_>) -> Option<String> {
    let now = b.time.unix_ms();
    let state = b.escalation_id.as_deref().and_then(|id| trail.escalations.get_mut(id)).map(|e| {
        let was = (e.resolved, e.deadline_ms.is_some_and(|d| now >= d));
        e.resolved = true;
        was
    });
    if b.decision != Some(Decision::Allow) {
        return None;
    }
    judge_allowing_answer(b, trail).or(match state {
        None => Some("allow, but no escalate check of this trail opened its escalation".into()),
        Some((true, _)) => Some("allow, but its escalation was already resolved".into()),
        Some((false, true)) => Some("allow, but it came after its escalation's deadline".into()),
        Some((false, false)) => None,
    })
}

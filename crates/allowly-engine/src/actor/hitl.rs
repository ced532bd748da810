//! Human in the loop: answering a `confirm` decision and resolving an escalation. Both run in
//! the workspace actor, so two answers to one nonce or escalation are sequenced: the first
//! changes the document's state in the same commit as its receipt, the second sees that state
//! (from the overlay while the first is still staged) and is refused.
//!
//! Every step that the trail must show leaves a receipt in the authorization's trail: the
//! answer (allow/deny with who answered and the hash of what they were shown), a refused
//! attempt on a used or expired nonce, and an escalation's expiry. An unknown nonce or
//! escalation (or another workspace's) has no trail to write into and leaves nothing.

use allowly_receipt::types::{Approval, Decision, EventKind, HexHash, Timestamp};
use allowly_store::{DocKind, Op};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Event, WsState};
use crate::clock::{now_ms, ts};
use crate::error::{EngineError, Refusal, Result};
use crate::metrics::{HitlKind, HitlOutcome};
use crate::model::{
    Answer, AnswerOutcome, ConfirmationStatus, ConfirmationView, EscalationStatus, EscalationView, Resolution,
};
use crate::receipts::pending_envelope;

/// Where a confirmation nonce stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ConfirmationState {
    Pending,
    Used,
    Expired,
}

/// What a `confirm` or `escalate` decision opened: the request waiting for a human, and until
/// when. Flattened into both documents (their stored JSON has these fields at the top level).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Opened {
    authorization_id: String,
    check_receipt_id: String,
    scopes: Vec<String>,
    resource: Option<String>,
    created_at_ms: u64,
    expires_at_ms: u64,
}

impl Opened {
    pub(super) fn new(
        auth: &str,
        receipt: &str,
        scopes: Vec<String>,
        resource: Option<String>,
        now: u64,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            authorization_id: auth.to_owned(),
            check_receipt_id: receipt.to_owned(),
            scopes,
            resource,
            created_at_ms: now,
            expires_at_ms: expires_at.unix_ms(),
        }
    }

    /// Scopes, resource and authorization, as the receipt of an answer needs them.
    fn subject(&self) -> (Vec<String>, Option<String>, String) {
        (self.scopes.clone(), self.resource.clone(), self.authorization_id.clone())
    }
}

/// A `confirm` decision waiting for (or given) the user's answer, filed by nonce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConfirmationDoc {
    #[serde(flatten)]
    opened: Opened,
    state: ConfirmationState,
    answer_receipt_id: Option<String>,
    /// The answer's final decision, reason and time (absent in documents written before
    /// they were kept).
    #[serde(default)]
    decision: Option<Decision>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    answered_at_ms: Option<u64>,
    /// Who answered (absent in documents written before it was kept).
    #[serde(default)]
    by: Option<String>,
}

impl ConfirmationDoc {
    /// The authorization it was opened for.
    pub(super) fn authorization_id(&self) -> &str {
        &self.opened.authorization_id
    }

    pub(super) fn new(opened: Opened) -> Self {
        Self {
            opened,
            state: ConfirmationState::Pending,
            answer_receipt_id: None,
            decision: None,
            reason: None,
            answered_at_ms: None,
            by: None,
        }
    }

    /// The API view as of `now` (a pending nonce past its expiry shows `expired`; its expiry is
    /// recorded in the trail only when someone tries to answer it).
    pub(crate) fn view(&self, nonce: &str, now: u64) -> Result<ConfirmationView> {
        let o = &self.opened;
        let status = match self.state {
            ConfirmationState::Used => ConfirmationStatus::Answered,
            ConfirmationState::Expired => ConfirmationStatus::Expired,
            ConfirmationState::Pending if now >= o.expires_at_ms => ConfirmationStatus::Expired,
            ConfirmationState::Pending => ConfirmationStatus::Pending,
        };
        Ok(ConfirmationView {
            nonce: nonce.to_owned(),
            authorization_id: o.authorization_id.clone(),
            status,
            scopes: o.scopes.clone(),
            resource: o.resource.clone(),
            created_at: ts(o.created_at_ms)?,
            expires_at: ts(o.expires_at_ms)?,
            check_receipt_id: o.check_receipt_id.clone(),
            decision: self.decision,
            reason: self.reason.clone(),
            answered_at: self.answered_at_ms.map(ts).transpose()?,
            by: self.by.clone(),
            answer_receipt_id: self.answer_receipt_id.clone(),
        })
    }
}

impl ConfirmationDoc {
    /// Its entry in the confirmations' due index (`CONFIRMATION_DUE_SCOPE`), which holds ids
    /// alone: `<expiry ms, 16 hex>-<workspace>-<nonce>`, so the count of those not yet
    /// expired is a read of ids, and the expired ones are pruned in order.
    fn due_id(&self, ws: &str, nonce: &str) -> String {
        format!("{:016x}-{ws}-{nonce}", self.opened.expires_at_ms)
    }

    pub(super) fn due_put_op(&self, ws: &str, nonce: &str) -> Op {
        Op::PutDoc {
            kind: DocKind::EscalationDue,
            workspace_id: CONFIRMATION_DUE_SCOPE.into(),
            id: self.due_id(ws, nonce),
            doc: serde_json::json!({}),
        }
    }

    fn due_delete_op(&self, ws: &str, nonce: &str) -> Op {
        Op::DeleteDoc {
            kind: DocKind::EscalationDue,
            workspace_id: CONFIRMATION_DUE_SCOPE.into(),
            id: self.due_id(ws, nonce),
        }
    }
}

/// Where the due index of pending confirmations lives: the escalations' key space, a scope of
/// its own. Only `/metrics` reads it (`allowly_engine_confirmations_pending`); an entry goes
/// when its nonce is answered or found expired, or is pruned after its expiry
/// (`Engine::prune_confirmation_due`). Confirmations opened before it existed have no entry.
pub(crate) const CONFIRMATION_DUE_SCOPE: &str = "_cdue";

/// An escalation to an approver, filed by escalation id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EscalationDoc {
    #[serde(flatten)]
    opened: Opened,
    status: EscalationStatus,
    resolved_at_ms: Option<u64>,
    approver: Option<String>,
    resolution_receipt_id: Option<String>,
    /// The webhook endpoints its `escalation.requested` event was enqueued for (scope routing).
    #[serde(default)]
    pub(super) routed_to: Vec<String>,
}

impl EscalationDoc {
    /// The authorization it was opened for.
    pub(super) fn authorization_id(&self) -> &str {
        &self.opened.authorization_id
    }

    pub(super) fn new(opened: Opened) -> Self {
        Self {
            opened,
            status: EscalationStatus::Pending,
            resolved_at_ms: None,
            approver: None,
            resolution_receipt_id: None,
            routed_to: Vec::new(),
        }
    }

    /// The API view (an escalation past its expiry still shows `pending` until its expiry is
    /// recorded; the engine records it on first read).
    pub(crate) fn view(&self, id: &str) -> Result<EscalationView> {
        let o = &self.opened;
        Ok(EscalationView {
            id: id.to_owned(),
            authorization_id: o.authorization_id.clone(),
            status: self.status,
            scopes: o.scopes.clone(),
            resource: o.resource.clone(),
            created_at: ts(o.created_at_ms)?,
            expires_at: ts(o.expires_at_ms)?,
            check_receipt_id: o.check_receipt_id.clone(),
            resolved_at: self.resolved_at_ms.map(ts).transpose()?,
            by: self.approver.clone(),
            approver: self.approver.clone(),
            resolution_receipt_id: self.resolution_receipt_id.clone(),
            routed_to: self.routed_to.clone(),
        })
    }

    /// The entry that makes the sweep expire it on time.
    pub(crate) fn due(&self, ws: &str, id: &str) -> DueEntry {
        DueEntry { workspace_id: ws.to_owned(), escalation_id: id.to_owned(), expires_at_ms: self.opened.expires_at_ms }
    }

    pub(crate) fn is_overdue(&self, now: u64) -> bool {
        self.status == EscalationStatus::Pending && now >= self.opened.expires_at_ms
    }
}

/// Where the due index of pending escalations lives (`DocKind::EscalationDue`): one scope for
/// all workspaces, so the sweep reads overdue escalations in due order.
pub(crate) const DUE_SCOPE: &str = "_due";

/// An escalation's entry in the due index (zero-padded hex sorts by time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DueEntry {
    pub workspace_id: String,
    pub escalation_id: String,
    pub expires_at_ms: u64,
}

impl DueEntry {
    pub(crate) fn id(&self) -> String {
        format!("{:016x}-{}-{}", self.expires_at_ms, self.workspace_id, self.escalation_id)
    }

    pub(crate) fn delete_op(&self) -> Op {
        Op::DeleteDoc { kind: DocKind::EscalationDue, workspace_id: DUE_SCOPE.into(), id: self.id() }
    }
}

/// An answer's outcome for the metric: the action allowed, or denied (declined, or the
/// authorization revoked or expired meanwhile).
fn answer_outcome(decision: Decision) -> HitlOutcome {
    if decision == Decision::Allow {
        HitlOutcome::Approved
    } else {
        HitlOutcome::Declined
    }
}

fn sha256_text(s: &str) -> HexHash {
    HexHash(Sha256::digest(s.as_bytes()).into())
}

/// What a receipt records of a person's answer, the same for confirmations and escalations:
/// who, their outcome, the hash of what they were shown and of what they noted (format 1.1;
/// 1.0 put an escalation note's hash in `shown_hash`).
fn approval(answer: &Answer) -> Approval {
    Approval {
        outcome: answer.outcome.approval(),
        by: answer.by.clone(),
        shown_hash: answer.shown.as_deref().map(sha256_text).or(answer.shown_hash),
        note_hash: answer.note.as_deref().map(sha256_text),
    }
}

/// The reason of an answer's receipt when the authorization still allows it: the person's
/// outcome, in the same words for confirmations and escalations.
const APPROVED: &str = "approved";
const DECLINED: &str = "declined";

fn refused<T>(kind: Refusal, code: &'static str, message: &str) -> Result<(Vec<Op>, Result<T>)> {
    Err(EngineError::refused(kind, code, message))
}

/// What a step records: the event, the decision and the approval.
struct Step {
    kind: EventKind,
    decision: Decision,
    reason: &'static str,
    approval: Option<Approval>,
    escalation_id: Option<String>,
}

impl WsState {
    /// Appends one receipt of `step` to `auth_id`'s trail (recording the authorization's expiry
    /// first if this is the first time it matters) and returns the ops and the receipt.
    fn record(
        &mut self,
        auth_id: &str,
        scopes: &[String],
        resource: &Option<String>,
        step: Step,
        now: u64,
    ) -> Result<(Vec<Op>, allowly_store::ReceiptRecord)> {
        let Some(mut a) = self.authorization(auth_id)? else {
            return Err(EngineError::Internal(format!("authorization {auth_id} of a pending step is missing")));
        };
        let time = ts(now)?;
        let mut index = self.next_index;
        let mut receipts = Vec::with_capacity(2);
        let expired = a.expires_at_ms.is_some_and(|t| now >= t) && a.revoked_at_ms.is_none();
        if expired {
            self.record_expiry(&mut a, &mut index, time, &mut receipts)?;
        }
        let ev = Event {
            kind: step.kind,
            decision: Some(step.decision),
            reason: Some(step.reason),
            scopes: scopes.to_vec(),
            resource: resource.clone(),
            time,
        };
        let rec = self.receipt(&mut a, &mut index, ev, |b| {
            b.approval = step.approval;
            b.escalation_id = step.escalation_id;
        })?;
        receipts.push(rec.clone());
        Ok((self.advance(a, index, receipts), rec))
    }

    /// The decision an approval turns into, given the authorization as it is now: a revoked or
    /// expired authorization turns any answer into a deny.
    fn final_decision(
        &mut self,
        auth_id: &str,
        approved: bool,
        yes: &'static str,
        no: &'static str,
        now: u64,
    ) -> Result<(Decision, &'static str)> {
        let a = self.authorization(auth_id)?;
        Ok(match a {
            Some(a) if a.revoked_at_ms.is_some() => (Decision::Deny, "revoked"),
            Some(a) if a.expires_at_ms.is_some_and(|t| now >= t) => (Decision::Deny, "expired"),
            Some(_) if approved => (Decision::Allow, yes),
            Some(_) => (Decision::Deny, no),
            None => return Err(EngineError::Internal(format!("authorization {auth_id} is missing"))),
        })
    }

    pub(super) fn confirm(&mut self, nonce: &str, answer: Answer) -> Result<(Vec<Op>, Result<Resolution>)> {
        let now = self.receipt_now();
        let Some((mut doc, _)) = self.doc::<ConfirmationDoc>(DocKind::Confirmation, nonce)? else {
            return Err(EngineError::NotFound { what: "confirmation" });
        };
        let approval = Some(approval(&answer));
        let (scopes, resource, auth) = doc.opened.subject();
        let attempt = |reason| Step {
            kind: EventKind::Confirmation,
            decision: Decision::Deny,
            reason,
            approval: approval.clone(),
            escalation_id: None,
        };
        let overdue = doc.state == ConfirmationState::Pending && now >= doc.opened.expires_at_ms;
        if doc.state == ConfirmationState::Used || doc.state == ConfirmationState::Expired || overdue {
            // The trail shows the refused attempt.
            let (kind, code, message) = if doc.state == ConfirmationState::Used {
                (Refusal::Conflict, "confirmation_used", "this confirmation was already answered")
            } else {
                (Refusal::Expired, "confirmation_expired", "this confirmation has expired")
            };
            let reason = code;
            let (mut ops, rec) = self.record(&auth, &scopes, &resource, attempt(reason), now)?;
            if overdue {
                doc.state = ConfirmationState::Expired;
                self.put_doc(&mut ops, DocKind::Confirmation, nonce, &doc)?;
                ops.push(doc.due_delete_op(&self.ws.id, nonce));
                self.shared.metrics.hitl_answered(HitlKind::Confirmation, HitlOutcome::Expired);
            }
            let receipt = Some(Box::new(pending_envelope(&rec)?));
            return Ok((ops, Err(EngineError::Refused { kind, code, message: message.into(), receipt })));
        }
        let approved = answer.outcome == AnswerOutcome::Approved;
        let (decision, reason) = self.final_decision(&auth, approved, APPROVED, DECLINED, now)?;
        let step = Step { kind: EventKind::Confirmation, decision, reason, approval, escalation_id: None };
        let (mut ops, rec) = self.record(&auth, &scopes, &resource, step, now)?;
        doc.state = ConfirmationState::Used;
        doc.answer_receipt_id = Some(rec.id.clone());
        (doc.decision, doc.reason, doc.answered_at_ms) = (Some(decision), Some(reason.to_owned()), Some(now));
        doc.by = Some(answer.by);
        self.put_doc(&mut ops, DocKind::Confirmation, nonce, &doc)?;
        ops.push(doc.due_delete_op(&self.ws.id, nonce));
        self.shared.metrics.hitl_answered(HitlKind::Confirmation, answer_outcome(decision));
        Ok((
            ops,
            Ok(Resolution { decision, reason: reason.into(), receipt: pending_envelope(&rec)?, escalation: None }),
        ))
    }

    /// Resolves an escalation with the approver's answer, or (`None`) as expired.
    pub(super) fn resolve(&mut self, id: &str, answer: Option<Answer>) -> Result<(Vec<Op>, Result<Resolution>)> {
        let now = self.receipt_now();
        let Some((mut doc, _)) = self.doc::<EscalationDoc>(DocKind::Escalation, id)? else {
            return Err(EngineError::NotFound { what: "escalation" });
        };
        if doc.status != EscalationStatus::Pending {
            return refused(Refusal::Conflict, "escalation_already_resolved", "this escalation was already resolved");
        }
        // Read before anything changes, so a store error leaves the actor's state as it was.
        let endpoints = self.endpoint_list()?;
        let (scopes, resource, auth) = doc.opened.subject();
        if now >= doc.opened.expires_at_ms || answer.is_none() {
            if now < doc.opened.expires_at_ms {
                return Err(EngineError::Internal("escalation expired before its time".into()));
            }
            let step = Step {
                kind: EventKind::EscalationResolved,
                decision: Decision::Deny,
                reason: "escalation_expired",
                approval: None,
                escalation_id: Some(id.to_owned()),
            };
            let (mut ops, rec) = self.record(&auth, &scopes, &resource, step, now)?;
            doc.status = EscalationStatus::Expired;
            doc.resolved_at_ms = Some(now);
            doc.resolution_receipt_id = Some(rec.id.clone());
            self.put_doc(&mut ops, DocKind::Escalation, id, &doc)?;
            ops.push(doc.due(&self.ws.id, id).delete_op());
            ops.extend(self.resolved_event(&endpoints, id, &doc, Decision::Deny, "escalation_expired", &rec, now)?);
            self.shared.metrics.hitl_answered(HitlKind::Escalation, HitlOutcome::Expired);
            let receipt = Some(Box::new(pending_envelope(&rec)?));
            if answer.is_none() {
                let view = doc.view(id)?;
                return Ok((
                    ops,
                    Ok(Resolution {
                        decision: Decision::Deny,
                        reason: "escalation_expired".into(),
                        receipt: pending_envelope(&rec)?,
                        escalation: Some(view),
                    }),
                ));
            }
            return Ok((
                ops,
                Err(EngineError::Refused {
                    kind: Refusal::Expired,
                    code: "escalation_expired",
                    message: "this escalation expired before it was resolved (recorded as deny)".into(),
                    receipt,
                }),
            ));
        }
        let Some(answer) = answer else {
            return Err(EngineError::Internal("unreachable: answer checked above".into()));
        };
        let approved = answer.outcome == AnswerOutcome::Approved;
        let (decision, reason) = self.final_decision(&auth, approved, APPROVED, DECLINED, now)?;
        let approval = approval(&answer);
        let step = Step {
            kind: EventKind::EscalationResolved,
            decision,
            reason,
            approval: Some(approval),
            escalation_id: Some(id.to_owned()),
        };
        let (mut ops, rec) = self.record(&auth, &scopes, &resource, step, now)?;
        doc.status = if decision == Decision::Allow { EscalationStatus::Approved } else { EscalationStatus::Declined };
        doc.resolved_at_ms = Some(now);
        doc.approver = Some(answer.by);
        doc.resolution_receipt_id = Some(rec.id.clone());
        self.put_doc(&mut ops, DocKind::Escalation, id, &doc)?;
        ops.push(doc.due(&self.ws.id, id).delete_op());
        ops.extend(self.resolved_event(&endpoints, id, &doc, decision, reason, &rec, now)?);
        self.shared.metrics.hitl_answered(HitlKind::Escalation, answer_outcome(decision));
        let view = doc.view(id)?;
        Ok((
            ops,
            Ok(Resolution {
                decision,
                reason: reason.into(),
                receipt: pending_envelope(&rec)?,
                escalation: Some(view),
            }),
        ))
    }

    /// The `escalation.resolved` event of `doc` (resolved by `rec`), for whoever wants it.
    #[allow(clippy::too_many_arguments)]
    fn resolved_event(
        &mut self,
        endpoints: &[allowly_webhooks::Endpoint],
        id: &str,
        doc: &EscalationDoc,
        decision: Decision,
        reason: &str,
        rec: &allowly_store::ReceiptRecord,
        now: u64,
    ) -> Result<Vec<Op>> {
        let data = serde_json::json!({
            "workspace_id": self.ws.id,
            "authorization_id": doc.opened.authorization_id,
            "escalation_id": id,
            "status": doc.status,
            "decision": decision,
            "reason": reason,
            "by": doc.approver,
            // Deprecated spelling of `by` (format 1.0's API), until the next release.
            "approver": doc.approver,
            "receipt": pending_envelope(rec)?,
        });
        let ty = allowly_webhooks::EventType::EscalationResolved;
        Ok(self.escalation_event_ops(endpoints, ty, &doc.opened.scopes, now, data)?.0)
    }

    /// Records the expiry of an overdue escalation (no-op answer if it is not overdue).
    pub(super) fn expire_escalation(&mut self, id: &str) -> Result<(Vec<Op>, Result<EscalationView>)> {
        let Some((doc, _)) = self.doc::<EscalationDoc>(DocKind::Escalation, id)? else {
            return Err(EngineError::NotFound { what: "escalation" });
        };
        if !doc.is_overdue(now_ms()) {
            return Ok((Vec::new(), doc.view(id)));
        }
        let (ops, r) = self.resolve(id, None)?;
        Ok((ops, r.and_then(|res| res.escalation.ok_or_else(|| EngineError::Internal("no escalation view".into())))))
    }
}

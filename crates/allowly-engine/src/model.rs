//! Request and answer types of the engine's API. Their serde forms are the JSON the HTTP API
//! speaks (the server adds no fields of its own), so renaming a field here is an API change.
//! Request types reject unknown fields: a misspelt optional field must not be silently ignored.

use std::collections::BTreeMap;

use allowly_receipt::types::{
    AnyReceipt, ApprovalOutcome, Decision, HexHash, KeySet, PendingReceipt, RawBody, SignedReceipt, Timestamp,
};
use allowly_store::{RateLimit, Role, ScopeRule};
use serde::{Deserialize, Serialize};

/// Webhook endpoints and deliveries (`/v1/webhooks`, `/v1/deliveries`): defined beside the
/// documents they view, in `allowly-webhooks`.
pub use allowly_webhooks::model::{
    AttemptView, CreatedWebhook, DeliveryStatus, DeliveryView, DisabledReason, EventType, FailureReason, NewWebhook,
    WebhookView,
};

/// `POST /v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// Display name, 1..=200 characters.
    pub name: String,
    /// Scope patterns that need a confirmation or an escalation (see `decide`).
    #[serde(default)]
    pub scope_rules: BTreeMap<String, ScopeRule>,
}

/// `PUT /v1/workspaces/{id}/scope-rules`: replaces the whole rule set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScopeRules {
    pub scope_rules: BTreeMap<String, ScopeRule>,
}

/// Answer to `PUT /v1/workspaces/{id}/scope-rules`: the workspace with its new rules (the
/// members of [`WorkspaceView`]) and the receipt that logs the change (format 1.1:
/// `scope_rules.changed`, the whole new rule set, a workspace event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScopeRulesChange {
    #[serde(flatten)]
    pub workspace: WorkspaceView,
    pub receipt: PendingReceipt<RawBody>,
}

/// `PUT /v1/workspaces/{id}/rate-limit` (instance admin): the request rate each API key of
/// the workspace may use. `null` (or no field) goes back to the instance's default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimitSetting {
    pub rate_limit: Option<RateLimit>,
}

/// A workspace as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub scope_rules: BTreeMap<String, ScopeRule>,
    /// The per-API-key rate limit set for this workspace; `null`: the instance's default.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// `POST /v1/workspaces/{id}/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// Non-empty set of `check`, `read`, `admin`.
    pub roles: Vec<Role>,
}

/// An API key as the API shows it (never the secret, never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyView {
    pub id: String,
    /// `None` for the instance admin key.
    pub workspace_id: Option<String>,
    pub roles: Vec<Role>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Answer to creating an API key: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// `alw_<64 hex>`; stored only as its SHA-256.
    pub secret: String,
}

/// Who is calling: the authenticated API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    /// `None` = instance admin (may act on every workspace, admin endpoints only).
    pub workspace_id: Option<String>,
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether the key holds `role` (admin implies every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// `POST /v1/authorizations`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAuthorization {
    /// The app's identifier of the user who approved (1..=256 characters).
    pub subject: String,
    /// 1..=64 scope names or patterns (`*`, `a.b.*`).
    pub scopes: Vec<String>,
    /// Resource constraints (exact, or `prefix*`); empty = any resource.
    #[serde(default)]
    pub resources: Vec<String>,
    /// When the authorization stops allowing anything; must be in the future.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// App data kept with the authorization (≤ 16 KiB as JSON); receipts carry only its hash.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Lifecycle state of an authorization, as of the time it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationStatus {
    Active,
    Revoked,
    Expired,
}

/// An authorization as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthorizationView {
    pub id: String,
    pub workspace_id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub resources: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<serde_json::Value>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub status: AuthorizationStatus,
    /// Number of receipts in its trail so far (the next receipt's `seq`).
    pub trail_length: u64,
}

/// Which authorizations `GET /v1/authorizations` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizationFilter {
    /// Only this subject's.
    pub subject: Option<String>,
    /// Only those in this state (as of now).
    pub status: Option<AuthorizationStatus>,
}

/// Which confirmations or escalations `GET /v1/confirmations` and `GET /v1/escalations` list
/// (the approver inbox). `S` is their status type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitlFilter<S> {
    /// Only those in this state (as of now).
    pub status: Option<S>,
    /// Only those opened by checks of this authorization.
    pub authorization_id: Option<String>,
    /// Only those whose check asked for this scope.
    pub scope: Option<String>,
}

impl<S> Default for HitlFilter<S> {
    fn default() -> Self {
        Self { status: None, authorization_id: None, scope: None }
    }
}

impl<S> HitlFilter<S> {
    /// Whether an object of `authorization_id` asking for `scopes` passes the non-status parts.
    pub fn matches(&self, authorization_id: &str, scopes: &[String]) -> bool {
        self.authorization_id.as_deref().is_none_or(|a| a == authorization_id)
            && self.scope.as_ref().is_none_or(|s| scopes.contains(s))
    }
}

/// Answer to creating or revoking an authorization: its new state and the receipt recording it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthorizationChange {
    pub authorization: AuthorizationView,
    pub receipt: PendingReceipt<RawBody>,
}

/// `POST /v1/check`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub authorization_id: String,
    /// 1..=64 scope names (no patterns).
    pub scopes: Vec<String>,
    /// The resource acted on, if any (1..=1024 characters).
    #[serde(default)]
    pub resource: Option<String>,
    /// What the agent is about to do (≤ 16 KiB as JSON); receipts carry only its hash.
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// Answer to `POST /v1/check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckOutcome {
    pub decision: Decision,
    /// Stable reason code (`granted`, `unknown_authorization`, `revoked`, `expired`,
    /// `scope_not_granted`, `resource_not_covered`, `confirmation_required`,
    /// `escalation_required`).
    pub reason: String,
    /// The durable, not yet signed receipt of this decision: every decision has one (format
    /// 1.1: an `unknown_authorization` deny's is a workspace event, in no trail). `null` only
    /// in an answer recorded under an `Idempotency-Key` by an older version, replayed.
    pub receipt: Option<PendingReceipt<RawBody>>,
    /// Set when `decision` is `confirm`.
    pub confirmation: Option<ConfirmationInfo>,
    /// Set when `decision` is `escalate`.
    pub escalation: Option<EscalationInfo>,
}

/// What the user must be shown and answer for a `confirm` decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfirmationInfo {
    /// Single-use nonce (`cn_…`).
    pub nonce: String,
    pub expires_at: Timestamp,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
}

/// Where a confirmation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConfirmationStatus {
    Pending,
    /// Answered once (the answer's decision and receipt are shown).
    Answered,
    /// Past its expiry without an answer.
    Expired,
}

/// A confirmation as the API shows it (`GET /v1/confirmations/{nonce}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfirmationView {
    pub nonce: String,
    pub authorization_id: String,
    pub status: ConfirmationStatus,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Receipt of the check that asked for the confirmation.
    pub check_receipt_id: String,
    /// The final decision of the answer (a revoked or expired authorization turns an approval
    /// into a deny).
    pub decision: Option<Decision>,
    pub reason: Option<String>,
    pub answered_at: Option<Timestamp>,
    /// Who answered (the receipt's `approval.by`; absent for answers recorded before 1.1).
    #[serde(default)]
    pub by: Option<String>,
    pub answer_receipt_id: Option<String>,
}

/// The escalation an `escalate` decision opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EscalationInfo {
    /// Escalation id (`esc_…`), also in the receipt body.
    pub id: String,
    pub expires_at: Timestamp,
}

/// A receipt in whichever state it is in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ReceiptView {
    Signed(SignedReceipt<RawBody>),
    Pending(PendingReceipt<RawBody>),
}

impl ReceiptView {
    /// The receipt as bundles and the verifiers hold it (body parsed).
    pub fn into_any(self) -> serde_json::Result<AnyReceipt> {
        Ok(match self {
            Self::Signed(s) => AnyReceipt::Signed(s.parsed()?),
            Self::Pending(p) => AnyReceipt::Pending(p.parsed()?),
        })
    }
}

/// One page of a list. Pass `next_cursor` as `starting_after` to get the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// The newest signed checkpoint of a workspace log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointView {
    pub workspace_id: String,
    pub size: u64,
    /// The C2SP signed note, with the witnesses' cosignatures stored for it (docs/witness.md).
    pub checkpoint: String,
    /// Only when the server requires a witness quorum (docs/witness.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessStatus>,
}

/// Where the witnesses are: receipts at log indices below `witnessed_size` are reported signed;
/// those above it whose checkpoint is stored wait for the witnesses (pending, reason
/// `witness_quorum`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WitnessStatus {
    /// Distinct witnesses whose cosignatures a checkpoint needs.
    pub quorum: usize,
    /// Size of the newest checkpoint cosigned by the quorum (absent: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witnessed_size: Option<u64>,
}

/// An RFC 9162 inclusion proof of one leaf in the tree of `tree_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InclusionProofView {
    pub log_index: u64,
    pub tree_size: u64,
    pub leaf_hash: HexHash,
    pub proof: Vec<HexHash>,
    /// The signed checkpoint of `tree_size`.
    pub checkpoint: String,
}

/// An RFC 9162 consistency proof between two tree sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsistencyProofView {
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<HexHash>,
    /// The signed checkpoints of both sizes.
    pub old_checkpoint: String,
    pub new_checkpoint: String,
}

/// What an evidence bundle covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportScope {
    /// The whole trail of one authorization.
    Authorization(String),
    /// Log leaves `[from, to)`.
    Log { from: u64, to: u64 },
}

/// Readiness as `/readyz` reports it: ready iff `causes` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    pub ready: bool,
    /// Whether the last exchange with the signer succeeded recently.
    pub signer: bool,
    /// Human-readable reasons when not ready (every cause's detail, `; `-separated), or, while
    /// ready, why some workspaces are not.
    pub detail: Option<String>,
    /// Every reason not to send work here, in a fixed order; each `code` is the problem code
    /// the refused calls answer with.
    #[serde(default)]
    pub causes: Vec<NotReady>,
    /// Workspaces whose log diverged from the signer's: each refuses new receipts (503 with its
    /// `code`) until resynced. A fork (`workspace_log_diverged`) does not make the instance
    /// unready; a store behind its signer (`workspace_log_behind_signer`, receipts that were
    /// handed out are missing) does, with a cause of that code.
    #[serde(default)]
    pub diverged_workspaces: Vec<DivergedWorkspace>,
}

/// One reason `/readyz` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotReady {
    /// Stable code: `shutting_down`, `signer_unavailable`, `signer_slow`,
    /// `signer_token_unavailable`, a fault's code
    /// (`storage_full`, `storage_failed`, `signer_storage_failed`, `signing_backlog`), or
    /// `workspace_log_behind_signer`.
    pub code: String,
    /// What is wrong, for the operator.
    pub detail: String,
}

impl Readiness {
    /// Readiness from its causes (none: ready), with no diverged workspaces yet.
    pub fn from_causes(signer: bool, causes: Vec<NotReady>) -> Self {
        let detail = (!causes.is_empty())
            .then(|| causes.iter().map(|c| format!("{}: {}", c.code, c.detail)).collect::<Vec<_>>().join("; "));
        Self { ready: causes.is_empty(), signer, detail, causes, diverged_workspaces: Vec::new() }
    }
}

/// One workspace in [`Readiness::diverged_workspaces`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DivergedWorkspace {
    pub workspace_id: String,
    /// `workspace_log_diverged` or `workspace_log_behind_signer`: what its refusals answer.
    pub code: String,
    /// Unix ms when it was found (what disagreed is in the engine's log, not on this public
    /// endpoint).
    pub since_ms: u64,
}

/// A person's answer to a `confirm` decision (`POST /v1/confirmations/{nonce}`, the user) or
/// to an escalation (`POST /v1/escalations/{id}/resolve`, the approver): one vocabulary for
/// both, the receipt's (`approval`: `outcome`, `by`, `shown_hash`, `note_hash`).
///
/// Deprecated spellings of the escalation answer before format 1.1, accepted until the next
/// release: `approver` for `by`, and `denied` for `declined`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// `approved` or `declined`.
    pub outcome: AnswerOutcome,
    /// Who answered, as the app knows them (1..=256 characters).
    #[serde(alias = "approver")]
    pub by: String,
    /// Exactly what they were shown (≤ 16 KiB); only its SHA-256 is kept, in the receipt.
    #[serde(default)]
    pub shown: Option<String>,
    /// Or the SHA-256 of it, computed by the app (64 hex digits). At most one of the two.
    #[serde(default)]
    pub shown_hash: Option<HexHash>,
    /// What they wrote with their answer (≤ 4 KiB); only its SHA-256 is kept, in the receipt.
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /v1/confirmations/{nonce}`: the user's answer to a `confirm` decision.
pub type ConfirmationAnswer = Answer;

/// `POST /v1/escalations/{id}/resolve`: the approver's answer.
pub type EscalationAnswer = Answer;

/// A person's answer: the receipt's `approval.outcome` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AnswerOutcome {
    Approved,
    /// `denied`: the escalation answer's deprecated spelling (format 1.0's API).
    #[serde(alias = "denied")]
    Declined,
}

impl AnswerOutcome {
    /// The outcome as a receipt records it.
    pub fn approval(self) -> ApprovalOutcome {
        match self {
            Self::Approved => ApprovalOutcome::Approved,
            Self::Declined => ApprovalOutcome::Declined,
        }
    }
}

/// The final decision of a confirmation or an escalation, and its receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resolution {
    /// `allow` or `deny`.
    pub decision: Decision,
    /// `approved`, `declined` (the person's answer), `revoked` or `expired` (the authorization
    /// was revoked or expired while waiting), or `escalation_expired` (nobody answered in time).
    pub reason: String,
    pub receipt: PendingReceipt<RawBody>,
    /// The escalation after this step (escalations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationView>,
}

/// Where an escalation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EscalationStatus {
    Pending,
    Approved,
    /// Declined by the approver, or approved after the authorization was revoked or expired
    /// (the receipt says which). Stored documents of earlier versions say `denied`.
    #[serde(alias = "denied")]
    Declined,
    /// Expired before anyone answered (resolved to deny, with a receipt).
    Expired,
}

/// An escalation as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EscalationView {
    pub id: String,
    pub authorization_id: String,
    pub status: EscalationStatus,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Receipt of the check that escalated.
    pub check_receipt_id: String,
    pub resolved_at: Option<Timestamp>,
    /// Who answered (the receipt's `approval.by`).
    pub by: Option<String>,
    /// Deprecated: the same as `by` (its name before format 1.1), until the next release.
    pub approver: Option<String>,
    /// Receipt of the resolution (or of the expiry).
    pub resolution_receipt_id: Option<String>,
    /// Ids of the webhook endpoints its `escalation.requested` event was sent to (those
    /// subscribed whose `scopes` filter matches; see `POST /v1/webhooks`).
    pub routed_to: Vec<String>,
}

/// `POST /v1/workspaces/{ws}/log/resync`: what the resync found (see `Engine::resync_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resynced {
    /// Whether the workspace was marked diverged (a resync of a healthy one changes nothing).
    pub was_diverged: bool,
    /// The stored signed size after the resync (the signer's, if it was ahead and adopted).
    pub signed_size: u64,
    /// The stored log's size (committed receipts); those above `signed_size` are signed next.
    pub stored_size: u64,
}

/// `POST /v1/workspaces/{ws}/keys/rotate`: the workspace's keys after the rotation (every key,
/// the old one retired with its `not_after`) and the signed `key.rotated` receipt that logs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRotation {
    pub keys: KeySet,
    pub receipt: SignedReceipt<RawBody>,
}

/// Where keyed requests that belong to no workspace (workspace creation) file their
/// `Idempotency-Key` records: a document scope no workspace id can take (those are `ws_…`).
pub(crate) const INSTANCE_SCOPE: &str = "_instance";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(json: &str, expect: Option<(AnswerOutcome, &str, Option<&str>)>) {
        let got = serde_json::from_str::<Answer>(json).ok().map(|a| (a.outcome, a.by, a.note));
        let expect = expect.map(|(o, by, note)| (o, by.to_owned(), note.map(str::to_owned)));
        assert_eq!(got, expect, "{json}");
    }

    /// One vocabulary for both answers; the escalation answer's 1.0 spellings (`approver`,
    /// `denied`) still read, as the same answer, until the next release.
    #[test]
    fn answers_read_the_new_and_the_deprecated_spellings() {
        use AnswerOutcome::*;
        check(r#"{"outcome":"approved","by":"cfo"}"#, Some((Approved, "cfo", None)));
        check(r#"{"outcome":"declined","by":"cfo","note":"no"}"#, Some((Declined, "cfo", Some("no"))));
        check(r#"{"outcome":"denied","approver":"cfo","note":"no"}"#, Some((Declined, "cfo", Some("no"))));
        check(r#"{"outcome":"approved","approver":"cfo"}"#, Some((Approved, "cfo", None)));
        check(r#"{"outcome":"approved","by":"a","shown":"x","shown_hash":null}"#, Some((Approved, "a", None)));
        // One name per member, and nothing else.
        check(r#"{"outcome":"approved","by":"a","approver":"b"}"#, None);
        check(r#"{"outcome":"approved","by":"a","approvr":"b"}"#, None);
        check(r#"{"outcome":"rejected","by":"a"}"#, None);
        check(r#"{"outcome":"approved"}"#, None);
        // Written back (the Idempotency-Key's request hash), an old spelling is the new one.
        let old: Answer = serde_json::from_str(r#"{"outcome":"denied","approver":"cfo"}"#).unwrap();
        let new: Answer = serde_json::from_str(r#"{"by":"cfo","outcome":"declined"}"#).unwrap();
        assert_eq!(serde_json::to_value(&old).unwrap(), serde_json::to_value(&new).unwrap());
        // Escalations stored by earlier versions say `denied`.
        assert_eq!(serde_json::from_str::<EscalationStatus>(r#""denied""#).unwrap(), EscalationStatus::Declined);
        assert_eq!(serde_json::to_string(&EscalationStatus::Declined).unwrap(), r#""declined""#);
    }
}

//! The documents of the receipt format (normative text: `docs/receipt-format.md`).
//!
//! A receipt *body* is hashed exactly as it was produced (its RFC 8785 canonical bytes), so the
//! typed [`ReceiptBody`] is a *view* used to check and interpret a body; verification always hashes
//! the JSON value it was given, never a re-serialisation of the view. Fields a v1 verifier does not
//! know are therefore still covered by the signature.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::merkle::{self, Hash};
use crate::note::NoteVerifier;
use crate::{jcs, Error, Result};

/// The receipt body format version this crate produces and verifies.
pub const FORMAT_VERSION: u64 = 1;

/// Longest id (receipt, workspace, authorization, escalation) accepted.
pub const MAX_ID_LEN: usize = 128;

/// The checkpoint extension line that carries the signer's clock (`time <timestamp>`).
pub const TIME_EXTENSION_PREFIX: &str = "time ";

/// The transparency-log origin (and note key name) of a workspace: `allowly/<workspace_id>`.
pub fn log_origin(workspace_id: &str) -> String {
    format!("allowly/{workspace_id}")
}

/// The id alphabet as a table: every store key names several ids and the store checks each one
/// on every write (a byte-by-byte range test was ~1 % of the server's CPU per check).
static ID_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    t
};

/// Checks the id alphabet: 1..=128 of `[A-Za-z0-9_-]`. Ids end up in URLs, note origins and file
/// names, so the alphabet is deliberately small.
pub fn validate_id(field: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| ID_BYTE[usize::from(b)]);
    if ok {
        Ok(())
    } else {
        Err(Error::Field { field, msg: format!("{id:?} is not 1..={MAX_ID_LEN} of [A-Za-z0-9_-]") })
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars with one canonical text form.

/// A SHA-256 value, written as 64 lowercase hex digits (one spelling only, so equal hashes are
/// equal strings and the canonical bytes of a body cannot vary).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexHash(pub Hash);

impl HexHash {
    /// Parses exactly 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut out = [0u8; 32];
        if s.len() != 64 || !lower || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(Error::Field { field: "hash", msg: "expected 64 lowercase hex digits".into() });
        }
        Ok(Self(out))
    }
}

impl fmt::Display for HexHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for HexHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexHash({self})")
    }
}

impl HexHash {
    /// The 64 lowercase hex digits, without allocating.
    pub(crate) fn hex_digits(&self) -> [u8; 64] {
        let mut buf = [0u8; 64];
        // Infallible: the buffer is exactly twice the input length.
        let _ = hex::encode_to_slice(self.0, &mut buf);
        buf
    }
}

impl Serialize for HexHash {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.hex_digits()).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for HexHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Milliseconds since the Unix epoch on this machine's wall clock (0 if it is before 1970): the
/// one clock every Allowly crate reads for the times it stores, signs and compares, so that
/// none of them rounds or fails differently.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A UTC instant with millisecond precision, written `YYYY-MM-DDTHH:MM:SS.sssZ` (RFC 3339, one
/// fixed width form so that equal instants are equal strings). Stored as milliseconds since the
/// Unix epoch; years 1970..=9999.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 9999-12-31T23:59:59.999Z, the last instant the text form can express.
    pub const MAX_MS: u64 = 253_402_300_799_999;

    /// From milliseconds since the epoch; errors beyond year 9999.
    pub fn from_unix_ms(ms: u64) -> Result<Self> {
        if ms > Self::MAX_MS {
            return Err(Error::Field { field: "time", msg: "after 9999-12-31".into() });
        }
        Ok(Self(ms))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> u64 {
        self.0
    }

    /// Parses the one accepted form, `YYYY-MM-DDTHH:MM:SS.sssZ`, checking every field's range.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Field { field: "time", msg: format!("{s:?} is not YYYY-MM-DDTHH:MM:SS.sssZ (UTC)") };
        let b = s.as_bytes();
        if b.len() != 24
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[23] != b'Z'
        {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u64> {
            b[r.clone()].iter().try_fold(0u64, |acc, &c| {
                if c.is_ascii_digit() {
                    Ok(acc * 10 + u64::from(c - b'0'))
                } else {
                    Err(bad())
                }
            })
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
        if y < 1970 || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59 {
            return Err(bad());
        }
        let days = days_from_civil(y, mo, d);
        Ok(Self((((days * 24 + h) * 60 + mi) * 60 + sec) * 1000 + ms))
    }
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms, restricted to years >= 1970 (no negative eras).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

impl Timestamp {
    /// Year, month, day, hour, minute, second, millisecond (UTC).
    fn parts(self) -> (u64, u64, u64, u64, u64, u64, u64) {
        let secs = self.0 / 1000;
        let (y, mo, d) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        (y, mo, d, rem / 3600, rem / 60 % 60, rem % 60, self.0 % 1000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, ms) = self.parts();
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// The receipt body.

/// What happened. A closed set in format v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A user approved scopes: seq 0 of an authorization's trail; carries the full grant.
    #[serde(rename = "authorization.created")]
    AuthorizationCreated,
    /// A `/v1/check` decision.
    #[serde(rename = "check")]
    Check,
    /// A user's answer to a `confirm` decision.
    #[serde(rename = "confirmation")]
    Confirmation,
    /// A check escalated to a third-party approver.
    #[serde(rename = "escalation.created")]
    EscalationCreated,
    /// The approver's answer (or the escalation's expiry).
    #[serde(rename = "escalation.resolved")]
    EscalationResolved,
    /// The authorization was revoked.
    #[serde(rename = "revocation")]
    Revocation,
    /// The authorization's expiry was recorded (the first time it mattered).
    #[serde(rename = "expiry")]
    Expiry,
    /// The workspace signing key was rotated (a workspace event: no authorization).
    #[serde(rename = "key.rotated")]
    KeyRotated,
    /// Format 1.1: the workspace's scope rules were replaced; the body's `scope_rules` is the
    /// whole set in force from then on (a workspace event: no authorization).
    #[serde(rename = "scope_rules.changed")]
    ScopeRulesChanged,
}

impl EventKind {
    /// Whether receipts of this kind belong to an authorization's trail.
    pub fn is_authorization_event(self) -> bool {
        !matches!(self, Self::KeyRotated | Self::ScopeRulesChanged)
    }
}

/// What a workspace's scope rule asks for before an allow (format 1.1, `scope_rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Confirm,
    Escalate,
}

/// The answer Allowly gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    Confirm,
    Escalate,
}

/// What the user approved, recorded in full in the `authorization.created` receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The app's identifier of the user who approved.
    pub subject: String,
    /// Scope names (or wildcard forms) granted.
    pub scopes: Vec<String>,
    /// Resource constraints; empty means any resource.
    pub resources: Vec<String>,
    /// When the authorization stops allowing anything; `null` for never. Present (§4.1:
    /// every member listed for `grant` is, `null` or not).
    #[serde(deserialize_with = "present")]
    pub expires_at: Option<Timestamp>,
    /// SHA-256 of the JCS form of the app-supplied metadata, if any (metadata itself is not signed
    /// in full so that receipts do not copy arbitrary customer data). Present, like `expires_at`.
    #[serde(deserialize_with = "present")]
    pub metadata_hash: Option<HexHash>,
}

/// Who answered a confirmation or escalation, and what they were shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `approved` or `declined`, as given by the person.
    pub outcome: ApprovalOutcome,
    /// Identity of the person who answered, as the app reported it.
    pub by: String,
    /// SHA-256 of exactly what they were shown, if the app supplied it. Present, `null` or not
    /// (§4.1; only the 1.1 `note_hash` may be absent).
    #[serde(deserialize_with = "present")]
    pub shown_hash: Option<HexHash>,
    /// Format 1.1: SHA-256 of the note they wrote with their answer, if any. (A 1.0 escalation
    /// answer's note was hashed into `shown_hash`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_hash: Option<HexHash>,
}

/// A person's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ApprovalOutcome {
    Approved,
    Declined,
}

/// A public key announced by a `key.rotated` receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedKey {
    /// The new key's C2SP key id (8 hex digits).
    pub key_id: String,
    /// The new verifier key string (`name+keyid+base64(0x01‖pk)`).
    pub vkey: String,
    /// The key id it replaces.
    pub replaces: String,
}

/// Members every body carries (`null` where not applicable). Checked by name before the typed
/// view is read, because the view would silently take a missing optional member as `null`.
pub const REQUIRED_MEMBERS: &[&str] = &[
    "v",
    "id",
    "workspace_id",
    "authorization_id",
    "seq",
    "prev",
    "log_index",
    "kind",
    "decision",
    "reason",
    "scopes",
    "resource",
    "time",
    "auth_state_hash",
];

/// The typed view of a receipt body (see the module docs for why it is only a view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// Format version; [`FORMAT_VERSION`].
    pub v: u64,
    /// Receipt id.
    pub id: String,
    pub workspace_id: String,
    /// `null` only for workspace events (`key.rotated`).
    pub authorization_id: Option<String>,
    /// Position in the authorization's trail (0 = creation); `null` for workspace events.
    pub seq: Option<u64>,
    /// Leaf hash of the trail's previous receipt (seq − 1); `null` at seq 0 and for workspace events.
    pub prev: Option<HexHash>,
    /// Leaf index in the workspace transparency log.
    pub log_index: u64,
    pub kind: EventKind,
    pub decision: Option<Decision>,
    /// Stable reason code (e.g. `scope_not_granted`), `null` when there is nothing to explain.
    pub reason: Option<String>,
    /// Scopes asked for (checks) or concerned.
    pub scopes: Vec<String>,
    /// Resource asked for, if any.
    pub resource: Option<String>,
    /// When Allowly decided (its clock).
    pub time: Timestamp,
    /// SHA-256 of the JCS form of the authorization's state as it was used for this decision.
    pub auth_state_hash: Option<HexHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_hash: Option<HexHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RotatedKey>,
    /// Format 1.1: the authorization id a check asked for when no such authorization exists
    /// (`reason` `unknown_authorization`); such a check is a workspace event, in no trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_authorization_id: Option<String>,
    /// Format 1.1: until when the confirmation or escalation a `confirm` or `escalate` check
    /// opened may be answered (answers after it are refused, and recorded as such).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Format 1.1, `scope_rules.changed` only: every scope rule of the workspace from then on,
    /// pattern → what it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_rules: Option<std::collections::BTreeMap<String, RuleKind>>,
}

impl ReceiptBody {
    /// Reads the typed view of a body exactly as received: every [`REQUIRED_MEMBERS`] present,
    /// every known member of its documented type and encoding.
    pub fn from_json(body: &serde_json::Value) -> Result<Self> {
        let obj = body.as_object().ok_or(Error::Field { field: "body", msg: "not an object".into() })?;
        if let Some(m) = REQUIRED_MEMBERS.iter().find(|m| !obj.contains_key(**m)) {
            return Err(Error::Field { field: "body", msg: format!("member {m:?} is missing") });
        }
        Self::deserialize(body).map_err(|e| Error::Field { field: "body", msg: e.to_string() })
    }

    /// The body's RFC 8785 canonical bytes: what the leaf hash covers.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>> {
        write::canonical_body(self)
    }

    /// `SHA-256(0x00 ‖ JCS(body))`.
    pub fn leaf_hash(&self) -> Result<Hash> {
        Ok(merkle::leaf_hash(&self.canonical_bytes()?))
    }

    /// Checks the rules a JSON schema cannot: version, id alphabets, and that the trail fields
    /// agree with the kind (seq 0 ⇔ creation ⇔ no prev; workspace events have no trail).
    pub fn validate(&self) -> Result<()> {
        Rules {
            v: self.v,
            id: &self.id,
            workspace_id: &self.workspace_id,
            log_index: self.log_index,
            kind: self.kind,
            authorization_id: self.authorization_id.as_deref(),
            seq: self.seq,
            has_prev: self.prev.is_some(),
            has_grant: self.grant.is_some(),
            has_approval: self.approval.is_some(),
            has_key: self.key.is_some(),
            escalation_id: self.escalation_id.as_deref(),
            decision: self.decision,
            unknown_authorization: self.reason.as_deref() == Some(REASON_UNKNOWN_AUTHORIZATION),
            escalation_expired: self.reason.as_deref() == Some(REASON_ESCALATION_EXPIRED),
            asked_authorization_id: self.asked_authorization_id.as_deref(),
            has_scope_rules: self.scope_rules.is_some(),
        }
        .check()
    }

    /// Whether the body belongs to an authorization's trail (it has an `authorization_id`);
    /// otherwise it is a workspace event (`key.rotated`, a check of an unknown authorization).
    pub fn in_trail(&self) -> bool {
        self.authorization_id.is_some()
    }
}

/// The reason of a check that named no authorization of the workspace (format 1.1: such a
/// check is a workspace event and says in `asked_authorization_id` which id was asked for).
pub const REASON_UNKNOWN_AUTHORIZATION: &str = "unknown_authorization";

/// The reason of an `escalation.resolved` nobody answered in time: the one resolution without
/// an `approval` (§4.1).
pub const REASON_ESCALATION_EXPIRED: &str = "escalation_expired";

/// What [`ReceiptBody::validate`] and [`ReceiptBodyView::parse`] check beyond types: one
/// function for both, so the signer and the verifier cannot drift apart.
struct Rules<'a> {
    v: u64,
    id: &'a str,
    workspace_id: &'a str,
    log_index: u64,
    kind: EventKind,
    authorization_id: Option<&'a str>,
    seq: Option<u64>,
    has_prev: bool,
    has_grant: bool,
    has_approval: bool,
    has_key: bool,
    escalation_id: Option<&'a str>,
    decision: Option<Decision>,
    /// `reason` is [`REASON_UNKNOWN_AUTHORIZATION`].
    unknown_authorization: bool,
    /// `reason` is [`REASON_ESCALATION_EXPIRED`].
    escalation_expired: bool,
    asked_authorization_id: Option<&'a str>,
    has_scope_rules: bool,
}

impl Rules<'_> {
    fn check(&self) -> Result<()> {
        let err = |field, msg: &str| Err(Error::Field { field, msg: msg.to_owned() });
        if self.v != FORMAT_VERSION {
            return err("v", "unsupported format version");
        }
        validate_id("id", self.id)?;
        validate_id("workspace_id", self.workspace_id)?;
        if self.log_index > jcs::MAX_SAFE_INTEGER {
            return err("log_index", "beyond 2^53-1");
        }
        // Format 1.1: a check of an unknown authorization has no trail to join. It is a
        // workspace event, and exactly such a check carries `asked_authorization_id`.
        let unknown = self.unknown_authorization || self.asked_authorization_id.is_some();
        if unknown {
            let Some(asked) = self.asked_authorization_id else {
                return err("asked_authorization_id", "required when the reason is unknown_authorization");
            };
            validate_id("asked_authorization_id", asked)?;
            if self.kind != EventKind::Check
                || self.decision != Some(Decision::Deny)
                || !self.unknown_authorization
                || self.authorization_id.is_some()
                || self.seq.is_some()
                || self.has_prev
            {
                return err(
                    "asked_authorization_id",
                    "only a check denied as unknown_authorization, with no authorization_id, seq or prev",
                );
            }
        } else if self.kind.is_authorization_event() {
            let Some(auth) = self.authorization_id else { return err("authorization_id", "required for this kind") };
            validate_id("authorization_id", auth)?;
            match (self.seq, self.has_prev) {
                (Some(0), false) if self.kind == EventKind::AuthorizationCreated => {}
                (Some(0), _) => return err("seq", "seq 0 is the authorization.created receipt and has no prev"),
                (Some(s), true) if s > 0 && self.kind != EventKind::AuthorizationCreated => {}
                (Some(_), false) => return err("prev", "required when seq > 0"),
                (Some(_), true) => return err("seq", "authorization.created must have seq 0"),
                (None, _) => return err("seq", "required for this kind"),
            }
            if self.kind == EventKind::AuthorizationCreated && !self.has_grant {
                return err("grant", "required in authorization.created");
            }
        } else if self.authorization_id.is_some() || self.seq.is_some() || self.has_prev {
            return err("authorization_id", "workspace events belong to no trail");
        }
        if let Some(id) = self.escalation_id {
            validate_id("escalation_id", id)?;
        }
        // §4.1, second table: the members each kind requires (every Allowly version wrote them).
        let escalated = self.kind == EventKind::Check && self.decision == Some(Decision::Escalate);
        let escalation_kind = matches!(self.kind, EventKind::EscalationCreated | EventKind::EscalationResolved);
        if (escalated || escalation_kind) && self.escalation_id.is_none() {
            return err("escalation_id", "required in escalation.* and in a check that escalates");
        }
        let answered = match self.kind {
            EventKind::Confirmation => true,
            EventKind::EscalationResolved => !self.escalation_expired,
            _ => false,
        };
        if answered && !self.has_approval {
            return err("approval", "required in confirmation and escalation.resolved (but escalation_expired)");
        }
        if self.kind == EventKind::KeyRotated && !self.has_key {
            return err("key", "required in key.rotated");
        }
        if self.has_scope_rules != (self.kind == EventKind::ScopeRulesChanged) {
            return err("scope_rules", "present exactly in scope_rules.changed");
        }
        Ok(())
    }
}

mod canonical;
mod write;

/// A borrowed, allocation-light reading of a receipt body's bytes, for a process that must
/// check many bodies fast (the signer checks every body it is asked to append).
///
/// [`ReceiptBodyView::parse`] accepts exactly the bodies whose members have the §4 types and
/// encodings and satisfy the §4 rules (the same [`ReceiptBody::validate`] rules), with every
/// member of [`REQUIRED_MEMBERS`] present, no known member twice, and unknown members allowed.
/// It does **not** check that the bytes are in canonical form (RFC 8785): a verifier hashes the
/// canonical form of what it is given, so a leaf over non-canonical bytes can never be proven
/// for any body (it is an unprovable leaf, not a forgery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptBodyView<'a> {
    /// Receipt id.
    pub id: &'a str,
    /// The workspace whose log holds the receipt.
    pub workspace_id: &'a str,
    /// The leaf index the body claims.
    pub log_index: u64,
    /// What happened.
    pub kind: EventKind,
    /// When Allowly decided.
    pub time: Timestamp,
}

/// The members [`ReceiptBodyView`] reads. Ids, hashes and times are borrowed: their alphabets
/// have no character JSON must escape, so a body that escapes one is refused, never copied.
#[derive(Deserialize)]
struct ViewFields<'a> {
    v: u64,
    id: &'a str,
    workspace_id: &'a str,
    #[serde(borrow, deserialize_with = "present")]
    authorization_id: Option<&'a str>,
    #[serde(deserialize_with = "present")]
    seq: Option<u64>,
    #[serde(borrow, deserialize_with = "present")]
    prev: Option<&'a str>,
    log_index: u64,
    kind: EventKind,
    #[serde(deserialize_with = "present")]
    decision: Option<Decision>,
    #[serde(deserialize_with = "present")]
    reason: Option<ReasonText>,
    scopes: TextList,
    #[serde(deserialize_with = "present")]
    resource: Option<AnyText>,
    time: &'a str,
    #[serde(borrow, deserialize_with = "present")]
    auth_state_hash: Option<&'a str>,
    #[serde(default)]
    grant: Option<Grant>,
    #[serde(default)]
    approval: Option<Approval>,
    #[serde(default, borrow)]
    escalation_id: Option<&'a str>,
    #[serde(default, borrow)]
    context_hash: Option<&'a str>,
    #[serde(default)]
    key: Option<RotatedKey>,
    #[serde(default, borrow)]
    asked_authorization_id: Option<&'a str>,
    #[serde(default, borrow)]
    expires_at: Option<&'a str>,
    #[serde(default)]
    scope_rules: Option<RuleSet>,
}

/// A `scope_rules` object (pattern → `confirm` or `escalate`), checked and not kept.
struct RuleSet;

impl<'de> Deserialize<'de> for RuleSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RuleSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of \"confirm\" and \"escalate\"")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<RuleSet, A::Error> {
                while map.next_entry::<AnyText, RuleKind>()?.is_some() {}
                Ok(RuleSet)
            }
        }
        d.deserialize_map(V)
    }
}

/// A nullable member that must be present (`deserialize_with` makes serde report a missing
/// member instead of taking it as `null`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// Any JSON string, checked and not kept (escapes allowed, nothing allocated).
struct AnyText;

impl<'de> Deserialize<'de> for AnyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AnyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<AnyText, E> {
                Ok(AnyText)
            }
        }
        d.deserialize_str(V)
    }
}

/// A reason code, kept only as whether it is one of the two reasons the §4 rules read.
struct ReasonText {
    unknown_authorization: bool,
    escalation_expired: bool,
}

impl<'de> Deserialize<'de> for ReasonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ReasonText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<ReasonText, E> {
                Ok(ReasonText {
                    unknown_authorization: s == REASON_UNKNOWN_AUTHORIZATION,
                    escalation_expired: s == REASON_ESCALATION_EXPIRED,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// An array of strings, checked and not kept.
struct TextList;

impl<'de> Deserialize<'de> for TextList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TextList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<TextList, A::Error> {
                while seq.next_element::<AnyText>()?.is_some() {}
                Ok(TextList)
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'a> ReceiptBodyView<'a> {
    /// Reads a body in RFC 8785 canonical form, in one pass and without allocating: `Some` only
    /// when the bytes are the canonical form of a body that [`Self::parse`] accepts, with the
    /// same view; `None` for anything else — not canonical, not a receipt body, or a canonical
    /// form this reader leaves to `parse` (numbers with a fraction or exponent, keys with
    /// escapes or non-ASCII characters, unknown members nested very deep). Then ask `parse`,
    /// which decides and says why: `parse_canonical(b).map_or_else(|| parse(b), Ok)` accepts and
    /// refuses exactly what `parse` does, and canonical bodies (what a service sends: the bytes
    /// the leaf hash covers) take the fast path. Module `canonical` has the details.
    pub fn parse_canonical(bytes: &'a [u8]) -> Option<Self> {
        canonical::parse_canonical(bytes)
    }

    /// Reads and checks a body (see the type's docs for exactly what is checked).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let field = |e: &dyn fmt::Display| Error::Field { field: "body", msg: e.to_string() };
        // One UTF-8 check of the whole body (ASCII fast path) instead of one per string, which
        // is what parsing from bytes would do: about a sixth of the parse.
        let text = std::str::from_utf8(bytes).map_err(|e| field(&e))?;
        let f: ViewFields<'a> = serde_json::from_str(text).map_err(|e| field(&e))?;
        let hash = |h: Option<&str>| h.map(HexHash::parse).transpose();
        hash(f.prev)?;
        hash(f.auth_state_hash)?;
        hash(f.context_hash)?;
        let time = Timestamp::parse(f.time)?;
        f.expires_at.map(Timestamp::parse).transpose()?;
        if f.seq.is_some_and(|s| s > jcs::MAX_SAFE_INTEGER) {
            return Err(Error::Field { field: "seq", msg: "beyond 2^53-1".into() });
        }
        let _ = (f.scopes, f.resource);
        Rules {
            v: f.v,
            id: f.id,
            workspace_id: f.workspace_id,
            log_index: f.log_index,
            kind: f.kind,
            authorization_id: f.authorization_id,
            seq: f.seq,
            has_prev: f.prev.is_some(),
            has_grant: f.grant.is_some(),
            has_approval: f.approval.is_some(),
            has_key: f.key.is_some(),
            escalation_id: f.escalation_id,
            decision: f.decision,
            unknown_authorization: f.reason.as_ref().is_some_and(|r| r.unknown_authorization),
            escalation_expired: f.reason.as_ref().is_some_and(|r| r.escalation_expired),
            asked_authorization_id: f.asked_authorization_id,
            has_scope_rules: f.scope_rules.is_some(),
        }
        .check()?;
        Ok(Self { id: f.id, workspace_id: f.workspace_id, log_index: f.log_index, kind: f.kind, time })
    }
}

// ---------------------------------------------------------------------------------------------
// Envelopes.

/// What `/v1/check` returns before signing: a commitment (receipt id, log index, leaf hash) that
/// binds the answer to the receipt that is signed later.
///
/// `B` is how the body is held: a parsed [`serde_json::Value`] where a receipt is read and
/// checked (the verifiers), or [`RawBody`] where the server answers with the bytes it stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PendingReceipt<B = serde_json::Value> {
    /// Always `pending`.
    pub status: String,
    pub receipt_id: String,
    pub log_index: u64,
    pub leaf_hash: HexHash,
    /// The body exactly as it will be signed.
    pub body: B,
}

/// A receipt that verifies alone: body, its log index, its inclusion proof and the signed
/// checkpoint the proof leads to. `B` as in [`PendingReceipt`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt<B = serde_json::Value> {
    /// Always `signed`.
    pub status: String,
    /// The body exactly as hashed (a JSON object).
    pub body: B,
    pub log_index: u64,
    /// RFC 9162 inclusion proof of the leaf in the checkpoint's tree, bottom-up.
    pub inclusion_proof: Vec<HexHash>,
    /// The C2SP signed note of the checkpoint.
    pub checkpoint: String,
}

/// A receipt body held as the canonical bytes that were hashed, written into an answer as they
/// are. The server used to parse each stored body into a `Value` only to print it again (about
/// 4 % of its CPU per check); the bytes it stored are already the JSON it must send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawBody(Box<serde_json::value::RawValue>);

impl RawBody {
    /// `bytes` as a body: they must be one JSON value (checked by a scan that builds nothing;
    /// canonical form is the writer's promise, see [`ReceiptBody::canonical_bytes`]).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes).map(Self)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The body parsed (for callers that read members).
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(self.0.get())
    }
}

/// Equal when the texts are: a body is compared as the bytes that were hashed.
impl PartialEq for RawBody {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl PendingReceipt<RawBody> {
    /// The same envelope with its body parsed, as the verifiers and bundles hold it.
    pub fn parsed(self) -> serde_json::Result<PendingReceipt> {
        let body = self.body.to_value()?;
        Ok(PendingReceipt {
            status: self.status,
            receipt_id: self.receipt_id,
            log_index: self.log_index,
            leaf_hash: self.leaf_hash,
            body,
        })
    }
}

impl SignedReceipt<RawBody> {
    /// The same envelope with its body parsed, as the verifiers and bundles hold it.
    pub fn parsed(self) -> serde_json::Result<SignedReceipt> {
        let body = self.body.to_value()?;
        Ok(SignedReceipt {
            status: self.status,
            body,
            log_index: self.log_index,
            inclusion_proof: self.inclusion_proof,
            checkpoint: self.checkpoint,
        })
    }
}

/// Status strings of the two envelopes.
pub const STATUS_PENDING: &str = "pending";
pub const STATUS_SIGNED: &str = "signed";

/// Either envelope, as read from a file or the API.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyReceipt {
    Pending(PendingReceipt),
    Signed(SignedReceipt),
}

impl AnyReceipt {
    /// Parses a receipt document strictly (RFC 8785 rules, see [`jcs::parse_strict`]).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Self::from_value(jcs::parse_strict(bytes)?)
    }

    /// Picks the envelope by its `status` field.
    pub fn from_value(v: serde_json::Value) -> Result<Self> {
        let field_err = |e: serde_json::Error| Error::Field { field: "receipt", msg: e.to_string() };
        // §6.1: `body` is an object; anything else makes the envelope unusable (exit 64, or
        // `record_malformed` in a bundle), not a body finding.
        if !v.get("body").is_some_and(serde_json::Value::is_object) {
            return Err(Error::Field { field: "body", msg: "not a JSON object".into() });
        }
        match v.get("status").and_then(|s| s.as_str()) {
            Some(STATUS_SIGNED) => Ok(Self::Signed(serde_json::from_value(v).map_err(field_err)?)),
            Some(STATUS_PENDING) => Ok(Self::Pending(serde_json::from_value(v).map_err(field_err)?)),
            _ => Err(Error::Field { field: "status", msg: "expected \"signed\" or \"pending\"".into() }),
        }
    }

    pub fn body(&self) -> &serde_json::Value {
        match self {
            Self::Pending(p) => &p.body,
            Self::Signed(s) => &s.body,
        }
    }

    pub fn log_index(&self) -> u64 {
        match self {
            Self::Pending(p) => p.log_index,
            Self::Signed(s) => s.log_index,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.

/// Whether a key still signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Retired,
}

/// One published public key of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublicKeyInfo {
    /// C2SP key id, 8 lowercase hex digits.
    pub key_id: String,
    /// The note key name: the workspace's log origin.
    pub name: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, standard base64.
    pub public_key: String,
    /// The same key as a C2SP verifier key string, for note tooling.
    pub vkey: String,
    /// First instant the key may sign (inclusive).
    pub not_before: Timestamp,
    /// Instant the key stopped signing (exclusive); `null` while active.
    pub not_after: Option<Timestamp>,
    pub status: KeyStatus,
}

/// All public keys a workspace has ever signed with: everything a verifier needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    pub workspace_id: String,
    /// The log origin checkpoints must carry.
    pub origin: String,
    pub keys: Vec<PublicKeyInfo>,
}

/// A key set whose entries have been checked against each other and decoded.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    pub workspace_id: String,
    pub origin: String,
    /// Verifiers, one per key, in key-set order.
    pub verifiers: Vec<NoteVerifier>,
    /// Validity windows, parallel to `verifiers`.
    pub windows: Vec<(Timestamp, Option<Timestamp>)>,
}

impl KeySet {
    /// Parses a key set document strictly.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        serde_json::from_value(jcs::parse_strict(bytes)?)
            .map_err(|e| Error::Field { field: "keys", msg: e.to_string() })
    }

    /// Checks every entry is self-consistent (public key, key id, vkey and name agree, origin is
    /// the workspace's, windows are ordered) and returns the decoded verifiers.
    pub fn trusted(&self) -> Result<TrustedKeys> {
        validate_id("workspace_id", &self.workspace_id)?;
        let kerr = |msg: &str| Err(Error::Field { field: "keys", msg: msg.to_owned() });
        if self.origin != log_origin(&self.workspace_id) {
            return kerr("origin is not allowly/<workspace_id>");
        }
        let mut verifiers = Vec::with_capacity(self.keys.len());
        let mut windows = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            if k.algorithm != "ed25519" {
                return kerr("only ed25519 keys are defined");
            }
            if k.name != self.origin {
                return kerr("key name must equal the origin");
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&k.public_key)
                .map_err(|_| Error::Field { field: "public_key", msg: "not base64".into() })?;
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| Error::Field { field: "public_key", msg: "not 32 bytes".into() })?;
            let vk = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| Error::Field { field: "public_key", msg: "not an Ed25519 point".into() })?;
            let verifier = NoteVerifier::new(&k.name, vk)?;
            if hex::encode(verifier.key_id()) != k.key_id {
                return kerr("key_id does not match the public key");
            }
            if NoteVerifier::parse_vkey(&k.vkey)? != verifier {
                return kerr("vkey does not match the public key");
            }
            if matches!(k.not_after, Some(end) if end <= k.not_before) {
                return kerr("not_after must be later than not_before");
            }
            if (k.status == KeyStatus::Active) != k.not_after.is_none() {
                return kerr("exactly the keys without not_after are active");
            }
            // One entry per key: a second entry for the same key id could widen its window.
            if verifiers.contains(&verifier) || self.keys.iter().filter(|o| o.key_id == k.key_id).count() > 1 {
                return kerr("a key_id appears twice");
            }
            verifiers.push(verifier);
            windows.push((k.not_before, k.not_after));
        }
        // A key set that can verify nothing is a broken key set, not a reason to report every
        // checkpoint as signed by an unknown key.
        if verifiers.is_empty() {
            return kerr("keys is empty");
        }
        Ok(TrustedKeys { workspace_id: self.workspace_id.clone(), origin: self.origin.clone(), verifiers, windows })
    }
}

impl TrustedKeys {
    /// Whether the key `v` (one of ours) was within its validity window at `t`.
    pub fn valid_at(&self, v: &NoteVerifier, t: Timestamp) -> bool {
        self.verifiers
            .iter()
            .zip(&self.windows)
            .any(|(k, (from, to))| k == v && *from <= t && to.is_none_or(|to| t < to))
    }
}

/// Reads the signer's clock from a checkpoint's extension lines: format v1 checkpoints carry
/// exactly one extension line, `time <timestamp>`, and nothing else.
pub fn checkpoint_time(extensions: &[String]) -> Result<Timestamp> {
    match extensions {
        [line] => match line.strip_prefix(TIME_EXTENSION_PREFIX) {
            Some(t) => Timestamp::parse(t),
            None => Err(Error::Checkpoint("the extension line is not `time <timestamp>`")),
        },
        _ => Err(Error::Checkpoint("expected exactly one extension line, `time <timestamp>`")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_id_table_is_the_alphabet() {
        for b in 0..=255u8 {
            let id = [b'a', b, b'z'];
            let expected = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            let Ok(text) = std::str::from_utf8(&id) else {
                assert!(!expected, "{b}");
                continue;
            };
            assert_eq!(validate_id("id", text).is_ok(), expected, "byte {b}");
        }
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", &"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(validate_id("id", &"a".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(validate_id("id", "a\u{e9}").is_err(), "non-ASCII letters are outside the alphabet");
    }

    #[test]
    fn timestamp_known_answers() {
        assert_eq!(Timestamp::parse("1970-01-01T00:00:00.000Z").unwrap().unix_ms(), 0);
        assert_eq!(Timestamp::parse("2000-02-29T12:34:56.789Z").unwrap().unix_ms(), 951_827_696_789);
        assert_eq!(Timestamp::parse("9999-12-31T23:59:59.999Z").unwrap().unix_ms(), Timestamp::MAX_MS);
        for bad in [
            "2001-02-29T00:00:00.000Z", // not a leap year
            "1900-03-01T00:00:00.000Z", // before 1970
            "2026-13-01T00:00:00.000Z",
            "2026-01-01T24:00:00.000Z",
            "2026-01-01T00:60:00.000Z",
            "2026-01-01T00:00:60.000Z", // no leap seconds
            "2026-01-01T00:00:00Z",     // fraction required
            "2026-01-01T00:00:00.000+00:00",
            "2026-01-01t00:00:00.000Z",
            "2026-01-01T00:00:00.0000Z",
            "+026-01-01T00:00:00.000Z",
            "",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Timestamp::from_unix_ms(Timestamp::MAX_MS + 1).is_err());
    }

    /// An answer built from the stored bytes prints exactly what the parse-and-reprint did,
    /// and its body is byte for byte the text whose hash is the leaf.
    #[test]
    fn raw_body_answers_print_the_stored_bytes() {
        let canonical = br#"{"a":"\u001f\"\u00e9","b":[1,{"c":null}],"d":-7}"#;
        let text = std::str::from_utf8(canonical).unwrap().replace("\\u00e9", "\u{e9}");
        let bytes = text.as_bytes();
        fn envelope<B>(body: B, bytes: &[u8]) -> PendingReceipt<B> {
            PendingReceipt {
                status: STATUS_PENDING.into(),
                receipt_id: "rc_1".into(),
                log_index: 3,
                leaf_hash: HexHash(crate::merkle::leaf_hash(bytes)),
                body,
            }
        }
        let raw = envelope(RawBody::from_json(bytes).unwrap(), bytes);
        let parsed = envelope(serde_json::from_slice::<serde_json::Value>(bytes).unwrap(), bytes);
        let (raw_text, parsed_text) = (serde_json::to_string(&raw).unwrap(), serde_json::to_string(&parsed).unwrap());
        assert_eq!(raw_text, parsed_text);
        assert!(raw_text.contains(&text), "{raw_text}");
        assert_eq!(raw.body.get().as_bytes(), bytes);
        // Through a `Value` and back (the idempotent replay path) it is the same text again.
        let back: PendingReceipt<RawBody> = serde_json::from_value(serde_json::to_value(&raw).unwrap()).unwrap();
        assert_eq!(back, raw);
        assert_eq!(raw.clone().parsed().unwrap(), parsed);
        assert!(RawBody::from_json(b"{\"a\":").is_err());
    }

    #[test]
    fn hex_hash_accepts_only_lowercase_64() {
        let ok = "00".repeat(31) + "af";
        assert!(HexHash::parse(&ok).is_ok());
        assert!(HexHash::parse(&ok.to_uppercase()).is_err());
        assert!(HexHash::parse(&ok[2..]).is_err());
        assert!(HexHash::parse(&(ok.clone() + "00")).is_err());
        assert!(HexHash::parse(&ok.replace("af", "ag")).is_err());
    }

    #[test]
    fn id_alphabet() {
        assert!(validate_id("id", "ws_AZaz09-_").is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(MAX_ID_LEN + 1)] {
            assert!(validate_id("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checkpoint_time_needs_exactly_one_line() {
        let t = "time 2026-01-01T00:00:00.000Z".to_owned();
        assert!(checkpoint_time(std::slice::from_ref(&t)).is_ok());
        assert!(checkpoint_time(&[]).is_err());
        assert!(checkpoint_time(&[t.clone(), t]).is_err());
        assert!(checkpoint_time(&["time yesterday".to_owned()]).is_err());
        assert!(checkpoint_time(&["time 2026-01-01T00:00:00.000Z".to_owned(), "other".to_owned()]).is_err());
    }

    proptest! {
        #[test]
        fn timestamp_round_trips(ms in 0..=Timestamp::MAX_MS) {
            let t = Timestamp::from_unix_ms(ms).unwrap();
            let text = t.to_string();
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(Timestamp::parse(&text).unwrap(), t);
            // The fixed-width form orders like the instants it names.
            let later = Timestamp::from_unix_ms(ms.saturating_add(1).min(Timestamp::MAX_MS)).unwrap();
            prop_assert!(text <= later.to_string());
        }

        #[test]
        fn timestamp_parse_never_panics(s in "\\PC{0,30}") {
            let _ = Timestamp::parse(&s);
        }

        #[test]
        fn timestamp_parse_accepts_only_its_own_output(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z") {
            if let Ok(t) = Timestamp::parse(&s) {
                prop_assert_eq!(t.to_string(), s);
            }
        }

        #[test]
        fn hex_hash_round_trips(bytes in any::<[u8; 32]>()) {
            let h = HexHash(bytes);
            prop_assert_eq!(HexHash::parse(&h.to_string()).unwrap(), h);
            let json = serde_json::to_string(&h).unwrap();
            prop_assert_eq!(serde_json::from_str::<HexHash>(&json).unwrap(), h);
        }
    }
}

//! [`ReceiptBodyView::parse_canonical`]: one pass over a body's bytes, in RFC 8785 canonical
//! form, with no allocation and no intermediate value.
//!
//! The reader is a subset of [`ReceiptBodyView::parse`], never a replacement for it: it answers
//! `Some(view)` only for bytes that are the canonical form of a body `parse` accepts, with the
//! view `parse` would return; for anything else — not canonical, not a receipt body, or a
//! canonical form it does not bother with (below) — it answers `None` and gives no reason, and
//! the caller asks `parse`, which decides and says why. So a reader using both accepts and
//! refuses exactly what `parse` does (`tests/it/body_view.rs` checks this on generated and mutated
//! bodies), while the bodies a service actually sends — canonical, since they are what the
//! leaf hash covers — take this path.
//!
//! What it reads, in one left-to-right pass (after one UTF-8 check of the whole body, which
//! core does a word at a time over ASCII): an object whose members are in strictly increasing
//! key order (byte order, which is RFC 8785's UTF-16 order for ASCII keys), with no
//! whitespace; strings with raw UTF-8 and only the escapes RFC 8785 writes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, lowercase `\u00xx` for the
//! other control characters); integers without sign, leading zero, fraction or exponent (a
//! negative one in an unknown member), at most 2^53 − 1. Each known member is checked as it is
//! met, with the same rules as `parse` (the §4 types, then [`Rules`]); the body's known keys
//! are recognised by comparing with constants, not read as strings. Left to `parse` (`None`):
//! numbers with a fraction or exponent, keys with escapes or non-ASCII characters, unknown
//! members nested deeper than [`MAX_DEPTH`], escapes inside ids, hashes and times (`parse`
//! refuses those anyway), and every form `parse` accepts that is not canonical.

use super::{
    Decision, EventKind, ReceiptBodyView, Rules, Timestamp, REASON_ESCALATION_EXPIRED, REASON_UNKNOWN_AUTHORIZATION,
};
use crate::jcs::MAX_SAFE_INTEGER;

/// Deepest nesting of arrays and objects inside an unknown member read here (deeper: `None`).
const MAX_DEPTH: usize = 32;

/// `None` everywhere in this module means "not read here": the caller falls back to `parse`.
type Read<T> = Option<T>;

/// How a byte inside a string is handled.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
const CONTROL: u8 = 3;

const CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i {
            0x00..=0x1f => CONTROL,
            0x22 => QUOTE,
            0x5c => BACKSLASH,
            _ => PLAIN,
        };
        i += 1;
    }
    t
};

/// Members every body must have (nullable or not), as bits of [`Body::seen`].
const V: u16 = 1;
const ID: u16 = 1 << 1;
const WORKSPACE_ID: u16 = 1 << 2;
const AUTHORIZATION_ID: u16 = 1 << 3;
const SEQ: u16 = 1 << 4;
const PREV: u16 = 1 << 5;
const LOG_INDEX: u16 = 1 << 6;
const KIND: u16 = 1 << 7;
const DECISION: u16 = 1 << 8;
const REASON: u16 = 1 << 9;
const SCOPES: u16 = 1 << 10;
const RESOURCE: u16 = 1 << 11;
const TIME: u16 = 1 << 12;
const AUTH_STATE_HASH: u16 = 1 << 13;
const REQUIRED: u16 = (1 << 14) - 1;

/// The members read so far.
#[derive(Default)]
struct Body<'a> {
    seen: u16,
    v: u64,
    id: &'a str,
    workspace_id: &'a str,
    authorization_id: Option<&'a str>,
    seq: Option<u64>,
    has_prev: bool,
    log_index: u64,
    kind: Option<EventKind>,
    time: Option<Timestamp>,
    has_grant: bool,
    has_approval: bool,
    has_key: bool,
    escalation_id: Option<&'a str>,
    decision: Option<Decision>,
    unknown_authorization: bool,
    escalation_expired: bool,
    asked_authorization_id: Option<&'a str>,
    has_scope_rules: bool,
}

/// The cursor.
struct Scan<'a> {
    /// The whole body, checked to be UTF-8 once, so that strings are slices of it.
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

pub(super) fn parse_canonical(bytes: &[u8]) -> Read<ReceiptBodyView<'_>> {
    // One UTF-8 check of the whole body (word-at-a-time over ASCII) instead of one per string.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut s = Scan { text, b: bytes, i: 0 };
    let mut f = Body::default();
    s.body(&mut f)?;
    if s.i != s.b.len() || f.seen & REQUIRED != REQUIRED {
        return None;
    }
    let kind = f.kind?;
    Rules {
        v: f.v,
        id: f.id,
        workspace_id: f.workspace_id,
        log_index: f.log_index,
        kind,
        authorization_id: f.authorization_id,
        seq: f.seq,
        has_prev: f.has_prev,
        has_grant: f.has_grant,
        has_approval: f.has_approval,
        has_key: f.has_key,
        escalation_id: f.escalation_id,
        decision: f.decision,
        unknown_authorization: f.unknown_authorization,
        escalation_expired: f.escalation_expired,
        asked_authorization_id: f.asked_authorization_id,
        has_scope_rules: f.has_scope_rules,
    }
    .check()
    .ok()?;
    Some(ReceiptBodyView { id: f.id, workspace_id: f.workspace_id, log_index: f.log_index, kind, time: f.time? })
}

/// The members of a body that `parse` reads, in canonical (byte) order: comparing two of them
/// is comparing their discriminants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Member {
    Approval,
    AskedAuthorizationId,
    AuthStateHash,
    AuthorizationId,
    ContextHash,
    Decision,
    EscalationId,
    ExpiresAt,
    Grant,
    Id,
    Key,
    Kind,
    LogIndex,
    Prev,
    Reason,
    Resource,
    ScopeRules,
    Scopes,
    Seq,
    Time,
    V,
    WorkspaceId,
}

fn event_kind(s: &[u8]) -> Read<EventKind> {
    Some(match s {
        b"authorization.created" => EventKind::AuthorizationCreated,
        b"check" => EventKind::Check,
        b"confirmation" => EventKind::Confirmation,
        b"escalation.created" => EventKind::EscalationCreated,
        b"escalation.resolved" => EventKind::EscalationResolved,
        b"revocation" => EventKind::Revocation,
        b"expiry" => EventKind::Expiry,
        b"key.rotated" => EventKind::KeyRotated,
        b"scope_rules.changed" => EventKind::ScopeRulesChanged,
        _ => return None,
    })
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Read<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Read<()> {
        if self.peek()? != c {
            return None;
        }
        self.i += 1;
        Some(())
    }

    fn literal(&mut self, text: &[u8]) -> Read<()> {
        if !self.b.get(self.i..)?.starts_with(text) {
            return None;
        }
        self.i += text.len();
        Some(())
    }

    /// `null` (consumed: `Some(true)`), or something else (`Some(false)`, nothing consumed).
    fn null(&mut self) -> Read<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null").map(|()| true)
    }

    /// An object: `{`, members in strictly increasing key order each read by `member`, `}`.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Read<()>) -> Read<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let mut prev: Option<&[u8]> = None;
        loop {
            let key = self.string_plain()?;
            // Byte order is RFC 8785's (UTF-16) order for ASCII keys; other keys are left to
            // `parse` rather than compared here.
            if prev.is_some_and(|p| key <= p) || !key.is_ascii() {
                return None;
            }
            prev = Some(key);
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `[`, elements each read by `element`, `]`.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string in canonical form; its raw contents (escapes not decoded) and whether it had any.
    fn string(&mut self) -> Read<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.skip_plain_words();
            match CLASS[usize::from(*self.b.get(self.i)?)] {
                PLAIN => self.i += 1,
                QUOTE => {
                    let s = self.b.get(start..self.i)?;
                    self.i += 1;
                    return Some((s, escaped));
                }
                BACKSLASH => {
                    self.escape()?;
                    escaped = true;
                }
                CONTROL => return None, // a raw control character: not JSON
                _ => self.i += 1,       // ASCII or part of a UTF-8 sequence (checked up front)
            }
        }
    }

    /// Moves to the next byte of a string that is not plain text (a quote, a backslash or a
    /// control character), 8 bytes at a time: most of a body is such text, and a byte at a
    /// time costs several times as much. Stops early (at most 7 bytes before the end).
    fn skip_plain_words(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        // Flags the zero bytes of `x`: exact for the lowest one, which is all that is used (a
        // borrow only runs upwards, from a zero byte).
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            // A byte below 0x20 is one whose 7 low bits plus 0x60 stay below 0x80 (masking the
            // high bit first keeps carries out of the neighbours); a byte with the high bit set
            // (UTF-8) is text.
            let control = !((w & !HIGH).wrapping_add(ONES * 0x60)) & !w & HIGH;
            let special = control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')));
            if special != 0 {
                // Little-endian: the lowest flagged byte is the first one in the text.
                self.i += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
    }

    /// One escape, as RFC 8785 writes them (the backslash not yet consumed).
    fn escape(&mut self) -> Read<()> {
        match *self.b.get(self.i + 1)? {
            b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
            b'u' => {
                let &[b'0', b'0', hi @ (b'0' | b'1'), lo] = self.b.get(self.i + 2..self.i + 6)? else { return None };
                let lo = match lo {
                    b'0'..=b'9' => lo - b'0',
                    b'a'..=b'f' => lo - b'a' + 10,
                    _ => return None,
                };
                // The control characters with a short form are written that way.
                if matches!((hi - b'0') * 16 + lo, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                    return None;
                }
                self.i += 6;
            }
            _ => return None,
        }
        Some(())
    }

    /// A string without escapes (what ids, hashes, times, enum names and keys are).
    fn string_plain(&mut self) -> Read<&'a [u8]> {
        match self.string()? {
            (s, false) => Some(s),
            (_, true) => None,
        }
    }

    /// [`Self::string_plain`], as text (a slice of the body, which is UTF-8).
    fn str_plain(&mut self) -> Read<&'a str> {
        let start = self.i + 1;
        let len = self.string_plain()?.len();
        self.text.get(start..start + len)
    }

    /// Exactly 64 lowercase hex digits in quotes (`HexHash`'s one spelling).
    fn hex64(&mut self) -> Read<()> {
        let s = self.b.get(self.i..self.i + 66)?;
        // Without early exit, so that it compiles to a few vector compares.
        let digits =
            s[1..65].iter().fold(true, |ok, &c| ok & ((c.wrapping_sub(b'0') < 10) | (c.wrapping_sub(b'a') < 6)));
        if !(digits && s[0] == b'"' && s[65] == b'"') {
            return None;
        }
        self.i += 66;
        Some(())
    }

    /// A `Timestamp` (its one form has 24 ASCII characters, none of which need escaping).
    fn time(&mut self) -> Read<Timestamp> {
        let s = self.b.get(self.i..self.i + 26)?;
        if s[0] != b'"' || s[25] != b'"' {
            return None;
        }
        let t = Timestamp::parse(self.text.get(self.i + 1..self.i + 25)?).ok()?;
        self.i += 26;
        Some(t)
    }

    /// A non-negative integer in canonical form, at most 2^53 − 1.
    fn uint(&mut self) -> Read<u64> {
        let start = self.i;
        let mut n = 0u64;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') || n > MAX_SAFE_INTEGER {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None; // a fraction or exponent: left to `parse`
        }
        Some(n)
    }

    /// Any value in canonical form, not kept (an unknown member).
    fn skip(&mut self, depth: usize) -> Read<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' if depth < MAX_DEPTH => self.object(|s, _| s.skip(depth + 1)),
            b'[' if depth < MAX_DEPTH => self.array(|s| s.skip(depth + 1)),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' => {
                self.i += 1;
                // `-0` is written `0`.
                (self.uint()? != 0).then_some(())
            }
            _ => self.uint().map(drop),
        }
    }

    fn strings(&mut self) -> Read<()> {
        self.array(|s| s.string().map(drop))
    }

    /// `null`, or what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        if self.null()? {
            return Some(None);
        }
        read(self).map(Some)
    }

    /// The body: [`Self::object`], with its known keys recognised without reading them as
    /// strings and ordered by [`Member`] (about half of a body's strings are its keys).
    fn body(&mut self, f: &mut Body<'a>) -> Read<()> {
        self.eat(b'{')?;
        let mut prev: Option<(Option<Member>, &'a [u8])> = None;
        loop {
            let (member, key) = match self.known_key() {
                Some((member, key)) => (Some(member), key),
                None => {
                    let key = self.string_plain()?;
                    // Byte order is RFC 8785's (UTF-16) order for ASCII keys; other keys are
                    // left to `parse` rather than compared here.
                    if !key.is_ascii() {
                        return None;
                    }
                    self.eat(b':')?;
                    (None, key)
                }
            };
            if let Some((prev_member, prev_key)) = prev {
                let ordered = match (prev_member, member) {
                    (Some(a), Some(b)) => a < b,
                    _ => prev_key < key,
                };
                if !ordered {
                    return None;
                }
            }
            prev = Some((member, key));
            match member {
                Some(m) => self.body_member(m, f)?,
                None => self.skip(0)?,
            }
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `"<name>":` of a [`Member`] at the cursor (consumed), with the name.
    fn known_key(&mut self) -> Option<(Member, &'static [u8])> {
        let rest = self.b.get(self.i..)?;
        // Each comparison is with a constant of known length, which compiles to a few loads.
        macro_rules! keys {
            ($($member:ident $name:literal),+) => {{
                $({
                    const QUOTED: &[u8] = concat!("\"", $name, "\":").as_bytes();
                    if rest.starts_with(QUOTED) {
                        self.i += QUOTED.len();
                        return Some((Member::$member, $name.as_bytes()));
                    }
                })+
                None
            }};
        }
        match rest.get(1)? {
            b'a' => keys!(
                Approval "approval",
                AskedAuthorizationId "asked_authorization_id",
                AuthStateHash "auth_state_hash",
                AuthorizationId "authorization_id"
            ),
            b'c' => keys!(ContextHash "context_hash"),
            b'd' => keys!(Decision "decision"),
            b'e' => keys!(EscalationId "escalation_id", ExpiresAt "expires_at"),
            b'g' => keys!(Grant "grant"),
            b'i' => keys!(Id "id"),
            b'k' => keys!(Key "key", Kind "kind"),
            b'l' => keys!(LogIndex "log_index"),
            b'p' => keys!(Prev "prev"),
            b'r' => keys!(Reason "reason", Resource "resource"),
            b's' => keys!(ScopeRules "scope_rules", Scopes "scopes", Seq "seq"),
            b't' => keys!(Time "time"),
            b'v' => keys!(V "v"),
            b'w' => keys!(WorkspaceId "workspace_id"),
            _ => None,
        }
    }

    /// A member of the body (see `ViewFields` in the parent module for the types `parse` reads).
    fn body_member(&mut self, member: Member, f: &mut Body<'a>) -> Read<()> {
        use Member as M;
        let bit = match member {
            M::Approval => {
                f.has_approval = self.nullable(Self::approval)?.is_some();
                return Some(());
            }
            M::AskedAuthorizationId => {
                f.asked_authorization_id = self.nullable(Self::str_plain)?;
                return Some(());
            }
            M::ExpiresAt => return self.nullable(Self::time).map(drop),
            M::AuthStateHash => {
                self.nullable(Self::hex64)?;
                AUTH_STATE_HASH
            }
            M::AuthorizationId => {
                f.authorization_id = self.nullable(Self::str_plain)?;
                AUTHORIZATION_ID
            }
            M::ContextHash => return self.nullable(Self::hex64).map(drop),
            M::Decision => {
                f.decision = self.nullable(|s| match s.string_plain()? {
                    b"allow" => Some(Decision::Allow),
                    b"deny" => Some(Decision::Deny),
                    b"confirm" => Some(Decision::Confirm),
                    b"escalate" => Some(Decision::Escalate),
                    _ => None,
                })?;
                DECISION
            }
            M::EscalationId => {
                f.escalation_id = self.nullable(Self::str_plain)?;
                return Some(());
            }
            M::Grant => {
                f.has_grant = self.nullable(Self::grant)?.is_some();
                return Some(());
            }
            M::Id => {
                f.id = self.str_plain()?;
                ID
            }
            M::Key => {
                f.has_key = self.nullable(Self::rotated_key)?.is_some();
                return Some(());
            }
            M::Kind => {
                f.kind = Some(event_kind(self.string_plain()?)?);
                KIND
            }
            M::LogIndex => {
                f.log_index = self.uint()?;
                LOG_INDEX
            }
            M::Prev => {
                f.has_prev = self.nullable(Self::hex64)?.is_some();
                PREV
            }
            M::Reason => {
                let reason = self.nullable(Self::string)?;
                f.unknown_authorization = reason == Some((REASON_UNKNOWN_AUTHORIZATION.as_bytes(), false));
                f.escalation_expired = reason == Some((REASON_ESCALATION_EXPIRED.as_bytes(), false));
                REASON
            }
            M::Resource => {
                self.nullable(Self::string)?;
                RESOURCE
            }
            M::ScopeRules => {
                f.has_scope_rules = self
                    .nullable(|s| {
                        s.object(|s, _| match s.string_plain()? {
                            b"confirm" | b"escalate" => Some(()),
                            _ => None,
                        })
                    })?
                    .is_some();
                return Some(());
            }
            M::Scopes => {
                self.strings()?;
                SCOPES
            }
            M::Seq => {
                f.seq = self.nullable(Self::uint)?;
                SEQ
            }
            M::Time => {
                f.time = Some(self.time()?);
                TIME
            }
            M::V => {
                f.v = self.uint()?;
                V
            }
            M::WorkspaceId => {
                f.workspace_id = self.str_plain()?;
                WORKSPACE_ID
            }
        };
        f.seen |= bit;
        Some(())
    }

    /// `Grant`: `subject`, `scopes`, `resources`, and `expires_at` and `metadata_hash` (nullable),
    /// all required, other members ignored.
    fn grant(&mut self) -> Read<()> {
        let mut seen = 0u8;
        self.object(|s, key| match key {
            b"expires_at" => {
                seen |= 8;
                s.nullable(Self::time).map(drop)
            }
            b"metadata_hash" => {
                seen |= 16;
                s.nullable(Self::hex64).map(drop)
            }
            b"resources" => {
                seen |= 1;
                s.strings()
            }
            b"scopes" => {
                seen |= 2;
                s.strings()
            }
            b"subject" => {
                seen |= 4;
                s.string().map(drop)
            }
            _ => s.skip(1),
        })?;
        (seen == 31).then_some(())
    }

    /// `Approval`: `outcome`, `by` and `shown_hash` (nullable) required, `note_hash` (1.1)
    /// nullable and optional.
    fn approval(&mut self) -> Read<()> {
        let mut seen = 0u8;
        self.object(|s, key| match key {
            b"by" => {
                seen |= 1;
                s.string().map(drop)
            }
            b"outcome" => {
                seen |= 2;
                match s.string_plain()? {
                    b"approved" | b"declined" => Some(()),
                    _ => None,
                }
            }
            b"shown_hash" => {
                seen |= 4;
                s.nullable(Self::hex64).map(drop)
            }
            b"note_hash" => s.nullable(Self::hex64).map(drop),
            _ => s.skip(1),
        })?;
        (seen == 7).then_some(())
    }

    /// `RotatedKey`: `key_id`, `replaces`, `vkey`, all strings.
    fn rotated_key(&mut self) -> Read<()> {
        let mut seen = 0u8;
        self.object(|s, key| {
            let bit = match key {
                b"key_id" => 1,
                b"replaces" => 2,
                b"vkey" => 4,
                _ => return s.skip(1),
            };
            seen |= bit;
            s.string().map(drop)
        })?;
        (seen == 7).then_some(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::{Decision, HexHash, ReceiptBody, FORMAT_VERSION};

    fn sample() -> Vec<u8> {
        ReceiptBody {
            v: FORMAT_VERSION,
            id: "rcpt_1".into(),
            workspace_id: "ws_1".into(),
            authorization_id: Some("auth_1".into()),
            seq: Some(3),
            prev: Some(HexHash([0xab; 32])),
            log_index: 41,
            kind: EventKind::Check,
            decision: Some(Decision::Allow),
            reason: Some("granted \"fully\"\n\u{1}é".into()),
            scopes: vec!["files.read".into(), "a\\b".into()],
            resource: Some("drive:file/ünï/report.pdf".into()),
            time: Timestamp::from_unix_ms(1_767_225_600_123).unwrap(),
            auth_state_hash: Some(HexHash([1; 32])),
            grant: None,
            approval: None,
            escalation_id: None,
            context_hash: Some(HexHash([2; 32])),
            key: None,
            asked_authorization_id: None,
            expires_at: None,
            scope_rules: None,
        }
        .canonical_bytes()
        .unwrap()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// `input` (a variant of the sample) is read by `parse_canonical` iff `fast`, and then as
    /// `parse` reads it; `parse` accepts it iff `slow`.
    fn check(input: &str, slow: bool, fast: bool) {
        let parsed = ReceiptBodyView::parse(input.as_bytes());
        assert_eq!(parsed.is_ok(), slow, "parse: {input}: {parsed:?}");
        match parse_canonical(input.as_bytes()) {
            Some(v) => {
                assert!(fast, "read a form it should leave to parse: {input}");
                assert_eq!(Ok(v), parsed);
            }
            None => assert!(!fast, "left a canonical body to parse: {input}"),
        }
    }

    #[test]
    fn canonical_bodies_are_read_and_every_other_form_is_left_to_parse() {
        let canonical = text(&sample());
        check(&canonical, true, true);
        let with = |from: &str, to: &str| {
            assert!(canonical.contains(from), "{from}");
            canonical.replacen(from, to, 1)
        };
        let nested = r#"[{"a":-5,"b":[true,false,null,"\u001f"],"c":{}},[]]"#;
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let shallow = format!("{}1{}", "[".repeat(30), "]".repeat(30));
        for (from, to, slow, fast) in [
            // Unknown members, in order: read.
            (r#""id":"rcpt_1""#, format!(r#""id":"rcpt_1","j":{nested}"#), true, true),
            (r#""id":"rcpt_1""#, format!(r#""id":"rcpt_1","j":{shallow}"#), true, true),
            // Every other form parse accepts: left to it.
            (r#""id":"rcpt_1""#, format!(r#""id":"rcpt_1","j":{deep}"#), true, false),
            (r#""id":"rcpt_1""#, format!(r#""zzz":{nested},"id":"rcpt_1""#), true, false), // key order
            ("{", "{ ".into(), true, false),                                               // whitespace
            (r#""id":"rcpt_1""#, r#""id":"rcpt_1","j":1.5"#.into(), true, false),          // fraction
            (r#""id":"rcpt_1""#, r#""id":"rcpt_1","j":1e0"#.into(), true, false),          // exponent
            (r#""id":"rcpt_1""#, r#""id":"rcpt_1","j":-0"#.into(), true, false),           // `0` in JCS
            (r#""seq":3"#, r#""seq":-0"#.into(), false, false),
            (r#""seq":3"#, r#""seq":03"#.into(), false, false),
            (r#""scopes":["#, r#""scopes":["\/","#.into(), true, false), // escapes JCS does not write
            (r#""scopes":["#, r#""scopes":["\u0041","#.into(), true, false),
            (r#""scopes":["#, r#""scopes":["\u001F","#.into(), true, false),
            (r#""scopes":["#, r#""scopes":["\u0009","#.into(), true, false),
            (r#""scopes":["#, r#""scopes":["\ud83d\ude00","#.into(), true, false),
            (r#""scopes":["#, r#""scopes":["\ud83d","#.into(), false, false), // a lone surrogate
            (r#""decision":"allow""#, r#""decision":"\u0061llow""#.into(), true, false),
            (r#""reason":"#, r#""\u0072eason":"#.into(), true, false), // an escaped key
            (r#""reason":"#, r#""é":1,"reason":"#.into(), true, false), // a non-ASCII key
            (r#""id":"rcpt_1""#, r#""id":"rcpt\u005f1""#.into(), false, false), // parse borrows ids
            // Not receipt bodies: refused by parse, not read here.
            (r#""v":1"#, r#""v":2"#.into(), false, false),
            (r#""v":1"#, r#""v":1.0"#.into(), false, false),
            (r#""kind":"check""#, r#""kind":"key.rotated""#.into(), false, false), // has a trail
            (r#""log_index":41"#, r#""log_index":9007199254740992"#.into(), false, false),
            (r#""scopes":["#, "\"scopes\":[\"\u{1}\",".into(), false, false), // a raw control char
            (r#""id":"rcpt_1","#, "".into(), false, false),
            (r#","v":1"#, r#","v":1,"v":1"#.into(), false, false), // a duplicate member
        ] {
            check(&with(from, &to), slow, fast);
        }
        check(&format!("{canonical}\n"), true, false);
        check(&canonical[..canonical.len() - 1], false, false);
        let mut bad_utf8 = sample();
        let at = bad_utf8.iter().position(|&b| b >= 0x80).unwrap();
        bad_utf8[at + 1] = b'x';
        assert!(ReceiptBodyView::parse(&bad_utf8).is_err() && parse_canonical(&bad_utf8).is_none());
    }
}

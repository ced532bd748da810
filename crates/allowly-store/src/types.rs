//! The records the store keeps and the write ops that change them.
//!
//! The serde form of each record **is** its stored form (JSON). A field added later must be
//! `#[serde(default)]` so that older records still decode; 32-byte hashes are lowercase hex and
//! a receipt body is stored as JSON text, so a stored value stays readable in a debugger.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A tenant. Every other record lives under a workspace id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub id: String,
    pub name: String,
    pub created_at_ms: u64,
    /// Scopes whose checks need a confirmation or an escalation instead of a plain allow.
    pub scope_rules: BTreeMap<String, ScopeRule>,
    /// Whether checks may be allowed unsigned while the signer is down (recorded when used).
    pub fail_open: bool,
    /// The public half of every key the signer holds for this workspace, as it last reported
    /// them: published without asking the signer (so verifiers get keys while it is down).
    #[serde(default)]
    pub signing_keys: Vec<PublicKeyRecord>,
    /// The request rate each of the workspace's API keys may use, as the instance admin set it;
    /// `None`: the instance's default (`allowly serve --rate-limit-per-second`).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A per-API-key request rate limit. Its JSON is `"unlimited"` or
/// `{"requests_per_second": N, "burst": M}` (`burst` defaults to `requests_per_second` when
/// read, and is always written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RateLimitRepr", into = "RateLimitRepr")]
pub enum RateLimit {
    /// No limit.
    Unlimited,
    /// On average at most `requests_per_second`, with bursts of up to `burst` requests at once
    /// (a token bucket of `burst` tokens refilled at `requests_per_second`).
    PerKey { requests_per_second: u32, burst: u32 },
}

/// The serde form of [`RateLimit`]: a keyword or an object.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RateLimitRepr {
    Word(RateLimitWord),
    Limit(RateLimitFields),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RateLimitWord {
    Unlimited,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFields {
    requests_per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
}

impl From<RateLimitRepr> for RateLimit {
    fn from(r: RateLimitRepr) -> Self {
        match r {
            RateLimitRepr::Word(RateLimitWord::Unlimited) => Self::Unlimited,
            RateLimitRepr::Limit(f) => Self::PerKey {
                requests_per_second: f.requests_per_second,
                burst: f.burst.unwrap_or(f.requests_per_second),
            },
        }
    }
}

impl From<RateLimit> for RateLimitRepr {
    fn from(r: RateLimit) -> Self {
        match r {
            RateLimit::Unlimited => Self::Word(RateLimitWord::Unlimited),
            RateLimit::PerKey { requests_per_second, burst } => {
                Self::Limit(RateLimitFields { requests_per_second, burst: Some(burst) })
            }
        }
    }
}

/// A workspace signing key's public half and validity window (the private half never leaves
/// the signer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyRecord {
    /// C2SP key id, 8 lowercase hex digits.
    pub key_id: String,
    #[serde(with = "hex32")]
    pub public_key: [u8; 32],
    pub not_before_ms: u64,
    pub not_after_ms: Option<u64>,
    pub active: bool,
}

/// What a check on a scope must go through before it is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScopeRule {
    Confirm,
    Escalate,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Check,
    Read,
    Admin,
}

/// An API key, stored only as the hash of its secret (looked up by that hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    /// `None` = an instance-admin key, not tied to a workspace.
    pub workspace_id: Option<String>,
    #[serde(with = "hex32")]
    pub key_hash: [u8; 32],
    pub roles: Vec<Role>,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// A user's grant of scopes to an agent, with the head of its receipt trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRecord {
    pub id: String,
    pub workspace_id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub resources: Vec<String>,
    pub expires_at_ms: Option<u64>,
    pub metadata: serde_json::Value,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    /// Whether the expiry receipt has been written (so it is written once).
    pub expiry_recorded: bool,
    /// The `seq` the next receipt of this authorization's trail gets.
    ///
    /// Not stored in the record: a read derives it (with `last_leaf`) from the trail's last
    /// entry, which is written in the same batch as the receipt. So a check, which only extends
    /// the trail, never rewrites the authorization record, and the head can never disagree
    /// with the trail.
    #[serde(skip)]
    pub next_seq: u64,
    /// Leaf hash of the trail's last receipt: the next receipt's `prev` (derived, like `next_seq`).
    #[serde(skip)]
    pub last_leaf: [u8; 32],
}

impl AuthorizationRecord {
    /// Whether `self` and `other` store the same record, i.e. are equal apart from the trail
    /// head (which the trail itself stores). Writing a record is needed only when this is false.
    pub fn same_stored(&self, other: &Self) -> bool {
        // Destructured, not `..`: a new stored field must be added here or this fails to compile.
        let Self {
            id,
            workspace_id,
            subject,
            scopes,
            resources,
            expires_at_ms,
            metadata,
            created_at_ms,
            revoked_at_ms,
            expiry_recorded,
            next_seq: _,
            last_leaf: _,
        } = self;
        *id == other.id
            && *workspace_id == other.workspace_id
            && *subject == other.subject
            && *scopes == other.scopes
            && *resources == other.resources
            && *expires_at_ms == other.expires_at_ms
            && *metadata == other.metadata
            && *created_at_ms == other.created_at_ms
            && *revoked_at_ms == other.revoked_at_ms
            && *expiry_recorded == other.expiry_recorded
    }
}

/// One receipt: its canonical body and where it sits in the trail and the log.
///
/// Whether it is signed is not stored here: a receipt at log index `i` is signed once a stored
/// checkpoint has a size `> i` (see [`Store::latest_checkpoint`](crate::Store::latest_checkpoint)),
/// so signing never rewrites receipts. Stored as a small JSON header, a newline, then the body's
/// bytes verbatim (the body is written once, never escaped or re-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRecord {
    pub id: String,
    pub workspace_id: String,
    /// Set (with `seq`) for receipts in an authorization's trail; both `None` otherwise.
    pub authorization_id: Option<String>,
    pub seq: Option<u64>,
    /// Leaf index in the workspace's transparency log.
    pub log_index: u64,
    /// RFC 8785 canonical JSON, exactly as hashed (so it is UTF-8 text; a body that is not is
    /// refused with `InvalidOp`).
    pub body: Vec<u8>,
    pub leaf: [u8; 32],
}

/// Per-workspace log position, owned by the workspace's sequencer (the signed size is the
/// newest stored checkpoint's, see [`Store::latest_checkpoint`](crate::Store::latest_checkpoint)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    /// Next log index to assign.
    pub next_index: u64,
    /// A key rotation asked of the signer at this index (= `next_index`) whose `key.rotated`
    /// leaf is not stored yet: until it is, the index is the rotation's and no receipt may take
    /// it (the signer may already hold the leaf). Written (synced) before the signer is asked;
    /// cleared in the write that stores the leaf, or once the signer has refused the rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_at: Option<u64>,
    /// The `Idempotency-Key` record the reserved rotation's answer is to be filed under, if it
    /// was asked with one: whoever finishes the rotation files it, so a repeat of a request whose
    /// answer was lost gets the rotation that was made instead of making another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_idempotency: Option<IdempotencyRef>,
}

/// An `Idempotency-Key` record as the engine files it: its document id and the hash of the
/// request it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRef {
    pub doc_id: String,
    #[serde(with = "hex32")]
    pub request_hash: [u8; 32],
}

/// One write. Ops of a [`WriteBatch`] apply in order (a later op sees an earlier one's effect)
/// and atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutWorkspace(WorkspaceRecord),
    PutApiKey(ApiKeyRecord),
    PutAuthorization(AuthorizationRecord),
    /// Writes the receipt and its index entries: `leaves` (always: leaf hash and receipt id,
    /// so the signing pipeline reads hashes without decoding bodies) and `trail` (when it has
    /// an authorization and a `seq`). Re-putting a receipt is idempotent; giving an existing id
    /// another log index or seq is the caller's bug and is not detected (detecting it would
    /// cost a read per receipt on the hot path; the workspace owner assigns both).
    PutReceipt(ReceiptRecord),
    /// Merkle complete-subtree hashes `(level, index, hash)`.
    PutNodes {
        workspace_id: String,
        nodes: Vec<(u8, u64, [u8; 32])>,
    },
    /// A signed checkpoint note of tree size `size`.
    PutCheckpoint {
        workspace_id: String,
        size: u64,
        note: String,
    },
    PutLogMeta {
        workspace_id: String,
        meta: LogMeta,
    },
    /// A document of `kind` (replaces one with the same id).
    PutDoc {
        kind: DocKind,
        workspace_id: String,
        id: String,
        doc: serde_json::Value,
    },
    /// Removes a document (no error if absent).
    DeleteDoc {
        kind: DocKind,
        workspace_id: String,
        id: String,
    },
    /// A witness's `cosignature/v1` line (one signature line, ending in `\n`) on the stored
    /// checkpoint of tree size `size`, by the witness whose Ed25519 public key is `witness`
    /// (replaces that witness's earlier line on the same checkpoint). The store does not verify
    /// it: the caller checked it against the witness's key.
    PutCosignature {
        workspace_id: String,
        size: u64,
        witness: [u8; 32],
        line: String,
    },
    /// The largest tree size `witness` has cosigned for the workspace (what the next
    /// `add-checkpoint` request to it names as `old`).
    PutWitnessHead {
        workspace_id: String,
        witness: [u8; 32],
        size: u64,
    },
    /// A precondition, not a put: the batch (the group, in
    /// [`Store::write_groups`](crate::Store::write_groups)) applies only if the workspace's
    /// lease is at `epoch` when it is applied — checked atomically with the write, wherever the
    /// op sits in the batch. Otherwise nothing of it is written and it fails with
    /// [`StoreError::Fenced`](crate::StoreError::Fenced). Only the epoch counts, not the
    /// lease's expiry: an owner whose lease merely lapsed may still write until another node
    /// has taken the workspace over (the fencing-token rule; see `docs/scale-out.md`).
    Fence {
        workspace_id: String,
        epoch: u64,
    },
}

/// A node of a cluster sharing one store, as its last heartbeat left it
/// ([`Store::heartbeat`](crate::Store::heartbeat)). Stored as its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    /// Where peers forward requests for the workspaces this node owns (`http://10.0.0.5:8080`).
    pub address: String,
    /// When the membership lapses unless renewed: ms since the Unix epoch on the *store's*
    /// clock (the database's for a networked store), comparable only with the store's times.
    pub expires_at_ms: u64,
}

/// Who owns a workspace: the node that may sequence it, and the epoch (fencing token) its
/// writes carry ([`Op::Fence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub workspace_id: String,
    pub node_id: String,
    /// The owner's address as it acquired the lease: where to forward a request.
    pub address: String,
    /// 1 for the first owner, one more at every change of owner; never reused (a lease is
    /// never deleted, a release only expires it).
    pub epoch: u64,
    /// When the lease lapses unless renewed, on the store's clock (see [`Member::expires_at_ms`]).
    /// A holder measures its lease on its own monotonic clock, from before the call that
    /// granted it: the two clocks are never compared.
    pub expires_at_ms: u64,
}

/// The answer to [`Store::acquire_lease`](crate::Store::acquire_lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The caller holds the lease: at a new epoch if it took the workspace over (no lease yet,
    /// or another node's had expired), at the same epoch if it already held it.
    Granted(Lease),
    /// Another node holds a live lease: the request belongs to it (forward it to its address).
    Held(Lease),
}

/// Figures of the storage engine an operator alerts on — write stalls, compaction debt, sizes —
/// in the engine's own terms but without its types. A field is `None` where the engine has no
/// such figure (`MemStore` has none). Read at scrape time: an engine answers from counters it
/// keeps anyway, never by scanning data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Writes are stopped (every write waits) until compaction or flushes catch up.
    pub write_stopped: Option<bool>,
    /// Bytes per second the engine throttles writes to while it delays them; 0 when it does not.
    pub delayed_write_rate: Option<u64>,
    /// Bytes compaction must rewrite to bring the data back to its target shape (the debt that
    /// stalls writes when it passes the engine's limits).
    pub pending_compaction_bytes: Option<u64>,
    /// Compactions running now.
    pub running_compactions: Option<u64>,
    /// Bytes of the live table files (what the data takes on disk, before obsolete files go).
    pub live_data_bytes: Option<u64>,
    /// Bytes of the live blob files (large values kept apart from the tables).
    pub live_blob_bytes: Option<u64>,
    /// Bytes of the in-memory write buffers (not yet flushed to table files).
    pub memtable_bytes: Option<u64>,
    /// A networked store: connections to the database open now.
    pub connections_open: Option<u64>,
    /// A networked store: connections running a call now (all of them busy and calls queued:
    /// the database, or the pool's size, is what the service waits for).
    pub connections_busy: Option<u64>,
    /// A networked store: calls waiting for a connection.
    pub calls_queued: Option<u64>,
}

/// Kinds of small per-workspace documents the engine keeps beside the log, each in a key space
/// of its own, keyed by workspace and id. The store treats a document as opaque JSON; the
/// engine owns its shape (and its on-disk compatibility: add fields with defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    /// A pending or answered `confirm` decision, by nonce.
    Confirmation,
    /// An escalation to an approver, by escalation id.
    Escalation,
    /// The stored answer to an `Idempotency-Key`, by key (hashed by the engine).
    Idempotency,
    /// A webhook endpoint of a workspace.
    Webhook,
    /// The state of one webhook delivery (kept for the API).
    Delivery,
    /// Deliveries not yet finished (deleted when delivered or given up), scanned by the sender.
    Outbox,
    /// Pending escalations by due time (id `<expiry ms, 16 hex>-<workspace>-<escalation>`), all
    /// under one scope, so the engine finds the overdue ones without scanning every workspace.
    /// The engine keeps a second due index of the same shape under another scope (pending
    /// confirmations, for the gauge that counts them).
    EscalationDue,
    /// In a cluster: a workspace's key record as its signer exported it (public keys, and the
    /// private halves sealed under the signers' shared master key or named as token objects —
    /// never a private key in the clear), id `keys`, so that whichever node's signer takes
    /// the workspace over can install it (docs/scale-out.md, "Signing across nodes").
    SignerKeys,
}

/// Ops applied all-or-nothing: either every op is visible afterwards or none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an op (builder style).
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }
}

impl From<Vec<Op>> for WriteBatch {
    fn from(ops: Vec<Op>) -> Self {
        Self { ops }
    }
}

/// What must be true when [`Store::write`](crate::Store::write) returns `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// The batch survives a crash of the process *and* of the machine: the log is fsynced
    /// before returning. Required before a decision is acknowledged.
    Sync,
    /// The batch is in the engine's log but not fsynced: it survives a process crash, not a
    /// power loss or kernel crash. For data that can be recomputed (e.g. Merkle nodes).
    Buffered,
}

/// `[u8; 32]` as 64 lowercase hex digits (a JSON array of numbers would be three times larger).
pub(crate) mod hex32 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(de::Error::custom)?;
        Ok(out)
    }
}

/// `RateLimit`'s JSON form is `"unlimited"` or an object (see its serde form, `RateLimitRepr`).
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::openapi::RefOr;

    impl utoipa::PartialSchema for super::RateLimit {
        fn schema() -> RefOr<Schema> {
            let word = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["unlimited"]));
            let int = || ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
            let limit = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("requests_per_second", int())
                .required("requests_per_second")
                .property("burst", int())
                .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)));
            OneOfBuilder::new().item(word).item(limit).into()
        }
    }

    impl utoipa::ToSchema for super::RateLimit {}
}

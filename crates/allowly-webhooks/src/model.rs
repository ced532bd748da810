//! Webhook endpoints, events and deliveries: the stored documents (their serde form is their
//! on-disk form: add fields with `#[serde(default)]`, rename nothing), the API views (their serde
//! form is the HTTP JSON), and [`enqueue`], which turns one event into the write ops that make
//! it durable for every subscribed endpoint.
//!
//! # Documents (allowly-store `DocKind`s, all per workspace)
//!
//! | kind | id | document |
//! |---|---|---|
//! | `Webhook` | `wh_<32 hex>` | [`WebhookDoc`]: URL, events, scope filter, secret (and the previous one during a rotation's grace period), disabled |
//! | `Delivery` | `dl_<webhook id>_<16 hex: u64::MAX − created ms><8 hex: u32::MAX − per-process count><8 hex random>` | [`DeliveryDoc`]: payload, status (`pending` → `delivered` / `failed` / `cancelled`), attempt log, `retry_of` |
//! | `Outbox` | `<16 hex due ms>-<delivery id>` | [`OutboxDoc`]: a delivery that is due at `due_at_ms` |
//!
//! Delivery ids start with their endpoint's id and then sort newest first, so one endpoint's
//! deliveries are one contiguous key range listed newest first (`GET
//! /v1/webhooks/{id}/deliveries`) without an index. Outbox ids start with the due time, so
//! within a workspace the sender reads due entries first and stops at the first one that is not
//! due. An outbox entry exists exactly while its delivery is `pending`; rescheduling replaces it
//! (delete + put in one write).
//!
//! The secret is stored as it is shown (`whsec_…`), like a private key file: the sender must
//! have it to sign. It is shown once, at creation or rotation, and never in a view.
//!
//! A deleted endpoint's document is gone; its deliveries stay (readable by id) until the
//! retention sweep deletes finished ones. A manual retry is a new delivery of the same event
//! (same `event_id`, i.e. `webhook-id`), so receivers deduplicate it like any redelivery.

use allowly_receipt::types::Timestamp;
use allowly_store::{DocKind, Op};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, WebhookError};
use crate::signature::Secret;

/// The wall clock in Unix milliseconds, the unit of every time in these records (the one helper
/// of every crate), named here for the worker and the metrics.
pub(crate) use allowly_receipt::types::now_ms;

/// Most endpoints one workspace may have.
pub const MAX_WEBHOOKS_PER_WORKSPACE: usize = 16;
/// Longest accepted endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Attempts kept in a delivery's log (the count keeps counting).
pub const MAX_ATTEMPT_LOG: usize = 50;
/// Most scope patterns in an endpoint's `scopes` filter.
pub const MAX_SCOPE_FILTER: usize = 64;
/// Longest (and default) time the previous secret keeps signing after a rotation.
pub const MAX_ROTATION_GRACE_MS: u64 = 24 * 3600 * 1000;

/// What happened, as a Standard Webhooks event `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    /// A check was answered `escalate`: an approver must decide.
    #[serde(rename = "escalation.requested")]
    EscalationRequested,
    /// An escalation was approved, denied, or expired (recorded as deny).
    #[serde(rename = "escalation.resolved")]
    EscalationResolved,
    /// An authorization was revoked.
    #[serde(rename = "authorization.revoked")]
    AuthorizationRevoked,
    /// A batch of receipts was signed: a new checkpoint covers log indices
    /// `[from_log_index, tree_size)`.
    #[serde(rename = "receipt.signed")]
    ReceiptSigned,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 4] =
        [Self::EscalationRequested, Self::EscalationResolved, Self::AuthorizationRevoked, Self::ReceiptSigned];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EscalationRequested => "escalation.requested",
            Self::EscalationResolved => "escalation.resolved",
            Self::AuthorizationRevoked => "authorization.revoked",
            Self::ReceiptSigned => "receipt.signed",
        }
    }
}

/// Why an endpoint was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// By an API call.
    Api,
    /// The endpoint answered `410 Gone`.
    Gone,
}

/// A webhook endpoint as stored (`DocKind::Webhook`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDoc {
    pub url: String,
    pub events: Vec<EventType>,
    /// `whsec_…`: the signing secret.
    pub secret: String,
    pub created_at_ms: u64,
    pub disabled: bool,
    #[serde(default)]
    pub disabled_reason: Option<DisabledReason>,
    #[serde(default)]
    pub disabled_at_ms: Option<u64>,
    /// Escalation events go here only if one of the escalation's scopes matches one of these
    /// patterns (`None`: every escalation).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The secret before the last rotation: it signs too until `previous_secret_expires_at_ms`.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_expires_at_ms: Option<u64>,
}

impl WebhookDoc {
    /// The API view (no secret).
    pub fn view(&self, id: &str) -> Result<WebhookView> {
        Ok(WebhookView {
            id: id.to_owned(),
            url: self.url.clone(),
            events: self.events.clone(),
            scopes: self.scopes.clone(),
            disabled: self.disabled,
            disabled_reason: self.disabled_reason,
            disabled_at: self.disabled_at_ms.map(ts).transpose()?,
            previous_secret_expires_at: self.previous_secret_expires_at_ms.map(ts).transpose()?,
            created_at: ts(self.created_at_ms)?,
        })
    }

    /// What the event producers need to know (no URL, no secret).
    pub fn endpoint(&self, id: &str) -> Endpoint {
        Endpoint {
            id: id.to_owned(),
            events: self.events.clone(),
            disabled: self.disabled,
            scopes: self.scopes.clone(),
        }
    }

    /// The secrets an attempt at `now_ms` is signed with: the current one, then the previous
    /// one while its grace period lasts.
    pub fn signing_secrets(&self, now_ms: u64) -> Result<Vec<Secret>> {
        let mut out = vec![Secret::parse(&self.secret)?];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at_ms) {
            if now_ms < until {
                out.push(Secret::parse(prev)?);
            }
        }
        Ok(out)
    }

    /// Replaces the secret with `new`; the current one keeps signing for `grace_ms` (0: not at
    /// all). A previous secret still in its grace period is dropped: at most two sign.
    pub fn rotate(&mut self, new: String, now_ms: u64, grace_ms: u64) {
        let old = std::mem::replace(&mut self.secret, new);
        (self.previous_secret, self.previous_secret_expires_at_ms) =
            if grace_ms == 0 { (None, None) } else { (Some(old), Some(now_ms.saturating_add(grace_ms))) };
    }
}

/// An endpoint as the event producers see it: whom to enqueue deliveries for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub events: Vec<EventType>,
    pub disabled: bool,
    /// Scope patterns that route escalation events (`None`: all of them). Matched by the engine,
    /// with the scope-rule syntax.
    pub scopes: Option<Vec<String>>,
}

impl Endpoint {
    /// Whether a new event of `ty` gets a delivery to this endpoint.
    pub fn wants(&self, ty: EventType) -> bool {
        !self.disabled && self.events.contains(&ty)
    }
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `http://` or `https://` URL, at most 2048 bytes, no credentials in it.
    pub url: String,
    /// Non-empty set of event types to deliver.
    pub events: Vec<EventType>,
    /// Optional: route `escalation.*` events here only when one of the escalation's scopes
    /// matches one of these patterns (scope-rule syntax: `*`, `a.b.*`, exact). 1..=64 patterns;
    /// omit it for every escalation. Other event types are not filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// `POST /v1/webhooks/{id}/rotate-secret` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps signing, in ms: 0..=86400000, default 86400000 (24 h);
    /// 0 retires it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_ms: Option<u64>,
}

/// An endpoint as the API shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    /// The escalation routing filter, if any.
    pub scopes: Option<Vec<String>>,
    /// A disabled endpoint gets no new deliveries; pending ones fail when they come due.
    pub disabled: bool,
    pub disabled_reason: Option<DisabledReason>,
    pub disabled_at: Option<Timestamp>,
    /// After a rotation: until then deliveries are signed with the previous secret too.
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// Answer to creating an endpoint or rotating its secret: the only times a secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify deliveries with it (any Standard Webhooks library).
    pub secret: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or for a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: see `failure`.
    Failed,
    /// Its endpoint was deleted before it was delivered.
    Cancelled,
}

/// Why a delivery failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The endpoint answered `410 Gone` (and was disabled).
    Gone,
    /// The endpoint was disabled (or removed) before the delivery succeeded.
    EndpointDisabled,
    /// Retries ran out (`give_up_after` or `max_attempts`).
    GaveUp,
}

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub at_ms: u64,
    pub duration_ms: u64,
    /// The HTTP status, when there was a response.
    pub status_code: Option<u16>,
    /// What went wrong, when something did (timeout, connection error, non-2xx status with the
    /// start of the body).
    pub error: Option<String>,
}

/// One event's delivery to one endpoint, as stored (`DocKind::Delivery`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDoc {
    pub webhook_id: String,
    /// The `webhook-id` header: the event's id, the same for every attempt (and endpoint).
    pub event_id: String,
    pub event_type: EventType,
    /// The exact body sent (JSON text): what is signed.
    pub payload: String,
    pub status: DeliveryStatus,
    pub created_at_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (while pending).
    pub next_attempt_at_ms: Option<u64>,
    /// The outbox entry that schedules it (while pending).
    pub outbox_id: Option<String>,
    #[serde(default)]
    pub delivered_at_ms: Option<u64>,
    #[serde(default)]
    pub failed_at_ms: Option<u64>,
    #[serde(default)]
    pub failure: Option<FailureReason>,
    /// The most recent attempts, oldest first (at most [`MAX_ATTEMPT_LOG`]).
    #[serde(default)]
    pub log: Vec<AttemptRecord>,
    #[serde(default)]
    pub cancelled_at_ms: Option<u64>,
    /// The delivery this one re-sends (a manual retry).
    #[serde(default)]
    pub retry_of: Option<String>,
}

impl DeliveryDoc {
    /// The API view.
    pub fn view(&self, id: &str) -> Result<DeliveryView> {
        let last = self.log.last();
        Ok(DeliveryView {
            id: id.to_owned(),
            webhook_id: self.webhook_id.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type,
            status: self.status,
            created_at: ts(self.created_at_ms)?,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at_ms.map(ts).transpose()?,
            last_attempt_at: last.map(|a| ts(a.at_ms)).transpose()?,
            last_status_code: last.and_then(|a| a.status_code),
            last_error: last.and_then(|a| a.error.clone()),
            delivered_at: self.delivered_at_ms.map(ts).transpose()?,
            failed_at: self.failed_at_ms.map(ts).transpose()?,
            failure: self.failure,
            cancelled_at: self.cancelled_at_ms.map(ts).transpose()?,
            retry_of: self.retry_of.clone(),
            attempt_log: self
                .log
                .iter()
                .map(|a| {
                    Ok(AttemptView {
                        at: ts(a.at_ms)?,
                        duration_ms: a.duration_ms,
                        status_code: a.status_code,
                        error: a.error.clone(),
                    })
                })
                .collect::<Result<_>>()?,
            payload: serde_json::from_str(&self.payload).map_err(|e| WebhookError::Corrupt {
                kind: "delivery",
                id: id.to_owned(),
                message: format!("payload: {e}"),
            })?,
        })
    }

    /// A new pending delivery of `event_id` to `webhook_id`, due at `now_ms` under `outbox`.
    pub fn pending(webhook_id: &str, event_id: &str, ty: EventType, payload: &str, now_ms: u64, outbox: &str) -> Self {
        Self {
            webhook_id: webhook_id.to_owned(),
            event_id: event_id.to_owned(),
            event_type: ty,
            payload: payload.to_owned(),
            status: DeliveryStatus::Pending,
            created_at_ms: now_ms,
            attempts: 0,
            next_attempt_at_ms: Some(now_ms),
            outbox_id: Some(outbox.to_owned()),
            delivered_at_ms: None,
            failed_at_ms: None,
            failure: None,
            log: Vec::new(),
            cancelled_at_ms: None,
            retry_of: None,
        }
    }

    /// When it reached its final state (`None` while pending).
    pub fn finished_at_ms(&self) -> Option<u64> {
        match self.status {
            DeliveryStatus::Pending => None,
            DeliveryStatus::Delivered => Some(self.delivered_at_ms.unwrap_or(self.created_at_ms)),
            DeliveryStatus::Failed => Some(self.failed_at_ms.unwrap_or(self.created_at_ms)),
            DeliveryStatus::Cancelled => Some(self.cancelled_at_ms.unwrap_or(self.created_at_ms)),
        }
    }

    /// Marks it cancelled (its endpoint is gone); the caller deletes its outbox entry.
    pub fn cancel(&mut self, now_ms: u64) {
        self.status = DeliveryStatus::Cancelled;
        self.cancelled_at_ms = Some(now_ms);
        self.next_attempt_at_ms = None;
        self.outbox_id = None;
    }

    /// Records an attempt (keeping the log bounded).
    pub fn record(&mut self, a: AttemptRecord) {
        self.attempts = self.attempts.saturating_add(1);
        if self.log.len() >= MAX_ATTEMPT_LOG {
            self.log.remove(0);
        }
        self.log.push(a);
    }
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    /// The `webhook-id` header value (the same on every attempt).
    pub event_id: String,
    pub event_type: EventType,
    pub status: DeliveryStatus,
    pub created_at: Timestamp,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
    pub failed_at: Option<Timestamp>,
    pub failure: Option<FailureReason>,
    pub cancelled_at: Option<Timestamp>,
    /// The delivery this one re-sends (`POST /v1/deliveries/{id}/retry`), if any.
    pub retry_of: Option<String>,
    /// The most recent attempts (at most 50), oldest first.
    pub attempt_log: Vec<AttemptView>,
    /// The event as sent.
    pub payload: serde_json::Value,
}

/// One attempt as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    pub at: Timestamp,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// A delivery that is due (`DocKind::Outbox`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxDoc {
    pub delivery_id: String,
    pub due_at_ms: u64,
}

/// The outbox id of a delivery due at `due_ms`: sorts by due time within a workspace.
pub fn outbox_id(due_ms: u64, delivery_id: &str) -> String {
    format!("{due_ms:016x}-{delivery_id}")
}

/// The first id of `webhook_id`'s deliveries' range is just after this (an exclusive bound).
pub fn delivery_prefix(webhook_id: &str) -> String {
    format!("dl_{webhook_id}_")
}

/// A new delivery id for `webhook_id`, created at `now_ms` (sorts newest first, also among the
/// ids this process makes in one millisecond: a per-process counter, counted down, follows the
/// time; then 32 random bits keep ids of two processes apart).
pub fn new_delivery_id(webhook_id: &str, now_ms: u64) -> Result<String> {
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = [0u8; 4];
    getrandom::getrandom(&mut r).map_err(|e| WebhookError::Random(e.to_string()))?;
    Ok(format!("{}{:016x}{:08x}{}", delivery_prefix(webhook_id), u64::MAX - now_ms, u32::MAX - made, hex::encode(r)))
}

/// When the delivery behind an outbox id was created (what [`new_delivery_id`] put in it), or
/// `None` for an id not of that form. For the outbox's oldest-age gauge, which then reads ids
/// alone.
pub fn outbox_created_ms(outbox_id: &str) -> Option<u64> {
    let (_due, delivery) = outbox_id.split_once('-')?;
    let (_prefix, tail) = delivery.rsplit_once('_')?;
    let inverted = u64::from_str_radix(tail.get(..16)?, 16).ok()?;
    Some(u64::MAX - inverted)
}

/// A new random id with `prefix` (`wh_`, `evt_`): 128 random bits in hex.
pub fn new_id(prefix: &str) -> Result<String> {
    let mut r = [0u8; 16];
    getrandom::getrandom(&mut r).map_err(|e| WebhookError::Random(e.to_string()))?;
    Ok(format!("{prefix}{}", hex::encode(r)))
}

/// The event id of a `receipt.signed` event: derived from the workspace and the tree size, so a
/// signature stored again (after a lost write) is announced with the same `webhook-id` and
/// receivers deduplicate it.
pub fn signed_event_id(ws: &str, tree_size: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"allowly receipt.signed\0");
    h.update(ws.as_bytes());
    h.update([0]);
    h.update(tree_size.to_be_bytes());
    format!("evt_{}", hex::encode(&h.finalize()[..16]))
}

/// An event ready to enqueue: its id (the `webhook-id`), type, and the exact body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub ty: EventType,
    pub payload: String,
}

impl Event {
    /// The Standard Webhooks payload `{"type", "timestamp", "data"}` (compact JSON).
    pub fn new(id: String, ty: EventType, at_ms: u64, data: serde_json::Value) -> Result<Self> {
        #[derive(Serialize)]
        struct Body<'a> {
            r#type: &'a str,
            timestamp: Timestamp,
            data: &'a serde_json::Value,
        }
        let body = Body { r#type: ty.as_str(), timestamp: ts(at_ms)?, data: &data };
        let payload = serde_json::to_string(&body).map_err(|e| WebhookError::Encode(e.to_string()))?;
        Ok(Self { id, ty, payload })
    }
}

/// The ops that make `event` durable for every endpoint of `ws` that wants it: a pending
/// [`DeliveryDoc`] and an [`OutboxDoc`] due now, per endpoint. Empty if nobody subscribes. The
/// caller writes them in the same batch as whatever caused the event.
pub fn enqueue(ws: &str, endpoints: &[Endpoint], event: &Event, now_ms: u64) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for e in endpoints.iter().filter(|e| e.wants(event.ty)) {
        let d = DeliveryDoc::pending(&e.id, &event.id, event.ty, &event.payload, now_ms, "");
        ops.extend(schedule_new(ws, d, now_ms)?.1);
    }
    Ok(ops)
}

/// The ops that file `d` (a new pending delivery) under a fresh id, with its outbox entry due
/// at `now_ms`; returns the id too.
pub fn schedule_new(ws: &str, mut d: DeliveryDoc, now_ms: u64) -> Result<(String, Vec<Op>)> {
    let id = new_delivery_id(&d.webhook_id, now_ms)?;
    let outbox = outbox_id(now_ms, &id);
    d.outbox_id = Some(outbox.clone());
    d.next_attempt_at_ms = Some(now_ms);
    let o = OutboxDoc { delivery_id: id.clone(), due_at_ms: now_ms };
    let ops = vec![put(DocKind::Delivery, ws, &id, &d)?, put(DocKind::Outbox, ws, &outbox, &o)?];
    Ok((id, ops))
}

/// A `PutDoc` op of `doc`.
pub fn put<D: Serialize>(kind: DocKind, ws: &str, id: &str, doc: &D) -> Result<Op> {
    let doc = serde_json::to_value(doc).map_err(|e| WebhookError::Encode(e.to_string()))?;
    Ok(Op::PutDoc { kind, workspace_id: ws.to_owned(), id: id.to_owned(), doc })
}

/// Decodes a stored document.
pub fn decode<D: serde::de::DeserializeOwned>(kind: &'static str, id: &str, v: serde_json::Value) -> Result<D> {
    serde_json::from_value(v).map_err(|e| WebhookError::Corrupt { kind, id: id.to_owned(), message: e.to_string() })
}

/// Checks an endpoint URL: absolute `http` or `https`, a host, at most [`MAX_URL_LEN`] bytes,
/// no credentials (`user:pass@`), no fragment. Returns why not.
pub fn validate_url(url: &str) -> std::result::Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    if url.contains('#') {
        return Err("must not have a fragment".into());
    }
    let uri: http::Uri = url.parse().map_err(|_| "is not a valid absolute URL".to_owned())?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    let Some(authority) = uri.authority() else { return Err("must have a host".into()) };
    if authority.as_str().contains('@') {
        return Err("must not contain credentials (user:password@); the signature authenticates deliveries".into());
    }
    if authority.host().is_empty() {
        return Err("must have a host".into());
    }
    Ok(())
}

/// Checks an event list: non-empty, no repeats.
pub fn validate_events(events: &[EventType]) -> std::result::Result<(), String> {
    if events.is_empty() {
        return Err("must name at least one event type".into());
    }
    let mut seen = events.to_vec();
    seen.sort();
    seen.dedup();
    if seen.len() != events.len() {
        return Err("must not repeat an event type".into());
    }
    Ok(())
}

fn ts(ms: u64) -> Result<Timestamp> {
    Timestamp::from_unix_ms(ms).map_err(|e| WebhookError::Encode(format!("time {ms}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn event_types_have_their_wire_names() {
        for t in EventType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
        assert!(serde_json::from_str::<EventType>("\"user.created\"").is_err());
    }

    #[test]
    fn ids_are_valid_store_ids_and_sort_as_documented() {
        let wh = new_id("wh_").unwrap();
        let older = new_delivery_id(&wh, 1_000).unwrap();
        let newer = new_delivery_id(&wh, 2_000).unwrap();
        assert!(newer < older, "newest first");
        let same_ms: Vec<String> = (0..100).map(|_| new_delivery_id(&wh, 3_000).unwrap()).collect();
        assert!(same_ms.windows(2).all(|w| w[1] < w[0]), "newest first within one millisecond too");
        assert!(older.starts_with(&delivery_prefix(&wh)) && delivery_prefix(&wh) < newer);
        assert!(outbox_id(5, &older) < outbox_id(6, &newer));
        assert_eq!(outbox_created_ms(&outbox_id(9_999, &older)), Some(1_000));
        assert_eq!(outbox_created_ms(&outbox_id(0, &newer)), Some(2_000));
        assert_eq!(outbox_created_ms("0000000000000001-x"), None);
        assert!(outbox_id(0xff, &older) < outbox_id(0x100, &older), "fixed width: numeric order");
        for id in [&wh, &older, &outbox_id(u64::MAX, &older), &signed_event_id("ws_1", 7)] {
            allowly_receipt::types::validate_id("id", id).unwrap();
        }
        assert_eq!(signed_event_id("ws_1", 7), signed_event_id("ws_1", 7));
        assert_ne!(signed_event_id("ws_1", 7), signed_event_id("ws_1", 8));
        assert_ne!(signed_event_id("ws_1", 7), signed_event_id("ws_2", 7));
    }

    #[test]
    fn enqueue_targets_enabled_subscribers_only() {
        let ev = Event::new("evt_1".into(), EventType::AuthorizationRevoked, 5, serde_json::json!({"a": 1})).unwrap();
        assert_eq!(
            ev.payload,
            r#"{"type":"authorization.revoked","timestamp":"1970-01-01T00:00:00.005Z","data":{"a":1}}"#
        );
        let eps = [
            Endpoint {
                id: "wh_a".into(),
                events: vec![EventType::AuthorizationRevoked],
                disabled: false,
                scopes: None,
            },
            Endpoint { id: "wh_b".into(), events: vec![EventType::AuthorizationRevoked], disabled: true, scopes: None },
            Endpoint { id: "wh_c".into(), events: vec![EventType::ReceiptSigned], disabled: false, scopes: None },
        ];
        let ops = enqueue("ws_1", &eps, &ev, 5).unwrap();
        assert_eq!(ops.len(), 2);
        let Op::PutDoc { kind: DocKind::Delivery, id, doc, .. } = &ops[0] else { panic!("{ops:?}") };
        let d: DeliveryDoc = decode("delivery", id, doc.clone()).unwrap();
        assert_eq!((d.webhook_id.as_str(), d.status, d.attempts), ("wh_a", DeliveryStatus::Pending, 0));
        let Op::PutDoc { kind: DocKind::Outbox, id: oid, doc, .. } = &ops[1] else { panic!("{ops:?}") };
        assert_eq!(Some(oid), d.outbox_id.as_ref());
        let o: OutboxDoc = decode("outbox", oid, doc.clone()).unwrap();
        assert_eq!((o.delivery_id.as_str(), o.due_at_ms), (id.as_str(), 5));
    }

    #[test]
    fn urls_and_event_lists_are_checked() {
        for ok in ["http://127.0.0.1:9/x", "https://example.com/hooks?a=b", "http://[::1]:8080/"] {
            assert_eq!(validate_url(ok), Ok(()), "{ok}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        for bad in
            ["", "example.com/x", "ftp://example.com/", "http://", "https://u:p@example.com/", "/relative", &long]
        {
            assert!(validate_url(bad).is_err(), "{bad:?}");
        }
        assert!(validate_url("http://example.com/#frag").is_err());
        assert!(validate_events(&[]).is_err());
        assert!(validate_events(&[EventType::ReceiptSigned, EventType::ReceiptSigned]).is_err());
        assert!(validate_events(&EventType::ALL).is_ok());
    }

    #[test]
    fn the_attempt_log_is_bounded_and_the_count_is_not() {
        let ev = Event::new("evt_1".into(), EventType::ReceiptSigned, 1, serde_json::json!({})).unwrap();
        let ep =
            [Endpoint { id: "wh_a".into(), events: vec![EventType::ReceiptSigned], disabled: false, scopes: None }];
        let ops = enqueue("ws", &ep, &ev, 1).unwrap();
        let Op::PutDoc { id, doc, .. } = &ops[0] else { panic!() };
        let mut d: DeliveryDoc = decode("delivery", id, doc.clone()).unwrap();
        for i in 0..(MAX_ATTEMPT_LOG as u64 + 5) {
            d.record(AttemptRecord { at_ms: i, duration_ms: 1, status_code: Some(500), error: None });
        }
        assert_eq!(d.attempts as usize, MAX_ATTEMPT_LOG + 5);
        assert_eq!(d.log.len(), MAX_ATTEMPT_LOG);
        assert_eq!(d.log[0].at_ms, 5);
        let v = d.view(id).unwrap();
        assert_eq!(v.last_status_code, Some(500));
        assert_eq!(v.payload["type"], "receipt.signed");
    }
}

//! Allowly's outgoing webhooks, following the Standard Webhooks conventions (spec 1.0.0).
//!
//! - [`signature`]: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<HMAC-SHA256>` with
//!   a per-endpoint `whsec_` secret (never the workspace's receipt key).
//! - [`model`]: the stored documents (endpoint, delivery, outbox entry), the API views, the
//!   event payload `{"type", "timestamp", "data"}`, and [`model::enqueue`], which the engine
//!   calls to add an event's deliveries *to the same write* as the receipt that caused it — so
//!   an event exists if and only if its receipt does.
//! - [`worker`]: the delivery worker (outbox scan, attempts, results) and [`schedule`], its
//!   retry schedule (exponential backoff with jitter over a day, then `failed`).
//! - [`client`]: one attempt over HTTP/1.1, `http://` or `https://` (`allowly-tls`: rustls, Mozilla roots).
//! - [`metrics`] (`allowly_webhook_*`), [`error`].
//!
//! Events: `escalation.requested`, `escalation.resolved`, `authorization.revoked` (written by
//! the workspace actor with their receipt) and `receipt.signed` (written by the signing pipeline
//! with the signature it stores).
//!
//! - [`destination`]: which addresses deliveries may go to. By default only public unicast
//!   addresses (the spec's SSRF warning): IP-literal URLs in loopback, private, CGNAT,
//!   link-local, unique-local, multicast and similar ranges are refused at registration, and
//!   every resolved address is checked at delivery (the connection goes only to an address that
//!   passed). `--webhook-allow-private-networks` lifts this for receivers on private networks.
//!
//! Endpoint life cycle: created (secret shown once), disabled/enabled, secret rotated (the old
//! secret keeps signing for a grace period, so receivers can switch without losing requests),
//! deleted (its unfinished deliveries are `cancelled`). Escalation events can be routed by scope
//! (an endpoint's `scopes` filter). A finished delivery can be sent again as a new delivery of
//! the same event (same `webhook-id`); finished deliveries are deleted after a retention period
//! ([`worker::sweep_finished`]).
//!
//! With `allowly-server`, this is the only crate that speaks HTTP; the engine decides what to
//! send and never sends it.

pub mod client;
pub mod destination;
pub mod error;
pub mod metrics;
pub mod model;
pub mod schedule;
pub mod signature;
pub mod worker;

pub use destination::{Policy, NOT_ALLOWED};
pub use error::{Result, WebhookError};
pub use metrics::Metrics;
pub use model::{
    CreatedWebhook, DeliveryStatus, DeliveryView, Endpoint, Event, EventType, NewWebhook, RotateSecret, WebhookDoc,
    WebhookView,
};
pub use schedule::WebhookConfig;
pub use signature::Secret;
pub use worker::{Control, Worker};

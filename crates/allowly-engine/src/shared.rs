//! The engine's registries on top of [`Services`]: the committer, the signing pipelines, the
//! running workspace actors and their locks. The actors and the facade use it; the services
//! below (pipeline, committer, health) take the `Services` and never see it.

use std::ops::Deref;
use std::sync::Arc;

use dashmap::DashMap;

use crate::mailbox::WsHandle;
use crate::pipeline::Pipelines;
use crate::services::Services;

/// Per-workspace locks. `spawn` serialises starting an actor (held briefly); `life` is held by a
/// running actor for its whole life, so a new actor for the workspace can only start once the
/// previous one is gone — two sequencers for one log would fork it.
#[derive(Debug, Default)]
pub(crate) struct WsLocks {
    pub spawn: tokio::sync::Mutex<()>,
    pub life: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) struct Shared {
    pub services: Arc<Services>,
    pub pipelines: Arc<Pipelines>,
    pub actors: DashMap<String, WsHandle>,
    pub locks: DashMap<String, Arc<WsLocks>>,
    /// Serialises keyed workspace creations (the only keyed request outside an actor).
    pub instance_idem: tokio::sync::Mutex<()>,
    /// Long-polls waiting for a confirmation or an escalation to change (`inbox`).
    pub watchers: crate::watchers::Watchers,
}

/// Everything in [`Services`] reads as a field of `Shared` (`shared.store`, `shared.metrics`).
impl Deref for Shared {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

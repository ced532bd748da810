//! Allowly's engine: workspaces, authorizations, decisions, one actor per workspace, and the
//! signing pipeline. [`Engine`] is the whole API; the server maps HTTP onto it.

pub mod config;
pub mod decide;
mod engine;
pub mod error;
pub mod model;

pub use config::EngineConfig;
pub use engine::Engine;
pub use error::{EngineError, Result};

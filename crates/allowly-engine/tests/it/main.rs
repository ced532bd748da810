//! The engine's integration tests, one binary (each extra test binary links RocksDB again).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod admin;
mod deps;
mod engine;
mod hitl;
mod support;
mod webhooks;

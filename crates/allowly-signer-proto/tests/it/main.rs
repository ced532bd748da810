//! The protocol's integration tests, one binary (each extra test binary is linked again).
//! `tests/alloc.rs` stays a binary of its own: it installs a counting `#[global_allocator]`,
//! which would count every allocation of every test sharing its process.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod client;
mod codec;
mod common;
mod frame;
mod props;

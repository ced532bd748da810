//! Forged counts and lengths must fail before allocating.
//!
//! This binary installs a counting global allocator (a thin wrapper around
//! `System`), which needs `unsafe impl GlobalAlloc`. That is the only unsafe
//! code in the crate and it exists only in this test; the library itself is
//! `#![forbid(unsafe_code)]`. Counting is per thread, so tests running in
//! parallel do not disturb each other.
//!
//! It stays a test binary of its own rather than a module of `tests/it` (the
//! crate's other integration tests, one binary): a `#[global_allocator]` is
//! the allocator of the whole process, so there every other test would run on
//! this instrumented allocator too.
#![allow(unsafe_code)]
// Tests may unwrap: a failure should abort the test loudly.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use allowly_signer_proto::{decode_request, decode_response, read_frame, ProtoError, MAX_BATCH_LEAVES, MAX_FRAME};

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

fn count(bytes: usize) {
    let _ = ALLOCATED.try_with(|c| c.set(c.get().saturating_add(bytes)));
}

// SAFETY: every method forwards unchanged to `System`; we only add a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated on this thread while running `f`.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

fn header(kind: u8) -> Vec<u8> {
    let mut f = vec![allowly_signer_proto::PROTOCOL_VERSION, kind];
    f.extend(7u64.to_be_bytes());
    f
}

/// Decoding `frame` fails fast with at most a few bytes allocated.
fn assert_cheap_failure(name: &str, frame: &[u8], response: bool) -> ProtoError {
    let started = Instant::now();
    let (res, bytes) =
        allocated_by(|| if response { decode_response(frame).map(drop) } else { decode_request(frame).map(drop) });
    let e = res.expect_err(name);
    assert!(bytes < 256, "{name}: allocated {bytes} bytes for a {}-byte frame", frame.len());
    assert!(started.elapsed() < Duration::from_secs(1), "{name}: slow");
    assert_eq!(e.request_id(), Some(7), "{name}");
    e
}

#[test]
fn forged_counts_fail_before_allocating() {
    for count in [u32::MAX, 1 << 20, 1_000] {
        // Keys: vec<KeyInfo> with an absurd count and no items.
        let mut f = header(0x82);
        f.extend(count.to_be_bytes());
        f.extend([0u8; 10]);
        let e = assert_cheap_failure("keys", &f, true);
        assert!(
            matches!(e, ProtoError::CountTooLarge { field: "keys", .. } | ProtoError::TooLong { field: "keys", .. }),
            "{e}"
        );

        // Appended.proofs: count bounded by MAX_BATCH_LEAVES, then by bytes left.
        let mut f = header(0x85);
        f.extend([0u8; 16]);
        f.extend(0u32.to_be_bytes());
        f.extend(count.to_be_bytes());
        let e = assert_cheap_failure("proofs", &f, true);
        assert!(matches!(e, ProtoError::TooLong { .. } | ProtoError::CountTooLarge { .. }), "{e}");

        // Rotated.rotation.body: bytes.
        let mut f = header(0x84);
        f.extend(0u32.to_be_bytes());
        f.extend(count.to_be_bytes());
        f.extend([0u8; 3]);
        assert_cheap_failure("body", &f, true);

        // A text length.
        let mut f = header(0x87);
        f.extend(count.to_be_bytes());
        f.extend(b"abc");
        assert_cheap_failure("text", &f, true);
    }
}

#[test]
fn forged_leaf_counts_fail_before_allocating() {
    for count in [u32::MAX, MAX_BATCH_LEAVES as u32] {
        let mut f = header(0x05);
        f.extend(1u32.to_be_bytes());
        f.push(b'w');
        f.extend(0u64.to_be_bytes());
        f.extend(count.to_be_bytes());
        f.extend([0u8; 31]);
        let e = assert_cheap_failure("bodies", &f, false);
        assert!(matches!(e, ProtoError::BatchTooLarge { .. } | ProtoError::CountTooLarge { .. }), "{e}");
    }
}

#[test]
fn proof_count_cannot_amplify_memory() {
    // The largest admissible number of empty proofs, all present: memory
    // stays bounded by MAX_BATCH_LEAVES Vec headers (24 bytes each).
    let mut f = header(0x85);
    f.extend([0u8; 16]);
    f.extend(0u32.to_be_bytes());
    f.extend((MAX_BATCH_LEAVES as u32).to_be_bytes());
    f.extend(vec![0u8; 4 * MAX_BATCH_LEAVES]);
    let (res, bytes) = allocated_by(|| decode_response(&f).map(drop));
    res.unwrap();
    assert!(bytes <= 24 * MAX_BATCH_LEAVES + 1024, "allocated {bytes}");
}

#[test]
fn read_frame_allocates_only_what_arrives() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // A valid maximal length followed by only 100 bytes and EOF.
    let mut wire = (MAX_FRAME as u32).to_be_bytes().to_vec();
    wire.extend([0u8; 100]);
    let mut reader: &[u8] = &wire;
    let mut buf = Vec::new();
    let (res, bytes) = allocated_by(|| rt.block_on(read_frame(&mut reader, &mut buf)).map(drop));
    let e = res.unwrap_err();
    assert!(matches!(&e, ProtoError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof));
    assert!(bytes < 64 * 1024, "announced 16 MiB, sent 100 bytes, allocated {bytes}");

    // An oversize length: nothing reserved at all.
    let wire = (MAX_FRAME as u32 + 1).to_be_bytes();
    let mut reader: &[u8] = &wire;
    let mut buf = Vec::new();
    let (res, bytes) = allocated_by(|| rt.block_on(read_frame(&mut reader, &mut buf)).map(drop));
    assert!(matches!(res, Err(ProtoError::FrameLength { .. })));
    assert_eq!(bytes, 0);
}

#[test]
fn the_counter_counts() {
    // Guards the other tests against passing vacuously.
    let (v, bytes) = allocated_by(|| std::hint::black_box(vec![0u8; 1000]));
    assert_eq!(v.len(), 1000);
    assert!(bytes >= 1000, "counted {bytes}");
}

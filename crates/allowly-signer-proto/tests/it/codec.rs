//! Round trips, known-answer vectors and rejection of malformed frames.
// Tests may unwrap: a failure should abort the test loudly.

use crate::common::*;
use allowly_signer_proto::{
    decode_request, decode_response, encode_request, encode_response, Append, AppendResult, ErrorCode, ErrorReply,
    ProtoError, Request, Response, SignedLeaf, MAX_BATCH_BODY_BYTES, MAX_BATCH_LEAVES, MAX_BODY_LEN,
    MAX_CHECKPOINT_LEN, MAX_CONSISTENCY_HASHES, MAX_FRAME, MAX_KEY_RECORD_LEN, MAX_MANY_APPENDS, MAX_PROOF_HASHES,
    PROTOCOL_VERSION,
};

fn roundtrip_req(id: u64, req: Request) {
    let frame = encode_req(id, &req);
    let declared = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(declared, frame.len() - 4, "length prefix");
    assert_eq!(decode_request(body_of(&frame)).unwrap(), (id, req));
}

fn roundtrip_resp(id: u64, resp: Response) {
    let frame = encode_resp(id, &resp);
    let declared = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(declared, frame.len() - 4, "length prefix");
    assert_eq!(decode_response(body_of(&frame)).unwrap(), (id, resp));
}

#[test]
fn roundtrip_ping() {
    roundtrip_req(0, Request::Ping);
    roundtrip_req(u64::MAX, Request::Ping);
}

#[test]
fn roundtrip_create_key() {
    roundtrip_req(7, Request::CreateKey { workspace_id: "acme_prod-1".into() });
}

#[test]
fn roundtrip_list_keys() {
    roundtrip_req(8, Request::ListKeys { workspace_id: "a".into() });
}

#[test]
fn roundtrip_rotate_key() {
    roundtrip_req(9, Request::RotateKey { workspace_id: "Z".repeat(128), expected_size: u64::MAX });
}

#[test]
fn roundtrip_append_batch() {
    roundtrip_req(
        10,
        Request::AppendBatch {
            workspace_id: "ws".into(),
            expected_size: 3,
            bodies: vec![vec![7; 9]],
            want_proofs: false,
        },
    );
    roundtrip_req(
        12,
        Request::AppendBatch {
            workspace_id: "ws".into(),
            expected_size: 3,
            bodies: vec![vec![7; 9]],
            want_proofs: true,
        },
    );
    roundtrip_req(
        11,
        Request::AppendBatch {
            workspace_id: "ws".into(),
            expected_size: u64::MAX,
            bodies: (0..MAX_BATCH_LEAVES).map(|i| vec![(i % 251) as u8; 512]).collect(),
            want_proofs: true,
        },
    );
}

#[test]
fn roundtrip_latest_checkpoint() {
    roundtrip_req(12, Request::LatestCheckpoint { workspace_id: "_-_".into() });
}

#[test]
fn roundtrip_metrics() {
    roundtrip_req(13, Request::Metrics);
}

#[test]
fn roundtrip_backup_requests() {
    roundtrip_req(14, Request::Snapshot { name: "backup-20261206T031500Z".into() });
    roundtrip_req(15, Request::LogSizes { after: None });
    roundtrip_req(16, Request::LogSizes { after: Some("ws_a".into()) });
    roundtrip_resp(17, Response::Snapshotted { workspaces: 3, journal_bytes: 4096, audit_bytes: 123 });
    roundtrip_resp(18, Response::LogSizes { sizes: vec![("ws_a".into(), 7), ("ws_b".into(), 0)], more: true });
}

#[test]
fn roundtrip_moving_a_workspace_between_signers() {
    roundtrip_req(19, Request::ExportKeys { workspace_id: "ws_a".into() });
    roundtrip_resp(20, Response::KeyRecord { record: b"{\"version\":1}".to_vec() });
    roundtrip_req(21, Request::ImportKeys { workspace_id: "ws_a".into(), record: vec![7; MAX_KEY_RECORD_LEN] });
    roundtrip_resp(22, Response::Keys { keys: vec![] });
    roundtrip_req(
        23,
        Request::Adopt {
            workspace_id: "ws_a".into(),
            checkpoint: "n".repeat(MAX_CHECKPOINT_LEN),
            peaks: vec![[1; 32]; MAX_PROOF_HASHES],
            proof: vec![[2; 32]; MAX_CONSISTENCY_HASHES],
            last_leaf_ms: u64::MAX,
        },
    );
    roundtrip_resp(24, Response::Adopted { size: 9, root: [3; 32], changed: false });
    for (code, n) in [(ErrorCode::KeyRecordRefused, 16), (ErrorCode::AdoptRefused, 17)] {
        assert_eq!((code.as_u16(), ErrorCode::from_u16(n)), (n, code));
    }
}

/// Past each bound of the new requests, neither side encodes nor decodes: a key record of
/// 0 or more than `MAX_KEY_RECORD_LEN` bytes, a checkpoint over `MAX_CHECKPOINT_LEN`, more peaks
/// than `MAX_PROOF_HASHES` or proof hashes than `MAX_CONSISTENCY_HASHES`.
#[test]
fn the_moving_requests_are_bounded_on_both_sides() {
    let adopt = |checkpoint: usize, peaks: usize, proof: usize| Request::Adopt {
        workspace_id: "ws_a".into(),
        checkpoint: "n".repeat(checkpoint),
        peaks: vec![[1; 32]; peaks],
        proof: vec![[2; 32]; proof],
        last_leaf_ms: 0,
    };
    let over = [
        Request::ImportKeys { workspace_id: "ws_a".into(), record: vec![] },
        Request::ImportKeys { workspace_id: "ws_a".into(), record: vec![7; MAX_KEY_RECORD_LEN + 1] },
        adopt(MAX_CHECKPOINT_LEN + 1, 1, 0),
        adopt(10, MAX_PROOF_HASHES + 1, 0),
        adopt(10, 1, MAX_CONSISTENCY_HASHES + 1),
    ];
    for req in over {
        let mut out = Vec::new();
        assert!(encode_request(1, &req, &mut out).is_err(), "{} encoded past a bound", req.name());
        assert!(out.is_empty());
    }
    // The same frames built by hand: the decoder refuses them too (a count past the bound, before
    // reading what it counts).
    let mut body = 4u32.to_be_bytes().to_vec();
    body.extend(b"ws_a");
    body.extend(u32::try_from(MAX_KEY_RECORD_LEN + 1).unwrap().to_be_bytes());
    body.extend(vec![7; MAX_KEY_RECORD_LEN + 1]);
    let mut f = vec![PROTOCOL_VERSION, 0x13];
    f.extend(5u64.to_be_bytes());
    f.extend(&body);
    assert!(matches!(decode_request(&f), Err(ProtoError::TooLong { field: "record", request_id: 5, .. })));
    let mut empty = vec![PROTOCOL_VERSION, 0x13];
    empty.extend(6u64.to_be_bytes());
    empty.extend(4u32.to_be_bytes());
    empty.extend(b"ws_a");
    empty.extend(0u32.to_be_bytes());
    assert!(matches!(decode_request(&empty), Err(ProtoError::EmptyBody { request_id: 6 })));
}

#[test]
fn a_snapshot_name_that_could_leave_its_directory_does_not_encode() {
    let mut out = Vec::new();
    assert!(encode_request(1, &Request::Snapshot { name: "../../etc".into() }, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn roundtrip_pong() {
    roundtrip_resp(1, Response::Pong);
}

#[test]
fn roundtrip_keys() {
    roundtrip_resp(2, Response::Keys { keys: vec![] });
    roundtrip_resp(3, Response::Keys { keys: vec![key(0), key(1), key(2)] });
}

#[test]
fn roundtrip_rotated() {
    roundtrip_resp(4, Response::Rotated { keys: vec![key(1), key(0)], rotation: signed_leaf() });
}

#[test]
fn roundtrip_appended() {
    roundtrip_resp(
        5,
        Response::Appended {
            old_size: 10,
            new_size: 12,
            checkpoint: "note".into(),
            proofs: vec![vec![[4; 32], [5; 32]], vec![]],
        },
    );
}

#[test]
fn roundtrip_checkpoint() {
    roundtrip_resp(6, Response::Checkpoint { size: 0, checkpoint: None });
    roundtrip_resp(7, Response::Checkpoint { size: 9, checkpoint: Some("n\u{1F600}".into()) });
}

#[test]
fn roundtrip_metrics_text() {
    roundtrip_resp(8, Response::MetricsText { text: "signer_up 1\n".into() });
}

#[test]
fn roundtrip_error() {
    for code in 0..=15u16 {
        roundtrip_resp(
            9,
            Response::Error(ErrorReply {
                code: ErrorCode::from_u16(code),
                message: format!("code {code}"),
                current_size: (code == 6).then_some(12),
            }),
        );
    }
}

#[test]
fn roundtrip_all_samples() {
    for (i, r) in sample_requests().into_iter().enumerate() {
        roundtrip_req(i as u64, r);
    }
    for (i, r) in sample_responses().into_iter().enumerate() {
        roundtrip_resp(i as u64, r);
    }
}

#[test]
fn error_code_u16_mapping_is_total_and_canonical() {
    for v in 0..=u16::MAX {
        assert_eq!(ErrorCode::from_u16(v).as_u16(), v);
    }
    assert_eq!(ErrorCode::from_u16(6), ErrorCode::SizeMismatch);
    assert_eq!(ErrorCode::from_u16(12), ErrorCode::StorageFailed);
    assert_eq!(ErrorCode::from_u16(13), ErrorCode::ReceiptRefused);
    assert_eq!(ErrorCode::from_u16(14), ErrorCode::KeyStoreNotOpen);
    assert_eq!(ErrorCode::from_u16(15), ErrorCode::TokenUnavailable);
    assert_eq!(ErrorCode::from_u16(16), ErrorCode::KeyRecordRefused);
    assert_eq!(ErrorCode::from_u16(17), ErrorCode::AdoptRefused);
    assert_eq!(ErrorCode::from_u16(18), ErrorCode::Unknown(18));
    assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown(0));
}

// ---- known-answer vectors: pin the byte layout ----

#[test]
fn kat_adopt_and_its_answer() {
    let req = Request::Adopt {
        workspace_id: "w".into(),
        checkpoint: "n".into(),
        peaks: vec![[0xAA; 32]],
        proof: vec![],
        last_leaf_ms: 0x0102,
    };
    let mut want = vec![0, 0, 0, 68, 3, 0x14, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, b'w', 0, 0, 0, 1, b'n', 0, 0, 0, 1];
    want.extend([0xAA; 32]);
    // No proof hashes, then last_leaf_ms.
    want.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(encode_req(9, &req), want);
    let mut want = vec![0, 0, 0, 51, 3, 0x94, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 5];
    want.extend([0xBB; 32]);
    want.push(1);
    assert_eq!(encode_resp(9, &Response::Adopted { size: 5, root: [0xBB; 32], changed: true }), want);
}

#[test]
fn kat_ping() {
    assert_eq!(encode_req(0x0102_0304_0506_0708, &Request::Ping), [0, 0, 0, 10, 3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn kat_append_batch() {
    for want_proofs in [false, true] {
        let req = Request::AppendBatch {
            workspace_id: "w".into(),
            expected_size: 5,
            bodies: vec![b"{}".to_vec()],
            want_proofs,
        };
        let frame = encode_req(1, &req);
        let mut expect = vec![0, 0, 0, 34, 3, 0x05, 0, 0, 0, 0, 0, 0, 0, 1];
        expect.extend([0, 0, 0, 1, b'w']);
        expect.extend([0, 0, 0, 0, 0, 0, 0, 5]);
        expect.extend([0, 0, 0, 1]); // v3: bodies, each with its length
        expect.extend([0, 0, 0, 2, b'{', b'}']);
        expect.push(u8::from(want_proofs)); // v2: one bool after the leaves
        assert_eq!(frame, expect);
    }
}

fn append(ws: &str, expected_size: u64, bodies: Vec<Vec<u8>>) -> Append {
    Append { workspace_id: ws.into(), expected_size, bodies }
}

#[test]
fn kat_append_many_and_its_answer() {
    let req = Request::AppendMany {
        appends: vec![append("w", 5, vec![b"{}".to_vec()]), append("v", 0, vec![b"1".to_vec()])],
    };
    let mut expect = vec![0, 0, 0, 59, 3, 0x08, 0, 0, 0, 0, 0, 0, 0, 1];
    expect.extend([0, 0, 0, 2]); // appends
    expect.extend([0, 0, 0, 1, b'w', 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, b'{', b'}']);
    expect.extend([0, 0, 0, 1, b'v', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'1']);
    assert_eq!(encode_req(1, &req), expect);
    roundtrip_req(1, req);

    let resp = Response::AppendedMany {
        results: vec![
            AppendResult::Appended { old_size: 5, new_size: 6, checkpoint: "c".into() },
            AppendResult::Error(ErrorReply {
                code: ErrorCode::SizeMismatch,
                message: "x".into(),
                current_size: Some(3),
            }),
        ],
    };
    let mut expect = vec![0, 0, 0, 53, 3, 0x88, 0, 0, 0, 0, 0, 0, 0, 2];
    expect.extend([0, 0, 0, 2]); // results
    expect.extend([0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 1, b'c']);
    expect.extend([1, 0, 6, 0, 0, 0, 1, b'x', 1, 0, 0, 0, 0, 0, 0, 0, 3]);
    assert_eq!(encode_resp(2, &resp), expect);
    roundtrip_resp(2, resp);
}

#[test]
fn append_many_limits_hold_on_both_sides() {
    let one = |i: usize| append(&format!("w{i}"), 0, vec![b"{}".to_vec()]);
    let refused = |req: Request, want: fn(&ProtoError) -> bool, code: ErrorCode| {
        let mut out = vec![0xEE];
        let e = encode_request(7, &req, &mut out).unwrap_err();
        assert!(want(&e), "encode: {e}");
        assert_eq!(out, [0xEE], "a refused request leaves the buffer as it was");
        assert_eq!(e.code(), code);
    };
    refused(
        Request::AppendMany { appends: vec![] },
        |e| matches!(e, ProtoError::EmptyBatch { .. }),
        ErrorCode::InvalidArgument,
    );
    refused(
        Request::AppendMany { appends: (0..=MAX_MANY_APPENDS).map(one).collect() },
        |e| matches!(e, ProtoError::TooLong { field: "appends", .. }),
        ErrorCode::BadFrame,
    );
    refused(
        Request::AppendMany { appends: vec![one(1), one(2), one(1)] },
        |e| matches!(e, ProtoError::DuplicateWorkspace { .. }),
        ErrorCode::InvalidArgument,
    );
    refused(
        Request::AppendMany { appends: vec![one(1), append("w2", 0, vec![])] },
        |e| matches!(e, ProtoError::EmptyBatch { .. }),
        ErrorCode::InvalidArgument,
    );
    // Leaves and body bytes are limited over the whole request, not per append.
    let half = MAX_BATCH_LEAVES / 2;
    refused(
        Request::AppendMany {
            appends: vec![append("a", 0, vec![vec![1]; half]), append("b", 0, vec![vec![1]; half + 1])],
        },
        |e| matches!(e, ProtoError::BatchTooLarge { count, .. } if *count == MAX_BATCH_LEAVES as u64 + 1),
        ErrorCode::BatchTooLarge,
    );
    let big = vec![vec![7u8; MAX_BODY_LEN]; MAX_BATCH_BODY_BYTES / MAX_BODY_LEN];
    refused(
        Request::AppendMany { appends: vec![append("a", 0, big.clone()), append("b", 0, vec![vec![1]])] },
        |e| matches!(e, ProtoError::BatchBytesTooLarge { .. }),
        ErrorCode::BatchTooLarge,
    );
    // Exactly at the limits: accepted.
    roundtrip_req(8, Request::AppendMany { appends: vec![append("a", 0, big)] });
    roundtrip_req(9, Request::AppendMany { appends: (0..MAX_MANY_APPENDS).map(one).collect() });

    // A duplicate the encoder would refuse, written by hand: the decoder refuses it too.
    let mut f = header(0x08, 11);
    f.extend([0, 0, 0, 2]);
    for _ in 0..2 {
        f = with_str(f, b"w");
        f.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'x']);
    }
    let e = decode_request(&f).unwrap_err();
    assert!(matches!(e, ProtoError::DuplicateWorkspace { request_id: 11 }), "{e}");
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    // And a forged count is refused before anything is allocated.
    let mut f = header(0x08, 12);
    f.extend(u32::MAX.to_be_bytes());
    assert!(decode_request(&f).is_err());
}

#[test]
fn want_proofs_is_a_strict_bool_and_required() {
    let req = Request::AppendBatch {
        workspace_id: "w".into(),
        expected_size: 5,
        bodies: vec![vec![0xAA; 32]],
        want_proofs: true,
    };
    let frame = encode_req(9, &req);
    let body = &frame[4..];
    // The flag is the last byte: without it the frame is truncated (a v1 body is not accepted).
    let e = decode_request(&body[..body.len() - 1]).unwrap_err();
    assert!(matches!(e, ProtoError::Truncated { field: "want_proofs", .. }), "{e}");
    let mut bad = body.to_vec();
    *bad.last_mut().unwrap() = 2;
    let e = decode_request(&bad).unwrap_err();
    assert!(matches!(e, ProtoError::InvalidTag { field: "want_proofs", tag: 2, .. }), "{e}");
    assert_eq!(e.request_id(), Some(9));
}

#[test]
fn kat_error_and_checkpoint() {
    let frame = encode_resp(
        2,
        &Response::Error(ErrorReply { code: ErrorCode::SizeMismatch, message: "x".into(), current_size: Some(3) }),
    );
    let mut expect = vec![0, 0, 0, 26, 3, 0xFF, 0, 0, 0, 0, 0, 0, 0, 2];
    expect.extend([0, 6, 0, 0, 0, 1, b'x', 1, 0, 0, 0, 0, 0, 0, 0, 3]);
    assert_eq!(frame, expect);

    let frame = encode_resp(3, &Response::Checkpoint { size: 1, checkpoint: None });
    let mut expect = vec![0, 0, 0, 19, 3, 0x86, 0, 0, 0, 0, 0, 0, 0, 3];
    expect.extend([0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(frame, expect);
}

#[test]
fn kat_key_info_layout() {
    let frame = encode_resp(0, &Response::Keys { keys: vec![key(1)] });
    let body = &frame[14..];
    assert_eq!(&body[..4], &[0, 0, 0, 1]); // count
    assert_eq!(&body[4..8], &[1, 1, 2, 3]); // key_id
    assert_eq!(&body[8..40], &[1; 32]); // public_key
    assert_eq!(&body[40..48], &1_700_000_000_001u64.to_be_bytes());
    assert_eq!(body[48], 1); // not_after_ms present
    assert_eq!(&body[49..57], &1_800_000_000_000u64.to_be_bytes());
    assert_eq!(body[57], 0); // active = false
    assert_eq!(body.len(), 58);
}

// ---- rejection of malformed frames ----

fn header(kind: u8, id: u64) -> Vec<u8> {
    let mut f = vec![PROTOCOL_VERSION, kind];
    f.extend(id.to_be_bytes());
    f
}

fn with_str(mut f: Vec<u8>, s: &[u8]) -> Vec<u8> {
    f.extend((s.len() as u32).to_be_bytes());
    f.extend(s);
    f
}

#[test]
fn short_header_has_no_request_id() {
    for len in 0..10 {
        let e = decode_request(&[1u8; 10][..len]).unwrap_err();
        assert!(matches!(e, ProtoError::ShortHeader { .. }), "{e}");
        assert_eq!(e.request_id(), None);
        assert_eq!(e.code(), ErrorCode::BadFrame);
        assert!(decode_response(&[1u8; 10][..len]).is_err());
    }
}

#[test]
fn unsupported_version_keeps_request_id() {
    assert_eq!(PROTOCOL_VERSION, 3);
    // 1: a peer from before want_proofs; 2: one that sends leaf hashes; 4: a newer one.
    for version in [1u8, 2, 4] {
        let mut f = header(0x01, 77);
        f[0] = version;
        let e = decode_request(&f).unwrap_err();
        assert!(matches!(e, ProtoError::UnsupportedVersion { version: v, .. } if v == version), "{e}");
        assert_eq!(e.request_id(), Some(77));
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
        assert!(matches!(decode_response(&f), Err(ProtoError::UnsupportedVersion { .. })));
    }
}

#[test]
fn unknown_kinds_are_rejected_by_direction() {
    for kind in [0x00, 0x09, 0x81, 0xFF] {
        let e = decode_request(&header(kind, 5)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownKind, "{kind:#x}");
        assert_eq!(e.request_id(), Some(5));
    }
    for kind in [0x01, 0x80, 0x83, 0x89] {
        let e = decode_response(&header(kind, 5)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownKind, "{kind:#x}");
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut f = header(0x01, 3);
    f.push(0);
    let e = decode_request(&f).unwrap_err();
    assert!(matches!(e, ProtoError::TrailingBytes { count: 1, request_id: 3 }), "{e}");
    let mut f = body_of(&encode_resp(4, &Response::Keys { keys: vec![key(0)] })).to_vec();
    f.push(0);
    assert!(matches!(decode_response(&f), Err(ProtoError::TrailingBytes { .. })));
}

#[test]
fn workspace_ids_are_validated() {
    let bad: [&[u8]; 7] = [b"", b"a b", b"a/b", b"a.b", "é".as_bytes(), b"\xff", &[b'a'; 129]];
    for ws in bad {
        let e = decode_request(&with_str(header(0x03, 9), ws)).unwrap_err();
        assert!(matches!(e, ProtoError::InvalidWorkspaceId { request_id: 9 }), "{ws:?}: {e}");
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        let mut out = vec![0xEE];
        let req = Request::ListKeys { workspace_id: String::from_utf8_lossy(ws).into_owned() };
        assert!(encode_request(9, &req, &mut out).is_err());
        assert_eq!(out, [0xEE], "failed encode leaves the buffer untouched");
    }
    let e = decode_request(&with_str(header(0x03, 9), &[b'a'; 5000])).unwrap_err();
    assert!(matches!(e, ProtoError::TooLong { field: "workspace_id", .. }), "{e}");
}

#[test]
fn batch_limits() {
    // `n` bodies of `len` bytes each.
    let sized = |n: u32, len: u32| {
        let mut f = with_str(header(0x05, 1), b"ws");
        f.extend(0u64.to_be_bytes());
        f.extend(n.to_be_bytes());
        for _ in 0..n {
            f.extend(len.to_be_bytes());
            f.extend(std::iter::repeat_n(b'x', len as usize));
        }
        f.push(0); // want_proofs
        f
    };
    let batch = |n: u32| sized(n, 32);
    let e = decode_request(&batch(0)).unwrap_err();
    assert!(matches!(e, ProtoError::EmptyBatch { .. }));
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    let n = MAX_BATCH_LEAVES as u32;
    assert!(decode_request(&batch(n)).is_ok());
    let e = decode_request(&batch(n + 1)).unwrap_err();
    assert!(matches!(e, ProtoError::BatchTooLarge { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::BatchTooLarge);

    // Body sizes: 1..=MAX_BODY_LEN each, MAX_BATCH_BODY_BYTES together (a BatchTooLarge, not a bad frame).
    let e = decode_request(&sized(1, 0)).unwrap_err();
    assert!(matches!(e, ProtoError::EmptyBody { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(decode_request(&sized(1, MAX_BODY_LEN as u32)).is_ok());
    let e = decode_request(&sized(1, MAX_BODY_LEN as u32 + 1)).unwrap_err();
    assert!(matches!(e, ProtoError::TooLong { field: "bodies[]", .. }), "{e}");
    let per = (MAX_BATCH_BODY_BYTES / MAX_BODY_LEN) as u32;
    assert!(decode_request(&sized(per, MAX_BODY_LEN as u32)).is_ok(), "exactly the byte limit");
    let e = decode_request(&sized(per + 1, MAX_BODY_LEN as u32)).unwrap_err();
    assert!(matches!(e, ProtoError::BatchBytesTooLarge { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::BatchTooLarge);
    let too_many_bytes = vec![vec![0; MAX_BODY_LEN]; MAX_BATCH_BODY_BYTES / MAX_BODY_LEN + 1];

    for bodies in
        [vec![], vec![vec![0; 1]; MAX_BATCH_LEAVES + 1], vec![vec![]], vec![vec![0; MAX_BODY_LEN + 1]], too_many_bytes]
    {
        let mut out = Vec::new();
        let req = Request::AppendBatch { workspace_id: "ws".into(), expected_size: 0, bodies, want_proofs: false };
        assert!(encode_request(1, &req, &mut out).is_err());
        assert!(out.is_empty());
    }
}

#[test]
fn invalid_utf8_text_is_rejected() {
    let f = with_str(header(0x87, 2), b"ok\xC3\x28");
    let e = decode_response(&f).unwrap_err();
    assert!(matches!(e, ProtoError::InvalidUtf8 { field: "text", .. }), "{e}");
}

#[test]
fn tags_must_be_zero_or_one() {
    let mut f = header(0x86, 1);
    f.extend(5u64.to_be_bytes());
    f.push(2);
    assert!(matches!(decode_response(&f), Err(ProtoError::InvalidTag { tag: 2, .. })));

    let mut f = body_of(&encode_resp(1, &Response::Keys { keys: vec![key(0)] })).to_vec();
    *f.last_mut().unwrap() = 2; // `active`
    assert!(matches!(decode_response(&f), Err(ProtoError::InvalidTag { field: "keys[].active", .. })));
}

#[test]
fn proof_length_is_bounded() {
    let long = Response::Rotated {
        keys: vec![],
        rotation: SignedLeaf { proof: vec![[0; 32]; MAX_PROOF_HASHES + 1], ..signed_leaf() },
    };
    let mut out = Vec::new();
    assert!(matches!(encode_response(1, &long, &mut out), Err(ProtoError::TooLong { .. })));
    assert!(out.is_empty());
    // Hand-built: proof count 65 with all 65 hashes present.
    let mut f = header(0x85, 1);
    f.extend([0u8; 16]);
    f.extend(0u32.to_be_bytes());
    f.extend(1u32.to_be_bytes());
    f.extend(65u32.to_be_bytes());
    f.extend([0u8; 65 * 32]);
    assert!(matches!(decode_response(&f), Err(ProtoError::TooLong { field: "proofs[]", .. })));
}

#[test]
fn largest_batch_answer_fits_in_a_frame() {
    let resp = Response::Appended {
        old_size: u64::MAX - 5000,
        new_size: u64::MAX - 5000 + MAX_BATCH_LEAVES as u64,
        checkpoint: "n".repeat(1 << 20),
        proofs: vec![vec![[0x5A; 32]; MAX_PROOF_HASHES]; MAX_BATCH_LEAVES],
    };
    let frame = encode_resp(1, &resp);
    assert!(frame.len() - 4 <= MAX_FRAME);
    assert_eq!(decode_response(body_of(&frame)).unwrap(), (1, resp));
}

#[test]
fn frame_size_limit_is_exact() {
    // MetricsText body: 10 header + 4 length + text.
    let fits = Response::MetricsText { text: "m".repeat(MAX_FRAME - 14) };
    let frame = encode_resp(1, &fits);
    assert_eq!(frame.len(), MAX_FRAME + 4);
    assert_eq!(decode_response(body_of(&frame)).unwrap().1, fits);

    let over = Response::MetricsText { text: "m".repeat(MAX_FRAME - 13) };
    let mut out = b"keep".to_vec();
    let e = encode_response(1, &over, &mut out).unwrap_err();
    assert!(matches!(e, ProtoError::FrameLength { len } if len == MAX_FRAME as u64 + 1), "{e}");
    assert_eq!(out, b"keep");
    let mut big = header(0x87, 1);
    big.resize(MAX_FRAME + 1, 0);
    assert!(matches!(decode_response(&big), Err(ProtoError::FrameLength { .. })));
}

#[test]
fn encode_appends_to_existing_buffer() {
    let mut out = Vec::new();
    encode_request(1, &Request::Ping, &mut out).unwrap();
    encode_request(2, &Request::Metrics, &mut out).unwrap();
    assert_eq!(out.len(), 28);
    assert_eq!(decode_request(&out[4..14]).unwrap(), (1, Request::Ping));
    assert_eq!(decode_request(&out[18..]).unwrap(), (2, Request::Metrics));
}

#[test]
fn error_messages_name_the_problem() {
    let e = decode_request(&with_str(header(0x03, 42), b"bad id")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("request 42") && msg.contains("workspace id"), "{msg}");
}

//! Property tests: round trips, canonical encoding, and that decoding never
//! panics on arbitrary, truncated or mutated input.
// Tests may unwrap: a failure should abort the test loudly.

use crate::common::*;
use allowly_signer_proto::{
    decode_request, decode_response, encode_request, encode_response, read_frame, Append, AppendResult, ErrorCode,
    ErrorReply, KeyInfo, ProtoError, Request, Response, SignedLeaf, MAX_FRAME, PROTOCOL_VERSION,
};
use proptest::prelude::*;
use proptest::{array, collection::btree_map, collection::vec, option};

fn ws() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,128}"
}

fn hash() -> impl Strategy<Value = [u8; 32]> {
    array::uniform32(any::<u8>())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ -~\n]{0,64}"]
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        ws().prop_map(|workspace_id| Request::CreateKey { workspace_id }),
        ws().prop_map(|workspace_id| Request::ListKeys { workspace_id }),
        (ws(), any::<u64>())
            .prop_map(|(workspace_id, expected_size)| Request::RotateKey { workspace_id, expected_size }),
        (ws(), any::<u64>(), vec(vec(any::<u8>(), 1..40), 1..12), any::<bool>()).prop_map(
            |(workspace_id, expected_size, bodies, want_proofs)| Request::AppendBatch {
                workspace_id,
                expected_size,
                bodies,
                want_proofs
            }
        ),
        // Distinct workspaces (a map's keys): a repeat is refused by both sides.
        btree_map(ws(), (any::<u64>(), vec(vec(any::<u8>(), 1..40), 1..6)), 1..5).prop_map(|m| Request::AppendMany {
            appends: m
                .into_iter()
                .map(|(workspace_id, (expected_size, bodies))| Append { workspace_id, expected_size, bodies })
                .collect()
        }),
        ws().prop_map(|workspace_id| Request::LatestCheckpoint { workspace_id }),
        Just(Request::Metrics),
        ws().prop_map(|name| Request::Snapshot { name }),
        option::of(ws()).prop_map(|after| Request::LogSizes { after }),
        ws().prop_map(|workspace_id| Request::ExportKeys { workspace_id }),
        (ws(), vec(any::<u8>(), 1..200))
            .prop_map(|(workspace_id, record)| Request::ImportKeys { workspace_id, record }),
        (ws(), text(), vec(hash(), 0..8), vec(hash(), 0..8), any::<u64>()).prop_map(
            |(workspace_id, checkpoint, peaks, proof, last_leaf_ms)| Request::Adopt {
                workspace_id,
                checkpoint,
                peaks,
                proof,
                last_leaf_ms
            }
        ),
    ]
}

fn key_info() -> impl Strategy<Value = KeyInfo> {
    (array::uniform4(any::<u8>()), hash(), any::<u64>(), option::of(any::<u64>()), any::<bool>()).prop_map(
        |(key_id, public_key, not_before_ms, not_after_ms, active)| KeyInfo {
            key_id,
            public_key,
            not_before_ms,
            not_after_ms,
            active,
        },
    )
}

fn proof() -> impl Strategy<Value = Vec<[u8; 32]>> {
    vec(hash(), 0..8)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    // Through from_u16 only: `Unknown(1)` is not a canonical value.
    prop_oneof![1u16..=17, any::<u16>()].prop_map(ErrorCode::from_u16)
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Pong),
        vec(key_info(), 0..4).prop_map(|keys| Response::Keys { keys }),
        (vec(key_info(), 0..4), vec(any::<u8>(), 0..64), any::<u64>(), proof(), text()).prop_map(
            |(keys, body, log_index, proof, checkpoint)| Response::Rotated {
                keys,
                rotation: SignedLeaf { body, log_index, proof, checkpoint },
            }
        ),
        (any::<u64>(), any::<u64>(), text(), vec(proof(), 0..4)).prop_map(
            |(old_size, new_size, checkpoint, proofs)| Response::Appended { old_size, new_size, checkpoint, proofs }
        ),
        vec(
            prop_oneof![
                (any::<u64>(), any::<u64>(), text()).prop_map(|(old_size, new_size, checkpoint)| {
                    AppendResult::Appended { old_size, new_size, checkpoint }
                }),
                (error_code(), text(), option::of(any::<u64>())).prop_map(|(code, message, current_size)| {
                    AppendResult::Error(ErrorReply { code, message, current_size })
                }),
            ],
            0..5
        )
        .prop_map(|results| Response::AppendedMany { results }),
        (any::<u64>(), option::of(text())).prop_map(|(size, checkpoint)| Response::Checkpoint { size, checkpoint }),
        text().prop_map(|text| Response::MetricsText { text }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(workspaces, journal_bytes, audit_bytes)| {
            Response::Snapshotted { workspaces, journal_bytes, audit_bytes }
        }),
        (vec((ws(), any::<u64>()), 0..6), any::<bool>()).prop_map(|(sizes, more)| Response::LogSizes { sizes, more }),
        vec(any::<u8>(), 1..200).prop_map(|record| Response::KeyRecord { record }),
        (any::<u64>(), hash(), any::<bool>()).prop_map(|(size, root, changed)| Response::Adopted {
            size,
            root,
            changed
        }),
        (error_code(), text(), option::of(any::<u64>()))
            .prop_map(|(code, message, current_size)| Response::Error(ErrorReply { code, message, current_size })),
    ]
}

/// If a (possibly mutated) frame decodes, it must re-encode to exactly the
/// same bytes: the encoding is canonical, so there is no second spelling of
/// a message for a signature or cache to disagree about.
fn assert_canonical_request(body: &[u8]) {
    if let Ok((id, req)) = decode_request(body) {
        let mut out = Vec::new();
        encode_request(id, &req, &mut out).expect("decoded request re-encodes");
        assert_eq!(body_of(&out), body);
    }
}

fn assert_canonical_response(body: &[u8]) {
    if let Ok((id, resp)) = decode_response(body) {
        let mut out = Vec::new();
        encode_response(id, &resp, &mut out).expect("decoded response re-encodes");
        assert_eq!(body_of(&out), body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_roundtrip(id in any::<u64>(), req in arb_request()) {
        let frame = encode_req(id, &req);
        prop_assert_eq!(decode_request(body_of(&frame)).unwrap(), (id, req));
    }

    #[test]
    fn response_roundtrip(id in any::<u64>(), resp in arb_response()) {
        let frame = encode_resp(id, &resp);
        prop_assert_eq!(decode_response(body_of(&frame)).unwrap(), (id, resp));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        assert_canonical_request(&bytes);
        assert_canonical_response(&bytes);
    }

    /// Random bodies behind a valid header reach the body parsers far more
    /// often than fully random bytes do.
    #[test]
    fn decoders_never_panic_behind_valid_header(
        kind in prop_oneof![1u8..=8, 0x10u8..=0x14, 0x81u8..=0x88, 0x90u8..=0x94, Just(0xFF)],
        id in any::<u64>(),
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut f = vec![PROTOCOL_VERSION, kind];
        f.extend(id.to_be_bytes());
        f.extend(body);
        assert_canonical_request(&f);
        assert_canonical_response(&f);
    }

    #[test]
    fn every_prefix_of_a_request_fails(id in any::<u64>(), req in arb_request()) {
        let frame = encode_req(id, &req);
        let body = body_of(&frame);
        for cut in 0..body.len() {
            prop_assert!(decode_request(&body[..cut]).is_err(), "prefix {} decoded", cut);
        }
    }

    #[test]
    fn every_prefix_of_a_response_fails(id in any::<u64>(), resp in arb_response()) {
        let frame = encode_resp(id, &resp);
        let body = body_of(&frame);
        for cut in 0..body.len() {
            prop_assert!(decode_response(&body[..cut]).is_err(), "prefix {} decoded", cut);
        }
    }

    #[test]
    fn single_byte_mutation_of_request(
        id in any::<u64>(), req in arb_request(), at in any::<prop::sample::Index>(), v in any::<u8>(),
    ) {
        let frame = encode_req(id, &req);
        let mut body = body_of(&frame).to_vec();
        let i = at.index(body.len());
        body[i] = v;
        assert_canonical_request(&body);
    }

    #[test]
    fn single_byte_mutation_of_response(
        id in any::<u64>(), resp in arb_response(), at in any::<prop::sample::Index>(), v in any::<u8>(),
    ) {
        let frame = encode_resp(id, &resp);
        let mut body = body_of(&frame).to_vec();
        let i = at.index(body.len());
        body[i] = v;
        assert_canonical_response(&body);
    }

    #[test]
    fn read_frame_rejects_oversize_length_without_reading_body(
        len in prop_oneof![Just(0u32), (MAX_FRAME as u32 + 1)..=u32::MAX],
        body in vec(any::<u8>(), 0..64),
    ) {
        let mut wire = len.to_be_bytes().to_vec();
        wire.extend(&body);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut reader: &[u8] = &wire;
        let mut buf = Vec::new();
        let res = rt.block_on(read_frame(&mut reader, &mut buf));
        let rejected = matches!(res, Err(ProtoError::FrameLength { len: l }) if l == u64::from(len));
        prop_assert!(rejected);
        prop_assert_eq!(reader.len(), body.len(), "body bytes were consumed");
        prop_assert_eq!(buf.capacity(), 0, "memory was reserved");
    }
}

/// Exhaustive over positions for the fixed samples: every byte set to a few
/// interesting values.
#[test]
fn every_byte_of_every_sample_mutated() {
    let values = |b: u8| [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, b ^ 0x01, b ^ 0x80];
    for (i, req) in sample_requests().iter().enumerate() {
        let frame = encode_req(i as u64, req);
        let body = body_of(&frame);
        for pos in 0..body.len() {
            for v in values(body[pos]) {
                let mut m = body.to_vec();
                m[pos] = v;
                assert_canonical_request(&m);
                assert_canonical_response(&m);
            }
        }
    }
    for (i, resp) in sample_responses().iter().enumerate() {
        let frame = encode_resp(i as u64, resp);
        let body = body_of(&frame);
        for pos in 0..body.len() {
            for v in values(body[pos]) {
                let mut m = body.to_vec();
                m[pos] = v;
                assert_canonical_response(&m);
                assert_canonical_request(&m);
            }
        }
    }
}

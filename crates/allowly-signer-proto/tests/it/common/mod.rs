//! Fixtures shared by the test modules.
#![allow(dead_code)]

use allowly_signer_proto::{ErrorCode, ErrorReply, KeyInfo, Request, Response, SignedLeaf, MAX_PROOF_HASHES};

pub fn key(n: u8) -> KeyInfo {
    KeyInfo {
        key_id: [n, 1, 2, 3],
        public_key: [n; 32],
        not_before_ms: 1_700_000_000_000 + u64::from(n),
        not_after_ms: if n.is_multiple_of(2) { None } else { Some(1_800_000_000_000) },
        active: n == 0,
    }
}

/// One or more of every request kind, including edge values.
pub fn sample_requests() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::CreateKey { workspace_id: "acme_prod-1".into() },
        Request::ListKeys { workspace_id: "a".into() },
        Request::RotateKey { workspace_id: "Z".repeat(128), expected_size: 7 },
        Request::AppendBatch {
            workspace_id: "ws".into(),
            expected_size: 0,
            bodies: vec![b"{}".to_vec()],
            want_proofs: false,
        },
        Request::AppendBatch {
            workspace_id: "ws-2".into(),
            expected_size: u64::MAX,
            bodies: (0..=255u8).map(|i| vec![i; usize::from(i) + 1]).collect(),
            want_proofs: true,
        },
        Request::LatestCheckpoint { workspace_id: "_-_".into() },
        Request::Metrics,
        Request::ExportKeys { workspace_id: "acme".into() },
        Request::ImportKeys { workspace_id: "acme".into(), record: br#"{"version":1}"#.to_vec() },
        Request::Adopt {
            workspace_id: "acme".into(),
            checkpoint: "log.example/acme\n5\nroot=\n\n\u{2014} signer sig\n".into(),
            peaks: vec![[1; 32], [2; 32]],
            proof: vec![],
            last_leaf_ms: 1_767_225_600_000,
        },
    ]
}

pub fn signed_leaf() -> SignedLeaf {
    SignedLeaf {
        body: br#"{"kind":"key.rotated","ws":"acme"}"#.to_vec(),
        log_index: 41,
        proof: vec![[1; 32], [2; 32], [3; 32]],
        checkpoint: "log.example/acme\n42\nroot=\n\n\u{2014} signer sig\n".into(),
    }
}

/// One or more of every response kind, including edge values.
pub fn sample_responses() -> Vec<Response> {
    vec![
        Response::Pong,
        Response::Keys { keys: vec![] },
        Response::Keys { keys: vec![key(0), key(1), key(2)] },
        Response::Rotated { keys: vec![key(1), key(0)], rotation: signed_leaf() },
        Response::Rotated {
            keys: vec![],
            rotation: SignedLeaf {
                body: vec![],
                log_index: 0,
                proof: vec![[9; 32]; MAX_PROOF_HASHES],
                checkpoint: String::new(),
            },
        },
        Response::Appended {
            old_size: 10,
            new_size: 12,
            checkpoint: "note".into(),
            proofs: vec![vec![[4; 32], [5; 32]], vec![]],
        },
        // v2: the answer to an AppendBatch that asked for no proofs.
        Response::Appended { old_size: 0, new_size: 4096, checkpoint: "note".into(), proofs: vec![] },
        Response::Checkpoint { size: 0, checkpoint: None },
        Response::Checkpoint { size: 12, checkpoint: Some("note\u{0}with nul and \u{1F600}".into()) },
        Response::MetricsText { text: "# TYPE signer_up gauge\nsigner_up 1\n".into() },
        Response::KeyRecord { record: br#"{"version":1}"#.to_vec() },
        Response::Adopted { size: 5, root: [7; 32], changed: true },
        Response::Error(ErrorReply { code: ErrorCode::AdoptRefused, message: "fork".into(), current_size: Some(3) }),
        Response::Error(ErrorReply {
            code: ErrorCode::SizeMismatch,
            message: "expected 10, log has 12".into(),
            current_size: Some(12),
        }),
        Response::Error(ErrorReply { code: ErrorCode::Unknown(0xBEEF), message: String::new(), current_size: None }),
    ]
}

/// Frame without its 4-byte length prefix.
pub fn body_of(frame: &[u8]) -> &[u8] {
    frame.get(4..).expect("frame has a prefix")
}

pub fn encode_req(id: u64, req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    allowly_signer_proto::encode_request(id, req, &mut out).expect("encodable request");
    out
}

pub fn encode_resp(id: u64, resp: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    allowly_signer_proto::encode_response(id, resp, &mut out).expect("encodable response");
    out
}

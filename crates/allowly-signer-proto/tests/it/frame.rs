//! `read_frame` / `write_frame` over in-memory streams.
// Tests may unwrap: a failure should abort the test loudly.

use crate::common::*;
use allowly_signer_proto::{
    decode_request, decode_response, read_frame, write_frame, ProtoError, Request, Response, MAX_FRAME,
};
use tokio::io::AsyncWriteExt;

fn is_eof(e: &ProtoError) -> bool {
    matches!(e, ProtoError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

#[tokio::test]
async fn reads_consecutive_frames_then_clean_eof() {
    let mut wire = Vec::new();
    for (i, req) in sample_requests().iter().enumerate() {
        wire.extend(encode_req(i as u64, req));
    }
    let mut reader: &[u8] = &wire;
    let mut buf = Vec::new();
    for (i, req) in sample_requests().into_iter().enumerate() {
        let frame = read_frame(&mut reader, &mut buf).await.unwrap().expect("a frame");
        assert_eq!(decode_request(frame).unwrap(), (i as u64, req));
    }
    assert!(read_frame(&mut reader, &mut buf).await.unwrap().is_none());
}

#[tokio::test]
async fn eof_inside_a_frame_is_an_error() {
    let frame = encode_req(1, &Request::ListKeys { workspace_id: "ws".into() });
    for cut in 1..frame.len() {
        let mut reader: &[u8] = &frame[..cut];
        let e = read_frame(&mut reader, &mut Vec::new()).await.unwrap_err();
        assert!(is_eof(&e), "cut {cut}: {e}");
    }
}

#[tokio::test]
async fn zero_and_oversize_lengths_are_rejected_before_the_body() {
    for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
        let mut wire = len.to_be_bytes().to_vec();
        wire.extend([0xAB; 32]);
        let mut reader: &[u8] = &wire;
        let mut buf = Vec::new();
        let e = read_frame(&mut reader, &mut buf).await.unwrap_err();
        assert!(matches!(e, ProtoError::FrameLength { len: l } if l == u64::from(len)), "{e}");
        assert_eq!(reader.len(), 32, "body must not be read");
        assert_eq!(buf.capacity(), 0, "nothing reserved");
        assert_eq!(e.request_id(), None);
    }
}

#[tokio::test]
async fn prefix_split_across_reads_is_reassembled() {
    let (mut a, mut b) = tokio::io::duplex(64);
    let frame = encode_resp(5, &Response::Pong);
    let writer = tokio::spawn(async move {
        for byte in frame {
            a.write_all(&[byte]).await.unwrap();
            a.flush().await.unwrap();
        }
    });
    let mut buf = Vec::new();
    let got = read_frame(&mut b, &mut buf).await.unwrap().unwrap();
    assert_eq!(decode_response(got).unwrap(), (5, Response::Pong));
    writer.await.unwrap();
    assert!(read_frame(&mut b, &mut buf).await.unwrap().is_none());
}

#[tokio::test]
async fn write_then_read_over_a_pipe() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let responses = sample_responses();
    let sent = responses.clone();
    let writer = tokio::spawn(async move {
        for (i, r) in sent.iter().enumerate() {
            write_frame(&mut a, &encode_resp(i as u64, r)).await.unwrap();
        }
    });
    let mut buf = Vec::new();
    for (i, r) in responses.into_iter().enumerate() {
        let frame = read_frame(&mut b, &mut buf).await.unwrap().unwrap();
        assert_eq!(decode_response(frame).unwrap(), (i as u64, r));
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn write_frame_refuses_inconsistent_prefixes() {
    let good = encode_req(1, &Request::Ping);
    let mut bad_prefix = good.clone();
    bad_prefix[3] += 1;
    let mut empty_body = good[..4].to_vec();
    empty_body[3] = 0;
    for frame in [&bad_prefix[..], &good[..3], &[], &empty_body[..], &good[..good.len() - 1]] {
        let mut out = Vec::new();
        let e = write_frame(&mut out, frame).await.unwrap_err();
        assert!(matches!(e, ProtoError::FrameLength { .. }), "{e}");
        assert!(out.is_empty(), "nothing written");
    }
    let mut out = Vec::new();
    write_frame(&mut out, &good).await.unwrap();
    assert_eq!(out, good);
}

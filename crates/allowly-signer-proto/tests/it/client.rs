//! `SignerClient` against a fake signer on a real Unix socket.
//!
//! The fake signer hands every decoded request to the test (with a handle to
//! its connection), so each test decides exactly when and how to answer:
//! in any order, late, never, with garbage, or by dropping the connection.
//! Events are sequenced with channels, never with sleeps.
// Tests may unwrap: a failure should abort the test loudly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use allowly_signer_proto::client::{ClientError, ClientOptions, SignerClient};
use allowly_signer_proto::{
    decode_request, encode_response, read_frame, ErrorCode, ErrorReply, KeyInfo, Request, Response, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};

/// A request as received by the fake signer.
struct Incoming {
    id: u64,
    req: Request,
    conn: ConnHandle,
}

#[derive(Clone)]
struct ConnHandle {
    /// 0 for the first accepted connection, 1 for the next, ...
    number: usize,
    out: mpsc::UnboundedSender<Vec<u8>>,
    kill: Arc<Notify>,
}

impl ConnHandle {
    fn reply(&self, id: u64, resp: Response) {
        let mut frame = Vec::new();
        encode_response(id, &resp, &mut frame).unwrap();
        self.raw(frame);
    }
    fn raw(&self, bytes: Vec<u8>) {
        self.out.send(bytes).unwrap();
    }
    fn drop_connection(&self) {
        self.kill.notify_one();
    }
}

struct FakeSigner {
    path: PathBuf,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Number of each connection once it has closed.
    closed: mpsc::UnboundedReceiver<usize>,
    _dir: tempfile::TempDir,
}

impl FakeSigner {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signer.sock");
        Self::start_at(dir, path)
    }

    fn start_at(dir: tempfile::TempDir, path: PathBuf) -> Self {
        let listener = UnixListener::bind(&path).unwrap();
        let (in_tx, incoming) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut number = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, number, in_tx.clone(), closed_tx.clone()));
                number += 1;
            }
        });
        Self { path, incoming, closed, _dir: dir }
    }

    async fn next(&mut self) -> Incoming {
        self.incoming.recv().await.expect("fake signer stopped")
    }

    fn client(&self, opts: ClientOptions) -> SignerClient {
        SignerClient::new(self.path.clone(), opts)
    }
}

async fn serve(
    stream: UnixStream,
    number: usize,
    incoming: mpsc::UnboundedSender<Incoming>,
    closed: mpsc::UnboundedSender<usize>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let kill = Arc::new(Notify::new());
    let handle = ConnHandle { number, out, kill: Arc::clone(&kill) };
    let reader = async {
        let mut buf = Vec::new();
        while let Ok(Some(frame)) = read_frame(&mut rd, &mut buf).await {
            let (id, req) = decode_request(frame).expect("client sent a valid request");
            let _ = incoming.send(Incoming { id, req, conn: handle.clone() });
        }
    };
    let writer = async {
        while let Some(bytes) = out_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
        () = kill.notified() => {}
    }
    drop(wr);
    let _ = closed.send(number);
}

/// A ping on its own task (so the test can play the signer meanwhile).
fn spawn_ping(client: &SignerClient) -> tokio::task::JoinHandle<Result<(), ClientError>> {
    let c = client.clone();
    tokio::spawn(async move { c.ping().await })
}

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        max_in_flight: 256,
        reconnect_backoff_min: Duration::from_millis(50),
        reconnect_backoff_max: Duration::from_secs(1),
    }
}

fn key_for(i: u32) -> KeyInfo {
    KeyInfo {
        key_id: i.to_be_bytes(),
        public_key: [0; 32],
        not_before_ms: u64::from(i),
        not_after_ms: None,
        active: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection_and_get_their_own_answers() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    const N: u32 = 64;
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { (i, c.list_keys(format!("ws-{i}")).await) })
        })
        .collect();

    let mut received = Vec::new();
    for _ in 0..N {
        received.push(signer.next().await);
    }
    assert_eq!(client.in_flight(), N as usize, "all outstanding at once");
    assert!(received.iter().all(|r| r.conn.number == 0), "one connection");
    // Answer in reverse order of arrival, interleaving halves.
    received.reverse();
    let (first, second): (Vec<_>, Vec<_>) = received.into_iter().enumerate().partition(|(k, _)| k % 2 == 0);
    for (_, r) in first.into_iter().chain(second) {
        let Request::ListKeys { workspace_id } = &r.req else { panic!("{:?}", r.req) };
        let i: u32 = workspace_id.trim_start_matches("ws-").parse().unwrap();
        r.conn.reply(r.id, Response::Keys { keys: vec![key_for(i)] });
    }
    for call in calls {
        let (i, res) = call.await.unwrap();
        assert_eq!(res.unwrap(), vec![key_for(i)], "call {i} got another call's answer");
    }
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn timeout_frees_the_slot_and_a_late_answer_is_dropped() {
    let mut signer = FakeSigner::start();
    let client = signer.client(ClientOptions { request_timeout: Duration::from_millis(200), ..opts() });

    let call = spawn_ping(&client);
    let first = signer.next().await; // received, never answered in time
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Timeout(d) if d == Duration::from_millis(200)), "{err}");
    assert_eq!(client.in_flight(), 0);

    // The late answer arrives on the same connection before the next call's
    // answer; it must be dropped, not delivered to the next caller.
    first.conn.reply(first.id, Response::Pong);
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.metrics().await }
    });
    let second = signer.next().await;
    assert_eq!(second.conn.number, 0, "connection kept");
    assert_ne!(second.id, first.id);
    second.conn.reply(second.id, Response::MetricsText { text: "up 1\n".into() });
    assert_eq!(call.await.unwrap().unwrap(), "up 1\n");
}

#[tokio::test]
async fn disconnect_fails_in_flight_calls_and_next_call_reconnects() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let calls: Vec<_> = (0..3).map(|_| spawn_ping(&client)).collect();
    let mut conn = None;
    for _ in 0..3 {
        conn = Some(signer.next().await.conn);
    }
    conn.unwrap().drop_connection();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err}");
    }
    assert_eq!(client.in_flight(), 0);

    let call = spawn_ping(&client);
    let next = signer.next().await;
    assert_eq!(next.conn.number, 1, "reconnected");
    next.conn.reply(next.id, Response::Pong);
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn absent_signer_fails_fast_then_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let client = SignerClient::new(dir.path().join("nobody.sock"), opts());
    let started = Instant::now();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    // Within the backoff window no new attempt is made.
    let err = client.ping().await.unwrap_err();
    match err {
        ClientError::Unavailable { retry_after } => {
            assert!(retry_after <= Duration::from_millis(50))
        }
        other => panic!("{other}"),
    }
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn connects_once_the_signer_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    // Zero backoff so the test need not wait for a window to pass.
    let client = SignerClient::new(path.clone(), ClientOptions { reconnect_backoff_min: Duration::ZERO, ..opts() });
    assert!(matches!(client.ping().await, Err(ClientError::Connect { .. })));

    let mut signer = FakeSigner::start_at(dir, path);
    let call = spawn_ping(&client);
    let r = signer.next().await;
    r.conn.reply(r.id, Response::Pong);
    call.await.unwrap().unwrap();
}

/// Waits (yielding, never sleeping) until `cond` holds; panics after 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_call_beyond_max_in_flight_waits_for_a_slot_and_is_counted() {
    let mut signer = FakeSigner::start();
    let client = signer.client(ClientOptions { max_in_flight: 2, ..opts() });
    let calls: Vec<_> = (0..2).map(|_| spawn_ping(&client)).collect();
    let a = signer.next().await;
    let b = signer.next().await;
    assert_eq!(client.waits_total(), 0);

    // A third call finds both slots taken: it waits (it is not refused) and is counted.
    let third = spawn_ping(&client);
    until("the third call to wait", || client.waits_total() == 1).await;
    assert!(!third.is_finished(), "the third call must wait for a slot, not fail");
    assert_eq!(client.in_flight(), 2);

    // Freeing one slot lets it through.
    a.conn.reply(a.id, Response::Pong);
    let c = signer.next().await;
    assert!(matches!(c.req, Request::Ping));
    c.conn.reply(c.id, Response::Pong);
    b.conn.reply(b.id, Response::Pong);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    third.await.unwrap().unwrap();
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.waits_total(), 1);
}

#[tokio::test]
async fn waiting_for_a_slot_is_bounded_by_the_request_timeout() {
    let mut signer = FakeSigner::start();
    let limit = Duration::from_millis(200);
    let client = signer.client(ClientOptions { max_in_flight: 1, request_timeout: limit, ..opts() });
    let first = spawn_ping(&client);
    let r = signer.next().await; // never answered in time
    let started = Instant::now();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(d) if d == limit), "{err}");
    assert!(started.elapsed() >= limit, "gave up after {:?}", started.elapsed());
    assert_eq!(client.waits_total(), 1);
    assert!(matches!(first.await.unwrap(), Err(ClientError::Timeout(_))));
    r.conn.reply(r.id, Response::Pong); // late: dropped
    assert_eq!(client.in_flight(), 0);
}

/// Many more concurrent appends than `max_in_flight`, against a signer that answers only once
/// every slot is taken (so the pipe is saturated the whole time): all succeed, none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_calls_than_slots_all_succeed_against_a_slow_signer() {
    const SLOTS: usize = 4;
    const CALLS: usize = 64;
    let mut signer = FakeSigner::start();
    let client = signer.client(ClientOptions { max_in_flight: SLOTS, ..opts() });
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.append_batch(format!("ws-{i}"), i as u64, vec![vec![i as u8; 32]]).await })
        })
        .collect();
    let mut answered = 0;
    while answered < CALLS {
        // Slow signer: collect a full window of requests before answering any of them.
        let mut window = Vec::new();
        for _ in 0..SLOTS {
            window.push(signer.next().await);
        }
        assert_eq!(client.in_flight(), SLOTS, "never more than max_in_flight outstanding");
        for r in window {
            let Request::AppendBatch { expected_size, bodies, want_proofs, .. } = r.req else { panic!("{:?}", r.req) };
            assert!(!want_proofs, "append_batch asks for no proofs");
            let new_size = expected_size + bodies.len() as u64;
            let resp = Response::Appended {
                old_size: expected_size,
                new_size,
                checkpoint: format!("cp{new_size}"),
                proofs: vec![],
            };
            r.conn.reply(r.id, resp);
            answered += 1;
        }
    }
    for (i, call) in calls.into_iter().enumerate() {
        let out = call.await.unwrap().unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(out.new_size, i as u64 + 1);
        assert_eq!(out.checkpoint, format!("cp{}", i + 1));
    }
    let waits = client.waits_total();
    assert!(waits >= 1 && waits <= (CALLS - SLOTS) as u64, "waits_total {waits}");
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn a_busy_answer_from_the_signer_is_busy() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.append_batch("ws", 0, vec![vec![1; 32]]).await }
    });
    let r = signer.next().await;
    let reply = ErrorReply { code: ErrorCode::Busy, message: "queue full".into(), current_size: None };
    r.conn.reply(r.id, Response::Error(reply));
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Busy), "{err}");
}

#[tokio::test]
async fn error_answers_become_remote_errors() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.append_batch("ws", 10, vec![vec![1; 32]]).await }
    });
    let r = signer.next().await;
    let reply = ErrorReply { code: ErrorCode::SizeMismatch, message: "log has 12".into(), current_size: Some(12) };
    r.conn.reply(r.id, Response::Error(reply.clone()));
    match call.await.unwrap() {
        Err(ClientError::Remote(got)) => assert_eq!(got, reply),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn answers_that_do_not_fit_the_request_are_rejected() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.list_keys("ws").await }
    });
    let r = signer.next().await;
    r.conn.reply(r.id, Response::Pong);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::UnexpectedResponse { request: "ListKeys", .. }), "{err}");

    // Appended with sizes that do not match what was sent, or with proofs that are missing
    // (asked for) or present (not asked for).
    for (want_proofs, new_size, proofs) in
        [(false, 8, vec![]), (true, 7, vec![vec![]]), (false, 7, vec![vec![], vec![]])]
    {
        let call = tokio::spawn({
            let c = client.clone();
            async move {
                let leaves = vec![b"{}".to_vec(), b"[]".to_vec()];
                if want_proofs {
                    c.append_batch_with_proofs("ws", 5, leaves).await
                } else {
                    c.append_batch("ws", 5, leaves).await
                }
            }
        });
        let r = signer.next().await;
        r.conn.reply(r.id, Response::Appended { old_size: 5, new_size, checkpoint: "n".into(), proofs });
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::UnexpectedResponse { request: "AppendBatch", .. }), "{err}");
    }
}

#[tokio::test]
async fn malformed_answer_fails_only_its_call() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let call = spawn_ping(&client);
    let r = signer.next().await;
    // Pong with a trailing byte: framing intact, body invalid.
    let mut frame = vec![0, 0, 0, 11, PROTOCOL_VERSION, 0x81];
    frame.extend(r.id.to_be_bytes());
    frame.push(0);
    r.conn.raw(frame);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::BadResponse(_)), "{err}");

    let call = spawn_ping(&client);
    let r = signer.next().await;
    assert_eq!(r.conn.number, 0, "connection survives");
    r.conn.reply(r.id, Response::Pong);
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn unaddressable_or_oversize_frames_drop_the_connection() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    for (n, garbage) in
        [vec![0, 0, 0, 3, PROTOCOL_VERSION, 0x81, 0], vec![0xFF, 0xFF, 0xFF, 0xFF]].into_iter().enumerate()
    {
        let call = spawn_ping(&client);
        let r = signer.next().await;
        assert_eq!(r.conn.number, n);
        r.conn.raw(garbage);
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err}");
        assert_eq!(signer.closed.recv().await, Some(n), "client closed the socket");
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_locally() {
    let dir = tempfile::tempdir().unwrap();
    // No signer at all: an invalid request must fail before connecting.
    let client = SignerClient::new(dir.path().join("none.sock"), opts());
    let err = client.list_keys("not a valid id").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err}");
    let err = client.append_batch("ws", 0, vec![]).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(_)), "{err}");
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn cancelled_call_frees_its_slot() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let call = spawn_ping(&client);
    let r = signer.next().await;
    assert_eq!(client.in_flight(), 1);
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(client.in_flight(), 0);
    r.conn.reply(r.id, Response::Pong); // nobody waits: dropped
}

#[tokio::test]
async fn convenience_methods_return_typed_answers() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let rotation = signed_leaf();
    let c = client.clone();
    let rot = rotation.clone();
    let caller = tokio::spawn(async move {
        c.ping().await.unwrap();
        assert_eq!(c.create_key("acme").await.unwrap(), vec![key(0)]);
        let r = c.rotate_key("acme", 0).await.unwrap();
        assert_eq!((r.keys, r.rotation), (vec![key(1), key(0)], rot));
        let a = c.append_batch("acme", 7, vec![vec![1; 32], vec![2; 32]]).await.unwrap();
        assert_eq!((a.old_size, a.new_size, a.proofs.len()), (7, 9, 0));
        assert_eq!(a.checkpoint, "cp9");
        let a = c.append_batch_with_proofs("acme", 9, vec![vec![1; 32], vec![2; 32]]).await.unwrap();
        assert_eq!((a.old_size, a.new_size, a.proofs), (9, 11, vec![vec![[3; 32]]; 2]));
        let cp = c.latest_checkpoint("acme").await.unwrap();
        assert_eq!((cp.size, cp.checkpoint), (9, Some("cp9".to_string())));
        assert_eq!(c.metrics().await.unwrap(), "signer_up 1\n");
    });
    for _ in 0..7 {
        let r = signer.next().await;
        let resp = match r.req {
            Request::Ping => Response::Pong,
            Request::CreateKey { .. } => Response::Keys { keys: vec![key(0)] },
            Request::RotateKey { .. } => Response::Rotated { keys: vec![key(1), key(0)], rotation: rotation.clone() },
            Request::AppendBatch { expected_size, ref bodies, want_proofs, .. } => Response::Appended {
                old_size: expected_size,
                new_size: expected_size + bodies.len() as u64,
                checkpoint: "cp9".into(),
                proofs: if want_proofs { vec![vec![[3; 32]]; bodies.len()] } else { vec![] },
            },
            Request::LatestCheckpoint { .. } => Response::Checkpoint { size: 9, checkpoint: Some("cp9".into()) },
            Request::Metrics => Response::MetricsText { text: "signer_up 1\n".into() },
            other => panic!("{other:?}"),
        };
        r.conn.reply(r.id, resp);
    }
    caller.await.unwrap();
}

#[tokio::test]
async fn dropping_the_client_closes_the_connection() {
    let mut signer = FakeSigner::start();
    let client = signer.client(opts());
    let call = spawn_ping(&client);
    let r = signer.next().await;
    r.conn.reply(r.id, Response::Pong);
    call.await.unwrap().unwrap();
    drop(client);
    assert_eq!(signer.closed.recv().await, Some(0));
}

#[tokio::test]
async fn extreme_options_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    for max_in_flight in [0, usize::MAX] {
        let client = SignerClient::new(
            dir.path().join("none.sock"),
            ClientOptions {
                request_timeout: Duration::MAX,
                connect_timeout: Duration::MAX,
                max_in_flight,
                reconnect_backoff_min: Duration::MAX,
                reconnect_backoff_max: Duration::MAX,
            },
        );
        assert!(matches!(client.ping().await, Err(ClientError::Connect { .. })));
        assert!(matches!(client.ping().await, Err(ClientError::Unavailable { .. })));
        assert_eq!(client.in_flight(), 0);
    }
    // max_in_flight 0 is clamped to 1, so the client still works.
    let mut signer = FakeSigner::start();
    let client = signer.client(ClientOptions { max_in_flight: 0, ..opts() });
    let call = spawn_ping(&client);
    let r = signer.next().await;
    // The one slot is taken: a second call waits for it rather than failing.
    let second = spawn_ping(&client);
    until("the second call to wait", || client.waits_total() == 1).await;
    r.conn.reply(r.id, Response::Pong);
    call.await.unwrap().unwrap();
    let r = signer.next().await;
    r.conn.reply(r.id, Response::Pong);
    second.await.unwrap().unwrap();
}

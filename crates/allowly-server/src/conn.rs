//! Connections under abuse: the caps on open connections (per client address and overall),
//! which connection gives way at the cap, and the read deadline of every request.
//!
//! - **Read deadline.** A request's head and body together must arrive within the read timeout
//!   (`--request-read-timeout-ms`) of its first byte. The head is watched here, below hyper, by
//!   [`Guarded`]: hyper's own `header_read_timeout` only closes the connection, and runs from
//!   the end of the previous answer (so it is the keep-alive idle timeout, not a deadline per
//!   request). Past the deadline with the head incomplete, `Guarded` writes a `408
//!   request_timeout` problem itself and fails the connection. The body is watched where it is
//!   read (`extract::read_body`, with the deadline [`Conn::begin_request`] gives), and answered
//!   408 through hyper with `Connection: close`. A client that sends its request at once
//!   costs no timer: the head's is armed only when a head is still incomplete after a read, the
//!   body's only when the body is not all there.
//! - **Per-address cap.** At most `max_per_address` connections per client address (IPv6: per
//!   /64, what one host or site usually holds). A connection over it is answered `503
//!   too_many_connections` at once, without its request being read, and closed.
//! - **Overall cap.** At most `max` connections. At the cap, before the next accept, the oldest
//!   idle connections are asked to close, [`EVICT_BATCH`] at a time (hyper's graceful shutdown:
//!   an answer being written is finished first). Idle means no request being read or handled,
//!   a read found nothing to read, *and* nothing was read for [`EVICT_GRACE`] (250 ms); the age
//!   counts from the accept or the last answer. What is closed is always the oldest idle
//!   connections: the grace is a cut-off on that same age, so it never reorders them.
//!   - A connection just accepted (or just answered) is not idle until its first read came back
//!     empty: a client whose request already sits in the kernel's buffer, behind a burst of
//!     accepts, must not be taken for the oldest idle one.
//!   - An empty read proves only that no byte had arrived *yet*. An honest client writes its
//!     request right after `connect` (a round trip, or one scheduling slice on a loaded host:
//!     far below 250 ms); an idle flood's connections send nothing for seconds, until the idle
//!     timeout. Without the grace, a flood that turns the cap over faster than a client writes
//!     (`max` connections per that delay) made the client's connection the oldest idle one and
//!     closed it before its request came. With it, the flood pays only with connections older
//!     than 250 ms; to keep the whole cap within the grace it must open more than `max` per
//!     250 ms, and then the cap is simply busy (below): new clients wait in the listen backlog
//!     until the oldest flood connection is out of its grace, and are served.
//!   - Closing only connections that have had a request was not an option: an idle flood never
//!     sends one, and would hold the cap until the idle timeout.
//!   - A connection closed before it sent a byte is first answered `503 too_many_connections`
//!     (`Retry-After: 1`), by [`Guarded`]: a client whose request comes later than the grace
//!     (descheduled that long, or sent just as the connection is closed) reads a refusal it can
//!     retry, never a bare end of stream. One that has had a request is closed without a word,
//!     as at the keep-alive timeout (an unasked answer would be read by a client's pool as the
//!     answer to its next request; pools reconnect).
//!
//!   **If every connection is busy** (or idle within its grace), nothing more is accepted until
//!   one closes or becomes evictable: new clients wait in the kernel's listen backlog (each busy
//!   connection is bounded by the read deadline plus the time its request takes to handle, an
//!   idle one by the grace), and the kernel refuses them only when that backlog is full.
//!
//! Cost per request: two relaxed atomic stores and one clock reading (the connection's busy or
//! idle stamp) and one relaxed load; no lock. The registry's maps are touched per connection.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::extract::RequestIds;
use crate::metrics::{ConnClose, FrontMetrics};
use crate::problem::Problem;

/// Idle connections asked to close per search at the cap: the search walks every connection,
/// so it is paid once per this many new connections, not once per connection.
pub const EVICT_BATCH: usize = 16;

/// At the cap with every connection busy, the accept loop looks again at least this often.
const RECHECK: Duration = Duration::from_millis(100);

/// An idle connection is not closed at the cap until nothing was read on it for this long
/// (since its accept or its last answer): its request may still be on its way. See the module
/// docs for why 250 ms: far above an honest client's delay between `connect` and `write`, far
/// below the seconds a flood's connection sits idle.
pub const EVICT_GRACE: Duration = Duration::from_millis(250);

/// The keep-alive idle timeout: a connection with no request for this long is closed. (hyper's
/// `header_read_timeout`, which runs from the end of the previous answer.)
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max: usize,
    /// Open connections per client address at most.
    pub max_per_address: usize,
    /// A request's head and body must arrive within this of its first byte.
    pub read_timeout: Duration,
}

/// No request being read or handled, and a read found nothing to read: may be evicted.
const IDLE: u8 = 0;
/// A request's head is being read.
const HEAD: u8 = 1;
/// A request is being handled (its body read, its answer made).
const HANDLING: u8 = 2;
/// Accepted or answered, and no read tried since: not evicted (its next request may already be
/// waiting in the socket).
const FRESH: u8 = 3;

/// One connection's state, shared by its I/O wrapper, its request handler and the registry.
/// Only the connection's own task changes `phase` and `since`; the registry reads them.
#[derive(Debug)]
pub struct Conn {
    address: IpAddr,
    epoch: Instant,
    phase: AtomicU8,
    /// Nanoseconds since `epoch`: when the connection was accepted or answered (`FRESH`,
    /// `IDLE`), or when the
    /// request's first byte was read (`HEAD`, `HANDLING`).
    since: AtomicU64,
    /// Asked to close to make room (counted out of the cap already).
    evicted: AtomicBool,
    /// A byte was read on it, ever: a connection closed at the cap without one is answered 503.
    spoke: AtomicBool,
    /// A request missed its read deadline (answered 408).
    timed_out: AtomicBool,
    close: Notify,
}

impl Conn {
    fn new(address: IpAddr, epoch: Instant) -> Self {
        Self {
            address,
            epoch,
            phase: AtomicU8::new(FRESH),
            since: AtomicU64::new(stamp(epoch, Instant::now())),
            evicted: AtomicBool::new(false),
            spoke: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.since.load(Ordering::Relaxed))
    }

    /// The first byte of a request was read.
    fn head_started(&self) {
        self.since.store(stamp(self.epoch, Instant::now()), Ordering::Relaxed);
        self.phase.store(HEAD, Ordering::Relaxed);
        self.spoke.store(true, Ordering::Relaxed);
    }

    /// Asked to close at the cap before a byte of a request was read.
    fn evicted_unheard(&self) -> bool {
        self.evicted.load(Ordering::Acquire) && !self.spoke.load(Ordering::Relaxed)
    }

    /// hyper has the request's head and calls the handler: returns when the request started
    /// (its first byte; now for a request read whole with the previous one).
    pub fn begin_request(&self) -> Instant {
        let start = if self.phase() == HEAD {
            self.since()
        } else {
            let now = Instant::now();
            self.since.store(stamp(self.epoch, now), Ordering::Relaxed);
            now
        };
        self.phase.store(HANDLING, Ordering::Relaxed);
        start
    }

    /// The handler has answered: the connection's idle age counts from now, and it is idle once
    /// a read finds nothing (hyper still writes the answer; a graceful close lets it finish).
    pub fn end_request(&self) {
        self.since.store(stamp(self.epoch, Instant::now()), Ordering::Relaxed);
        self.phase.store(FRESH, Ordering::Relaxed);
    }

    /// A request missed its read deadline: the connection closes after the 408.
    pub fn mark_timed_out(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }

    /// Resolves when the registry asks this connection to close (eviction).
    pub async fn evicted(&self) {
        self.close.notified().await;
    }

    /// Why it closed, given how hyper's connection ended and whether the server was shutting
    /// down.
    pub fn close_reason(&self, result: &Result<(), hyper::Error>, shutting_down: bool) -> ConnClose {
        if self.timed_out.load(Ordering::Relaxed) {
            ConnClose::ReadTimeout
        } else if self.evicted.load(Ordering::Relaxed) {
            ConnClose::Evicted
        } else if shutting_down {
            ConnClose::Shutdown
        } else {
            match result {
                Ok(()) => ConnClose::Done,
                Err(e) if e.is_timeout() => ConnClose::IdleTimeout,
                Err(_) => ConnClose::Error,
            }
        }
    }
}

/// Nanoseconds of `t` since `epoch`.
fn stamp(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// What the per-address cap counts: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Every open connection: the caps, and the choice of which idle one closes.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    epoch: Instant,
    next_id: AtomicU64,
    all: DashMap<u64, Arc<Conn>>,
    per_address: DashMap<IpAddr, usize>,
    /// Open connections not asked to close: what the overall cap counts (and `per_address`,
    /// per address).
    live: AtomicUsize,
    /// The accept loop waits for a connection to close or become idle.
    waiting: AtomicBool,
    changed: Notify,
    /// Request ids of the answers written below hyper (408 on a head, 503 at accept).
    ids: RequestIds,
    metrics: FrontMetrics,
}

/// What a search for idle connections to close did.
#[derive(Debug)]
struct Evicted {
    /// Connections asked to close.
    asked: usize,
    /// When the oldest idle connection still within [`EVICT_GRACE`] leaves it.
    next: Option<Instant>,
}

/// A connection's id in the registry (its entry is removed when it closes).
#[derive(Debug)]
pub struct Admitted {
    id: u64,
    pub conn: Arc<Conn>,
}

impl Connections {
    pub fn new(limits: Limits, metrics: FrontMetrics) -> Self {
        Self {
            limits: Limits { max_per_address: limits.max_per_address.min(limits.max), ..limits },
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            all: DashMap::new(),
            per_address: DashMap::new(),
            live: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            changed: Notify::new(),
            ids: RequestIds::new(),
            metrics,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// hyper's `header_read_timeout`: the idle timeout, and never shorter than a request's read
    /// deadline (which must fire first for a head that started at once).
    pub fn idle_timeout(&self) -> Duration {
        IDLE_TIMEOUT.max(self.limits.read_timeout)
    }

    /// Waits until one more connection may be accepted: below the cap, or once idle
    /// connections were asked to close to make room.
    pub async fn room(&self) {
        loop {
            let Some(wait) = self.make_room() else { return };
            // Every connection is busy, or idle within its grace. Announce the wait, then look
            // again (one may have become idle or closed in between: its notification is kept as
            // a permit).
            self.waiting.store(true, Ordering::SeqCst);
            let Some(wait) = self.make_room().map(|again| again.min(wait)) else {
                self.waiting.store(false, Ordering::Relaxed);
                return;
            };
            // The hot path announces an idle connection with a relaxed load of `waiting` (no
            // fence per request), which may miss this wait: look again after a while anyway,
            // and when the oldest idle connection leaves its grace.
            let _ = tokio::time::timeout(wait, self.changed.notified()).await;
            self.waiting.store(false, Ordering::Relaxed);
        }
    }

    /// `None` when one more connection may be accepted (below the cap, or idle connections were
    /// asked to close); else how long to wait at most before looking again.
    fn make_room(&self) -> Option<Duration> {
        if self.live.load(Ordering::Acquire) < self.limits.max {
            return None;
        }
        let now = Instant::now();
        let evicted = self.evict_idle_at(now);
        if evicted.asked > 0 {
            return None;
        }
        // (At least a millisecond: the timer's resolution.)
        let until_evictable = evicted.next.map(|t| t.saturating_duration_since(now).max(Duration::from_millis(1)));
        Some(until_evictable.map_or(RECHECK, |d| d.min(RECHECK)))
    }

    /// Asks up to [`EVICT_BATCH`] of the oldest idle connections out of their grace (as of
    /// `now`) to close.
    fn evict_idle_at(&self, now: Instant) -> Evicted {
        let now = stamp(self.epoch, now);
        let grace = u64::try_from(EVICT_GRACE.as_nanos()).unwrap_or(u64::MAX);
        // The oldest idle ones: a max-heap on `since` holding the batch's youngest on top.
        let mut oldest: std::collections::BinaryHeap<(u64, u64)> = std::collections::BinaryHeap::new();
        // The oldest of those still in their grace: when the next one may go.
        let mut in_grace: Option<u64> = None;
        for e in self.all.iter() {
            let c = e.value();
            if c.phase() != IDLE || c.evicted.load(Ordering::Relaxed) {
                continue;
            }
            let since = c.since.load(Ordering::Relaxed);
            if now.saturating_sub(since) < grace {
                in_grace = Some(in_grace.map_or(since, |s| s.min(since)));
                continue;
            }
            if oldest.len() < EVICT_BATCH {
                oldest.push((since, *e.key()));
            } else if oldest.peek().is_some_and(|&(youngest, _)| since < youngest) {
                oldest.pop();
                oldest.push((since, *e.key()));
            }
        }
        let mut n = 0;
        for (_, id) in oldest {
            let Some(c) = self.all.get(&id).map(|e| e.value().clone()) else { continue };
            // A connection that became busy since the scan still closes gracefully (its request
            // is answered first). Counted out of both caps now, once, so the connection it
            // makes room for is admitted even if it comes from the same address.
            if !c.evicted.swap(true, Ordering::AcqRel) {
                self.leave(c.address);
                self.metrics.connections_evicting.inc();
                c.close.notify_one();
                n += 1;
            }
        }
        Evicted { asked: n, next: in_grace.map(|s| self.epoch + Duration::from_nanos(s) + EVICT_GRACE) }
    }

    /// A connection just accepted from `peer`: registered, or, over the per-address cap,
    /// answered 503 without reading its request (`stream` is then dropped by the caller).
    pub fn admit(&self, stream: &tokio::net::TcpStream, peer: IpAddr) -> Option<Admitted> {
        self.metrics.connections_accepted.inc();
        let address = address_key(peer);
        match self.per_address.entry(address) {
            Entry::Occupied(o) if *o.get() >= self.limits.max_per_address => {
                drop(o);
                self.metrics.closed(ConnClose::PerAddressLimit);
                // Best effort on a fresh socket (its send buffer takes these few hundred bytes
                // at once); nothing waits for it.
                let answer = Problem::too_many_connections().into_http1_close(&self.ids.next());
                let _ = stream.try_write(&answer);
                return None;
            }
            Entry::Occupied(mut o) => *o.get_mut() += 1,
            Entry::Vacant(v) => {
                v.insert(1);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(address, self.epoch));
        self.all.insert(id, conn.clone());
        self.live.fetch_add(1, Ordering::AcqRel);
        self.metrics.connections_open.inc();
        Some(Admitted { id, conn })
    }

    /// Counts a connection out of the caps (when it closes, or earlier when it is evicted).
    fn leave(&self, address: IpAddr) {
        if let Entry::Occupied(mut o) = self.per_address.entry(address) {
            *o.get_mut() -= 1;
            if *o.get() == 0 {
                o.remove();
            }
        }
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// A connection closed for `reason`.
    pub fn release(&self, a: &Admitted, reason: ConnClose) {
        self.all.remove(&a.id);
        if a.conn.evicted.load(Ordering::Acquire) {
            self.metrics.connections_evicting.dec();
        } else {
            self.leave(a.conn.address);
        }
        self.metrics.connections_open.dec();
        self.metrics.closed(reason);
        self.changed.notify_one();
    }

    /// A connection became idle, which the accept loop may be waiting for (one relaxed load
    /// otherwise).
    fn became_idle(&self) {
        if self.waiting.load(Ordering::Relaxed) {
            self.changed.notify_one();
        }
    }

    fn timeout_answer(&self) -> Vec<u8> {
        Problem::request_timeout(self.limits.read_timeout).into_http1_close(&self.ids.next())
    }

    fn evicted_answer(&self) -> Vec<u8> {
        Problem::evicted_before_request().into_http1_close(&self.ids.next())
    }
}

/// A connection's I/O as hyper sees it, with the read deadline of request heads (see the
/// module docs). After a deadline passed, every read and write fails, so hyper drops the
/// connection without writing anything of its own after the 408.
#[derive(Debug)]
pub struct Guarded<I> {
    io: I,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer is set for the current head.
    armed: bool,
    /// hyper wrote bytes it has not flushed yet: an answer is on its way out, and a 408 must
    /// not be written into the middle of it.
    unflushed: bool,
    failed: bool,
    /// Closed at the cap before a request came, and answered 503 for it.
    refused: bool,
}

impl<I> Guarded<I> {
    pub fn new(io: I, conn: Arc<Conn>, connections: Arc<Connections>) -> Self {
        Self { io, conn, connections, timer: None, armed: false, unflushed: false, failed: false, refused: false }
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the request's read deadline passed")
}

impl<I: AsyncRead + AsyncWrite + Unpin> Guarded<I> {
    /// A head is incomplete and no more bytes are there: waits for them until its deadline.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timeout = self.connections.limits.read_timeout;
        if !self.armed {
            let deadline = tokio::time::Instant::from_std(self.conn.since() + timeout);
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let elapsed = self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if elapsed {
            self.time_out(cx)
        } else {
            Poll::Pending
        }
    }

    /// Answers 408 and fails the connection.
    fn time_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.failed = true;
        self.conn.mark_timed_out();
        if !self.unflushed {
            let answer = self.connections.timeout_answer();
            // Nothing else is queued on the socket: its send buffer takes the answer whole, or
            // the client is not reading and gets no answer.
            let _ = Pin::new(&mut self.io).poll_write(cx, &answer);
            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        }
        self.discard_unread(cx);
        Poll::Ready(Err(deadline_passed()))
    }

    /// Takes in what the client already sent, after a last answer of our own: closing a socket
    /// with unread bytes resets the connection, which can make the client's kernel drop the
    /// answer before it is read.
    fn discard_unread(&mut self, cx: &mut Context<'_>) {
        let mut scratch = [0u8; 4096];
        for _ in 0..16 {
            let mut b = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut b) {
                Poll::Ready(Ok(())) if !b.filled().is_empty() => continue,
                _ => break,
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> Guarded<I> {
    /// A write of hyper's, unless the connection failed; notes that bytes went out unflushed.
    fn write_with(&mut self, write: impl FnOnce(Pin<&mut I>) -> Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if self.failed {
            return Poll::Ready(Err(deadline_passed()));
        }
        let r = write(Pin::new(&mut self.io));
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        r
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(deadline_passed()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && matches!(this.conn.phase(), IDLE | FRESH) {
                    this.conn.head_started();
                    this.armed = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.conn.phase() {
                HEAD => this.poll_deadline(cx),
                FRESH => {
                    this.conn.phase.store(IDLE, Ordering::Relaxed);
                    this.connections.became_idle();
                    Poll::Pending
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(deadline_passed()));
        }
        // hyper flushes the socket once its own buffer is written out: the answer is gone.
        let r = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.unflushed = false;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper closes a connection asked to close at the cap with nothing of its own to write
        // when no request had started: a request the client sends now, or sent just too late
        // for hyper to read, would meet a bare end of stream. It gets a refusal to retry.
        if !this.refused && this.conn.evicted_unheard() {
            this.refused = true;
            let answer = this.connections.evicted_answer();
            // A socket nothing was written to takes these few hundred bytes at once.
            let _ = Pin::new(&mut this.io).poll_write(cx, &answer);
            this.discard_unread(cx);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn per_address_keys() {
        let k = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:ffff::1"), "2001:db8:1:2::");
    }

    /// Runs `test` on a registry capped at `max` connections (per address too) and an accepted
    /// socket to admit into it, as often as wanted (from `peer`).
    fn with_registry(max: usize, test: impl FnOnce(&Connections, &tokio::net::TcpStream, IpAddr)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let limits = Limits { max, max_per_address: max, read_timeout: Duration::from_secs(1) };
            let conns = Connections::new(limits, crate::metrics::HttpMetrics::new().front.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, peer) = listener.accept().await.unwrap();
            test(&conns, &server, peer.ip());
            drop(client);
        });
    }

    /// At the cap, a connection no read has been tried on is never the "oldest idle" one: its
    /// request may be waiting unread in the socket (the race a burst of accepts used to lose).
    #[test]
    fn a_connection_is_evictable_only_once_a_read_found_nothing() {
        with_registry(2, |conns, server, peer| {
            let older = conns.admit(server, peer).unwrap();
            let newer = conns.admit(server, peer).unwrap();
            let later = Instant::now() + EVICT_GRACE + Duration::from_millis(1);
            // Both just accepted: nothing to evict, however old.
            assert_eq!(conns.evict_idle_at(later).asked, 0);
            // A read on the newer one found nothing: it alone may go, once out of its grace.
            newer.conn.phase.store(IDLE, Ordering::Relaxed);
            assert_eq!(conns.evict_idle_at(later).asked, 1);
            assert!(newer.conn.evicted.load(Ordering::Relaxed));
            assert!(!older.conn.evicted.load(Ordering::Relaxed));
            // Answered: fresh again until its next read comes back empty.
            older.conn.begin_request();
            older.conn.end_request();
            assert_eq!(conns.evict_idle_at(later + EVICT_GRACE).asked, 0);
        });
    }

    /// At the cap the oldest idle connections go first, [`EVICT_BATCH`] at a time; one idle
    /// for less than [`EVICT_GRACE`] stays (its request may be on its way), and the grace never
    /// lets a younger one go before an older one.
    #[test]
    fn idle_connections_go_oldest_first_and_none_within_its_grace() {
        with_registry(64, |conns, server, peer| {
            // 25 idle connections, one accepted every 10 ms from t0 (listed in a shuffled
            // order: the registry's order must not matter).
            let t0 = Instant::now();
            let ms = |n: u64| Duration::from_millis(n);
            let mut idle: Vec<(u64, Admitted)> = (0..25u64)
                .map(|i| (i * 7) % 25)
                .map(|i| {
                    let a = conns.admit(server, peer).unwrap();
                    a.conn.since.store(stamp(conns.epoch, t0 + ms(10 * i)), Ordering::Relaxed);
                    a.conn.phase.store(IDLE, Ordering::Relaxed);
                    (i, a)
                })
                .collect();
            idle.sort_by_key(|(i, _)| *i);
            let gone = |idle: &[(u64, Admitted)]| -> Vec<u64> {
                idle.iter().filter(|(_, a)| a.conn.evicted.load(Ordering::Relaxed)).map(|(i, _)| *i).collect()
            };
            // All within their grace: none goes; the wait ends when the oldest leaves it.
            let e = conns.evict_idle_at(t0 + ms(5));
            assert_eq!((e.asked, e.next), (0, Some(t0 + EVICT_GRACE)));
            // 45 ms past the oldest one's grace: those accepted up to 40 ms, and no other.
            let e = conns.evict_idle_at(t0 + EVICT_GRACE + ms(45));
            assert_eq!(e.asked, 5);
            assert_eq!(gone(&idle), (0..5).collect::<Vec<_>>());
            assert_eq!(e.next, Some(t0 + ms(50) + EVICT_GRACE));
            // All out of their grace: the next EVICT_BATCH oldest.
            let e = conns.evict_idle_at(t0 + EVICT_GRACE + Duration::from_secs(1));
            assert_eq!((e.asked, e.next), (EVICT_BATCH, None));
            assert_eq!(gone(&idle), (0..5 + EVICT_BATCH as u64).collect::<Vec<_>>());
        });
    }
}

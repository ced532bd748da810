//! A proxy between a store and a test cluster's Unix socket, or between two TCP peers, that can
//! misbehave as a network does (feature `test-cluster`: test support). It can stop forwarding
//! — a hung server or a partition: bytes go nowhere, nothing is refused, and what was held is
//! delivered once it forwards again, late — let every connection made so far go silently dead,
//! and cut every connection (a restarted server, a dropped link). Used by this crate's fault
//! tests and by the server's cluster tests (a node cut off from the database; two nodes cut off
//! from each other).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};

use tempfile::TempDir;

use crate::test_cluster::{Cluster, USER};

#[derive(Default)]
struct State {
    hung: bool,
    /// Connections numbered below this forward nothing any more, ever (a silently dead link).
    dead_below: u64,
    accepted: u64,
    streams: Vec<Stream>,
}

/// One end of a proxied connection.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a proxy listens.
enum Front {
    /// A socket directory of its own, for a database's Unix socket (`port` names the socket).
    Unix { dir: TempDir, port: u16 },
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

/// A proxy (see the module docs).
pub struct Proxy {
    front: Front,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.front {
            Front::Unix { dir, .. } => f.debug_struct("Proxy").field("dir", &dir.path()).finish_non_exhaustive(),
            Front::Tcp(addr) => f.debug_struct("Proxy").field("addr", addr).finish_non_exhaustive(),
        }
    }
}

impl Proxy {
    /// Listens on libpq's socket name for `cluster`'s port in a new directory (open to every
    /// user: a server started as root connects as its own unprivileged user) and forwards each
    /// connection to the cluster's socket.
    pub fn start(cluster: &Cluster) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!(".s.PGSQL.{}", cluster.port());
        let listener = UnixListener::bind(dir.path().join(&name)).unwrap();
        std::fs::set_permissions(dir.path().join(&name), std::fs::Permissions::from_mode(0o777)).unwrap();
        let target = cluster.socket_dir().join(&name);
        let state = serve(
            move || listener.accept().map(|(s, _)| Stream::Unix(s)),
            move || UnixStream::connect(&target).map(Stream::Unix),
        );
        Proxy { front: Front::Unix { dir, port: cluster.port() }, state }
    }

    /// Listens on a loopback TCP port of its own ([`Proxy::addr`]) and forwards each
    /// connection to `target`.
    pub fn tcp(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = serve(
            move || listener.accept().map(|(s, _)| Stream::Tcp(s)),
            move || TcpStream::connect(target).map(Stream::Tcp),
        );
        Proxy { front: Front::Tcp(addr), state }
    }

    /// A connection string for database `dbname` through the proxy ([`Proxy::start`]).
    pub fn conninfo(&self, dbname: &str) -> String {
        match &self.front {
            Front::Unix { dir, port } => {
                format!("host={} port={port} user={USER} dbname={dbname}", dir.path().display())
            }
            Front::Tcp(addr) => format!("host={} port={} user={USER} dbname={dbname}", addr.ip(), addr.port()),
        }
    }

    /// The address it listens on ([`Proxy::tcp`]).
    pub fn addr(&self) -> SocketAddr {
        match &self.front {
            Front::Tcp(addr) => *addr,
            Front::Unix { .. } => panic!("a Unix-socket proxy has no TCP address"),
        }
    }

    /// `true`: forwards nothing (held until `false`); `false`: forwards again, what was held
    /// first.
    pub fn set_hung(&self, hung: bool) {
        self.state.0.lock().unwrap().hung = hung;
        self.state.1.notify_all();
    }

    /// Every connection made so far stops forwarding for good, without being closed (what a
    /// half-open TCP connection looks like: only a timeout can tell); new ones work.
    pub fn kill_silently(&self) {
        let mut st = self.state.0.lock().unwrap();
        st.dead_below = st.accepted;
    }

    /// Closes every connection made so far, both ways.
    pub fn cut(&self) {
        for s in self.state.0.lock().unwrap().streams.drain(..) {
            s.shutdown();
        }
    }
}

/// Accepts connections with `accept` and forwards each to a connection made with `connect`,
/// on threads of their own; the state they share.
fn serve(
    mut accept: impl FnMut() -> std::io::Result<Stream> + Send + 'static,
    connect: impl Fn() -> std::io::Result<Stream> + Send + 'static,
) -> Arc<(Mutex<State>, Condvar)> {
    let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
    let shared = state.clone();
    std::thread::spawn(move || loop {
        let Ok(client) = accept() else { return };
        let Ok(server) = connect() else {
            // The target is not there (yet, or any more): refused, as it would be.
            client.shutdown();
            continue;
        };
        let mut st = shared.0.lock().unwrap();
        st.streams.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
        let number = st.accepted;
        st.accepted += 1;
        drop(st);
        for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
            let shared = shared.clone();
            std::thread::spawn(move || forward(number, from, to, &shared));
        }
    });
    state
}

/// Copies `from` to `to` (both of connection `number`), holding whatever it read while the
/// proxy is hung or the connection silently dead.
fn forward(number: u64, mut from: Stream, mut to: Stream, state: &(Mutex<State>, Condvar)) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        drop(state.1.wait_while(state.0.lock().unwrap(), |s| s.hung || number < s.dead_below).unwrap());
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    to.shutdown();
}

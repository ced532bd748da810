//! A proxy between a store and a test cluster's Unix socket that can misbehave as a network
//! does (feature `test-cluster`: test support). It can stop forwarding — a hung server or a
//! partition: bytes go nowhere, nothing is refused, and what was held is delivered once it
//! forwards again, late — let every connection made so far go silently dead, and cut every
//! connection (a restarted server, a dropped link). Used by this crate's fault tests (the
//! server's cluster tests cut real links instead: network namespaces and nftables).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::io::{Read, Write};
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
    streams: Vec<UnixStream>,
}

/// A proxy listening on a socket directory of its own (see the module docs).
pub struct Proxy {
    dir: TempDir,
    port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("dir", &self.dir.path()).finish_non_exhaustive()
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
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let target = cluster.socket_dir().join(&name);
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = UnixStream::connect(&target) else { return };
                let mut st = shared.0.lock().unwrap();
                st.streams.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let number = st.accepted;
                st.accepted += 1;
                drop(st);
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let shared = shared.clone();
                    std::thread::spawn(move || forward(number, from, to, &shared));
                }
            }
        });
        Proxy { dir, port: cluster.port(), state }
    }

    /// A connection string for database `dbname` through the proxy.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!("host={} port={} user={USER} dbname={dbname}", self.dir.path().display(), self.port)
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
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` (both of connection `number`), holding whatever it read while the
/// proxy is hung or the connection silently dead.
fn forward(number: u64, mut from: UnixStream, mut to: UnixStream, state: &(Mutex<State>, Condvar)) {
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
    let _ = to.shutdown(std::net::Shutdown::Both);
}

//! A TCP forwarder from `127.0.0.1:<port>` inside a network namespace to an address in the test's own namespace.
//!
//! Why: processes that play a node (the agent, Multus and the CNI) run inside that node's netns, whose loopback is
//! not the host's, while the API server listens on the host's 127.0.0.1. A socket keeps the namespace of the thread
//! that created it, so one thread creates the listener inside the node's netns and the forwarding connections are
//! made from the test's namespace. The API server's certificate is for 127.0.0.1, so clients need no change.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// Forwards connections while alive; stops accepting when dropped.
#[derive(Debug)]
pub struct NetnsForward {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl NetnsForward {
    /// Listen on `127.0.0.1:port` (0 = any free port) inside the netns at `netns_path`, forwarding to `target`.
    pub fn start(netns_path: &Path, port: u16, target: SocketAddr) -> io::Result<Self> {
        let ns = File::open(netns_path)?;
        // Create the listener on a thread that entered the netns; the thread then ends, the socket stays there.
        let listener = thread::scope(|s| {
            s.spawn(|| -> io::Result<TcpListener> {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                TcpListener::bind(("127.0.0.1", port))
            })
            .join()
            .expect("listener thread")
        })?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(inbound) = conn else { continue };
                let Ok(outbound) = TcpStream::connect(target) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                pipe(inbound, outbound);
            }
        });
        Ok(Self { port, stop })
    }

    /// The port inside the netns.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for NetnsForward {
    fn drop(&mut self) {
        // The accept loop sees the flag on its next connection; nothing else keeps the listener busy.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    thread::spawn(move || copy_then_close(a, b));
    thread::spawn(move || copy_then_close(b2, a2));
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

//! Threads and network namespaces: a fresh current-thread runtime, and a thread that entered another netns.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;

use crate::{Error, Result};

/// Run `fut` to completion on a fresh current-thread runtime (IO and timers enabled).
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::Runtime)?;
    Ok(rt.block_on(fut))
}

/// Run `f` on a dedicated thread that first entered the network namespace at `netns` (e.g. `/run/netns/x` or
/// `/proc/<pid>/ns/net`). The thread ends afterwards, so the caller's namespace is never touched. A panic in `f`
/// is propagated.
pub fn in_netns<T: Send>(netns: impl AsRef<Path>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = netns.as_ref();
    let ns_err = |source| Error::Netns {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(ns_err)?;
    std::thread::scope(|s| {
        let t = s.spawn(|| -> Result<T> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| ns_err(std::io::Error::from(e)))?;
            Ok(f())
        });
        match t.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

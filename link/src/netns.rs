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

/// Run `f` on the calling thread inside the network namespace at `netns`, then return the thread to the namespace
/// it was in. No thread is started: what a one-shot process such as the CNI wants. Sockets `f` opens stay in
/// `netns`. If the thread cannot go back (nothing should ever prevent it), the process aborts rather than run on in
/// the wrong namespace; a panic in `f` still brings the thread back first.
pub fn in_netns_here<T>(netns: impl AsRef<Path>, f: impl FnOnce() -> T) -> Result<T> {
    let path = netns.as_ref();
    let ns_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Netns { path, source }
    };
    let home_path = Path::new("/proc/thread-self/ns/net");
    let home = File::open(home_path).map_err(ns_err(home_path))?;
    let target = File::open(path).map_err(ns_err(path))?;
    nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| ns_err(path)(std::io::Error::from(e)))?;
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            if let Err(e) = nix::sched::setns(self.0.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            {
                eprintln!("cannot return to the original network namespace: {e}");
                std::process::abort();
            }
        }
    }
    let _back = Back(home);
    Ok(f())
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

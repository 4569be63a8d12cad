//! Running async work (netlink, the PodResources call) in the right network namespace, all on ONE current-thread
//! runtime per invocation ([`Runtime`]): host-side on the calling thread (the runtime starts us in the host netns),
//! pod-side on the same thread after it entered `CNI_NETNS`, back on return ([`macvtap_link::in_netns_here`]: no
//! thread). A runtime is not tied to a netns, a socket is: each socket is opened where its work runs.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use macvtap_link::{Netlink, in_netns_here};

use crate::error::{CniError, Code};

pub(crate) fn sys(msg: impl Into<String>) -> impl FnOnce(macvtap_link::Error) -> CniError {
    let msg = msg.into();
    move |e| CniError::system(msg, e)
}

/// The invocation's one runtime (io and timers: netlink sockets, the kubelet's socket, its deadline and back-off).
pub(crate) struct Runtime(tokio::runtime::Runtime);

impl Runtime {
    pub(crate) fn new() -> Result<Self, CniError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map(Self)
            .map_err(|e| CniError::system("starting a runtime", e))
    }

    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.0.block_on(f)
    }

    /// Async netlink work in the current thread's netns, on a socket opened there.
    pub(crate) fn netlink<T>(
        &self,
        f: impl AsyncFnOnce(&Netlink) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        self.block_on(async {
            let nl = Netlink::new().map_err(sys("opening netlink"))?;
            f(&nl).await
        })
    }

    /// `f` with netlink inside the netns at `path`: this thread enters it and comes back (no thread is started).
    /// Never from inside other work of this runtime: a thread drives one `block_on` at a time.
    pub(crate) fn netlink_in<T>(
        &self,
        path: &str,
        f: impl AsyncFnOnce(&Netlink) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        in_netns_here(path, || self.netlink(f)).map_err(|e| enter_failed(path, e))?
    }
}

/// Error 3: the thread could not enter `CNI_NETNS`.
pub(crate) fn enter_failed(path: &str, e: macvtap_link::Error) -> CniError {
    CniError::new(
        Code::UnknownContainer,
        format!("CNI_NETNS {path}: cannot enter the network namespace"),
        e.to_string(),
    )
}

/// Open `CNI_NETNS` (error 3 if it does not exist), refusing the plugin's own netns (error 4).
pub(crate) fn open_netns(path: &str) -> Result<File, CniError> {
    let f = File::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("CNI_NETNS {path}: network namespace not found"),
            e.to_string(),
        )
    })?;
    let (mine, theirs) = (std::fs::metadata("/proc/self/ns/net"), f.metadata());
    if let (Ok(a), Ok(b)) = (mine, theirs)
        && (a.dev(), a.ino()) == (b.dev(), b.ino())
    {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_NETNS {path} is the plugin's own network namespace"),
            "",
        ));
    }
    Ok(f)
}

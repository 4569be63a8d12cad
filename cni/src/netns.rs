//! Running netlink work in the right network namespace: host-side on the calling thread (the runtime starts us in
//! the host netns), pod-side on the same thread after it entered `CNI_NETNS`, back on return
//! ([`macvtap_link::in_netns_here`]: no thread); each on a current-thread runtime.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use macvtap_link::{Netlink, block_on, in_netns_here};

use crate::error::{CniError, Code};

pub(crate) fn sys(msg: impl Into<String>) -> impl FnOnce(macvtap_link::Error) -> CniError {
    let msg = msg.into();
    move |e| CniError::system(msg, e)
}

/// Run async netlink work on a current-thread runtime in the current thread's netns.
pub(crate) fn netlink<T>(
    f: impl AsyncFnOnce(&Netlink) -> Result<T, CniError>,
) -> Result<T, CniError> {
    block_on(async {
        let nl = Netlink::new().map_err(sys("opening netlink"))?;
        f(&nl).await
    })
    .map_err(sys("starting a runtime"))?
}

/// Run `f` with netlink inside the netns at `path`: this thread enters it and comes back (no thread is started).
/// Never from inside [`netlink`]'s work: a thread drives one runtime at a time.
pub(crate) fn netlink_in<T>(
    path: &str,
    f: impl AsyncFnOnce(&Netlink) -> Result<T, CniError>,
) -> Result<T, CniError> {
    in_netns_here(path, || netlink(f)).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("CNI_NETNS {path}: cannot enter the network namespace"),
            e.to_string(),
        )
    })?
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

//! The kubelet's device plugin directory, watched by socket identity: a kubelet restart removes every socket and
//! creates `kubelet.sock` again, so a removed-and-recreated file is a change even when the name is the same.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Sockets in the device plugin directory, by identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirState {
    /// Identity of `kubelet.sock`.
    pub kubelet: Option<u64>,
    /// Identity of every socket, by file name.
    pub sockets: BTreeMap<String, u64>,
}

/// A socket file's identity: inode and change time, so a recreated file with a recycled inode still differs.
pub fn socket_id(path: &Path) -> Option<u64> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.file_type().is_socket() {
        return None;
    }
    Some(m.ino() ^ (m.ctime_nsec() as u64).rotate_left(32) ^ (m.ctime() as u64))
}

fn scan(dir: &Path) -> DirState {
    let mut st = DirState::default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = socket_id(&e.path()) {
                st.sockets.insert(name, id);
            }
        }
    }
    st.kubelet = st
        .sockets
        .get(kubelet_api::deviceplugin::KUBELET_SOCKET_NAME)
        .copied();
    st
}

/// The directory and its latest [`DirState`], published on a watch channel.
#[derive(Clone)]
pub struct DevicePluginDir {
    path: PathBuf,
    state: Arc<watch::Sender<DirState>>,
}

impl DevicePluginDir {
    /// Reads the directory now, then again every `poll` (a `read_dir` of a handful of entries) until `cancel`.
    pub fn watch(path: PathBuf, poll: Duration, cancel: CancellationToken) -> Self {
        let dir = Self {
            state: Arc::new(watch::channel(scan(&path)).0),
            path,
        };
        let poller = dir.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(poll) => poller.rescan(),
                }
            }
        });
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the directory at once (after we bind a socket ourselves, not to wait for the next poll).
    pub fn rescan(&self) {
        let now = scan(&self.path);
        self.state.send_if_modified(|cur| {
            if *cur == now {
                false
            } else {
                *cur = now;
                true
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<DirState> {
        self.state.subscribe()
    }
}

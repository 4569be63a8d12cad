//! The kubelet's device plugin directory, watched by socket identity: a kubelet restart removes every socket and
//! creates `kubelet.sock` again, so a removed-and-recreated file is a change even when the name is the same. A
//! kubelet that dies without restarting leaves its file behind, so `kubelet.sock` is also probed ([`kubelet`]):
//! every `probe_every` while it answers, at every poll while it does not (a refused connect is one system call, as
//! cheap as the directory read done at that pace), so a kubelet coming back is seen within one poll.
//!
//! [`kubelet`]: super::kubelet

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::kubelet::{Kubelet, probe};

/// Sockets in the device plugin directory, by identity, and whether the kubelet answers on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirState {
    /// Identity of the `kubelet.sock` file.
    pub kubelet_socket: Option<u64>,
    /// The kubelet behind `kubelet.sock`.
    pub kubelet: Kubelet,
    /// Identity of every socket, by file name.
    pub sockets: BTreeMap<String, u64>,
    /// Kubelet incarnations handed out so far.
    incarnations: u64,
}

impl DirState {
    /// The state after a scan found `sockets` and, if one was taken of the same `kubelet.sock` file, a probe
    /// answered `probe`.
    fn next(&self, sockets: BTreeMap<String, u64>, probe: Option<Result<(), String>>) -> DirState {
        let file = kubelet_file(&sockets);
        let mut incarnations = self.incarnations;
        let kubelet = self
            .kubelet
            .next(self.kubelet_socket, file, probe, &mut incarnations);
        DirState {
            kubelet_socket: file,
            kubelet,
            sockets,
            incarnations,
        }
    }
}

/// A socket file's identity: inode and change time, so a recreated file with a recycled inode still differs.
pub fn socket_id(path: &Path) -> Option<u64> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.file_type().is_socket() {
        return None;
    }
    Some(m.ino() ^ (m.ctime_nsec() as u64).rotate_left(32) ^ (m.ctime() as u64))
}

fn scan(dir: &Path) -> BTreeMap<String, u64> {
    let mut sockets = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = socket_id(&e.path()) {
                sockets.insert(name, id);
            }
        }
    }
    sockets
}

fn kubelet_file(sockets: &BTreeMap<String, u64>) -> Option<u64> {
    sockets
        .get(kubelet_api::deviceplugin::KUBELET_SOCKET_NAME)
        .copied()
}

/// The directory and its latest [`DirState`], published on a watch channel.
#[derive(Clone)]
pub struct DevicePluginDir {
    path: PathBuf,
    state: Arc<watch::Sender<DirState>>,
}

impl DevicePluginDir {
    /// Reads the directory now, then again every `poll` (a `read_dir` of a handful of entries) until `cancel`;
    /// probes `kubelet.sock` every `probe_every` while it answers, at every poll while it does not.
    pub fn watch(
        path: PathBuf,
        poll: Duration,
        probe_every: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let dir = Self {
            state: Arc::new(watch::channel(DirState::default().next(scan(&path), None)).0),
            path,
        };
        let poller = dir.clone();
        tokio::spawn(async move {
            // The file last probed and when.
            let mut probed: Option<(u64, Instant)> = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(poll) => poller.poll(probe_every, &mut probed).await,
                }
            }
        });
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn kubelet_socket(&self) -> PathBuf {
        self.path
            .join(kubelet_api::deviceplugin::KUBELET_SOCKET_NAME)
    }

    /// One poll: the directory, and a probe of `kubelet.sock` when one is due.
    async fn poll(&self, probe_every: Duration, probed: &mut Option<(u64, Instant)>) {
        let sockets = scan(&self.path);
        let Some(file) = kubelet_file(&sockets) else {
            return self.publish(sockets, None);
        };
        let up = self.state.borrow().kubelet.incarnation().is_some();
        let due = !up || probed.is_none_or(|(f, at)| f != file || at.elapsed() >= probe_every);
        if !due {
            return self.publish(sockets, None);
        }
        let answer = probe(&self.kubelet_socket(), probe_every).await;
        *probed = Some((file, Instant::now()));
        // The probe counts only for the file it reached.
        let sockets = scan(&self.path);
        let answer = (kubelet_file(&sockets) == Some(file)).then_some(answer);
        self.publish(sockets, answer);
    }

    /// Reads the directory at once (after we bind a socket ourselves, not to wait for the next poll).
    pub fn rescan(&self) {
        self.publish(scan(&self.path), None);
    }

    fn publish(&self, sockets: BTreeMap<String, u64>, probe: Option<Result<(), String>>) {
        self.state.send_if_modified(|cur| {
            let now = cur.next(sockets, probe);
            match (&cur.kubelet, &now.kubelet) {
                (Kubelet::Up { .. }, Kubelet::NotAnswering(why)) => tracing::warn!("{why}"),
                (Kubelet::NotAnswering(_), Kubelet::Up { .. }) => {
                    tracing::info!("kubelet answering again")
                }
                _ => {}
            }
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

//! State the agent's tasks share: the netlink handle, metrics, the link and device-plugin-directory watches, the
//! latest cleanup report, the lock that serialises host link changes, and per-resource runtime facts (for status,
//! health and readiness).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::gc::CleanupReport;
use crate::metrics::Metrics;
use crate::netmon::LinkSnapshot;

/// Sockets in the device plugin directory, by identity, so a removed-and-recreated file is a change even when the
/// name is the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirState {
    /// Identity of `kubelet.sock`.
    pub kubelet: Option<u64>,
    /// Identity of every socket, by file name.
    pub sockets: BTreeMap<String, u64>,
}

/// What the agent knows about one served resource beyond its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRuntime {
    /// The device plugin's gRPC server is up on its socket.
    pub serving: bool,
    pub registered: bool,
    pub healthy: u32,
    pub lower_present: bool,
    pub lower_up: bool,
    pub last_error: Option<String>,
}

pub struct Shared {
    pub netlink: macvtap_link::Netlink,
    pub metrics: Arc<Metrics>,
    pub device_plugin_dir: PathBuf,
    pub links: watch::Receiver<LinkSnapshot>,
    pub dir: watch::Receiver<DirState>,
    /// The latest cleanup pass: which devices pods hold, and whether cleanup could run.
    pub cleanup: watch::Receiver<CleanupReport>,
    /// Held while a host link is created, adopted or deleted, so Allocate and cleanup never interleave: the tap
    /// Allocate answers is always that of the link it left in place.
    pub link_ops: tokio::sync::Mutex<()>,
    dir_rescan: Notify,
    /// Device ID -> last Allocate, for cleanup's grace period.
    allocations: Mutex<HashMap<String, Instant>>,
    runtime: Mutex<BTreeMap<String, ResourceRuntime>>,
    /// Woken whenever something status-relevant changed.
    pub changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

impl Shared {
    /// Builds the shared state and starts the directory watcher. The directory is re-read every `poll` (a
    /// `read_dir` of a handful of entries) and at once after we bind a socket ourselves.
    pub fn new(
        netlink: macvtap_link::Netlink,
        metrics: Arc<Metrics>,
        device_plugin_dir: PathBuf,
        links: watch::Receiver<LinkSnapshot>,
        cleanup: watch::Receiver<CleanupReport>,
        poll: Duration,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (dir_tx, dir_rx) = watch::channel(scan(&device_plugin_dir));
        let shared = Arc::new(Self {
            netlink,
            metrics,
            device_plugin_dir,
            links,
            dir: dir_rx,
            cleanup,
            link_ops: tokio::sync::Mutex::new(()),
            dir_rescan: Notify::new(),
            allocations: Mutex::new(HashMap::new()),
            runtime: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                    _ = s.dir_rescan.notified() => {}
                }
                let now = scan(&s.device_plugin_dir);
                dir_tx.send_if_modified(|cur| {
                    if *cur == now {
                        false
                    } else {
                        *cur = now;
                        true
                    }
                });
            }
        });
        shared
    }

    /// Ask the directory watcher to look now.
    pub fn dir_rescan(&self) {
        self.dir_rescan.notify_one();
    }

    pub fn note_allocation(&self, device_id: &str) {
        lock(&self.allocations).insert(device_id.to_string(), Instant::now());
        self.changed.notify_one();
    }

    /// When the device was last allocated (since this process started).
    pub fn last_allocation(&self, device_id: &str) -> Option<Instant> {
        lock(&self.allocations).get(device_id).copied()
    }

    pub fn forget_allocations_older_than(&self, age: Duration) {
        lock(&self.allocations).retain(|_, t| t.elapsed() < age);
    }

    pub fn set_runtime(&self, resource: &str, f: impl FnOnce(&mut ResourceRuntime)) {
        let mut rt = lock(&self.runtime);
        let entry = rt.entry(resource.to_string()).or_default();
        let before = entry.clone();
        f(entry);
        if *entry != before {
            self.changed.notify_one();
        }
    }

    pub fn remove_runtime(&self, resource: &str) {
        lock(&self.runtime).remove(resource);
        self.changed.notify_one();
    }

    pub fn runtime(&self) -> BTreeMap<String, ResourceRuntime> {
        lock(&self.runtime).clone()
    }
}

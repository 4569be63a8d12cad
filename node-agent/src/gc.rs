//! Cleanup of host-side macvtap links of ours that no pod holds.
//!
//! A link is removed only when all of these hold: it is ours by the strict host-side check (macvtap, our name
//! scheme, our ifalias marker for that device ID); the kubelet's PodResources `List` answered and no pod holds its
//! device ID; and it has been unheld, and not allocated, for the whole grace period (an Allocate whose CNI ADD has
//! not come yet, or a pod the kubelet has not listed yet). When PodResources cannot be asked, nothing is removed.
//! Links inside pods are in other namespaces and never seen here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubelet_api::podresources::ListPodResourcesRequest;
use kubelet_api::podresources::pod_resources_lister_client::PodResourcesListerClient;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// Device IDs held by pods, by resource name (without the `macvtap.network.kubevirt.io/` prefix).
pub type HeldDevices = BTreeMap<String, BTreeSet<String>>;

/// Asks the kubelet which of our device IDs pods hold.
pub async fn held_devices(socket: &std::path::Path) -> Result<HeldDevices, String> {
    let channel = tokio::time::timeout(Duration::from_secs(5), kubelet_api::unix::connect(socket))
        .await
        .map_err(|_| "timed out dialing PodResources".to_string())?
        .map_err(|e| format!("dialing {}: {e}", socket.display()))?;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        PodResourcesListerClient::new(channel).list(ListPodResourcesRequest {}),
    )
    .await
    .map_err(|_| "PodResources List timed out".to_string())?
    .map_err(|s| format!("PodResources List: {}", s.message()))?
    .into_inner();
    let prefix = format!("{}/", macvtap_api::GROUP);
    let mut held = HeldDevices::new();
    for pod in resp.pod_resources {
        for c in pod.containers {
            for d in c.devices {
                if let Some(name) = d.resource_name.strip_prefix(&prefix) {
                    held.entry(name.to_string())
                        .or_default()
                        .extend(d.device_ids);
                }
            }
        }
    }
    Ok(held)
}

pub struct Cleanup {
    pub shared: Arc<Shared>,
    pub pod_resources_socket: PathBuf,
    pub interval: Duration,
    pub grace: Duration,
    /// Latest answer of PodResources, for status (`allocated`).
    pub held: Arc<Mutex<Option<HeldDevices>>>,
}

impl Cleanup {
    pub async fn run(self, cancel: CancellationToken) {
        let mut unheld_since: HashMap<String, Instant> = HashMap::new();
        loop {
            self.pass(&mut unheld_since).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn pass(&self, unheld_since: &mut HashMap<String, Instant>) {
        let held = match held_devices(&self.pod_resources_socket).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(
                    "cleanup skipped, cannot ask the kubelet which devices are in use: {e}"
                );
                return;
            }
        };
        let held_ids: BTreeSet<&String> = held.values().flatten().collect();
        let links = match self.shared.netlink.list_our_links().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cleanup: listing links: {e}");
                return;
            }
        };
        let now = Instant::now();
        let mut seen = BTreeSet::new();
        for l in links {
            // Strict check: our name scheme and marker; anything else is never touched.
            if !l.link.is_ours(&l.device_id) {
                continue;
            }
            seen.insert(l.device_id.clone());
            if held_ids.contains(&l.device_id) {
                unheld_since.remove(&l.device_id);
                continue;
            }
            let since = *unheld_since.entry(l.device_id.clone()).or_insert(now);
            let recent_alloc = self
                .shared
                .last_allocation(&l.device_id)
                .is_some_and(|t| now.duration_since(t) < self.grace);
            if now.duration_since(since) < self.grace || recent_alloc {
                continue;
            }
            match self.shared.netlink.delete_our_link(&l.device_id).await {
                Ok(true) => {
                    tracing::info!(device = %l.device_id, link = %l.link.name, "removed orphaned link: no pod holds it");
                    self.shared.metrics.links_removed.inc();
                    unheld_since.remove(&l.device_id);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(device = %l.device_id, "cleanup: {e}"),
            }
        }
        unheld_since.retain(|id, _| seen.contains(id));
        self.shared.forget_allocations_older_than(self.grace * 2);
        let changed = {
            let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let changed = h.as_ref() != Some(&held);
            *h = Some(held);
            changed
        };
        if changed {
            self.shared.changed.notify_one();
        }
    }
}

//! Cleanup of host-side macvtap links of ours that no pod holds, and adoption of the original's links.
//!
//! Each pass first adopts the original macvtap-cni's links for our slots ([`crate::original`]), then removes a link
//! only when all of these hold: it is ours by the strict host-side check (macvtap, our name scheme, our ifalias
//! marker for that device ID); the kubelet's PodResources `List` answered and no pod holds its device ID; and it has
//! been unheld, and not allocated, for the whole grace period (an Allocate whose CNI ADD has not come yet, or a pod
//! the kubelet has not listed yet). When PodResources cannot be asked, nothing is removed, and that is reported:
//! metric `macvtap_agent_cleanup_skipped_total{reason}`, gauge `macvtap_agent_cleanup_active`, and
//! `MacvtapNodeState.status.cleanup`. Links inside pods are in other namespaces and never seen here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubelet_api::podresources::ListPodResourcesRequest;
use kubelet_api::podresources::pod_resources_lister_client::PodResourcesListerClient;
use macvtap_core::ResourceConfig;
use macvtap_core::device::{host_link_name, ownership_alias};
use macvtap_link::LinkInfo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::link_writer::LinkWriter;
use crate::metrics::{Metrics, ReasonLabel};
use crate::netmon;
use crate::original;
use crate::recent::RecentAllocations;
use crate::records::NodeRecords;

/// Device IDs held by pods, by resource name (without the `macvtap.network.kubevirt.io/` prefix).
pub type HeldDevices = BTreeMap<String, BTreeSet<String>>;

/// What the latest cleanup pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Device IDs pods hold, from the latest PodResources answer; `None` before the first one.
    pub held: Option<HeldDevices>,
    /// Why the latest pass removed nothing: the kubelet's PodResources could not be asked (or the link table could
    /// not be read). `None` when it ran.
    pub skipped: Option<String>,
}

impl CleanupReport {
    /// Whether a pod holds `device_id` of `resource`, per the latest PodResources answer.
    pub fn is_held(&self, resource: &str, device_id: &str) -> bool {
        self.held
            .as_ref()
            .and_then(|h| h.get(resource))
            .is_some_and(|ids| ids.contains(device_id))
    }
}

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
    let mut held = HeldDevices::new();
    for pod in resp.pod_resources {
        for c in pod.containers {
            for d in c.devices {
                if let Some(name) = macvtap_core::resource_of(&d.resource_name) {
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
    pub writer: Arc<LinkWriter>,
    /// Allocations within the grace period are never undone.
    pub recent: RecentAllocations,
    /// Allocation records and tap-index reservations, dropped like links once no pod holds their device.
    pub records: Arc<NodeRecords>,
    pub metrics: Arc<Metrics>,
    pub pod_resources_socket: PathBuf,
    pub interval: Duration,
    pub grace: Duration,
    /// The resources served now: their slots are the ones whose original links are adopted.
    pub resources: watch::Receiver<BTreeMap<String, ResourceConfig>>,
    pub report: watch::Sender<CleanupReport>,
}

impl Cleanup {
    pub async fn run(self, cancel: CancellationToken) {
        let mut unheld_since: HashMap<String, Instant> = HashMap::new();
        let mut unrecorded_since: HashMap<String, Instant> = HashMap::new();
        loop {
            // The state directory first: a record a crash left unreadable is re-derived before anything reads it.
            self.records.repair_records(&self.resources.borrow());
            self.records.reclaim_unowned();
            if self.pass(&mut unheld_since).await {
                self.records_pass(&mut unrecorded_since).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    fn skip(&self, reason: &'static str, message: String) {
        self.metrics
            .cleanup_skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.metrics.cleanup_active.set(0);
        let first = self.report.borrow().skipped.is_none();
        if first {
            tracing::warn!(
                reason,
                "link cleanup skipped, no link is removed until it can run: {message}"
            );
        } else {
            tracing::debug!(reason, "link cleanup still skipped: {message}");
        }
        self.report.send_if_modified(|r| {
            let new = Some(message);
            if r.skipped == new {
                false
            } else {
                r.skipped = new;
                true
            }
        });
    }

    /// One pass over the host links; false when it was skipped (nothing known about which devices pods hold).
    async fn pass(&self, unheld_since: &mut HashMap<String, Instant>) -> bool {
        let mut links = match netmon::link_table(self.writer.reader()).await {
            Ok(l) => l,
            Err(e) => {
                self.skip("links_unreadable", format!("reading the link table: {e}"));
                return false;
            }
        };
        self.adopt_originals(&mut links).await;

        let held = match held_devices(&self.pod_resources_socket).await {
            Ok(h) => h,
            Err(e) => {
                self.skip(
                    "pod_resources_unreachable",
                    format!("cannot ask the kubelet's PodResources which devices pods hold: {e}"),
                );
                return false;
            }
        };
        if self.report.borrow().skipped.is_some() {
            tracing::info!("link cleanup runs again: PodResources answered");
        }
        self.metrics.cleanup_active.set(1);
        let held_ids: BTreeSet<&String> = held.values().flatten().collect();
        let now = Instant::now();
        let mut seen = BTreeSet::new();
        for l in links.values() {
            // Strict check: our name scheme and marker; anything else is never touched.
            let Some(id) = l.our_device_id() else {
                continue;
            };
            seen.insert(id.to_string());
            if held_ids.contains(&id.to_string()) {
                unheld_since.remove(id);
                continue;
            }
            let since = *unheld_since.entry(id.to_string()).or_insert(now);
            if now.duration_since(since) < self.grace {
                continue;
            }
            let turn = self.writer.turn().await;
            // Checked in our turn: an Allocate that just (re)created this link is never undone.
            let recent_alloc = self
                .recent
                .last(id)
                .is_some_and(|t| t.elapsed() < self.grace);
            if recent_alloc {
                continue;
            }
            match turn.delete_our_link(id).await {
                Ok(true) => {
                    tracing::info!(device = %id, link = %l.name, "removed orphaned link: no pod holds it");
                    self.metrics.links_removed.inc();
                    unheld_since.remove(id);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(device = %id, "cleanup: {e}"),
            }
        }
        unheld_since.retain(|id, _| seen.contains(id));
        self.recent.forget_older_than(self.grace * 2);
        self.report.send_if_modified(|r| {
            let new = CleanupReport {
                held: Some(held),
                skipped: None,
            };
            if *r == new {
                false
            } else {
                *r = new;
                true
            }
        });
        true
    }

    /// Drops the records and reservations of devices no pod holds: a superseded reservation as soon as no link has
    /// its tap; a device's current one (and its record) once it has been unheld, unallocated and without a link
    /// for the grace period. Runs only after a pass that asked PodResources.
    async fn records_pass(&self, unheld_since: &mut HashMap<String, Instant>) {
        let reservations = match self.records.reservations() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cleanup: reading the allocation records: {e}");
                return;
            }
        };
        let now = Instant::now();
        let mut seen = BTreeSet::new();
        for r in reservations {
            let held = self
                .report
                .borrow()
                .held
                .as_ref()
                .is_some_and(|h| h.values().any(|ids| ids.contains(&r.device_id)));
            if r.current {
                seen.insert(r.device_id.clone());
                if held {
                    unheld_since.remove(&r.device_id);
                    continue;
                }
                let since = *unheld_since.entry(r.device_id.clone()).or_insert(now);
                if now.duration_since(since) < self.grace {
                    continue;
                }
            }
            let turn = self.writer.turn().await;
            // In our turn: an Allocate that just assigned this device is never undone, and a link that has the tap
            // (a pod being torn down, a host link cleanup has not removed yet) keeps its reservation.
            let recent = self
                .recent
                .last(&r.device_id)
                .is_some_and(|t| t.elapsed() < self.grace);
            let tapped = match self.records.taps_in_use() {
                Ok(taps) => taps.contains(&r.index),
                Err(e) => {
                    tracing::warn!("cleanup: listing taps: {e}");
                    return;
                }
            };
            if (r.current && recent) || tapped {
                continue;
            }
            match self.records.forget(&r) {
                Ok(()) => {
                    tracing::info!(device = %r.device_id, tap_index = r.index, current = r.current,
                        "released a tap index no pod holds");
                    self.metrics.tap_indices_released.inc();
                    unheld_since.remove(&r.device_id);
                }
                Err(e) => tracing::warn!(device = %r.device_id, "cleanup: {e}"),
            }
            drop(turn);
        }
        unheld_since.retain(|id, _| seen.contains(id));
    }

    /// Adopts the original's links for served slots; `links` is updated to show them as ours.
    async fn adopt_originals(&self, links: &mut BTreeMap<String, LinkInfo>) {
        let slots = original::slots_by_link_name(&self.resources.borrow());
        let found: Vec<(String, String)> = original::find_adoptable(links, &slots)
            .into_iter()
            .map(|(l, id)| (l.name.clone(), id))
            .collect();
        for (name, id) in found {
            let Some(slot) = slots.get(&name) else {
                continue;
            };
            let turn = self.writer.turn().await;
            if original::adopt_if_originals(&turn, &name, slot, &self.metrics).await {
                // Adoption may rename (a v0.13.1 link): the link is listed under our name from now on.
                if let Some(mut l) = links.remove(&name) {
                    l.alias = Some(ownership_alias(&id));
                    l.name = host_link_name(&id);
                    links.insert(l.name.clone(), l);
                }
            }
        }
    }
}

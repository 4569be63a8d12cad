//! 50 ADDs started at once, one per pod (with the pod check: each its own pod in `CNI_ARGS`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use macvtap_e2e::netns::Netns;
use macvtap_link::device_id;
use serde_json::json;

use super::pod_resources::PodResourcesStandIn;
use super::{RESOURCE, allocate, run, unique_index};

/// 50 ADDs started at once, one per pod.
pub struct Burst<'a> {
    pub bin: &'a PathBuf,
    pub node: &'a Netns,
    pub alloc_dir: &'a Path,
    pub node_config: &'a Path,
    pub kubelet: &'a PodResourcesStandIn,
}

impl Burst<'_> {
    /// Devices `n..n+50` allocated (and, with `check`, granted to pods `vm-burst<i>` named in `CNI_ARGS`); the time
    /// from the first spawn to the last exit.
    pub fn run(&self, n: u32, in_place: bool, check: bool) -> Duration {
        let pods: Vec<Netns> = (0..50).map(|_| Netns::new("bench-pod").unwrap()).collect();
        let ids: Vec<String> = (0..50).map(|i| device_id("burst", n + i)).collect();
        let args: Vec<String> = (0..ids.len())
            .map(|i| {
                if check {
                    format!("IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm-burst{i}")
                } else {
                    String::new()
                }
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            allocate(
                self.node,
                self.alloc_dir,
                id,
                unique_index(n + i as u32, in_place),
                in_place,
            );
            self.kubelet
                .grant("default", &format!("vm-burst{i}"), RESOURCE, id);
        }
        self.kubelet.take_refused();
        self.kubelet.take_calls();
        let start = Instant::now();
        std::thread::scope(|s| {
            for ((p, id), args) in pods.iter().zip(&ids).zip(&args) {
                s.spawn(move || {
                    let conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "macvtap", "deviceID": id});
                    let env = [
                        ("CNI_ARGS", args.as_str()),
                        ("MACVTAP_CNI_NODE_CONFIG", self.node_config.to_str().unwrap()),
                    ];
                    run(self.bin, self.node, p, "ADD", &conf, &env)
                });
            }
        });
        start.elapsed()
    }
}

//! What the agent knows about each served resource beyond its config: its server, registration, health and last
//! error. Written by the resource's pool and registration, read by the probes ([`crate::health`]) and the status
//! writer ([`crate::status`]), published as one watch channel so readers wake on every change.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// One resource's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceState {
    /// The device plugin's gRPC server is up on its socket.
    pub serving: bool,
    pub registered: bool,
    pub healthy: u32,
    pub lower_present: bool,
    pub lower_up: bool,
    pub last_error: Option<String>,
}

/// Every served resource's state, by resource name.
pub type ResourceStateMap = BTreeMap<String, ResourceState>;

/// The writer side, shared by the resources' tasks; readers [`ResourceStates::subscribe`].
#[derive(Clone)]
pub struct ResourceStates(Arc<watch::Sender<ResourceStateMap>>);

impl Default for ResourceStates {
    fn default() -> Self {
        Self(Arc::new(watch::channel(ResourceStateMap::new()).0))
    }
}

impl ResourceStates {
    /// Changes one resource's state; readers are woken only when it really changed.
    pub fn update(&self, resource: &str, f: impl FnOnce(&mut ResourceState)) {
        self.0.send_if_modified(|all| {
            let entry = all.entry(resource.to_string()).or_default();
            let before = entry.clone();
            f(entry);
            *entry != before
        });
    }

    /// Forgets a resource that is no longer served.
    pub fn remove(&self, resource: &str) {
        self.0
            .send_if_modified(|all| all.remove(resource).is_some());
    }

    pub fn subscribe(&self) -> watch::Receiver<ResourceStateMap> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_wake_only_on_real_changes() {
        let states = ResourceStates::default();
        let mut rx = states.subscribe();
        states.update("dp", |s| s.serving = true);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update()["dp"].serving);
        states.update("dp", |s| s.serving = true);
        assert!(!rx.has_changed().unwrap());
        states.remove("other");
        assert!(!rx.has_changed().unwrap());
        states.remove("dp");
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().is_empty());
    }
}

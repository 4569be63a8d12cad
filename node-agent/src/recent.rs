//! Which devices were allocated lately: every Allocate (and PreStart that makes a link) notes its device here, and
//! cleanup's grace period reads it, so a link or reservation being handed to a pod is never undone. Its own module
//! because both sides use it: the allocator writes, cleanup reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Device ID -> its last Allocate (since this process started), for cleanup's grace period.
#[derive(Clone)]
pub struct RecentAllocations(Arc<watch::Sender<HashMap<String, Instant>>>);

impl Default for RecentAllocations {
    fn default() -> Self {
        Self(Arc::new(watch::channel(HashMap::new()).0))
    }
}

impl RecentAllocations {
    pub fn note(&self, device_id: &str) {
        self.0.send_modify(|m| {
            m.insert(device_id.to_string(), Instant::now());
        });
    }

    /// When the device was last allocated.
    pub fn last(&self, device_id: &str) -> Option<Instant> {
        self.0.borrow().get(device_id).copied()
    }

    pub fn forget_older_than(&self, age: Duration) {
        self.0.send_if_modified(|m| {
            let before = m.len();
            m.retain(|_, t| t.elapsed() < age);
            m.len() != before
        });
    }
}

//! What `/healthz` and `/readyz` say (served by `macvtap_telemetry::admin`): live while the process runs; ready as
//! [`Health::ready`] says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use macvtap_telemetry::admin::Probes;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    /// Connected to the API server (leader election running, or controllers started without it).
    pub started: AtomicBool,
    /// This replica leads and reconciles.
    pub leading: AtomicBool,
    /// The leader's caches are filled (shared with the controllers).
    pub synced: Arc<AtomicBool>,
    /// This replica serves the admission webhooks (every replica does when the injector is on).
    pub webhook_enabled: bool,
    /// The webhook has a serving certificate: until then the Service must not send it requests.
    pub webhook_ready: Arc<AtomicBool>,
}

impl Health {
    /// Ready: a standby replica as soon as it takes part in the election (it must be able to take over); the
    /// leader once its caches are synced.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Acquire)
            && (!self.leading.load(Ordering::Acquire) || self.synced.load(Ordering::Acquire))
            && (!self.webhook_enabled || self.webhook_ready.load(Ordering::Acquire))
    }
}

impl Probes for Health {
    fn live(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        if Health::ready(self) {
            Ok(())
        } else {
            Err("not ready".into())
        }
    }
}

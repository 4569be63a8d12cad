//! Agent heartbeats as the operator sees them: when each node state's status last changed its `lastUpdateTime`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use macvtap_api::MacvtapNodeState;
use tokio::time::Instant;

/// When the operator last saw each agent write its node state's status (a new `lastUpdateTime`), on its own clock:
/// node clocks may be skewed, and a restarted operator gives every agent a full period before calling it stale.
#[derive(Default)]
pub struct Heartbeats(Mutex<HashMap<String, (Option<Time>, Instant)>>);

impl Heartbeats {
    pub fn observe(&self, state: &MacvtapNodeState) {
        let token = state
            .status
            .as_ref()
            .and_then(|s| s.last_update_time.clone());
        let mut seen = self.0.lock().expect("heartbeats poisoned");
        let entry = seen.entry(state.name_any());
        match entry {
            Entry::Occupied(mut e) if e.get().0 != token => {
                e.insert((token, Instant::now()));
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert((token, Instant::now()));
            }
        }
    }

    pub fn forget(&self, node: &str) {
        self.0.lock().expect("heartbeats poisoned").remove(node);
    }

    /// How long since `node`'s agent last wrote; `None` when never seen.
    pub fn age(&self, node: &str) -> Option<Duration> {
        self.0
            .lock()
            .expect("heartbeats poisoned")
            .get(node)
            .map(|(_, at)| at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use macvtap_api::MacvtapNodeStateStatus;

    fn state(at: Option<i64>) -> MacvtapNodeState {
        let mut s = MacvtapNodeState::new("n", Default::default());
        s.status = Some(MacvtapNodeStateStatus {
            last_update_time: at.map(|t| Time(Timestamp::from_second(t).unwrap())),
            ..Default::default()
        });
        s
    }

    #[tokio::test]
    async fn age_restarts_only_when_the_agent_writes_again() {
        let gap = Duration::from_millis(60);
        let hb = Heartbeats::default();
        assert_eq!(hb.age("n"), None);
        hb.observe(&state(Some(10)));
        tokio::time::sleep(gap).await;
        // The same status seen again (a spec write by the operator, a relist): no heartbeat.
        hb.observe(&state(Some(10)));
        assert!(hb.age("n").unwrap() >= gap);
        // A new lastUpdateTime: the agent wrote.
        hb.observe(&state(Some(40)));
        assert!(hb.age("n").unwrap() < gap);
        hb.forget("n");
        assert_eq!(hb.age("n"), None);
    }
}

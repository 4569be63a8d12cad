//! The three conditions of a pool's status (`Ready`, `Degraded`, `Conflict`) from what the node walk found, with
//! messages that name the nodes, grouped by problem.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::serving::Problem;
use super::{CONFLICT, DEGRADED, READY};
use crate::selection::{Conflict, InvalidSelector};

/// How many node names a condition message lists before summarising the rest.
const MAX_LISTED_NODES: usize = 5;

/// Builds the conditions of one status, keeping each previous lastTransitionTime while its status stays.
pub(super) struct Conditions<'a> {
    pub previous: &'a [Condition],
    pub generation: Option<i64>,
    pub now: &'a Time,
}

fn list_nodes(nodes: &[String]) -> String {
    let mut s = nodes
        .iter()
        .take(MAX_LISTED_NODES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if nodes.len() > MAX_LISTED_NODES {
        s.push_str(&format!(" and {} more", nodes.len() - MAX_LISTED_NODES));
    }
    let noun = if nodes.len() == 1 { "node" } else { "nodes" };
    format!("{noun} {s}")
}

impl Conditions<'_> {
    /// A condition, keeping the previous lastTransitionTime when the status did not change.
    fn condition(&self, type_: &str, status: bool, reason: &str, message: String) -> Condition {
        let status = if status { "True" } else { "False" }.to_string();
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now.clone());
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        }
    }

    fn no_conflict(&self) -> Condition {
        self.condition(
            CONFLICT,
            false,
            "NoConflict",
            "no other pool claims the same resources".into(),
        )
    }

    /// All three for a pool whose node selector cannot be evaluated.
    pub(super) fn invalid_selector(&self, error: &InvalidSelector) -> Vec<Condition> {
        vec![
            self.condition(
                READY,
                false,
                "InvalidNodeSelector",
                format!("spec.nodeSelector: {error}"),
            ),
            self.condition(
                DEGRADED,
                false,
                "InvalidNodeSelector",
                "the pool selects no nodes".into(),
            ),
            self.no_conflict(),
        ]
    }

    /// `Conflict`: true while the pool loses a conflict on some node, naming each winner and its nodes.
    pub(super) fn conflict(&self, conflicts: &[(Conflict, Vec<String>)]) -> Condition {
        let Some((first, _)) = conflicts.first() else {
            return self.no_conflict();
        };
        let message = conflicts
            .iter()
            .map(|(c, nodes)| format!("{} on {}", c.kind.describe(&c.winner), list_nodes(nodes)))
            .collect::<Vec<_>>()
            .join("; ");
        self.condition(CONFLICT, true, first.kind.reason(), message)
    }

    /// `Ready` and `Degraded`: ready when every selected node serves the pool; otherwise degraded, with the
    /// problem on most nodes as the reason (ties go to the one listed first).
    pub(super) fn ready_and_degraded(
        &self,
        nodes_matched: u32,
        nodes_ready: u32,
        problems: &BTreeMap<Problem, Vec<String>>,
    ) -> [Condition; 2] {
        if nodes_matched == 0 {
            let m = "the node selector matches no nodes".to_string();
            return [
                self.condition(READY, false, "NoMatchingNodes", m.clone()),
                self.condition(DEGRADED, false, "NoMatchingNodes", m),
            ];
        }
        if problems.is_empty() {
            let m = format!("{nodes_ready} of {nodes_matched} nodes serve the pool");
            return [
                self.condition(READY, true, "AllNodesReady", m.clone()),
                self.condition(DEGRADED, false, "AllNodesReady", m),
            ];
        }
        let main_reason = problems
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(p, _)| p.reason())
            .unwrap_or("AllNodesReady");
        let listed = problems
            .iter()
            .map(|(p, nodes)| format!("{} on {}", p.describe(), list_nodes(nodes)))
            .collect::<Vec<_>>()
            .join("; ");
        let m = format!("{nodes_ready} of {nodes_matched} nodes serve the pool: {listed}");
        [
            self.condition(READY, false, main_reason, m.clone()),
            self.condition(DEGRADED, true, main_reason, m),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::at;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn node_lists_name_five_and_count_the_rest() {
        assert_eq!(list_nodes(&names(1)), "node n0");
        assert_eq!(list_nodes(&names(5)), "nodes n0, n1, n2, n3, n4");
        assert_eq!(list_nodes(&names(6)), "nodes n0, n1, n2, n3, n4 and 1 more");
    }

    #[test]
    fn transition_time_kept_while_the_status_stays() {
        let before = Conditions {
            previous: &[],
            generation: Some(1),
            now: &at(10),
        };
        let first = before.ready_and_degraded(2, 2, &BTreeMap::new());
        let after = Conditions {
            previous: &first,
            generation: Some(2),
            now: &at(20),
        };
        let same = after.ready_and_degraded(3, 3, &BTreeMap::new());
        assert_eq!(same[0].last_transition_time, at(10), "still ready");
        assert_eq!(same[0].observed_generation, Some(2));
        assert_eq!(same[0].message, "3 of 3 nodes serve the pool");
        let problems = BTreeMap::from([(Problem::NotRegistered, names(1))]);
        let flipped = after.ready_and_degraded(3, 2, &problems);
        assert_eq!(
            flipped[0].last_transition_time,
            at(20),
            "ready turned false"
        );
        assert_eq!(
            flipped[1].last_transition_time,
            at(20),
            "degraded turned true"
        );
    }

    #[test]
    fn the_problem_on_most_nodes_names_the_reason() {
        let c = Conditions {
            previous: &[],
            generation: None,
            now: &at(1),
        };
        let problems = BTreeMap::from([
            (Problem::NotRegistered, names(1)),
            (Problem::AgentNotReporting, names(2)),
        ]);
        let [ready, degraded] = c.ready_and_degraded(4, 1, &problems);
        assert_eq!(ready.reason, "AgentNotReporting");
        assert_eq!(degraded.reason, "AgentNotReporting");
        assert_eq!(
            ready.message,
            "1 of 4 nodes serve the pool: device plugin not registered with the kubelet on node n0; \
             agent not reporting on nodes n0, n1"
        );
        let [ready, _] = c.ready_and_degraded(0, 0, &problems);
        assert_eq!(
            ready.reason, "NoMatchingNodes",
            "no nodes wins over problems"
        );
    }
}

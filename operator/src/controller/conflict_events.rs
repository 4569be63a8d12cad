//! The Events of a pool's conflicts: a Warning when a pool starts losing a conflict (or loses a different one),
//! a Normal `ConflictResolved` when it stops. Each is published once, whatever the caches replay.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::events::{Event, EventType};
use macvtap_api::MacvtapPoolStatus;

use crate::pool_status::CONFLICT;

/// Longest Event note, in bytes (the API server rejects notes over 1 kB).
const MAX_NOTE: usize = 1000;

/// The Conflict message last published as an Event per pool, so a stale cache never repeats an Event.
#[derive(Default)]
pub(super) struct PublishedConflicts(Mutex<HashMap<String, String>>);

/// The reason and message of a status's Conflict condition when it is true.
fn conflict(status: Option<&MacvtapPoolStatus>) -> Option<(&str, &str)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == CONFLICT && c.status == "True")
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

impl PublishedConflicts {
    /// The Event to publish for `pool`, whose status was `cached` and is now `computed`, if any; recorded as
    /// published (a failed publish is not retried: an Event is informational).
    pub(super) fn next(
        &self,
        pool: &str,
        cached: Option<&MacvtapPoolStatus>,
        computed: &MacvtapPoolStatus,
    ) -> Option<Event> {
        let mut published = self.0.lock().expect("published conflicts poisoned");
        // After a restart nothing is remembered: the status already written tells what was published.
        let last = published
            .get(pool)
            .cloned()
            .or_else(|| conflict(cached).map(|(_, message)| message.to_string()));
        match (conflict(Some(computed)), last) {
            (Some((reason, message)), last) if last.as_deref() != Some(message) => {
                published.insert(pool.to_string(), message.to_string());
                Some(Event {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(truncate(message, MAX_NOTE)),
                    action: "Reconcile".into(),
                    secondary: None,
                })
            }
            (None, Some(_)) => {
                published.remove(pool);
                Some(Event {
                    type_: EventType::Normal,
                    reason: "ConflictResolved".into(),
                    note: Some("no other pool claims the same resources any more".into()),
                    action: "Reconcile".into(),
                    secondary: None,
                })
            }
            _ => None,
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with "..." when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::at;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn status(conflict: Option<&str>) -> MacvtapPoolStatus {
        let (status, reason, message) = match conflict {
            Some(m) => ("True", "ResourceNameConflict", m),
            None => ("False", "NoConflict", "none"),
        };
        MacvtapPoolStatus {
            conditions: vec![Condition {
                type_: CONFLICT.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: None,
                last_transition_time: at(1),
            }],
            ..Default::default()
        }
    }

    fn kind(e: Option<Event>) -> Option<(String, String)> {
        e.map(|e| (format!("{:?}", e.type_), e.reason))
    }

    fn warning() -> Option<(String, String)> {
        Some(("Warning".into(), "ResourceNameConflict".into()))
    }

    fn resolved() -> Option<(String, String)> {
        Some(("Normal".into(), "ConflictResolved".into()))
    }

    #[test]
    fn each_conflict_and_its_end_published_once() {
        let p = PublishedConflicts::default();
        let (none, a, b) = (status(None), status(Some("a")), status(Some("b")));
        assert_eq!(kind(p.next("p", None, &none)), None);
        assert_eq!(kind(p.next("p", Some(&none), &a)), warning());
        // The cache has not caught up with the status write yet: no repeat.
        assert_eq!(kind(p.next("p", Some(&none), &a)), None);
        assert_eq!(kind(p.next("p", Some(&a), &a)), None);
        assert_eq!(
            kind(p.next("p", Some(&a), &b)),
            warning(),
            "another conflict"
        );
        assert_eq!(kind(p.next("p", Some(&b), &none)), resolved());
        // An end is not remembered: while the cache still shows the conflict, it is published again.
        assert_eq!(kind(p.next("p", Some(&b), &none)), resolved());
        assert_eq!(kind(p.next("p", Some(&none), &none)), None);
        // Per pool.
        assert_eq!(kind(p.next("q", None, &a)), warning());
    }

    #[test]
    fn after_a_restart_the_written_status_tells_what_was_published() {
        let p = PublishedConflicts::default();
        let a = status(Some("a"));
        assert_eq!(kind(p.next("p", Some(&a), &a)), None);
        assert_eq!(kind(p.next("p", Some(&a), &status(None))), resolved());
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc...");
        // "é" is two bytes: cutting at 2 would split it.
        assert_eq!(truncate("aé", 2), "a...");
        let long = "x".repeat(MAX_NOTE + 10);
        let p = PublishedConflicts::default();
        let note = p
            .next("p", None, &status(Some(&long)))
            .unwrap()
            .note
            .unwrap();
        assert_eq!(note.len(), MAX_NOTE + 3);
    }
}

//! Config keys matched the way the original's Go `encoding/json` matched them.
//!
//! Go decodes an object key into the struct field whose JSON name equals it or, failing that, equals it under
//! `bytes.EqualFold` (so `"DeviceID"`, `"MTU"`, `"promiscmode"` all reach the original's fields), and a later key
//! for the same field overwrites an earlier one. NADs written for the original rely on this, so the top level of
//! our config is read the same way: [`Members`] keeps the object's members in document order (`serde_json::Map`
//! does not), [`Members::get`] returns the last one that folds to the name.
//!
//! Nested objects (`runtimeConfig`, `ipam`: ours, the original never read them) go through [`get_folded`]: the
//! exact key, else the only key that folds to it; several folding keys and no exact one is an error (their order
//! is lost by then).

use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON object's members in document order, duplicates kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Members(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    v.push(entry);
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl Members {
    /// The value of the last member whose key is `name` under Go's case folding (`name` is ASCII).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| folds_to(k, name))
            .map(|(_, v)| v)
    }
}

/// `key` matches the ASCII field name `name` as Go's `bytes.EqualFold` does: rune by rune, ASCII letters without
/// case, plus the two non-ASCII runes whose fold orbit holds an ASCII letter (KELVIN SIGN ~ k, LONG S ~ s).
pub fn folds_to(key: &str, name: &str) -> bool {
    let mut k = key.chars();
    let mut n = name.chars();
    loop {
        match (k.next(), n.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                let same = a.eq_ignore_ascii_case(&b)
                    || (a == '\u{212A}' && b.eq_ignore_ascii_case(&'k'))
                    || (a == '\u{017F}' && b.eq_ignore_ascii_case(&'s'));
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Several keys of a nested object fold to one name and none is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous(pub Vec<String>);

/// `name` in a nested object: the exact key, else the only key folding to it.
pub fn get_folded<'a>(
    m: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Value>, Ambiguous> {
    if let Some(v) = m.get(name) {
        return Ok(Some(v));
    }
    let mut hits = m.iter().filter(|(k, _)| folds_to(k, name));
    match (hits.next(), hits.next()) {
        (None, _) => Ok(None),
        (Some((_, v)), None) => Ok(Some(v)),
        (Some((a, _)), Some((b, _))) => {
            let mut keys = vec![a.clone(), b.clone()];
            keys.extend(hits.map(|(k, _)| k.clone()));
            Err(Ambiguous(keys))
        }
    }
}

/// Remove every key of `m` that folds to `name` (what a Go reader of the object would take for it).
pub fn remove_folded(m: &mut Map<String, Value>, name: &str) {
    m.retain(|k, _| !folds_to(k, name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_is_gos_equal_fold_for_ascii_names() {
        for (k, n) in [
            ("deviceID", "deviceID"),
            ("DeviceID", "deviceID"),
            ("DEVICEID", "deviceID"),
            ("deviceid", "deviceID"),
            ("MTU", "mtu"),
            ("promiscmode", "promiscMode"),
            ("promi\u{017F}cMode", "promiscMode"),
            ("\u{212A}", "k"),
        ] {
            assert!(folds_to(k, n), "{k} ~ {n}");
        }
        for (k, n) in [
            ("device_id", "deviceID"),
            ("deviceID ", "deviceID"),
            ("mtu1", "mtu"),
            ("", "mtu"),
            ("m\u{0130}u", "miu"),
            ("\u{212A}", "s"),
        ] {
            assert!(!folds_to(k, n), "{k} !~ {n}");
        }
    }

    #[test]
    fn the_last_folding_member_wins_in_document_order() {
        let m: Members = serde_json::from_str(r#"{"MTU":1300,"mtu":1400,"x":1}"#).unwrap();
        assert_eq!(m.get("mtu"), Some(&Value::from(1400)));
        let m: Members = serde_json::from_str(r#"{"mtu":1400,"Mtu":1300}"#).unwrap();
        assert_eq!(m.get("mtu"), Some(&Value::from(1300)));
        let m: Members = serde_json::from_str(r#"{"mtu":1,"mtu":2}"#).unwrap();
        assert_eq!(m.get("mtu"), Some(&Value::from(2)));
        assert_eq!(m.get("owner"), None);
        assert!(serde_json::from_str::<Members>("[]").is_err());
    }

    #[test]
    fn nested_lookup() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"Type":"host-local","MAC":"a","mac":"b","DeviceId":"x","deviceid":"y"}"#,
        )
        .unwrap();
        assert_eq!(get_folded(&m, "type"), Ok(Some(&Value::from("host-local"))));
        assert_eq!(
            get_folded(&m, "mac"),
            Ok(Some(&Value::from("b"))),
            "exact first"
        );
        assert!(get_folded(&m, "deviceID").is_err());
        assert_eq!(get_folded(&m, "nope"), Ok(None));
        let mut m = m;
        remove_folded(&mut m, "deviceID");
        assert!(m.keys().all(|k| !folds_to(k, "deviceID")));
        assert!(m.contains_key("Type"));
    }
}

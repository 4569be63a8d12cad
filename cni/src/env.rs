//! The `CNI_*` environment, validated per verb like libcni's skel.

use crate::error::{CniError, Code};

/// A snapshot of the process environment (or a test's).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `k`; empty counts as unset.
    pub fn get(&self, k: &str) -> Option<String> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Status => "STATUS",
            Verb::Gc => "GC",
            Verb::Version => "VERSION",
        }
    }

    /// Variables the spec requires for this verb.
    fn required(self) -> &'static [&'static str] {
        match self {
            Verb::Add | Verb::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Verb::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Verb::Status | Verb::Gc => &["CNI_PATH"],
            Verb::Version => &[],
        }
    }
}

/// What the verbs read from the environment, validated.
#[derive(Debug, Clone)]
pub struct Request {
    pub verb: Verb,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub cni_args: String,
}

/// Read `CNI_COMMAND` alone (error 4 if missing or unknown).
pub fn verb(env: &Env) -> Result<Verb, CniError> {
    let cmd = env
        .get("CNI_COMMAND")
        .ok_or_else(|| CniError::new(Code::InvalidEnv, "CNI_COMMAND env variable missing", ""))?;
    Ok(match cmd.as_str() {
        "ADD" => Verb::Add,
        "DEL" => Verb::Del,
        "CHECK" => Verb::Check,
        "STATUS" => Verb::Status,
        "GC" => Verb::Gc,
        "VERSION" => Verb::Version,
        other => {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("unknown CNI_COMMAND: {other}"),
                "",
            ));
        }
    })
}

/// Validate the environment for `verb`: every missing variable is named (error 4).
pub fn request(env: &Env, verb: Verb) -> Result<Request, CniError> {
    let missing: Vec<&str> = verb
        .required()
        .iter()
        .copied()
        .filter(|k| env.get(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("required env variables [{}] missing", missing.join(",")),
            "",
        ));
    }
    let container_id = env.get("CNI_CONTAINERID");
    if let Some(id) = &container_id
        && !valid_container_id(id)
    {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_CONTAINERID {id:?} has invalid characters"),
            "",
        ));
    }
    let ifname = env.get("CNI_IFNAME");
    if let Some(n) = &ifname
        && macvtap_core::validate_ifname(n).is_err()
    {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_IFNAME {n:?} is not a valid interface name"),
            "",
        ));
    }
    Ok(Request {
        verb,
        container_id,
        netns: env.get("CNI_NETNS"),
        ifname,
        cni_args: env.get("CNI_ARGS").unwrap_or_default(),
    })
}

/// The spec's container ID rule: an alphanumeric, then alphanumerics, `_`, `.`, `-`.
fn valid_container_id(id: &str) -> bool {
    let mut b = id.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variables_are_named() {
        let e = request(
            &Env::from_pairs([("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "net1")]),
            Verb::Add,
        )
        .unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("CNI_CONTAINERID")
                && e.msg.contains("CNI_NETNS")
                && e.msg.contains("CNI_PATH")
        );
        assert!(!e.msg.contains("CNI_IFNAME"));
        // DEL does not need a netns.
        let del = Env::from_pairs([
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/x"),
        ]);
        assert!(request(&del, Verb::Del).unwrap().netns.is_none());
        assert!(request(&Env::default(), Verb::Version).is_ok());
    }

    #[test]
    fn verbs() {
        assert_eq!(verb(&Env::default()).unwrap_err().code, 4);
        assert_eq!(
            verb(&Env::from_pairs([("CNI_COMMAND", "FOO")]))
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(
            verb(&Env::from_pairs([("CNI_COMMAND", "GC")])).unwrap(),
            Verb::Gc
        );
    }

    #[test]
    fn container_id_and_ifname_rules() {
        assert!(valid_container_id("abc-1.2_3"));
        assert!(
            !valid_container_id("-abc") && !valid_container_id("") && !valid_container_id("a/b")
        );
        let env = Env::from_pairs([
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_PATH", "/x"),
        ]);
        assert_eq!(request(&env, Verb::Del).unwrap_err().code, 4);
    }
}

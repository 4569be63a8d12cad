//! The `macvtap` CNI plugin as a library; `main.rs` only wires the process environment, stdin and stdout to
//! [`run`].
//!
//! ADD: validate env and config → the node's settings ([`node_file`]) → whose device: for a Kubernetes pod
//! (`K8S_POD_*` in `CNI_ARGS`) the kubelet's PodResources must show the pod holding `deviceID`
//! ([`pod_resources`]; 107 if not, 11 if the kubelet cannot be asked); outside Kubernetes the node config decides →
//! then one of two paths:
//! - **in place** (the agent's Allocate wrote an allocation record for `deviceID` in the node config's
//!   `allocationDir`): the lower device by name (index, MTU) → `mtu` check → IPAM ADD → ONE `RTM_NEWLINK` creating
//!   the macvtap inside `CNI_NETNS`, named `CNI_IFNAME`, with the record's tap index (the `/dev/tapN` Allocate
//!   answered), MAC, MTU, promisc, up → prove `/dev/tapN` is its tap and chown it (else delete it: 106) → in the
//!   pod: `arp_notify`/`ndisc_notify`, addresses, routes. No link crosses a namespace.
//! - **moved** (no record: a device allocated before in-place attach, the agent's host link or the original's):
//!   the host link for `deviceID` (`macvtap_link::host_link_name`): a macvtap carrying the agent's marker, or an
//!   unmarked one of the original for a pod the kubelet vouches for; anything else refused → `mtu` against the
//!   lower device → IPAM ADD (config without `deviceID`/`pciBusID`) → move into `CNI_NETNS` keeping the ifindex the
//!   device plugin announced as `/dev/tap<ifindex>` → in the pod netns (on a thread that entered it): check the
//!   index, prove `/dev/tap<ifindex>` is this link's tap and chown it, rename to `CNI_IFNAME`, MTU, MAC, promisc,
//!   `arp_notify`/`ndisc_notify`, up, addresses, routes. Any failure after the move returns the link to the host as
//!   it was.
//!
//! Either way, any failure after IPAM ADD calls IPAM DEL, and the result is printed. DEL deletes `CNI_IFNAME` only
//! when it is ours: a macvtap with our marker, or one with an index of the in-place tap range.
//!
//! Public API: [`run`] (env + stdin → [`Outcome`]), the pure parsers [`config::parse_config`] and
//! [`config::parse_cni_args`], [`macvtap_core::CniNodeFile::from_json`] and [`plugin::read_record`] (fuzzed:
//! `tests/fuzz.rs`), [`version::SUPPORTED`], [`error::Code`], [`node_file`], [`pod_resources::holds`], the IPAM
//! delegate [`ipam::Ipam`].

mod attach;
mod backoff;
pub mod config;
pub mod env;
pub mod error;
mod host_link;
mod in_place;
pub mod ipam;
pub mod keys;
mod netns;
pub mod node_file;
pub mod plugin;
pub mod pod_resources;
mod pod_side;
pub mod result;
pub mod version;

use env::{Env, Verb};
use error::CniError;
use version::Version;

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Run one CNI invocation.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    // Stdin is parsed here, once: errors carry the config's declared version when there is one.
    let top = config::parse_stdin(stdin);
    let declared = top.as_ref().ok().and_then(config::declared_version);
    match dispatch(env, top, declared.as_deref()) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            eprintln!("macvtap: {e}");
            let v = declared.unwrap_or_else(|| Version::LATEST.to_string());
            Outcome {
                stdout: e.to_json(&v),
                exit_code: 1,
            }
        }
    }
}

fn dispatch(
    env: &Env,
    top: Result<keys::Members, CniError>,
    declared: Option<&str>,
) -> Result<String, CniError> {
    let verb = env::verb(env)?;
    if verb == Verb::Version {
        let asked = declared.map_or_else(|| Version::LATEST.to_string(), str::to_string);
        return Ok(
            serde_json::json!({"cniVersion": asked, "supportedVersions": version::SUPPORTED})
                .to_string(),
        );
    }
    let req = env::request(env, verb)?;
    let conf = config::from_members(top?)?;
    let v = conf.cni_version;
    let not_in = |what: &str| {
        CniError::new(
            error::Code::IncompatibleVersion,
            format!("{what} is not supported by cniVersion {v}"),
            "",
        )
    };
    match verb {
        Verb::Add => plugin::add(&req, &conf, env).map(|r| r.to_string()),
        Verb::Del => plugin::del(&req, &conf, env).map(|()| String::new()),
        Verb::Check if !v.has_check() => Err(not_in("CHECK")),
        Verb::Check => plugin::check(&req, &conf, env).map(|()| String::new()),
        Verb::Status if !v.has_status_gc() => Err(not_in("STATUS")),
        Verb::Status => plugin::status(&conf, env).map(|()| String::new()),
        Verb::Gc if !v.has_status_gc() => Err(not_in("GC")),
        Verb::Gc => plugin::gc(&conf, env).map(|()| String::new()),
        Verb::Version => unreachable!("handled above"),
    }
}

//! The node agent's command line on a test node (a network namespace beside a [`KubeletStandIn`]): one
//! definition for the agent's tests and benches, which add their own flags, node name and log level.

use std::ffi::OsStr;
use std::process::Command;

use crate::kubelet::KubeletStandIn;
use crate::netns::Netns;

/// `ip netns exec <netns> <bin>` with the stand-in's device plugin directory and PodResources socket and
/// `--health-addr <health_addr>`; the legacy-mode variable and `NODE_NAME` are cleared so only the caller's
/// flags decide.
pub fn agent_command(
    bin: impl AsRef<OsStr>,
    netns: &Netns,
    kubelet: &KubeletStandIn,
    health_addr: &str,
) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns.name()])
        .arg(bin)
        .arg("--device-plugin-dir")
        .arg(kubelet.dir())
        .arg("--pod-resources-socket")
        .arg(kubelet.pod_resources_socket())
        .args(["--health-addr", health_addr])
        .env_remove(macvtap_api::legacy::ENV_VAR)
        .env_remove("NODE_NAME");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_the_stand_in_sockets_and_clears_the_environment() {
        assert!(crate::netns::can_create_netns(), "needs root (a netns)");
        let netns = Netns::new("agent-cmd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubelet =
            KubeletStandIn::start(&dir.path().join("dp"), &dir.path().join("pr/kubelet.sock"))
                .await
                .unwrap();
        let cmd = agent_command("/bin/agent", &netns, &kubelet, "127.0.0.1:9808");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dp = dir.path().join("dp").display().to_string();
        let pr = dir.path().join("pr/kubelet.sock").display().to_string();
        assert_eq!(
            args,
            [
                "netns",
                "exec",
                netns.name(),
                "/bin/agent",
                "--device-plugin-dir",
                &dp,
                "--pod-resources-socket",
                &pr,
                "--health-addr",
                "127.0.0.1:9808"
            ]
        );
        let removed: Vec<_> = cmd.get_envs().filter(|(_, v)| v.is_none()).collect();
        assert_eq!(removed.len(), 2, "{removed:?}");
    }
}

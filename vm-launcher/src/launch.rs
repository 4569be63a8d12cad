//! The launcher's steps in order: wait for Multus's network status, find the VM network's interface and tap,
//! choose the accelerator and vhost, open the queues, exec QEMU. Every decision is logged on stdout (the pod's
//! log) as `vm-launcher: ...`, before QEMU's own output and the guest's serial console.

use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::host::{self, HostFacts, Want};
use crate::network_status::{self, NetworkStatus};
use crate::qemu::{self, Vm};
use crate::tap;

/// Every option also reads an environment variable, so a pod spec sets them with `env:`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "vm-launcher",
    about = "Runs a QEMU guest whose NIC is the pod's macvtap tap"
)]
pub struct Args {
    /// The pod's annotations as a downward API volume file.
    #[arg(
        long,
        env = "VM_ANNOTATIONS_FILE",
        default_value = "/etc/podinfo/annotations"
    )]
    pub annotations: PathBuf,
    /// The network-status name of the VM's network (`<ns>/<nad>` or `<nad>`); default: the only one besides the
    /// cluster network.
    #[arg(long, env = "VM_NETWORK")]
    pub network: Option<String>,
    /// virtio-net queue pairs: the tap is opened this many times.
    #[arg(long, env = "VM_QUEUES", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub queues: u8,
    /// vCPUs; default: one per queue.
    #[arg(long, env = "VM_VCPUS")]
    pub vcpus: Option<u8>,
    #[arg(long, env = "VM_MEMORY_MIB", default_value_t = 256)]
    pub memory_mib: u32,
    /// An address the guest pings until it answers (its report is the test's and the user's sign of life).
    #[arg(long, env = "VM_PING")]
    pub ping: Option<String>,
    /// auto (KVM where it really works, else TCG), kvm, tcg.
    #[arg(long, env = "VM_ACCEL", default_value = "auto")]
    pub accel: Want,
    /// auto (where /dev/vhost-net exists), on, off.
    #[arg(long, env = "VM_VHOST", default_value = "auto")]
    pub vhost: Want,
    /// Appended to the guest kernel's command line.
    #[arg(long, env = "VM_APPEND", default_value = "")]
    pub append: String,
    /// How long to wait for Multus's network status to reach the annotations file.
    #[arg(long, env = "VM_WAIT_SECS", default_value_t = 180)]
    pub wait_secs: u64,
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    pub qemu: PathBuf,
    #[arg(long, default_value = "/vm/vmlinuz")]
    pub kernel: PathBuf,
    #[arg(long, default_value = "/vm/initramfs.cpio.gz")]
    pub initrd: PathBuf,
    #[arg(long, default_value = "/sys/class/net")]
    pub sys_class_net: PathBuf,
    #[arg(long, default_value = "/dev")]
    pub dev: PathBuf,
    /// Print QEMU's command line and exit instead of running it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Status(#[from] network_status::Error),
    #[error(transparent)]
    Tap(#[from] tap::Error),
    #[error(transparent)]
    Host(#[from] host::Error),
    #[error("{0}")]
    Other(String),
    #[error("exec {0}: {1}")]
    Exec(PathBuf, std::io::Error),
}

fn log(msg: impl AsRef<str>) {
    println!("vm-launcher: {}", msg.as_ref());
}

/// Polls the annotations file until Multus's network status is in it.
pub fn wait_network_status(file: &Path, timeout: Duration) -> Result<Vec<NetworkStatus>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match std::fs::read_to_string(file) {
            Ok(text) => {
                let annotations = network_status::parse_annotations(&text)?;
                if let Some(st) = network_status::network_status(&annotations)? {
                    return Ok(st);
                }
                format!("no {} yet", network_status::NETWORK_STATUS)
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(Error::Other(format!(
                "{}: {last} after {timeout:?} (is the downward API volume of metadata.annotations mounted there?)",
                file.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The guest's address: the interface's IPv4 address (with its prefix) that Multus lists for the network; an
/// address on the interface that Multus does not list is used too (IPAM may have added it), with a note.
pub fn guest_address(status: &NetworkStatus, on_interface: &[String]) -> (Option<String>, String) {
    let listed = |cidr: &&String| {
        let ip = cidr.split('/').next().unwrap_or_default();
        status.ips.iter().any(|s| s == ip)
    };
    match (
        on_interface.iter().find(listed),
        on_interface.first(),
        status.ips.is_empty(),
    ) {
        (Some(a), _, _) => (Some(a.clone()), "the network status's IP".into()),
        (None, Some(a), true) => (
            Some(a.clone()),
            "on the interface, not in the network status".into(),
        ),
        (None, _, false) => (
            None,
            format!(
                "the network status lists {:?} but the interface has {on_interface:?}: guest without address",
                status.ips
            ),
        ),
        (None, None, true) => (
            None,
            "no IPAM address: guest without address (it configures its own)".into(),
        ),
    }
}

/// Runs the steps; on success does not return (QEMU replaces the launcher).
pub fn run(args: &Args) -> Result<(), Error> {
    let t0 = Instant::now();
    log(format!(
        "waiting for the network status in {}",
        args.annotations.display()
    ));
    let statuses = wait_network_status(&args.annotations, Duration::from_secs(args.wait_secs))?;
    let net = network_status::choose(&statuses, args.network.as_deref())?;
    let interface = net.interface.clone().ok_or_else(|| {
        Error::Other(format!(
            "the network status of {} names no interface",
            net.name
        ))
    })?;
    log(format!(
        "network {} on {interface} (status after {:.1?})",
        net.name,
        t0.elapsed()
    ));
    let pod_tap = tap::find(&args.sys_class_net, &args.dev, &interface)?;
    if let Some(m) = &net.mac
        && !m.eq_ignore_ascii_case(&pod_tap.mac)
    {
        log(format!(
            "note: the network status says MAC {m}, the macvtap has {}: the guest gets the macvtap's",
            pod_tap.mac
        ));
    }
    let (guest_ip, why) = guest_address(net, &tap::ipv4_addresses(&interface)?);
    log(format!(
        "tap {} (ifindex {}), MAC {}, guest address {} ({why})",
        pod_tap.device.display(),
        pod_tap.ifindex,
        pod_tap.mac,
        guest_ip.as_deref().unwrap_or("none")
    ));

    let facts = HostFacts::probe();
    let accel = host::choose_accel(&facts, args.accel)?;
    let vhost = host::choose_vhost(&facts, args.vhost)?;
    log(format!("accelerator {} ({})", accel.value, accel.reason));
    log(format!(
        "vhost-net {} ({})",
        if vhost.value { "on" } else { "off" },
        vhost.reason
    ));

    let queues = usize::from(args.queues);
    let fds: Vec<_> = tap::open_queues(&pod_tap.device, queues)?
        .into_iter()
        // Handed to QEMU by number: they stay open across exec (no O_CLOEXEC) and live as long as QEMU.
        .map(IntoRawFd::into_raw_fd)
        .collect();
    log(format!(
        "{} opened {queues} time(s): queue fds {fds:?}",
        pod_tap.device.display()
    ));
    let vm = Vm {
        qemu: args.qemu.clone(),
        accel: accel.value,
        vhost: vhost.value,
        vcpus: usize::from(args.vcpus.unwrap_or(args.queues)),
        memory_mib: args.memory_mib,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        append: qemu::kernel_command_line(guest_ip.as_deref(), args.ping.as_deref(), &args.append),
        mac: pod_tap.mac.clone(),
        tap_fds: fds,
    };
    log(format!("starting QEMU: {}", vm.display()));
    if args.dry_run {
        return Ok(());
    }
    let e = std::process::Command::new(&vm.qemu).args(vm.args()).exec();
    Err(Error::Exec(vm.qemu, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ips: &[&str]) -> NetworkStatus {
        NetworkStatus {
            name: "default/dataplane-ips".into(),
            interface: Some("net1".into()),
            ips: ips.iter().map(|s| s.to_string()).collect(),
            mac: None,
            default: false,
        }
    }

    #[test]
    fn guest_address_is_the_listed_ipam_address_with_its_prefix() {
        let on_if = ["10.9.9.9/16".to_string(), "10.200.0.10/24".to_string()];
        assert_eq!(
            guest_address(&status(&["10.200.0.10"]), &on_if)
                .0
                .as_deref(),
            Some("10.200.0.10/24")
        );
        assert_eq!(
            guest_address(&status(&[]), &on_if).0.as_deref(),
            Some("10.9.9.9/16")
        );
        assert_eq!(guest_address(&status(&[]), &[]).0, None);
        let (none, why) = guest_address(&status(&["10.1.1.1"]), &on_if);
        assert_eq!(none, None);
        assert!(why.contains("10.1.1.1"), "{why}");
    }

    #[test]
    fn waits_for_the_status_then_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("annotations");
        std::fs::write(&f, "kubernetes.io/config.seen=\"x\"\n").unwrap();
        let e = wait_network_status(&f, Duration::from_millis(300)).unwrap_err();
        assert!(
            e.to_string()
                .contains("no k8s.v1.cni.cncf.io/network-status yet"),
            "{e}"
        );
        let writer = {
            let f = f.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                // The kubelet replaces the file (atomic writer); a plain write is enough here.
                std::fs::write(
                    &f,
                    "k8s.v1.cni.cncf.io/network-status=\"[{\\\"name\\\":\\\"a/b\\\",\\\"interface\\\":\\\"net1\\\"}]\"\n",
                )
                .unwrap();
            })
        };
        let st = wait_network_status(&f, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(st[0].interface.as_deref(), Some("net1"));
    }

    #[test]
    fn options_come_from_the_environment_names_too() {
        let a = Args::try_parse_from(["vm-launcher", "--queues", "2", "--accel", "tcg"]).unwrap();
        assert_eq!(a.queues, 2);
        assert_eq!(a.accel, Want::Off);
        assert_eq!(a.vhost, Want::Auto);
        assert!(Args::try_parse_from(["vm-launcher", "--queues", "0"]).is_err());
        assert!(Args::try_parse_from(["vm-launcher", "--accel", "fast"]).is_err());
    }
}

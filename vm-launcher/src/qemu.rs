//! QEMU's command line for a guest whose only NIC is the pod's macvtap, as virt-launcher builds it (through
//! libvirt) for KubeVirt's macvtap binding: `-netdev tap,fd=…` (one queue) or `fds=…:…` (several) on the tap files
//! the launcher opened, a `virtio-net-pci` NIC with the macvtap's MAC.
//!
//! The rest is what a small guest needs here: `-nodefaults` (no VGA, no default NIC, no monitor), the kernel and
//! initramfs passed directly (`-kernel`/`-initrd`/`-append`: SeaBIOS + the linuxboot ROM, no disk), the serial
//! console on stdio (the pod's log), `-no-reboot` so a guest that panics or powers off ends the container.
//! `romfile=` (empty) on the NIC: no iPXE option ROM to load (nothing boots from the network).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::host::Accel;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub vhost: bool,
    pub vcpus: usize,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest kernel's command line.
    pub append: String,
    /// The macvtap's MAC.
    pub mac: String,
    /// One tap file per queue.
    pub tap_fds: Vec<RawFd>,
}

impl Vm {
    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
        push(&["-name", "guest=vm,debug-threads=on"]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            // Multi-threaded TCG: one host thread per vCPU; `max` emulates every feature TCG can.
            Accel::Tcg => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
        }
        let (vcpus, memory) = (self.vcpus.to_string(), format!("{}M", self.memory_mib));
        push(&["-smp", &vcpus, "-m", &memory]);
        a.push("-kernel".into());
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into());
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
        push(&["-append", &self.append]);
        push(&["-serial", "stdio"]);
        let queues = self.tap_fds.len();
        let fds = self
            .tap_fds
            .iter()
            .map(|fd| fd.to_string())
            .collect::<Vec<_>>();
        let mut netdev = if queues == 1 {
            format!("tap,id=net0,fd={}", fds[0])
        } else {
            format!("tap,id=net0,fds={}", fds.join(":"))
        };
        if self.vhost {
            netdev.push_str(",vhost=on");
        }
        let mut nic = format!("virtio-net-pci,netdev=net0,mac={},romfile=", self.mac);
        if queues > 1 {
            // A vector per rx and tx queue, one for config changes, one for the control queue (libvirt's rule).
            nic.push_str(&format!(",mq=on,vectors={}", 2 * queues + 2));
        }
        push(&["-netdev", &netdev, "-device", &nic]);
        a
    }

    /// The command line for the log, shell-quoted where needed.
    pub fn display(&self) -> String {
        std::iter::once(self.qemu.clone().into_os_string())
            .chain(self.args())
            .map(|s| {
                let s = s.to_string_lossy().into_owned();
                if s.contains([' ', '\'', '"']) || s.is_empty() {
                    format!("'{}'", s.replace('\'', r"'\''"))
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The guest kernel's command line: the serial console, panic → power off (with `-no-reboot`), and what the
/// guest's `/init` (images/vm/init) reads: `guest_ip=<a.b.c.d/len>`, `guest_ping=<a.b.c.d>`.
pub fn kernel_command_line(guest_ip: Option<&str>, ping: Option<&str>, extra: &str) -> String {
    let mut s = String::from("console=ttyS0 panic=-1 loglevel=4");
    if let Some(ip) = guest_ip {
        s.push_str(&format!(" guest_ip={ip}"));
    }
    if let Some(p) = ping {
        s.push_str(&format!(" guest_ping={p}"));
    }
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(fds: Vec<RawFd>) -> Vm {
        Vm {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            vhost: false,
            vcpus: fds.len(),
            memory_mib: 256,
            kernel: "/vm/vmlinuz".into(),
            initrd: "/vm/initramfs.cpio.gz".into(),
            append: kernel_command_line(Some("10.200.0.10/24"), Some("10.200.0.20"), ""),
            mac: "02:00:0a:c8:00:0a".into(),
            tap_fds: fds,
        }
    }

    fn line(v: &Vm) -> String {
        v.args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn one_queue() {
        assert_eq!(
            line(&vm(vec![3])),
            "-name guest=vm,debug-threads=on -nodefaults -no-user-config -display none -no-reboot \
             -accel tcg,thread=multi -cpu max -smp 1 -m 256M -kernel /vm/vmlinuz -initrd /vm/initramfs.cpio.gz \
             -append console=ttyS0 panic=-1 loglevel=4 guest_ip=10.200.0.10/24 guest_ping=10.200.0.20 \
             -serial stdio -netdev tap,id=net0,fd=3 \
             -device virtio-net-pci,netdev=net0,mac=02:00:0a:c8:00:0a,romfile="
        );
    }

    #[test]
    fn two_queues_kvm_vhost() {
        let mut v = vm(vec![3, 4]);
        v.accel = Accel::Kvm;
        v.vhost = true;
        let l = line(&v);
        assert!(l.contains("-accel kvm -cpu host -smp 2 "), "{l}");
        assert!(l.contains("-netdev tap,id=net0,fds=3:4,vhost=on "), "{l}");
        assert!(
            l.ends_with(
                "-device virtio-net-pci,netdev=net0,mac=02:00:0a:c8:00:0a,romfile=,mq=on,vectors=6"
            ),
            "{l}"
        );
    }

    #[test]
    fn display_quotes_what_the_shell_would_split() {
        let d = vm(vec![3]).display();
        assert!(d.starts_with("/usr/bin/qemu-system-x86_64 -name "), "{d}");
        assert!(
            d.contains("-append 'console=ttyS0 panic=-1 loglevel=4 guest_ip=10.200.0.10/24"),
            "{d}"
        );
    }

    #[test]
    fn command_line_without_address() {
        assert_eq!(
            kernel_command_line(None, None, " quiet "),
            "console=ttyS0 panic=-1 loglevel=4 quiet"
        );
    }
}

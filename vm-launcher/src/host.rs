//! What the host offers QEMU, decided from facts the launcher reads in its container: KVM only where it really
//! works, vhost-net only where its device exists.
//!
//! - **KVM**: `/dev/kvm` alone proves nothing. On a PVM host (a KVM flavour for guests without hardware
//!   virtualisation) `/dev/kvm` exists, but a stock guest kernel ends in `KVM internal error … emulation failure`.
//!   KVM is chosen only when `/dev/kvm` is there *and* the CPU offers hardware virtualisation (`vmx` or `svm` in
//!   `/proc/cpuinfo`); otherwise TCG (`-accel tcg,thread=multi -cpu max`). The tap data path is the same either way.
//! - **vhost-net**: QEMU 7.2 with `vhost=on` and no `/dev/vhost-net` aborts (`Assertion 'nc' failed`) instead of
//!   falling back, so vhost is asked for only when the device is present.

use std::fmt;
use std::str::FromStr;

/// What the user asked for (`--accel` / `VM_ACCEL`, `--vhost` / `VM_VHOST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Want {
    #[default]
    Auto,
    /// KVM / vhost on: fail when the host lacks it, rather than run something else.
    On,
    Off,
}

impl FromStr for Want {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Want::Auto),
            "on" | "kvm" => Ok(Want::On),
            "off" | "tcg" => Ok(Want::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

/// The facts the choice rests on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub kvm_device: bool,
    /// `vmx` or `svm` among the CPU flags.
    pub hardware_virtualization: bool,
    pub vhost_net_device: bool,
}

impl HostFacts {
    /// Reads the container's `/dev` and `/proc/cpuinfo`.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            kvm_device: std::path::Path::new("/dev/kvm").exists(),
            hardware_virtualization: has_virtualization_flag(&cpuinfo),
            vhost_net_device: std::path::Path::new("/dev/vhost-net").exists(),
        }
    }
}

/// `vmx` (Intel VT-x) or `svm` (AMD-V) in a `flags` line of `/proc/cpuinfo`.
pub fn has_virtualization_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A choice and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice<T> {
    pub value: T,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("KVM was asked for, but {0}")]
    NoKvm(&'static str),
    #[error("vhost-net was asked for, but there is no /dev/vhost-net (QEMU would abort)")]
    NoVhost,
}

pub fn choose_accel(f: &HostFacts, want: Want) -> Result<Choice<Accel>, Error> {
    let usable = match (f.kvm_device, f.hardware_virtualization) {
        (true, true) => Ok(()),
        (false, _) => Err("there is no /dev/kvm"),
        (true, false) => Err(
            "/dev/kvm exists without vmx/svm in /proc/cpuinfo (PVM or similar: a stock guest kernel fails there)",
        ),
    };
    Ok(match (want, usable) {
        (Want::Off, _) => Choice {
            value: Accel::Tcg,
            reason: "TCG asked for".into(),
        },
        (Want::On | Want::Auto, Ok(())) => Choice {
            value: Accel::Kvm,
            reason: "/dev/kvm and hardware virtualisation (vmx/svm) present".into(),
        },
        (Want::On, Err(why)) => return Err(Error::NoKvm(why)),
        (Want::Auto, Err(why)) => Choice {
            value: Accel::Tcg,
            reason: format!("no usable KVM: {why}"),
        },
    })
}

pub fn choose_vhost(f: &HostFacts, want: Want) -> Result<Choice<bool>, Error> {
    Ok(match (want, f.vhost_net_device) {
        (Want::Off, _) => Choice {
            value: false,
            reason: "vhost off asked for".into(),
        },
        (_, true) => Choice {
            value: true,
            reason: "/dev/vhost-net present".into(),
        },
        (Want::On, false) => return Err(Error::NoVhost),
        (Want::Auto, false) => Choice {
            value: false,
            reason: "no /dev/vhost-net: QEMU's userspace virtio-net".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM_CPUINFO: &str =
        "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\n";
    const VMX_CPUINFO: &str = "processor\t: 0\nflags\t\t: fpu vme vmx ept\nvmx flags\t: ept vpid\n";

    #[test]
    fn cpu_flags() {
        assert!(!has_virtualization_flag(PVM_CPUINFO));
        assert!(has_virtualization_flag(VMX_CPUINFO));
        assert!(has_virtualization_flag("flags : a svm b\n"));
        assert!(!has_virtualization_flag("flags : svmx\nmodel name : vmx\n"));
    }

    #[test]
    fn kvm_only_where_it_works() {
        let pvm = HostFacts {
            kvm_device: true,
            hardware_virtualization: false,
            vhost_net_device: false,
        };
        let c = choose_accel(&pvm, Want::Auto).unwrap();
        assert_eq!(c.value, Accel::Tcg);
        assert!(c.reason.contains("PVM"), "{}", c.reason);
        assert!(matches!(choose_accel(&pvm, Want::On), Err(Error::NoKvm(_))));
        let real = HostFacts {
            kvm_device: true,
            hardware_virtualization: true,
            ..pvm.clone()
        };
        assert_eq!(choose_accel(&real, Want::Auto).unwrap().value, Accel::Kvm);
        assert_eq!(choose_accel(&real, Want::Off).unwrap().value, Accel::Tcg);
        let none = HostFacts::default();
        assert_eq!(choose_accel(&none, Want::Auto).unwrap().value, Accel::Tcg);
        assert_eq!(
            choose_accel(&none, Want::On),
            Err(Error::NoKvm("there is no /dev/kvm"))
        );
    }

    #[test]
    fn vhost_only_where_the_device_is() {
        let without = HostFacts::default();
        assert!(!choose_vhost(&without, Want::Auto).unwrap().value);
        assert_eq!(choose_vhost(&without, Want::On), Err(Error::NoVhost));
        let with = HostFacts {
            vhost_net_device: true,
            ..Default::default()
        };
        assert!(choose_vhost(&with, Want::Auto).unwrap().value);
        assert!(!choose_vhost(&with, Want::Off).unwrap().value);
    }

    #[test]
    fn wants_parse() {
        assert_eq!("auto".parse(), Ok(Want::Auto));
        assert_eq!("kvm".parse(), Ok(Want::On));
        assert_eq!("tcg".parse(), Ok(Want::Off));
        assert!("maybe".parse::<Want>().is_err());
    }
}

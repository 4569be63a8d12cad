//! The CNI error object (`{cniVersion, code, msg, details}` on stdout) and our codes.

use std::fmt;

/// Error codes of the CNI spec plus ours (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// The host link for the deviceID does not exist (not allocated, or already moved into a pod).
    DeviceNotFound = 100,
    /// The deviceID names a link that is not a macvtap made by the agent: refused, left untouched.
    NotOurs = 101,
    /// A netlink/sysctl/filesystem step failed.
    System = 102,
    /// The IPAM delegate's result is unusable (unparseable, no IPs).
    IpamResult = 103,
    /// CNI_IFNAME already exists in the pod netns.
    InterfaceExists = 104,
    /// CHECK found the interface missing or different from prevResult.
    CheckFailed = 105,
    /// The link cannot keep the ifindex the device plugin announced as `/dev/tap<ifindex>` in the pod netns (taken
    /// there), or that node is not this link's tap: the link is back on the host, unchanged.
    TapMismatch = 106,
    /// The kubelet (PodResources) says this pod does not hold `deviceID`: refused, the link untouched.
    NotAllocatedToPod = 107,
}

impl Code {
    /// Every code the plugin answers with itself (an IPAM delegate's own code is passed through as it is).
    pub const ALL: [Code; 17] = [
        Code::IncompatibleVersion,
        Code::UnsupportedField,
        Code::UnknownContainer,
        Code::InvalidEnv,
        Code::Io,
        Code::Decode,
        Code::InvalidConfig,
        Code::TryAgainLater,
        Code::NotAvailable,
        Code::DeviceNotFound,
        Code::NotOurs,
        Code::System,
        Code::IpamResult,
        Code::InterfaceExists,
        Code::CheckFailed,
        Code::TapMismatch,
        Code::NotAllocatedToPod,
    ];

    /// The code of that number, if it is one of ours.
    pub fn of(n: u32) -> Option<Code> {
        Self::ALL.into_iter().find(|c| *c as u32 == n)
    }
}

/// A CNI error, printed as the spec's error JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("code {code}: {msg} {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code: code as u32,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Code 7, invalid network config.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidConfig, msg, "")
    }

    /// Code 102 with the underlying error as details.
    pub fn system(msg: impl Into<String>, e: impl fmt::Display) -> Self {
        Self::new(Code::System, msg, e.to_string())
    }

    /// The spec's error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

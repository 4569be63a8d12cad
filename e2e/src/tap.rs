//! Frames through `/dev/tapN`, the character device of a macvtap link: what QEMU does with it, minus QEMU.
//!
//! A macvtap queue opened without further ioctls has `IFF_VNET_HDR` set, so every frame written or read carries a
//! virtio-net header first (10 bytes, all zero for a plain frame without offloads).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Size of `struct virtio_net_hdr`, the default macvtap vnet header size.
pub const VNET_HDR_LEN: usize = 10;
/// An EtherType reserved for local experiments (IEEE 802 "local experimental ethertype 1").
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// An open macvtap queue.
pub struct Tap {
    file: File,
}

impl Tap {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { file })
    }

    /// Sends one Ethernet frame `dst <- src` with [`TEST_ETHERTYPE`] and `payload`.
    pub fn send(&mut self, dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> io::Result<()> {
        let mut buf = vec![0u8; VNET_HDR_LEN];
        buf.extend_from_slice(&dst);
        buf.extend_from_slice(&src);
        buf.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
        buf.extend_from_slice(payload);
        // Pad to the Ethernet minimum so no layer in between has to.
        while buf.len() < VNET_HDR_LEN + 60 {
            buf.push(0);
        }
        self.file.write_all(&buf)
    }

    /// Waits up to `timeout` for a frame with [`TEST_ETHERTYPE`] whose payload starts with `payload`; returns its
    /// source MAC. Other frames (IPv6 neighbour discovery and the like) are skipped.
    pub fn receive(&mut self, payload: &[u8], timeout: Duration) -> io::Result<Option<[u8; 6]>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(10_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            if poll(&mut fds, ms).map_err(io::Error::from)? == 0 {
                continue;
            }
            let n = self.file.read(&mut buf)?;
            let frame = &buf[VNET_HDR_LEN.min(n)..n];
            if frame.len() >= 14 + payload.len()
                && u16::from_be_bytes([frame[12], frame[13]]) == TEST_ETHERTYPE
                && frame[14..].starts_with(payload)
            {
                let mut src = [0u8; 6];
                src.copy_from_slice(&frame[6..12]);
                return Ok(Some(src));
            }
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

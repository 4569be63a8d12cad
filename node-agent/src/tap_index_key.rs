//! The node-local secret that orders a device's tap-index candidates, so no pod can compute the index the next
//! Allocate hands out (and create a macvtap there first): the seed of `<node>/<deviceID>` is its HMAC-SHA256 under
//! this key, not a hash anyone can repeat.
//!
//! The key is 32 random bytes in `<state>/tap-index.key` (mode 0600), created once, atomically and durably
//! ([`durable::create_new`]), read at start. Only the agent needs it: the CNI never computes an index, it reads the
//! device's record. A missing, short, garbage or group/world-readable key is replaced by a new one (and said so):
//! the key only orders candidates, so a new key changes which free index a device tries first, nothing else.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use macvtap_core::durable;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The key's file name in the state directory.
pub const FILE: &str = "tap-index.key";
const LEN: usize = 32;

/// The key, ready to seed candidates.
pub struct TapIndexKey(hmac::Key);

impl std::fmt::Debug for TapIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TapIndexKey(..)")
    }
}

/// How [`TapIndexKey::load`] got the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from the file.
    Read,
    /// None existed: created (the agent's first start on this node).
    Created,
    /// The file was unusable (why): replaced.
    Replaced(String),
}

fn random_key() -> io::Result<[u8; LEN]> {
    let mut key = [0u8; LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| io::Error::other("no random bytes from the system"))?;
    Ok(key)
}

impl TapIndexKey {
    /// The key of `state_dir`, created or replaced as needed (see the module).
    pub fn load(state_dir: &Path) -> io::Result<(Self, KeyOrigin)> {
        fs::create_dir_all(state_dir)?;
        durable::sweep_temps(state_dir, &durable::temp_name(FILE))?;
        let path = state_dir.join(FILE);
        let why = match fs::read(&path) {
            Ok(bytes) => {
                let mode = fs::metadata(&path)?.mode() & 0o777;
                if bytes.len() != LEN {
                    format!("{} bytes instead of {LEN}", bytes.len())
                } else if mode != 0o600 {
                    format!("mode {mode:o} instead of 600")
                } else {
                    return Ok((Self::from_bytes(&bytes), KeyOrigin::Read));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = random_key()?;
                let temp = durable::temp_name(FILE);
                if durable::create_new(state_dir, FILE, &temp, &key, 0o600, &mut durable::Uncut)? {
                    return Ok((Self::from_bytes(&key), KeyOrigin::Created));
                }
                // Made meanwhile by another agent on this state directory: that one.
                return Self::load(state_dir);
            }
            Err(e) => format!("unreadable: {e}"),
        };
        let key = random_key()?;
        durable::replace(state_dir, FILE, &key, 0o600)?;
        Ok((Self::from_bytes(&key), KeyOrigin::Replaced(why)))
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The candidate seed of reservation owner `owner` (`<node>/<deviceID>`).
    pub fn seed(&self, owner: &str) -> u64 {
        let tag = hmac::sign(&self.0, owner.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_private_kept_and_replaced_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (a, origin) = TapIndexKey::load(&state).unwrap();
        assert_eq!(origin, KeyOrigin::Created);
        let path = state.join(FILE);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap().len(), LEN);
        let (again, origin) = TapIndexKey::load(&state).unwrap();
        assert_eq!(origin, KeyOrigin::Read);
        assert_eq!(
            again.seed("n/dpMvp0"),
            a.seed("n/dpMvp0"),
            "kept across starts"
        );
        assert_ne!(a.seed("n/dpMvp0"), a.seed("n/dpMvp1"));
        // Another node's state directory: another key, another order.
        let (other, _) = TapIndexKey::load(&dir.path().join("other")).unwrap();
        assert_ne!(other.seed("n/dpMvp0"), a.seed("n/dpMvp0"));
        // Garbage, empty, readable by others: replaced, private again; a stray temporary file swept.
        for (content, mode, why) in [
            (&b"garbage"[..], 0o600, "7 bytes"),
            (b"", 0o600, "0 bytes"),
            (&[7u8; LEN][..], 0o644, "mode 644"),
        ] {
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
            fs::write(state.join(durable::temp_name(FILE)), "half").unwrap();
            let (k, origin) = TapIndexKey::load(&state).unwrap();
            match origin {
                KeyOrigin::Replaced(w) => assert!(w.contains(why), "{w}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
            assert_eq!(
                TapIndexKey::load(&state).unwrap().0.seed("x/y"),
                k.seed("x/y")
            );
            assert_eq!(fs::read_dir(&state).unwrap().count(), 1, "only the key");
        }
    }
}

// Over 400 lines only by its unit tests (crash cuts, reclaiming, concurrency).
//! The tap-index reservations of one kernel: one file `taps/<N>` per index, holding its owner `<node>/<deviceID>`,
//! so two agents (or two Allocates) never get one index.
//!
//! A reservation is never visible without its owner, and survives a power loss once made: the owner is written and
//! synced under the writer's own temporary name (`.<node>@<deviceID>.tmp`), then linked as `taps/<N>`
//! ([`durable::NewFile`]: `link(2)` fails on a taken index, the `O_EXCL` of a complete file), then the directory is
//! synced. What a crash or an older agent can still leave is handled where it is found: a temporary file is swept by
//! its node's agent at start-up ([`TapReservations::sweep`]); a reservation with no or a garbage owner (an agent
//! before this one wrote the owner after creating the file) is reclaimed by [`TapReservations::reclaim_unowned`].
//!
//! Which index a device gets first is the caller's seed ([`TapReservations::candidates`]); the agent keys it with a
//! node-local secret so no pod can compute it.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::allocation::{
    AllocationError, MAX_PROBES, TAP_INDEX_COUNT, TAP_INDEX_FIRST, check_component,
    check_device_id, io_at, taps_dir,
};
use crate::durable::{self, Cut, NewFile, TEMP_SUFFIX, Uncut};

/// The tap-index reservations of one kernel (see the module).
#[derive(Debug, Clone)]
pub struct TapReservations {
    dir: PathBuf,
}

/// The owner string of a reservation.
pub fn owner(node: &str, device_id: &str) -> String {
    format!("{node}/{device_id}")
}

/// `<node>/<deviceID>` → (node, device ID), when both are names the state directory accepts.
pub fn parse_owner(owner: &str) -> Option<(&str, &str)> {
    let (node, id) = owner.split_once('/')?;
    (check_component(node).is_ok() && check_device_id(id).is_ok()).then_some((node, id))
}

/// The temporary name a reservation of `owner` is written under (`/` cannot be in a file name; `@` cannot be in
/// a node name or device ID, so the prefix `.<node>@` is one node's).
fn temp_of(owner: &str) -> String {
    format!(".{}{TEMP_SUFFIX}", owner.replacen('/', "@", 1))
}

impl TapReservations {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: taps_dir(state_dir),
        }
    }

    /// Reservations kept in `dir` instead of `<state>/taps` (a test or a machine whose agents do not share one
    /// state directory but share one kernel).
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The indices to try for `seed`, in order: a start in the range picked by the seed, then the following ones,
    /// wrapping around.
    pub fn candidates(seed: u64) -> impl Iterator<Item = u32> {
        let start = (seed % u64::from(TAP_INDEX_COUNT)) as u32;
        (0..TAP_INDEX_COUNT).map(move |i| TAP_INDEX_FIRST + (start + i) % TAP_INDEX_COUNT)
    }

    /// Reserve a free index for `owner`: the first candidate of `seed` that `in_use` does not reject and whose file
    /// does not exist yet. `in_use` is the caller's look at the kernel (an index some link already has).
    pub fn reserve(
        &self,
        owner: &str,
        seed: u64,
        in_use: impl FnMut(u32) -> bool,
    ) -> Result<u32, AllocationError> {
        self.reserve_cut(owner, seed, in_use, &mut Uncut)
    }

    /// [`TapReservations::reserve`] with a [`Cut`] (tests).
    pub fn reserve_cut(
        &self,
        owner: &str,
        seed: u64,
        mut in_use: impl FnMut(u32) -> bool,
        cut: &mut dyn Cut,
    ) -> Result<u32, AllocationError> {
        fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        let file = NewFile::write(&self.dir, &temp_of(owner), owner.as_bytes(), 0o644, cut)
            .map_err(io_at(&self.dir))?;
        let mut got = None;
        for index in Self::candidates(seed).take(MAX_PROBES as usize) {
            if in_use(index) {
                continue;
            }
            let linked = file.link_as(&index.to_string(), cut);
            match linked {
                Ok(true) => {
                    got = Some(Ok(index));
                    break;
                }
                Ok(false) => continue,
                Err(e) => {
                    got = Some(Err(e));
                    break;
                }
            }
        }
        let got = match got {
            // A cut write stops where it is: nothing more runs.
            Some(Err(e)) if e.get_ref().is_some_and(|i| i.is::<durable::CutAt>()) => {
                return Err(io_at(&self.dir)(e));
            }
            Some(r) => r.map_err(io_at(&self.dir)),
            None => Err(AllocationError::Exhausted {
                dir: self.dir.clone(),
            }),
        };
        file.finish(cut).map_err(io_at(&self.dir))?;
        got
    }

    /// The owner of reservation `index`, if it exists (any content: see [`parse_owner`]).
    pub fn owner_of(&self, index: u32) -> Result<Option<String>, AllocationError> {
        let path = self.path(index);
        match fs::read(&path) {
            Ok(s) => Ok(Some(String::from_utf8_lossy(&s).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Remove reservation `index` if `owner` holds it (never another owner's). `Ok(false)` when it is not `owner`'s.
    pub fn release(&self, index: u32, owner: &str) -> Result<bool, AllocationError> {
        if self.owner_of(index)?.as_deref() != Some(owner) {
            return Ok(false);
        }
        let path = self.path(index);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// The reservation files, as (index, file name); other names are not ours to read.
    fn indices(&self) -> Result<Vec<u32>, AllocationError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_at(&self.dir))?;
            if let Some(index) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            {
                out.push(index);
            }
        }
        Ok(out)
    }

    /// Every reservation whose owner is `<node>/<deviceID>`, as (index, device ID).
    pub fn of_node(&self, node: &str) -> Result<Vec<(u32, String)>, AllocationError> {
        let mut out = Vec::new();
        for index in self.indices()? {
            // Released meanwhile by someone else: not ours to list.
            if let Ok(Some(o)) = self.owner_of(index)
                && let Some((n, id)) = parse_owner(&o)
                && n == node
            {
                out.push((index, id.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// When reservation `index` was made (its owner written), if it exists.
    pub fn made_at(&self, index: u32) -> Option<SystemTime> {
        fs::metadata(self.path(index))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Remove the temporary files `node`'s reservations left at a crash (only that node's: another agent sharing
    /// this kernel may be writing its own); the names removed. Call before this node reserves anything.
    pub fn sweep(&self, node: &str) -> Result<Vec<String>, AllocationError> {
        durable::sweep_temps(&self.dir, &format!(".{node}@")).map_err(io_at(&self.dir))
    }

    /// Remove the reservations whose owner is missing or garbage (not `<node>/<deviceID>`), unchanged for at least
    /// `min_age` (an agent older than this one created the file first and wrote the owner after: a young empty
    /// file may be one being written) and whose tap no link has (`tapped`); the indices removed. Such a file would
    /// keep its index from everyone for good.
    pub fn reclaim_unowned(
        &self,
        min_age: Duration,
        tapped: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, AllocationError> {
        let mut removed = Vec::new();
        for index in self.indices()? {
            let path = self.path(index);
            let Ok(mut f) = fs::File::open(&path) else {
                continue;
            };
            let mut content = Vec::new();
            let (Ok(_), Ok(md)) = (f.read_to_end(&mut content), f.metadata()) else {
                continue;
            };
            let owned = std::str::from_utf8(&content)
                .ok()
                .and_then(parse_owner)
                .is_some();
            let age = md
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default();
            if owned || age < min_age || tapped(index) {
                continue;
            }
            // Only the very file judged: a reservation made at this index since is someone's.
            if fs::symlink_metadata(&path).is_ok_and(|now| now.ino() == md.ino()) {
                match fs::remove_file(&path) {
                    Ok(()) => removed.push(index),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_at(&path)(e)),
                }
            }
        }
        removed.sort();
        Ok(removed)
    }

    fn path(&self, index: u32) -> PathBuf {
        self.dir.join(index.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::Step;
    use crate::durable::tests::{CutAfter, REPLACE_STEPS};

    #[test]
    fn candidates_stay_in_the_range_and_wrap() {
        use crate::allocation::is_tap_index;
        assert!(!is_tap_index(TAP_INDEX_FIRST - 1));
        assert!(is_tap_index(TAP_INDEX_FIRST));
        assert!(is_tap_index(TAP_INDEX_FIRST + TAP_INDEX_COUNT - 1));
        assert!(!is_tap_index(TAP_INDEX_FIRST + TAP_INDEX_COUNT));
        assert!(TAP_INDEX_FIRST + TAP_INDEX_COUNT <= i32::MAX as u32);
        let c: Vec<u32> = TapReservations::candidates(u64::from(TAP_INDEX_COUNT) - 2)
            .take(4)
            .collect();
        let last = TAP_INDEX_FIRST + TAP_INDEX_COUNT - 1;
        assert_eq!(
            c,
            [last - 1, last, TAP_INDEX_FIRST, TAP_INDEX_FIRST + 1],
            "wraps around"
        );
        assert_eq!(
            TapReservations::candidates(u64::MAX).count(),
            TAP_INDEX_COUNT as usize
        );
    }

    #[test]
    fn an_index_is_reserved_once_and_released_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let taps = TapReservations::new(dir.path());
        let a = taps.reserve(&owner("n1", "dpMvp0"), 7, |_| false).unwrap();
        assert_eq!(a, TAP_INDEX_FIRST + 7);
        // Same seed: the reserved index and the ones `in_use` rejects are skipped.
        let b = taps
            .reserve(&owner("n2", "dpMvp0"), 7, |i| i == TAP_INDEX_FIRST + 8)
            .unwrap();
        assert_eq!(b, TAP_INDEX_FIRST + 9);
        assert_eq!(taps.owner_of(a).unwrap().as_deref(), Some("n1/dpMvp0"));
        assert_eq!(
            taps.of_node("n1").unwrap(),
            [(a, "dpMvp0".to_string())],
            "n2's reservation is not n1's"
        );
        assert_eq!(
            fs::read_dir(taps.dir()).unwrap().count(),
            2,
            "no temporary file left"
        );
        assert!(!taps.release(a, "n2/dpMvp0").unwrap(), "not n2's");
        assert!(taps.release(a, "n1/dpMvp0").unwrap());
        assert!(!taps.release(a, "n1/dpMvp0").unwrap());
        assert_eq!(taps.owner_of(a).unwrap(), None);
        assert!(matches!(
            taps.reserve("x/y", 0, |_| true),
            Err(AllocationError::Exhausted { .. })
        ));
        assert_eq!(fs::read_dir(taps.dir()).unwrap().count(), 1);
    }

    #[test]
    fn a_reservation_cut_at_any_step_is_complete_or_absent_and_start_up_sweeps_the_rest() {
        let steps = [REPLACE_STEPS.as_slice(), &[Step::TempRemoved]].concat();
        for step in steps {
            let dir = tempfile::tempdir().unwrap();
            let taps = TapReservations::new(dir.path());
            let mut cut = CutAfter::new(Some(step));
            assert!(
                taps.reserve_cut("n1/dpMvp0", 3, |_| false, &mut cut)
                    .is_err()
            );
            let index = TAP_INDEX_FIRST + 3;
            match taps.owner_of(index).unwrap() {
                Some(o) => {
                    assert_eq!(o, "n1/dpMvp0", "{step:?}");
                    assert!(cut.seen.contains(&Step::Visible));
                }
                None => assert!(!cut.seen.contains(&Step::Visible), "{step:?}"),
            }
            // Another node's agent sweeps only its own leftovers.
            assert_eq!(taps.sweep("n2").unwrap(), Vec::<String>::new());
            taps.sweep("n1").unwrap();
            let names: Vec<String> = fs::read_dir(taps.dir())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
            // The device reserves again: its own complete reservation, or a fresh one.
            let again = taps.reserve("n1/dpMvp0", 3, |_| false).unwrap();
            assert_eq!(taps.owner_of(again).unwrap().as_deref(), Some("n1/dpMvp0"));
        }
    }

    #[test]
    fn unowned_reservations_are_reclaimed_when_old_and_untapped() {
        let dir = tempfile::tempdir().unwrap();
        let taps = TapReservations::new(dir.path());
        let mine = taps.reserve("n1/dpMvp0", 0, |_| false).unwrap();
        fs::create_dir_all(taps.dir()).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let mut garbage = Vec::new();
        for (i, content) in [&b""[..], b"\xff\xfe", b"no-slash", b"n1/../x", b"/"]
            .iter()
            .enumerate()
        {
            let index = TAP_INDEX_FIRST + 100 + i as u32;
            let path = taps.dir().join(index.to_string());
            fs::write(&path, content).unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
            garbage.push(index);
        }
        // Young garbage: maybe being written by an older agent.
        let young = TAP_INDEX_FIRST + 200;
        fs::write(taps.dir().join(young.to_string()), "").unwrap();
        // A foreign file that is no reservation is left alone.
        fs::write(taps.dir().join("README"), "x").unwrap();
        let tapped = garbage[0];
        let got = taps
            .reclaim_unowned(Duration::from_secs(60), |i| i == tapped)
            .unwrap();
        assert_eq!(got, garbage[1..]);
        assert_eq!(taps.owner_of(mine).unwrap().as_deref(), Some("n1/dpMvp0"));
        assert!(taps.owner_of(young).unwrap().is_some());
        assert!(
            taps.owner_of(tapped).unwrap().is_some(),
            "a link still has its tap"
        );
        assert!(taps.dir().join("README").exists());
        assert_eq!(taps.of_node("n1").unwrap(), [(mine, "dpMvp0".to_string())]);
    }

    #[test]
    fn concurrent_reservations_never_share_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let got: Vec<u32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let taps = TapReservations::new(dir.path());
                    s.spawn(move || {
                        (0..50)
                            .map(|i| {
                                taps.reserve(
                                    &owner("n", &format!("dpMvp{}", t * 50 + i)),
                                    0,
                                    |_| false,
                                )
                                .unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 400);
        assert_eq!(
            TapReservations::new(dir.path()).of_node("n").unwrap().len(),
            400
        );
    }
}

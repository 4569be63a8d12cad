// Over 400 lines only by its unit tests, which cut a write after every step.
//! Files of the state directory that survive a crash or a power loss at any instant: a reader (after a reboot too)
//! finds the old content or the new one, never an empty or half-written file.
//!
//! How: the content goes to a temporary name first and is fsynced; only then does the file's name appear, by
//! `rename(2)` (a file that may be replaced: [`replace`]) or by `link(2)` (a file created once, whose name is taken
//! or not: [`create_new`]; `link` fails with `EEXIST` on a taken name, the `O_EXCL` of a file that appears complete);
//! then the directory is fsynced so the name itself is on disk. A crash before the name appears leaves a temporary
//! file behind: [`sweep_temps`] removes them at start-up (their names start with `.` and end with [`TEMP_SUFFIX`]).
//!
//! Every step is a [`Step`], and the writes take a [`Cut`]: the tests stop a write after each step, as a crash
//! would, and check what is left (see the tests here and in [`crate::allocation`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How the names of temporary files end.
pub const TEMP_SUFFIX: &str = ".tmp";

/// One step of a durable write, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The temporary file exists, empty.
    TempCreated,
    /// Half of the content is written to it.
    HalfWritten,
    /// All of it is written, not yet synced.
    Written,
    /// The temporary file's content is on disk.
    Synced,
    /// The file's name shows the new content (renamed or linked).
    Visible,
    /// The directory entry is on disk.
    DirSynced,
    /// [`create_new`] only: the temporary name is gone.
    TempRemoved,
}

/// Where a write stops: `true` after a step = a crash there (nothing after it runs, nothing is cleaned up).
pub trait Cut {
    fn after(&mut self, step: Step) -> bool;
}

/// Production writes: never cut.
pub struct Uncut;

impl Cut for Uncut {
    fn after(&mut self, _: Step) -> bool {
        false
    }
}

/// The error a cut write returns (tests): the write stopped after `0`.
#[derive(Debug, thiserror::Error)]
#[error("write cut after {0:?}")]
pub struct CutAt(pub Step);

fn at(cut: &mut dyn Cut, step: Step) -> io::Result<()> {
    if cut.after(step) {
        Err(io::Error::other(CutAt(step)))
    } else {
        Ok(())
    }
}

fn was_cut(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<CutAt>())
}

/// fsync of a directory: its entries (a new, renamed or removed name) are on disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Whether a write waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync of the file before its name shows it, and of the directory after: survives a power loss.
    Durable,
    /// Renamed only: readers never see half of it, but a power loss may leave it empty. For a file that means
    /// nothing after a reboot anyway (and says so, e.g. by the boot it names).
    ThisBoot,
}

/// Write `bytes` to a new file `tmp` (`mode`) and fsync it.
fn write_temp(tmp: &Path, bytes: &[u8], mode: u32, cut: &mut dyn Cut) -> io::Result<()> {
    write_temp_as(tmp, bytes, mode, Sync::Durable, cut)
}

fn write_temp_as(
    tmp: &Path,
    bytes: &[u8],
    mode: u32,
    sync: Sync,
    cut: &mut dyn Cut,
) -> io::Result<()> {
    // A fresh inode, never a stale temporary file reopened: one a crash left linked to a visible name (between
    // `link` and its removal) would otherwise be truncated under that name.
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    at(cut, Step::TempCreated)?;
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    f.write_all(first)?;
    at(cut, Step::HalfWritten)?;
    f.write_all(rest)?;
    at(cut, Step::Written)?;
    if sync == Sync::Durable {
        f.sync_all()?;
        at(cut, Step::Synced)?;
    }
    Ok(())
}

/// The temporary name [`replace`] uses for `name`.
pub fn temp_name(name: &str) -> String {
    format!(".{name}{TEMP_SUFFIX}")
}

/// Replace (or create) `dir/name` with `bytes`, durably: temporary file, fsync, rename, fsync of `dir`. A crash at
/// any point leaves the old file or the new one; a failed write removes its temporary file.
pub fn replace(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    replace_cut(dir, name, bytes, mode, &mut Uncut)
}

/// [`replace`] with a choice of [`Sync`].
pub fn replace_as(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    sync: Sync,
) -> io::Result<PathBuf> {
    replace_as_cut(dir, name, bytes, mode, sync, &mut Uncut)
}

/// [`replace`] with a [`Cut`] (tests).
pub fn replace_cut(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    cut: &mut dyn Cut,
) -> io::Result<PathBuf> {
    replace_as_cut(dir, name, bytes, mode, Sync::Durable, cut)
}

fn replace_as_cut(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    sync: Sync,
    cut: &mut dyn Cut,
) -> io::Result<PathBuf> {
    let (tmp, path) = (dir.join(temp_name(name)), dir.join(name));
    let written = (|| {
        write_temp_as(&tmp, bytes, mode, sync, cut)?;
        fs::rename(&tmp, &path)?;
        at(cut, Step::Visible)?;
        if sync == Sync::Durable {
            sync_dir(dir)?;
            at(cut, Step::DirSynced)?;
        }
        Ok(())
    })();
    if let Err(e) = &written
        && !was_cut(e)
    {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

/// A file created once and never replaced (a reservation, a key), written under a temporary name first: see
/// [`NewFile::link_as`].
pub struct NewFile<'a> {
    dir: &'a Path,
    tmp: PathBuf,
}

impl<'a> NewFile<'a> {
    /// `bytes` written and synced under `dir/<temp>` (a name from [`temp_name`], unique to the writer: two writers
    /// never share one).
    pub fn write(
        dir: &'a Path,
        temp: &str,
        bytes: &[u8],
        mode: u32,
        cut: &mut dyn Cut,
    ) -> io::Result<Self> {
        let tmp = dir.join(temp);
        if let Err(e) = write_temp(&tmp, bytes, mode, cut) {
            if !was_cut(&e) {
                let _ = fs::remove_file(&tmp);
            }
            return Err(e);
        }
        Ok(Self { dir, tmp })
    }

    /// Make the content visible as `dir/name` if that name is free (`Ok(false)`: taken, nothing changed), then
    /// fsync the directory. The file can be linked under one name only; call [`NewFile::finish`] after.
    pub fn link_as(&self, name: &str, cut: &mut dyn Cut) -> io::Result<bool> {
        match fs::hard_link(&self.tmp, self.dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        at(cut, Step::Visible)?;
        sync_dir(self.dir)?;
        at(cut, Step::DirSynced)?;
        Ok(true)
    }

    /// Remove the temporary name (the linked name, if any, stays). Its removal need not be synced: a temporary
    /// file back after a crash is swept at start-up.
    pub fn finish(self, cut: &mut dyn Cut) -> io::Result<()> {
        match fs::remove_file(&self.tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        at(cut, Step::TempRemoved)
    }
}

/// Create `dir/name` holding `bytes` if it does not exist, durably, never visible incomplete (`Ok(false)`: it
/// exists). `temp` is the writer's own temporary name.
pub fn create_new(
    dir: &Path,
    name: &str,
    temp: &str,
    bytes: &[u8],
    mode: u32,
    cut: &mut dyn Cut,
) -> io::Result<bool> {
    let file = NewFile::write(dir, temp, bytes, mode, cut)?;
    let linked = file.link_as(name, cut);
    if let Err(e) = &linked
        && was_cut(e)
    {
        return linked;
    }
    file.finish(cut)?;
    linked
}

/// Remove the temporary files a crash left in `dir` whose names start with `prefix` (`"."` for all), and only
/// those; the names removed. A missing `dir` has none.
pub fn sweep_temps(dir: &Path, prefix: &str) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.starts_with(prefix) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        match fs::remove_file(dir.join(&name)) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Stops a write after `at` (never when `None`) and notes every step it saw, in order.
    pub(crate) struct CutAfter {
        pub at: Option<Step>,
        pub seen: Vec<Step>,
    }

    impl CutAfter {
        pub(crate) fn new(at: Option<Step>) -> Self {
            Self {
                at,
                seen: Vec::new(),
            }
        }
    }

    impl Cut for CutAfter {
        fn after(&mut self, step: Step) -> bool {
            self.seen.push(step);
            self.at == Some(step)
        }
    }

    pub(crate) const REPLACE_STEPS: [Step; 6] = [
        Step::TempCreated,
        Step::HalfWritten,
        Step::Written,
        Step::Synced,
        Step::Visible,
        Step::DirSynced,
    ];

    /// What a power loss right after the cut could leave of an unsynced temporary file: nothing of its content.
    fn lose_unsynced(dir: &Path, temp: &str, seen: &[Step]) {
        if !seen.contains(&Step::Synced) && dir.join(temp).exists() {
            fs::write(dir.join(temp), "").unwrap();
        }
    }

    #[test]
    fn a_replace_cut_after_any_step_leaves_the_old_or_the_new_file() {
        for step in REPLACE_STEPS {
            for had_old in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                if had_old {
                    fs::write(dir.path().join("r.json"), "old content").unwrap();
                }
                let mut cut = CutAfter::new(Some(step));
                let e =
                    replace_cut(dir.path(), "r.json", b"new content", 0o644, &mut cut).unwrap_err();
                assert!(was_cut(&e), "{e}");
                // The data is on disk before the name shows it: the order that makes this hold after a power loss.
                assert_eq!(
                    cut.seen,
                    REPLACE_STEPS[..=REPLACE_STEPS.iter().position(|s| *s == step).unwrap()]
                );
                lose_unsynced(dir.path(), ".r.json.tmp", &cut.seen);
                let visible = fs::read_to_string(dir.path().join("r.json")).ok();
                let expected_new = cut.seen.contains(&Step::Visible);
                match (expected_new, had_old) {
                    (true, _) => assert_eq!(visible.as_deref(), Some("new content"), "{step:?}"),
                    (false, true) => {
                        assert_eq!(visible.as_deref(), Some("old content"), "{step:?}")
                    }
                    (false, false) => assert_eq!(visible, None, "{step:?}"),
                }
                // Start-up sweeps what the crash left; the visible file stays.
                sweep_temps(dir.path(), ".").unwrap();
                let names: Vec<_> = fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                assert_eq!(names.len(), usize::from(visible.is_some()), "{names:?}");
            }
        }
        // Uncut: the file, mode as asked, nothing else.
        let dir = tempfile::tempdir().unwrap();
        let path = replace(dir.path(), "r.json", b"x", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_new_file_is_never_visible_incomplete_and_never_replaced() {
        let all = [REPLACE_STEPS.as_slice(), &[Step::TempRemoved]].concat();
        for step in &all {
            let dir = tempfile::tempdir().unwrap();
            let mut cut = CutAfter::new(Some(*step));
            let e = create_new(dir.path(), "7", ".me.tmp", b"owner", 0o644, &mut cut).unwrap_err();
            assert!(was_cut(&e));
            assert_eq!(
                cut.seen,
                all[..=all.iter().position(|s| s == step).unwrap()]
            );
            lose_unsynced(dir.path(), ".me.tmp", &cut.seen);
            match fs::read_to_string(dir.path().join("7")) {
                Ok(s) => assert_eq!(s, "owner", "{step:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::NotFound);
                    assert!(!cut.seen.contains(&Step::Visible), "{step:?}");
                }
            }
            assert_eq!(
                sweep_temps(dir.path(), ".other").unwrap(),
                Vec::<String>::new()
            );
            sweep_temps(dir.path(), ".me").unwrap();
            assert!(!dir.path().join(".me.tmp").exists());
        }
        // A crash between `link` and the temp's removal, then the same writer again: the visible file keeps its
        // content (the temp name gets a new inode).
        let dir = tempfile::tempdir().unwrap();
        let mut cut = CutAfter::new(Some(Step::DirSynced));
        assert!(create_new(dir.path(), "7", ".me.tmp", b"first", 0o644, &mut cut).is_err());
        assert!(create_new(dir.path(), "8", ".me.tmp", b"second", 0o644, &mut Uncut).unwrap());
        assert_eq!(fs::read_to_string(dir.path().join("7")).unwrap(), "first");
        assert_eq!(fs::read_to_string(dir.path().join("8")).unwrap(), "second");

        let dir = tempfile::tempdir().unwrap();
        assert!(create_new(dir.path(), "7", ".a.tmp", b"a", 0o600, &mut Uncut).unwrap());
        assert!(!create_new(dir.path(), "7", ".b.tmp", b"b", 0o600, &mut Uncut).unwrap());
        assert_eq!(fs::read_to_string(dir.path().join("7")).unwrap(), "a");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
        // A failure (here: no such directory) is an error, not a file.
        assert!(
            create_new(
                &dir.path().join("none"),
                "7",
                ".a.tmp",
                b"a",
                0o600,
                &mut Uncut
            )
            .is_err()
        );
    }
}

//! Child processes the harness starts, and who owns them: [`Process`] (logs to a file, stopped with SIGTERM then
//! SIGKILL on drop), [`spawn_owned`] (servers that must die with the test process, however it ends), and the small
//! pieces every owner of a child shares: [`log_to`], [`log_tail`], [`kill_and_wait`].

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process that is stopped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr appended to `log`, in a process group of its own (see [`own_group`]).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> io::Result<Self> {
        log_to(
            &mut cmd,
            File::options().create(true).append(true).open(log)?,
        )?;
        let child = own_group(&mut cmd).spawn()?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(name = %self.name, "did not stop on SIGTERM; killing");
        kill_and_wait(&mut child);
    }

    /// SIGKILL now: a crash, as far as the process can tell.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Puts `cmd` in a process group of its own: a terminal's Ctrl-C (SIGINT to the whole foreground group) then reaches
/// only the harness, which tears the cluster down in order. Were etcd, the kubelets and containerd in the harness's
/// group, they would exit at once while kube-apiserver kept running, and the teardown's API calls would wait on
/// components that can no longer answer. Whatever ends the harness otherwise, the reapers still kill them.
pub fn own_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

type SpawnJob = (Command, mpsc::SyncSender<io::Result<Child>>);

/// A process's resident memory (`VmRSS`, KiB; 0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Spawns `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG=SIGKILL`: the kernel
/// sends that signal when the *spawning thread* exits, so test threads (which end) must not spawn directly. In a
/// process group of its own, like [`Process::spawn`].
pub fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    own_group(&mut cmd);
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("owned-process-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the owned-process spawner thread");
        tx
    });
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)
        });
    }
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("owned-process spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("owned-process spawner thread is gone"))?
}

/// Sends `cmd`'s stdout and stderr to `log` (opened as the caller needs: appended or fresh), stdin from nothing.
pub fn log_to(cmd: &mut Command, log: File) -> io::Result<()> {
    let err = log.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    Ok(())
}

/// The last `lines` lines of a log file (empty when it cannot be read), for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILL and reap: for throwaway servers, whose graceful shutdown would only cost time.
pub fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` and returns its exit status with its own peak RSS in KiB (`wait4`'s rusage: this child only,
/// not every child the process ever reaped, as `getrusage(RUSAGE_CHILDREN)` would be).
#[allow(unsafe_code)]
pub fn wait_with_peak_rss(child: &mut Child) -> io::Result<(std::process::ExitStatus, i64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child writes only into `status` and `usage`.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid != child.id() as i32 {
        return Err(io::Error::last_os_error());
    }
    Ok((std::process::ExitStatus::from_raw(status), usage.ru_maxrss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_tail(&log, 9), "a\nb\nc");
        assert_eq!(log_tail(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn owned_child_logs_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 60"]);
        log_to(&mut cmd, File::create(&log).unwrap()).unwrap();
        let mut child = spawn_owned(cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while log_tail(&log, 1) != "started" {
            assert!(Instant::now() < deadline, "no output in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_and_wait(&mut child);
        assert!(child.try_wait().unwrap().is_some());
    }
}

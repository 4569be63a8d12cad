//! Whether a kubelet is there to register with. A kubelet that dies leaves `kubelet.sock` behind, so the file says
//! nothing about the process; a unix `connect` to it does: it fails with `ECONNREFUSED` once no listener is bound to
//! the file. The probe connects and closes at once: the kubelet's gRPC server (grpc-go) drops a connection that
//! closes before the HTTP/2 preface without logging it ("Don't log on ... io.EOF to prevent log spam"), so a probe
//! costs the kubelet one accept.

use std::path::Path;
use std::time::Duration;

/// The kubelet as the plugins see it, from its socket file and the last probe of that file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Kubelet {
    /// No `kubelet.sock` in the directory.
    #[default]
    Absent,
    /// `kubelet.sock` is there but nobody answers on it (the kubelet died or is restarting): why.
    NotAnswering(String),
    /// `kubelet.sock` accepts connections, or was just created and is not probed yet. `incarnation` changes with
    /// every kubelet: a new socket file, or the same file answering again after [`Kubelet::NotAnswering`]; a plugin
    /// registers once per incarnation.
    Up { incarnation: u64 },
}

impl Kubelet {
    /// The incarnation to register with, while the kubelet is up.
    pub fn incarnation(&self) -> Option<u64> {
        match self {
            Self::Up { incarnation } => Some(*incarnation),
            _ => None,
        }
    }

    /// Why a plugin cannot be registered now; `None` while the kubelet is up.
    pub fn problem(&self, socket: &Path) -> Option<String> {
        match self {
            Self::Absent => Some(format!(
                "no kubelet socket at {} (kubelet not running?)",
                socket.display()
            )),
            Self::NotAnswering(why) => Some(why.clone()),
            Self::Up { .. } => None,
        }
    }

    /// The state after a directory scan found the socket file `file` (its identity) where `prev_file` was, and a
    /// probe of that same file, if one was taken, answered `probe`. `seen` counts the incarnations handed out.
    pub fn next(
        &self,
        prev_file: Option<u64>,
        file: Option<u64>,
        probe: Option<Result<(), String>>,
        seen: &mut u64,
    ) -> Kubelet {
        let same_file = file.is_some() && file == prev_file;
        match (file, probe) {
            (None, _) => Kubelet::Absent,
            (Some(_), Some(Err(why))) => Kubelet::NotAnswering(why),
            // The same kubelet still (the probe answered, or none was taken), or still down.
            _ if same_file && matches!(self, Kubelet::Up { .. }) => self.clone(),
            (Some(_), None) if same_file => self.clone(),
            // A new socket file (trusted until a probe says otherwise: a kubelet creates it by listening), or the
            // same file answering again: a new kubelet.
            (Some(_), _) => {
                *seen += 1;
                Kubelet::Up { incarnation: *seen }
            }
        }
    }
}

/// Connects to the kubelet's socket and hangs up: `Ok` when something accepts connections there.
pub async fn probe(socket: &Path, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "kubelet not answering on {}: {e}",
            socket.display()
        )),
        Err(_) => Err(format!(
            "kubelet not answering on {}: connect timed out after {timeout:?}",
            socket.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Option<Result<(), String>> {
        Some(Err("refused".into()))
    }

    #[test]
    fn a_new_kubelet_is_a_new_incarnation_whether_or_not_its_socket_file_is_new() {
        let mut seen = 0;
        let none = Kubelet::Absent;
        // A socket appears: up, before any probe.
        let up = none.next(None, Some(7), None, &mut seen);
        assert_eq!(up, Kubelet::Up { incarnation: 1 });
        // Probed fine, or not probed: the same kubelet.
        assert_eq!(up.next(Some(7), Some(7), Some(Ok(())), &mut seen), up);
        assert_eq!(up.next(Some(7), Some(7), None, &mut seen), up);
        // The process dies, its file stays: down, with the reason; a scan without a probe keeps it down.
        let down = up.next(Some(7), Some(7), refused(), &mut seen);
        assert_eq!(down, Kubelet::NotAnswering("refused".into()));
        assert_eq!(down.next(Some(7), Some(7), None, &mut seen), down);
        assert!(down.incarnation().is_none());
        // Back on the same file: a new incarnation, so plugins register again.
        let back = down.next(Some(7), Some(7), Some(Ok(())), &mut seen);
        assert_eq!(back, Kubelet::Up { incarnation: 2 });
        // Back on a new file (a restarted kubelet recreates it): new as well, even before it is probed.
        let down = back.next(Some(7), Some(7), refused(), &mut seen);
        assert_eq!(
            down.next(Some(7), Some(8), None, &mut seen),
            Kubelet::Up { incarnation: 3 }
        );
        // A restart seen only as a new file (never caught down) is a new incarnation too.
        let up = Kubelet::Up { incarnation: 3 };
        assert_eq!(
            up.next(Some(8), Some(9), Some(Ok(())), &mut seen),
            Kubelet::Up { incarnation: 4 }
        );
        // The file removed: absent, whatever was probed before.
        assert_eq!(up.next(Some(9), None, None, &mut seen), Kubelet::Absent);
        assert!(
            Kubelet::Absent
                .problem(Path::new("/d/kubelet.sock"))
                .unwrap()
                .contains("no kubelet socket at /d/kubelet.sock")
        );
    }

    #[tokio::test]
    async fn a_socket_file_without_a_listener_refuses_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        probe(&path, Duration::from_secs(1)).await.unwrap();
        // The process is gone, the file stays (nothing unlinks it on close).
        drop(listener);
        assert!(path.exists());
        let err = probe(&path, Duration::from_secs(1)).await.unwrap_err();
        assert!(
            err.contains("kubelet not answering on") && err.contains("Connection refused"),
            "{err}"
        );
    }
}

//! The reaper: a small `sh` that outlives this process by design and cleans up after it, however it ends.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{KEEP_ENV, Result, io_err};

/// Reads pids from stdin until EOF (this process ended or dropped the handle), then kills them and removes the
/// dir; `-<pid>` forgets a pid the harness stopped itself (a server started again). Ignores the signals a Ctrl-C
/// or hang-up sends to the whole process group.
const REAPER_SCRIPT: &str = r#"trap '' INT HUP TERM PIPE
dir=$1 keep=$2 pids=
while read -r p; do
  case $p in
    -*) kept=; for q in $pids; do [ "$q" = "${p#-}" ] || kept="$kept $q"; done; pids=$kept ;;
    *) pids="$pids $p" ;;
  esac
done
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
# Give the kernel a moment to tear the processes down before removing their files.
i=0
while [ $i -lt 100 ]; do
  alive=
  for p in $pids; do
    s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null) && [ "$s" != Z ] && alive=1
  done
  [ -z "$alive" ] && break
  i=$((i + 1)); sleep 0.05
done
[ -z "$keep" ] && rm -rf "$dir"
exit 0
"#;

pub(super) fn spawn_reaper(dir: &Path) -> Result<Child> {
    let keep = if std::env::var_os(KEEP_ENV).is_some() {
        "1"
    } else {
        ""
    };
    Command::new("sh")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .arg("macvtap-e2e-reaper")
        .arg(dir)
        .arg(keep)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Own process group: a terminal's Ctrl-C must not reach it.
        .process_group(0)
        .spawn()
        .map_err(io_err("starting the reaper (sh)"))
}

//! Small host-process helpers shared by the peers: running a command for its output, stopping a
//! child gently, unique names.

use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A name unique to this test process and call, for netns names, DPDK file prefixes, ...
pub(crate) fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Renders a command for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; Ok(stdout) on success, [`Error::HostCommand`] otherwise.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let described = describe(cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .map_err(|e| Error::io(format!("spawning `{described}`"), e))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(Error::HostCommand {
            command: described,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

/// Sends `signal` to the child, waits up to `grace` for it to exit, then SIGKILLs it. Always reaps.
pub(crate) fn stop_child(child: &mut Child, signal: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own unreaped child, so the
        // PID cannot have been recycled for another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

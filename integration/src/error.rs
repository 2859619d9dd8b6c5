//! The harness's error type: every failure says which peer, what was run, and the evidence (serial
//! log tail, stderr) needed to debug it without re-running.

use std::io;
use std::time::Duration;

/// Result alias for the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while driving a real peer.
///
/// `Debug` prints the same text as `Display`: tests `unwrap()` these, and the serial-log tails in
/// them must stay readable rather than become one escaped line.
#[derive(thiserror::Error)]
pub enum Error {
    /// A test prerequisite is missing (not root, QEMU or testpmd not installed, ...).
    #[error("missing prerequisite: {what}\n  -> run `sudo integration/scripts/install-deps.sh` (Debian 12) and run the tests as root")]
    Prerequisite { what: String },

    /// An I/O operation on the host failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A host command (ip, cargo, build-guest.sh, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    HostCommand {
        command: String,
        status: String,
        stderr: String,
    },

    /// The guest did not print its ready marker in time.
    #[error("guest {guest}: not ready after {timeout:?}\n--- serial log tail ---\n{log}")]
    BootTimeout {
        guest: String,
        timeout: Duration,
        log: String,
    },

    /// The guest's init reported a setup failure (module load, address, ...).
    #[error("guest {guest}: init failed: {message}\n--- serial log tail ---\n{log}")]
    GuestInit {
        guest: String,
        message: String,
        log: String,
    },

    /// QEMU exited while the harness was waiting on it.
    #[error(
        "guest {guest}: QEMU exited\n--- QEMU stderr ---\n{stderr}\n--- serial log tail ---\n{log}"
    )]
    QemuExited {
        guest: String,
        stderr: String,
        log: String,
    },

    /// A guest command did not finish in time (it was interrupted with ^C).
    #[error("guest {guest}: `{command}` timed out after {timeout:?}; output so far:\n{output}")]
    CommandTimeout {
        guest: String,
        command: String,
        timeout: Duration,
        output: String,
    },

    /// A guest command exited non-zero where success was required.
    #[error("guest {guest}: `{command}` exited with {exit_code}:\n{output}")]
    CommandFailed {
        guest: String,
        command: String,
        exit_code: i32,
        output: String,
    },

    /// Output of a guest or host tool could not be understood.
    #[error("unexpected output from `{command}`:\n{output}")]
    UnexpectedOutput { command: String, output: String },

    /// testpmd exited or never started forwarding.
    #[error("testpmd: {message}\n--- testpmd log tail ---\n{log}")]
    Testpmd { message: String, log: String },

    /// vdfwd exited, did not start, or did not show what was waited for.
    #[error("vdfwd: {message}\n--- vdfwd log tail ---\n{log}")]
    Vdfwd { message: String, log: String },

    /// A caller-supplied value cannot be used (bad MAC, command too long, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

//! Socket roles and the connection loop of one vNIC.
//!
//! * `Listen`: vdfwd binds the socket, QEMU connects (`-chardev socket,path=...`). One
//!   listener is kept for the vNIC's lifetime and accepts again after the frontend goes away
//!   (pitfall 4: `serve()` would stop after one connection).
//! * `Connect`: the frontend listens (QEMU `server=on`, OVS-style), vdfwd connects with
//!   exponential backoff (100 ms to 1 s) and reconnects when the frontend goes away
//!   (pitfall 4: `start_client` connects once, retrying is ours).
//!
//! Either way vdfwd owns the frontend connection and hands the crate's handler the other end
//! of a private relay ([`super::shim`]), which works around QEMU sending `SET_VRING_ENABLE`
//! before `SET_FEATURES`. The handler connects to a per-vNIC socket in a private (0700)
//! directory and we check with `SO_PEERCRED` that the peer is ourselves.
//!
//! Each connection gets a fresh `VhostUserDaemon` and [`VnicBackend`]: the crate's handler
//! refuses a second SET_OWNER on the same instance, and fresh vrings cannot carry stale
//! indices from the previous session. When the RX/TX rings of the new session are enabled the
//! crate calls the backend once per ring, which rescans TX and flushes the inbox to RX: that is
//! our "re-kick after reconnect" (pitfall 3), since the guest will not kick RX again.
//!
//! Threads per vNIC: this loop (which also relays control messages), the crate's message
//! thread and one queue worker.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};
use vhost_user_backend::VhostUserDaemon;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{VnicBackend, INBOX_EVENT, TX_RESUME_EVENT};
use super::shim::{relay, RelayEnd};
use crate::pipeline::Pipeline;
use crate::port::VnicPort;

/// Who opens the vhost-user socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketRole {
    /// vdfwd listens, the frontend connects.
    Listen,
    /// The frontend listens, vdfwd connects (and reconnects).
    Connect,
}

/// Errors setting up a vNIC's socket.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot bind vhost-user socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot create eventfd: {0}")]
    EventFd(io::Error),
    #[error("cannot spawn thread: {0}")]
    Spawn(io::Error),
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A failed connect to a Unix socket costs microseconds, so retrying every second is cheap, and
/// it bounds the outage after a frontend restart (and the start-up of many vNICs whose
/// frontends come up one by one) to about a second; it was 5 s.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

struct Control {
    stop: AtomicBool,
    stop_evt: EventFd,
    /// Number of frontend sessions started so far (observability, tests).
    sessions: AtomicU64,
}

impl Control {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// The running socket loop of one vNIC.
pub struct VnicRunner {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    internal_path: PathBuf,
    role: SocketRole,
}

/// Prefix of the per-process relay-socket directories in the temp dir (`vdfwd-<pid>`).
const INTERNAL_DIR_PREFIX: &str = "vdfwd-";

/// Private directory for the handler-side relay sockets.
///
/// A process that was SIGKILLed never removed its directory, so the first call also removes
/// the stale ones of dead processes (see [`remove_stale_internal_dirs`]).
fn internal_dir() -> io::Result<PathBuf> {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    let tmp = std::env::temp_dir();
    SWEEP.call_once(|| {
        let n = remove_stale_internal_dirs(&tmp);
        if n > 0 {
            info!("removed {n} stale relay-socket dir(s) of dead vdfwd processes in {tmp:?}");
        }
    });
    let dir = tmp.join(format!("{INTERNAL_DIR_PREFIX}{}", std::process::id()));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(e),
    }
}

/// Removes `<tmp>/vdfwd-<pid>` directories owned by us whose process no longer exists.
/// Returns how many were removed. A live process with a reused pid keeps its directory
/// (harmless: it is only a leftover), and anything that is not our own plain directory with
/// exactly that name form is left alone.
pub(crate) fn remove_stale_internal_dirs(tmp: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(INTERNAL_DIR_PREFIX))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<libc::pid_t>().ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        if pid == std::process::id() as libc::pid_t || process_alive(pid) {
            continue;
        }
        // symlink_metadata: never follow a link planted under the name.
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !md.is_dir() || std::os::unix::fs::MetadataExt::uid(&md) != me {
            continue;
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this pid exists (EPERM: it exists, owned by someone else).
fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn bind(path: &Path) -> Result<UnixListener, RunnerError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|source| RunnerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    l.set_nonblocking(true)
        .map_err(|source| RunnerError::Bind {
            path: path.to_owned(),
            source,
        })?;
    Ok(l)
}

impl VnicRunner {
    /// Starts serving `port` on `path`. In `Listen` mode the socket is bound before this
    /// returns, so a frontend may connect right away.
    pub fn spawn(
        port: Arc<VnicPort>,
        pipeline: Arc<Pipeline>,
        path: &Path,
        role: SocketRole,
    ) -> Result<VnicRunner, RunnerError> {
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            stop_evt: EventFd::new(EFD_NONBLOCK).map_err(RunnerError::EventFd)?,
            sessions: AtomicU64::new(0),
        });
        let dir = internal_dir().map_err(|source| RunnerError::Bind {
            path: std::env::temp_dir(),
            source,
        })?;
        // Unique per runner: a vNIC removed and re-added, or two pipelines in one process
        // (tests), must not share a path.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let internal_path = dir.join(format!("vnic{}-{seq}.sock", port.id.0));
        let internal = bind(&internal_path)?;
        let frontend_listener = match role {
            SocketRole::Listen => Some(bind(path)?),
            SocketRole::Connect => None,
        };
        let ctl = control.clone();
        let name = format!("vnic-{}", port.name());
        let session = Session {
            port,
            pipeline,
            internal,
            internal_path: internal_path.clone(),
        };
        let p = path.to_owned();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || match frontend_listener {
                Some(l) => listen_loop(&session, l, &ctl),
                None => connect_loop(&session, &p, &ctl),
            })
            .map_err(RunnerError::Spawn)?;
        Ok(VnicRunner {
            control,
            thread: Some(thread),
            path: path.to_owned(),
            internal_path,
            role,
        })
    }

    /// Number of frontend sessions started so far.
    pub fn sessions(&self) -> u64 {
        self.control.sessions.load(Ordering::Relaxed)
    }

    /// Disconnects the frontend, stops the loop and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        let _ = self.control.stop_evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.role == SocketRole::Listen {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(&self.internal_path);
        if let Some(dir) = self.internal_path.parent() {
            let _ = std::fs::remove_dir(dir); // only succeeds once the last vNIC is gone
        }
    }
}

impl Drop for VnicRunner {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// Waits until `fd` is readable or the stop event fires (or `timeout` passes). Returns true
/// if `fd` is readable and we are not stopping.
fn wait_readable(fd: Option<RawFd>, ctl: &Control, timeout: Option<Duration>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: ctl.stop_evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let t = timeout
        .map(|d| d.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(-1);
    loop {
        if ctl.stopping() {
            return false;
        }
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; a
        // negative fd is ignored by poll().
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, t) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        return !ctl.stopping() && fds[1].revents & libc::POLLIN != 0;
    }
}

/// Process id of the peer of a connected unix socket.
fn peer_pid(s: &UnixStream) -> Option<libc::pid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.pid)
}

/// Everything a session needs besides the frontend connection.
struct Session {
    port: Arc<VnicPort>,
    pipeline: Arc<Pipeline>,
    internal: UnixListener,
    internal_path: PathBuf,
}

type Daemon = VhostUserDaemon<VnicBackend>;

impl Session {
    fn name(&self) -> &str {
        self.port.name()
    }

    /// A daemon + backend pair for one frontend session, with the port's inbox doorbell and
    /// the session's TX resume doorbell registered in the worker's epoll set.
    fn new_daemon(&self) -> Option<(Daemon, VnicBackend)> {
        let backend = match VnicBackend::new(self.port.clone(), self.pipeline.clone()) {
            Ok(b) => b,
            Err(e) => {
                warn!(port = %self.name(), "cannot create the backend's eventfd: {e}");
                return None;
            }
        };
        let daemon =
            match VhostUserDaemon::new(self.name().to_owned(), backend.clone(), backend.memory()) {
                Ok(d) => d,
                Err(e) => {
                    warn!(port = %self.name(), "cannot create vhost-user daemon: {e}");
                    backend.close();
                    return None;
                }
            };
        for h in daemon.get_epoll_handlers() {
            let doorbells = [
                (self.port.inbox.as_raw_fd(), INBOX_EVENT, "inbox"),
                (backend.tx_resume_fd(), TX_RESUME_EVENT, "TX resume"),
            ];
            for (fd, token, what) in doorbells {
                if let Err(e) = h.register_listener(fd, EventSet::IN, token as u64) {
                    warn!(port = %self.name(), "cannot register {what} doorbell: {e}");
                    backend.close();
                    return None;
                }
            }
        }
        Some((daemon, backend))
    }

    /// Accepts the handler's connection on the internal socket, refusing anyone but us.
    fn accept_internal(&self, ctl: &Control) -> Option<UnixStream> {
        for _ in 0..50 {
            match self.internal.accept() {
                Ok((s, _)) if peer_pid(&s) == Some(std::process::id() as libc::pid_t) => {
                    let _ = s.set_nonblocking(false);
                    return Some(s);
                }
                Ok(_) => {
                    warn!(port = %self.name(), "foreign connection on the internal socket refused")
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(Some(self.internal.as_raw_fd()), ctl, Some(BACKOFF_MIN));
                }
                Err(e) => {
                    warn!(port = %self.name(), "internal accept failed: {e}");
                    return None;
                }
            }
            if ctl.stopping() {
                return None;
            }
        }
        None
    }

    /// Runs one frontend session to its end.
    fn serve(&self, frontend: UnixStream, ctl: &Control) {
        let _ = frontend.set_nonblocking(false);
        let Some((mut daemon, backend)) = self.new_daemon() else {
            return;
        };
        let Some(path) = self.internal_path.to_str() else {
            backend.close();
            return;
        };
        if let Err(e) = daemon.start_client(path) {
            warn!(port = %self.name(), "cannot start the vhost-user handler: {e}");
            backend.close();
            return;
        }
        let Some(handler_side) = self.accept_internal(ctl) else {
            daemon.request_shutdown();
            let _ = daemon.wait();
            backend.close();
            return;
        };
        ctl.sessions.fetch_add(1, Ordering::Relaxed);
        info!(port = %self.name(), "frontend connected");
        let end = relay(
            &frontend,
            &handler_side,
            ctl.stop_evt.as_raw_fd(),
            self.name(),
        );
        let _ = frontend.shutdown(std::net::Shutdown::Both);
        let _ = handler_side.shutdown(std::net::Shutdown::Both);
        let waited = daemon.wait();
        backend.close();
        match (end, waited) {
            (Ok(RelayEnd::FrontendClosed), _) => {
                info!(port = %self.name(), "frontend disconnected")
            }
            (Ok(RelayEnd::Stopped), _) => info!(port = %self.name(), "session stopped"),
            (Ok(RelayEnd::BackendClosed), Err(e)) => {
                warn!(port = %self.name(), "vhost-user handler closed the session: {e}")
            }
            (Ok(RelayEnd::BackendClosed), Ok(())) => {
                info!(port = %self.name(), "handler closed the session")
            }
            (Err(e), _) => warn!(port = %self.name(), "session ended: {e}"),
        }
    }
}

fn listen_loop(session: &Session, listener: UnixListener, ctl: &Control) {
    while wait_readable(Some(listener.as_raw_fd()), ctl, None) {
        match listener.accept() {
            Ok((stream, _)) => session.serve(stream, ctl),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!(port = %session.name(), "accept failed: {e}");
                wait_readable(None, ctl, Some(BACKOFF_MIN));
            }
        }
    }
    debug!(port = %session.name(), "listen loop stopped");
}

fn connect_loop(session: &Session, path: &Path, ctl: &Control) {
    let mut backoff = BACKOFF_MIN;
    while !ctl.stopping() {
        match UnixStream::connect(path) {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                session.serve(stream, ctl);
                // Give a restarting frontend a moment before reconnecting.
                wait_readable(None, ctl, Some(BACKOFF_MIN));
            }
            Err(e) => {
                debug!(port = %session.name(), "connect to {} failed: {e}; retry in {backoff:?}", path.display());
                wait_readable(None, ctl, Some(backoff));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    debug!(port = %session.name(), "connect loop stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn stale_relay_dirs_of_dead_processes_are_removed() {
        let tmp = std::env::temp_dir().join(format!("vdfwd-test-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).unwrap();
        let dead = tmp.join(format!("vdfwd-{}", dead_pid()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("vnic1-0.sock"), b"").unwrap();
        let mine = tmp.join(format!("vdfwd-{}", std::process::id()));
        let init = tmp.join("vdfwd-1"); // pid 1 is alive
        let other = tmp.join("vdfwd-notapid");
        for d in [&mine, &init, &other] {
            std::fs::create_dir(d).unwrap();
        }
        let file = tmp.join(format!("vdfwd-{}", dead_pid()));
        std::fs::write(&file, b"not a dir").unwrap();

        assert_eq!(remove_stale_internal_dirs(&tmp), 1);
        assert!(!dead.exists(), "the dead process's dir is gone");
        for kept in [&mine, &init, &other, &file] {
            assert!(kept.exists(), "{kept:?} must be kept");
        }
        assert_eq!(remove_stale_internal_dirs(&tmp), 0);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

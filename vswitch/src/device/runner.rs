//! Socket roles and the connection loop of one vNIC.
//!
//! * `Listen`: vdfwd binds the socket, QEMU connects (`-chardev socket,path=...`). One
//!   listener is kept for the vNIC's lifetime and accepts again after the frontend goes away
//!   (pitfall 4: `serve()` would stop the workers after one connection).
//! * `Connect`: the frontend listens (QEMU `server=on`, OVS-style), vdfwd connects with
//!   exponential backoff (100 ms to 5 s) and reconnects when the frontend goes away
//!   (pitfall 4: `start_client` connects once, retrying is ours).
//!
//! Each connection gets a fresh `VhostUserDaemon` and [`VnicBackend`]: the crate's handler
//! refuses a second SET_OWNER on the same instance, and fresh vrings cannot carry stale
//! indices from the previous session. When the RX/TX rings of the new session are enabled the
//! crate calls the backend once per ring, which rescans TX and flushes the inbox to RX: that is
//! our "re-kick after reconnect" (pitfall 3), since the guest will not kick RX again.
//!
//! Threads per vNIC: this loop, the crate's message thread and one queue worker.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{VnicBackend, INBOX_EVENT};
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
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct Control {
    stop: AtomicBool,
    stop_evt: EventFd,
    current: Mutex<Option<ShutdownHandle>>,
    /// Number of frontend sessions started so far (observability, tests).
    sessions: std::sync::atomic::AtomicU64,
}

/// The running socket loop of one vNIC.
pub struct VnicRunner {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    role: SocketRole,
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
            current: Mutex::new(None),
            sessions: std::sync::atomic::AtomicU64::new(0),
        });
        let ctl = control.clone();
        let name = format!("vnic-{}", port.name());
        let thread = match role {
            SocketRole::Listen => {
                let _ = std::fs::remove_file(path);
                let ul = UnixListener::bind(path).map_err(|source| RunnerError::Bind {
                    path: path.to_owned(),
                    source,
                })?;
                let listener = Listener::from(ul);
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || listen_loop(port, pipeline, listener, ctl))
            }
            SocketRole::Connect => {
                let p = path.to_owned();
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || connect_loop(port, pipeline, p, ctl))
            }
        }
        .map_err(RunnerError::Spawn)?;
        Ok(VnicRunner {
            control,
            thread: Some(thread),
            path: path.to_owned(),
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
        let c = &self.control;
        c.stop.store(true, Ordering::Release);
        let _ = c.stop_evt.write(1);
        if let Some(h) = c.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            h.shutdown();
        }
        if self.role == SocketRole::Listen {
            // If the loop is blocked in accept() (a client vanished between poll and accept),
            // a throwaway connection unblocks it.
            let _ = UnixStream::connect(&self.path);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.role == SocketRole::Listen {
            let _ = std::fs::remove_file(&self.path);
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
        if ctl.stop.load(Ordering::Acquire) {
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
        return !ctl.stop.load(Ordering::Acquire) && fds[1].revents & libc::POLLIN != 0;
    }
}

type Daemon = VhostUserDaemon<VnicBackend>;

/// A daemon + backend pair ready for one frontend session, with the port's inbox doorbell
/// registered in the worker's epoll set.
fn new_session(port: &Arc<VnicPort>, pipeline: &Arc<Pipeline>) -> Option<(Daemon, VnicBackend)> {
    let backend = VnicBackend::new(port.clone(), pipeline.clone());
    let daemon =
        match VhostUserDaemon::new(port.name().to_owned(), backend.clone(), backend.memory()) {
            Ok(d) => d,
            Err(e) => {
                warn!(port = %port.name(), "cannot create vhost-user daemon: {e}");
                return None;
            }
        };
    for h in daemon.get_epoll_handlers() {
        if let Err(e) =
            h.register_listener(port.inbox.as_raw_fd(), EventSet::IN, INBOX_EVENT as u64)
        {
            warn!(port = %port.name(), "cannot register inbox doorbell: {e}");
            backend.close();
            return None;
        }
    }
    Some((daemon, backend))
}

/// Runs one connected session to its end, then tears it down.
fn run_session(port: &VnicPort, mut daemon: Daemon, backend: VnicBackend, ctl: &Control) {
    ctl.sessions.fetch_add(1, Ordering::Relaxed);
    *ctl.current.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
    if ctl.stop.load(Ordering::Acquire) {
        daemon.request_shutdown();
    }
    info!(port = %port.name(), "frontend connected");
    match daemon.wait() {
        Ok(()) => info!(port = %port.name(), "frontend disconnected"),
        Err(e) => info!(port = %port.name(), "frontend session ended: {e}"),
    }
    *ctl.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    backend.close();
}

fn listen_loop(
    port: Arc<VnicPort>,
    pipeline: Arc<Pipeline>,
    mut listener: Listener,
    ctl: Arc<Control>,
) {
    let fd = listener.as_raw_fd();
    while wait_readable(Some(fd), &ctl, None) {
        let Some((mut daemon, backend)) = new_session(&port, &pipeline) else {
            // Resource exhaustion: back off instead of spinning.
            wait_readable(None, &ctl, Some(BACKOFF_MAX));
            continue;
        };
        if let Err(e) = daemon.start(&mut listener) {
            warn!(port = %port.name(), "accept failed: {e}");
            backend.close();
            continue;
        }
        if ctl.stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
        }
        run_session(&port, daemon, backend, &ctl);
    }
    debug!(port = %port.name(), "listen loop stopped");
}

fn connect_loop(port: Arc<VnicPort>, pipeline: Arc<Pipeline>, path: PathBuf, ctl: Arc<Control>) {
    let Some(path_str) = path.to_str().map(str::to_owned) else {
        warn!(port = %port.name(), "socket path is not UTF-8: {}", path.display());
        return;
    };
    let mut backoff = BACKOFF_MIN;
    let mut session = None;
    while !ctl.stop.load(Ordering::Acquire) {
        // A daemon that failed to connect is reused for the next attempt: it saw no traffic.
        let (mut daemon, backend) = match session.take() {
            Some(s) => s,
            None => match new_session(&port, &pipeline) {
                Some(s) => s,
                None => {
                    wait_readable(None, &ctl, Some(BACKOFF_MAX));
                    continue;
                }
            },
        };
        match daemon.start_client(&path_str) {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                run_session(&port, daemon, backend, &ctl);
                // Give a restarting frontend a moment before reconnecting.
                wait_readable(None, &ctl, Some(BACKOFF_MIN));
            }
            Err(e) => {
                debug!(port = %port.name(), "connect to {path_str} failed: {e}; retry in {backoff:?}");
                session = Some((daemon, backend));
                wait_readable(None, &ctl, Some(backoff));
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    if let Some((_, backend)) = session {
        backend.close();
    }
    debug!(port = %port.name(), "connect loop stopped");
}

//! Poll threads: in poll mode a few dedicated threads serve the queues of all vNICs, the way
//! OVS-DPDK's PMD threads do, instead of one event-driven worker per vNIC.
//!
//! Why: with a worker per vNIC, every burst costs an epoll wake-up of the sender's worker,
//! and the workers of two vNICs that talk to each other both take each other's conntrack
//! zone and RX ring locks. On a host with few cores those workers share a core, so each
//! burst is also a context switch, and a worker preempted while holding a lock stalls the
//! other. A poll thread owns its vNICs outright: it walks their TX rings and backlogs in
//! turn, guest kicks are suppressed while it runs, and vNICs on the same thread never
//! contend for a lock.
//!
//! The crate's per-vNIC worker stays, for the events only: on the first one it hands the
//! session's vrings to the pool ([`PollerPool::attach`]); every later event (a kick that
//! came while the poll thread slept, the inbox doorbell, the TX resume doorbell) becomes a
//! wake-up of the owning poll thread ([`PollerPool::wake`]).
//!
//! Sleeping: after `idle` without work (never, if `idle` is zero: a dedicated core) the
//! thread marks itself asleep, re-arms every owned ring's notification, looks once more and
//! only then sleeps on its doorbell. Whatever creates work after that look (a guest kick,
//! an inbox push, a new session) reaches the doorbell, and sees the mark because it was set
//! before the look.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{VnicBackend, Vring};
use crate::port::PortId;

/// Empty rounds between two clock reads of an idle poll thread.
const CLOCK_EVERY_EMPTY_ROUNDS: u32 = 16;

/// How the poll threads run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollConfig {
    /// Number of poll threads (vNIC `id % threads` picks the thread).
    pub threads: usize,
    /// CPUs to pin the threads to, thread `i` to `cpus[i % len]`; empty: not pinned.
    pub cpus: Vec<usize>,
    /// Time without work after which a thread sleeps until an event; zero: never sleeps.
    pub idle: Duration,
}

/// A vNIC session as a poll thread serves it.
#[derive(Clone)]
pub(crate) struct Attached {
    pub backend: VnicBackend,
    pub rx: Vring,
    pub tx: Vring,
}

/// One poll thread's share: its sessions and its doorbell.
struct Shard {
    sessions: Mutex<Vec<Attached>>,
    /// Bumped on every change of `sessions`, so the thread re-reads its list only then.
    generation: AtomicU64,
    asleep: AtomicBool,
    stop: AtomicBool,
    doorbell: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shard {
    fn ring(&self) {
        // EAGAIN only when the counter is saturated: the thread is awake then anyway.
        let _ = self.doorbell.write(1);
    }

    /// The live sessions, dropping those whose connection ended.
    fn live(&self) -> Vec<Attached> {
        let mut sessions = lock(&self.sessions);
        let before = sessions.len();
        sessions.retain(|a| !a.backend.is_closed());
        if sessions.len() != before {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        sessions.clone()
    }

    fn sleep(&self) {
        let mut pfd = libc::pollfd {
            fd: self.doorbell.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1. The
        // timeout only bounds how long a missed stop request could go unseen.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        let _ = self.doorbell.read();
    }
}

/// The poll threads of a pipeline. Dropping the pool stops and joins them.
pub struct PollerPool {
    shards: Vec<Arc<Shard>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PollerPool {
    /// Starts `cfg.threads` (at least one) poll threads.
    pub fn start(cfg: &PollConfig) -> io::Result<PollerPool> {
        let n = cfg.threads.max(1);
        let idle_ns = u64::try_from(cfg.idle.as_nanos()).unwrap_or(u64::MAX);
        let mut shards = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let shard = Arc::new(Shard {
                sessions: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                asleep: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                doorbell: EventFd::new(EFD_NONBLOCK)?,
            });
            let cpu = (!cfg.cpus.is_empty()).then(|| cfg.cpus[i % cfg.cpus.len()]);
            let s = shard.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vdfw-poll-{i}"))
                .spawn(move || run(&s, cpu, idle_ns));
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => {
                    let pool = PollerPool {
                        shards,
                        threads: Mutex::new(threads),
                    };
                    pool.stop();
                    return Err(e);
                }
            }
            shards.push(shard);
        }
        Ok(PollerPool {
            shards,
            threads: Mutex::new(threads),
        })
    }

    fn shard(&self, port: PortId) -> &Arc<Shard> {
        &self.shards[port.0 as usize % self.shards.len()]
    }

    /// Hands a session's vrings to the thread that owns its vNIC.
    pub(crate) fn attach(&self, session: Attached) {
        let shard = self.shard(session.backend.port().id);
        lock(&shard.sessions).push(session);
        shard.generation.fetch_add(1, Ordering::AcqRel);
        shard.ring();
    }

    /// Wakes the thread owning `port` if it sleeps (after a kick, doorbell or close).
    pub(crate) fn wake(&self, port: PortId) {
        let shard = self.shard(port);
        if shard.asleep.load(Ordering::SeqCst) {
            shard.ring();
        }
    }

    /// Number of sessions attached to the pool (observability, tests).
    pub fn sessions(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.sessions).len()).sum()
    }

    /// Stops and joins the threads. Idempotent.
    pub fn stop(&self) {
        for s in &self.shards {
            s.stop.store(true, Ordering::Release);
            s.ring();
        }
        for t in std::mem::take(&mut *lock(&self.threads)) {
            let _ = t.join();
        }
        for s in &self.shards {
            lock(&s.sessions).clear();
        }
    }
}

impl Drop for PollerPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the empty set; CPU_SET
    // writes inside it (cpu < CPU_SETSIZE, checked above); sched_setaffinity reads
    // `size_of::<cpu_set_t>()` bytes of it, and pid 0 is the calling thread.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The poll loop of one thread.
fn run(shard: &Shard, cpu: Option<usize>, idle_ns: u64) {
    if let Some(cpu) = cpu {
        match pin(cpu) {
            Ok(()) => debug!("poll thread pinned to CPU {cpu}"),
            Err(e) => warn!("cannot pin poll thread to CPU {cpu}: {e}; running unpinned"),
        }
    }
    let mut seen = u64::MAX;
    let mut sessions: Vec<Attached> = Vec::new();
    let mut idle_since: Option<Instant> = None;
    let mut empty_rounds: u32 = 0;
    while !shard.stop.load(Ordering::Acquire) {
        let generation = shard.generation.load(Ordering::Acquire);
        if generation != seen {
            sessions = shard.live();
            seen = shard.generation.load(Ordering::Acquire);
            for a in &sessions {
                a.backend.set_polled(true);
            }
        }
        let mut worked = false;
        let mut ended = false;
        for a in &sessions {
            if a.backend.is_closed() {
                ended = true;
                continue;
            }
            worked |= a.backend.poll_once(&a.rx, &a.tx);
        }
        if ended {
            // Re-read at the top of the next round.
            seen = u64::MAX;
        }
        if worked {
            idle_since = None;
            empty_rounds = 0;
            continue;
        }
        if idle_ns == 0 {
            std::hint::spin_loop();
            continue;
        }
        // The clock is read every few empty rounds only (a read costs about as much as a
        // round over two idle rings).
        empty_rounds += 1;
        if !empty_rounds.is_multiple_of(CLOCK_EVERY_EMPTY_ROUNDS) {
            std::hint::spin_loop();
            continue;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed().as_nanos() < u128::from(idle_ns) {
            continue;
        }
        // Going to sleep: announce it first, then re-arm and look once more (module doc).
        shard.asleep.store(true, Ordering::SeqCst);
        let mut pending = false;
        for a in &sessions {
            pending |= a.backend.arm(&a.rx, &a.tx);
        }
        if !pending
            && shard.generation.load(Ordering::SeqCst) == seen
            && !shard.stop.load(Ordering::Acquire)
        {
            shard.sleep();
        }
        shard.asleep.store(false, Ordering::SeqCst);
        for a in &sessions {
            a.backend.set_polled(true);
        }
        idle_since = None;
    }
}

//! The flow log: one record per new-connection decision and per (rate-limited) drop.
//!
//! Split in two like a trace ring:
//! * the packet threads build a fixed-size, `Copy` [`FlowEvent`] (ids, tuple, verdict; no
//!   strings) and push it with a non-blocking `try_send` into a bounded channel
//!   ([`FlowSink::push`]). A full channel drops the event and counts it: the data path never
//!   waits for the log, and never allocates or formats for it;
//! * one writer thread drains the channel, resolves ids to names through a [`FlowCatalog`]
//!   the control plane publishes on every policy change (vNIC names, the snapshot for
//!   endpoint names and identities, rule and policy names), appends JSON lines to
//!   `flows.jsonl` (rotated to `flows.jsonl.1` at [`MAX_FILE_BYTES`]) and keeps the last
//!   records in memory for the API ([`FlowLog::recent`]).
//!
//! Drops are rate-limited per vNIC and reason before they are pushed ([`RateLimiter`]), so a
//! guest flooding denied packets costs the log at most a few records per second per reason.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dfw::compile::PolicySnapshot;
use dfw::flow::{FiveTuple, IpProtocol};
use dfw::model::{Action, Direction, PolicyKey, RuleId};
use serde::Serialize;
use tracing::warn;

use crate::counters::DropReason;
use crate::firewall::decision::{Decider, PolicyTag};
use crate::port::PortId;

/// Events the channel holds before the packet threads start dropping them.
pub const CHANNEL_CAPACITY: usize = 8192;
/// Records kept in memory for [`FlowLog::recent`].
pub const RECENT_CAPACITY: usize = 4096;
/// `flows.jsonl` is rotated to `flows.jsonl.1` when it grows past this.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Drop records per vNIC, reason and second (the rest are counted as suppressed).
pub const DROP_RECORDS_PER_SECOND: u32 = 20;
/// New-connection records per vNIC and second.
pub const NEW_RECORDS_PER_SECOND: u32 = 1000;

/// What happened to the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    Forwarded,
    Dropped,
    /// Dropped, and the sender was told (TCP RST / ICMP admin-prohibited).
    Rejected,
    /// A decision blocked it but audit mode forwarded it.
    Audit,
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowDecider {
    Policy(Decider),
    /// Connection tracking (invalid state, table full).
    Conntrack,
    /// The vNIC's policy is not realized.
    NotRealized,
    SpoofGuard,
    /// Not IP / fragment.
    Protocol,
}

impl FlowDecider {
    fn name(self) -> &'static str {
        match self {
            FlowDecider::Policy(Decider::Rule(_)) => "rule",
            FlowDecider::Policy(Decider::Isolation(_)) => "isolation",
            FlowDecider::Policy(Decider::DefaultAllow) => "default_allow",
            FlowDecider::Policy(Decider::DefaultDeny) => "default_deny",
            FlowDecider::Conntrack => "conntrack",
            FlowDecider::NotRealized => "not_realized",
            FlowDecider::SpoofGuard => "spoof_guard",
            FlowDecider::Protocol => "protocol",
        }
    }
}

/// What a packet thread pushes: fixed size, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// Monotonic ns (the data path's clock).
    pub time: u64,
    pub vnic: PortId,
    /// Seen as this vNIC's egress (it sent) or ingress (it receives).
    pub direction: Direction,
    /// `None` for non-IP frames (spoofed ARP).
    pub tuple: Option<FiveTuple>,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub verdict: FlowVerdict,
    pub reason: Option<DropReason>,
    pub decider: FlowDecider,
    /// Generation of the policy snapshot that decided.
    pub generation: u64,
}

/// The packet threads' end of the log. Cheap to clone.
#[derive(Clone)]
pub struct FlowSink {
    tx: SyncSender<FlowEvent>,
    counters: Arc<SinkCounters>,
}

#[derive(Default)]
struct SinkCounters {
    pushed: AtomicU64,
    lost: AtomicU64,
}

impl FlowSink {
    /// Queues an event; drops (and counts) it if the writer is behind. Never blocks.
    pub fn push(&self, ev: FlowEvent) {
        match self.tx.try_send(ev) {
            Ok(()) => self.counters.pushed.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.lost.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A per-second budget, shared by the threads that log for one (vNIC, reason). Fixed windows
/// of one second on the data path's clock; two atomics, no lock.
#[derive(Debug, Default)]
pub struct RateLimiter {
    window: AtomicU64,
    count: AtomicU32,
}

impl RateLimiter {
    /// Whether one more record fits this second's budget of `per_second`.
    pub fn allow(&self, now: u64, per_second: u32) -> bool {
        let w = now / 1_000_000_000 + 1; // +1: window 0 means "never used"
        let cur = self.window.load(Ordering::Relaxed);
        // Over budget in the current window: a plain load says so, without the locked
        // read-modify-write (a flood of new flows asks here twice per packet).
        if cur == w && self.count.load(Ordering::Relaxed) >= per_second {
            return false;
        }
        if cur != w
            && self
                .window
                .compare_exchange(cur, w, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < per_second
    }
}

/// A rule as flow records and counters name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    /// `K8sNP:ns/name`, `ACNP:name`, ... (dfw's `PolicyKey` display form).
    pub policy: String,
    /// The same key, typed (for the API's flow records).
    #[serde(skip)]
    pub policy_key: Option<PolicyKey>,
    pub name: String,
    pub direction: Direction,
    pub action: Action,
    pub log_label: Option<String>,
}

/// Names for the ids in events, published by the control plane.
#[derive(Default)]
pub struct FlowCatalog {
    pub snapshot: Option<Arc<PolicySnapshot>>,
    pub vnics: HashMap<PortId, String>,
    pub rules: HashMap<RuleId, RuleInfo>,
    pub policies: HashMap<PolicyTag, String>,
    /// Typed keys of `policies` (for the API's flow records).
    pub policy_keys: HashMap<PolicyTag, PolicyKey>,
}

/// Receives every resolved record, with the event and the catalog it was resolved against
/// and its Unix time (ns): how the API's flow ring is fed. Runs on the writer thread.
pub type FlowForward = Arc<dyn Fn(&FlowEvent, &FlowRecord, &FlowCatalog, u64) + Send + Sync>;

/// One side of a flow in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowPeer {
    pub ip: IpAddr,
    pub port: u16,
    /// `namespace/name` if the address is a known endpoint.
    pub endpoint: Option<String>,
    /// Numeric security identity (2 = world, 1 = host, 6 = remote-node, >= 256 endpoints).
    pub identity: u32,
}

/// A flow-log line (`flows.jsonl`) and what [`FlowLog::recent`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRecord {
    /// RFC 3339 UTC wall-clock time.
    pub time: String,
    /// Monotonic ns since vdfwd started (orders records exactly).
    pub mono_ns: u64,
    pub vnic: String,
    pub direction: Direction,
    pub protocol: Option<String>,
    pub src: Option<FlowPeer>,
    pub dst: Option<FlowPeer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    pub verdict: FlowVerdict,
    pub drop_reason: Option<&'static str>,
    /// `rule`, `isolation`, `default_allow`, `default_deny`, `conntrack`, `not_realized`,
    /// `spoof_guard`, `protocol`.
    pub decided_by: &'static str,
    pub policy: Option<String>,
    /// Rule id (16 hex digits), stable across re-applies: the key of the per-rule counters.
    pub rule_id: Option<String>,
    pub rule_name: Option<String>,
    pub log_label: Option<String>,
    pub generation: u64,
}

impl FlowCatalog {
    fn peer(&self, ip: IpAddr, port: u16) -> FlowPeer {
        let (endpoint, identity) = match &self.snapshot {
            Some(s) => (
                s.endpoint_by_ip(ip).map(|e| e.endpoint().key().to_string()),
                s.identity_of(ip).0,
            ),
            None => (None, 0),
        };
        FlowPeer {
            ip,
            port,
            endpoint,
            identity,
        }
    }

    /// Resolves an event into a record. `wall_epoch_ns`: Unix time of monotonic 0.
    pub fn resolve(&self, ev: &FlowEvent, wall_epoch_ns: u64) -> FlowRecord {
        let icmp = ev.tuple.is_some_and(|t| t.protocol.is_icmp());
        let (policy, rule_id, rule_name, log_label) = match ev.decider {
            FlowDecider::Policy(Decider::Rule(id)) => match self.rules.get(&id) {
                Some(r) => (
                    Some(r.policy.clone()),
                    Some(id.to_string()),
                    Some(r.name.clone()),
                    r.log_label.clone(),
                ),
                None => (None, Some(id.to_string()), None, None),
            },
            FlowDecider::Policy(Decider::Isolation(tag)) => {
                (self.policies.get(&tag).cloned(), None, None, None)
            }
            _ => (None, None, None, None),
        };
        FlowRecord {
            time: rfc3339(wall_epoch_ns.saturating_add(ev.time)),
            mono_ns: ev.time,
            vnic: self
                .vnics
                .get(&ev.vnic)
                .cloned()
                .unwrap_or_else(|| ev.vnic.to_string()),
            direction: ev.direction,
            protocol: ev.tuple.map(|t| protocol_name(t.protocol)),
            src: ev.tuple.map(|t| self.peer(t.src, t.src_port)),
            dst: ev.tuple.map(|t| self.peer(t.dst, t.dst_port)),
            icmp_type: icmp.then_some(ev.icmp_type),
            icmp_code: icmp.then_some(ev.icmp_code),
            verdict: ev.verdict,
            drop_reason: ev.reason.map(DropReason::name),
            decided_by: ev.decider.name(),
            policy,
            rule_id,
            rule_name,
            log_label,
            generation: ev.generation,
        }
    }
}

fn protocol_name(p: IpProtocol) -> String {
    p.to_string()
}

/// Formats Unix nanoseconds as RFC 3339 UTC with microseconds (`2024-05-01T12:00:00.000001Z`).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Counters of the flow log, for `counters.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowLogStats {
    /// Events queued by the packet threads.
    pub queued: u64,
    /// Events lost because the channel was full.
    pub lost: u64,
    /// Records written (file and memory).
    pub written: u64,
    /// Write errors (the record is still kept in memory).
    pub write_errors: u64,
}

struct Shared {
    catalog: ArcSwap<FlowCatalog>,
    forward: Mutex<Option<FlowForward>>,
    recent: Mutex<VecDeque<FlowRecord>>,
    written: AtomicU64,
    write_errors: AtomicU64,
    /// Events taken off the channel (written or not), for [`FlowLog::sync`].
    drained: AtomicU64,
    stop: AtomicBool,
    wall_epoch_ns: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flow log: the channel, its writer thread and the recent records.
pub struct FlowLog {
    sink: FlowSink,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FlowLog {
    /// Starts the writer. `file`: where to append JSON lines (`None`: memory only).
    /// `mono_now`: the data path's clock reading now, to map its timestamps to wall time.
    pub fn start(file: Option<PathBuf>, mono_now: u64) -> io::Result<FlowLog> {
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            catalog: ArcSwap::from_pointee(FlowCatalog::default()),
            forward: Mutex::new(None),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
            written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wall_epoch_ns: wall_now.saturating_sub(mono_now),
        });
        let writer = match &file {
            Some(p) => Some(Writer::open(p.clone())?),
            None => None,
        };
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vdfw-flowlog".into())
            .spawn(move || drain(rx, &s, writer))?;
        Ok(FlowLog {
            sink: FlowSink {
                tx,
                counters: Arc::default(),
            },
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn sink(&self) -> FlowSink {
        self.sink.clone()
    }

    /// Publishes new names (after a policy or vNIC change).
    pub fn set_catalog(&self, catalog: FlowCatalog) {
        self.shared.catalog.store(Arc::new(catalog));
    }

    /// Forwards every record from now on (replacing an earlier forward).
    pub fn set_forward(&self, forward: FlowForward) {
        *lock(&self.shared.forward) = Some(forward);
    }

    pub fn catalog(&self) -> Arc<FlowCatalog> {
        self.shared.catalog.load_full()
    }

    /// The last `n` records, oldest first.
    pub fn recent(&self, n: usize) -> Vec<FlowRecord> {
        let r = lock(&self.shared.recent);
        r.iter().skip(r.len().saturating_sub(n)).cloned().collect()
    }

    pub fn stats(&self) -> FlowLogStats {
        FlowLogStats {
            queued: self.sink.counters.pushed.load(Ordering::Relaxed),
            lost: self.sink.counters.lost.load(Ordering::Relaxed),
            written: self.shared.written.load(Ordering::Relaxed),
            write_errors: self.shared.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Waits (up to `timeout`) until every event queued so far has been written. For tests
    /// and for shutdown.
    pub fn sync(&self, timeout: Duration) -> bool {
        let target = self.sink.counters.pushed.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + timeout;
        while self.shared.drained.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Drains what is queued and stops the writer.
    pub fn shutdown(&self) {
        self.sync(Duration::from_secs(2));
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for FlowLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
}

impl Writer {
    fn open(path: PathBuf) -> io::Result<Writer> {
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = f.metadata()?.len();
        Ok(Writer {
            path,
            out: BufWriter::new(f),
            size,
        })
    }

    fn write(&mut self, rec: &FlowRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec)?;
        line.push(b'\n');
        if self.size + line.len() as u64 > MAX_FILE_BYTES {
            self.rotate()?;
        }
        self.out.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, Path::new(&old))?;
        *self = Writer::open(self.path.clone())?;
        Ok(())
    }
}

fn drain(rx: Receiver<FlowEvent>, shared: &Shared, mut writer: Option<Writer>) {
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let catalog = shared.catalog.load();
        let forward = lock(&shared.forward).clone();
        let mut n = 0u64;
        for ev in std::iter::once(first).chain(rx.try_iter().take(1024)) {
            let rec = catalog.resolve(&ev, shared.wall_epoch_ns);
            if let Some(f) = &forward {
                f(
                    &ev,
                    &rec,
                    &catalog,
                    shared.wall_epoch_ns.saturating_add(ev.time),
                );
            }
            if let Some(w) = writer.as_mut() {
                if let Err(e) = w.write(&rec) {
                    if shared.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        warn!("flow log write failed: {e}");
                    }
                }
            }
            let mut recent = lock(&shared.recent);
            if recent.len() == RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(rec);
            n += 1;
        }
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.out.flush() {
                if shared.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!("flow log flush failed: {e}");
                }
            }
        }
        shared.written.fetch_add(n, Ordering::Relaxed);
        shared.drained.fetch_add(n, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T12:34:56.789012Z (leap day) = 951827696 s.
        assert_eq!(
            rfc3339(951_827_696_789_012_345),
            "2000-02-29T12:34:56.789012Z"
        );
        // 2024-12-31T23:59:59Z = 1735689599 s.
        assert_eq!(
            rfc3339(1_735_689_599_000_000_000),
            "2024-12-31T23:59:59.000000Z"
        );
    }

    #[test]
    fn rate_limiter_budget_per_second() {
        let r = RateLimiter::default();
        let s = 1_000_000_000u64;
        let allowed = (0..10).filter(|i| r.allow(5 * s + i, 3)).count();
        assert_eq!(allowed, 3);
        // Next second: a fresh budget.
        assert!(r.allow(6 * s, 3));
        assert!(r.allow(6 * s + 1, 3));
        // Time 0 is a normal second too.
        let r0 = RateLimiter::default();
        assert!(r0.allow(0, 1));
        assert!(!r0.allow(1, 1));
    }

    fn event(vnic: u32, reason: Option<DropReason>) -> FlowEvent {
        FlowEvent {
            time: 1_500_000_000,
            vnic: PortId(vnic),
            direction: Direction::Ingress,
            tuple: Some(FiveTuple {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                protocol: IpProtocol::Tcp,
                src_port: 40000,
                dst_port: 22,
            }),
            icmp_type: 0,
            icmp_code: 0,
            verdict: if reason.is_some() {
                FlowVerdict::Dropped
            } else {
                FlowVerdict::Forwarded
            },
            reason,
            decider: FlowDecider::Policy(Decider::Rule(RuleId(0xabc))),
            generation: 7,
        }
    }

    #[test]
    fn writer_resolves_names_and_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let log = FlowLog::start(Some(path.clone()), 1_000_000_000).unwrap();
        let mut cat = FlowCatalog::default();
        cat.vnics.insert(PortId(3), "db-eth0".into());
        cat.rules.insert(
            RuleId(0xabc),
            RuleInfo {
                policy: "K8sNP:shop/db".into(),
                policy_key: None,
                name: "ingress-0".into(),
                direction: Direction::Ingress,
                action: Action::Drop,
                log_label: Some("ssh".into()),
            },
        );
        log.set_catalog(cat);
        let sink = log.sink();
        sink.push(event(3, Some(DropReason::PolicyDenied)));
        sink.push(event(9, None));
        assert!(log.sync(Duration::from_secs(5)));
        let recs = log.recent(10);
        assert_eq!(recs.len(), 2);
        let r = &recs[0];
        assert_eq!(r.vnic, "db-eth0");
        assert_eq!(r.verdict, FlowVerdict::Dropped);
        assert_eq!(r.drop_reason, Some("policy_denied"));
        assert_eq!(r.decided_by, "rule");
        assert_eq!(r.policy.as_deref(), Some("K8sNP:shop/db"));
        assert_eq!(r.rule_id.as_deref(), Some("0000000000000abc"));
        assert_eq!(r.log_label.as_deref(), Some("ssh"));
        assert_eq!(r.dst.as_ref().unwrap().port, 22);
        assert_eq!(recs[1].vnic, "vnic#9", "unknown vNICs keep their id");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["verdict"], "dropped");
        assert_eq!(lines[0]["direction"], "ingress");
        assert_eq!(lines[0]["protocol"], "TCP");
        assert_eq!(lines[1]["verdict"], "forwarded");
        assert_eq!(log.stats().written, 2);
        assert_eq!(log.stats().lost, 0);
    }

    #[test]
    fn a_full_channel_loses_events_without_blocking() {
        // The receiver is held but never drained, as when the writer falls behind.
        let (tx, _rx) = sync_channel(4);
        let sink = FlowSink {
            tx,
            counters: Arc::default(),
        };
        for _ in 0..14 {
            sink.push(event(1, None));
        }
        assert_eq!(sink.counters.pushed.load(Ordering::Relaxed), 4);
        assert_eq!(sink.counters.lost.load(Ordering::Relaxed), 10);
    }
}

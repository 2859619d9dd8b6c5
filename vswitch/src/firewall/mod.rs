//! The stateful firewall in the packet path: a [`PacketFilter`] over dfw's realized policy
//! and per-vNIC connection tracking.
//!
//! # Model
//! * **Policy** is an immutable dfw [`PolicySnapshot`] behind an `ArcSwap`, together with each
//!   vNIC's endpoint handle in it ([`Firewall::install`]). A vNIC whose endpoint is not in the
//!   snapshot is *not realized*: it forwards nothing (fail closed), and that is counted.
//! * **Stateful filtering** is dfw's [`StatefulFirewall`] (connection tracking glued to the
//!   snapshot), one per vNIC: each vNIC is its own conntrack zone with its own table, behind
//!   its own mutex. The vNIC's TX thread is the main user, so a lock is contended only by the
//!   threads of vNICs talking to each other; no code path holds two at once.
//! * **A frame from vNIC A** crosses A's zone as egress (a new connection is decided by A's
//!   egress policy); if it goes to local vNIC B it then crosses B's zone as ingress (decided
//!   by B's ingress policy). **A frame from the uplink** crosses only the destination vNIC's
//!   zone, as ingress. Packets of tracked connections, both ways, pass without a policy
//!   lookup (the reply fast path); their conntrack mark names the admitting rule, which keys
//!   the per-rule counters.
//! * **Reject** decisions make the pipeline answer the sender (TCP RST, else ICMP
//!   administratively prohibited); **audit** decisions forward and log.
//! * **Control traffic** (ARP, ND/MLD, DHCP address acquisition; see [`classify`]) passes
//!   without policy once the spoof guard has validated it.
//!
//! # Policy changes
//! [`Firewall::install`] swaps the snapshot; [`Firewall::recheck`] then re-decides every
//! tracked connection under the new policy, in the zone and direction it was admitted in,
//! cutting the ones no longer allowed and keeping the rest with their state. A burst of
//! frames loads the published state once, and each zone records (under its lock) the epoch
//! of the state it was last re-checked under; a crossing that finds its state older than that
//! loads the state again *while holding the zone's lock*. So a connection admitted under the
//! old policy is either already in the table when the recheck scans it, or is decided with
//! the new policy: none slips between install and recheck.
//!
//! # Cost of a packet of a tracked connection
//! One load of the published state per burst of frames (per frame outside a burst, see
//! [`PacketFilter::burst_state`]); per zone crossed, one lock (the zone's: its
//! connection table, cut set and rule-hit counts are behind it) and one conntrack lookup.
//! Nothing else is shared or atomic: the per-rule counters are counted per zone, keyed by the
//! connection's mark, and added to the shared ones per batch and before reads (see [`hits`]);
//! nothing looks at the rule tables, so the cost does not depend on the policy's size.
//!
//! Within a burst, the packets of a UDP flow after its first pass on that packet's verdict,
//! with no lock and no lookup, and are counted when the burst ends ([`run`]): a UDP packet
//! of an established connection changes nothing but counters and a timer. TCP segments are
//! each tracked.
//!
//! # Time
//! `now` comes from the pipeline (monotonic ns, read once per batch) and is passed into dfw;
//! [`PacketFilter::end_batch`] runs a bounded expiry sweep of the vNIC's table.

pub mod classify;
pub mod cut;
pub mod decision;
mod hits;
mod run;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use dfw::compile::{EndpointHandle, FlowAction, PolicySnapshot};
use dfw::conntrack::{
    ConnInfo, CtConfig, CtConfigError, CtDropReason, CtVerdict, FlowHasher, HashedPacket,
    PacketMeta, Zone,
};
use dfw::flow::{FiveTuple, IpProtocol};
use dfw::model::{Direction, EndpointKey, RuleId};
use dfw::stateful::{Mark, StatefulFirewall, Vnic};
use serde::Serialize;

use crate::counters::DropReason;
use crate::filter::{BurstState, FilterContext, FilterVerdict, PacketFilter, PolicyDrop};
use crate::flowlog::{
    FlowDecider, FlowEvent, FlowSink, FlowVerdict, RateLimiter, DROP_RECORDS_PER_SECOND,
    NEW_RECORDS_PER_SECOND,
};
use crate::packet::ParsedPacket;
use crate::port::{PortId, PortRef};
use classify::{classify, Class};
use decision::SideDecision;
use hits::RuleHits;
use run::{Run, RunZone, Runs};

/// Table slots a vNIC's batch sweeps for expired connections.
pub const EXPIRE_BUDGET_PER_BATCH: usize = 128;

/// Connections beyond which a vNIC's table no longer fits the L2 cache (~150 B each) and
/// prefetching its lines ahead of use pays for an extra lock.
const BIG_TABLE: usize = 8192;

/// Rate-limiter slots per vNIC: one per drop reason, plus one for new-connection records.
const LIMITERS: usize = DropReason::COUNT + 1;
const LIMIT_NEW: usize = DropReason::COUNT;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hit counters of one rule (its deciding decisions and the packets of the connections it
/// admitted), kept across policy reloads while the rule exists (rule ids are content-derived).
#[derive(Debug, Default)]
pub struct RuleStats {
    /// New connections (or untracked packets) the rule decided, allowed or not.
    pub sessions: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

impl RuleStats {
    fn hit(&self, new: bool, bytes: u32) {
        if new {
            self.sessions.fetch_add(1, Ordering::Relaxed);
        }
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(u64::from(bytes), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RuleCounters {
        RuleCounters {
            sessions: self.sessions.load(Ordering::Relaxed),
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleCounters {
    pub sessions: u64,
    pub packets: u64,
    pub bytes: u64,
}

macro_rules! fw_counters {
    ($( $(#[$doc:meta])* $field:ident, )*) => {
        /// Per-vNIC firewall counters (drops by reason are in the port's
        /// [`crate::counters::PortCounters`]).
        #[derive(Debug, Default)]
        pub struct VnicFwCounters { $( $(#[$doc])* pub $field: AtomicU64, )* }

        /// A copy of [`VnicFwCounters`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct VnicFwCountersSnapshot { $( $(#[$doc])* pub $field: u64, )* }

        impl VnicFwCounters {
            pub fn snapshot(&self) -> VnicFwCountersSnapshot {
                VnicFwCountersSnapshot { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }
    };
}

fw_counters! {
    /// New connections this vNIC sent that its egress policy admitted.
    allowed_egress,
    /// New connections to this vNIC that its ingress policy admitted.
    allowed_ingress,
    /// New flows this vNIC's egress policy refused (drop or reject).
    denied_egress,
    /// New flows this vNIC's ingress policy refused (drop or reject).
    denied_ingress,
    /// Of the denied: refused by a reject rule (the sender was told).
    rejected,
    /// Segments of connections a policy change cut, answered with an RST (counted in
    /// `rejected` too).
    cut_reset,
    /// Flows a blocking decision would have refused, forwarded in audit mode.
    audited,
    /// Control frames (ARP, ND/MLD, DHCP acquisition) passed without policy.
    control,
    /// Frames dropped because the vNIC's policy was not realized.
    not_realized,
    /// Flow-log records not written because of the per-reason rate limit.
    log_suppressed,
}

/// The firewall state of one vNIC: its zone (connection table and what goes with it) and
/// counters. Lives as long as the vNIC is bound, across policy changes.
pub struct VnicFw {
    pub id: PortId,
    pub name: String,
    pub key: EndpointKey,
    /// Everything a packet crossing the zone reads or writes, under the one lock it takes.
    zone: Mutex<ZoneState>,
    pub counters: VnicFwCounters,
    limits: [RateLimiter; LIMITERS],
    /// The table held more than [`BIG_TABLE`] connections when last grown or swept (a hint).
    big_table: AtomicBool,
    /// [`FwState::epoch`] of the state the zone was last re-checked under. Written under the
    /// zone's lock; a crossing that loaded an older state loads it again (see "Policy
    /// changes" in the module doc), and a burst's [`run`] of packets let through without the
    /// lock ends when it changes.
    rechecked: AtomicU64,
}

/// One vNIC's zone, behind [`VnicFw::zone`].
struct ZoneState {
    sf: StatefulFirewall,
    /// TCP connections the last re-checks cut, answered with an RST (see [`cut`]).
    cut: cut::CutSet,
    /// Per-rule hit counts of the zone's packets, not yet added to the shared counters.
    hits: RuleHits,
}

impl VnicFw {
    fn zone(&self) -> Zone {
        Zone(self.id.0)
    }

    fn lock(&self) -> MutexGuard<'_, ZoneState> {
        lock(&self.zone)
    }

    /// Updates [`VnicFw::big_table`] after the table grew or shrank.
    fn note_size(&self, z: &ZoneState) {
        let big = z.sf.conntrack().len() > BIG_TABLE;
        if big != self.big_table.load(Ordering::Relaxed) {
            self.big_table.store(big, Ordering::Relaxed);
        }
    }
}

#[derive(Clone)]
struct Bound {
    fw: Arc<VnicFw>,
    handle: Option<EndpointHandle>,
}

/// Maps read per packet. Keys are port and rule ids (not guest-controlled), so a fast
/// non-cryptographic hash is fine; SipHash cost ~15% of an established packet's time.
type FastMap<K, V> = foldhash::HashMap<K, V>;

/// Port ids below this are looked up per packet in [`FwState::dense`], an array, instead of
/// the map (ids are allocated in sequence from 0 and not reused; a daemon that has seen more
/// vNICs than this falls back to the map for the newer ones).
const DENSE_IDS: u32 = 4096;

/// What the packet threads read: loaded once per burst ([`PacketFilter::burst_state`]), or
/// once per frame outside one.
///
/// Aligned to a cache line so that the `Arc`'s reference counts, which each burst's load
/// and release write, do not share a line with the fields every frame reads.
#[derive(Default)]
#[repr(align(64))]
struct FwState {
    /// [`Firewall::instance`] of the firewall that published it: a burst state from another
    /// firewall is not used.
    instance: u64,
    snapshot: Option<Arc<PolicySnapshot>>,
    vnics: FastMap<PortId, Bound>,
    /// `vnics` again, indexed by port id for ids below [`DENSE_IDS`] (up to the largest bound
    /// one): a packet's two lookups are an index each instead of a hash probe each.
    dense: Vec<Option<Bound>>,
    rules: FastMap<RuleId, Arc<RuleStats>>,
    /// Distinct per published state and increasing (a process-wide sequence, published
    /// under the registry lock): per-zone caches of `rules` entries know when they are
    /// stale, and a zone knows whether a state is older than its last re-check.
    epoch: u64,
}

/// Source of [`FwState::epoch`].
static FW_STATE_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Source of [`Firewall::instance`].
static FIREWALL_INSTANCE: AtomicU64 = AtomicU64::new(1);

impl FwState {
    /// The vNIC bound as `id`, on the packet path.
    #[inline]
    fn bound(&self, id: PortId) -> Option<&Bound> {
        if id.0 < DENSE_IDS {
            self.dense.get(id.0 as usize).and_then(Option::as_ref)
        } else {
            self.vnics.get(&id)
        }
    }

    fn handle(&self, id: PortId) -> Option<EndpointHandle> {
        self.bound(id).and_then(|b| b.handle)
    }

    fn count_rule(&self, rule: Option<RuleId>, new: bool, bytes: u32) {
        if let Some(r) = rule.and_then(|id| self.rules.get(&id)) {
            r.hit(new, bytes);
        }
    }

    fn generation(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.generation())
    }
}

/// The writers' view, from which [`FwState`] is rebuilt.
#[derive(Default)]
struct Registry {
    snapshot: Option<Arc<PolicySnapshot>>,
    vnics: BTreeMap<PortId, Arc<VnicFw>>,
    rules: FastMap<RuleId, Arc<RuleStats>>,
}

/// What a policy re-check did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecheckReport {
    /// Connections examined (all tables).
    pub checked: usize,
    /// Connections cut because the new policy no longer allows them.
    pub cut: usize,
    /// Connections kept.
    pub kept: usize,
}

/// Per-vNIC firewall status, for `counters.json` and the API.
#[derive(Debug, Clone, Serialize)]
pub struct VnicFwStatus {
    pub id: u32,
    pub name: String,
    pub endpoint: String,
    pub realized: bool,
    /// Security identity of the endpoint in the current snapshot.
    pub identity: Option<u32>,
    pub connections: usize,
    pub counters: VnicFwCountersSnapshot,
    pub conntrack: ConntrackStatus,
}

/// Connection-table counters of one vNIC (dfw `CtStats`).
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackStatus {
    pub new: u64,
    pub picked_up: u64,
    pub established: u64,
    pub related: u64,
    pub untracked: u64,
    pub denied: u64,
    pub expired: u64,
    pub reopened: u64,
    pub recheck_cut: u64,
    pub drops: BTreeMap<&'static str, u64>,
    pub memory_bytes: usize,
}

/// How a conntrack drop is counted by the pipeline.
fn ct_drop(r: CtDropReason) -> PolicyDrop {
    match r {
        CtDropReason::TableFull | CtDropReason::ZoneFull => PolicyDrop::ConntrackFull,
        CtDropReason::Invalid(_) => PolicyDrop::ConntrackInvalid,
    }
}

/// The packet facts a flow event carries, by reference: the tuple is copied out only when a
/// record is written, not per packet.
#[derive(Clone, Copy)]
struct Seen<'a> {
    now: u64,
    /// An IP packet as conntrack saw it.
    meta: Option<&'a PacketMeta>,
    /// The frame, for the paths that are not an IP packet's.
    pkt: Option<&'a ParsedPacket>,
}

impl Seen<'_> {
    fn tuple(&self) -> Option<FiveTuple> {
        match (self.meta, self.pkt) {
            (Some(m), _) => Some(m.tuple),
            (None, Some(p)) => p.five_tuple(),
            (None, None) => None,
        }
    }
}

/// The stateful firewall (see the module doc).
pub struct Firewall {
    state: ArcSwap<FwState>,
    /// Distinct per firewall in the process (see [`FwState::instance`]).
    instance: u64,
    registry: Mutex<Registry>,
    ct_config: CtConfig,
    /// Every vNIC's table hashes with a clone of it, so a packet crossing two zones is
    /// hashed once.
    hasher: FlowHasher,
    sink: Option<FlowSink>,
    /// Frames from or to a port the firewall does not know (not bound): dropped.
    unknown_port_drops: AtomicU64,
}

impl Firewall {
    /// A firewall with no policy installed yet (every vNIC fails closed) and no vNIC bound.
    /// `ct_config` sizes each vNIC's table; `sink` receives flow events.
    pub fn new(ct_config: CtConfig, sink: Option<FlowSink>) -> Result<Firewall, CtConfigError> {
        ct_config.validate()?;
        let instance = FIREWALL_INSTANCE.fetch_add(1, Ordering::Relaxed);
        Ok(Firewall {
            state: ArcSwap::from_pointee(FwState {
                instance,
                ..FwState::default()
            }),
            instance,
            registry: Mutex::new(Registry::default()),
            hasher: FlowHasher::new(ct_config.hash_seed),
            ct_config,
            sink,
            unknown_port_drops: AtomicU64::new(0),
        })
    }

    /// Rebuilds and publishes the packet threads' state from the registry.
    fn publish(&self, reg: &mut Registry) {
        let mut st = FwState {
            instance: self.instance,
            snapshot: reg.snapshot.clone(),
            epoch: FW_STATE_EPOCH.fetch_add(1, Ordering::Relaxed),
            ..FwState::default()
        };
        let mut rules = FastMap::default();
        for (id, fw) in &reg.vnics {
            let view = reg.snapshot.as_ref().and_then(|s| s.endpoint(&fw.key));
            if let Some(v) = &view {
                for dir in [Direction::Ingress, Direction::Egress] {
                    for r in v.rules(dir) {
                        let stats = reg.rules.get(&r.rule_id).cloned().unwrap_or_default();
                        rules.insert(r.rule_id, stats);
                    }
                }
            }
            let bound = Bound {
                fw: fw.clone(),
                handle: view.map(|v| v.handle()),
            };
            if id.0 < DENSE_IDS {
                let i = id.0 as usize;
                if st.dense.len() <= i {
                    st.dense.resize(i + 1, None);
                }
                st.dense[i] = Some(bound.clone());
            }
            st.vnics.insert(*id, bound);
        }
        reg.rules = rules.clone();
        st.rules = rules;
        self.state.store(Arc::new(st));
    }

    /// Registers a vNIC (its connection table starts empty). It is realized as soon as the
    /// installed snapshot contains `key`.
    pub fn bind_vnic(&self, id: PortId, name: &str, key: EndpointKey) -> Result<(), CtConfigError> {
        let sf = StatefulFirewall::with_hasher(self.ct_config.clone(), self.hasher.clone())?;
        let fw = Arc::new(VnicFw {
            id,
            name: name.to_owned(),
            key,
            zone: Mutex::new(ZoneState {
                sf,
                cut: cut::CutSet::default(),
                hits: RuleHits::default(),
            }),
            counters: VnicFwCounters::default(),
            limits: std::array::from_fn(|_| RateLimiter::default()),
            big_table: AtomicBool::new(false),
            rechecked: AtomicU64::new(0),
        });
        let mut reg = lock(&self.registry);
        reg.vnics.insert(id, fw);
        self.publish(&mut reg);
        Ok(())
    }

    /// Forgets a vNIC and its connections. Returns whether it was bound.
    pub fn unbind_vnic(&self, id: PortId) -> bool {
        let mut reg = lock(&self.registry);
        let removed = reg.vnics.remove(&id);
        self.publish(&mut reg);
        drop(reg);
        // Its rules' counts so far stay counted (packet threads may still hold it a while).
        if let Some(fw) = &removed {
            fw.lock().hits.flush();
        }
        removed.is_some()
    }

    /// Installs a new realized policy for every vNIC. Established connections keep flowing
    /// until [`Firewall::recheck`] re-decides them.
    pub fn install(&self, snapshot: Arc<PolicySnapshot>) {
        let mut reg = lock(&self.registry);
        reg.snapshot = Some(snapshot);
        self.publish(&mut reg);
    }

    /// Generation of the installed snapshot, if any.
    pub fn generation(&self) -> Option<u64> {
        self.state.load().snapshot.as_ref().map(|s| s.generation())
    }

    /// The installed snapshot.
    pub fn snapshot(&self) -> Option<Arc<PolicySnapshot>> {
        self.state.load().snapshot.clone()
    }

    /// Re-decides every tracked connection under the installed policy, in the zone and
    /// direction it was admitted in: connections it no longer allows are removed (their next
    /// packet is a new flow and meets the policy again), the others keep their state and are
    /// re-marked with the new deciding rule. Connections of a vNIC that is not realized are
    /// all cut. O(connections).
    pub fn recheck(&self) -> RecheckReport {
        let st = self.state.load_full();
        let mut report = RecheckReport::default();
        for b in st.vnics.values() {
            let zone = b.fw.zone();
            let mut z = b.fw.lock();
            let z = &mut *z;
            // The marks are about to change: count what the old ones counted.
            z.hits.reset();
            let rechecked = b.fw.rechecked.load(Ordering::Relaxed).max(st.epoch);
            b.fw.rechecked.store(rechecked, Ordering::Release);
            let before = z.sf.conntrack().len();
            report.checked += before;
            let cut = match (b.handle, st.snapshot.as_deref()) {
                (Some(h), Some(snap)) => z.sf.recheck_with_cut(
                    snap,
                    |zn| (zn == zone).then_some(h),
                    |_, orig| z.cut.insert(orig),
                ),
                _ => z.sf.conntrack_mut().flush_zone(zone),
            };
            b.fw.note_size(z);
            report.cut += cut;
            report.kept += before - cut;
        }
        report
    }

    /// [`Firewall::install`] then [`Firewall::recheck`].
    pub fn apply(&self, snapshot: Arc<PolicySnapshot>) -> RecheckReport {
        self.install(snapshot);
        self.recheck()
    }

    /// Bounded expiry sweep of every table (a control-plane tick, for vNICs whose own batches
    /// are rare). Returns how many connections expired.
    pub fn expire_all(&self, now: u64, budget_per_vnic: usize) -> usize {
        let st = self.state.load();
        st.vnics
            .values()
            .map(|b| {
                let mut z = b.fw.lock();
                let n = z.sf.conntrack_mut().expire(now, budget_per_vnic);
                b.fw.note_size(&z);
                n
            })
            .sum()
    }

    /// The tracked connection `tuple` belongs to in vNIC `id`'s zone.
    pub fn connection(&self, id: PortId, tuple: &FiveTuple, now: u64) -> Option<ConnInfo> {
        let st = self.state.load();
        let b = st.vnics.get(&id)?;
        let found = b.fw.lock().sf.conntrack().lookup(b.fw.zone(), tuple, now);
        found.map(|(_, info)| info)
    }

    /// Connections tracked for vNIC `id`.
    pub fn connections(&self, id: PortId) -> Vec<ConnInfo> {
        let st = self.state.load();
        match st.vnics.get(&id) {
            Some(b) => b.fw.lock().sf.conntrack().iter().collect(),
            None => Vec::new(),
        }
    }

    /// Status of every bound vNIC.
    pub fn status(&self) -> Vec<VnicFwStatus> {
        let st = self.state.load();
        let mut out: Vec<VnicFwStatus> = st
            .vnics
            .values()
            .map(|b| {
                let z = b.fw.lock();
                let ct = z.sf.conntrack();
                let s = ct.stats();
                let identity = b.handle.and_then(|h| {
                    st.snapshot
                        .as_ref()
                        .and_then(|snap| snap.endpoint_by_handle(h))
                        .map(|v| v.identity().0)
                });
                VnicFwStatus {
                    id: b.fw.id.0,
                    name: b.fw.name.clone(),
                    endpoint: b.fw.key.to_string(),
                    realized: b.handle.is_some(),
                    identity,
                    connections: ct.len(),
                    counters: b.fw.counters.snapshot(),
                    conntrack: ConntrackStatus {
                        new: s.new,
                        picked_up: s.picked_up,
                        established: s.established,
                        related: s.related,
                        untracked: s.untracked,
                        denied: s.denied,
                        expired: s.expired,
                        reopened: s.reopened,
                        recheck_cut: s.recheck_cut,
                        drops: s
                            .drop_counts()
                            .filter(|(_, n)| *n != 0)
                            .map(|(r, n)| (r.as_str(), n))
                            .collect(),
                        memory_bytes: ct.memory_bytes(),
                    },
                }
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// Hit counters of every rule applying to a bound vNIC, by rule id.
    pub fn rule_counters(&self) -> BTreeMap<RuleId, RuleCounters> {
        let st = self.state.load();
        for b in st.vnics.values() {
            b.fw.lock().hits.flush();
        }
        st.rules.iter().map(|(id, r)| (*id, r.snapshot())).collect()
    }

    pub fn unknown_port_drops(&self) -> u64 {
        self.unknown_port_drops.load(Ordering::Relaxed)
    }

    // --- packet path -------------------------------------------------------------------

    /// Pushes a flow event for `fw`, within the vNIC's per-category rate budget.
    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        fw: &VnicFw,
        seen: Seen<'_>,
        direction: Direction,
        verdict: FlowVerdict,
        reason: Option<DropReason>,
        decider: FlowDecider,
        generation: u64,
    ) {
        let Some(sink) = &self.sink else { return };
        let (slot, budget) = match reason {
            Some(r) => (r as usize, DROP_RECORDS_PER_SECOND),
            None => (LIMIT_NEW, NEW_RECORDS_PER_SECOND),
        };
        if !fw.limits[slot].allow(seen.now, budget) {
            fw.counters.log_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (icmp_type, icmp_code) = seen.meta.map_or((0, 0), |m| (m.icmp_type, m.icmp_code));
        sink.push(FlowEvent {
            time: seen.now,
            vnic: fw.id,
            direction,
            tuple: seen.tuple(),
            icmp_type,
            icmp_code,
            verdict,
            reason,
            decider,
            generation,
        });
    }

    fn not_realized(
        &self,
        fw: &VnicFw,
        direction: Direction,
        seen: Seen<'_>,
        generation: u64,
    ) -> FilterVerdict {
        fw.counters.not_realized.fetch_add(1, Ordering::Relaxed);
        self.log(
            fw,
            seen,
            direction,
            FlowVerdict::Dropped,
            Some(DropReason::PolicyNotRealized),
            FlowDecider::NotRealized,
            generation,
        );
        FilterVerdict::Drop(PolicyDrop::NotRealized)
    }

    /// An admitted new flow (or untracked packet) at `fw`'s side `d`.
    fn admitted(&self, fw: &VnicFw, d: &SideDecision, seen: Seen<'_>, generation: u64) {
        let c = &fw.counters;
        let verdict = if d.audit {
            c.audited.fetch_add(1, Ordering::Relaxed);
            FlowVerdict::Audit
        } else {
            FlowVerdict::Forwarded
        };
        match d.direction {
            Direction::Egress => c.allowed_egress.fetch_add(1, Ordering::Relaxed),
            Direction::Ingress => c.allowed_ingress.fetch_add(1, Ordering::Relaxed),
        };
        self.log(
            fw,
            seen,
            d.direction,
            verdict,
            None,
            FlowDecider::Policy(d.by),
            generation,
        );
    }

    /// A flow refused by `fw`'s side `d`; `cut`: the packet is a segment of a connection a
    /// policy change cut ([`cut::CutSet::answers`]).
    fn refused(
        &self,
        st: &FwState,
        fw: &VnicFw,
        d: &SideDecision,
        cut: bool,
        seen: Seen<'_>,
    ) -> FilterVerdict {
        let c = &fw.counters;
        match d.direction {
            Direction::Egress => c.denied_egress.fetch_add(1, Ordering::Relaxed),
            Direction::Ingress => c.denied_ingress.fetch_add(1, Ordering::Relaxed),
        };
        st.count_rule(d.by.rule_id(), true, seen.meta.map_or(0, |m| m.len));
        // The next segment of a connection a policy change cut is reset, not left to time out.
        let reset_cut = d.reject_kind().is_none() && cut;
        if reset_cut {
            c.cut_reset.fetch_add(1, Ordering::Relaxed);
        }
        let kind = d
            .reject_kind()
            .or(reset_cut.then_some(crate::filter::RejectKind::TcpRst));
        let (verdict, reason, out) = match kind {
            Some(kind) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                (
                    FlowVerdict::Rejected,
                    DropReason::PolicyRejected,
                    FilterVerdict::Reject(kind),
                )
            }
            None => (
                FlowVerdict::Dropped,
                DropReason::PolicyDenied,
                FilterVerdict::Drop(PolicyDrop::Denied),
            ),
        };
        self.log(
            fw,
            seen,
            d.direction,
            verdict,
            Some(reason),
            FlowDecider::Policy(d.by),
            st.generation(),
        );
        out
    }

    fn dropped(
        &self,
        fw: &VnicFw,
        direction: Direction,
        seen: Seen<'_>,
        why: PolicyDrop,
        decider: FlowDecider,
        generation: u64,
    ) -> FilterVerdict {
        self.log(
            fw,
            seen,
            direction,
            FlowVerdict::Dropped,
            Some(why.reason()),
            decider,
            generation,
        );
        FilterVerdict::Drop(why)
    }

    /// An IP packet between `sender` (a local vNIC, if it comes from one) and `receiver`,
    /// both bound in `st`.
    fn ip_packet(
        &self,
        st: &FwState,
        ctx: &FilterContext,
        runs: Option<&Runs>,
        sender: Option<&Bound>,
        receiver: Option<&Bound>,
        meta: &PacketMeta,
    ) -> FilterVerdict {
        let now = ctx.now;
        let seen = Seen {
            now,
            meta: Some(meta),
            pkt: None,
        };
        // Admissions are logged once the whole path let the packet through, so a flow the
        // receiver refuses is not also logged as forwarded at the sender.
        let mut at_sender = None;
        let mut at_receiver = None;
        // Hashed once for both zones.
        let hashed = self.hasher.packet(meta);
        if let (Some(_), Some(r)) = (sender, receiver) {
            // The receiver's table is read second: start loading its line now, so that on a
            // table bigger than the caches its miss overlaps with the sender's. (Not worth an
            // extra lock on a small table, which stays in the caches.)
            if r.fw.big_table.load(Ordering::Relaxed) {
                r.fw.lock()
                    .sf
                    .conntrack()
                    .prefetch_packet(r.fw.zone(), &hashed);
            }
        }
        // The zones that found the packet established, while all did (see [`run`]).
        let mut run_zones = [None; 2];
        let mut established = true;
        if let Some(s) = sender {
            match self.cross(st, s, Direction::Egress, &hashed, seen) {
                Crossed::Pass(admitted) => {
                    at_sender = admitted.map(|a| (s, a));
                    established = false;
                }
                Crossed::Established(z) => run_zones[0] = Some(z),
                Crossed::Stop(v) => return v,
            }
        }
        if let Some(r) = receiver {
            match self.cross(st, r, Direction::Ingress, &hashed, seen) {
                Crossed::Pass(admitted) => {
                    at_receiver = admitted.map(|a| (r, a));
                    established = false;
                }
                Crossed::Established(z) => run_zones[1] = Some(z),
                Crossed::Stop(v) => return v,
            }
        }
        if let Some(runs) = runs {
            if established && meta.tuple.protocol == IpProtocol::Udp {
                let run = Run::new(ctx.ingress, ctx.egress, meta.tuple, now, run_zones);
                runs.start(st, run);
            }
        }
        // Two `if let`s: a packet of a tracked connection has neither, and an array of the
        // two options cost a copy of both on every packet.
        if let Some((b, (d, gen))) = &at_sender {
            self.admitted(&b.fw, d, seen, *gen);
        }
        if let Some((b, (d, gen))) = &at_receiver {
            self.admitted(&b.fw, d, seen, *gen);
        }
        FilterVerdict::Forward
    }

    /// The packet crossing one vNIC's zone in `direction`, under `st` (the state `b` is
    /// from) unless the zone was re-checked under a newer one since `st` was loaded.
    ///
    /// One lock (the zone's), no atomic read-modify-write besides it and no shared map
    /// lookup for a packet of a tracked connection: its rule is counted in the zone
    /// ([`RuleHits`]), keyed by the connection's mark.
    fn cross(
        &self,
        st: &FwState,
        b: &Bound,
        direction: Direction,
        hashed: &HashedPacket<'_>,
        seen: Seen<'_>,
    ) -> Crossed {
        let meta = hashed.meta();
        let mut guard = b.fw.lock();
        // See "Policy changes" in the module doc: a state older than the zone's last
        // re-check could admit a connection that re-check did not see.
        let fresh;
        let rechecked = b.fw.rechecked.load(Ordering::Relaxed);
        let stale = st.epoch < rechecked;
        let (st, handle) = if !stale {
            (st, b.handle)
        } else {
            fresh = self.state.load();
            (&**fresh, fresh.handle(b.fw.id))
        };
        let gen = st.generation();
        let (Some(snap), Some(endpoint)) = (st.snapshot.as_deref(), handle) else {
            drop(guard);
            return Crossed::Stop(self.not_realized(&b.fw, direction, seen, gen));
        };
        let vnic = Vnic {
            zone: b.fw.zone(),
            endpoint,
        };
        let z = &mut *guard;
        let out =
            z.sf.process_hashed_packet(snap, vnic, direction, hashed, seen.now);
        match out.ct {
            CtVerdict::Established { mark, .. } | CtVerdict::Related { mark, .. } => {
                let sf = &z.sf;
                z.hits.count(mark, st.epoch, false, meta.len, || {
                    let rule = sf.describe(Mark(mark)).and_then(|i| i.rule_id())?;
                    st.rules.get(&rule).cloned()
                });
                match out.ct {
                    // A run is counted under the burst's state: not from a crossing that
                    // had to decide under a newer one.
                    CtVerdict::Established { .. } if !stale => Crossed::Established(RunZone {
                        port: b.fw.id,
                        rechecked,
                        // Only a UDP packet may start a run (see [`run`]).
                        rule: (meta.tuple.protocol == IpProtocol::Udp)
                            .then(|| z.sf.describe(Mark(mark)).and_then(|i| i.rule_id()))
                            .flatten(),
                    }),
                    _ => Crossed::Pass(None),
                }
            }
            CtVerdict::New { mark, .. } | CtVerdict::Untracked { mark } => {
                b.fw.note_size(z);
                match out.decision {
                    Some(d) => {
                        let d = SideDecision::from_dfw(&d);
                        z.hits.count(mark, st.epoch, true, meta.len, || {
                            st.rules.get(&d.by.rule_id()?).cloned()
                        });
                        Crossed::Pass(Some((d, gen)))
                    }
                    None => Crossed::Pass(None),
                }
            }
            CtVerdict::Denied { .. } => {
                let refused = match (out.decision, out.action) {
                    (Some(d), FlowAction::Drop | FlowAction::Reject) => {
                        let d = SideDecision::from_dfw(&d);
                        let cut = d.reject_kind().is_none() && z.cut.answers(meta);
                        Some((d, cut))
                    }
                    _ => None,
                };
                // The flow log and rule counters are not the zone's: not under its lock.
                drop(guard);
                Crossed::Stop(match refused {
                    Some((d, cut)) => self.refused(st, &b.fw, &d, cut, seen),
                    // No decision: the endpoint left the snapshot under us. Fail closed.
                    None => self.not_realized(&b.fw, direction, seen, gen),
                })
            }
            CtVerdict::Dropped(r) => {
                drop(guard);
                Crossed::Stop(self.dropped(
                    &b.fw,
                    direction,
                    seen,
                    ct_drop(r),
                    FlowDecider::Conntrack,
                    gen,
                ))
            }
        }
    }
}

/// The firewall's [`BurstState`]: the published state a burst loaded and its [`run`]s, which
/// are counted when the burst ends.
struct FwBurst {
    st: Arc<FwState>,
    runs: Runs,
}

impl Drop for FwBurst {
    fn drop(&mut self) {
        self.runs.finish(&self.st);
    }
}

/// What became of a packet at one vNIC crossing.
enum Crossed {
    /// Passes; with the decision (and snapshot generation) if it opened a connection.
    Pass(Option<(SideDecision, u64)>),
    /// Passes as a packet of an established connection (a run may start from it).
    Established(RunZone),
    Stop(FilterVerdict),
}

impl PacketFilter for Firewall {
    fn burst_state(&self) -> BurstState {
        BurstState::new(Box::new(FwBurst {
            st: self.state.load_full(),
            runs: Runs::default(),
        }))
    }

    fn filter(&self, ctx: &FilterContext, pkt: &ParsedPacket) -> FilterVerdict {
        let loaded;
        let (st, runs): (&FwState, _) = match ctx.burst.get::<FwBurst>() {
            Some(b) if b.st.instance == self.instance => (&b.st, Some(&b.runs)),
            _ => {
                loaded = self.state.load();
                (&loaded, None)
            }
        };
        if runs.is_some_and(|r| r.extend(st, ctx.ingress, ctx.egress, ctx.now, pkt)) {
            return FilterVerdict::Forward;
        }
        let bound = |p: PortRef| match p {
            PortRef::Vnic(id) => st.bound(id).map(Some).ok_or(()),
            PortRef::Uplink => Ok(None),
        };
        let (Ok(sender), Ok(receiver)) = (bound(ctx.ingress), bound(ctx.egress)) else {
            self.unknown_port_drops.fetch_add(1, Ordering::Relaxed);
            return FilterVerdict::Drop(PolicyDrop::NotRealized);
        };
        // For the flow records of the paths that are not an IP packet's (it has its own).
        let seen = || Seen {
            now: ctx.now,
            meta: None,
            pkt: Some(pkt),
        };
        let gen = || st.generation();
        // Fail closed before anything else, control traffic included.
        if let Some(s) = sender.filter(|b| b.handle.is_none()) {
            return self.not_realized(&s.fw, Direction::Egress, seen(), gen());
        }
        if let Some(r) = receiver.filter(|b| b.handle.is_none()) {
            return self.not_realized(&r.fw, Direction::Ingress, seen(), gen());
        }
        let (side, direction) = match (sender, receiver) {
            (Some(s), _) => (s, Direction::Egress),
            (None, Some(r)) => (r, Direction::Ingress),
            // Uplink to uplink: the switch never asks.
            (None, None) => return FilterVerdict::Drop(PolicyDrop::NotRealized),
        };
        match classify(pkt, ctx.ingress == PortRef::Uplink) {
            Class::Control(_) => {
                side.fw.counters.control.fetch_add(1, Ordering::Relaxed);
                FilterVerdict::Forward
            }
            Class::Ip { ref meta } => self.ip_packet(st, ctx, runs, sender, receiver, meta),
            Class::Fragment => self.dropped(
                &side.fw,
                direction,
                seen(),
                PolicyDrop::Fragment,
                FlowDecider::Protocol,
                gen(),
            ),
            Class::NotIp => self.dropped(
                &side.fw,
                direction,
                seen(),
                PolicyDrop::NotIp,
                FlowDecider::Protocol,
                gen(),
            ),
        }
    }

    fn end_batch(&self, ingress: PortRef, now: u64) {
        if let PortRef::Vnic(id) = ingress {
            let st = self.state.load();
            if let Some(b) = st.bound(id) {
                let mut z = b.fw.lock();
                z.sf.conntrack_mut().expire(now, EXPIRE_BUDGET_PER_BATCH);
                b.fw.note_size(&z);
                // Readers flush too; this keeps the shared counters current within a batch.
                z.hits.flush();
            }
        }
    }

    fn observe_drop(&self, ingress: PortRef, pkt: &ParsedPacket, reason: DropReason, now: u64) {
        let PortRef::Vnic(id) = ingress else { return };
        let st = self.state.load();
        if let Some(b) = st.bound(id) {
            let seen = Seen {
                now,
                meta: None,
                pkt: Some(pkt),
            };
            self.log(
                &b.fw,
                seen,
                Direction::Egress,
                FlowVerdict::Dropped,
                Some(reason),
                FlowDecider::SpoofGuard,
                st.generation(),
            );
        }
    }
}

#[cfg(test)]
mod tests;

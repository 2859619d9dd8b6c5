//! Stateful connection tracking for the vNIC firewall.
//!
//! [`ConnTrack::process`] is called once per packet with the packet's zone (its vNIC), the
//! parsed [`PacketMeta`], the current time and a policy decision closure. The closure runs only
//! for the first packet of a connection: packets of tracked connections, in either direction,
//! pass without a policy lookup, which is what makes a stateful firewall cheap and what lets
//! replies through a default-deny policy.
//!
//! Design, for a hot path of one hash probe and one slab access per packet:
//! - [`table`]: a slab of compact entries plus one [`index`] (cache-line buckets) that maps
//!   both direction keys of an entry to its slot. Randomly seeded hasher (keys are guest
//!   controlled).
//! - [`tcp`]: pf-style peer states (which the NSX/pf timers are defined on) and Linux-style
//!   sequence window tracking.
//! - Expiry is lazy on lookup (a dead entry is never used) plus a bounded clock-hand sweep,
//!   [`ConnTrack::expire`], which the caller runs with a budget (like Linux's conntrack GC
//!   worker). Nothing scans the table per packet.
//! - Drops are counted by reason in [`CtStats`]; the per-packet result is a [`CtVerdict`].

mod config;
mod entry;
mod index;
mod packet;
mod stats;
mod table;
mod tcp;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use config::{CtConfig, CtConfigError, Timeouts, MAX_TABLE_ENTRIES};
pub use entry::{ConnInfo, ConnState, Direction, UdpState, Zone};
pub use packet::{PacketMeta, TcpFlags};
pub use stats::{CtDropReason, CtStats, InvalidReason};
pub use table::{FlowHasher, HashedPacket};
pub use tcp::TcpPeerState;

use config::TimeoutClass;
use entry::{is_self_addressed, Entry, ProtoState};
use packet::PacketKind;
use table::Table;
use tcp::TcpConn;

use crate::flow::FiveTuple;

/// Packets whose lookups [`ConnTrack::process_burst`] overlaps. 32 is a typical vhost-user /
/// DPDK burst and keeps the per-burst scratch state on the stack.
pub const BURST: usize = 32;

/// The policy's answer for a new connection (or for a re-check of an existing one).
///
/// `mark` is caller defined and stored with the connection, e.g. the id of the deciding rule
/// for flow logs and per-rule statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow { mark: u64 },
    Deny { mark: u64 },
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtVerdict {
    /// First packet of a connection; the decision allowed it and the connection is now tracked.
    New { mark: u64, picked_up: bool },
    /// Packet of a tracked connection; no policy lookup was made.
    Established { dir: Direction, mark: u64 },
    /// ICMP error about a tracked connection; `dir` is the direction of the quoted packet.
    Related { dir: Direction, mark: u64 },
    /// Not subject to tracking (ICMP other than echo and errors); the decision allowed this
    /// packet alone.
    Untracked { mark: u64 },
    /// The decision denied the first packet. Nothing was tracked.
    Denied { mark: u64 },
    /// Conntrack dropped the packet; the reason has been counted in [`CtStats`].
    Dropped(CtDropReason),
}

impl CtVerdict {
    /// Whether the packet may be forwarded.
    pub const fn passes(&self) -> bool {
        matches!(
            self,
            Self::New { .. }
                | Self::Established { .. }
                | Self::Related { .. }
                | Self::Untracked { .. }
        )
    }
}

/// Where [`ConnTrack::process_hashed`] gets a packet's key hash from, when it needs one.
#[derive(Clone, Copy)]
enum KeyHash<'p, 'm> {
    /// Already computed, for this table's zone.
    Known(u64),
    /// The packet's shared tuple hash ([`HashedPacket`]), computed on first use.
    Packet(&'p HashedPacket<'m>),
    /// Computed from the tuple.
    Compute,
}

/// Outcome of handling a packet against an existing entry.
enum Existing {
    Verdict(CtVerdict),
    /// The entry is gone (expired, or a closed TCP connection being reopened): treat the
    /// packet as the first of a new connection.
    Gone,
}

/// The connection table of one packet-processing thread.
pub struct ConnTrack {
    cfg: CtConfig,
    timeouts_ns: [u64; TimeoutClass::COUNT],
    table: Table,
    stats: CtStats,
    /// No full-table reclaim before this time: the last one found nothing expired.
    reclaim_after: u64,
}

/// After a full-table reclaim that found nothing expired, how long new connections are
/// refused without sweeping again. A flood of new flows into a full table of live entries
/// would otherwise sweep [`CtConfig::full_table_reclaim`] slots per refused packet for
/// nothing (measured: a third of a core at 0.4 M new flows/s); expired entries are still
/// reclaimed within this delay, and by the regular `expire` sweep.
pub const FULL_TABLE_RECLAIM_BACKOFF_NS: u64 = 1_000_000;

impl std::fmt::Debug for ConnTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTrack")
            .field("cfg", &self.cfg)
            .field("len", &self.table.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ConnTrack {
    pub fn new(cfg: CtConfig) -> Result<Self, CtConfigError> {
        let hasher = FlowHasher::new(cfg.hash_seed);
        Self::with_hasher(cfg, hasher)
    }

    /// A table hashing with `hasher` (instead of one from `cfg.hash_seed`): tables that share
    /// a hasher use one [`HashedPacket`] hash for a packet crossing several of them.
    pub fn with_hasher(cfg: CtConfig, hasher: FlowHasher) -> Result<Self, CtConfigError> {
        cfg.validate()?;
        let table = Table::new(
            cfg.initial_capacity.min(cfg.max_entries),
            cfg.max_entries,
            hasher,
        );
        Ok(Self {
            timeouts_ns: cfg.timeouts.to_nanos(),
            cfg,
            table,
            stats: CtStats::default(),
            reclaim_after: 0,
        })
    }

    pub fn config(&self) -> &CtConfig {
        &self.cfg
    }

    /// The table's hasher: [`FlowHasher::packet`] with it hashes packets for
    /// [`Self::process_hashed_packet`].
    pub fn hasher(&self) -> &FlowHasher {
        self.table.hasher()
    }

    pub fn stats(&self) -> &CtStats {
        &self.stats
    }

    /// Entries held, including expired ones not yet swept (they count toward the limits until
    /// [`Self::expire`], a lookup, or a full-table reclaim removes them).
    pub fn len(&self) -> usize {
        self.table.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    pub fn zone_len(&self, zone: Zone) -> usize {
        self.table.zone_len(zone.0) as usize
    }

    /// Override the per-zone limit for `zone` (`None`: back to `max_entries_per_zone`). Lowering
    /// a limit below the zone's current count only stops new connections.
    pub fn set_zone_limit(&mut self, zone: Zone, limit: Option<u32>) {
        self.table.set_zone_limit(zone.0, limit);
    }

    pub fn zone_limit(&self, zone: Zone) -> u32 {
        self.table.zone_limit(zone.0, self.cfg.max_entries_per_zone)
    }

    /// Heap bytes held by the table (slab + index + bookkeeping, by capacity).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// Start loading, without waiting, the part of the table that processing `tuple` in `zone`
    /// reads first (its index bucket), so that the cache miss overlaps with other work: e.g.
    /// a packet crossing two vNICs' tables prefetches the second while the first processes it.
    #[inline]
    pub fn prefetch(&self, zone: Zone, tuple: &FiveTuple) {
        self.table.prefetch_bucket(self.table.hash(zone.0, tuple));
    }

    /// [`Self::prefetch`] for a hashed packet.
    #[inline]
    pub fn prefetch_packet(&self, zone: Zone, pkt: &HashedPacket<'_>) {
        self.table
            .prefetch_bucket(self.table.hash_packet(zone.0, pkt));
    }

    /// Classify one packet, updating connection state and counters.
    ///
    /// `decide` is called only when the packet would start a new connection (or is an
    /// untracked ICMP message); it is never called for packets of tracked connections.
    pub fn process<F>(&mut self, zone: Zone, pkt: &PacketMeta, now: u64, decide: F) -> CtVerdict
    where
        F: FnOnce(&PacketMeta) -> Decision,
    {
        self.process_hashed(zone, pkt, now, KeyHash::Compute, decide)
    }

    /// [`Self::process`] for a packet hashed by [`FlowHasher::packet`]: if by this table's
    /// hasher, the hash is not computed again (a packet crossing several zones is hashed
    /// once); by another, it is. Same results as `process`.
    #[inline]
    pub fn process_hashed_packet<F>(
        &mut self,
        zone: Zone,
        pkt: &HashedPacket<'_>,
        now: u64,
        decide: F,
    ) -> CtVerdict
    where
        F: FnOnce(&PacketMeta) -> Decision,
    {
        self.process_hashed(zone, pkt.meta(), now, KeyHash::Packet(pkt), decide)
    }

    /// [`Self::process`] for a burst of packets of one zone (a vNIC queue poll), in order,
    /// appending one verdict per packet to `out` (cleared first; reuse it to avoid allocating).
    ///
    /// Same results as calling `process` for each packet, but faster on big tables: for every
    /// group of [`BURST`] packets the index buckets and then the slab entries are loaded first,
    /// all independent of each other, so their cache misses overlap instead of being paid one
    /// after the other (the bulk-lookup technique of DPDK's `rte_hash`).
    pub fn process_burst<F>(
        &mut self,
        zone: Zone,
        pkts: &[PacketMeta],
        now: u64,
        mut decide: F,
        out: &mut Vec<CtVerdict>,
    ) where
        F: FnMut(&PacketMeta) -> Decision,
    {
        out.clear();
        for chunk in pkts.chunks(BURST) {
            let mut hashes = [0u64; BURST];
            let mut slots = [u32::MAX; BURST];
            for (h, p) in hashes.iter_mut().zip(chunk) {
                *h = self.table.hash(zone.0, &p.tuple);
            }
            for (s, h) in slots.iter_mut().zip(&hashes) {
                *s = self.table.touch_bucket(*h).unwrap_or(u32::MAX);
            }
            let mut sink = 0u64;
            for s in &slots[..chunk.len()] {
                sink ^= self.table.touch_slot(*s);
            }
            // Keep the loads: their only purpose is to bring the lines in.
            std::hint::black_box(sink);
            for (p, h) in chunk.iter().zip(hashes) {
                out.push(self.process_hashed(zone, p, now, KeyHash::Known(h), &mut decide));
            }
        }
    }

    /// `key`: where the hash of `(zone, pkt.tuple)` comes from, if it is needed at all.
    #[inline]
    fn process_hashed<F>(
        &mut self,
        zone: Zone,
        pkt: &PacketMeta,
        now: u64,
        key: KeyHash<'_, '_>,
        decide: F,
    ) -> CtVerdict
    where
        F: FnOnce(&PacketMeta) -> Decision,
    {
        let kind = PacketKind::of(pkt);
        match kind {
            PacketKind::IcmpError => return self.related(zone, pkt, now),
            PacketKind::IcmpOther => {
                self.stats.untracked += 1;
                return match decide(pkt) {
                    Decision::Allow { mark } => CtVerdict::Untracked { mark },
                    Decision::Deny { mark } => {
                        self.stats.denied += 1;
                        CtVerdict::Denied { mark }
                    }
                };
            }
            PacketKind::Tcp if !pkt.tcp_flags.is_valid_combination() => {
                return self.drop(CtDropReason::Invalid(InvalidReason::BadFlags));
            }
            _ => {}
        }

        let table = &self.table;
        let (found, hash) = table.find_hinted(zone.0, &pkt.tuple, || match key {
            KeyHash::Known(h) => h,
            KeyHash::Packet(p) => table.hash_packet(zone.0, p),
            KeyHash::Compute => table.hash(zone.0, &pkt.tuple),
        });
        if let Some((slot, dir)) = found {
            match self.existing(slot, dir, kind, pkt, now) {
                Existing::Verdict(v) => return v,
                Existing::Gone => {}
            }
        }
        // Found by the hint but gone (expired, reopened): the insert needs the hash.
        let hash = hash.unwrap_or_else(|| self.table.hash(zone.0, &pkt.tuple));
        self.new_connection(zone, kind, pkt, now, hash, decide)
    }

    /// Counts `packets` more packets (`bytes` of IP in all) of the tracked datagram (UDP)
    /// connection that `tuple` (as seen on the wire) belongs to in `zone`, all seen at `now`
    /// right after [`Self::process`] returned [`CtVerdict::Established`] for a packet of the
    /// same tuple at the same `now`: the table ends up as if `process` had seen each of them
    /// (that first packet made every state transition the run would make, and set the timer
    /// they would set). For callers that let a run of one flow's packets through on the
    /// first one's verdict. Returns the connection's mark. `None` if the connection is gone
    /// (cut or expired since): then only the statistics count the packets, which were let
    /// through as its packets; also `None`, counting nothing, for a connection that is not a
    /// datagram one.
    pub fn count_datagram_run(
        &mut self,
        zone: Zone,
        tuple: &FiveTuple,
        packets: u64,
        bytes: u64,
        now: u64,
    ) -> Option<u64> {
        let table = &self.table;
        let (found, _) = table.find_hinted(zone.0, tuple, || table.hash(zone.0, tuple));
        let entry = found.and_then(|(slot, dir)| Some((self.table.get_mut(slot)?, dir)));
        let (entry, dir) = match entry {
            Some((e, _)) if !matches!(e.proto, ProtoState::Datagram(_)) => return None,
            Some((e, dir)) if !e.is_expired(now) => (e, dir),
            _ => {
                self.stats.established += packets;
                return None;
            }
        };
        let i = dir.index();
        entry.packets[i] = entry.packets[i].wrapping_add(packets);
        entry.bytes[i] = entry.bytes[i].wrapping_add(bytes);
        entry.expires = now.saturating_add(self.timeouts_ns[entry.timeout_class() as usize]);
        self.stats.established += packets;
        Some(entry.mark)
    }

    /// Packet of a tracked connection.
    #[inline]
    fn existing(
        &mut self,
        slot: u32,
        dir: Direction,
        kind: PacketKind,
        pkt: &PacketMeta,
        now: u64,
    ) -> Existing {
        let Some(entry) = self.table.get_mut(slot) else {
            return Existing::Gone;
        };
        if entry.is_expired(now) {
            self.table.remove(slot);
            self.stats.expired += 1;
            return Existing::Gone;
        }
        match (&mut entry.proto, kind) {
            (ProtoState::Tcp(conn), PacketKind::Tcp) => {
                let flags = pkt.tcp_flags;
                if flags.contains(TcpFlags::SYN)
                    && !flags.contains(TcpFlags::ACK)
                    && conn.is_closed()
                {
                    // Port reuse after close / reset (Linux does the same): the new
                    // connection must pass policy again.
                    self.table.remove(slot);
                    self.stats.reopened += 1;
                    return Existing::Gone;
                }
                if let Err(reason) = conn.track(dir.index(), pkt) {
                    return Existing::Verdict(self.drop(CtDropReason::Invalid(reason)));
                }
            }
            (ProtoState::Datagram(state), _) => {
                *state = match (dir, *state) {
                    (Direction::Reply, _) | (_, UdpState::Multiple) => UdpState::Multiple,
                    (Direction::Original, _) => UdpState::Single,
                };
            }
            (ProtoState::IcmpEcho { replied }, PacketKind::IcmpEcho { request }) => {
                // Requests travel the original direction, replies the reply direction. An echo
                // the other way is a different exchange whose id collides with this one.
                if request != (dir == Direction::Original) {
                    return Existing::Verdict(
                        self.drop(CtDropReason::Invalid(InvalidReason::UnexpectedIcmp)),
                    );
                }
                // pf: every packet after the first runs on the shorter "error reply" timer.
                *replied = true;
            }
            // The protocol is part of the key, so a TCP entry only matches TCP packets, etc.
            _ => {
                return Existing::Verdict(
                    self.drop(CtDropReason::Invalid(InvalidReason::UnexpectedIcmp)),
                )
            }
        }
        entry.expires = now.saturating_add(self.timeouts_ns[entry.timeout_class() as usize]);
        entry.count(dir, pkt.len);
        self.stats.established += 1;
        Existing::Verdict(CtVerdict::Established {
            dir,
            mark: entry.mark,
        })
    }

    /// First packet of a would-be connection.
    fn new_connection<F>(
        &mut self,
        zone: Zone,
        kind: PacketKind,
        pkt: &PacketMeta,
        now: u64,
        hash: u64,
        decide: F,
    ) -> CtVerdict
    where
        F: FnOnce(&PacketMeta) -> Decision,
    {
        let invalid = |r| CtDropReason::Invalid(r);
        let (proto, picked_up) = match kind {
            PacketKind::Tcp => {
                let f = pkt.tcp_flags;
                let syn = f.contains(TcpFlags::SYN);
                let ack = f.contains(TcpFlags::ACK);
                let fin_rst = f.contains(TcpFlags::FIN) || f.contains(TcpFlags::RST);
                if syn && !ack {
                    (ProtoState::Tcp(TcpConn::from_syn(pkt)), false)
                } else if !syn && ack && !fin_rst && self.cfg.pickup_established {
                    (ProtoState::Tcp(TcpConn::picked_up(pkt)), true)
                } else {
                    return self.drop(invalid(InvalidReason::NotSyn));
                }
            }
            PacketKind::Datagram => (ProtoState::Datagram(UdpState::First), false),
            PacketKind::IcmpEcho { request: true } => {
                (ProtoState::IcmpEcho { replied: false }, false)
            }
            PacketKind::IcmpEcho { request: false }
            | PacketKind::IcmpError
            | PacketKind::IcmpOther => {
                return self.drop(invalid(InvalidReason::UnexpectedIcmp));
            }
        };
        if is_self_addressed(&pkt.tuple) {
            return self.drop(invalid(InvalidReason::SelfAddressed));
        }
        if let Some(reason) = self.limit_reached(zone, now) {
            return self.drop(reason);
        }

        let mark = match decide(pkt) {
            Decision::Allow { mark } => mark,
            Decision::Deny { mark } => {
                self.stats.denied += 1;
                return CtVerdict::Denied { mark };
            }
        };
        let mut entry = Entry {
            orig: pkt.tuple,
            zone: zone.0,
            proto,
            expires: 0,
            mark,
            packets: [0; 2],
            bytes: [0; 2],
        };
        entry.expires = now.saturating_add(self.timeouts_ns[entry.timeout_class() as usize]);
        entry.count(Direction::Original, pkt.len);
        // `hash` is the key's: `entry.orig` is the packet's tuple, in the packet's zone.
        self.table.insert_hashed(entry, hash);
        self.stats.new += 1;
        self.stats.picked_up += u64::from(picked_up);
        CtVerdict::New { mark, picked_up }
    }

    /// Whether a new entry in `zone` would exceed a limit, after a bounded attempt to reclaim
    /// expired entries.
    fn limit_reached(&mut self, zone: Zone, now: u64) -> Option<CtDropReason> {
        let check = |t: &Table| {
            if t.len() >= self.cfg.max_entries {
                Some(CtDropReason::TableFull)
            } else if t.zone_len(zone.0) >= t.zone_limit(zone.0, self.cfg.max_entries_per_zone) {
                Some(CtDropReason::ZoneFull)
            } else {
                None
            }
        };
        // Under the limits: nothing to do. Otherwise try to reclaim expired entries first,
        // unless the last try found none a moment ago.
        let full = check(&self.table)?;
        if now < self.reclaim_after {
            return Some(full);
        }
        let reclaimed = self.table.sweep(now, self.cfg.full_table_reclaim as usize);
        self.stats.expired += reclaimed as u64;
        if reclaimed == 0 {
            self.reclaim_after = now.saturating_add(FULL_TABLE_RECLAIM_BACKOFF_NS);
        }
        check(&self.table)
    }

    /// ICMP error: passes if the quoted packet belongs to a tracked connection.
    fn related(&mut self, zone: Zone, pkt: &PacketMeta, now: u64) -> CtVerdict {
        let unrelated = CtDropReason::Invalid(InvalidReason::UnrelatedIcmpError);
        let Some(inner) = pkt.icmp_inner else {
            return self.drop(unrelated);
        };
        // The error goes back to whoever sent the quoted packet.
        if pkt.tuple.dst != inner.src {
            return self.drop(unrelated);
        }
        let Some((slot, dir)) = self.table.find(zone.0, &inner) else {
            return self.drop(unrelated);
        };
        match self.table.get(slot) {
            Some(e) if !e.is_expired(now) => {
                let mark = e.mark;
                self.stats.related += 1;
                CtVerdict::Related { dir, mark }
            }
            Some(_) => {
                self.table.remove(slot);
                self.stats.expired += 1;
                self.drop(unrelated)
            }
            None => self.drop(unrelated),
        }
    }

    #[inline]
    fn drop(&mut self, reason: CtDropReason) -> CtVerdict {
        self.stats.count_drop(reason);
        CtVerdict::Dropped(reason)
    }

    /// Incremental expiry: look at no more than `budget` slots (continuing where the previous
    /// call stopped) and remove the expired entries among them. Returns how many were removed.
    /// Call it regularly from the packet thread, e.g. with a budget of a few hundred per poll
    /// loop iteration, so that the whole slab is swept in a bounded time.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let removed = self.table.sweep(now, budget);
        self.stats.expired += removed as u64;
        removed
    }

    /// Re-evaluate every connection against a changed policy: `check(zone, original tuple,
    /// mark)` returns the new decision. Denied connections are removed (their next packet is
    /// a new connection again); allowed ones keep all their state and take the returned mark.
    /// Returns how many were cut. O(n): a control-plane operation.
    ///
    /// Tracked ICMP connections are always echo exchanges (the tuple's ports are the echo id).
    pub fn recheck<F>(&mut self, check: F) -> usize
    where
        F: FnMut(Zone, &FiveTuple, u64) -> Decision,
    {
        self.recheck_with_cut(check, |_, _| {})
    }

    /// [`Self::recheck`], telling `on_cut` the zone and original tuple of every connection it
    /// removes (so the data path can answer their next segments with a reset).
    pub fn recheck_with_cut<F, C>(&mut self, mut check: F, mut on_cut: C) -> usize
    where
        F: FnMut(Zone, &FiveTuple, u64) -> Decision,
        C: FnMut(Zone, &FiveTuple),
    {
        let mut cut = 0;
        for slot in 0..self.table.slot_count() {
            let Some(entry) = self.table.get_mut(slot) else {
                continue;
            };
            match check(Zone(entry.zone), &entry.orig, entry.mark) {
                Decision::Allow { mark } => entry.mark = mark,
                Decision::Deny { .. } => {
                    on_cut(Zone(entry.zone), &entry.orig);
                    self.table.remove(slot);
                    cut += 1;
                }
            }
        }
        self.stats.recheck_cut += cut as u64;
        cut
    }

    /// Remove every connection of `zone` (its vNIC went away). Returns how many. O(n).
    /// A limit override set with [`Self::set_zone_limit`] is kept.
    pub fn flush_zone(&mut self, zone: Zone) -> usize {
        let slots: Vec<u32> = self
            .table
            .live_slots()
            .filter(|s| self.table.get(*s).is_some_and(|e| e.zone == zone.0))
            .collect();
        for s in &slots {
            self.table.remove(*s);
        }
        slots.len()
    }

    /// The connection `tuple` belongs to in `zone`, in either direction, unless expired.
    /// Read only: does not refresh or count anything.
    pub fn lookup(&self, zone: Zone, tuple: &FiveTuple, now: u64) -> Option<(Direction, ConnInfo)> {
        let (slot, dir) = self.table.find(zone.0, tuple)?;
        let e = self.table.get(slot)?;
        (!e.is_expired(now)).then(|| (dir, e.info()))
    }

    /// Every entry held (expired ones included until removed), in slab order.
    pub fn iter(&self) -> impl Iterator<Item = ConnInfo> + '_ {
        self.table.entries().map(Entry::info)
    }

    #[cfg(test)]
    pub(crate) fn check_consistency(&self) -> Result<(), String> {
        self.table.check_consistency()
    }
}

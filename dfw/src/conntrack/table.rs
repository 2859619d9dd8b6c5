//! Storage: a slab of entries plus one hash index with one key per connection.
//!
//! Each connection is stored once, in `slots`, and indexed once: the index key is the
//! connection's *unordered* pair of endpoints (`{(src, sport), (dst, dport)}` plus zone and
//! protocol), so a packet in either direction hashes to the same index value, and which
//! direction it travels follows from comparing it with the entry's original tuple. Compared
//! with one index key per direction, a new connection writes one index bucket instead of two
//! (and the first is the bucket its lookup just loaded), and removing one touches one: on a
//! table bigger than the caches, each of those buckets is a cache miss.
//!
//! The [`Index`] holds slot numbers with 16-bit signatures; the key itself is read from the
//! slab when probing, which keeps the index at ~16 bytes per connection.
//!
//! Keys are guest controlled, so the hasher is seeded at random (foldhash): a guest cannot
//! precompute 5-tuples that collide in the index. The endpoints are ordered before hashing
//! (not combined symmetrically, e.g. by XOR, which would let a guest pick colliding port pairs
//! whatever the seed).
//!
//! The hash is in two steps: a [`FlowHasher`] hashes the tuple (no zone), and the table
//! folds the zone in with an XOR of a per-zone constant. Tables built with one [`FlowHasher`]
//! (e.g. every vNIC's of one firewall) can then share the first step: a packet crossing two
//! zones is hashed once ([`HashedPacket`]). Sharing the seed between tables gives a guest
//! nothing it did not have: collisions are as unknowable in every table as in one.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use foldhash::fast::{RandomState, SeedableRandomState};
use foldhash::SharedSeed;

use super::entry::{addr_bits, Direction, Entry};
use super::index::{prefetch, Index};
use super::packet::PacketMeta;
use crate::flow::FiveTuple;

#[derive(Debug, Clone, Copy, Default)]
struct ZoneCount {
    count: u32,
    /// Per-zone override of the default limit.
    limit: Option<u32>,
}

/// Tells hashers apart: a [`FlowHash`] is used by a table only if it comes from the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HasherId {
    /// From a fixed seed (tests): every hasher with that seed hashes alike.
    Seeded(u64),
    /// Randomly seeded: a process-wide sequence number.
    Random(u64),
}

static NEXT_RANDOM_HASHER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The seeded hash of connection keys (see the module doc). Cheap to clone; clones hash
/// alike, so tables built with clones share [`FlowHash`]es.
#[derive(Clone)]
pub struct FlowHasher {
    state: SeedableRandomState,
    id: HasherId,
}

impl std::fmt::Debug for FlowHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed stays out of logs.
        f.debug_struct("FlowHasher").finish_non_exhaustive()
    }
}

impl FlowHasher {
    /// `None`: a random seed (what the data path must use: keys are guest controlled);
    /// `Some`: a fixed one, for reproducible tests (see [`super::CtConfig::hash_seed`]).
    pub fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(s) => Self {
                state: SeedableRandomState::with_seed(s, SharedSeed::global_fixed()),
                id: HasherId::Seeded(s),
            },
            None => Self {
                state: SeedableRandomState::random(),
                id: HasherId::Random(
                    NEXT_RANDOM_HASHER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                ),
            },
        }
    }

    /// `meta` with its tuple's hash by this hasher, for
    /// [`super::ConnTrack::process_hashed_packet`] in each zone the packet crosses. The hash
    /// is computed when a table first needs it, at most once: a packet of the connection a
    /// table matched last needs none (see `Table::find_hinted`).
    #[inline]
    pub fn packet<'a>(&'a self, meta: &'a PacketMeta) -> HashedPacket<'a> {
        HashedPacket {
            meta,
            hasher: self,
            hash: std::cell::Cell::new(None),
        }
    }
}

/// A packet with the hash of its tuple by one [`FlowHasher`] ([`FlowHasher::packet`]),
/// computed on first use. Borrows the packet, so the hash cannot outlive or disagree with it.
#[derive(Debug, Clone)]
pub struct HashedPacket<'a> {
    meta: &'a PacketMeta,
    hasher: &'a FlowHasher,
    hash: std::cell::Cell<Option<u64>>,
}

impl<'a> HashedPacket<'a> {
    pub fn meta(&self) -> &'a PacketMeta {
        self.meta
    }

    /// The tuple's hash, before the zone is folded in.
    #[inline]
    fn tuple_hash(&self) -> u64 {
        match self.hash.get() {
            Some(h) => h,
            None => {
                let h = tuple_hash(&self.hasher.state, &self.meta.tuple);
                self.hash.set(Some(h));
                h
            }
        }
    }
}

pub(crate) struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: Index,
    hasher: FlowHasher,
    zones: HashMap<u32, ZoneCount, RandomState>,
    len: u32,
    /// Clock hand of the incremental expiry sweep.
    cursor: usize,
    /// The slot [`Self::find_hinted`] or an insert returned last ([`NO_SLOT`]: none).
    last: Cell<u32>,
    /// While the index grows: the next slab slot whose key may still be in the old array,
    /// and the slab length when the growth started (later slots were indexed in the new one).
    migrate_next: usize,
    migrate_end: usize,
}

/// Slab slots whose keys move to the grown index per insert. The old array holds at most
/// 3/4 of its ways and the new one is twice as big, so even one per insert would finish long
/// before the new array fills; but until a growth ends, a lookup that misses probes both
/// arrays. With 32, filling 1M connections from 1024 took 1.14-1.24x the time of a rebuild
/// in one go (4: 1.3-1.4x), and the longest insert went from 65-94 ms to 2-13 ms (allocating
/// the doubled array, freeing the old one).
const MIGRATE_PER_INSERT: usize = 32;

/// [`Table::last`] when no slot is remembered.
const NO_SLOT: u32 = u32::MAX;

/// Expired entries [`Table::sweep`] collects before removing them.
const SWEEP_GROUP: usize = 16;
/// How many slots ahead of the sweep hand the slab is prefetched: a few short sweeps per
/// batch are too short for the hardware prefetcher to pick up the stream.
const SWEEP_AHEAD: usize = 4;

/// The per-zone constant XORed into a tuple's hash (zone 0: none).
#[inline]
fn zone_salt(zone: u32) -> u64 {
    u64::from(zone).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Hash of the connection `t` belongs to in `zone`: the same for `t` and `t.reversed()`.
#[inline]
fn hash_key(hasher: &FlowHasher, zone: u32, t: &FiveTuple) -> u64 {
    tuple_hash(&hasher.state, t) ^ zone_salt(zone)
}

/// [`hash_key`] without the zone.
#[inline]
fn tuple_hash(hasher: &SeedableRandomState, t: &FiveTuple) -> u64 {
    let mut h = hasher.build_hasher();
    let proto = u64::from(t.protocol.number());
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let a = u64::from(s.to_bits()) << 16 | u64::from(t.src_port);
            let b = u64::from(d.to_bits()) << 16 | u64::from(t.dst_port);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            h.write_u64(lo);
            h.write_u64(hi);
            h.write_u64(proto);
        }
        (s, d) => {
            // Family in the port word: an IPv4 address and its zero-extended IPv6 twin differ.
            let end = |a: IpAddr, port: u16| {
                (addr_bits(a), u32::from(a.is_ipv6()) << 16 | u32::from(port))
            };
            let (a, b) = (end(s, t.src_port), end(d, t.dst_port));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            h.write_u128(lo.0);
            h.write_u128(hi.0);
            h.write_u64(u64::from(lo.1) << 32 | u64::from(hi.1));
            h.write_u64(1 << 16 | proto);
        }
    }
    h.finish()
}

/// Most slab slots [`Table::new`] reserves address space for (512 MiB of 128-byte entries).
const SLAB_RESERVE_MAX: usize = 1 << 22;

/// The slab of a table that may grow to `max` entries: address space for all of them (up to
/// [`SLAB_RESERVE_MAX`]) reserved but not touched, so growing never copies the slab. A `Vec`
/// doubling by copy moved 64 MiB at 1M connections while a packet waited, and a table filling
/// up ran at ~0.65x the inserts/s of one sized up front. The kernel backs pages as entries
/// are written, as for a table sized up front. If the reservation is refused (strict
/// overcommit accounting), the slab starts at `capacity` and grows by copying.
fn reserve_slab(capacity: usize, max: usize) -> Vec<Option<Entry>> {
    let mut slots = Vec::new();
    if slots
        .try_reserve_exact(max.min(SLAB_RESERVE_MAX).max(capacity))
        .is_err()
    {
        slots = Vec::with_capacity(capacity);
    }
    slots
}

/// The index hash of the entry in `slot` (0 for an empty slot, which the index never holds).
fn slot_hash(slots: &[Option<Entry>], hasher: &FlowHasher, slot: u32) -> u64 {
    match slots.get(slot as usize) {
        Some(Some(e)) => hash_key(hasher, e.zone, &e.orig),
        _ => 0,
    }
}

impl Table {
    /// A table with index room for `capacity` connections that may grow to `max`.
    pub(crate) fn new(capacity: u32, max: u32, hasher: FlowHasher) -> Self {
        let capacity = capacity as usize;
        Self {
            slots: reserve_slab(capacity, max as usize),
            free: Vec::with_capacity(capacity),
            index: Index::with_capacity(capacity),
            hasher,
            zones: HashMap::default(),
            len: 0,
            cursor: 0,
            last: Cell::new(NO_SLOT),
            migrate_next: 0,
            migrate_end: 0,
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    pub(crate) fn zone_len(&self, zone: u32) -> u32 {
        self.zones.get(&zone).map_or(0, |z| z.count)
    }

    pub(crate) fn zone_limit(&self, zone: u32, default: u32) -> u32 {
        self.zones
            .get(&zone)
            .and_then(|z| z.limit)
            .unwrap_or(default)
    }

    pub(crate) fn set_zone_limit(&mut self, zone: u32, limit: Option<u32>) {
        let z = self.zones.entry(zone).or_default();
        z.limit = limit;
        if z.count == 0 && z.limit.is_none() {
            self.zones.remove(&zone);
        }
    }

    #[inline]
    pub(crate) fn hash(&self, zone: u32, t: &FiveTuple) -> u64 {
        hash_key(&self.hasher, zone, t)
    }

    pub(crate) fn hasher(&self) -> &FlowHasher {
        &self.hasher
    }

    /// The hash of `p`'s key in `zone`: from the packet's hash if it is by this table's
    /// hasher, else computed.
    #[inline]
    pub(crate) fn hash_packet(&self, zone: u32, p: &HashedPacket<'_>) -> u64 {
        if p.hasher.id == self.hasher.id {
            p.tuple_hash() ^ zone_salt(zone)
        } else {
            self.hash(zone, &p.meta.tuple)
        }
    }

    /// Find the entry `t` belongs to in `zone`, in either direction.
    #[inline]
    pub(crate) fn find(&self, zone: u32, t: &FiveTuple) -> Option<(u32, Direction)> {
        self.find_hashed(zone, t, self.hash(zone, t))
    }

    /// [`Self::find`] with the key's hash already computed.
    #[inline]
    pub(crate) fn find_hashed(
        &self,
        zone: u32,
        t: &FiveTuple,
        hash: u64,
    ) -> Option<(u32, Direction)> {
        let slots = &self.slots;
        let mut dir = Direction::Original;
        let slot = self.index.find(hash, |v| match slots.get(v as usize) {
            Some(Some(e)) => match e.direction_of(zone, t) {
                Some(d) => {
                    dir = d;
                    true
                }
                None => false,
            },
            _ => false,
        })?;
        Some((slot, dir))
    }

    /// [`Self::find_hashed`], trying first the connection the table matched or created
    /// last: consecutive packets of one connection (a burst of a bulk transfer, the two
    /// directions of a request/response) then cost one key compare on a line still in the
    /// cache, with no hash and no index probe. `hash` is called only if that misses.
    ///
    /// No invalidation is needed: keys are unique in a zone, so an entry in that slot that
    /// matches `t` is the one the index would find, whatever happened to the slot meanwhile.
    #[inline]
    pub(crate) fn find_hinted(
        &self,
        zone: u32,
        t: &FiveTuple,
        hash: impl FnOnce() -> u64,
    ) -> (Option<(u32, Direction)>, Option<u64>) {
        let last = self.last.get();
        if let Some(dir) = self.get(last).and_then(|e| e.direction_of(zone, t)) {
            return (Some((last, dir)), None);
        }
        let hash = hash();
        let found = self.find_hashed(zone, t, hash);
        if let Some((slot, _)) = found {
            self.last.set(slot);
        }
        (found, Some(hash))
    }

    /// Start loading the index bucket of a key with `hash` (see [`super::ConnTrack::prefetch`]).
    #[inline]
    pub(crate) fn prefetch_bucket(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Stage 1 of a burst lookup: load the key's index bucket and return the slot it most
    /// likely points to.
    #[inline]
    pub(crate) fn touch_bucket(&self, hash: u64) -> Option<u32> {
        self.index.touch(hash)
    }

    /// Stage 2 of a burst lookup: load the lines of a slab entry. Returns a value derived from
    /// them so the loads cannot be optimised away.
    #[inline]
    pub(crate) fn touch_slot(&self, slot: u32) -> u64 {
        match self.slots.get(slot as usize) {
            // Fields from both cache lines of the entry, whatever the field order.
            Some(Some(e)) => {
                e.expires ^ e.mark ^ e.packets[1] ^ e.bytes[0] ^ u64::from(e.orig.dst_port)
            }
            _ => 0,
        }
    }

    #[inline]
    pub(crate) fn get(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Store a new entry. The caller has checked that neither direction's key is present and
    /// that the limits allow it.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, entry: Entry) -> u32 {
        let hash = hash_key(&self.hasher, entry.zone, &entry.orig);
        self.insert_hashed(entry, hash)
    }

    /// [`Self::insert`] with the hash of the entry's key already computed ([`Self::hash`] of
    /// its zone and original tuple): a new connection's lookup just computed it.
    pub(crate) fn insert_hashed(&mut self, entry: Entry, hash: u64) -> u32 {
        debug_assert_eq!(hash, hash_key(&self.hasher, entry.zone, &entry.orig));
        let zone = entry.zone;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        if self.index.is_growing() {
            self.migrate(MIGRATE_PER_INSERT);
        }
        if self.index.needs_grow() {
            // The keys move over a few per insert, in slab order: the entries (which give
            // their hashes) are read sequentially, where going bucket by bucket would read
            // them in random order, a miss each.
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.index.start_grow(|v| slot_hash(slots, hasher, v));
            self.migrate_next = 0;
            self.migrate_end = self.slots.len();
        }
        self.index.insert(hash, slot);
        self.len += 1;
        self.zones.entry(zone).or_default().count += 1;
        self.last.set(slot);
        slot
    }

    /// Moves the index keys of the next `n` slab slots out of the old array of a growth;
    /// ends the growth after the last slot that was there when it started.
    fn migrate(&mut self, n: usize) {
        let end = (self.migrate_next + n).min(self.migrate_end);
        for i in self.migrate_next..end {
            if let Some(Some(e)) = self.slots.get(i) {
                self.index
                    .migrate(hash_key(&self.hasher, e.zone, &e.orig), i as u32);
            }
        }
        self.migrate_next = end;
        if end >= self.migrate_end {
            // Every key was in a slot below `migrate_end`: this moves nothing, it only
            // drops the old array.
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.index.finish_grow(|v| slot_hash(slots, hasher, v));
        }
    }

    /// Remove the entry in `slot` and its index key. Returns whether there was one.
    pub(crate) fn remove(&mut self, slot: u32) -> bool {
        let Some(e) = self.get(slot) else {
            return false;
        };
        let hash = hash_key(&self.hasher, e.zone, &e.orig);
        self.remove_hashed(slot, hash)
    }

    /// [`Self::remove`] with the hash of the entry's key already computed. The entry is
    /// dropped in place, not moved out: it is 128 bytes, and nobody wants it.
    fn remove_hashed(&mut self, slot: u32, hash: u64) -> bool {
        let Some(cell) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        let Some(zone) = cell.as_ref().map(|e| e.zone) else {
            return false;
        };
        *cell = None;
        self.index.remove(hash, slot);
        self.free.push(slot);
        self.len -= 1;
        if let Some(z) = self.zones.get_mut(&zone) {
            z.count = z.count.saturating_sub(1);
            if z.count == 0 && z.limit.is_none() {
                self.zones.remove(&zone);
            }
        }
        true
    }

    /// Advance the sweep hand over at most `budget` slots, removing expired entries.
    ///
    /// In two stages per group of [`SWEEP_GROUP`] expired entries: find them (reading the slab
    /// in order) and prefetch their index buckets, then remove them. The buckets are at random
    /// places, each a cache miss on a big table; loaded one after the other by `remove`, their
    /// misses would be paid in series.
    pub(crate) fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut left = budget.min(n);
        let mut removed = 0;
        while left > 0 {
            let mut group = [(0u32, 0u64); SWEEP_GROUP];
            let mut found = 0;
            while left > 0 && found < SWEEP_GROUP {
                left -= 1;
                if self.cursor >= n {
                    self.cursor = 0;
                }
                let slot = self.cursor as u32;
                self.cursor += 1;
                if let Some(ahead) = self.slots.get(self.cursor + SWEEP_AHEAD) {
                    prefetch(ahead);
                }
                if let Some(e) = self.get(slot).filter(|e| e.is_expired(now)) {
                    let hash = hash_key(&self.hasher, e.zone, &e.orig);
                    self.index.prefetch(hash);
                    group[found] = (slot, hash);
                    found += 1;
                }
            }
            for &(slot, hash) in &group[..found] {
                if self.remove_hashed(slot, hash) {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Slot numbers of live entries (a snapshot, so the caller may remove while walking).
    pub(crate) fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }

    pub(crate) fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.slots.iter().flatten()
    }

    /// Heap bytes held by the table's own structures: by capacity, except the slab, of which
    /// only the slots used so far count (the rest is address space, see [`reserve_slab`]).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Option<Entry>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.index.allocation_size()
            + self.zones.capacity() * (std::mem::size_of::<(u32, ZoneCount)>() + 1)
    }

    /// Full consistency check (tests only; O(n)).
    #[cfg(test)]
    pub(crate) fn check_consistency(&self) -> Result<(), String> {
        let live = self.slots.iter().filter(|s| s.is_some()).count();
        if live != self.len as usize {
            return Err(format!("len {} but {live} live slots", self.len));
        }
        if self.index.len() != live {
            return Err(format!(
                "index has {} keys for {live} entries",
                self.index.len()
            ));
        }
        let mut free_sorted = self.free.clone();
        free_sorted.sort_unstable();
        free_sorted.dedup();
        if free_sorted.len() != self.free.len() {
            return Err("duplicate slot in free list".into());
        }
        for &f in &self.free {
            if self.get(f).is_some() {
                return Err(format!("free slot {f} is occupied"));
            }
        }
        if self.free.len() + live != self.slots.len() {
            return Err("free list and live slots do not cover the slab".into());
        }
        let mut zone_counts: HashMap<u32, u32> = HashMap::new();
        for (i, e) in self.slots.iter().enumerate() {
            let Some(e) = e else { continue };
            *zone_counts.entry(e.zone).or_default() += 1;
            let rev = e.orig.reversed();
            for (t, dir) in [(e.orig, Direction::Original), (rev, Direction::Reply)] {
                match self.find(e.zone, &t) {
                    Some((s, d)) if s as usize == i && d == dir => {}
                    other => {
                        return Err(format!("slot {i} {dir:?} key {t} finds {other:?}"));
                    }
                }
            }
        }
        self.index.check(|v| match self.get(v) {
            Some(e) => hash_key(&self.hasher, e.zone, &e.orig),
            None => 0,
        })?;
        for v in self.index.values() {
            if self.get(v).is_none() {
                return Err(format!("index value {v} points to a free slot"));
            }
        }
        for (zone, n) in &zone_counts {
            if self.zone_len(*zone) != *n {
                return Err(format!(
                    "zone {zone}: count {} but {n} entries",
                    self.zone_len(*zone)
                ));
            }
        }
        for (zone, z) in &self.zones {
            if z.count != zone_counts.get(zone).copied().unwrap_or(0) {
                return Err(format!("zone {zone}: stale count {}", z.count));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::entry::{ProtoState, UdpState};
    use crate::flow::IpProtocol;

    fn t(src: &str, sp: u16, dst: &str, dp: u16, protocol: IpProtocol) -> FiveTuple {
        FiveTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn both_directions_share_one_key_and_other_fields_still_count() {
        let h = FlowHasher::new(Some(7));
        let v4 = t("10.0.0.1", 40000, "10.0.0.2", 80, IpProtocol::Tcp);
        let v6 = t("fd00::1", 40000, "fd00::2", 80, IpProtocol::Udp);
        for x in [v4, v6] {
            assert_eq!(hash_key(&h, 1, &x), hash_key(&h, 1, &x.reversed()));
            assert_ne!(hash_key(&h, 1, &x), hash_key(&h, 2, &x), "zone");
            let swapped_ports = FiveTuple {
                src_port: x.dst_port,
                dst_port: x.src_port,
                ..x
            };
            assert_ne!(hash_key(&h, 1, &x), hash_key(&h, 1, &swapped_ports));
        }
        let udp = FiveTuple {
            protocol: IpProtocol::Udp,
            ..v4
        };
        assert_ne!(hash_key(&h, 1, &v4), hash_key(&h, 1, &udp), "protocol");
        // An IPv4 pair and the same numbers zero-extended to IPv6 are different keys.
        let widened = t("::a00:1", 40000, "::a00:2", 80, IpProtocol::Tcp);
        assert_ne!(hash_key(&h, 1, &v4), hash_key(&h, 1, &widened));
    }

    #[test]
    fn a_reply_finds_its_entry_as_reply_and_growth_keeps_every_entry() {
        // Room reserved for 1 entry (the slab grows by copying) and for all of them.
        for max in [1, 5000] {
            growth_keeps_every_entry(max);
        }
    }

    /// A fresh connection in zone 1, expiring at 10, marked `mark`.
    fn zone1_entry(orig: FiveTuple, mark: u32) -> Entry {
        Entry {
            orig,
            zone: 1,
            proto: ProtoState::Datagram(UdpState::First),
            expires: 10,
            mark: u64::from(mark),
            packets: [1, 0],
            bytes: [0; 2],
        }
    }

    /// Random inserts, removals and lookups against a model, from a table of one slot: the
    /// index grows many times, so most operations meet a growth in progress (keys in both
    /// arrays, removed from either, slots freed and reused below the migration cursor).
    #[test]
    fn growth_in_progress_agrees_with_a_model_under_inserts_and_removals() {
        let mut table = Table::new(1, 1 << 20, FlowHasher::new(Some(5)));
        let mut model: HashMap<u32, u32> = HashMap::new(); // key number -> slot
        let tuple = |k: u32| FiveTuple {
            src: IpAddr::from(k.to_be_bytes()),
            dst: IpAddr::from([10, 9, 9, 9]),
            protocol: IpProtocol::Tcp,
            src_port: 40000,
            dst_port: 443,
        };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut grew = 0;
        for step in 0..60_000u32 {
            let r = rnd();
            let k = (r >> 32) as u32 % 40_000;
            if r % 3 == 0 && !model.is_empty() {
                // Remove (a live key if there is one under this number).
                if let Some(slot) = model.remove(&k) {
                    assert!(table.remove(slot), "step {step}: key {k} slot {slot}");
                }
            } else if let std::collections::hash_map::Entry::Vacant(e) = model.entry(k) {
                let was_growing = table.index.is_growing();
                let slot = table.insert(zone1_entry(tuple(k), k));
                grew += usize::from(!was_growing && table.index.is_growing());
                e.insert(slot);
            }
            let probe = (rnd() >> 40) as u32 % 40_000;
            let found = table.find(1, &tuple(probe)).map(|(s, _)| s);
            assert_eq!(
                found,
                model.get(&probe).copied(),
                "step {step}: key {probe}"
            );
            if step % 5000 == 0 {
                table.check_consistency().unwrap();
            }
        }
        assert!(grew >= 8, "only {grew} growths");
        table.check_consistency().unwrap();
        assert_eq!(table.len() as usize, model.len());
    }

    fn growth_keeps_every_entry(max: u32) {
        let mut table = Table::new(1, max, FlowHasher::new(Some(3)));
        let slab = table.slots.as_ptr();
        let tuple = |i: u32| FiveTuple {
            src: IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            dst: IpAddr::from([10, 1, 0, 1]),
            protocol: IpProtocol::Udp,
            src_port: 1000,
            dst_port: 53,
        };
        for i in 0..5000 {
            table.insert(zone1_entry(tuple(i), i));
            if i % 250 == 0 {
                // Mid-growth too: keys in both index arrays, all found.
                table.check_consistency().unwrap();
            }
        }
        table.check_consistency().unwrap();
        // A slab reserved for the whole growth never moved.
        assert_eq!(table.slots.as_ptr() == slab, max == 5000);
        for i in 0..5000 {
            let (slot, dir) = table.find(1, &tuple(i).reversed()).unwrap();
            assert_eq!(dir, Direction::Reply);
            assert_eq!(table.get(slot).unwrap().mark, u64::from(i));
            assert_eq!(table.find(1, &tuple(i)), Some((slot, Direction::Original)));
            assert_eq!(table.find(2, &tuple(i)), None);
        }
        assert_eq!(table.sweep(10, 10_000), 5000);
        assert_eq!(table.len(), 0);
        table.check_consistency().unwrap();
    }
}

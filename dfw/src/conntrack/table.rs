//! Storage: a slab of entries plus one hash index holding both direction keys.
//!
//! Each connection is stored once, in `slots`. The [`Index`] holds `slot << 1 | direction`
//! values with 16-bit signatures; the key itself is read from the slab when probing. Keeping
//! keys out of the index makes it ~32 bytes per connection instead of 2 x 48 for a
//! `HashMap<(zone, tuple), slot>` holding both directions, and the signatures keep slab reads
//! for non-matching keys rare.
//!
//! Keys are guest controlled, so the hasher is seeded per table at random (foldhash): a guest
//! cannot precompute 5-tuples that collide in the index.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use foldhash::fast::{RandomState, SeedableRandomState};
use foldhash::SharedSeed;

use super::entry::{addr_bits, Direction, Entry};
use super::index::Index;
use crate::flow::FiveTuple;

#[derive(Debug, Clone, Copy, Default)]
struct ZoneCount {
    count: u32,
    /// Per-zone override of the default limit.
    limit: Option<u32>,
}

pub(crate) struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: Index,
    hasher: SeedableRandomState,
    zones: HashMap<u32, ZoneCount, RandomState>,
    len: u32,
    /// Clock hand of the incremental expiry sweep.
    cursor: usize,
}

#[inline]
fn hash_key(hasher: &SeedableRandomState, zone: u32, t: &FiveTuple) -> u64 {
    let mut h = hasher.build_hasher();
    let family = |a: IpAddr| u64::from(a.is_ipv6());
    h.write_u64(u64::from(zone) << 32 | u64::from(t.src_port) << 16 | u64::from(t.dst_port));
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.write_u64(u64::from(s.to_bits()) << 32 | u64::from(d.to_bits()));
        }
        (s, d) => {
            h.write_u128(addr_bits(s));
            h.write_u128(addr_bits(d));
        }
    }
    h.write_u16(
        u16::from(t.protocol.number()) | (family(t.src) << 8) as u16 | (family(t.dst) << 9) as u16,
    );
    h.finish()
}

/// Hash of the key an index value stands for (used by the index when it resizes).
#[inline]
fn hash_of_value(hasher: &SeedableRandomState, slots: &[Option<Entry>], v: u32) -> u64 {
    match slots.get((v >> 1) as usize) {
        Some(Some(e)) => match Direction::from_bit(v) {
            Direction::Original => hash_key(hasher, e.zone, &e.orig),
            Direction::Reply => hash_key(hasher, e.zone, &e.orig.reversed()),
        },
        // Unreachable while the table is consistent; any value keeps hashbrown sound.
        _ => 0,
    }
}

impl Table {
    pub(crate) fn new(capacity: u32, seed: Option<u64>) -> Self {
        let hasher = match seed {
            Some(s) => SeedableRandomState::with_seed(s, SharedSeed::global_fixed()),
            None => SeedableRandomState::random(),
        };
        let capacity = capacity as usize;
        Self {
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            index: Index::with_capacity(capacity * 2),
            hasher,
            zones: HashMap::default(),
            len: 0,
            cursor: 0,
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
        self.index
            .find(hash, |v| match slots.get((v >> 1) as usize) {
                Some(Some(e)) => e.matches(zone, t, Direction::from_bit(v)),
                _ => false,
            })
            .map(|v| (v >> 1, Direction::from_bit(v)))
    }

    /// Stage 1 of a burst lookup: load the key's index bucket and return the slot it most
    /// likely points to.
    #[inline]
    pub(crate) fn touch_bucket(&self, hash: u64) -> Option<u32> {
        self.index.touch(hash).map(|v| v >> 1)
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
    pub(crate) fn insert(&mut self, entry: Entry) -> u32 {
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
        let h_orig = hash_key(&self.hasher, entry.zone, &entry.orig);
        let h_reply = hash_key(&self.hasher, entry.zone, &entry.orig.reversed());
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.index
            .insert(h_orig, slot << 1, |v| hash_of_value(hasher, slots, v));
        self.index
            .insert(h_reply, slot << 1 | 1, |v| hash_of_value(hasher, slots, v));
        self.len += 1;
        self.zones.entry(entry.zone).or_default().count += 1;
        slot
    }

    /// Remove the entry in `slot` and both its index keys.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<Entry> {
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        for (dir, tuple) in [(0u32, entry.orig), (1u32, entry.orig.reversed())] {
            let hash = hash_key(&self.hasher, entry.zone, &tuple);
            self.index.remove(hash, slot << 1 | dir);
        }
        self.free.push(slot);
        self.len -= 1;
        if let Some(z) = self.zones.get_mut(&entry.zone) {
            z.count = z.count.saturating_sub(1);
            if z.count == 0 && z.limit.is_none() {
                self.zones.remove(&entry.zone);
            }
        }
        Some(entry)
    }

    /// Advance the sweep hand over at most `budget` slots, removing expired entries.
    pub(crate) fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            if self.cursor >= n {
                self.cursor = 0;
            }
            let slot = self.cursor as u32;
            self.cursor += 1;
            if self.get(slot).is_some_and(|e| e.is_expired(now)) {
                self.remove(slot);
                removed += 1;
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

    /// Heap bytes held by the table's own structures (capacity, not just use).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<Entry>>()
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
        if self.index.len() != 2 * live {
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
        self.index
            .check(|v| hash_of_value(&self.hasher, &self.slots, v))?;
        for v in self.index.values() {
            if self.get(v >> 1).is_none() {
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

//! Hash index from connection keys to slab slots: bucketized open addressing, one cache line
//! per bucket.
//!
//! Why not `hashbrown`: a Swiss table keeps control bytes and values in different places, so a
//! lookup in a table bigger than the caches costs three dependent misses (control group, value,
//! slab entry). Here a bucket is a 64-byte line holding 8 16-bit signatures and 8 values: a
//! lookup is one miss for the bucket plus the slab entry, and the bucket's address follows from
//! the hash alone, so a burst of packets can touch all its buckets before the first compare
//! (memory-level parallelism, the technique of DPDK's `rte_hash` bulk lookup).
//!
//! Overflow uses linear probing over buckets with F14-style overflow counts: a bucket counts
//! the keys that probed past it because it was full. A lookup stops at the first bucket whose
//! count is zero, and removal decrements the counts along the removed key's probe path, so
//! there are no tombstones and no periodic rehash.
//!
//! Values are opaque `u32`s (the table stores slab slots); keys are not stored: the caller's
//! `eq` closure compares against the slab. Growing is the caller's to drive
//! ([`Index::needs_grow`], [`Index::start_grow`], [`Index::migrate`]) because only it knows a
//! cheap order in which to list every stored value with its hash; it moves the keys a few
//! at a time, so no single insert pays for the whole rebuild.

/// Values per bucket.
const WAYS: usize = 8;
/// Marks a free way. Table values are slots below 2^31 - 1, never this.
const EMPTY: u32 = u32::MAX;
/// Grow when more than 3/4 of the ways are used (6 of 8 per bucket on average).
const MAX_LOAD_NUM: usize = 3;
const MAX_LOAD_DEN: usize = 4;

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    sig: [u16; WAYS],
    val: [u32; WAYS],
    /// Keys stored further on whose probe passed this bucket while it was full.
    overflow: u32,
}

const EMPTY_BUCKET: Bucket = Bucket {
    sig: [0; WAYS],
    val: [EMPTY; WAYS],
    overflow: 0,
};

impl Bucket {
    /// Bit i set where way i holds signature `sig` (written so it compiles to a vector compare).
    #[inline]
    fn matches(&self, sig: u16) -> u32 {
        let mut m = 0u32;
        for (i, s) in self.sig.iter().enumerate() {
            m |= u32::from(*s == sig) << i;
        }
        m
    }

    #[inline]
    fn free_way(&self) -> Option<usize> {
        self.val.iter().position(|&v| v == EMPTY)
    }
}

/// A hint to the CPU to start loading the cache lines of `r`: unlike a load, it does not hold
/// up the instructions after it (nor a locked instruction, e.g. a mutex release, which waits
/// for earlier loads), so several misses overlap. A no-op where there is no such instruction.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = (r as *const T).cast::<i8>();
        let mut off = 0;
        while off < std::mem::size_of::<T>().max(1) {
            // SAFETY: `_mm_prefetch` is `unsafe` only because it is a `target_feature(sse)`
            // intrinsic; SSE is part of the x86_64 baseline. A prefetch has no architectural
            // effect (it never faults and writes nothing), and the address is inside `*r`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[inline]
fn sig_of(hash: u64) -> u16 {
    // High bits for the signature, low bits pick the bucket: independent parts of the hash.
    (hash >> 48) as u16
}

pub(crate) struct Index {
    /// Power-of-two length.
    buckets: Vec<Bucket>,
    mask: usize,
    /// Keys in `buckets` (not counting `old`'s).
    len: usize,
    /// While growing ([`Index::start_grow`]): the previous, half-size bucket array, whose
    /// keys the caller moves over a few at a time ([`Index::migrate`]). Lookups and removals
    /// look in both meanwhile. Rebuilding in one go stopped the packet that triggered it for
    /// tens of milliseconds at 1M keys.
    old: Option<Box<Index>>,
}

impl Index {
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let n = Self::buckets_for(keys);
        Self::with_buckets(n)
    }

    fn with_buckets(n: usize) -> Self {
        Self {
            buckets: vec![EMPTY_BUCKET; n],
            mask: n - 1,
            len: 0,
            old: None,
        }
    }

    fn buckets_for(keys: usize) -> usize {
        let ways = keys.saturating_mul(MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM);
        ways.div_ceil(WAYS).max(1).next_power_of_two()
    }

    /// Keys stored, in both arrays while growing.
    fn total_len(&self) -> usize {
        self.len + self.old.as_ref().map_or(0, |o| o.len)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.total_len()
    }

    pub(crate) fn allocation_size(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self.old.as_ref().map_or(0, |o| o.allocation_size())
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// The value whose key has `hash` and satisfies `eq`.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(v) = self.find_here(hash, &mut eq) {
            return Some(v);
        }
        self.old.as_ref()?.find_here(hash, eq)
    }

    /// [`Self::find`] in this array only.
    #[inline]
    fn find_here(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let sig = sig_of(hash);
        let mut b = self.home(hash);
        for _ in 0..self.buckets.len() {
            let bucket = self.buckets.get(b)?;
            let mut m = bucket.matches(sig);
            while m != 0 {
                let way = m.trailing_zeros() as usize;
                m &= m - 1;
                let v = bucket.val[way];
                if v != EMPTY && eq(v) {
                    return Some(v);
                }
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = (b + 1) & self.mask;
        }
        None
    }

    /// Read the home bucket of `hash` so that its line is on its way into the cache, and
    /// return the first value with a matching signature (a likely slab slot to touch next).
    /// Loads only; results are hints.
    #[inline]
    pub(crate) fn touch(&self, hash: u64) -> Option<u32> {
        let bucket = self.buckets.get(self.home(hash))?;
        let m = bucket.matches(sig_of(hash));
        if m == 0 {
            None
        } else {
            Some(bucket.val[m.trailing_zeros() as usize])
        }
    }

    /// Start bringing the home bucket of `hash` into the cache, without waiting for it.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        if let Some(b) = self.buckets.get(self.home(hash)) {
            prefetch(b);
        }
    }

    /// Whether one more value would exceed the load limit: [`Self::start_grow`] first.
    #[inline]
    pub(crate) fn needs_grow(&self) -> bool {
        (self.total_len() + 1) * MAX_LOAD_DEN > self.buckets.len() * WAYS * MAX_LOAD_NUM
    }

    /// Whether keys may still be in the old array of a growth.
    #[inline]
    pub(crate) fn is_growing(&self) -> bool {
        self.old.is_some()
    }

    /// Doubles the bucket array. The keys stay in the old array until the caller moves
    /// them ([`Self::migrate`], [`Self::finish_grow`]), in whatever order it lists them
    /// fastest; new keys go to the new array. A growth still running is finished first.
    pub(crate) fn start_grow(&mut self, rehash: impl Fn(u32) -> u64) {
        self.finish_grow(rehash);
        let n = self.buckets.len() * 2;
        let old = std::mem::replace(self, Index::with_buckets(n));
        self.old = Some(Box::new(old));
    }

    /// Moves `val`, stored under `hash`, from the old array to the new one if it is still
    /// in the old one. Returns whether it was.
    pub(crate) fn migrate(&mut self, hash: u64, val: u32) -> bool {
        let moved = self
            .old
            .as_mut()
            .is_some_and(|old| old.remove_here(hash, val));
        if moved {
            self.insert(hash, val);
        }
        moved
    }

    /// Ends a growth: moves whatever the old array still holds (`rehash` gives a stored
    /// value's hash) and drops it.
    pub(crate) fn finish_grow(&mut self, rehash: impl Fn(u32) -> u64) {
        if let Some(old) = self.old.take() {
            for v in old
                .buckets
                .iter()
                .flat_map(|b| b.val)
                .filter(|&v| v != EMPTY)
            {
                self.insert(rehash(v), v);
            }
        }
    }

    /// Add `val` under `hash` (to the new array while growing). The caller has made room
    /// ([`Self::needs_grow`]); should it not have, the value is still stored while any way is
    /// free.
    pub(crate) fn insert(&mut self, hash: u64, val: u32) {
        let sig = sig_of(hash);
        let mut b = self.home(hash);
        // The load limit guarantees a free way; the bound only keeps the loop finite.
        for _ in 0..self.buckets.len() {
            let Some(bucket) = self.buckets.get_mut(b) else {
                return;
            };
            if let Some(way) = bucket.free_way() {
                bucket.sig[way] = sig;
                bucket.val[way] = val;
                self.len += 1;
                return;
            }
            bucket.overflow += 1;
            b = (b + 1) & self.mask;
        }
    }

    /// Remove `val`, stored under `hash`. Returns whether it was there.
    pub(crate) fn remove(&mut self, hash: u64, val: u32) -> bool {
        self.remove_here(hash, val)
            || self
                .old
                .as_mut()
                .is_some_and(|old| old.remove_here(hash, val))
    }

    /// [`Self::remove`] from this array only.
    fn remove_here(&mut self, hash: u64, val: u32) -> bool {
        let home = self.home(hash);
        let mut b = home;
        for _ in 0..self.buckets.len() {
            let Some(bucket) = self.buckets.get_mut(b) else {
                return false;
            };
            if let Some(way) = bucket.val.iter().position(|&v| v == val) {
                bucket.val[way] = EMPTY;
                bucket.sig[way] = 0;
                self.len -= 1;
                // Undo the overflow counts this key added on its way from its home bucket.
                let mut p = home;
                while p != b {
                    if let Some(passed) = self.buckets.get_mut(p) {
                        passed.overflow = passed.overflow.saturating_sub(1);
                    }
                    p = (p + 1) & self.mask;
                }
                return true;
            }
            if bucket.overflow == 0 {
                return false;
            }
            b = (b + 1) & self.mask;
        }
        false
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = u32> + '_ {
        let old = self.old.iter().flat_map(|o| o.buckets.iter());
        self.buckets
            .iter()
            .chain(old)
            .flat_map(|b| b.val.iter().copied())
            .filter(|&v| v != EMPTY)
    }

    /// Overflow counts and length recomputed from the stored values, in both arrays while
    /// growing (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self, rehash: impl Fn(u32) -> u64) -> Result<(), String> {
        self.check_dyn(&rehash)
    }

    #[cfg(test)]
    fn check_dyn(&self, rehash: &dyn Fn(u32) -> u64) -> Result<(), String> {
        if let Some(old) = &self.old {
            old.check_dyn(rehash)
                .map_err(|e| format!("old array: {e}"))?;
        }
        let mut expected = vec![0u32; self.buckets.len()];
        let mut n = 0;
        for (b, bucket) in self.buckets.iter().enumerate() {
            for (way, &v) in bucket.val.iter().enumerate() {
                if v == EMPTY {
                    continue;
                }
                n += 1;
                let h = rehash(v);
                if bucket.sig[way] != sig_of(h) {
                    return Err(format!("value {v}: wrong signature"));
                }
                let mut p = self.home(h);
                while p != b {
                    expected[p] += 1;
                    p = (p + 1) & self.mask;
                }
            }
        }
        if n != self.len {
            return Err(format!("index len {} but {n} values", self.len));
        }
        for (b, bucket) in self.buckets.iter().enumerate() {
            if bucket.overflow != expected[b] {
                return Err(format!(
                    "bucket {b}: overflow {} expected {}",
                    bucket.overflow, expected[b]
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identity-ish hash with forced collisions: values 0..n all land in 2 home buckets.
    fn colliding(v: u32) -> u64 {
        u64::from(v % 2) | u64::from(v) << 48
    }

    #[test]
    fn overflowing_buckets_probe_and_remove_cleanly() {
        let mut idx = Index::with_capacity(64);
        let n = 40u32;
        for v in 0..n {
            assert!(!idx.needs_grow());
            idx.insert(colliding(v), v);
        }
        idx.check(colliding).unwrap();
        for v in 0..n {
            assert_eq!(idx.find(colliding(v), |x| x == v), Some(v));
        }
        assert_eq!(idx.find(colliding(1000), |x| x == 1000), None);
        // Remove every other key, including ones in home buckets others overflowed from.
        for v in (0..n).step_by(2) {
            assert!(idx.remove(colliding(v), v));
            assert!(!idx.remove(colliding(v), v));
        }
        idx.check(colliding).unwrap();
        for v in 0..n {
            let found = idx.find(colliding(v), |x| x == v);
            assert_eq!(found.is_some(), v % 2 == 1, "{v}");
        }
        for v in (1..n).step_by(2) {
            assert!(idx.remove(colliding(v), v));
        }
        idx.check(colliding).unwrap();
        assert_eq!(idx.len(), 0);
        assert!(idx.buckets.iter().all(|b| b.overflow == 0));
    }

    #[test]
    fn grows_past_the_load_limit_and_keeps_everything() {
        let h = |v: u32| u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut idx = Index::with_capacity(1);
        let before = idx.buckets.len();
        // Keys move over two per insert, oldest first, as the table moves them in slab order.
        let mut next = 0;
        let mut growths = 0;
        for v in 0..10_000u32 {
            if idx.needs_grow() {
                idx.start_grow(h);
                next = 0;
                growths += 1;
            }
            idx.insert(h(v), v);
            for _ in 0..2 {
                if next < v {
                    idx.migrate(h(next), next);
                    next += 1;
                }
            }
            if v % 7 == 0 {
                // Removed and put back mid-growth, from whichever array holds it.
                let k = v / 2;
                assert!(idx.remove(h(k), k));
                assert_eq!(idx.find(h(k), |x| x == k), None);
                idx.insert(h(k), k);
            }
            if v % 1000 == 0 {
                idx.check(h).unwrap();
            }
        }
        assert!(growths >= 5 && idx.buckets.len() > before);
        assert!(idx.total_len() * MAX_LOAD_DEN <= idx.buckets.len() * WAYS * MAX_LOAD_NUM);
        idx.check(h).unwrap();
        for v in 0..10_000 {
            assert_eq!(idx.find(h(v), |x| x == v), Some(v));
        }
        assert_eq!(idx.values().count(), 10_000);
        idx.finish_grow(h);
        assert!(!idx.is_growing());
        assert_eq!(idx.len, 10_000);
        idx.check(h).unwrap();
    }

    #[test]
    fn bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }
}

//! Per-zone accumulation of the per-rule hit counters.
//!
//! Every packet a rule admitted is counted on that rule ([`RuleStats`], shared by all vNICs
//! the rule applies to and read by the control plane). Counting each packet there directly
//! costs a lookup in the rule map (a cache miss per packet on a 100k-rule policy), three
//! atomic read-modify-writes on a line every vNIC of that rule writes, and it needs the
//! rule's id, i.e. a visit to the mark table. Instead, each zone keeps, under the lock its
//! packets already hold, a few [`Way`]s keyed by conntrack mark (a mark names one deciding
//! rule for as long as the zone's mark table lives) that add up plain integers, and
//! [`RuleHits::flush`] moves them into the shared counters: at the end of the vNIC's batch,
//! when a way is reused, when the zone is re-checked, and before every read
//! ([`super::Firewall::rule_counters`]), so readers see exact counts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::RuleStats;

/// Ways per zone: distinct deciding rules whose packets are counted without a miss. A vNIC's
/// traffic mostly comes under a handful of rules; more ways only cost the flushes.
const WAYS: usize = 4;

#[derive(Default)]
struct Way {
    /// The mark and the published firewall state (`FwState::epoch`) `stats` was resolved
    /// for; `None`: empty.
    key: Option<(u64, u64)>,
    /// The rule's shared counters; `None` when the mark names no rule (a default decision,
    /// or a rule the published state does not count).
    stats: Option<Arc<RuleStats>>,
    sessions: u64,
    packets: u64,
    bytes: u64,
}

impl Way {
    fn flush(&mut self) {
        if let Some(s) = &self.stats {
            if self.sessions != 0 {
                s.sessions.fetch_add(self.sessions, Ordering::Relaxed);
            }
            if self.packets != 0 {
                s.packets.fetch_add(self.packets, Ordering::Relaxed);
                s.bytes.fetch_add(self.bytes, Ordering::Relaxed);
            }
        }
        self.sessions = 0;
        self.packets = 0;
        self.bytes = 0;
    }
}

/// See the module doc. Owned by one zone, used under its lock.
#[derive(Default)]
pub(super) struct RuleHits {
    ways: [Way; WAYS],
}

impl RuleHits {
    /// Counts a packet (a new connection's first if `new`) of `bytes` admitted under `mark`,
    /// with the firewall state of `epoch` published. `resolve` names the rule's counters on a
    /// miss; it is not called when the way already holds `mark` for `epoch`.
    #[inline]
    pub(super) fn count(
        &mut self,
        mark: u64,
        epoch: u64,
        new: bool,
        bytes: u32,
        resolve: impl FnOnce() -> Option<Arc<RuleStats>>,
    ) {
        let way = self.way(mark, epoch, resolve);
        way.sessions += u64::from(new);
        way.packets += 1;
        way.bytes += u64::from(bytes);
    }

    /// [`Self::count`] for `packets` packets of established connections, `bytes` in all.
    pub(super) fn count_many(
        &mut self,
        mark: u64,
        epoch: u64,
        packets: u64,
        bytes: u64,
        resolve: impl FnOnce() -> Option<Arc<RuleStats>>,
    ) {
        let way = self.way(mark, epoch, resolve);
        way.packets += packets;
        way.bytes += bytes;
    }

    #[inline]
    fn way(
        &mut self,
        mark: u64,
        epoch: u64,
        resolve: impl FnOnce() -> Option<Arc<RuleStats>>,
    ) -> &mut Way {
        // The low bits of a mark are its slot in the zone's mark table, small distinct
        // numbers: a direct-mapped index. (Only speed depends on this, not correctness.)
        let way = &mut self.ways[mark as usize % WAYS];
        if way.key != Some((mark, epoch)) {
            way.flush();
            way.stats = resolve();
            way.key = Some((mark, epoch));
        }
        way
    }

    /// Moves the counts into the shared counters.
    pub(super) fn flush(&mut self) {
        for w in &mut self.ways {
            w.flush();
        }
    }

    /// Flushes and forgets every mark: the zone's mark table was rebuilt (a re-check).
    pub(super) fn reset(&mut self) {
        for w in &mut self.ways {
            w.flush();
            *w = Way::default();
        }
    }
}

impl Drop for RuleHits {
    /// A vNIC unbound with counts pending still has them counted.
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &RuleStats) -> (u64, u64, u64) {
        let c = s.snapshot();
        (c.sessions, c.packets, c.bytes)
    }

    #[test]
    fn counts_reach_the_shared_counters_only_on_flush() {
        let a = Arc::new(RuleStats::default());
        let mut h = RuleHits::default();
        let mut resolved = 0;
        for i in 0..5 {
            h.count(7, 1, i == 0, 100, || {
                resolved += 1;
                Some(a.clone())
            });
        }
        assert_eq!(resolved, 1, "resolved once for a mark and epoch");
        assert_eq!(counts(&a), (0, 0, 0));
        h.flush();
        assert_eq!(counts(&a), (1, 5, 500));
        h.flush();
        assert_eq!(counts(&a), (1, 5, 500), "a flush moves counts once");
    }

    #[test]
    fn a_new_epoch_or_a_reused_way_resolves_again_without_losing_counts() {
        let (a, b) = (
            Arc::new(RuleStats::default()),
            Arc::new(RuleStats::default()),
        );
        let mut h = RuleHits::default();
        h.count(1, 1, false, 10, || Some(a.clone()));
        // Same way (1 + WAYS), another mark: the first way's counts are flushed.
        h.count(1 + WAYS as u64, 1, false, 20, || Some(b.clone()));
        assert_eq!(counts(&a), (0, 1, 10));
        // A new published state resolves again (the rule may have new counters).
        let mut resolved = false;
        h.count(1 + WAYS as u64, 2, false, 20, || {
            resolved = true;
            Some(b.clone())
        });
        assert!(resolved);
        // A mark naming no rule is counted nowhere.
        h.count(2, 2, true, 5, || None);
        h.reset();
        assert_eq!(counts(&b), (0, 2, 40));
        let mut resolved = false;
        h.count(1 + WAYS as u64, 2, false, 1, || {
            resolved = true;
            Some(b.clone())
        });
        assert!(resolved, "a reset forgets the marks");
        drop(h);
        assert_eq!(counts(&b), (0, 3, 41), "dropping flushes");
    }
}

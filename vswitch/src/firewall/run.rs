//! Runs: the packets of one datagram flow within a burst, let through on the first one's
//! verdict.
//!
//! A guest's TX burst is mostly runs of a few flows (OVS batches per flow for the same
//! reason). The first packet of a UDP flow in a burst crosses its zones as usual; when every
//! zone it crossed found it established, the burst remembers the flow as a [`Run`], and the
//! burst's next packets from the same port to the same port with the same tuple are counted
//! in the run and forwarded without the zone locks and connection lookups. The counts reach
//! the connection entries, the conntrack statistics and the rule counters when the run ends:
//! when another flow takes its place, or when the burst ends ([`Runs`] is dropped).
//!
//! Why the verdict carries over:
//! * **Datagram connections only.** A UDP packet of an established connection changes
//!   nothing but the entry's counters and timer, and the run's first packet, seen at the same
//!   `now`, made every state transition and set the timer the others would
//!   ([`dfw::conntrack::ConnTrack::count_datagram_run`]). TCP segments are each tracked
//!   (sequence windows, flags), so they never form runs.
//! * **Policy changes.** A run records each zone's re-check epoch ([`super::VnicFw`]'s
//!   `rechecked`) as the first packet saw it under the zone's lock; a packet that finds a
//!   zone re-checked since ends the run and crosses again, under the new policy. A packet
//!   that does not see the re-check yet is ordered before it, like a packet that took the
//!   zone's lock first.
//! * **Expiry.** The first packet restarted the connection's timer at the burst's `now`, so
//!   it cannot expire during the burst (timeouts are seconds, a burst microseconds).
//! * **Same classification.** Only UDP packets with ports (no later fragments) continue a
//!   run, and the control-traffic classification depends only on what the run matches on
//!   (tuple and ports), so a packet that continues a run is one the slow path would have sent
//!   through the same crossings.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;

use dfw::flow::{FiveTuple, IpProtocol};
use dfw::model::RuleId;
use dfw::stateful::Mark;

use super::FwState;
use crate::packet::{ParsedPacket, Transport};
use crate::port::{PortId, PortRef};

/// Flows a burst remembers at once: a burst from one guest seldom interleaves more.
const RUNS: usize = 4;

/// A zone a run crossed: the vNIC, its re-check epoch when the run began, and the rule that
/// admitted the connection there (for a connection re-checked before the run is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunZone {
    pub port: PortId,
    pub rechecked: u64,
    pub rule: Option<RuleId>,
}

/// See the module doc.
#[derive(Debug)]
pub(super) struct Run {
    ingress: PortRef,
    egress: PortRef,
    tuple: FiveTuple,
    now: u64,
    /// The sender's zone (egress) and the receiver's (ingress), those that were crossed.
    zones: [Option<RunZone>; 2],
    /// Packets (and their IP bytes) let through after the first, not counted yet.
    packets: u64,
    bytes: u64,
}

impl Run {
    pub(super) fn new(
        ingress: PortRef,
        egress: PortRef,
        tuple: FiveTuple,
        now: u64,
        zones: [Option<RunZone>; 2],
    ) -> Run {
        Run {
            ingress,
            egress,
            tuple,
            now,
            zones,
            packets: 0,
            bytes: 0,
        }
    }
}

/// A burst's runs (see the module doc). Used by one thread: the burst's.
#[derive(Default)]
pub(super) struct Runs {
    runs: RefCell<[Option<Run>; RUNS]>,
    /// The slot the next new run takes.
    next: Cell<usize>,
}

/// The tuple and IP length of a packet that may continue a run: UDP with its ports.
#[inline]
fn udp_tuple(pkt: &ParsedPacket) -> Option<(FiveTuple, u32)> {
    if !matches!(pkt.transport, Transport::Udp(_)) {
        return None;
    }
    let tuple = pkt.five_tuple()?;
    let len = pkt.layout.l3_end.saturating_sub(u32::from(pkt.layout.l3));
    Some((tuple, len))
}

impl Runs {
    /// Counts `pkt` in the run it continues and returns true; false if it continues none
    /// (then it must cross its zones). A run whose zone was re-checked since it began is
    /// ended here, its counts flushed.
    #[inline]
    pub(super) fn extend(
        &self,
        st: &FwState,
        ingress: PortRef,
        egress: PortRef,
        now: u64,
        pkt: &ParsedPacket,
    ) -> bool {
        let Some((tuple, len)) = udp_tuple(pkt) else {
            return false;
        };
        let mut runs = self.runs.borrow_mut();
        for slot in runs.iter_mut() {
            let Some(run) = slot else { continue };
            if run.tuple != tuple || run.ingress != ingress || run.egress != egress {
                continue;
            }
            if run.now != now || !still_current(st, &run.zones) {
                if let Some(run) = slot.take() {
                    flush(st, run);
                }
                return false;
            }
            run.packets += 1;
            run.bytes += u64::from(len);
            return true;
        }
        false
    }

    /// Remembers a run whose first packet just crossed; ends the run it replaces.
    pub(super) fn start(&self, st: &FwState, run: Run) {
        let i = self.next.get();
        self.next.set((i + 1) % RUNS);
        let old = self.runs.borrow_mut()[i].replace(run);
        if let Some(old) = old {
            flush(st, old);
        }
    }

    /// Ends every run, counting what they let through.
    pub(super) fn finish(&self, st: &FwState) {
        let runs = std::mem::take(&mut *self.runs.borrow_mut());
        for run in runs.into_iter().flatten() {
            flush(st, run);
        }
    }
}

/// Whether none of the run's zones was re-checked since the run began.
#[inline]
fn still_current(st: &FwState, zones: &[Option<RunZone>; 2]) -> bool {
    zones.iter().flatten().all(|z| {
        st.bound(z.port)
            .is_some_and(|b| b.fw.rechecked.load(Ordering::Acquire) == z.rechecked)
    })
}

/// Counts what a run let through on its connection entries, conntrack statistics and rule
/// counters, one zone lock at a time. A connection gone meanwhile (cut by a re-check) is not
/// revived; its statistics and the rule that admitted it still count the packets, which
/// passed before it went.
fn flush(st: &FwState, run: Run) {
    if run.packets == 0 {
        return;
    }
    debug_assert_eq!(run.tuple.protocol, IpProtocol::Udp);
    for z in run.zones.iter().flatten() {
        let Some(b) = st.bound(z.port) else { continue };
        let mut guard = b.fw.lock();
        let zs = &mut *guard;
        let zone = b.fw.zone();
        let mark = zs.sf.conntrack_mut().count_datagram_run(
            zone,
            &run.tuple,
            run.packets,
            run.bytes,
            run.now,
        );
        match mark {
            // Not re-checked since the run began: the connection's mark is the one its first
            // packet was counted under, in the zone's rule hits, with the burst's state.
            Some(mark) if b.fw.rechecked.load(Ordering::Relaxed) == z.rechecked => {
                let sf = &zs.sf;
                zs.hits
                    .count_many(mark, st.epoch, run.packets, run.bytes, || {
                        let rule = sf.describe(Mark(mark)).and_then(|i| i.rule_id())?;
                        st.rules.get(&rule).cloned()
                    });
            }
            // Re-checked (re-marked or cut) since: the packets passed before that, so they
            // count on the rule that admitted the connection then, as they would have.
            _ => {
                drop(guard);
                if let Some(stats) = z.rule.and_then(|id| st.rules.get(&id)) {
                    stats.packets.fetch_add(run.packets, Ordering::Relaxed);
                    stats.bytes.fetch_add(run.bytes, Ordering::Relaxed);
                }
            }
        }
    }
}

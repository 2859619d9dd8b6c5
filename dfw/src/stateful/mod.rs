//! The stateful firewall step of one vNIC crossing: connection tracking glued to the policy
//! snapshot.
//!
//! The data path calls [`StatefulFirewall::process`] once per packet per vNIC it crosses,
//! with that vNIC's conntrack [`Zone`] and endpoint, and the direction the packet takes there:
//! [`Direction::Egress`] when it leaves the guest, [`Direction::Ingress`] when it is about to
//! be delivered to it. (A packet between two local vNICs is processed twice: egress in the
//! sender's zone, ingress in the receiver's, exactly as the policy decides it.)
//!
//! - The first packet of a connection is decided by [`PolicySnapshot::decide`] for that
//!   endpoint and direction; allowed (or audited) connections are tracked, and their
//!   conntrack mark ([`Mark`]) names the decision: direction, action, audit and log flags
//!   inline, the deciding rule or policy through a slot in the firewall's mark table. Packets
//!   of tracked connections (both ways) pass without a policy lookup and still name their
//!   rule ([`StatefulFirewall::describe`]).
//! - A denied first packet tracks nothing: every later packet of that connection is decided
//!   again, and denied again.
//! - [`StatefulFirewall::recheck`] re-decides every tracked connection against a new snapshot:
//!   the ones no longer allowed are cut, the others keep their protocol state, counters and
//!   timers and take the new decision's mark.
//!
//! Pure like the rest of `dfw`: no clock (`now` is passed in), no locks (one instance per
//! packet-processing thread, as [`ConnTrack`]), no allocation per packet (a rule is copied
//! into the mark table once, when it first admits a connection).
//!
//! The zone must be the vNIC's own: a connection's orientation relative to the vNIC is then
//! fixed by its first packet, which the spoof guard (source addresses of the guest) upholds.

mod mark;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use mark::{Mark, MarkInfo};

use crate::compile::{Decision, EndpointHandle, FlowAction, FlowQuery, PolicySnapshot};
use crate::conntrack::{
    self, ConnTrack, CtConfig, CtConfigError, CtVerdict, FlowHasher, HashedPacket, PacketMeta, Zone,
};
use crate::flow::{FiveTuple, IpProtocol};
use crate::model::Direction;
use mark::MarkTable;

/// A vNIC as the stateful firewall sees it: its conntrack zone and the endpoint whose policy
/// applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vnic {
    pub zone: Zone,
    pub endpoint: EndpointHandle,
}

/// What to do with one packet at one vNIC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome<'s> {
    /// Forward (`Allow`), drop, or drop and answer (`Reject`: TCP RST / ICMP
    /// administratively prohibited). Audit is already applied: an audited drop is `Allow`.
    pub action: FlowAction,
    /// Forwarded although the decision asked for a drop (audit mode), for this packet or, on
    /// a tracked connection, for the packet that opened it.
    pub audit: bool,
    /// Connection tracking's verdict, with the mark; `Dropped` carries the reason conntrack
    /// counted. `Denied` with `decision: None` means the vNIC's endpoint is not in the
    /// snapshot (stale handle): fail closed.
    pub ct: CtVerdict,
    /// The policy decision, when this packet needed one (first packet of a connection,
    /// untracked ICMP). `None` for packets of tracked connections: see
    /// [`StatefulFirewall::describe`] with [`Outcome::mark`].
    pub decision: Option<Decision<'s>>,
}

impl Outcome<'_> {
    pub fn forwards(&self) -> bool {
        self.action == FlowAction::Allow
    }

    /// The connection's (or this packet's) mark; [`Mark::NONE`] for conntrack drops.
    pub fn mark(&self) -> Mark {
        match self.ct {
            CtVerdict::New { mark, .. }
            | CtVerdict::Established { mark, .. }
            | CtVerdict::Related { mark, .. }
            | CtVerdict::Untracked { mark }
            | CtVerdict::Denied { mark } => Mark(mark),
            CtVerdict::Dropped(_) => Mark::NONE,
        }
    }
}

/// Connection tracking plus policy for the vNICs one packet thread serves.
pub struct StatefulFirewall {
    ct: ConnTrack,
    marks: MarkTable,
}

impl std::fmt::Debug for StatefulFirewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulFirewall")
            .field("ct", &self.ct)
            .field("marked_deciders", &self.marks.len())
            .finish()
    }
}

/// The policy question a packet asks as the first packet of a flow.
fn query(pkt: &PacketMeta) -> FlowQuery {
    FlowQuery {
        icmp_type: pkt.icmp_type,
        icmp_code: pkt.icmp_code,
        ..FlowQuery::from_tuple(&pkt.tuple)
    }
}

/// The question a tracked connection's first packet asked. Tracked ICMP connections are echo
/// exchanges opened by a request.
fn tuple_query(t: &FiveTuple) -> FlowQuery {
    let icmp_type = match t.protocol {
        IpProtocol::Icmp => 8,
        IpProtocol::Icmpv6 => 128,
        _ => 0,
    };
    FlowQuery {
        icmp_type,
        ..FlowQuery::from_tuple(t)
    }
}

impl StatefulFirewall {
    pub fn new(cfg: CtConfig) -> Result<Self, CtConfigError> {
        Ok(Self {
            ct: ConnTrack::new(cfg)?,
            marks: MarkTable::default(),
        })
    }

    /// A firewall whose table hashes with `hasher` ([`ConnTrack::with_hasher`]): give the
    /// vNICs of one data path clones of one hasher, and hash each packet once
    /// ([`FlowHasher::packet`]) for [`Self::process_hashed_packet`] in every zone it crosses.
    pub fn with_hasher(cfg: CtConfig, hasher: FlowHasher) -> Result<Self, CtConfigError> {
        Ok(Self {
            ct: ConnTrack::with_hasher(cfg, hasher)?,
            marks: MarkTable::default(),
        })
    }

    /// The connection table (statistics, lookups, iteration).
    pub fn conntrack(&self) -> &ConnTrack {
        &self.ct
    }

    /// The connection table, for [`ConnTrack::expire`], [`ConnTrack::flush_zone`] (a vNIC
    /// went away) and zone limits. Do not call [`ConnTrack::recheck`] directly: use
    /// [`Self::recheck`], which keeps the marks meaningful.
    pub fn conntrack_mut(&mut self) -> &mut ConnTrack {
        &mut self.ct
    }

    /// Process one packet crossing `vnic` in `direction` (egress: leaving the guest;
    /// ingress: to be delivered to it), against the snapshot the thread currently holds.
    ///
    /// `#[inline]`: the data path calls it once per packet and zone from another crate; inlined
    /// there, the [`Outcome`] is taken apart in registers instead of being written out and
    /// read back (a stall when its wide loads meet the narrow stores that built it).
    #[inline]
    pub fn process<'s>(
        &mut self,
        snap: &'s PolicySnapshot,
        vnic: Vnic,
        direction: Direction,
        pkt: &PacketMeta,
        now: u64,
    ) -> Outcome<'s> {
        self.process_with(snap, vnic, direction, pkt, None, now)
    }

    /// [`Self::process`] for a packet hashed by [`FlowHasher::packet`] (see
    /// [`ConnTrack::process_hashed_packet`]): same results, one hash per packet however many
    /// zones of tables sharing the hasher it crosses.
    #[inline]
    pub fn process_hashed_packet<'s>(
        &mut self,
        snap: &'s PolicySnapshot,
        vnic: Vnic,
        direction: Direction,
        pkt: &HashedPacket<'_>,
        now: u64,
    ) -> Outcome<'s> {
        self.process_with(snap, vnic, direction, pkt.meta(), Some(pkt), now)
    }

    #[inline]
    fn process_with<'s>(
        &mut self,
        snap: &'s PolicySnapshot,
        vnic: Vnic,
        direction: Direction,
        pkt: &PacketMeta,
        hashed: Option<&HashedPacket<'_>>,
        now: u64,
    ) -> Outcome<'s> {
        let mut decision = None;
        let marks = &mut self.marks;
        let generation = snap.generation();
        let decide = |p: &PacketMeta| {
            let Some(d) = snap.decide(vnic.endpoint, direction, &query(p)) else {
                // The endpoint is gone from this snapshot: fail closed.
                return conntrack::Decision::Deny { mark: Mark::NONE.0 };
            };
            decision = Some(d);
            if d.effective() == FlowAction::Allow {
                conntrack::Decision::Allow {
                    mark: marks.mark(&d, generation, true).0,
                }
            } else {
                conntrack::Decision::Deny {
                    mark: marks.mark(&d, generation, false).0,
                }
            }
        };
        let ct = match hashed {
            Some(h) => self.ct.process_hashed_packet(vnic.zone, h, now, decide),
            None => self.ct.process(vnic.zone, pkt, now, decide),
        };
        let (action, audit) = match ct {
            CtVerdict::New { mark, .. }
            | CtVerdict::Established { mark, .. }
            | CtVerdict::Related { mark, .. }
            | CtVerdict::Untracked { mark } => (FlowAction::Allow, Mark(mark).audit()),
            CtVerdict::Denied { mark } => (
                match Mark(mark).action() {
                    // Cannot happen (an allowing decision is tracked); fail closed anyway.
                    FlowAction::Allow => FlowAction::Drop,
                    other => other,
                },
                false,
            ),
            CtVerdict::Dropped(_) => (FlowAction::Drop, false),
        };
        Outcome {
            action,
            audit,
            ct,
            decision,
        }
    }

    /// What a mark names: the decision that admitted a connection (or denied a packet, for
    /// the inline facts). `None` for [`Mark::NONE`], for marks from before the last
    /// [`Self::recheck`], and for denied packets' rule (use [`Outcome::decision`] for those).
    pub fn describe(&self, mark: Mark) -> Option<MarkInfo<'_>> {
        self.marks.describe(mark)
    }

    /// Re-decide every tracked connection against `snap` (a new policy): each in the zone's
    /// current endpoint (`endpoint_of`; `None` cuts the zone's connections) and in the
    /// direction its first packet was decided in. Connections the new policy denies are cut
    /// (their next packet is a new connection again, decided again); the others keep their
    /// state, counters and timers, and are re-marked with the new decision. Returns how many
    /// were cut. O(connections): a control-plane step, run by each packet thread when it
    /// picks up a new snapshot.
    pub fn recheck(
        &mut self,
        snap: &PolicySnapshot,
        endpoint_of: impl FnMut(Zone) -> Option<EndpointHandle>,
    ) -> usize {
        self.recheck_with_cut(snap, endpoint_of, |_, _| {})
    }

    /// [`Self::recheck`], telling `on_cut` the zone and original tuple of every connection
    /// it cuts.
    pub fn recheck_with_cut(
        &mut self,
        snap: &PolicySnapshot,
        mut endpoint_of: impl FnMut(Zone) -> Option<EndpointHandle>,
        on_cut: impl FnMut(Zone, &FiveTuple),
    ) -> usize {
        let generation = snap.generation();
        // A fresh, compacted table: deciders no live connection uses any more are dropped.
        let mut fresh = MarkTable::with_epoch(self.marks.epoch().wrapping_add(1));
        let cut = self.ct.recheck_with_cut(
            |zone, tuple, mark| {
                let deny = conntrack::Decision::Deny { mark };
                let Some(direction) = Mark(mark).direction() else {
                    return deny;
                };
                let Some(endpoint) = endpoint_of(zone) else {
                    return deny;
                };
                match snap.decide(endpoint, direction, &tuple_query(tuple)) {
                    Some(d) if d.effective() == FlowAction::Allow => conntrack::Decision::Allow {
                        mark: fresh.mark(&d, generation, true).0,
                    },
                    _ => deny,
                }
            },
            on_cut,
        );
        self.marks = fresh;
        cut
    }
}

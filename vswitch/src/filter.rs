//! The firewall hook.
//!
//! Every frame that crosses between two ports, after parsing, the spoof guard and the switching
//! decision, is shown to exactly one [`PacketFilter`] together with where it comes from and
//! where it would go. The dfw policy engine plugs in here by implementing the trait; the
//! pipeline holds the current filter in an `ArcSwap`, so a new realized policy replaces the old
//! one atomically while traffic flows ([`crate::switch::Switch::set_filter`]).
//!
//! Frames between two local vNICs are presented once, with both ports in the context: the
//! filter applies the sender's egress policy and the receiver's ingress policy in that call.
//! L2 control frames (ARP, neighbour discovery) are presented too; a filter that wants them to
//! work must forward them.

use crate::counters::DropReason;
use crate::packet::ParsedPacket;
use crate::port::PortRef;

/// Where a frame is and where it would go. `now` is a monotonic timestamp in nanoseconds, read
/// once per batch by the data path (dfw takes time as a parameter and never reads a clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterContext {
    pub ingress: PortRef,
    pub egress: PortRef,
    pub now: u64,
}

/// Why the filter dropped a frame; each maps to its own drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDrop {
    /// The port's policy is not realized yet (fail-closed default).
    NotRealized,
    /// A rule (or the default deny) refused it.
    Denied,
    /// Connection tracking found the packet invalid for its connection state.
    ConntrackInvalid,
    /// The connection table of the vNIC is full: a new connection was refused.
    ConntrackFull,
    /// A non-first IP fragment: it carries no ports to decide on, and vdfw does not
    /// reassemble.
    Fragment,
    /// Neither IP nor a control protocol the firewall lets through (ARP, ND).
    NotIp,
}

impl PolicyDrop {
    pub const fn reason(self) -> DropReason {
        match self {
            PolicyDrop::NotRealized => DropReason::PolicyNotRealized,
            PolicyDrop::Denied => DropReason::PolicyDenied,
            PolicyDrop::ConntrackInvalid => DropReason::ConntrackInvalid,
            PolicyDrop::ConntrackFull => DropReason::ConntrackFull,
            PolicyDrop::Fragment => DropReason::IpFragment,
            PolicyDrop::NotIp => DropReason::DisallowedEthertype,
        }
    }
}

/// How to tell the sender no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// TCP RST (non-TCP packets get the ICMP error instead).
    TcpRst,
    /// ICMP / ICMPv6 destination unreachable, "administratively prohibited".
    IcmpUnreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterVerdict {
    Forward,
    Drop(PolicyDrop),
    /// Drop, and deliver a reply built by [`crate::reject`] to the sender.
    Reject(RejectKind),
}

/// A firewall. Called concurrently from every port's worker thread, so implementations keep
/// their mutable state (connection tracking) behind their own fine-grained locks or atomics.
/// Must not block and must not allocate per packet.
pub trait PacketFilter: Send + Sync {
    fn filter(&self, ctx: &FilterContext, pkt: &ParsedPacket) -> FilterVerdict;

    /// Called once after a port's batch of frames (a TX queue poll, an uplink read burst), with
    /// the batch's timestamp: the place for bounded housekeeping such as connection expiry.
    fn end_batch(&self, _ingress: PortRef, _now: u64) {}

    /// A frame from `ingress` that the pipeline dropped before the filter saw it, for a reason
    /// the firewall may want to log (spoof guard). Must not block nor allocate.
    fn observe_drop(&self, _ingress: PortRef, _pkt: &ParsedPacket, _reason: DropReason, _now: u64) {
    }
}

/// Forwards nothing: what a pipeline runs with before a firewall is installed.
#[derive(Debug, Default, Clone, Copy)]
pub struct FailClosed;

impl PacketFilter for FailClosed {
    fn filter(&self, _ctx: &FilterContext, _pkt: &ParsedPacket) -> FilterVerdict {
        FilterVerdict::Drop(PolicyDrop::NotRealized)
    }
}

/// Forwards everything. For tests and for `vdfwd --insecure-allow-all` only: it turns the
/// firewall off (the spoof guard still runs).
#[derive(Debug, Default, Clone, Copy)]
pub struct InsecureAllowAll;

impl PacketFilter for InsecureAllowAll {
    fn filter(&self, _ctx: &FilterContext, _pkt: &ParsedPacket) -> FilterVerdict {
        FilterVerdict::Forward
    }
}

impl<F: PacketFilter + ?Sized> PacketFilter for Box<F> {
    fn filter(&self, ctx: &FilterContext, pkt: &ParsedPacket) -> FilterVerdict {
        (**self).filter(ctx, pkt)
    }
    fn end_batch(&self, ingress: PortRef, now: u64) {
        (**self).end_batch(ingress, now)
    }
    fn observe_drop(&self, ingress: PortRef, pkt: &ParsedPacket, reason: DropReason, now: u64) {
        (**self).observe_drop(ingress, pkt, reason, now)
    }
}

impl<F: PacketFilter + ?Sized> PacketFilter for std::sync::Arc<F> {
    fn filter(&self, ctx: &FilterContext, pkt: &ParsedPacket) -> FilterVerdict {
        (**self).filter(ctx, pkt)
    }
    fn end_batch(&self, ingress: PortRef, now: u64) {
        (**self).end_batch(ingress, now)
    }
    fn observe_drop(&self, ingress: PortRef, pkt: &ParsedPacket, reason: DropReason, now: u64) {
        (**self).observe_drop(ingress, pkt, reason, now)
    }
}

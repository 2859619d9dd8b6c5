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

use std::any::Any;
use std::fmt;

use crate::counters::DropReason;
use crate::packet::ParsedPacket;
use crate::port::PortRef;

/// Where a frame is and where it would go. `now` is a monotonic timestamp in nanoseconds, read
/// once per batch by the data path (dfw takes time as a parameter and never reads a clock).
#[derive(Debug, Clone, Copy)]
pub struct FilterContext<'b> {
    pub ingress: PortRef,
    pub egress: PortRef,
    pub now: u64,
    /// What the filter loaded for the frame's burst ([`PacketFilter::burst_state`]), or
    /// [`BurstState::NONE`] outside a burst.
    pub burst: &'b BurstState,
}

impl FilterContext<'static> {
    /// A context outside any burst: the filter loads what it needs for this frame alone.
    pub fn new(ingress: PortRef, egress: PortRef, now: u64) -> Self {
        FilterContext {
            ingress,
            egress,
            now,
            burst: &BurstState::NONE,
        }
    }
}

/// State a filter loads once per burst of frames instead of once per frame: the firewall's
/// published policy state, whose load from its `ArcSwap` costs two locked instructions (see
/// `firewall_filter/established_pingpong_burst32` in the firewall bench). Opaque to the
/// pipeline, which asks for it at a burst's first filtered frame and hands it back with each
/// of the burst's frames.
///
/// A burst is short (one TX burst, at most a few dozen frames), so an update published
/// meanwhile applies from the next burst on, as it would for frames already in flight.
///
/// It is the burst's own (one thread's, dropped when the burst ends), so a filter may keep
/// per-burst memory in it behind a `Cell`/`RefCell`, and act on it when it is dropped.
#[derive(Default)]
pub struct BurstState(Option<Box<dyn Any>>);

impl BurstState {
    /// No state: the filter loads its own per frame.
    pub const NONE: BurstState = BurstState(None);

    pub fn new(state: Box<dyn Any>) -> Self {
        BurstState(Some(state))
    }

    /// The state, if it is a `T`.
    #[inline]
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref()?.downcast_ref()
    }
}

impl fmt::Debug for BurstState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "BurstState(..)"
        } else {
            "BurstState::NONE"
        })
    }
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

    /// What frames of one burst share, loaded once for the burst and handed back to
    /// [`Self::filter`] in [`FilterContext::burst`] with each of its frames.
    fn burst_state(&self) -> BurstState {
        BurstState::NONE
    }

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
    fn burst_state(&self) -> BurstState {
        (**self).burst_state()
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
    fn burst_state(&self) -> BurstState {
        (**self).burst_state()
    }
    fn end_batch(&self, ingress: PortRef, now: u64) {
        (**self).end_batch(ingress, now)
    }
    fn observe_drop(&self, ingress: PortRef, pkt: &ParsedPacket, reason: DropReason, now: u64) {
        (**self).observe_drop(ingress, pkt, reason, now)
    }
}

//! One tracked connection, stored once in the slab and reachable from both directions.

use std::net::IpAddr;

use super::config::TimeoutClass;
use super::tcp::{TcpConn, TcpPeerState};
use crate::flow::FiveTuple;

/// Conntrack zone: one per vNIC, so the same 5-tuple on two vNICs is two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(pub u32);

/// Which way a packet travels relative to the connection's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    Original = 0,
    Reply = 1,
}

impl Direction {
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// pf's UDP pseudo-states; also used for other datagram protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpState {
    /// One packet seen.
    First,
    /// Several packets from the initiator, none back.
    Single,
    /// Both sides have sent.
    Multiple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtoState {
    Tcp(TcpConn),
    Datagram(UdpState),
    IcmpEcho { replied: bool },
}

/// Compact slab entry: 128 bytes, aligned so it spans exactly two cache lines (unaligned, a
/// 128-byte entry touches three lines on most lookups).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
pub(crate) struct Entry {
    /// The first packet's tuple; the reply key is its reverse.
    pub(crate) orig: FiveTuple,
    pub(crate) zone: u32,
    pub(crate) proto: ProtoState,
    /// Absolute deadline in the caller's clock (ns); at or past it the entry is dead.
    pub(crate) expires: u64,
    pub(crate) mark: u64,
    pub(crate) packets: [u64; 2],
    pub(crate) bytes: [u64; 2],
}

impl Entry {
    #[inline]
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    #[inline]
    pub(crate) fn count(&mut self, dir: Direction, len: u32) {
        let i = dir.index();
        self.packets[i] = self.packets[i].wrapping_add(1);
        self.bytes[i] = self.bytes[i].wrapping_add(u64::from(len));
    }

    /// Which direction of this entry `t` (as seen on the wire, in `zone`) travels, if it
    /// belongs to it at all.
    #[inline]
    pub(crate) fn direction_of(&self, zone: u32, t: &FiveTuple) -> Option<Direction> {
        if self.matches(zone, t, Direction::Original) {
            Some(Direction::Original)
        } else if self.matches(zone, t, Direction::Reply) {
            Some(Direction::Reply)
        } else {
            None
        }
    }

    /// Whether `t`, as seen on the wire, is this entry's original or reply direction.
    #[inline]
    pub(crate) fn matches(&self, zone: u32, t: &FiveTuple, dir: Direction) -> bool {
        if self.zone != zone || self.orig.protocol != t.protocol {
            return false;
        }
        match dir {
            Direction::Original => {
                self.orig.src_port == t.src_port
                    && self.orig.dst_port == t.dst_port
                    && self.orig.src == t.src
                    && self.orig.dst == t.dst
            }
            Direction::Reply => {
                self.orig.src_port == t.dst_port
                    && self.orig.dst_port == t.src_port
                    && self.orig.src == t.dst
                    && self.orig.dst == t.src
            }
        }
    }

    #[inline]
    pub(crate) fn timeout_class(&self) -> TimeoutClass {
        match &self.proto {
            ProtoState::Tcp(c) => c.timeout_class(),
            ProtoState::Datagram(UdpState::First) => TimeoutClass::UdpFirst,
            ProtoState::Datagram(UdpState::Single) => TimeoutClass::UdpSingle,
            ProtoState::Datagram(UdpState::Multiple) => TimeoutClass::UdpMultiple,
            ProtoState::IcmpEcho { replied: false } => TimeoutClass::IcmpFirst,
            ProtoState::IcmpEcho { replied: true } => TimeoutClass::IcmpErrorReply,
        }
    }

    pub(crate) fn info(&self) -> ConnInfo {
        let state = match &self.proto {
            ProtoState::Tcp(c) => ConnState::Tcp {
                original: c.peer(0).state(),
                reply: c.peer(1).state(),
            },
            ProtoState::Datagram(s) => ConnState::Datagram(*s),
            ProtoState::IcmpEcho { replied } => ConnState::IcmpEcho { replied: *replied },
        };
        ConnInfo {
            zone: Zone(self.zone),
            tuple: self.orig,
            mark: self.mark,
            state,
            expires: self.expires,
            packets: self.packets,
            bytes: self.bytes,
        }
    }
}

/// Snapshot of a connection's protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Tcp {
        original: TcpPeerState,
        reply: TcpPeerState,
    },
    Datagram(UdpState),
    IcmpEcho {
        replied: bool,
    },
}

/// Snapshot of one connection, for flow logs, statistics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub zone: Zone,
    /// Tuple of the first packet.
    pub tuple: FiveTuple,
    pub mark: u64,
    pub state: ConnState,
    /// Deadline (ns, caller's clock).
    pub expires: u64,
    /// Packets per direction, indexed by [`Direction::index`].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// A tuple whose reverse is itself (same address and port both ways) cannot be keyed by
/// direction.
pub(crate) fn is_self_addressed(t: &FiveTuple) -> bool {
    t.src == t.dst && t.src_port == t.dst_port
}

/// Widen an address so that hashing can treat both families uniformly.
#[inline]
pub(crate) fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

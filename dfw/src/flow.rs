//! Flow identity shared by the classifier and connection tracking.
//!
//! A [`FiveTuple`] is what both the policy lookup and the conntrack table key on. ICMP echo
//! uses the echo identifier as both ports, so echo request/reply pairs form a pseudo-connection
//! the same way UDP does.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// IP protocol numbers the engine understands. Anything else is carried as `Other` so the
/// data path can still count and drop it by reason instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpProtocol {
    Icmp,
    Tcp,
    Udp,
    Icmpv6,
    Sctp,
    Other(u8),
}

impl IpProtocol {
    pub const fn from_number(n: u8) -> Self {
        match n {
            1 => Self::Icmp,
            6 => Self::Tcp,
            17 => Self::Udp,
            58 => Self::Icmpv6,
            132 => Self::Sctp,
            other => Self::Other(other),
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            Self::Icmp => 1,
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmpv6 => 58,
            Self::Sctp => 132,
            Self::Other(n) => n,
        }
    }

    /// Whether the protocol carries 16-bit source/destination ports in its first four bytes.
    pub const fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::Sctp)
    }

    pub const fn is_icmp(self) -> bool {
        matches!(self, Self::Icmp | Self::Icmpv6)
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Icmp => f.write_str("ICMP"),
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Icmpv6 => f.write_str("ICMPv6"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// The classic 5-tuple, oriented as the packet travels (src → dst).
///
/// For ICMP echo, `src_port` and `dst_port` both hold the echo identifier; for other ICMP
/// messages they are zero and the type/code travel separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FiveTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProtocol,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FiveTuple {
    /// The same flow seen from the other end: what a reply packet carries.
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} -> {}:{}",
            self.protocol, self.src, self.src_port, self.dst, self.dst_port
        )
    }
}

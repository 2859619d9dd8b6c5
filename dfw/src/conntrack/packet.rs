//! What conntrack needs to know about a packet, already parsed by the vswitch.
//!
//! Conntrack never parses bytes: the packet pipeline owns the typed packet views and fills a
//! [`PacketMeta`] from them. That keeps this module free of guest-controlled length arithmetic
//! and lets tests build packets field by field.

use std::fmt;
use std::ops::BitOr;

use crate::flow::{FiveTuple, IpProtocol};

/// TCP header flags, bit-compatible with the flags byte of the TCP header (RFC 9293, RFC 3168).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const NONE: Self = Self(0);
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);
    pub const ECE: Self = Self(0x40);
    pub const CWR: Self = Self(0x80);

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether the combination is one a real TCP stack sends.
    ///
    /// Same table as Linux `tcp_valid_flags`: PSH, ECE and CWR are ignored; SYN+FIN, SYN+RST,
    /// FIN without ACK and the empty set ("null scan") are rejected.
    pub const fn is_valid_combination(self) -> bool {
        const SYN: u8 = TcpFlags::SYN.0;
        const ACK: u8 = TcpFlags::ACK.0;
        const RST: u8 = TcpFlags::RST.0;
        const FIN: u8 = TcpFlags::FIN.0;
        const URG: u8 = TcpFlags::URG.0;
        const SYN_URG: u8 = SYN | URG;
        const SYN_ACK: u8 = SYN | ACK;
        const RST_ACK: u8 = RST | ACK;
        const FIN_ACK: u8 = FIN | ACK;
        const FIN_ACK_URG: u8 = FIN | ACK | URG;
        const ACK_URG: u8 = ACK | URG;
        let f = self.0 & !(Self::PSH.0 | Self::ECE.0 | Self::CWR.0);
        matches!(
            f,
            SYN | SYN_URG | SYN_ACK | RST | RST_ACK | FIN_ACK | FIN_ACK_URG | ACK | ACK_URG
        )
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        if self.0 == 0 {
            return f.write_str("TcpFlags(none)");
        }
        f.write_str("TcpFlags(")?;
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// Parsed facts about one packet, filled by the vswitch from its packet views.
///
/// Fields that do not apply to the packet's protocol are ignored (leave them zero / `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// Oriented as the packet travels. For ICMP echo both ports hold the echo identifier.
    pub tuple: FiveTuple,
    /// Bytes accounted to the connection's counters (the L3 packet length).
    pub len: u32,
    pub tcp_flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    /// Raw (unscaled) window field of the TCP header.
    pub window: u16,
    /// Window-scale option shift count, only meaningful on SYN segments that carry the option.
    pub wscale: Option<u8>,
    /// TCP payload length (segment length without SYN/FIN). With GSO/TSO this may exceed 64 KiB.
    pub payload_len: u32,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// For ICMP errors: the embedded header that triggered the error, as it was sent (so its
    /// source is the host the error is addressed to). `None` if it could not be parsed.
    pub icmp_inner: Option<FiveTuple>,
}

impl PacketMeta {
    fn base(tuple: FiveTuple) -> Self {
        Self {
            tuple,
            len: 0,
            tcp_flags: TcpFlags::NONE,
            seq: 0,
            ack: 0,
            window: 0,
            wscale: None,
            payload_len: 0,
            icmp_type: 0,
            icmp_code: 0,
            icmp_inner: None,
        }
    }

    /// A TCP segment. `len` starts as `payload_len`; set the wire length with [`Self::with_len`].
    pub fn tcp(
        tuple: FiveTuple,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        window: u16,
        payload_len: u32,
    ) -> Self {
        Self {
            tcp_flags: flags,
            seq,
            ack,
            window,
            payload_len,
            len: payload_len,
            ..Self::base(tuple)
        }
    }

    /// A datagram of any protocol tracked by addresses and ports only (UDP, SCTP, others).
    pub fn datagram(tuple: FiveTuple, len: u32) -> Self {
        Self {
            len,
            ..Self::base(tuple)
        }
    }

    /// An ICMP / ICMPv6 message. For echo, `tuple` carries the identifier as both ports; it
    /// is oriented here: a request keeps the id as its source port (destination port 0), a
    /// reply as its destination port. A request and its reply are then the two directions of
    /// one entry, while a request the other way with the same id (two guests whose `ping`
    /// got the same pid) is a separate exchange, as Linux keys ICMP on the type too.
    pub fn icmp(mut tuple: FiveTuple, icmp_type: u8, icmp_code: u8) -> Self {
        match (tuple.protocol, icmp_type) {
            (IpProtocol::Icmp, 8) | (IpProtocol::Icmpv6, 128) => tuple.dst_port = 0,
            (IpProtocol::Icmp, 0) | (IpProtocol::Icmpv6, 129) => tuple.src_port = 0,
            _ => {}
        }
        Self {
            icmp_type,
            icmp_code,
            ..Self::base(tuple)
        }
    }

    /// An ICMP error quoting `inner`.
    pub fn icmp_error(tuple: FiveTuple, icmp_type: u8, icmp_code: u8, inner: FiveTuple) -> Self {
        Self {
            icmp_inner: Some(inner),
            ..Self::icmp(tuple, icmp_type, icmp_code)
        }
    }

    pub fn with_len(mut self, len: u32) -> Self {
        self.len = len;
        self
    }

    pub fn with_wscale(mut self, shift: u8) -> Self {
        self.wscale = Some(shift);
        self
    }

    /// Sequence space consumed by the segment: payload plus one for SYN and one for FIN.
    pub(crate) fn tcp_seg_end(&self) -> u32 {
        let mut end = self.seq.wrapping_add(self.payload_len);
        if self.tcp_flags.contains(TcpFlags::SYN) {
            end = end.wrapping_add(1);
        }
        if self.tcp_flags.contains(TcpFlags::FIN) {
            end = end.wrapping_add(1);
        }
        end
    }
}

/// How conntrack handles a packet, decided from protocol and ICMP type alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketKind {
    Tcp,
    /// UDP, SCTP and any other IP protocol: tracked by addresses and ports, UDP timers.
    Datagram,
    IcmpEcho {
        request: bool,
    },
    IcmpError,
    /// ICMP messages that are neither echo nor errors (neighbour discovery, MLD, router
    /// advertisements, timestamps...). They are not connections; policy decides per packet.
    IcmpOther,
}

impl PacketKind {
    pub(crate) fn of(pkt: &PacketMeta) -> Self {
        match pkt.tuple.protocol {
            IpProtocol::Tcp => Self::Tcp,
            IpProtocol::Icmp => match pkt.icmp_type {
                8 => Self::IcmpEcho { request: true },
                0 => Self::IcmpEcho { request: false },
                // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
                3 | 4 | 5 | 11 | 12 => Self::IcmpError,
                _ => Self::IcmpOther,
            },
            IpProtocol::Icmpv6 => match pkt.icmp_type {
                128 => Self::IcmpEcho { request: true },
                129 => Self::IcmpEcho { request: false },
                // Destination unreachable, packet too big, time exceeded, parameter problem.
                1..=4 => Self::IcmpError,
                _ => Self::IcmpOther,
            },
            IpProtocol::Udp | IpProtocol::Sctp | IpProtocol::Other(_) => Self::Datagram,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_flag_table_matches_linux() {
        let valid = [
            TcpFlags::SYN,
            TcpFlags::SYN | TcpFlags::URG,
            TcpFlags::SYN | TcpFlags::ACK,
            TcpFlags::RST,
            TcpFlags::RST | TcpFlags::ACK,
            TcpFlags::FIN | TcpFlags::ACK,
            TcpFlags::FIN | TcpFlags::ACK | TcpFlags::URG,
            TcpFlags::ACK,
            TcpFlags::ACK | TcpFlags::URG,
            TcpFlags::ACK | TcpFlags::PSH,
            TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR,
        ];
        let mut n_valid = 0;
        for bits in 0..=255u8 {
            let f = TcpFlags(bits);
            let expected = valid
                .iter()
                .any(|v| v.0 & !(0x08 | 0x40 | 0x80) == bits & !(0x08 | 0x40 | 0x80));
            assert_eq!(f.is_valid_combination(), expected, "{f:?}");
            n_valid += usize::from(expected);
        }
        // 9 base combinations, each with any of PSH/ECE/CWR (2^3).
        assert_eq!(n_valid, 9 * 8);
        assert!(!(TcpFlags::SYN | TcpFlags::FIN).is_valid_combination());
        assert!(!(TcpFlags::SYN | TcpFlags::RST).is_valid_combination());
        assert!(!TcpFlags::NONE.is_valid_combination());
        assert!(!TcpFlags::FIN.is_valid_combination());
    }

    #[test]
    fn flags_debug_lists_names() {
        assert_eq!(
            format!("{:?}", TcpFlags::SYN | TcpFlags::ACK),
            "TcpFlags(SYN|ACK)"
        );
        assert_eq!(format!("{:?}", TcpFlags::NONE), "TcpFlags(none)");
    }
}

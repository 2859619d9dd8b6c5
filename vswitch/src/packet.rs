//! A typed, copy-out view of the headers of one Ethernet frame.
//!
//! Parsing is done by etherparse (strict mode: lengths must be consistent); we then copy the
//! few fields the switch, the spoof guard and the firewall need into plain values. The common
//! shapes (Ethernet II [+ 802.1Q] + IPv4/IPv6 + TCP/UDP) are first tried by a hand-written
//! decoder ([`fast`]) that must agree with etherparse field for field and hands everything
//! else to it. The view
//! holds no borrow of the frame, so the TX path can keep mutating its buffer (checksum
//! completion) after the decision was taken on the same bytes — the bytes we decided on are the
//! bytes we forward (pitfall 2: decide on our copy, never on guest memory).
//!
//! Offsets into the frame are kept in [`Layout`] for the code that rewrites frames
//! (segmentation, reject builders).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dfw::flow::{FiveTuple, IpProtocol};
use etherparse::{LinkExtSlice, LinkSlice, NetSlice, SlicedPacket, TransportSlice};

use crate::mac::MacAddr;

mod fast;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;

pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

pub const ICMPV4_DEST_UNREACHABLE: u8 = 3;
pub const ICMPV4_ECHO_REPLY: u8 = 0;
pub const ICMPV4_ECHO_REQUEST: u8 = 8;
pub const ICMPV4_TIME_EXCEEDED: u8 = 11;
pub const ICMPV4_PARAMETER_PROBLEM: u8 = 12;

pub const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;

/// Ethernet layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetInfo {
    pub src: MacAddr,
    pub dst: MacAddr,
    /// Ethertype of the payload (after any VLAN tag).
    pub ethertype: u16,
    /// Outermost 802.1Q tag, if any.
    pub vlan: Option<VlanTag>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    pub id: u16,
    pub pcp: u8,
}

/// ARP for IPv4 over Ethernet (other hardware/protocol types parse as [`Net::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpInfo {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

/// IP fragment position; `None` in [`IpInfo::fragment`] means an unfragmented packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    /// Offset in 8-byte units; 0 for the first fragment (which still carries the L4 header).
    pub offset: u16,
    pub more_fragments: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub protocol: IpProtocol,
    /// TTL / hop limit.
    pub ttl: u8,
    pub fragment: Option<FragmentInfo>,
}

/// Network layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Arp(ArpInfo),
    Ipv4(IpInfo),
    Ipv6(IpInfo),
    /// Ethertype we do not decode (the spoof guard drops these from guests).
    Other,
}

/// TCP flag bits as on the wire (byte 13 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub const fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    pub const fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    pub const fn ack(self) -> bool {
        self.has(Self::ACK)
    }
    pub const fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    pub const fn rst(self) -> bool {
        self.has(Self::RST)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    /// TCP header length in bytes (with options).
    pub header_len: u8,
    /// Payload bytes (for a TSO super-segment: the whole super-segment's payload).
    pub payload_len: u32,
    /// Window-scale option shift (RFC 7323), decoded on SYN segments only (the only place
    /// it counts): connection tracking needs it to follow the peers' windows.
    pub wscale: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: u32,
    /// For DHCPv4 (ports 67/68): the client hardware address (`chaddr`), which is how the
    /// switch delivers a broadcast DHCP reply from the uplink to the right vNIC.
    pub dhcp_chaddr: Option<MacAddr>,
}

/// The IP header and first L4 bytes quoted inside an ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProtocol,
    /// Ports of the quoted TCP/UDP/SCTP header; echo identifier (both) for quoted ICMP echo;
    /// zero when the quote is too short or the protocol has no ports.
    pub src_port: u16,
    pub dst_port: u16,
}

impl InnerPacket {
    /// Flow of the quoted packet, oriented as the quoted packet travelled.
    pub fn five_tuple(&self) -> FiveTuple {
        FiveTuple {
            src: self.src,
            dst: self.dst,
            protocol: self.protocol,
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpInfo {
    pub icmp_type: u8,
    pub code: u8,
    /// `(identifier, sequence)` for echo request/reply.
    pub echo: Option<(u16, u16)>,
    /// Quoted packet for error messages (dest unreachable, time exceeded, parameter problem,
    /// packet too big).
    pub inner: Option<InnerPacket>,
    /// Target address of an IPv6 neighbour solicitation/advertisement.
    pub nd_target: Option<Ipv6Addr>,
}

impl IcmpInfo {
    pub fn is_error(&self) -> bool {
        self.inner.is_some()
    }
}

/// Transport layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp(TcpInfo),
    Udp(UdpInfo),
    Icmpv4(IcmpInfo),
    Icmpv6(IcmpInfo),
    /// Non-first fragment, or a protocol we do not decode.
    None,
}

/// Byte offsets into the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layout {
    /// Start of the L3 header (14, or 18 with a VLAN tag).
    pub l3: u16,
    /// Start of the L4 header, when one was decoded.
    pub l4: Option<u16>,
    /// End of the L3 packet (IP total length): anything after is Ethernet padding.
    pub l3_end: u32,
}

/// Everything the data path knows about a frame after parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedPacket {
    pub eth: EthernetInfo,
    pub net: Net,
    pub transport: Transport,
    pub layout: Layout,
    /// Frame length in bytes (without the virtio-net header).
    pub frame_len: u32,
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Kept as etherparse's own error value: formatting it would allocate, and a guest can
    /// send malformed frames at line rate.
    #[error("frame rejected by etherparse: {0}")]
    Sliced(etherparse::err::packet::SliceError),
    #[error("frame without an Ethernet II header")]
    NoEthernet,
    #[error("more than one VLAN tag or a MACsec header")]
    UnsupportedLinkExt,
}

fn offset_of(frame: &[u8], part: &[u8]) -> usize {
    // Both are slices of the same buffer (etherparse only sub-slices), so the difference of
    // their start addresses is the offset; saturate defensively instead of trusting it blindly.
    (part.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize)
}

fn ip_from_slice(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Decodes the IP header + first 8 bytes quoted in an ICMP error. Lax by design: the quote is
/// usually truncated, so lengths in it cannot be checked.
fn parse_inner(quote: &[u8]) -> Option<InnerPacket> {
    let version = quote.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            let ihl = ((quote[0] & 0x0f) as usize) * 4;
            if ihl < 20 || quote.len() < 20 {
                return None;
            }
            let src = ip_from_slice(&quote[12..16])?;
            let dst = ip_from_slice(&quote[16..20])?;
            (src, dst, quote[9], quote.get(ihl..).unwrap_or(&[]))
        }
        6 => {
            if quote.len() < 40 {
                return None;
            }
            let src = ip_from_slice(&quote[8..24])?;
            let dst = ip_from_slice(&quote[24..40])?;
            (src, dst, quote[6], &quote[40..])
        }
        _ => return None,
    };
    let protocol = IpProtocol::from_number(proto);
    let (src_port, dst_port) = if protocol.has_ports() {
        (be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0))
    } else if protocol.is_icmp() {
        // Quoted echo: the identifier stands in for both ports, as in dfw's FiveTuple.
        let t = l4.first().copied();
        let is_echo = matches!(
            (protocol, t),
            (
                IpProtocol::Icmp,
                Some(ICMPV4_ECHO_REQUEST | ICMPV4_ECHO_REPLY)
            ) | (
                IpProtocol::Icmpv6,
                Some(ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            )
        );
        let id = if is_echo { be16(l4, 4).unwrap_or(0) } else { 0 };
        (id, id)
    } else {
        (0, 0)
    };
    Some(InnerPacket {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
    })
}

fn icmp_info(v6: bool, icmp_type: u8, code: u8, message: &[u8]) -> IcmpInfo {
    let (echo_types, error_types): (&[u8], &[u8]) = if v6 {
        (
            &[ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY],
            &[
                ICMPV6_DEST_UNREACHABLE,
                ICMPV6_PACKET_TOO_BIG,
                ICMPV6_TIME_EXCEEDED,
                ICMPV6_PARAMETER_PROBLEM,
            ],
        )
    } else {
        (
            &[ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY],
            &[
                ICMPV4_DEST_UNREACHABLE,
                ICMPV4_TIME_EXCEEDED,
                ICMPV4_PARAMETER_PROBLEM,
            ],
        )
    };
    let echo = if echo_types.contains(&icmp_type) {
        be16(message, 4).zip(be16(message, 6))
    } else {
        None
    };
    let inner = if error_types.contains(&icmp_type) {
        message.get(8..).and_then(parse_inner)
    } else {
        None
    };
    let nd_target = if v6 && matches!(icmp_type, ICMPV6_NEIGHBOR_SOLICIT | ICMPV6_NEIGHBOR_ADVERT) {
        message
            .get(8..24)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(Ipv6Addr::from)
    } else {
        None
    };
    IcmpInfo {
        icmp_type,
        code,
        echo,
        inner,
        nd_target,
    }
}

/// The window-scale option of a TCP header, if present and well formed.
fn window_scale(t: &etherparse::TcpSlice<'_>) -> Option<u8> {
    t.options_iterator().find_map(|o| match o {
        Ok(etherparse::TcpOptionElement::WindowScale(shift)) => Some(shift),
        _ => None,
    })
}

impl ParsedPacket {
    /// Parses an Ethernet frame (without virtio-net header).
    ///
    /// Common shapes are decoded by the hand-written fast path; anything it does not claim
    /// goes through [`ParsedPacket::parse_reference`]. The result is the same either way.
    pub fn parse(frame: &[u8]) -> Result<ParsedPacket, ParseError> {
        match fast::parse(frame) {
            Some(p) => Ok(p),
            None => Self::parse_reference(frame),
        }
    }

    /// The etherparse-based parser: handles every shape and is the reference the fast path
    /// is tested against. Public for that test and for the A/B benchmark; the data path
    /// calls [`ParsedPacket::parse`].
    #[inline(never)]
    pub fn parse_reference(frame: &[u8]) -> Result<ParsedPacket, ParseError> {
        let sliced = SlicedPacket::from_ethernet(frame).map_err(ParseError::Sliced)?;
        let eth2 = match &sliced.link {
            Some(LinkSlice::Ethernet2(e)) => e,
            _ => return Err(ParseError::NoEthernet),
        };
        let mut ethertype = eth2.ether_type().0;
        let mut vlan = None;
        match sliced.link_exts.as_slice() {
            [] => {}
            [LinkExtSlice::Vlan(v)] => {
                vlan = Some(VlanTag {
                    id: v.vlan_identifier().value(),
                    pcp: v.priority_code_point().value(),
                });
                ethertype = v.ether_type().0;
            }
            _ => return Err(ParseError::UnsupportedLinkExt),
        }
        let eth = EthernetInfo {
            src: MacAddr(eth2.source()),
            dst: MacAddr(eth2.destination()),
            ethertype,
            vlan,
        };
        let l3 = 14 + if vlan.is_some() { 4 } else { 0 };
        let mut layout = Layout {
            l3: l3 as u16,
            l4: None,
            l3_end: frame.len() as u32,
        };

        let net = match &sliced.net {
            Some(NetSlice::Arp(arp)) => {
                let sender_mac = MacAddr::from_slice(arp.sender_hw_addr());
                let target_mac = MacAddr::from_slice(arp.target_hw_addr());
                let sender_ip = ip_from_slice(arp.sender_protocol_addr());
                let target_ip = ip_from_slice(arp.target_protocol_addr());
                match (sender_mac, target_mac, sender_ip, target_ip) {
                    (Some(sm), Some(tm), Some(IpAddr::V4(si)), Some(IpAddr::V4(ti)))
                        if arp.hw_addr_size() == 6 =>
                    {
                        Net::Arp(ArpInfo {
                            operation: arp.operation().0,
                            sender_mac: sm,
                            sender_ip: si,
                            target_mac: tm,
                            target_ip: ti,
                        })
                    }
                    _ => Net::Other,
                }
            }
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                layout.l3_end = (l3 + h.total_len() as usize) as u32;
                let fragment =
                    (h.more_fragments() || h.fragments_offset().value() != 0).then(|| {
                        FragmentInfo {
                            offset: h.fragments_offset().value(),
                            more_fragments: h.more_fragments(),
                        }
                    });
                Net::Ipv4(IpInfo {
                    src: IpAddr::V4(h.source_addr()),
                    dst: IpAddr::V4(h.destination_addr()),
                    protocol: IpProtocol::from_number(ip.payload().ip_number.0),
                    ttl: h.ttl(),
                    fragment,
                })
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                layout.l3_end = (l3 + 40 + h.payload_length() as usize) as u32;
                // An "atomic fragment" (offset 0, no more fragments) is a whole packet.
                let fragment = ip
                    .extensions()
                    .clone()
                    .into_iter()
                    .find_map(|ext| match ext {
                        etherparse::Ipv6ExtensionSlice::Fragment(f)
                            if f.fragment_offset().value() != 0 || f.more_fragments() =>
                        {
                            Some(FragmentInfo {
                                offset: f.fragment_offset().value(),
                                more_fragments: f.more_fragments(),
                            })
                        }
                        _ => None,
                    });
                Net::Ipv6(IpInfo {
                    src: IpAddr::V6(h.source_addr()),
                    dst: IpAddr::V6(h.destination_addr()),
                    protocol: IpProtocol::from_number(ip.payload().ip_number.0),
                    ttl: h.hop_limit(),
                    fragment,
                })
            }
            None => Net::Other,
        };

        let transport = match &sliced.transport {
            Some(TransportSlice::Tcp(t)) => {
                layout.l4 = Some(offset_of(frame, t.slice()) as u16);
                Transport::Tcp(TcpInfo {
                    src_port: t.source_port(),
                    dst_port: t.destination_port(),
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    flags: TcpFlags(t.header_slice().get(13).copied().unwrap_or(0)),
                    window: t.window_size(),
                    header_len: t.header_len() as u8,
                    payload_len: t.payload().len() as u32,
                    wscale: if t.syn() { window_scale(t) } else { None },
                })
            }
            Some(TransportSlice::Udp(u)) => {
                layout.l4 = Some(offset_of(frame, u.slice()) as u16);
                let (sp, dp) = (u.source_port(), u.destination_port());
                let payload = u.payload();
                let is_dhcp4 = matches!(net, Net::Ipv4(_))
                    && matches!((sp, dp), (67, 68) | (68, 67) | (67, 67));
                let dhcp_chaddr = if is_dhcp4 {
                    // BOOTP: op, htype, hlen, ... chaddr at offset 28.
                    match (payload.get(1), payload.get(2)) {
                        (Some(1), Some(6)) => payload.get(28..34).and_then(MacAddr::from_slice),
                        _ => None,
                    }
                } else {
                    None
                };
                Transport::Udp(UdpInfo {
                    src_port: sp,
                    dst_port: dp,
                    payload_len: payload.len() as u32,
                    dhcp_chaddr,
                })
            }
            Some(TransportSlice::Icmpv4(i)) => {
                layout.l4 = Some(offset_of(frame, i.slice()) as u16);
                Transport::Icmpv4(icmp_info(false, i.type_u8(), i.code_u8(), i.slice()))
            }
            Some(TransportSlice::Icmpv6(i)) => {
                layout.l4 = Some(offset_of(frame, i.slice()) as u16);
                Transport::Icmpv6(icmp_info(true, i.type_u8(), i.code_u8(), i.slice()))
            }
            _ => Transport::None,
        };

        Ok(ParsedPacket {
            eth,
            net,
            transport,
            layout,
            frame_len: frame.len() as u32,
        })
    }

    /// IP layer, for IPv4 and IPv6 alike.
    pub fn ip(&self) -> Option<&IpInfo> {
        match &self.net {
            Net::Ipv4(ip) | Net::Ipv6(ip) => Some(ip),
            _ => None,
        }
    }

    pub fn arp(&self) -> Option<&ArpInfo> {
        match &self.net {
            Net::Arp(a) => Some(a),
            _ => None,
        }
    }

    pub fn tcp(&self) -> Option<&TcpInfo> {
        match &self.transport {
            Transport::Tcp(t) => Some(t),
            _ => None,
        }
    }

    pub fn icmp(&self) -> Option<&IcmpInfo> {
        match &self.transport {
            Transport::Icmpv4(i) | Transport::Icmpv6(i) => Some(i),
            _ => None,
        }
    }

    /// Ports of the L4 header, or the echo identifier for ICMP echo (as in dfw's `FiveTuple`).
    pub fn ports(&self) -> (u16, u16) {
        match &self.transport {
            Transport::Tcp(t) => (t.src_port, t.dst_port),
            Transport::Udp(u) => (u.src_port, u.dst_port),
            Transport::Icmpv4(i) | Transport::Icmpv6(i) => match i.echo {
                Some((id, _)) => (id, id),
                None => (0, 0),
            },
            Transport::None => (0, 0),
        }
    }

    /// The flow this packet belongs to, for IP packets.
    pub fn five_tuple(&self) -> Option<FiveTuple> {
        let ip = self.ip()?;
        let (src_port, dst_port) = self.ports();
        Some(FiveTuple {
            src: ip.src,
            dst: ip.dst,
            protocol: ip.protocol,
            src_port,
            dst_port,
        })
    }

    /// Length of Ethernet + IP + TCP headers for a TCP packet (virtio `hdr_len` for GSO).
    pub fn tcp_headers_len(&self) -> Option<u16> {
        let t = self.tcp()?;
        Some(self.layout.l4? + t.header_len as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn build(b: etherparse::PacketBuilderStep<etherparse::TcpHeader>, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    #[test]
    fn tcp_over_ipv4() {
        let f = build(
            PacketBuilder::ethernet2(A, B)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 1000, 64240)
                .syn(),
            b"",
        );
        let p = ParsedPacket::parse(&f).unwrap();
        assert_eq!(p.eth.src, MacAddr(A));
        assert_eq!(p.eth.dst, MacAddr(B));
        assert_eq!(p.eth.ethertype, ETHERTYPE_IPV4);
        let ip = p.ip().unwrap();
        assert_eq!(ip.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.protocol, IpProtocol::Tcp);
        assert_eq!(ip.ttl, 64);
        assert!(ip.fragment.is_none());
        let t = p.tcp().unwrap();
        assert_eq!((t.src_port, t.dst_port, t.seq), (40000, 80, 1000));
        assert!(t.flags.syn() && !t.flags.ack());
        assert_eq!(t.window, 64240);
        assert_eq!(p.layout.l3, 14);
        assert_eq!(p.layout.l4, Some(34));
        assert_eq!(p.tcp_headers_len(), Some(54));
        let ft = p.five_tuple().unwrap();
        assert_eq!(
            (ft.src_port, ft.dst_port, ft.protocol),
            (40000, 80, IpProtocol::Tcp)
        );
    }

    #[test]
    fn udp_over_vlan_ipv6() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv6([0xfd; 16], [0xfe; 16], 5)
            .udp(53, 5353)
            .write(&mut f, b"hello")
            .unwrap();
        let p = ParsedPacket::parse(&f).unwrap();
        assert_eq!(p.eth.vlan.map(|v| v.id), Some(42));
        assert_eq!(p.eth.ethertype, ETHERTYPE_IPV6);
        assert_eq!(p.layout.l3, 18);
        assert_eq!(p.ports(), (53, 5353));
        assert!(matches!(p.transport, Transport::Udp(u) if u.payload_len == 5));
    }

    #[test]
    fn arp_request() {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&A);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&A);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f.resize(60, 0); // Ethernet padding must not confuse the parser.
        let p = ParsedPacket::parse(&f).unwrap();
        let a = p.arp().unwrap();
        assert_eq!(a.operation, ARP_OP_REQUEST);
        assert_eq!(a.sender_mac, MacAddr(A));
        assert_eq!(a.sender_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(a.target_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.ip().is_none());
    }

    #[test]
    fn icmp_error_exposes_inner_flow() {
        // Inner: UDP 10.0.0.2:5000 -> 10.0.0.9:53, quoted IP header + 8 bytes.
        let mut inner = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 9], 64)
            .udp(5000, 53)
            .write(&mut inner, b"query-payload")
            .unwrap();
        inner.truncate(28);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 9], [10, 0, 0, 2], 64)
            .icmpv4_raw(ICMPV4_DEST_UNREACHABLE, 3, [0; 4])
            .write(&mut f, &inner)
            .unwrap();
        let p = ParsedPacket::parse(&f).unwrap();
        let i = p.icmp().unwrap();
        assert_eq!((i.icmp_type, i.code), (3, 3));
        let inner = i.inner.unwrap();
        assert_eq!(inner.protocol, IpProtocol::Udp);
        assert_eq!((inner.src_port, inner.dst_port), (5000, 53));
        assert_eq!(inner.src, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.ports(), (0, 0));
    }

    #[test]
    fn icmp_echo_uses_identifier_as_ports() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(0x1234, 7)
            .write(&mut f, b"ping")
            .unwrap();
        let p = ParsedPacket::parse(&f).unwrap();
        assert_eq!(p.icmp().unwrap().echo, Some((0x1234, 7)));
        assert_eq!(p.ports(), (0x1234, 0x1234));
    }

    #[test]
    fn neighbor_solicitation_target() {
        let target: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut body = [0u8; 4 + 16];
        body[4..].copy_from_slice(&target.octets());
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, [0x33, 0x33, 0xff, 0, 0, 2])
            .ipv6(
                "fd00::1".parse::<Ipv6Addr>().unwrap().octets(),
                "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap().octets(),
                255,
            )
            .icmpv6_raw(ICMPV6_NEIGHBOR_SOLICIT, 0, [0; 4])
            .write(&mut f, &body[4..])
            .unwrap();
        let p = ParsedPacket::parse(&f).unwrap();
        assert_eq!(p.icmp().unwrap().nd_target, Some(target));
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let f = build(
            PacketBuilder::ethernet2(A, B)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(1, 2, 3, 4),
            b"payload",
        );
        for len in 0..f.len() - 7 {
            // Shorter than the IP total length: strict parsing must refuse, never panic.
            let r = ParsedPacket::parse(&f[..len]);
            assert!(r.is_err(), "len {len} parsed: {r:?}");
        }
    }

    #[test]
    fn ipv4_fragment() {
        let mut f = build(
            PacketBuilder::ethernet2(A, B)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(1, 2, 3, 4),
            &[0u8; 40],
        );
        // Set fragment offset 185 (x8 bytes), MF=0, and fix the header checksum (ignored by
        // the parser anyway).
        f[14 + 6] = 0;
        f[14 + 7] = 185;
        let p = ParsedPacket::parse(&f).unwrap();
        let frag = p.ip().unwrap().fragment.unwrap();
        assert_eq!(frag.offset, 185);
        assert!(!frag.more_fragments);
        assert_eq!(
            p.transport,
            Transport::None,
            "non-first fragments carry no L4 header"
        );
    }
}

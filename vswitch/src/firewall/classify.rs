//! What the firewall makes of a parsed frame: link-layer control traffic it lets through
//! without policy, or an IP packet described for conntrack ([`PacketMeta`]). (The policy
//! question of a new flow is built from the same meta by dfw, only when conntrack needs it.)
//!
//! # Control traffic (no policy, no connection tracking)
//! Kubernetes network policy governs IP flows; it says nothing about the link-layer
//! machinery that makes IP work, and neither Antrea nor Cilium subject it to policy. vdfw lets
//! through, after the spoof guard has validated the guest's claims:
//! * ARP (requests are switched to the owner of the target address only);
//! * ICMPv6 neighbour discovery and MLD (RS, RA, NS, NA; MLD query/report/done) with the
//!   hop limit ND requires (255; MLD: 1), so routed, forged ND is not mistaken for it;
//! * DHCP address acquisition: a guest's broadcast DHCPv4 client message (68 -> 67 to
//!   255.255.255.255) or DHCPv6 client message to `ff02::1:2`, and server replies (67 -> 68,
//!   547 -> 546) arriving from the uplink. DHCP only hands the guest an address its vNIC is
//!   already bound to, so blocking it would only break the guest. Unicast renewals are plain
//!   UDP and go through policy (a lease falls back to broadcast rebinding).

use std::net::{IpAddr, Ipv6Addr};

use dfw::conntrack::{PacketMeta, TcpFlags};

use crate::packet::{Net, ParsedPacket, Transport};

/// Kinds of control traffic (see the module doc); counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Arp,
    NeighborDiscovery,
    Dhcp,
}

/// The firewall's view of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Control(Control),
    Ip {
        meta: PacketMeta,
    },
    /// Non-first IP fragment: no L4 header to decide on.
    Fragment,
    /// Neither IP nor control traffic (e.g. an ARP for another hardware type).
    NotIp,
}

/// ICMPv6 types of neighbour discovery (RFC 4861) that need hop limit 255.
const ND_TYPES: [u8; 4] = [133, 134, 135, 136];
/// MLD query / report / done and MLDv2 report (hop limit 1).
const MLD_TYPES: [u8; 4] = [130, 131, 132, 143];
const DHCPV6_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

fn control(pkt: &ParsedPacket, from_uplink: bool) -> Option<Control> {
    let ip = match &pkt.net {
        Net::Arp(_) => return Some(Control::Arp),
        Net::Ipv4(ip) | Net::Ipv6(ip) => ip,
        Net::Other => return None,
    };
    match &pkt.transport {
        Transport::Icmpv6(i) => {
            let nd = ND_TYPES.contains(&i.icmp_type) && ip.ttl == 255;
            let mld = MLD_TYPES.contains(&i.icmp_type) && ip.ttl == 1;
            (nd || mld).then_some(Control::NeighborDiscovery)
        }
        Transport::Udp(u) => {
            let dhcp = match (ip.dst, from_uplink) {
                (IpAddr::V4(d), false) => u.src_port == 68 && u.dst_port == 67 && d.is_broadcast(),
                (IpAddr::V4(_), true) => u.src_port == 67 && u.dst_port == 68,
                (IpAddr::V6(d), false) => {
                    u.src_port == 546 && u.dst_port == 547 && d == DHCPV6_SERVERS
                }
                (IpAddr::V6(_), true) => u.src_port == 547 && u.dst_port == 546,
            };
            dhcp.then_some(Control::Dhcp)
        }
        _ => None,
    }
}

/// Classifies a frame arriving from a vNIC (`from_uplink` false) or the uplink.
pub fn classify(pkt: &ParsedPacket, from_uplink: bool) -> Class {
    if let Some(c) = control(pkt, from_uplink) {
        return Class::Control(c);
    }
    let (Some(ip), Some(tuple)) = (pkt.ip(), pkt.five_tuple()) else {
        return Class::NotIp;
    };
    if ip.fragment.is_some_and(|f| f.offset != 0) {
        return Class::Fragment;
    }
    let len = pkt.layout.l3_end.saturating_sub(u32::from(pkt.layout.l3));
    let meta = match &pkt.transport {
        Transport::Tcp(t) => {
            let mut m = PacketMeta::tcp(
                tuple,
                TcpFlags(t.flags.0),
                t.seq,
                t.ack,
                t.window,
                t.payload_len,
            )
            .with_len(len);
            m.wscale = t.wscale;
            m
        }
        Transport::Icmpv4(i) | Transport::Icmpv6(i) => match i.inner {
            Some(inner) => PacketMeta::icmp_error(tuple, i.icmp_type, i.code, inner.five_tuple()),
            None => PacketMeta::icmp(tuple, i.icmp_type, i.code),
        }
        .with_len(len),
        Transport::Udp(_) | Transport::None => PacketMeta::datagram(tuple, len),
    };
    Class::Ip { meta }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfw::flow::IpProtocol;
    use etherparse::{PacketBuilder, TcpOptionElement};

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn parse(f: &[u8]) -> ParsedPacket {
        ParsedPacket::parse(f).unwrap()
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn tcp_syn_carries_flags_window_scale_and_l3_length() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 8080, 7, 64240)
            .syn()
            .options(&[TcpOptionElement::WindowScale(7)])
            .unwrap()
            .write(&mut f, b"abc")
            .unwrap();
        let Class::Ip { meta } = classify(&parse(&f), false) else {
            panic!("not IP")
        };
        assert_eq!(meta.tcp_flags, TcpFlags::SYN);
        assert_eq!((meta.seq, meta.window, meta.payload_len), (7, 64240, 3));
        assert_eq!(meta.wscale, Some(7));
        assert_eq!(meta.len as usize, f.len() - 14);
        assert_eq!(meta.tuple.protocol, IpProtocol::Tcp);
        assert_eq!((meta.tuple.src_port, meta.tuple.dst_port), (40000, 8080));
    }

    #[test]
    fn icmp_echo_and_error_are_described_for_conntrack() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(0x77, 1)
            .write(&mut f, b"ping")
            .unwrap();
        let Class::Ip { meta } = classify(&parse(&f), false) else {
            panic!()
        };
        assert_eq!((meta.tuple.src_port, meta.tuple.dst_port), (0x77, 0));
        assert_eq!((meta.icmp_type, meta.icmp_code), (8, 0));
        assert!(meta.icmp_inner.is_none());

        let mut quote = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .udp(5000, 53)
            .write(&mut quote, &[0; 8])
            .unwrap();
        let mut e = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut e, &quote[..28])
            .unwrap();
        let Class::Ip { meta, .. } = classify(&parse(&e), false) else {
            panic!()
        };
        let inner = meta.icmp_inner.unwrap();
        assert_eq!((inner.src_port, inner.dst_port), (5000, 53));
    }

    #[test]
    fn arp_nd_and_dhcp_are_control_traffic() {
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&A);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&A);
        arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        assert_eq!(classify(&parse(&arp), false), Class::Control(Control::Arp));

        let ns = |hop: u8| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(A, [0x33, 0x33, 0xff, 0, 0, 2])
                .ipv6(ip6("fd00::1"), ip6("ff02::1:ff00:2"), hop)
                .icmpv6_raw(135, 0, [0; 4])
                .write(&mut f, &ip6("fd00::2"))
                .unwrap();
            f
        };
        assert_eq!(
            classify(&parse(&ns(255)), false),
            Class::Control(Control::NeighborDiscovery)
        );
        assert!(
            matches!(classify(&parse(&ns(64)), false), Class::Ip { .. }),
            "routed ND is ordinary ICMPv6"
        );

        let dhcp = |src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(A, [0xff; 6])
                .ipv4(src, dst, 64)
                .udp(sp, dp)
                .write(&mut f, &[0; 240])
                .unwrap();
            f
        };
        let discover = dhcp([0; 4], [255; 4], 68, 67);
        assert_eq!(
            classify(&parse(&discover), false),
            Class::Control(Control::Dhcp)
        );
        let unicast_renew = dhcp([10, 0, 0, 1], [10, 0, 0, 254], 68, 67);
        assert!(matches!(
            classify(&parse(&unicast_renew), false),
            Class::Ip { .. }
        ));
        let offer = dhcp([10, 0, 0, 254], [10, 0, 0, 1], 67, 68);
        assert_eq!(
            classify(&parse(&offer), true),
            Class::Control(Control::Dhcp)
        );
        assert!(
            matches!(classify(&parse(&offer), false), Class::Ip { .. }),
            "a guest playing DHCP server is not control traffic"
        );
    }

    #[test]
    fn non_first_fragments_are_set_apart() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut f, &[0; 40])
            .unwrap();
        f[14 + 6] = 0;
        f[14 + 7] = 10; // offset 80 bytes
        assert_eq!(classify(&parse(&f), false), Class::Fragment);
    }
}

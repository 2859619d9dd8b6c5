//! Spoof guard: what a guest may claim to be.
//!
//! A vNIC is bound to one MAC and a set of IP addresses (declared in the config / by the API,
//! never learned from traffic). Every frame a guest transmits must carry those as its source,
//! at L2 and L3 and inside ARP; a guest may also not act as a DHCP server or an IPv6 router.
//! This runs before the firewall, so policy can trust source addresses.
//!
//! Exceptions, each needed for a normal guest to come up:
//! * IPv4 source `0.0.0.0` for a DHCP client message (UDP 68 -> 67), and ARP probes with
//!   sender IP `0.0.0.0` (RFC 5227 address conflict detection);
//! * IPv6 link-local (`fe80::/10`) and unspecified (`::`) sources for ICMPv6 neighbour
//!   discovery and MLD only (RS, NS, NA, MLD reports), which the kernel sends before and
//!   besides the configured addresses. Other traffic from link-local sources is refused.
//!   A neighbour advertisement must be for one of the vNIC's addresses or a link-local one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::counters::DropReason;
use crate::mac::MacAddr;
use crate::packet::{
    Net, ParsedPacket, Transport, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
    ICMPV6_NEIGHBOR_ADVERT, ICMPV6_NEIGHBOR_SOLICIT, ICMPV6_REDIRECT, ICMPV6_ROUTER_ADVERT,
    ICMPV6_ROUTER_SOLICIT,
};

/// The identity a vNIC is allowed to use on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBindings {
    pub mac: MacAddr,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl PortBindings {
    pub fn new(mac: MacAddr, ips: &[IpAddr]) -> PortBindings {
        let mut b = PortBindings {
            mac,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        };
        for ip in ips {
            match ip {
                IpAddr::V4(a) => b.ipv4.push(*a),
                IpAddr::V6(a) => b.ipv6.push(*a),
            }
        }
        b
    }

    pub fn owns_ip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.contains(&a),
            IpAddr::V6(a) => self.ipv6.contains(&a),
        }
    }

    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.ipv6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// ICMPv6 types a guest may send from a link-local or unspecified source.
const ND_AND_MLD: &[u8] = &[
    130, // MLD query
    131, // MLD report
    132, // MLD done
    ICMPV6_ROUTER_SOLICIT,
    ICMPV6_NEIGHBOR_SOLICIT,
    ICMPV6_NEIGHBOR_ADVERT,
    143, // MLDv2 report
];

fn is_link_local_v6(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// Checks a frame transmitted by the guest behind `bindings`. `Ok(())` means it may enter the
/// pipeline; otherwise the reason to count.
pub fn check(bindings: &PortBindings, pkt: &ParsedPacket) -> Result<(), DropReason> {
    if pkt.eth.vlan.is_some() {
        return Err(DropReason::VlanTagged);
    }
    if pkt.eth.src != bindings.mac {
        return Err(DropReason::SpoofedSourceMac);
    }
    match (pkt.eth.ethertype, &pkt.net) {
        (ETHERTYPE_ARP, Net::Arp(arp)) => {
            let ip_ok = bindings.ipv4.contains(&arp.sender_ip) || arp.sender_ip.is_unspecified();
            if arp.sender_mac != bindings.mac || !ip_ok {
                return Err(DropReason::SpoofedArp);
            }
            Ok(())
        }
        (ETHERTYPE_IPV4, Net::Ipv4(ip)) => {
            let IpAddr::V4(src) = ip.src else {
                return Err(DropReason::Malformed);
            };
            if let Transport::Udp(u) = &pkt.transport {
                if u.src_port == 67 {
                    return Err(DropReason::DhcpServerFromGuest);
                }
            }
            if bindings.ipv4.contains(&src) {
                return Ok(());
            }
            let dhcp_client = src.is_unspecified()
                && matches!(&pkt.transport, Transport::Udp(u) if u.src_port == 68 && u.dst_port == 67);
            if dhcp_client {
                Ok(())
            } else {
                Err(DropReason::SpoofedSourceIp)
            }
        }
        (ETHERTYPE_IPV6, Net::Ipv6(ip)) => {
            let IpAddr::V6(src) = ip.src else {
                return Err(DropReason::Malformed);
            };
            match &pkt.transport {
                Transport::Udp(u) if u.src_port == 547 => {
                    return Err(DropReason::DhcpServerFromGuest)
                }
                Transport::Icmpv6(i)
                    if matches!(i.icmp_type, ICMPV6_ROUTER_ADVERT | ICMPV6_REDIRECT) =>
                {
                    return Err(DropReason::RouterAdvertFromGuest)
                }
                Transport::Icmpv6(i) if i.icmp_type == ICMPV6_NEIGHBOR_ADVERT => {
                    let target_ok = i
                        .nd_target
                        .is_some_and(|t| bindings.ipv6.contains(&t) || is_link_local_v6(&t));
                    if !target_ok {
                        return Err(DropReason::SpoofedNeighborAdvert);
                    }
                }
                _ => {}
            }
            if bindings.ipv6.contains(&src) {
                return Ok(());
            }
            let nd =
                matches!(&pkt.transport, Transport::Icmpv6(i) if ND_AND_MLD.contains(&i.icmp_type));
            if nd && (is_link_local_v6(&src) || src.is_unspecified()) {
                Ok(())
            } else {
                Err(DropReason::SpoofedSourceIp)
            }
        }
        _ => Err(DropReason::DisallowedEthertype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ICMPV6_NEIGHBOR_ADVERT;
    use etherparse::PacketBuilder;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];

    fn bindings() -> PortBindings {
        PortBindings::new(
            MacAddr(MAC),
            &["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        )
    }

    fn parse(f: &[u8]) -> ParsedPacket {
        ParsedPacket::parse(f).unwrap()
    }

    fn udp4(src_mac: [u8; 6], src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(src_mac, [0xff; 6])
            .ipv4(src, [255, 255, 255, 255], 64)
            .udp(sport, dport)
            .write(&mut f, &[0u8; 240])
            .unwrap();
        f
    }

    fn arp(sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f
    }

    fn icmp6(src: &str, icmp_type: u8, target: &str) -> Vec<u8> {
        let mut f = Vec::new();
        let t: Ipv6Addr = target.parse().unwrap();
        PacketBuilder::ethernet2(MAC, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                src.parse::<Ipv6Addr>().unwrap().octets(),
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                255,
            )
            .icmpv6_raw(icmp_type, 0, [0; 4])
            .write(&mut f, &t.octets())
            .unwrap();
        f
    }

    #[test]
    fn own_traffic_passes() {
        let b = bindings();
        assert_eq!(
            check(&b, &parse(&udp4(MAC, [10, 0, 0, 1], 5000, 53))),
            Ok(())
        );
        assert_eq!(check(&b, &parse(&arp(MAC, [10, 0, 0, 1]))), Ok(()));
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC, OTHER)
            .ipv6(
                "fd00::1".parse::<Ipv6Addr>().unwrap().octets(),
                [0xfd; 16],
                64,
            )
            .tcp(1, 2, 3, 4)
            .write(&mut f, &[])
            .unwrap();
        assert_eq!(check(&b, &parse(&f)), Ok(()));
    }

    #[test]
    fn spoofed_sources_are_refused() {
        let b = bindings();
        assert_eq!(
            check(&b, &parse(&udp4(OTHER, [10, 0, 0, 1], 5000, 53))),
            Err(DropReason::SpoofedSourceMac)
        );
        assert_eq!(
            check(&b, &parse(&udp4(MAC, [10, 0, 0, 2], 5000, 53))),
            Err(DropReason::SpoofedSourceIp)
        );
        assert_eq!(
            check(&b, &parse(&arp(OTHER, [10, 0, 0, 1]))),
            Err(DropReason::SpoofedArp)
        );
        assert_eq!(
            check(&b, &parse(&arp(MAC, [10, 0, 0, 7]))),
            Err(DropReason::SpoofedArp)
        );
        // Link-local source outside neighbour discovery.
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC, OTHER)
            .ipv6(
                "fe80::1".parse::<Ipv6Addr>().unwrap().octets(),
                [0xfd; 16],
                64,
            )
            .udp(1, 2)
            .write(&mut f, &[])
            .unwrap();
        assert_eq!(check(&b, &parse(&f)), Err(DropReason::SpoofedSourceIp));
    }

    #[test]
    fn dhcp_client_and_arp_probe_are_allowed_dhcp_server_is_not() {
        let b = bindings();
        assert_eq!(check(&b, &parse(&udp4(MAC, [0, 0, 0, 0], 68, 67))), Ok(()));
        assert_eq!(
            check(&b, &parse(&udp4(MAC, [0, 0, 0, 0], 5000, 67))),
            Err(DropReason::SpoofedSourceIp)
        );
        assert_eq!(
            check(&b, &parse(&udp4(MAC, [10, 0, 0, 1], 67, 68))),
            Err(DropReason::DhcpServerFromGuest)
        );
        assert_eq!(check(&b, &parse(&arp(MAC, [0, 0, 0, 0]))), Ok(()));
    }

    #[test]
    fn ipv6_router_and_neighbor_rules() {
        let b = bindings();
        assert_eq!(
            check(&b, &parse(&icmp6("fe80::1", ICMPV6_ROUTER_ADVERT, "::"))),
            Err(DropReason::RouterAdvertFromGuest)
        );
        assert_eq!(
            check(&b, &parse(&icmp6("fe80::1", ICMPV6_REDIRECT, "::"))),
            Err(DropReason::RouterAdvertFromGuest)
        );
        assert_eq!(
            check(&b, &parse(&icmp6("::", ICMPV6_NEIGHBOR_SOLICIT, "fd00::1"))),
            Ok(())
        );
        assert_eq!(
            check(
                &b,
                &parse(&icmp6("fe80::1", ICMPV6_NEIGHBOR_ADVERT, "fd00::1"))
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &b,
                &parse(&icmp6("fd00::1", ICMPV6_NEIGHBOR_ADVERT, "fd00::2"))
            ),
            Err(DropReason::SpoofedNeighborAdvert)
        );
        assert_eq!(
            check(
                &b,
                &parse(&icmp6("fd00::9", ICMPV6_NEIGHBOR_SOLICIT, "fd00::2"))
            ),
            Err(DropReason::SpoofedSourceIp)
        );
    }

    #[test]
    fn vlan_and_foreign_ethertypes_are_refused() {
        let b = bindings();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC, OTHER)
            .single_vlan(etherparse::VlanId::try_new(5).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut f, &[])
            .unwrap();
        assert_eq!(check(&b, &parse(&f)), Err(DropReason::VlanTagged));
        let mut raw = Vec::new();
        raw.extend_from_slice(&OTHER);
        raw.extend_from_slice(&MAC);
        raw.extend_from_slice(&[0x88, 0xcc]); // LLDP
        raw.resize(60, 0);
        assert_eq!(
            check(&b, &parse(&raw)),
            Err(DropReason::DisallowedEthertype)
        );
    }
}

//! The port table and the forwarding decision.
//!
//! An immutable [`PortTable`] snapshot maps MACs and IPs to local vNICs. The daemon knows every
//! local vNIC's MAC and addresses from its configuration, so there is no learning and no
//! flooding between VMs:
//!
//! * unicast to a local vNIC's MAC goes to that vNIC; any other unicast goes to the uplink;
//! * a broadcast ARP request goes only to the vNIC that owns the target IP (the guest answers
//!   it itself, through the firewall like any other frame); if no local vNIC owns it, to the
//!   uplink. IPv6 neighbour solicitations are handled the same way by their target address.
//!   We chose delivering to the owner over answering from vdfwd so that a guest that is down
//!   does not appear reachable and so the firewall sees the ARP exchange;
//! * other broadcast/multicast from a vNIC goes to the uplink only (DHCP, mDNS, RS, MLD);
//! * from the uplink, frames go to the vNIC with the destination MAC; broadcasts are delivered
//!   only where they are claimed: ARP/NS by target IP, DHCP replies by `chaddr`. Everything
//!   else from the uplink that no local vNIC owns is dropped and counted.
//!
//! The table is rebuilt (copy, modify, swap) when the API adds or removes a vNIC; see
//! [`crate::pipeline::Pipeline`].

/// The port table is looked up per frame (destination MAC, claimed IPs) with guest-chosen
/// keys; its content is ours (configured MACs/IPs), so a guest cannot grow a collision
/// chain. foldhash (seeded per process) instead of SipHash: these lookups showed as ~2.5 %
/// of the established-flow profile.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::counters::DropReason;
use crate::mac::MacAddr;
use crate::packet::{Net, ParsedPacket, Transport, ARP_OP_REQUEST, ICMPV6_NEIGHBOR_SOLICIT};
use crate::port::{PortId, PortRef, UplinkPort, VnicPort};

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    Vnic(PortId),
    Uplink,
}

impl Egress {
    pub fn port_ref(self) -> PortRef {
        match self {
            Egress::Vnic(id) => PortRef::Vnic(id),
            Egress::Uplink => PortRef::Uplink,
        }
    }
}

/// Error changing the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("port id {0} already present")]
    DuplicateId(PortId),
    #[error("vNIC name {0:?} already used")]
    DuplicateName(String),
    #[error("MAC {0} already used by another vNIC")]
    DuplicateMac(MacAddr),
    #[error("IP {0} already bound to another vNIC")]
    DuplicateIp(IpAddr),
    #[error("MAC {0} is not a unicast address")]
    InvalidMac(MacAddr),
}

/// An immutable snapshot of the ports.
#[derive(Clone, Default)]
pub struct PortTable {
    vnics: HashMap<PortId, Arc<VnicPort>>,
    by_mac: HashMap<MacAddr, PortId>,
    by_ipv4: HashMap<Ipv4Addr, PortId>,
    by_ipv6: HashMap<Ipv6Addr, PortId>,
    uplink: Option<Arc<dyn UplinkPort>>,
}

impl PortTable {
    pub fn vnic(&self, id: PortId) -> Option<&Arc<VnicPort>> {
        self.vnics.get(&id)
    }

    pub fn vnics(&self) -> impl Iterator<Item = &Arc<VnicPort>> {
        self.vnics.values()
    }

    pub fn vnic_by_mac(&self, mac: MacAddr) -> Option<PortId> {
        self.by_mac.get(&mac).copied()
    }

    pub fn uplink(&self) -> Option<&Arc<dyn UplinkPort>> {
        self.uplink.as_ref()
    }

    /// Owner of a local IP address.
    pub fn owner_of(&self, ip: IpAddr) -> Option<PortId> {
        match ip {
            IpAddr::V4(a) => self.by_ipv4.get(&a).copied(),
            IpAddr::V6(a) => self.by_ipv6.get(&a).copied(),
        }
    }

    /// A copy with `port` added. Names, MACs and IPs must be unique across vNICs.
    pub fn with_vnic(&self, port: Arc<VnicPort>) -> Result<PortTable, TableError> {
        if !port.mac().is_valid_unicast() {
            return Err(TableError::InvalidMac(port.mac()));
        }
        if self.vnics.contains_key(&port.id) {
            return Err(TableError::DuplicateId(port.id));
        }
        if self.vnics.values().any(|p| p.name() == port.name()) {
            return Err(TableError::DuplicateName(port.name().to_owned()));
        }
        if self.by_mac.contains_key(&port.mac()) {
            return Err(TableError::DuplicateMac(port.mac()));
        }
        if let Some(ip) = port.bindings.ips().find(|ip| self.owner_of(*ip).is_some()) {
            return Err(TableError::DuplicateIp(ip));
        }
        let mut t = self.clone();
        t.by_mac.insert(port.mac(), port.id);
        for a in &port.bindings.ipv4 {
            t.by_ipv4.insert(*a, port.id);
        }
        for a in &port.bindings.ipv6 {
            t.by_ipv6.insert(*a, port.id);
        }
        t.vnics.insert(port.id, port);
        Ok(t)
    }

    /// A copy without vNIC `id` (and the removed port, if it was there).
    pub fn without_vnic(&self, id: PortId) -> (PortTable, Option<Arc<VnicPort>>) {
        let mut t = self.clone();
        let removed = t.vnics.remove(&id);
        t.by_mac.retain(|_, v| *v != id);
        t.by_ipv4.retain(|_, v| *v != id);
        t.by_ipv6.retain(|_, v| *v != id);
        (t, removed)
    }

    /// A copy with the uplink replaced.
    pub fn with_uplink(&self, uplink: Option<Arc<dyn UplinkPort>>) -> PortTable {
        let mut t = self.clone();
        t.uplink = uplink;
        t
    }

    fn to_uplink(&self) -> Result<Egress, DropReason> {
        if self.uplink.is_some() {
            Ok(Egress::Uplink)
        } else {
            Err(DropReason::NoRoute)
        }
    }

    /// The local vNIC a broadcast/multicast frame is addressed to, if it is one we resolve by
    /// content: ARP request by target IP, neighbour solicitation by target, DHCP reply by
    /// client MAC.
    fn claimed_by(&self, pkt: &ParsedPacket) -> Option<PortId> {
        match (&pkt.net, &pkt.transport) {
            (Net::Arp(a), _) if a.operation == ARP_OP_REQUEST => {
                self.by_ipv4.get(&a.target_ip).copied()
            }
            (Net::Ipv6(_), Transport::Icmpv6(i)) if i.icmp_type == ICMPV6_NEIGHBOR_SOLICIT => {
                i.nd_target.and_then(|t| self.by_ipv6.get(&t).copied())
            }
            (Net::Ipv4(_), Transport::Udp(u)) if u.src_port == 67 && u.dst_port == 68 => {
                u.dhcp_chaddr.and_then(|m| self.vnic_by_mac(m))
            }
            _ => None,
        }
    }

    /// The forwarding decision for a parsed frame arriving on `ingress`.
    pub fn decide(&self, ingress: PortRef, pkt: &ParsedPacket) -> Result<Egress, DropReason> {
        if pkt.eth.vlan.is_some() {
            return Err(DropReason::VlanTagged);
        }
        let dst = pkt.eth.dst;
        let egress = if !dst.is_multicast() {
            match self.vnic_by_mac(dst) {
                Some(id) => Egress::Vnic(id),
                None => match ingress {
                    PortRef::Vnic(_) => self.to_uplink()?,
                    // Unknown unicast flooded to us by the bridge: not ours.
                    PortRef::Uplink => return Err(DropReason::NoRoute),
                },
            }
        } else {
            match (self.claimed_by(pkt), ingress) {
                (Some(id), PortRef::Vnic(from)) if id != from => Egress::Vnic(id),
                (Some(id), PortRef::Uplink) => Egress::Vnic(id),
                // Gratuitous ARP / DAD for itself, or unclaimed: out to the network.
                (_, PortRef::Vnic(_)) => self.to_uplink()?,
                (None, PortRef::Uplink) => return Err(DropReason::UnclaimedMulticast),
            }
        };
        if egress.port_ref() == ingress {
            return Err(DropReason::Hairpin);
        }
        Ok(egress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::PortCounters;
    use crate::net_hdr::VirtioNetHdr;
    use crate::port::VnicIdentity;
    use etherparse::PacketBuilder;

    struct NullUplink(PortCounters);
    impl UplinkPort for NullUplink {
        fn transmit(&self, _: &VirtioNetHdr, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn counters(&self) -> &PortCounters {
            &self.0
        }
        fn name(&self) -> &str {
            "null"
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn port(n: u8) -> Arc<VnicPort> {
        let ident = VnicIdentity {
            name: format!("vm{n}"),
            ..Default::default()
        };
        let ips: Vec<IpAddr> = vec![
            format!("10.0.0.{n}").parse().unwrap(),
            format!("fd00::{n}").parse().unwrap(),
        ];
        Arc::new(VnicPort::new(PortId(n as u32), ident, mac(n), &ips).unwrap())
    }

    fn table(uplink: bool) -> PortTable {
        let t = PortTable::default()
            .with_vnic(port(1))
            .unwrap()
            .with_vnic(port(2))
            .unwrap();
        if uplink {
            t.with_uplink(Some(Arc::new(NullUplink(PortCounters::default()))))
        } else {
            t
        }
    }

    fn udp(from: MacAddr, to: MacAddr, dst_ip: [u8; 4]) -> ParsedPacket {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(from.0, to.0)
            .ipv4([10, 0, 0, 1], dst_ip, 64)
            .udp(1, 2)
            .write(&mut f, &[])
            .unwrap();
        ParsedPacket::parse(&f).unwrap()
    }

    fn arp_request(from: MacAddr, spa: [u8; 4], tpa: [u8; 4]) -> ParsedPacket {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&from.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&from.0);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa);
        ParsedPacket::parse(&f).unwrap()
    }

    const V1: PortRef = PortRef::Vnic(PortId(1));

    #[test]
    fn unicast_switching() {
        let t = table(true);
        assert_eq!(
            t.decide(V1, &udp(mac(1), mac(2), [10, 0, 0, 2])),
            Ok(Egress::Vnic(PortId(2)))
        );
        assert_eq!(
            t.decide(V1, &udp(mac(1), mac(9), [8, 8, 8, 8])),
            Ok(Egress::Uplink)
        );
        assert_eq!(
            t.decide(V1, &udp(mac(1), mac(1), [10, 0, 0, 1])),
            Err(DropReason::Hairpin)
        );
        assert_eq!(
            t.decide(PortRef::Uplink, &udp(mac(9), mac(2), [10, 0, 0, 2])),
            Ok(Egress::Vnic(PortId(2)))
        );
        assert_eq!(
            t.decide(PortRef::Uplink, &udp(mac(9), mac(7), [10, 0, 0, 7])),
            Err(DropReason::NoRoute)
        );
        let no_uplink = table(false);
        assert_eq!(
            no_uplink.decide(V1, &udp(mac(1), mac(9), [8, 8, 8, 8])),
            Err(DropReason::NoRoute)
        );
    }

    #[test]
    fn arp_requests_go_only_to_the_owner() {
        let t = table(true);
        let req = arp_request(mac(1), [10, 0, 0, 1], [10, 0, 0, 2]);
        assert_eq!(t.decide(V1, &req), Ok(Egress::Vnic(PortId(2))));
        let ext = arp_request(mac(1), [10, 0, 0, 1], [10, 0, 0, 254]);
        assert_eq!(t.decide(V1, &ext), Ok(Egress::Uplink));
        let garp = arp_request(mac(1), [10, 0, 0, 1], [10, 0, 0, 1]);
        assert_eq!(
            t.decide(V1, &garp),
            Ok(Egress::Uplink),
            "gratuitous ARP is not reflected"
        );
        let from_net = arp_request(mac(9), [10, 0, 0, 254], [10, 0, 0, 1]);
        assert_eq!(
            t.decide(PortRef::Uplink, &from_net),
            Ok(Egress::Vnic(PortId(1)))
        );
        let unclaimed = arp_request(mac(9), [10, 0, 0, 254], [10, 0, 0, 77]);
        assert_eq!(
            t.decide(PortRef::Uplink, &unclaimed),
            Err(DropReason::UnclaimedMulticast)
        );
    }

    #[test]
    fn other_broadcast_from_a_vnic_only_to_the_uplink() {
        let t = table(true);
        assert_eq!(
            t.decide(V1, &udp(mac(1), MacAddr::BROADCAST, [255; 4])),
            Ok(Egress::Uplink)
        );
        assert_eq!(
            t.decide(PortRef::Uplink, &udp(mac(9), MacAddr::BROADCAST, [255; 4])),
            Err(DropReason::UnclaimedMulticast)
        );
    }

    #[test]
    fn dhcp_reply_from_uplink_by_chaddr() {
        let t = table(true);
        let mut bootp = vec![0u8; 240];
        bootp[0] = 2; // BOOTREPLY
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[28..34].copy_from_slice(&mac(2).0);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(mac(9).0, [0xff; 6])
            .ipv4([10, 0, 0, 254], [255; 4], 64)
            .udp(67, 68)
            .write(&mut f, &bootp)
            .unwrap();
        let p = ParsedPacket::parse(&f).unwrap();
        assert_eq!(t.decide(PortRef::Uplink, &p), Ok(Egress::Vnic(PortId(2))));
    }

    #[test]
    fn table_updates_are_copies_and_reject_duplicates() {
        let t = table(false);
        assert!(matches!(
            t.with_vnic(port(1)),
            Err(TableError::DuplicateId(_))
        ));
        let clash = Arc::new(
            VnicPort::new(
                PortId(3),
                VnicIdentity {
                    name: "vm3".into(),
                    ..Default::default()
                },
                mac(3),
                &["10.0.0.2".parse().unwrap()],
            )
            .unwrap(),
        );
        assert_eq!(
            t.with_vnic(clash).err(),
            Some(TableError::DuplicateIp("10.0.0.2".parse().unwrap()))
        );
        let (t2, removed) = t.without_vnic(PortId(2));
        assert_eq!(removed.map(|p| p.id), Some(PortId(2)));
        assert!(t.vnic(PortId(2)).is_some(), "old snapshot unchanged");
        assert!(t2.vnic(PortId(2)).is_none());
        assert_eq!(t2.owner_of("10.0.0.2".parse().unwrap()), None);
        assert_eq!(t2.vnic_by_mac(mac(2)), None);
        assert_eq!(
            t2.decide(V1, &udp(mac(1), mac(2), [10, 0, 0, 2])),
            Err(DropReason::NoRoute)
        );
    }
}

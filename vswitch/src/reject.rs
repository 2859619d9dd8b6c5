//! Reply frames for a firewall `Reject` verdict.
//!
//! Pure functions: given the parsed offending frame (and its bytes, for the ICMP quote), build
//! the Ethernet frame that goes back to the sender, with all checksums complete. The reply
//! pretends to come from the original destination (MAC and IP swapped), which is what the
//! sender's stack matches replies against. We never answer:
//! * an RST with an RST, or an ICMP error with an ICMP error (RFC 1122 / RFC 4443);
//! * a frame sent to a broadcast/multicast address, or a non-first fragment.
//!
//! `TcpRst` on a non-TCP packet falls back to the ICMP error.

use std::net::IpAddr;

use etherparse::PacketBuilder;

use crate::filter::RejectKind;
use crate::packet::{Net, ParsedPacket, Transport};

/// ICMPv4 "destination unreachable" / "communication administratively prohibited".
pub const ICMPV4_ADMIN_PROHIBITED: (u8, u8) = (3, 13);
/// ICMPv6 "destination unreachable" / "communication with destination administratively
/// prohibited".
pub const ICMPV6_ADMIN_PROHIBITED: (u8, u8) = (1, 1);

/// Largest ICMPv4 error datagram we send (RFC 1812 4.3.2.3: at most 576 bytes).
const ICMPV4_MAX_DATAGRAM: usize = 576;
/// Largest ICMPv6 error packet (RFC 4443 2.4(c): must not exceed the minimum MTU, 1280).
const ICMPV6_MAX_PACKET: usize = 1280;
const TTL: u8 = 64;

/// Why no reply is sent (the frame is still dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoReply {
    #[error("not an IP packet")]
    NotIp,
    #[error("never answer an RST or an ICMP error")]
    ErrorToError,
    #[error("destination is broadcast/multicast")]
    GroupDestination,
    #[error("non-first fragment")]
    Fragment,
    #[error("could not build the reply")]
    Build,
}

/// Builds the reply to `pkt` (whose bytes are `frame`) into `out` (cleared first).
///
/// Never inlined: etherparse's packet builders take ~46 KiB of stack, and inlined into the
/// pipeline's per-frame function that frame was probed page by page (11 stores to 11 pages)
/// for every frame, rejected or not.
#[inline(never)]
#[cold]
pub fn build_reject(
    pkt: &ParsedPacket,
    frame: &[u8],
    kind: RejectKind,
    out: &mut Vec<u8>,
) -> Result<(), NoReply> {
    out.clear();
    let ip = pkt.ip().ok_or(NoReply::NotIp)?;
    if pkt.eth.dst.is_multicast() || ip.dst.is_multicast() || is_v4_broadcast(ip.dst) {
        return Err(NoReply::GroupDestination);
    }
    if ip.fragment.is_some_and(|f| f.offset != 0) {
        return Err(NoReply::Fragment);
    }
    let eth = PacketBuilder::ethernet2(pkt.eth.dst.octets(), pkt.eth.src.octets());
    let ipv6 = matches!(pkt.net, Net::Ipv6(_));

    match (&pkt.transport, kind) {
        (Transport::Tcp(t), RejectKind::TcpRst) => {
            if t.flags.rst() {
                return Err(NoReply::ErrorToError);
            }
            // RFC 793 reset generation: if the segment has ACK, the RST takes its sequence
            // number from the ACK field; otherwise seq 0 and ACK everything the segment used.
            let (seq, ack, has_ack) = if t.flags.ack() {
                (t.ack, 0, false)
            } else {
                let consumed = t.payload_len + t.flags.syn() as u32 + t.flags.fin() as u32;
                (0, t.seq.wrapping_add(consumed), true)
            };
            let res = match (ip.src, ip.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let b = eth
                        .ipv4(d.octets(), s.octets(), TTL)
                        .tcp(t.dst_port, t.src_port, seq, 0)
                        .rst();
                    let b = if has_ack { b.ack(ack) } else { b };
                    b.write(out, &[])
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let b = eth
                        .ipv6(d.octets(), s.octets(), TTL)
                        .tcp(t.dst_port, t.src_port, seq, 0)
                        .rst();
                    let b = if has_ack { b.ack(ack) } else { b };
                    b.write(out, &[])
                }
                _ => return Err(NoReply::Build),
            };
            res.map_err(|_| NoReply::Build)
        }
        _ => {
            if let Transport::Icmpv4(i) | Transport::Icmpv6(i) = &pkt.transport {
                if i.is_error() || (ipv6 && i.icmp_type >= 128 && !matches!(i.icmp_type, 128 | 129))
                {
                    // ICMP errors, and ICMPv6 informational messages other than echo (ND,
                    // MLD): never answered.
                    return Err(NoReply::ErrorToError);
                }
            }
            let l3 = pkt.layout.l3 as usize;
            let l3_end = (pkt.layout.l3_end as usize).min(frame.len());
            let quoted = frame.get(l3..l3_end).ok_or(NoReply::Build)?;
            let res = match (ip.src, ip.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let q = &quoted[..quoted.len().min(ICMPV4_MAX_DATAGRAM - 20 - 8)];
                    let (ty, code) = ICMPV4_ADMIN_PROHIBITED;
                    eth.ipv4(d.octets(), s.octets(), TTL)
                        .icmpv4_raw(ty, code, [0; 4])
                        .write(out, q)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let q = &quoted[..quoted.len().min(ICMPV6_MAX_PACKET - 40 - 8)];
                    let (ty, code) = ICMPV6_ADMIN_PROHIBITED;
                    eth.ipv6(d.octets(), s.octets(), TTL)
                        .icmpv6_raw(ty, code, [0; 4])
                        .write(out, q)
                }
                _ => return Err(NoReply::Build),
            };
            res.map_err(|_| NoReply::Build)
        }
    }
}

fn is_v4_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(a) if a.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::MacAddr;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const VM: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const PEER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    fn tcp4(
        flags: impl FnOnce(
            etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(VM, PEER)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 22, 1000, 64000);
        flags(b).write(&mut f, payload).unwrap();
        f
    }

    fn reject(frame: &[u8], kind: RejectKind) -> Result<Vec<u8>, NoReply> {
        let p = ParsedPacket::parse(frame).unwrap();
        let mut out = vec![0xee; 7]; // must be cleared
        build_reject(&p, frame, kind, &mut out).map(|_| out)
    }

    #[test]
    fn rst_for_a_syn_acks_the_syn() {
        let syn = tcp4(|b| b.syn(), &[]);
        let out = reject(&syn, RejectKind::TcpRst).unwrap();
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(e)) = &s.link else {
            panic!()
        };
        assert_eq!(e.source(), PEER);
        assert_eq!(e.destination(), VM);
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(ip.header().source(), [10, 0, 0, 2]);
        assert_eq!(ip.header().destination(), [10, 0, 0, 1]);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Tcp(t)) = &s.transport else {
            panic!()
        };
        assert!(t.rst() && t.ack() && !t.syn());
        assert_eq!((t.source_port(), t.destination_port()), (22, 40000));
        assert_eq!(t.sequence_number(), 0);
        assert_eq!(t.acknowledgment_number(), 1001);
        assert_eq!(
            t.checksum(),
            t.calc_checksum_ipv4([10, 0, 0, 2], [10, 0, 0, 1]).unwrap()
        );
    }

    #[test]
    fn rst_for_an_ack_segment_uses_its_ack_number() {
        let seg = tcp4(|b| b.ack(5555).psh(), b"hello");
        let out = reject(&seg, RejectKind::TcpRst).unwrap();
        let p = ParsedPacket::parse(&out).unwrap();
        let t = p.tcp().unwrap();
        assert!(t.flags.rst() && !t.flags.ack());
        assert_eq!(t.seq, 5555);
    }

    #[test]
    fn no_rst_for_rst() {
        let rst = tcp4(|b| b.rst(), &[]);
        assert_eq!(reject(&rst, RejectKind::TcpRst), Err(NoReply::ErrorToError));
    }

    #[test]
    fn icmp_admin_prohibited_quotes_the_packet() {
        let mut udp = Vec::new();
        PacketBuilder::ethernet2(VM, PEER)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5353, 53)
            .write(&mut udp, &[9u8; 1000])
            .unwrap();
        // TcpRst on UDP falls back to ICMP.
        for kind in [RejectKind::IcmpUnreachable, RejectKind::TcpRst] {
            let out = reject(&udp, kind).unwrap();
            let p = ParsedPacket::parse(&out).unwrap();
            assert_eq!(p.eth.dst, MacAddr(VM));
            let i = p.icmp().unwrap();
            assert_eq!((i.icmp_type, i.code), ICMPV4_ADMIN_PROHIBITED);
            let inner = i.inner.unwrap();
            assert_eq!((inner.src_port, inner.dst_port), (5353, 53));
            assert_eq!(inner.src, "10.0.0.1".parse::<IpAddr>().unwrap());
            assert!(out.len() - 14 <= ICMPV4_MAX_DATAGRAM);
            let s = SlicedPacket::from_ethernet(&out).unwrap();
            let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
                panic!()
            };
            let recomputed =
                etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
            assert_eq!(icmp.checksum(), recomputed);
        }
    }

    #[test]
    fn icmpv6_admin_prohibited() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(VM, PEER)
            .ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(1, 443, 7, 100)
            .syn()
            .write(&mut f, &[0u8; 2000])
            .unwrap();
        let out = reject(&f, RejectKind::IcmpUnreachable).unwrap();
        assert!(out.len() - 14 <= ICMPV6_MAX_PACKET);
        let s = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &s.net else {
            panic!()
        };
        let (src, dst) = (ip.header().source(), ip.header().destination());
        let Some(TransportSlice::Icmpv6(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), ICMPV6_ADMIN_PROHIBITED);
        assert!(icmp.is_checksum_valid(src, dst));
        let p = ParsedPacket::parse(&out).unwrap();
        assert_eq!(p.icmp().unwrap().inner.unwrap().dst_port, 443);
    }

    #[test]
    fn never_answer_errors_broadcasts_or_arp() {
        let mut err = Vec::new();
        PacketBuilder::ethernet2(VM, PEER)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_raw(3, 1, [0; 4])
            .write(&mut err, &[0x45; 28])
            .unwrap();
        assert_eq!(
            reject(&err, RejectKind::IcmpUnreachable),
            Err(NoReply::ErrorToError)
        );
        let mut bcast = Vec::new();
        PacketBuilder::ethernet2(VM, [0xff; 6])
            .ipv4([10, 0, 0, 1], [255, 255, 255, 255], 64)
            .udp(1, 2)
            .write(&mut bcast, &[])
            .unwrap();
        assert_eq!(
            reject(&bcast, RejectKind::IcmpUnreachable),
            Err(NoReply::GroupDestination)
        );
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&VM);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&VM);
        arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        assert_eq!(
            reject(&arp, RejectKind::IcmpUnreachable),
            Err(NoReply::NotIp)
        );
    }
}

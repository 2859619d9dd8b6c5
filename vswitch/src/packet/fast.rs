//! Hand-written decoder for the frame shapes that make up almost all traffic.
//!
//! Why it exists: in a poll-mode profile of the data path (64-byte UDP frames) etherparse's
//! generic slicing (`SlicedPacket::from_ethernet` and the per-layer slice constructors) plus the
//! conversion into [`ParsedPacket`] took ~13% of a core. Nearly every frame is Ethernet II
//! (optionally one 802.1Q tag) + unfragmented IPv4 or extension-free IPv6 + TCP or UDP; for
//! those shapes the fields we need sit at fixed offsets and can be copied out directly.
//!
//! etherparse stays the oracle: [`parse`] either returns exactly what
//! [`ParsedPacket::parse_reference`] returns for the same bytes, or `None` ("not mine"), and
//! then the caller takes the etherparse path. It applies the same strict length checks as
//! etherparse 0.21's `SlicedPacket::from_ethernet` (IPv4: IHL >= 5, total length >= header
//! length and <= bytes present; IPv6: payload length <= bytes present; TCP: data offset >= 5
//! and header within the IP payload; UDP: 8 <= length field <= IP payload) and gives up on
//! anything it does not decode itself or where doubt is possible: other ethertypes, 802.1ad /
//! double tags, IPv4 fragments and AH, IPv6 extension headers and jumbograms (payload length
//! 0), UDP length 0, DHCPv4 (chaddr extraction), TCP SYN with options (window scale), and every
//! L4 protocol but TCP and UDP. The property tests below hold it to that: on generated and
//! mutated frames it must either decline or equal the etherparse result, and it must claim the
//! plain shapes (so a fast path that silently never fires fails the tests).
//!
//! All reads go through `split_first_chunk` / `get` (then constant indices into the fixed-size
//! chunks), and every subtraction is guarded, so no input can make it panic; it allocates
//! nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dfw::flow::IpProtocol;

use super::{
    EthernetInfo, IpInfo, Layout, Net, ParsedPacket, TcpFlags, TcpInfo, Transport, UdpInfo,
    VlanTag, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN,
};
use crate::mac::MacAddr;

const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;

fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// The network layer of a claimed frame: the IP view, the L4 header offset relative to the
/// start of L3, the L3 length (IP total length), and the L4 protocol with its bytes (the IP
/// payload, without Ethernet padding).
struct L3<'a> {
    net: Net,
    header_len: usize,
    total_len: usize,
    protocol: u8,
    l4: &'a [u8],
}

fn ipv4(ip: &[u8]) -> Option<L3<'_>> {
    let (h, _) = ip.split_first_chunk::<20>()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(be16(h[2], h[3]));
    // etherparse: IHL >= 5, total length covers the header, the bytes cover the total length.
    if header_len < 20 || total_len < header_len || ip.len() < total_len {
        return None;
    }
    // Fragments (MF set or offset != 0) leave the transport undecoded: etherparse's job.
    if h[6] & 0x3f != 0 || h[7] != 0 {
        return None;
    }
    let protocol = h[9];
    if protocol != IP_TCP && protocol != IP_UDP {
        return None;
    }
    let l4 = ip.get(header_len..total_len)?;
    Some(L3 {
        net: Net::Ipv4(IpInfo {
            src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
            protocol: IpProtocol::from_number(protocol),
            ttl: h[8],
            fragment: None,
        }),
        header_len,
        total_len,
        protocol,
        l4,
    })
}

fn ipv6(ip: &[u8]) -> Option<L3<'_>> {
    let (h, rest) = ip.split_first_chunk::<40>()?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(h[4], h[5]));
    // Payload length 0 means "jumbogram or take the rest of the slice" to etherparse.
    if payload_len == 0 {
        return None;
    }
    // Any other next header (extension headers included) goes to etherparse.
    let protocol = h[6];
    if protocol != IP_TCP && protocol != IP_UDP {
        return None;
    }
    let l4 = rest.get(..payload_len)?;
    let (src, dst) = h[8..].split_first_chunk::<16>()?;
    let dst: &[u8; 16] = dst.first_chunk::<16>()?;
    Some(L3 {
        net: Net::Ipv6(IpInfo {
            src: IpAddr::V6(Ipv6Addr::from(*src)),
            dst: IpAddr::V6(Ipv6Addr::from(*dst)),
            protocol: IpProtocol::from_number(protocol),
            ttl: h[7],
            fragment: None,
        }),
        header_len: 40,
        total_len: 40 + payload_len,
        protocol,
        l4,
    })
}

fn tcp(l4: &[u8]) -> Option<TcpInfo> {
    let (h, _) = l4.split_first_chunk::<20>()?;
    let header_len = usize::from(h[12] >> 4) * 4;
    if header_len < 20 || l4.len() < header_len {
        return None;
    }
    let flags = TcpFlags(h[13]);
    // A SYN may carry the window-scale option, whose decoding stays with etherparse's option
    // iterator; on other segments options are skipped unread.
    if flags.syn() && header_len > 20 {
        return None;
    }
    Some(TcpInfo {
        src_port: be16(h[0], h[1]),
        dst_port: be16(h[2], h[3]),
        seq: be32([h[4], h[5], h[6], h[7]]),
        ack: be32([h[8], h[9], h[10], h[11]]),
        flags,
        window: be16(h[14], h[15]),
        header_len: header_len as u8,
        payload_len: (l4.len() - header_len) as u32,
        wscale: None,
    })
}

fn udp(l4: &[u8], v4: bool) -> Option<UdpInfo> {
    let (h, _) = l4.split_first_chunk::<8>()?;
    let (src_port, dst_port) = (be16(h[0], h[1]), be16(h[2], h[3]));
    // DHCPv4 needs the chaddr decoding of the reference path.
    if v4 && matches!((src_port, dst_port), (67, 68) | (68, 67) | (67, 67)) {
        return None;
    }
    let len = usize::from(be16(h[4], h[5]));
    // etherparse: length 0 means "the rest"; 1..8 and beyond the IP payload are errors.
    if len < 8 || len > l4.len() {
        return None;
    }
    Some(UdpInfo {
        src_port,
        dst_port,
        payload_len: (len - 8) as u32,
        dhcp_chaddr: None,
    })
}

/// Decodes `frame` if it has one of the common shapes; `None` means "not mine, ask
/// etherparse" (never "invalid").
///
/// Inlined into [`ParsedPacket::parse`] so the view is built in the caller's return slot
/// rather than copied out of an `Option` (the view is ~150 bytes; the copies showed up as a
/// third of the fast path's time).
#[inline(always)]
pub(super) fn parse(frame: &[u8]) -> Option<ParsedPacket> {
    let (eth, rest) = frame.split_first_chunk::<14>()?;
    // Byte-wise, up front: copying the 6-byte arrays at the end made the compiler stage them
    // on the stack and reload them with overlapping wider loads (a store-forwarding stall
    // that was ~30% of this function in perf).
    let dst = MacAddr([eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]);
    let src = MacAddr([eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]);
    let outer = be16(eth[12], eth[13]);
    let (ethertype, vlan, ip) = if outer == ETHERTYPE_VLAN {
        let (tag, rest) = rest.split_first_chunk::<4>()?;
        let vlan = VlanTag {
            id: be16(tag[0] & 0x0f, tag[1]),
            pcp: tag[0] >> 5,
        };
        (be16(tag[2], tag[3]), Some(vlan), rest)
    } else {
        (outer, None, rest)
    };
    let l3 = match ethertype {
        ETHERTYPE_IPV4 => ipv4(ip)?,
        ETHERTYPE_IPV6 => ipv6(ip)?,
        _ => return None,
    };
    let transport = match l3.protocol {
        IP_TCP => Transport::Tcp(tcp(l3.l4)?),
        IP_UDP => Transport::Udp(udp(l3.l4, ethertype == ETHERTYPE_IPV4)?),
        _ => return None,
    };
    let l3_off = if vlan.is_some() { 18 } else { 14 };
    Some(ParsedPacket {
        eth: EthernetInfo {
            src,
            dst,
            ethertype,
            vlan,
        },
        net: l3.net,
        transport,
        layout: Layout {
            l3: l3_off as u16,
            l4: Some((l3_off + l3.header_len) as u16),
            l3_end: (l3_off + l3.total_len) as u32,
        },
        frame_len: frame.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    //! The oracle is etherparse itself ([`ParsedPacket::parse_reference`]); frames are built
    //! with etherparse's `PacketBuilder`, so neither side's encoder is ours.

    use super::*;
    use etherparse::{
        IpFragOffset, IpHeaders, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
        SingleVlanHeader, TcpHeader, TcpOptionElement, VlanHeader, VlanId, VlanPcp,
    };
    use proptest::prelude::*;
    use proptest::sample::Index;

    #[derive(Debug, Clone)]
    enum L3Spec {
        V4 {
            src: [u8; 4],
            dst: [u8; 4],
            ttl: u8,
            ident: u16,
            df: bool,
            /// Raw option bytes (a multiple of 4, at most 40): etherparse does not interpret
            /// them, so neither may we.
            options: Vec<u8>,
            /// `(offset, more_fragments)`; `None` for a whole packet.
            fragment: Option<(u16, bool)>,
        },
        V6 {
            src: [u8; 16],
            dst: [u8; 16],
            hop_limit: u8,
            traffic_class: u8,
            flow_label: u32,
        },
    }

    #[derive(Debug, Clone)]
    enum L4Spec {
        Tcp {
            src_port: u16,
            dst_port: u16,
            seq: u32,
            ack: u32,
            /// Byte 13 of the header.
            flags: u8,
            ns: bool,
            window: u16,
            urgent: u16,
            options: Vec<TcpOptionElement>,
        },
        Udp {
            src_port: u16,
            dst_port: u16,
        },
    }

    #[derive(Debug, Clone)]
    struct FrameSpec {
        src: [u8; 6],
        dst: [u8; 6],
        /// `(id, pcp, dei)` of one 802.1Q tag.
        vlan: Option<(u16, u8, bool)>,
        l3: L3Spec,
        l4: L4Spec,
        payload: Vec<u8>,
    }

    impl FrameSpec {
        fn build(&self) -> Vec<u8> {
            let eth = PacketBuilder::ethernet2(self.src, self.dst);
            let ip = match &self.l3 {
                L3Spec::V4 {
                    src,
                    dst,
                    ttl,
                    ident,
                    df,
                    options,
                    fragment,
                } => {
                    let mut h = Ipv4Header {
                        source: *src,
                        destination: *dst,
                        time_to_live: *ttl,
                        identification: *ident,
                        dont_fragment: *df,
                        options: Ipv4Options::try_from(options.as_slice()).unwrap(),
                        ..Default::default()
                    };
                    if let Some((offset, mf)) = fragment {
                        h.fragment_offset = IpFragOffset::try_new(*offset).unwrap();
                        h.more_fragments = *mf;
                    }
                    IpHeaders::Ipv4(h, Default::default())
                }
                L3Spec::V6 {
                    src,
                    dst,
                    hop_limit,
                    traffic_class,
                    flow_label,
                } => IpHeaders::Ipv6(
                    Ipv6Header {
                        traffic_class: *traffic_class,
                        flow_label: Ipv6FlowLabel::try_new(*flow_label).unwrap(),
                        hop_limit: *hop_limit,
                        source: *src,
                        destination: *dst,
                        ..Default::default()
                    },
                    Default::default(),
                ),
            };
            let ip = match self.vlan {
                Some((id, pcp, dei)) => eth
                    .vlan(VlanHeader::Single(SingleVlanHeader {
                        pcp: VlanPcp::try_new(pcp).unwrap(),
                        drop_eligible_indicator: dei,
                        vlan_id: VlanId::try_new(id).unwrap(),
                        ether_type: etherparse::EtherType(0), // set by the builder
                    }))
                    .ip(ip),
                None => eth.ip(ip),
            };
            let mut f = Vec::new();
            match &self.l4 {
                L4Spec::Tcp {
                    src_port,
                    dst_port,
                    seq,
                    ack,
                    flags,
                    ns,
                    window,
                    urgent,
                    options,
                } => {
                    let mut t = TcpHeader::new(*src_port, *dst_port, *seq, *window);
                    t.acknowledgment_number = *ack;
                    t.urgent_pointer = *urgent;
                    t.ns = *ns;
                    t.fin = flags & TcpFlags::FIN != 0;
                    t.syn = flags & TcpFlags::SYN != 0;
                    t.rst = flags & TcpFlags::RST != 0;
                    t.psh = flags & TcpFlags::PSH != 0;
                    t.ack = flags & TcpFlags::ACK != 0;
                    t.urg = flags & TcpFlags::URG != 0;
                    t.ece = flags & TcpFlags::ECE != 0;
                    t.cwr = flags & TcpFlags::CWR != 0;
                    t.set_options(options).unwrap();
                    ip.tcp_header(t).write(&mut f, &self.payload).unwrap();
                }
                L4Spec::Udp { src_port, dst_port } => {
                    ip.udp(*src_port, *dst_port)
                        .write(&mut f, &self.payload)
                        .unwrap();
                }
            }
            f
        }

        /// Whether the fast path must claim the built frame: everything but the shapes it
        /// leaves to etherparse on purpose.
        fn expect_claimed(&self) -> bool {
            let v4 = matches!(self.l3, L3Spec::V4 { .. });
            let fragment = matches!(
                self.l3,
                L3Spec::V4 {
                    fragment: Some(_),
                    ..
                }
            );
            let l4_ok = match &self.l4 {
                L4Spec::Tcp { flags, options, .. } => {
                    flags & TcpFlags::SYN == 0 || options.is_empty()
                }
                L4Spec::Udp { src_port, dst_port } => {
                    !(v4 && matches!((src_port, dst_port), (67, 68) | (68, 67) | (67, 67)))
                }
            };
            !fragment && l4_ok
        }
    }

    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![
            3 => any::<u16>(),
            1 => prop::sample::select(vec![53u16, 67, 68, 80, 443]),
        ]
    }

    fn tcp_option() -> impl Strategy<Value = TcpOptionElement> {
        use TcpOptionElement::*;
        prop_oneof![
            Just(Noop),
            any::<u16>().prop_map(MaximumSegmentSize),
            (0u8..=14).prop_map(WindowScale),
            Just(SelectiveAcknowledgementPermitted),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Timestamp(a, b)),
        ]
    }

    fn l3_spec() -> impl Strategy<Value = L3Spec> {
        let v4 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            (0usize..=10).prop_flat_map(|words| prop::collection::vec(any::<u8>(), words * 4)),
            // First fragments (offset 0, MF) as well as later ones.
            prop::option::weighted(0.15, (prop_oneof![Just(0u16), 0u16..8192], any::<bool>())),
        )
            .prop_map(|(src, dst, ttl, ident, df, options, fragment)| L3Spec::V4 {
                src,
                dst,
                ttl,
                ident,
                df,
                options,
                // Offset 0 without MF is not a fragment; keep the spec honest about it.
                fragment: fragment.filter(|&(off, mf)| off != 0 || mf),
            });
        let v6 = (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u8>(),
            any::<u8>(),
            0u32..(1 << 20),
        )
            .prop_map(
                |(src, dst, hop_limit, traffic_class, flow_label)| L3Spec::V6 {
                    src,
                    dst,
                    hop_limit,
                    traffic_class,
                    flow_label,
                },
            );
        prop_oneof![v4, v6]
    }

    fn l4_spec() -> impl Strategy<Value = L4Spec> {
        let tcp = (
            (port(), port(), any::<u32>(), any::<u32>()),
            (any::<u8>(), any::<bool>(), any::<u16>(), any::<u16>()),
            prop::collection::vec(tcp_option(), 0..=4),
        )
            .prop_map(
                |((src_port, dst_port, seq, ack), (flags, ns, window, urgent), options)| {
                    L4Spec::Tcp {
                        src_port,
                        dst_port,
                        seq,
                        ack,
                        flags,
                        ns,
                        window,
                        urgent,
                        options,
                    }
                },
            );
        let udp =
            (port(), port()).prop_map(|(src_port, dst_port)| L4Spec::Udp { src_port, dst_port });
        prop_oneof![tcp, udp]
    }

    fn frame_spec() -> impl Strategy<Value = FrameSpec> {
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            prop::option::of((0u16..4096, 0u8..8, any::<bool>())),
            l3_spec(),
            l4_spec(),
            prop_oneof![
                3 => prop::collection::vec(any::<u8>(), 0..64),
                1 => prop::collection::vec(any::<u8>(), 0..1500),
            ],
        )
            .prop_map(|(src, dst, vlan, l3, l4, payload)| FrameSpec {
                src,
                dst,
                vlan,
                l3,
                l4,
                payload,
            })
    }

    /// A header field the strict length checks depend on.
    #[derive(Debug, Clone, Copy)]
    enum Field {
        EtherType,
        /// IPv4 version + IHL / IPv6 version + traffic class.
        IpByte0,
        /// IPv4 total length / IPv6 payload length.
        IpLength,
        /// IPv4 protocol / IPv6 next header.
        IpProtocol,
        /// IPv4 flags + fragment offset.
        Ipv4Fragment,
        /// TCP data offset (byte 12) / UDP length.
        L4Length,
    }

    #[derive(Debug, Clone)]
    struct Mutations {
        bytes: Vec<(Index, u8)>,
        /// Single-bit flips (flag fields), as `(byte, bit)`.
        bits: Vec<(Index, u8)>,
        fields: Vec<(Field, i32, Option<u16>)>,
        truncate: Option<Index>,
        padding: Vec<u8>,
    }

    fn mutations() -> impl Strategy<Value = Mutations> {
        let field = prop_oneof![
            Just(Field::EtherType),
            Just(Field::IpByte0),
            Just(Field::IpLength),
            Just(Field::IpProtocol),
            Just(Field::Ipv4Fragment),
            Just(Field::L4Length),
        ];
        (
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
            prop::collection::vec((any::<Index>(), 0u8..8), 0..3),
            // A field set to its old value plus a small delta, or to any value.
            prop::collection::vec(
                (field, -8i32..=8, prop::option::weighted(0.3, any::<u16>())),
                0..=2,
            ),
            prop::option::weighted(0.3, any::<Index>()),
            prop_oneof![
                2 => Just(Vec::new()),
                1 => prop::collection::vec(any::<u8>(), 1..48),
            ],
        )
            .prop_map(|(bytes, bits, fields, truncate, padding)| Mutations {
                bytes,
                bits,
                fields,
                truncate,
                padding,
            })
    }

    fn put16(f: &mut [u8], at: usize, v: u16) {
        if let Some(b) = f.get_mut(at..at + 2) {
            b.copy_from_slice(&v.to_be_bytes());
        }
    }

    fn get16(f: &[u8], at: usize) -> u16 {
        f.get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    }

    impl Mutations {
        /// Applies the mutations to a frame whose reference parse is `p`.
        fn apply(&self, f: &mut Vec<u8>, p: &ParsedPacket) {
            let l3 = usize::from(p.layout.l3);
            let l4 = usize::from(p.layout.l4.unwrap_or(p.layout.l3 + 20));
            let v4 = matches!(p.net, Net::Ipv4(_));
            // Byte mutations land in the headers (first 100 bytes), where they matter.
            let head = f.len().min(100);
            for (at, v) in &self.bytes {
                let at = at.index(head);
                f[at] = *v;
            }
            for (at, bit) in &self.bits {
                let at = at.index(head);
                f[at] ^= 1 << bit;
            }
            for &(field, delta, any) in &self.fields {
                let (at, wide) = match field {
                    Field::EtherType => (l3 - 2, true),
                    Field::IpByte0 => (l3, false),
                    Field::IpLength => (l3 + if v4 { 2 } else { 4 }, true),
                    Field::IpProtocol => (l3 + if v4 { 9 } else { 6 }, false),
                    Field::Ipv4Fragment => (l3 + 6, true),
                    Field::L4Length => match p.transport {
                        Transport::Udp(_) => (l4 + 4, true),
                        _ => (l4 + 12, false),
                    },
                };
                if wide {
                    let v = any.unwrap_or_else(|| {
                        (i32::from(get16(f, at)) + delta).clamp(0, 0xffff) as u16
                    });
                    put16(f, at, v);
                } else if let Some(b) = f.get_mut(at) {
                    *b = match any {
                        Some(v) => v as u8,
                        // Small steps of the high nibble (IHL is low, data offset high).
                        None if matches!(field, Field::L4Length) => {
                            b.wrapping_add((delta as u8) << 4)
                        }
                        None => b.wrapping_add(delta as u8),
                    };
                }
            }
            if let Some(cut) = self.truncate {
                f.truncate(cut.index(f.len() + 1));
            }
            f.extend_from_slice(&self.padding);
        }
    }

    /// The invariant: the fast path declines, or it agrees with etherparse exactly.
    fn check_agrees(f: &[u8]) -> Result<Option<ParsedPacket>, TestCaseError> {
        let reference = ParsedPacket::parse_reference(f);
        let fast = parse(f);
        if let Some(p) = fast {
            prop_assert_eq!(
                Ok(p),
                reference.clone(),
                "fast path disagrees on {:02x?}",
                f
            );
        }
        prop_assert_eq!(ParsedPacket::parse(f), reference);
        Ok(fast)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Well-formed frames (and the same frames with Ethernet padding): the fast path
        /// claims every common shape and returns exactly etherparse's view.
        #[test]
        fn fast_path_claims_and_matches_well_formed_frames(
            spec in frame_spec(),
            padding in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut f = spec.build();
            let claimed = check_agrees(&f)?;
            prop_assert_eq!(claimed.is_some(), spec.expect_claimed(), "claim of {:?}", spec);
            f.extend_from_slice(&padding);
            let padded = check_agrees(&f)?;
            prop_assert_eq!(padded.is_some(), spec.expect_claimed());
            if let Some(p) = padded {
                prop_assert_eq!(p.frame_len as usize, f.len());
                prop_assert!(p.layout.l3_end as usize + padding.len() == f.len());
            }
        }

    }

    proptest! {
        // Mutations hit the checks by chance: give them more tries.
        #![proptest_config(ProptestConfig::with_cases(8000))]

        /// Mutated, truncated and padded frames: the fast path never accepts what etherparse
        /// rejects and never disagrees with what it accepts.
        #[test]
        fn fast_path_matches_etherparse_on_mutated_frames(
            spec in frame_spec(),
            muts in mutations(),
        ) {
            let mut f = spec.build();
            let p = ParsedPacket::parse_reference(&f).unwrap();
            muts.apply(&mut f, &p);
            check_agrees(&f)?;
        }

        /// Arbitrary bytes behind an IPv4 / IPv6 / VLAN Ethernet header.
        #[test]
        fn fast_path_matches_etherparse_on_random_bytes(
            ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x0806]),
            rest in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(&rest);
            check_agrees(&f)?;
        }
    }

    fn udp4_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(40000, 5000)
            .write(&mut f, payload)
            .unwrap();
        f
    }

    #[test]
    fn minimum_size_frame_with_ethernet_padding_is_claimed() {
        // 42 bytes of headers + 4 of payload, padded to the 60-byte Ethernet minimum.
        let mut f = udp4_frame(b"ping");
        f.resize(60, 0);
        let p = parse(&f).expect("plain UDP/IPv4 must take the fast path");
        assert_eq!(Ok(p), ParsedPacket::parse_reference(&f));
        assert_eq!(p.layout.l3_end, 46);
        assert_eq!(p.frame_len, 60);
        assert!(matches!(p.transport, Transport::Udp(u) if u.payload_len == 4));
    }

    #[test]
    fn udp_length_beyond_ip_payload_is_left_to_etherparse_which_rejects_it() {
        let mut f = udp4_frame(b"ping");
        f.resize(60, 0);
        put16(&mut f, 34 + 4, 13); // UDP length 13 > IP payload 12, though within the frame
        assert_eq!(parse(&f), None);
        assert!(ParsedPacket::parse(&f).is_err());
    }

    #[test]
    fn syn_with_window_scale_and_dhcp_use_the_reference_path() {
        let mut syn = Vec::new();
        PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::WindowScale(7),
            ])
            .unwrap()
            .write(&mut syn, b"")
            .unwrap();
        assert_eq!(parse(&syn), None);
        assert_eq!(
            ParsedPacket::parse(&syn).unwrap().tcp().unwrap().wscale,
            Some(7)
        );

        let mut bootp = [0u8; 240];
        bootp[0] = 2; // BOOTREPLY
        bootp[1] = 1; // Ethernet
        bootp[2] = 6;
        bootp[28..34].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 9]);
        let mut dhcp = Vec::new();
        PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0xff; 6])
            .ipv4([10, 0, 0, 1], [255, 255, 255, 255], 64)
            .udp(67, 68)
            .write(&mut dhcp, &bootp)
            .unwrap();
        assert_eq!(parse(&dhcp), None);
        match ParsedPacket::parse(&dhcp).unwrap().transport {
            Transport::Udp(u) => {
                assert_eq!(u.dhcp_chaddr, Some(MacAddr([0x52, 0x54, 0, 0, 0, 9])))
            }
            other => panic!("not UDP: {other:?}"),
        }
    }
}

//! Resolving checksum/TSO offloads for a receiver that did not negotiate them.
//!
//! A frame travels between ports with its [`PacketOffload`] (partial checksum, TSO). When the
//! receiving guest negotiated the same offloads, the frame is passed through unsegmented and the
//! virtio-net header says so; this is what makes VM-to-VM TCP fast. Otherwise we do the device's
//! work in software:
//!
//! * partial checksum, receiver without `GUEST_CSUM`: the checksum is completed in place;
//! * TSO super-segment, receiver without `GUEST_TSO4/6`: the frame is cut into MSS-sized TCP
//!   segments with correct IP lengths/IDs, sequence numbers, flags and full checksums.
//!
//! UDP fragmentation offload (UFO/USO) is never negotiated (neither direction), so there is no
//! UDP case to resolve: software IP fragmentation is what UFO would have needed, and the Linux
//! kernel no longer produces UFO frames anyway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum::{
    add_bytes, complete_partial, finish, ipv4_header_checksum, pseudo_header_sum,
};
use crate::net_hdr::{GsoKind, OffloadSet, PacketOffload, VirtioNetHdr};
use crate::packet::{Net, ParsedPacket, TcpFlags};

/// Where the headers of a TSO frame are, taken from the parse at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoLayout {
    pub l3: u16,
    pub l4: u16,
    pub tcp_header_len: u8,
    pub ipv6: bool,
}

/// What travels with a frame to its egress port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    pub offload: PacketOffload,
    /// End of the L3 packet: checksums stop here, Ethernet padding is excluded.
    pub l3_end: u32,
    /// Present iff `offload.gso` is.
    pub gso_layout: Option<GsoLayout>,
}

/// Why offload metadata does not fit the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("GSO frame is not TCP over the IP version its GSO type names")]
    GsoMismatch,
    #[error("offload offsets outside the frame")]
    OutOfRange,
}

impl FrameMeta {
    /// Builds the metadata for a validated header and a parsed frame, checking that a GSO type
    /// matches the packet (TCPv4 GSO must be TCP over IPv4, and not a fragment).
    pub fn new(offload: PacketOffload, pkt: &ParsedPacket) -> Result<FrameMeta, OffloadError> {
        let gso_layout = match offload.gso {
            None => None,
            Some((kind, _)) => {
                let ipv6 = match (&pkt.net, kind) {
                    (Net::Ipv4(ip), GsoKind::TcpV4) if ip.fragment.is_none() => false,
                    (Net::Ipv6(ip), GsoKind::TcpV6) if ip.fragment.is_none() => true,
                    _ => return Err(OffloadError::GsoMismatch),
                };
                let tcp = pkt.tcp().ok_or(OffloadError::GsoMismatch)?;
                let l4 = pkt.layout.l4.ok_or(OffloadError::GsoMismatch)?;
                Some(GsoLayout {
                    l3: pkt.layout.l3,
                    l4,
                    tcp_header_len: tcp.header_len,
                    ipv6,
                })
            }
        };
        Ok(FrameMeta {
            offload,
            l3_end: pkt.layout.l3_end,
            gso_layout,
        })
    }

    /// Plain frame with complete checksums (e.g. built by us).
    pub fn plain(frame_len: usize) -> FrameMeta {
        FrameMeta {
            l3_end: frame_len as u32,
            ..Default::default()
        }
    }
}

/// What the RX path must do with a frame for a receiver with offloads `rx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxAction {
    /// Write the frame (possibly fixed up in place) with this header.
    Deliver(VirtioNetHdr),
    /// Cut into segments of `mss` payload bytes with [`segment_tcp`], each delivered with a
    /// zero header.
    Segment { mss: u16, layout: GsoLayout },
}

/// The header to deliver a frame with when that needs neither segmenting nor a checksum
/// completed in the frame (so the frame can be written as it is); `None` otherwise, then
/// [`plan_rx`] decides. Agrees with [`plan_rx`] whenever it returns `Some`.
pub fn plan_rx_unchanged(meta: &FrameMeta, rx: OffloadSet) -> Option<VirtioNetHdr> {
    let off = &meta.offload;
    if off.gso.is_some() {
        return None;
    }
    if off.partial_csum.is_some() {
        return rx.csum.then(|| off.to_header(0));
    }
    if off.data_valid && rx.csum {
        return Some(off.to_header(0));
    }
    Some(VirtioNetHdr::default())
}

/// Decides how to hand `frame` to a receiver, completing a partial checksum in place if the
/// receiver cannot take it.
pub fn plan_rx(
    frame: &mut [u8],
    meta: &FrameMeta,
    rx: OffloadSet,
) -> Result<RxAction, OffloadError> {
    let off = &meta.offload;
    if let Some((kind, mss)) = off.gso {
        let layout = meta.gso_layout.ok_or(OffloadError::GsoMismatch)?;
        if rx.allows_gso(kind) && rx.csum {
            let hdr_len = layout.l4 + layout.tcp_header_len as u16;
            return Ok(RxAction::Deliver(off.to_header(hdr_len)));
        }
        return Ok(RxAction::Segment { mss, layout });
    }
    if let Some((start, offset)) = off.partial_csum {
        if rx.csum {
            return Ok(RxAction::Deliver(off.to_header(0)));
        }
        let end = (meta.l3_end as usize).min(frame.len());
        complete_partial(frame, start as usize, offset as usize, end)
            .map_err(|_| OffloadError::OutOfRange)?;
        return Ok(RxAction::Deliver(VirtioNetHdr::default()));
    }
    let mut h = VirtioNetHdr::default();
    if off.data_valid && rx.csum {
        h = off.to_header(0);
    }
    Ok(RxAction::Deliver(h))
}

fn read_ip(b: &[u8], ipv6: bool, l3: usize, dst: bool) -> Option<IpAddr> {
    if ipv6 {
        let at = l3 + if dst { 24 } else { 8 };
        let a: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(a)))
    } else {
        let at = l3 + if dst { 16 } else { 12 };
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(a)))
    }
}

/// Cuts a TCP super-segment into segments of at most `mss` payload bytes.
///
/// Each segment is assembled in `scratch` (reused, so no allocation once it has grown) and
/// passed to `emit`; `emit` returns `false` to stop early (receiver out of buffers). Returns the
/// number of segments emitted. The input is the frame as parsed at ingress; `l3_end` excludes
/// Ethernet padding.
pub fn segment_tcp(
    frame: &[u8],
    layout: &GsoLayout,
    l3_end: usize,
    mss: u16,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> bool,
) -> Result<usize, OffloadError> {
    let l3 = layout.l3 as usize;
    let l4 = layout.l4 as usize;
    let hdrs_end = l4 + layout.tcp_header_len as usize;
    let min_l3 = if layout.ipv6 { 40 } else { 20 };
    if mss == 0
        || l3 + min_l3 > l4
        || hdrs_end > l3_end
        || l3_end > frame.len()
        || l4 + 20 > hdrs_end
    {
        return Err(OffloadError::OutOfRange);
    }
    let src = read_ip(frame, layout.ipv6, l3, false).ok_or(OffloadError::OutOfRange)?;
    let dst = read_ip(frame, layout.ipv6, l3, true).ok_or(OffloadError::OutOfRange)?;
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let flags0 = frame[l4 + 13];
    let id0 = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
    let payload = &frame[hdrs_end..l3_end];

    // A payload-less super-segment still goes out once (e.g. a pure FIN that had GSO set).
    let n_chunks = payload.len().div_ceil(mss as usize).max(1);
    let mut emitted = 0;
    for i in 0..n_chunks {
        let start = i * mss as usize;
        let chunk = &payload[start.min(payload.len())..(start + mss as usize).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&frame[..hdrs_end]);
        scratch.extend_from_slice(chunk);
        let seg_len = scratch.len();

        if layout.ipv6 {
            let plen = (seg_len - l3 - 40) as u16;
            scratch[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tot = (seg_len - l3) as u16;
            scratch[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
            scratch[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            scratch[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = ipv4_header_checksum(&scratch[l3..l4]);
            scratch[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }

        let seq = seq0.wrapping_add(start as u32);
        scratch[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 != n_chunks {
            flags &= !(TcpFlags::FIN | TcpFlags::PSH);
        }
        if i != 0 {
            flags &= !TcpFlags::CWR;
        }
        scratch[l4 + 13] = flags;
        scratch[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let l4_len = (seg_len - l4) as u32;
        let sum = add_bytes(pseudo_header_sum(src, dst, 6, l4_len), &scratch[l4..]);
        scratch[l4 + 16..l4 + 18].copy_from_slice(&finish(sum).to_be_bytes());

        emitted += 1;
        if !emit(scratch) {
            break;
        }
    }
    Ok(emitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::fold;
    use crate::net_hdr::{FLAG_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tso_frame(v6: bool, payload: &[u8]) -> (Vec<u8>, ParsedPacket) {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2([2; 6], [4; 6]);
        let b = if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        b.tcp(1234, 80, 0xffff_f000, 1000)
            .ack(77)
            .psh()
            .fin()
            .cwr()
            .write(&mut f, payload)
            .unwrap();
        let p = ParsedPacket::parse(&f).unwrap();
        (f, p)
    }

    fn offload(kind: GsoKind, mss: u16, p: &ParsedPacket) -> PacketOffload {
        PacketOffload {
            partial_csum: Some((p.layout.l4.unwrap(), 16)),
            gso: Some((kind, mss)),
            data_valid: false,
        }
    }

    fn check_segments(v6: bool) {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let (frame, p) = tso_frame(v6, &payload);
        let kind = if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 };
        let meta = FrameMeta::new(offload(kind, 1448, &p), &p).unwrap();
        let layout = meta.gso_layout.unwrap();
        let mut scratch = Vec::new();
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment_tcp(
            &frame,
            &layout,
            meta.l3_end as usize,
            1448,
            &mut scratch,
            |s| {
                segs.push(s.to_vec());
                true
            },
        )
        .unwrap();
        assert_eq!(n, 4); // 1448*3 = 4344, remainder 656
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let sp = SlicedPacket::from_ethernet(s).unwrap();
            let Some(TransportSlice::Tcp(t)) = sp.transport else {
                panic!()
            };
            let expect = match &sp.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    let h = ip.header();
                    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                    assert_eq!(
                        h.identification(),
                        u16::from_be_bytes([frame[18], frame[19]]).wrapping_add(i as u16)
                    );
                    t.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    let h = ip.header();
                    t.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
                }
                _ => panic!("no ip"),
            };
            assert_eq!(t.checksum(), expect, "segment {i} checksum");
            assert_eq!(
                t.sequence_number(),
                0xffff_f000u32.wrapping_add(i as u32 * 1448)
            );
            let last = i == segs.len() - 1;
            assert_eq!(t.fin(), last);
            assert_eq!(t.psh(), last);
            assert_eq!(t.cwr(), i == 0);
            assert!(t.ack());
            assert!(t.payload().len() <= 1448);
            rebuilt.extend_from_slice(t.payload());
        }
        assert_eq!(rebuilt, payload);
    }

    #[test]
    fn segments_ipv4_super_segment() {
        check_segments(false);
    }

    #[test]
    fn segments_ipv6_super_segment() {
        check_segments(true);
    }

    #[test]
    fn segmentation_stops_when_receiver_is_full() {
        let (frame, p) = tso_frame(false, &[7u8; 3000]);
        let meta = FrameMeta::new(offload(GsoKind::TcpV4, 1000, &p), &p).unwrap();
        let mut n_seen = 0;
        let n = segment_tcp(
            &frame,
            &meta.gso_layout.unwrap(),
            meta.l3_end as usize,
            1000,
            &mut Vec::new(),
            |_| {
                n_seen += 1;
                false
            },
        )
        .unwrap();
        assert_eq!((n, n_seen), (1, 1));
    }

    #[test]
    fn gso_type_must_match_packet() {
        let (_, p4) = tso_frame(false, &[0; 10]);
        assert_eq!(
            FrameMeta::new(offload(GsoKind::TcpV6, 100, &p4), &p4),
            Err(OffloadError::GsoMismatch)
        );
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut udp, &[0; 100])
            .unwrap();
        let pu = ParsedPacket::parse(&udp).unwrap();
        let off = PacketOffload {
            partial_csum: Some((34, 6)),
            gso: Some((GsoKind::TcpV4, 10)),
            data_valid: false,
        };
        assert_eq!(FrameMeta::new(off, &pu), Err(OffloadError::GsoMismatch));
    }

    #[test]
    fn receiver_with_offloads_gets_the_header_translated() {
        let (mut frame, p) = tso_frame(true, &[1; 4000]);
        let meta = FrameMeta::new(offload(GsoKind::TcpV6, 1400, &p), &p).unwrap();
        match plan_rx(&mut frame, &meta, OffloadSet::ALL).unwrap() {
            RxAction::Deliver(h) => {
                assert_eq!(h.flags, FLAG_NEEDS_CSUM);
                assert_eq!(h.gso_type, GSO_TCPV6);
                assert_eq!(h.gso_size, 1400);
                assert_eq!(h.csum_start, 54); // eth 14 + ipv6 40
                assert_eq!(h.csum_offset, 16);
                assert_eq!(h.hdr_len, 14 + 40 + 20);
            }
            other => panic!("{other:?}"),
        }
        // Receiver with TSO for v4 only must get segments for a v6 super-segment.
        let v4_only = OffloadSet {
            csum: true,
            tso4: true,
            tso6: false,
        };
        assert!(matches!(
            plan_rx(&mut frame, &meta, v4_only).unwrap(),
            RxAction::Segment { mss: 1400, .. }
        ));
        let (mut f4, p4) = tso_frame(false, &[1; 4000]);
        let m4 = FrameMeta::new(offload(GsoKind::TcpV4, 1400, &p4), &p4).unwrap();
        assert!(
            matches!(plan_rx(&mut f4, &m4, v4_only).unwrap(), RxAction::Deliver(h) if h.gso_type == GSO_TCPV4)
        );
    }

    #[test]
    fn receiver_without_guest_csum_gets_a_completed_checksum() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut f, b"data")
            .unwrap();
        let good = u16::from_be_bytes([f[50], f[51]]);
        let p = ParsedPacket::parse(&f).unwrap();
        let seed = fold(pseudo_header_sum(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            6,
            (f.len() - 34) as u32,
        ));
        f[50..52].copy_from_slice(&seed.to_be_bytes());
        f.extend_from_slice(&[0xaa; 6]); // Ethernet padding must not be summed.
        let off = PacketOffload {
            partial_csum: Some((34, 16)),
            gso: None,
            data_valid: false,
        };
        let meta = FrameMeta::new(off, &p).unwrap();
        let mut pass = f.clone();
        assert_eq!(
            plan_rx(&mut pass, &meta, OffloadSet::ALL).unwrap(),
            RxAction::Deliver(off.to_header(0))
        );
        assert_eq!(pass, f, "pass-through must not touch the frame");
        assert_eq!(
            plan_rx(&mut f, &meta, OffloadSet::NONE).unwrap(),
            RxAction::Deliver(VirtioNetHdr::default())
        );
        assert_eq!(u16::from_be_bytes([f[50], f[51]]), good);
    }

    /// `plan_rx_unchanged` is `plan_rx` for the frames it accepts, and accepts exactly those
    /// that need no segmenting and no checksum written into the frame.
    #[test]
    fn plan_rx_unchanged_agrees_with_plan_rx() {
        let (f, pkt) = tso_frame(false, &[7; 40]);
        let csum = PacketOffload {
            partial_csum: Some((34, 16)),
            ..Default::default()
        };
        let valid = PacketOffload {
            data_valid: true,
            ..Default::default()
        };
        let metas = [
            FrameMeta::new(PacketOffload::default(), &pkt).unwrap(),
            FrameMeta::new(csum, &pkt).unwrap(),
            FrameMeta::new(valid, &pkt).unwrap(),
        ];
        for meta in &metas {
            for rx in [OffloadSet::NONE, OffloadSet::ALL] {
                let mut frame = f.clone();
                let full = plan_rx(&mut frame, meta, rx).unwrap();
                match plan_rx_unchanged(meta, rx) {
                    Some(h) => {
                        assert_eq!(full, RxAction::Deliver(h));
                        assert_eq!(frame, f, "accepted, so plan_rx left the frame as it was");
                    }
                    None => assert!(meta.offload.partial_csum.is_some() && !rx.csum),
                }
            }
        }
    }
}

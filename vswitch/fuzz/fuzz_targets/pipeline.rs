//! Frame parsing, spoof guard and the whole pipeline on arbitrary bytes, including the
//! receiver-side offload resolution (checksum completion, software TSO) and reject replies.
//!
//! Input: byte 0 selects the sender's/receiver's offloads and the filter's verdicts,
//! bytes 1..13 are the virtio-net header, the rest is the frame.

#![no_main]

use std::net::IpAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vswitch::filter::{FilterContext, FilterVerdict, PacketFilter, PolicyDrop, RejectKind};
use vswitch::mac::MacAddr;
use vswitch::net_hdr::{OffloadSet, VirtioNetHdr};
use vswitch::offload::{plan_rx, segment_tcp, RxAction};
use vswitch::packet::ParsedPacket;
use vswitch::pipeline::{Pipeline, Scratch};
use vswitch::port::{PortId, VnicIdentity, VnicPort};
use vswitch::reject::build_reject;
use vswitch::spoof;

struct Mixed(u8);
impl PacketFilter for Mixed {
    fn filter(&self, _ctx: &FilterContext, pkt: &ParsedPacket) -> FilterVerdict {
        match (self.0 >> 4) & 3 {
            0 => FilterVerdict::Forward,
            1 => FilterVerdict::Reject(RejectKind::TcpRst),
            2 => FilterVerdict::Reject(RejectKind::IcmpUnreachable),
            _ if pkt.tcp().is_some() => FilterVerdict::Drop(PolicyDrop::Denied),
            _ => FilterVerdict::Forward,
        }
    }
}

fn port(id: u32, mac: [u8; 6], ip: [u8; 4]) -> Arc<VnicPort> {
    let p = VnicPort::with_inbox_capacity(
        PortId(id),
        VnicIdentity {
            name: format!("p{id}"),
            ..Default::default()
        },
        MacAddr(mac),
        &[IpAddr::from(ip), "fd00::1".parse().unwrap()],
        8,
    )
    .unwrap();
    Arc::new(p)
}

fn offloads(bits: u8) -> OffloadSet {
    OffloadSet {
        csum: bits & 1 != 0,
        tso4: bits & 2 != 0,
        tso6: bits & 4 != 0,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let sel = data[0];
    let hdr = VirtioNetHdr::parse(&data[1..13]).unwrap();
    let frame = &data[13..];

    // Pure parts on their own.
    if let Ok(pkt) = ParsedPacket::parse(frame) {
        assert!(pkt.layout.l3 as usize <= frame.len());
        if let Some(l4) = pkt.layout.l4 {
            assert!(l4 as usize <= frame.len());
        }
        let b = spoof::PortBindings::new(pkt.eth.src, &[IpAddr::from([10, 0, 0, 1])]);
        let _ = spoof::check(&b, &pkt);
        let mut out = Vec::new();
        if build_reject(&pkt, frame, RejectKind::TcpRst, &mut out).is_ok() {
            ParsedPacket::parse(&out).expect("reject replies must parse");
        }
        let _ = pkt.five_tuple();
    }

    // The pipeline: sender 1 (MAC/IP taken from the frame when possible so the spoof guard
    // lets interesting frames through), receiver 2.
    let src_mac: [u8; 6] = frame
        .get(6..12)
        .and_then(|m| m.try_into().ok())
        .unwrap_or([2, 0, 0, 0, 0, 1]);
    let src_mac = if MacAddr(src_mac).is_valid_unicast() {
        src_mac
    } else {
        [2, 0, 0, 0, 0, 1]
    };
    let dst_mac: [u8; 6] = frame
        .get(0..6)
        .and_then(|m| m.try_into().ok())
        .unwrap_or([2, 0, 0, 0, 0, 2]);
    let dst_mac = if MacAddr(dst_mac).is_valid_unicast() && dst_mac != src_mac {
        dst_mac
    } else {
        [2, 0, 0, 0, 0, 2]
    };
    let src_ip: [u8; 4] = frame
        .get(26..30)
        .and_then(|m| m.try_into().ok())
        .unwrap_or([10, 0, 0, 1]);
    let dst_ip = if src_ip == [10, 0, 0, 2] {
        [10, 0, 0, 3]
    } else {
        [10, 0, 0, 2]
    };

    let pipeline = Pipeline::new(Arc::new(Mixed(sel)));
    let a = port(1, src_mac, src_ip);
    let b = port(2, dst_mac, dst_ip);
    // Ports only report offloads through negotiated features; emulate via the feature bits.
    let tx_bits =
        (sel & 1) as u64 | (((sel >> 1) & 1) as u64) << 11 | (((sel >> 2) & 1) as u64) << 12;
    a.set_acked_features(tx_bits);
    a.set_rx_ready(true);
    b.set_rx_ready(true);
    let _ = pipeline.add_vnic(a.clone());
    let _ = pipeline.add_vnic(b.clone());
    let mut scratch = Scratch::new();
    let _ = pipeline.from_vnic(&a, &hdr, frame, 0, &mut scratch);

    // Drain what was delivered the way the RX path does, for a receiver with random offloads.
    let rx = offloads(sel >> 3);
    let mut seg = Vec::new();
    for port in [&a, &b] {
        while let Some(mut f) = port.inbox.pop() {
            match plan_rx(&mut f.data, &f.meta, rx) {
                Ok(RxAction::Segment { mss, layout }) => {
                    let _ = segment_tcp(
                        &f.data,
                        &layout,
                        f.meta.l3_end as usize,
                        mss,
                        &mut seg,
                        |s| {
                            ParsedPacket::parse(s).expect("segments must parse");
                            true
                        },
                    );
                }
                Ok(RxAction::Deliver(_)) | Err(_) => {}
            }
            port.inbox.recycle(f.data);
        }
    }
});

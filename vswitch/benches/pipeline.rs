//! Data-path costs without guests: parsing, and a frame through the whole pipeline
//! (validate, parse, spoof guard, switch, filter, copy into the receiver's inbox, receiver-side
//! offload resolution), for a small frame and a 64 KiB TSO super-segment that the receiver
//! either takes as is or needs segmented in software.

use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use etherparse::PacketBuilder;

use vswitch::filter::InsecureAllowAll;
use vswitch::mac::MacAddr;
use vswitch::net_hdr::{OffloadSet, VirtioNetHdr, FLAG_NEEDS_CSUM, GSO_TCPV4};
use vswitch::offload::{plan_rx, segment_tcp, RxAction};
use vswitch::packet::ParsedPacket;
use vswitch::pipeline::{Pipeline, Scratch};
use vswitch::port::{PortId, VnicIdentity, VnicPort};

fn port(n: u8) -> Arc<VnicPort> {
    let p = VnicPort::new(
        PortId(n as u32),
        VnicIdentity {
            name: format!("vm{n}"),
            ..Default::default()
        },
        MacAddr([0x52, 0x54, 0, 0, 0, n]),
        &[IpAddr::from([10, 0, 0, n])],
    )
    .unwrap();
    // CSUM + HOST_TSO4 on TX, everything on RX.
    p.set_acked_features(1 | (1 << 11) | (1 << 1) | (1 << 7));
    p.set_rx_ready(true);
    Arc::new(p)
}

fn frame(payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 80, 1, 64000)
        .ack(1)
        .write(&mut f, &vec![7u8; payload])
        .unwrap();
    f
}

/// A UDP frame of `len` bytes in total.
fn udp_frame(v6: bool, len: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2]);
    let (ip, hdrs) = if v6 {
        (eth.ipv6([0xfd; 16], [0xfe; 16], 64), 14 + 40 + 8)
    } else {
        (eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64), 14 + 20 + 8)
    };
    let mut f = Vec::new();
    ip.udp(40000, 5000)
        .write(&mut f, &vec![7u8; len - hdrs])
        .unwrap();
    f
}

fn tcp6_frame() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(40000, 80, 1, 64000)
        .ack(1)
        .write(&mut f, &[])
        .unwrap();
    f
}

fn syn_frame() -> Vec<u8> {
    use etherparse::TcpOptionElement::*;
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 80, 1, 64240)
        .syn()
        .options(&[
            MaximumSegmentSize(1460),
            SelectiveAcknowledgementPermitted,
            Timestamp(1, 0),
            Noop,
            WindowScale(7),
        ])
        .unwrap()
        .write(&mut f, &[])
        .unwrap();
    f
}

fn benches(c: &mut Criterion) {
    let small = frame(10);
    let big = frame(65535 - 40);
    let gso = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };

    // A/B in one run: `parse` (hand-written fast path, etherparse fallback) against
    // `parse_reference` (etherparse only) on the same bytes. The SYN with options is declined
    // by the fast path, so its `parse` figure is the cost of the fallback.
    let parse_cases = [
        ("tcp_64B", small.clone()),
        ("udp_64B", udp_frame(false, 64)),
        ("udp6_64B", udp_frame(true, 64)),
        ("tcp6_74B", tcp6_frame()),
        ("tcp_syn_opts", syn_frame()),
    ];
    // The view is looked at in place (black_box of a reference), as the pipeline does: returning
    // the ~150-byte value from the closure would add criterion's copies to both sides.
    for (name, f) in &parse_cases {
        assert!(ParsedPacket::parse(f).is_ok());
        c.bench_function(&format!("parse_{name}"), |b| {
            b.iter(|| {
                let p = ParsedPacket::parse(std::hint::black_box(f));
                std::hint::black_box(&p);
            })
        });
        c.bench_function(&format!("parse_ref_{name}"), |b| {
            b.iter(|| {
                let p = ParsedPacket::parse_reference(std::hint::black_box(f));
                std::hint::black_box(&p);
            })
        });
    }

    let pipeline = Pipeline::new(Arc::new(InsecureAllowAll));
    let a = port(1);
    let bport = port(2);
    pipeline.add_vnic(a.clone()).unwrap();
    pipeline.add_vnic(bport.clone()).unwrap();
    let mut scratch = Scratch::new();

    let mut g = c.benchmark_group("vm_to_vm");
    g.throughput(Throughput::Elements(1));
    g.bench_function("64B_frame", |b| {
        b.iter(|| {
            pipeline.from_vnic(&a, &VirtioNetHdr::default(), &small, 0, &mut scratch);
            let f = bport.inbox.pop().unwrap();
            bport.inbox.recycle(f.data);
        })
    });
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("64KiB_tso_passthrough", |b| {
        b.iter(|| {
            pipeline.from_vnic(&a, &gso, &big, 0, &mut scratch);
            let mut f = bport.inbox.pop().unwrap();
            let act = plan_rx(&mut f.data, &f.meta, OffloadSet::ALL).unwrap();
            assert!(matches!(act, RxAction::Deliver(_)));
            bport.inbox.recycle(f.data);
        })
    });
    let mut seg = Vec::new();
    g.bench_function("64KiB_tso_software_segmentation", |b| {
        b.iter_batched(
            || (),
            |_| {
                pipeline.from_vnic(&a, &gso, &big, 0, &mut scratch);
                let mut f = bport.inbox.pop().unwrap();
                if let RxAction::Segment { mss, layout } =
                    plan_rx(&mut f.data, &f.meta, OffloadSet::NONE).unwrap()
                {
                    segment_tcp(
                        &f.data,
                        &layout,
                        f.meta.l3_end as usize,
                        mss,
                        &mut seg,
                        |s| {
                            std::hint::black_box(s);
                            true
                        },
                    )
                    .unwrap();
                }
                bport.inbox.recycle(f.data);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(pipeline_benches, benches);
criterion_main!(pipeline_benches);

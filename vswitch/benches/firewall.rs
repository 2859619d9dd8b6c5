//! Cost of the firewall in the packet path: a 64-byte frame between two vNICs through the
//! whole pipeline with the dfw firewall as the filter, compared with no firewall
//! (`InsecureAllowAll`), for
//! * a packet of an established connection (conntrack hit in both vNICs' zones, no policy
//!   lookup: the common case),
//! * a new flow the receiver's policy denies (conntrack miss, egress + ingress decisions,
//!   flow-log record rate-limited, i.e. suppressed after the first few),
//! * a new flow both sides allow (`new_flow_allowed`): what the packet-rate harness's
//!   `newconn` case sends (testpmd flowgen, UDP 10.254.0.0:1000 -> 10.253.0.0+n:1001, every
//!   destination new) under its policy (A isolated, may open UDP 1001 to B by label or
//!   0.0.0.0/0; B isolated, admits UDP 1001 from A): conntrack miss, egress decision and
//!   insert in A's zone, ingress decision and insert in B's, per-rule counters, flow-log
//!   records rate-limited. The tables are sized as vdfwd sizes them (2M entries, 64k up
//!   front); fake time advances at 500k frames/s and a shortened UDP timer keeps them at a
//!   steady ~100k entries, with `end_batch` (the expiry sweep) every 32 frames as the
//!   vhost-user worker does.
//!
//! and one policy decision alone (`PolicySnapshot::decide`, ingress at the receiver).
//!
//! `firewall_established_rules/{10,100000}`: the harness's `rules` figure in-process. vNIC A
//! has that many egress rules (the allowing one, UDP 1001 to B, plus fillers naming TCP ports
//! on /32s in 172.16/12 that nothing matches, as `integration/bench/bench.py` writes them);
//! one UDP flow A -> B is established and each iteration sends one frame each way (the
//! testpmd loop). Packets of a tracked connection never look at the policy, so the two
//! should cost the same. `rule_counters/100000` is what the control plane's counter
//! snapshot (`counters.json`, once a second) costs the firewall at that size.
//!
//! `firewall_filter/*`: the firewall alone (`PacketFilter::filter` on an already parsed
//! frame, as the pipeline calls it), so that its own cost is not diluted by parsing, the spoof
//! guard and switching:
//! * `established_pingpong`: one established UDP flow between two vNICs, one frame each way
//!   per iteration (two zone crossings per frame);
//! * `new_connection`: every frame a new UDP connection both sides allow (classify, egress
//!   decision + insert in A's zone, ingress decision + insert in B's, rule counters, flow-log
//!   record rate-limited), with tables sized and expired as in `new_flow_allowed`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dfw::compile::{Engine, EngineConfig, FlowQuery};
use dfw::conntrack::CtConfig;
use dfw::model::Direction;
use dfw::model::{Endpoint, EndpointKind};
use etherparse::PacketBuilder;

use vswitch::filter::{FilterContext, FilterVerdict, InsecureAllowAll, PacketFilter};
use vswitch::firewall::Firewall;
use vswitch::flowlog::FlowLog;
use vswitch::mac::MacAddr;
use vswitch::net_hdr::VirtioNetHdr;
use vswitch::packet::{Net as L3, ParsedPacket};
use vswitch::pipeline::{Disposition, Pipeline, Scratch};
use vswitch::port::{PortId, PortRef, VnicIdentity, VnicPort};

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{protocol: TCP, port: 80}]
"#;

/// The harness's `newconn` policy (integration/bench/bench.py `vdfwd_policies`, one rule).
const NEWCONN_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-a-egress-0, namespace: shop}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress, Egress]
  ingress: []
  egress:
    - to:
        - podSelector: {matchLabels: {app: d}}
        - ipBlock: {cidr: 0.0.0.0/0}
      ports: [{protocol: UDP, port: 1001}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-b, namespace: shop}
spec:
  podSelector: {matchLabels: {app: d}}
  policyTypes: [Ingress, Egress]
  egress: []
  ingress:
    - from: [{podSelector: {matchLabels: {app: c}}}]
      ports: [{protocol: UDP, port: 1001}]
"#;

/// Addresses of the `newconn` pair (flowgen's).
const IP_C: [u8; 4] = [10, 254, 0, 0];
const IP_D: [u8; 4] = [10, 253, 0, 0];

fn endpoint(n: u8, app: &str) -> Endpoint {
    endpoint_at(app, [10, 0, 0, n])
}

fn endpoint_at(app: &str, ip: [u8; 4]) -> Endpoint {
    Endpoint {
        name: app.into(),
        namespace: "shop".into(),
        kind: EndpointKind::Vm,
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![IpAddr::from(ip)],
        mac: None,
        named_ports: Default::default(),
    }
}

fn tcp(from: u8, to: u8, sport: u16, dport: u16, syn: bool, ack: Option<u32>) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, from], [0x52, 0x54, 0, 0, 0, to])
        .ipv4([10, 0, 0, from], [10, 0, 0, to], 64)
        .tcp(sport, dport, if syn { 1 } else { 2 }, 64000);
    let b = if syn { b.syn() } else { b };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    b.write(&mut f, &[7u8; 10]).unwrap();
    f
}

struct Net {
    p: Pipeline,
    a: Arc<VnicPort>,
    b: Arc<VnicPort>,
}

/// vNICs a (MAC ...:01, 10.0.0.1) and b (...:02, 10.0.0.2).
fn net(filter: Arc<dyn PacketFilter>, fw: Option<&Firewall>, engine: &mut Engine) -> Net {
    net_of(
        filter,
        fw,
        engine,
        [(1, "a", [10, 0, 0, 1]), (2, "b", [10, 0, 0, 2])],
    )
}

/// Two vNICs, each (last MAC byte, app label, address).
fn net_of(
    filter: Arc<dyn PacketFilter>,
    fw: Option<&Firewall>,
    engine: &mut Engine,
    pair: [(u8, &str, [u8; 4]); 2],
) -> Net {
    let p = Pipeline::new(filter);
    let port = |(n, app, ip): (u8, &str, [u8; 4])| {
        let id = p.alloc_port_id();
        let e = endpoint_at(app, ip);
        if let Some(fw) = fw {
            fw.bind_vnic(id, app, e.key()).unwrap();
        }
        let port = Arc::new(
            VnicPort::new(
                id,
                VnicIdentity {
                    name: app.into(),
                    ..Default::default()
                },
                MacAddr([0x52, 0x54, 0, 0, 0, n]),
                &e.ips,
            )
            .unwrap(),
        );
        p.add_vnic(port.clone()).unwrap();
        port
    };
    let a = port(pair[0]);
    let b = port(pair[1]);
    if let Some(fw) = fw {
        fw.install(engine.snapshot());
    }
    Net { p, a, b }
}

/// The receiving guest is not connected, so delivery stops at the RX-ready check: what is
/// measured is parse, spoof guard, switch and filter, not the inbox copy.
fn benches(c: &mut Criterion) {
    let mut engine = Engine::new(EngineConfig::default());
    engine.upsert_endpoint(endpoint(1, "a")).unwrap();
    engine.upsert_endpoint(endpoint(2, "b")).unwrap();
    engine
        .apply(dfw::crd::parse_documents(POLICY, "p.yaml").unwrap().objects)
        .unwrap();
    let log = FlowLog::start(None, 0).unwrap();
    let fw = Arc::new(Firewall::new(CtConfig::default(), Some(log.sink())).unwrap());
    let with_fw = net(fw.clone(), Some(&fw), &mut engine);
    let without = net(Arc::new(InsecureAllowAll), None, &mut engine);
    let mut s = Scratch::new();
    let h = VirtioNetHdr::default();

    // Establish a -> b:80 in the firewall.
    let syn = tcp(1, 2, 40000, 80, true, None);
    let syn_ack = tcp(2, 1, 80, 40000, true, Some(2));
    for (from, f) in [(&with_fw.a, &syn), (&with_fw.b, &syn_ack)] {
        let d = with_fw.p.from_vnic(from, &h, f, 1, &mut s);
        assert_eq!(
            d,
            Disposition::Dropped(vswitch::counters::DropReason::PortDown)
        );
    }
    let data = tcp(1, 2, 40000, 80, false, Some(2));
    let denied = tcp(1, 2, 40001, 22, true, None);
    // Sanity: the established segment is forwarded (stopped only by the unconnected guest),
    // the new one is denied.
    for _ in 0..3 {
        assert_eq!(
            with_fw.p.from_vnic(&with_fw.a, &h, &data, 2, &mut s),
            Disposition::Dropped(vswitch::counters::DropReason::PortDown)
        );
        assert_eq!(
            with_fw.p.from_vnic(&with_fw.a, &h, &denied, 2, &mut s),
            Disposition::Dropped(vswitch::counters::DropReason::PolicyDenied)
        );
    }

    let mut g = c.benchmark_group("firewall_vm_to_vm_64B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("no_firewall", |b| {
        b.iter(|| without.p.from_vnic(&without.a, &h, &data, 2, &mut s))
    });
    g.bench_function("established", |b| {
        b.iter(|| with_fw.p.from_vnic(&with_fw.a, &h, &data, 2, &mut s))
    });
    // The same TCP segment in bursts of 32 through one `Burst`, as the TX path presents them:
    // the firewall's state is loaded once per burst; TCP segments are each tracked (no runs).
    g.throughput(Throughput::Elements(32));
    g.bench_function("established_tcp_burst32", |b| {
        b.iter(|| {
            let burst = with_fw.p.burst();
            let mut forwarded = 0u32;
            for slot in 0..32 {
                let d = burst.from_vnic_deferred(&with_fw.a, &h, &data, slot, 2, &mut s);
                forwarded +=
                    u32::from(d == Disposition::Dropped(vswitch::counters::DropReason::PortDown));
            }
            forwarded
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow_denied", |b| {
        b.iter(|| with_fw.p.from_vnic(&with_fw.a, &h, &denied, 2, &mut s))
    });
    g.finish();
    new_flow_allowed(c);

    let snap = engine.snapshot();
    let hb = snap.endpoint(&endpoint(2, "b").key()).unwrap().handle();
    let q = FlowQuery::tcp(
        IpAddr::from([10, 0, 0, 1]),
        IpAddr::from([10, 0, 0, 2]),
        40000,
        80,
    );
    c.bench_function("decide_ingress", |b| {
        b.iter(|| snap.decide(hb, Direction::Ingress, std::hint::black_box(&q)))
    });
    assert!(with_fw.b.inbox.is_empty() && without.b.inbox.is_empty());
    drop(log);
}

/// Offset of the IPv4 destination address in an untagged Ethernet frame.
const IPV4_DST: usize = 14 + 16;

/// The engine (endpoints c and d under the `newconn` policy) and conntrack settings of the
/// new-connection benches. Tables sized as vdfwd sized them for the harness (2M entries);
/// UDP's first-packet timer is shortened from 60 s to 200 ms so that expiry keeps ~100k
/// connections live in each zone instead of filling the table.
fn newconn_setup() -> (Engine, CtConfig) {
    let mut engine = Engine::new(EngineConfig::default());
    engine.upsert_endpoint(endpoint_at("c", IP_C)).unwrap();
    engine.upsert_endpoint(endpoint_at("d", IP_D)).unwrap();
    engine
        .apply(
            dfw::crd::parse_documents(NEWCONN_POLICY, "newconn.yaml")
                .unwrap()
                .objects,
        )
        .unwrap();
    let max = 2_097_152;
    let ct = CtConfig {
        max_entries: max,
        max_entries_per_zone: max,
        initial_capacity: max.min(1 << 16),
        timeouts: dfw::conntrack::Timeouts {
            udp_first: Duration::from_millis(200),
            ..Default::default()
        },
        ..CtConfig::default()
    };
    (engine, ct)
}

/// The harness's `newconn` case (see the module doc): every frame a new UDP connection that
/// both vNICs' policies allow.
fn new_flow_allowed(c: &mut Criterion) {
    let (mut engine, ct) = newconn_setup();
    // Fake time runs at the target rate, 500k new connections/s (2 us per frame), so that
    // the flow-log rate limiter (records per second) lets through as few records as it would
    // there.
    const STEP: u64 = 2_000;
    let log = FlowLog::start(None, 0).unwrap();
    let fw = Arc::new(Firewall::new(ct, Some(log.sink())).unwrap());
    let n = net_of(
        fw.clone(),
        Some(&fw),
        &mut engine,
        [(3, "c", IP_C), (4, "d", IP_D)],
    );
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 3], [0x52, 0x54, 0, 0, 0, 4])
        .ipv4(IP_C, IP_D, 64)
        .udp(1000, 1001)
        .write(&mut frame, &[0u8; 18])
        .unwrap();
    assert_eq!(frame.len(), 60);
    let mut s = Scratch::new();
    let h = VirtioNetHdr::default();
    const BATCH: u64 = 32;
    let mut k: u64 = 0;
    let mut now: u64 = 1;
    let dst0 = u32::from_be_bytes(IP_D);
    let mut send = |k: &mut u64, now: &mut u64| {
        *k += 1;
        *now += STEP;
        let dst = dst0.wrapping_add(*k as u32);
        frame[IPV4_DST..IPV4_DST + 4].copy_from_slice(&dst.to_be_bytes());
        let d = n.p.from_vnic(&n.a, &h, &frame, *now, &mut s);
        if k.is_multiple_of(BATCH) {
            // A's worker ends its batch; B's (whose guest sends too in the harness) as often.
            n.p.end_batch(PortRef::Vnic(n.a.id), *now);
            n.p.end_batch(PortRef::Vnic(n.b.id), *now);
        }
        d
    };
    // Past the first timeout, so that the sweep is removing as many as are added.
    for _ in 0..150_000 {
        assert_eq!(
            send(&mut k, &mut now),
            Disposition::Dropped(vswitch::counters::DropReason::PortDown)
        );
    }
    let mut g = c.benchmark_group("firewall_vm_to_vm_64B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow_allowed", |b| b.iter(|| send(&mut k, &mut now)));
    g.finish();
    let st = fw.status();
    println!(
        "new_flow_allowed: {} frames; connections live: {:?}; allowed egress/ingress {}/{}",
        k,
        st.iter().map(|v| v.connections).collect::<Vec<_>>(),
        st[0].counters.allowed_egress,
        st[1].counters.allowed_ingress,
    );
    assert_eq!(
        st[0].counters.allowed_egress, k,
        "every frame a new connection"
    );
    drop(log);
}

/// The harness's `rules` policy (see `vdfwd_policies` in integration/bench/bench.py): A's
/// egress rules, `rules` in all, the allowing one first; B admits UDP 1001 from A.
fn rules_policy(rules: usize) -> Vec<dfw::model::Object> {
    const PER_FILE: usize = 1000;
    let fillers: Vec<usize> = (0..rules - 1).collect();
    let mut objects = Vec::new();
    let chunks: Vec<&[usize]> = if fillers.is_empty() {
        vec![&[]]
    } else {
        fillers.chunks(PER_FILE).collect()
    };
    for (c, chunk) in chunks.iter().enumerate() {
        let mut y = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-egress-{c}, namespace: shop}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress:\n"
        );
        if c == 0 {
            y.push_str(
                "    - to: [{podSelector: {matchLabels: {app: b}}}, {ipBlock: {cidr: 0.0.0.0/0}}]\n\
                 \x20     ports: [{protocol: UDP, port: 1001}]\n",
            );
        }
        for &i in *chunk {
            let ip = format!("172.{}.{}.{}", 16 + (i >> 16) % 16, (i >> 8) & 255, i & 255);
            let port = 1024 + i % 60000;
            y.push_str(&format!(
                "    - to: [{{ipBlock: {{cidr: {ip}/32}}}}]\n      ports: [{{protocol: TCP, port: {port}}}]\n"
            ));
        }
        objects.extend(dfw::crd::parse_documents(&y, "a.yaml").unwrap().objects);
    }
    let b = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: shop}\n\
             spec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress, Egress]\n  egress: []\n\
             \x20 ingress:\n    - from: [{podSelector: {matchLabels: {app: a}}}]\n      ports: [{protocol: UDP, port: 1001}]\n";
    objects.extend(dfw::crd::parse_documents(b, "b.yaml").unwrap().objects);
    objects
}

/// Established traffic at 10 and 100k rules (see the module doc).
fn established_rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("firewall_established_rules");
    g.throughput(Throughput::Elements(2));
    let mut counters = None;
    for rules in [10usize, 100_000] {
        let mut engine = Engine::new(EngineConfig::default());
        engine.upsert_endpoint(endpoint(1, "a")).unwrap();
        engine.upsert_endpoint(endpoint(2, "b")).unwrap();
        engine.apply(rules_policy(rules)).unwrap();
        let log = FlowLog::start(None, 0).unwrap();
        let fw = Arc::new(Firewall::new(CtConfig::default(), Some(log.sink())).unwrap());
        let n = net(fw.clone(), Some(&fw), &mut engine);
        let udp = |from: u8, to: u8, sport: u16, dport: u16| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, from], [0x52, 0x54, 0, 0, 0, to])
                .ipv4([10, 0, 0, from], [10, 0, 0, to], 64)
                .udp(sport, dport)
                .write(&mut f, &[0u8; 18])
                .unwrap();
            f
        };
        let (ab, ba) = (udp(1, 2, 1000, 1001), udp(2, 1, 1001, 1000));
        let mut s = Scratch::new();
        let h = VirtioNetHdr::default();
        let port_down = Disposition::Dropped(vswitch::counters::DropReason::PortDown);
        for _ in 0..3 {
            assert_eq!(n.p.from_vnic(&n.a, &h, &ab, 1, &mut s), port_down);
            assert_eq!(n.p.from_vnic(&n.b, &h, &ba, 1, &mut s), port_down);
        }
        let st = fw.status();
        assert_eq!(
            (
                st[0].counters.allowed_egress,
                st[1].counters.allowed_ingress
            ),
            (1, 1),
            "one connection, then established"
        );
        g.bench_with_input(BenchmarkId::from_parameter(rules), &rules, |bch, _| {
            bch.iter(|| {
                (
                    n.p.from_vnic(&n.a, &h, &ab, 2, &mut s),
                    n.p.from_vnic(&n.b, &h, &ba, 2, &mut s),
                )
            })
        });
        let total: u64 = fw.rule_counters().values().map(|c| c.packets).sum();
        assert!(total > 6, "established packets are counted on their rules");
        if rules == 100_000 {
            counters = Some((fw, n, log));
        }
    }
    g.finish();
    if let Some((fw, _n, _log)) = counters {
        let mut g = c.benchmark_group("rule_counters");
        g.sample_size(10);
        g.bench_function("100000", |b| b.iter(|| fw.rule_counters().len()));
        g.finish();
    }
}

/// The firewall alone (see the module doc): vNICs c (port 1) and d (port 2) under the
/// `newconn` policy.
fn filter_direct(c: &mut Criterion) {
    let (mut engine, ct) = newconn_setup();
    let log = FlowLog::start(None, 0).unwrap();
    let fw = Firewall::new(ct, Some(log.sink())).unwrap();
    let (pc, pd) = (PortId(1), PortId(2));
    fw.bind_vnic(pc, "c", endpoint_at("c", IP_C).key()).unwrap();
    fw.bind_vnic(pd, "d", endpoint_at("d", IP_D).key()).unwrap();
    fw.install(engine.snapshot());
    let udp = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 3], [0x52, 0x54, 0, 0, 0, 4])
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut f, &[0u8; 18])
            .unwrap();
        ParsedPacket::parse(&f).unwrap()
    };
    let cd = FilterContext::new(PortRef::Vnic(pc), PortRef::Vnic(pd), 1);
    let dc = FilterContext::new(PortRef::Vnic(pd), PortRef::Vnic(pc), 1);
    let mut g = c.benchmark_group("firewall_filter");

    // Established: a flow on its own port pair, apart from the new connections below.
    let (fwd, rev) = (udp(IP_C, IP_D, 2000, 1001), udp(IP_D, IP_C, 1001, 2000));
    for _ in 0..3 {
        assert_eq!(fw.filter(&cd, &fwd), FilterVerdict::Forward);
        assert_eq!(fw.filter(&dc, &rev), FilterVerdict::Forward);
    }
    g.throughput(Throughput::Elements(2));
    g.bench_function("established_pingpong", |b| {
        b.iter(|| {
            (
                fw.filter(&cd, std::hint::black_box(&fwd)),
                fw.filter(&dc, std::hint::black_box(&rev)),
            )
        })
    });

    // The same in bursts of 32 frames, as the data path presents them: the firewall's state
    // is loaded once per burst (`PacketFilter::burst_state`), not once per frame.
    const PINGPONGS_PER_BURST: u64 = 16;
    g.throughput(Throughput::Elements(2 * PINGPONGS_PER_BURST));
    g.bench_function("established_pingpong_burst32", |b| {
        b.iter(|| {
            let burst = fw.burst_state();
            let (cd, dc) = (
                FilterContext {
                    burst: &burst,
                    ..cd
                },
                FilterContext {
                    burst: &burst,
                    ..dc
                },
            );
            let mut forwarded = 0u32;
            for _ in 0..PINGPONGS_PER_BURST {
                forwarded +=
                    u32::from(fw.filter(&cd, std::hint::black_box(&fwd)) == FilterVerdict::Forward);
                forwarded +=
                    u32::from(fw.filter(&dc, std::hint::black_box(&rev)) == FilterVerdict::Forward);
            }
            forwarded
        })
    });

    // New connections: the destination address counts up; time at 500k frames/s.
    const STEP: u64 = 2_000;
    const BATCH: u64 = 32;
    let mut pkt = udp(IP_C, IP_D, 1000, 1001);
    let dst0 = u32::from_be_bytes(IP_D);
    let (mut k, mut now) = (0u64, 1u64);
    let mut send = |k: &mut u64, now: &mut u64| {
        *k += 1;
        *now += STEP;
        if let L3::Ipv4(ip) = &mut pkt.net {
            ip.dst = IpAddr::from(dst0.wrapping_add(*k as u32).to_be_bytes());
        }
        let v = fw.filter(&FilterContext { now: *now, ..cd }, &pkt);
        if k.is_multiple_of(BATCH) {
            fw.end_batch(PortRef::Vnic(pc), *now);
            fw.end_batch(PortRef::Vnic(pd), *now);
        }
        v
    };
    for _ in 0..150_000 {
        assert_eq!(send(&mut k, &mut now), FilterVerdict::Forward);
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("new_connection", |b| b.iter(|| send(&mut k, &mut now)));
    g.finish();
    let st = fw.status();
    assert_eq!(
        st[0].counters.allowed_egress,
        k + 1,
        "every frame a new connection"
    );
    assert_eq!(st[1].counters.allowed_ingress, k + 1);
    drop(log);
}

criterion_group! {
    name = firewall_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = filter_direct, benches, established_rules
}
criterion_main!(firewall_benches);

//! Cost of the firewall in the packet path: a 64-byte frame between two vNICs through the
//! whole pipeline with the dfw firewall as the filter, compared with no firewall
//! (`InsecureAllowAll`), for
//! * a packet of an established connection (conntrack hit in both vNICs' zones, no policy
//!   lookup: the common case),
//! * a new flow the receiver's policy denies (conntrack miss, egress + ingress decisions,
//!   flow-log record rate-limited, i.e. suppressed after the first few),
//!
//! and the policy decision alone (`decide_flow`, egress + ingress).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dfw::compile::{Engine, EngineConfig, FlowQuery};
use dfw::conntrack::CtConfig;
use dfw::model::{Endpoint, EndpointKind};
use etherparse::PacketBuilder;

use vswitch::filter::{InsecureAllowAll, PacketFilter};
use vswitch::firewall::glue::decide_flow;
use vswitch::firewall::Firewall;
use vswitch::flowlog::FlowLog;
use vswitch::mac::MacAddr;
use vswitch::net_hdr::VirtioNetHdr;
use vswitch::pipeline::{Disposition, Pipeline, Scratch};
use vswitch::port::{VnicIdentity, VnicPort};

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

fn endpoint(n: u8, app: &str) -> Endpoint {
    Endpoint {
        name: app.into(),
        namespace: "shop".into(),
        kind: EndpointKind::Vm,
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![IpAddr::from([10, 0, 0, n])],
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

fn net(filter: Arc<dyn PacketFilter>, fw: Option<&Firewall>, engine: &mut Engine) -> Net {
    let p = Pipeline::new(filter);
    let port = |n: u8, app: &str| {
        let id = p.alloc_port_id();
        let e = endpoint(n, app);
        if let Some(fw) = fw {
            fw.bind_vnic(id, app, e.key(), e.ips.clone()).unwrap();
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
    let a = port(1, "a");
    let b = port(2, "b");
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
    g.bench_function("new_flow_denied", |b| {
        b.iter(|| with_fw.p.from_vnic(&with_fw.a, &h, &denied, 2, &mut s))
    });
    g.finish();

    let snap = engine.snapshot();
    let ha = snap.endpoint(&endpoint(1, "a").key()).unwrap().handle();
    let hb = snap.endpoint(&endpoint(2, "b").key()).unwrap().handle();
    let q = FlowQuery::tcp(
        IpAddr::from([10, 0, 0, 1]),
        IpAddr::from([10, 0, 0, 2]),
        40000,
        80,
    );
    c.bench_function("decide_flow_egress_ingress", |b| {
        b.iter(|| decide_flow(&snap, Some(ha), Some(hb), std::hint::black_box(&q)))
    });
    assert!(with_fw.b.inbox.is_empty() && without.b.inbox.is_empty());
    drop(log);
}

criterion_group! {
    name = firewall_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(firewall_benches);

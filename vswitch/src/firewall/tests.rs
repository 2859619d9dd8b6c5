//! The firewall behind a real [`Pipeline`] (ports, switch, reject builder), fed frames
//! directly. The vhost-user path is covered by `tests/firewall.rs`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfw::compile::{Engine, EngineConfig};
use dfw::model::{Endpoint, EndpointKind};
use etherparse::PacketBuilder;

use super::*;
use crate::counters::PortCounters;
use crate::flowlog::{FlowCatalog, FlowLog, FlowRecord};
use crate::mac::MacAddr;
use crate::net_hdr::VirtioNetHdr;
use crate::pipeline::{Disposition, Pipeline, Scratch};
use crate::port::{UplinkPort, VnicIdentity, VnicPort};
use crate::switch::Egress;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{protocol: TCP, port: 5432}, {protocol: TCP, port: 6432}]
    - from: [{ipBlock: {cidr: 192.0.2.0/24}}]
---
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: no-telnet}
spec:
  priority: 1
  tier: securityops
  appliedTo: [{podSelector: {}}]
  ingress:
    - action: Reject
      name: reject-telnet
      ports: [{protocol: TCP, port: 23}]
"#;

/// Records what the uplink was asked to send (the real TAP is covered in
/// `tests/uplink_tap.rs`; here only the firewall's decisions matter).
#[derive(Default)]
struct RecordingUplink {
    counters: PortCounters,
    sent: Mutex<Vec<Vec<u8>>>,
}

impl UplinkPort for RecordingUplink {
    fn transmit(&self, _hdr: &VirtioNetHdr, frame: &[u8]) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn counters(&self) -> &PortCounters {
        &self.counters
    }
    fn name(&self) -> &str {
        "rec"
    }
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, n])
}

fn endpoint(name: &str, app: &str, n: u8) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: "shop".into(),
        kind: EndpointKind::Vm,
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![ip(n)],
        mac: Some(mac(n).octets()),
        named_ports: Default::default(),
    }
}

struct Net {
    p: Pipeline,
    fw: Arc<Firewall>,
    engine: Engine,
    log: FlowLog,
    web: Arc<VnicPort>,
    db: Arc<VnicPort>,
    up: Arc<RecordingUplink>,
    s: Scratch,
    now: u64,
}

impl Net {
    /// web (10.0.0.1) and db (10.0.0.2) bound; the policy installed unless `install` is false.
    fn new(install: bool) -> Net {
        let p = Pipeline::new(Arc::new(crate::filter::FailClosed));
        let log = FlowLog::start(None, 0).unwrap();
        let fw = Arc::new(Firewall::new(CtConfig::default(), Some(log.sink())).unwrap());
        let up = Arc::new(RecordingUplink::default());
        p.set_uplink(Some(up.clone()));
        let mut engine = Engine::new(EngineConfig::default());
        let mut port = |name: &str, app: &str, n: u8| {
            let id = p.alloc_port_id();
            let e = endpoint(name, app, n);
            engine.upsert_endpoint(e.clone()).unwrap();
            fw.bind_vnic(id, name, e.key()).unwrap();
            let port = Arc::new(
                VnicPort::new(
                    id,
                    VnicIdentity {
                        name: name.into(),
                        ..Default::default()
                    },
                    mac(n),
                    &e.ips,
                )
                .unwrap(),
            );
            port.set_rx_ready(true);
            p.add_vnic(port.clone()).unwrap();
            port
        };
        let web = port("web", "web", 1);
        let db = port("db", "db", 2);
        engine
            .apply(dfw::crd::parse_documents(POLICY, "p.yaml").unwrap().objects)
            .unwrap();
        if install {
            fw.install(engine.snapshot());
        }
        // Names for the flow records (the daemon publishes these on every change).
        log.set_catalog(FlowCatalog {
            snapshot: Some(engine.snapshot()),
            ..FlowCatalog::default()
        });
        p.set_filter(fw.clone());
        Net {
            p,
            fw,
            engine,
            log,
            web,
            db,
            up,
            s: Scratch::new(),
            now: 1_000_000,
        }
    }

    /// Replaces the policy with `yaml` and publishes it (re-checking open connections).
    fn apply_policy(&mut self, yaml: &str) -> RecheckReport {
        self.engine
            .apply(dfw::crd::parse_documents(yaml, "p.yaml").unwrap().objects)
            .unwrap();
        self.fw.apply(self.engine.snapshot())
    }

    fn send(&mut self, from: &Arc<VnicPort>, frame: &[u8]) -> Disposition {
        self.now += 1000;
        self.p
            .from_vnic(from, &VirtioNetHdr::default(), frame, self.now, &mut self.s)
    }

    fn recv_uplink(&mut self, frame: &[u8]) -> Disposition {
        self.now += 1000;
        self.p
            .from_uplink(&VirtioNetHdr::default(), frame, self.now, &mut self.s)
    }

    fn records(&self) -> Vec<FlowRecord> {
        assert!(self.log.sync(Duration::from_secs(5)));
        self.log.recent(1000)
    }
}

/// The IPv4 address of vNIC `n`, or of the host behind the uplink for 99 (192.0.2.9).
fn addr(n: u8) -> [u8; 4] {
    if n == 99 {
        [192, 0, 2, 9]
    } else {
        [10, 0, 0, n]
    }
}

/// A TCP segment `from` -> `to` (vNIC numbers; 99 = a host behind the uplink, 192.0.2.9).
fn tcp(from: u8, to: u8, sport: u16, dport: u16, seq: u32, ack: Option<u32>, syn: bool) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(mac(from).0, mac(to).0)
        .ipv4(addr(from), addr(to), 64)
        .tcp(sport, dport, seq, 64000);
    let b = if syn { b.syn() } else { b };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    b.write(&mut f, &[]).unwrap();
    f
}

fn syn(from: u8, to: u8, sport: u16, dport: u16) -> Vec<u8> {
    tcp(from, to, sport, dport, 100, None, true)
}

fn syn_ack(from: u8, to: u8, sport: u16, dport: u16) -> Vec<u8> {
    tcp(from, to, sport, dport, 500, Some(101), true)
}

fn to(port: &VnicPort) -> Disposition {
    Disposition::Forwarded(Egress::Vnic(port.id))
}

#[test]
fn nothing_passes_before_a_policy_is_installed() {
    let mut n = Net::new(false);
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(
        n.send(&web, &syn(1, 2, 40000, 5432)),
        Disposition::Dropped(DropReason::PolicyNotRealized)
    );
    assert_eq!(web.counters.drops(DropReason::PolicyNotRealized), 1);
    // Not even ARP.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    assert_eq!(
        n.send(&web, &arp),
        Disposition::Dropped(DropReason::PolicyNotRealized)
    );
    assert!(db.inbox.is_empty());
    let recs = n.records();
    assert!(recs.iter().all(|r| r.decided_by == "not_realized"));
    // Installing realizes both vNICs; ARP then passes without a policy decision.
    n.fw.install(n.engine.snapshot());
    assert_eq!(n.send(&web, &arp), to(&db));
    let st = n.fw.status();
    assert_eq!(st[0].counters.control, 1);
    assert_eq!(st[0].counters.not_realized, 2);
}

#[test]
fn allowed_connection_replies_take_the_fast_path_and_others_are_denied() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(n.send(&web, &syn(1, 2, 40000, 5432)), to(&db));
    assert_eq!(n.send(&db, &syn_ack(2, 1, 5432, 40000)), to(&web));
    assert_eq!(
        n.send(&web, &tcp(1, 2, 40000, 5432, 101, Some(501), false)),
        to(&db)
    );
    // Both zones track it; the reply and the ACK were no new decisions.
    let t = dfw::flow::FiveTuple {
        src: ip(1),
        dst: ip(2),
        protocol: dfw::flow::IpProtocol::Tcp,
        src_port: 40000,
        dst_port: 5432,
    };
    let in_web = n.fw.connection(web.id, &t, n.now).unwrap();
    let in_db = n.fw.connection(db.id, &t, n.now).unwrap();
    assert_eq!(in_web.packets, [2, 1]);
    assert_eq!(in_db.packets, [2, 1]);
    let mark = |m: u64| dfw::stateful::Mark(m);
    assert_eq!(mark(in_web.mark).direction(), Some(Direction::Egress));
    assert_eq!(mark(in_db.mark).direction(), Some(Direction::Ingress));

    // SSH is not allowed: db's isolation drops it, counted on the sender's port.
    assert_eq!(
        n.send(&web, &syn(1, 2, 40001, 22)),
        Disposition::Dropped(DropReason::PolicyDenied)
    );
    assert_eq!(web.counters.drops(DropReason::PolicyDenied), 1);
    // A SYN-ACK nobody asked for is not a connection.
    assert_eq!(
        n.send(&db, &syn_ack(2, 1, 22, 40001)),
        Disposition::Dropped(DropReason::ConntrackInvalid)
    );

    let st = n.fw.status();
    let (w, d) = (&st[0], &st[1]);
    assert_eq!(
        (w.counters.allowed_egress, w.counters.denied_egress),
        (1, 0)
    );
    assert_eq!(
        (d.counters.allowed_ingress, d.counters.denied_ingress),
        (1, 1)
    );
    assert_eq!(w.conntrack.established, 2);

    let rules = n.fw.rule_counters();
    let allow = rules
        .iter()
        .find(|(_, c)| c.sessions == 1 && c.packets == 3)
        .map(|(id, _)| *id);
    assert!(
        allow.is_some(),
        "db's allow rule: 1 session, 3 packets: {rules:?}"
    );

    let recs = n.records();
    let new: Vec<_> = recs.iter().filter(|r| r.drop_reason.is_none()).collect();
    assert_eq!(new.len(), 2, "one record per side of the new connection");
    assert_eq!(
        (new[0].vnic.as_str(), new[0].direction),
        ("vnic#1", Direction::Egress)
    );
    assert_eq!(new[0].decided_by, "default_allow");
    assert_eq!(new[1].direction, Direction::Ingress);
    assert_eq!(new[1].decided_by, "rule");
    let denied = recs
        .iter()
        .find(|r| r.drop_reason == Some("policy_denied"))
        .unwrap();
    assert_eq!(denied.decided_by, "isolation");
    assert_eq!(denied.direction, Direction::Ingress);
    assert_eq!(denied.dst.as_ref().unwrap().port, 22);
    assert_eq!(
        denied.src.as_ref().unwrap().endpoint.as_deref(),
        Some("shop/web")
    );
}

#[test]
fn reject_rule_answers_the_sender_with_an_rst() {
    let mut n = Net::new(true);
    let web = n.web.clone();
    assert_eq!(
        n.send(&web, &syn(1, 2, 40000, 23)),
        Disposition::Rejected { replied: true }
    );
    let rst = web.inbox.pop().unwrap();
    let p = ParsedPacket::parse(&rst.data).unwrap();
    let t = p.tcp().unwrap();
    assert!(t.flags.rst() && t.flags.ack());
    assert_eq!((t.src_port, t.dst_port, t.ack), (23, 40000, 101));
    assert!(n.db.inbox.is_empty());
    assert_eq!(n.fw.status()[1].counters.rejected, 1);
    let rec = n.records().pop().unwrap();
    assert_eq!(rec.verdict, FlowVerdict::Rejected);
    assert_eq!(rec.rule_id.as_deref().map(str::len), Some(16));
}

#[test]
fn uplink_traffic_is_decided_by_the_local_side_only() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    // 192.0.2.9 -> db:80 is allowed by the ipBlock rule (db's ingress).
    assert_eq!(n.recv_uplink(&syn(99, 2, 5555, 80)), to(&db));
    assert_eq!(
        n.send(&db, &syn_ack(2, 99, 80, 5555)),
        Disposition::Forwarded(Egress::Uplink)
    );
    assert_eq!(n.up.sent.lock().unwrap().len(), 1);
    // web is not isolated: anything from the uplink reaches it (Kubernetes default).
    assert_eq!(n.recv_uplink(&syn(99, 1, 5555, 9999)), to(&web));
    // web -> outside: web's egress only.
    assert_eq!(
        n.send(&web, &syn(1, 99, 41000, 443)),
        Disposition::Forwarded(Egress::Uplink)
    );
    let st = n.fw.status();
    assert_eq!(st[1].counters.allowed_ingress, 1);
    assert_eq!(
        st[1].counters.allowed_egress, 0,
        "the reply made no decision"
    );
    assert_eq!(st[0].counters.allowed_egress, 1);
}

#[test]
fn recheck_cuts_what_the_new_policy_refuses_and_keeps_the_rest() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    for port in [5432, 6432] {
        assert_eq!(n.send(&web, &syn(1, 2, 40000, port)), to(&db));
        assert_eq!(n.send(&db, &syn_ack(2, 1, port, 40000)), to(&web));
    }
    // The new policy drops 5432 from the allow list.
    let changed = POLICY.replace("{protocol: TCP, port: 5432}, ", "");
    let report = n.apply_policy(&changed);
    assert_eq!(report.checked, 4);
    assert_eq!(
        report.cut, 1,
        "5432 in db's zone (db's ingress); web's egress still allows it"
    );
    assert_eq!(report.kept, 3);
    // 6432 goes on; 5432's next segment is a new flow again, db's ingress refuses it, and
    // since its connection was cut, web is told with an RST.
    assert_eq!(
        n.send(&web, &tcp(1, 2, 40000, 6432, 101, Some(501), false)),
        to(&db)
    );
    assert_eq!(
        n.send(&web, &tcp(1, 2, 40000, 5432, 101, Some(501), false)),
        Disposition::Rejected { replied: true }
    );
    // Another connection's stray segment is only dropped.
    assert_eq!(
        n.send(&web, &tcp(1, 2, 40001, 5432, 101, Some(501), false)),
        Disposition::Dropped(DropReason::PolicyDenied)
    );
    assert_eq!(n.fw.status()[1].conntrack.recheck_cut, 1);
}

#[test]
fn removing_an_endpoint_unrealizes_its_vnic_and_cuts_its_connections() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(n.send(&web, &syn(1, 2, 40000, 5432)), to(&db));
    n.engine
        .remove_endpoint(&endpoint("db", "db", 2).key())
        .unwrap();
    let report = n.fw.apply(n.engine.snapshot());
    assert_eq!(report.cut, 1, "db's entry (db is no longer realized)");
    assert_eq!(
        n.send(&web, &syn(1, 2, 40001, 5432)),
        Disposition::Dropped(DropReason::PolicyNotRealized)
    );
    assert!(!n.fw.status()[1].realized);
}

#[test]
fn spoofed_frames_are_logged_with_the_spoof_guard_as_decider() {
    let mut n = Net::new(true);
    let web = n.web.clone();
    let mut f = syn(1, 2, 40000, 5432);
    f[26..30].copy_from_slice(&[10, 0, 0, 7]);
    assert_eq!(
        n.send(&web, &f),
        Disposition::Dropped(DropReason::SpoofedSourceIp)
    );
    let rec = n.records().pop().unwrap();
    assert_eq!(rec.decided_by, "spoof_guard");
    assert_eq!(rec.drop_reason, Some("spoofed_source_ip"));
    assert_eq!(rec.src.unwrap().ip, IpAddr::from([10, 0, 0, 7]));
}

#[test]
fn drop_records_are_rate_limited_per_reason() {
    let mut n = Net::new(true);
    let web = n.web.clone();
    for i in 0..100u16 {
        n.send(&web, &syn(1, 2, 30000 + i, 22));
    }
    // All in the same second of the data path's clock.
    let recs = n.records();
    assert_eq!(recs.len(), DROP_RECORDS_PER_SECOND as usize);
    let st = n.fw.status();
    assert_eq!(st[1].counters.denied_ingress, 100);
    assert_eq!(
        st[1].counters.log_suppressed,
        100 - u64::from(DROP_RECORDS_PER_SECOND)
    );
    // A new second brings a new budget.
    n.now += 1_000_000_000;
    n.send(&web, &syn(1, 2, 31000, 22));
    assert_eq!(n.records().len(), DROP_RECORDS_PER_SECOND as usize + 1);
}

#[test]
fn expiry_runs_at_the_end_of_a_batch() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    let udp = |sport: u16| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(mac(1).0, mac(2).0)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(sport, 53)
            .write(&mut f, b"q")
            .unwrap();
        f
    };
    // db is isolated for ingress: UDP/53 from web passes web's egress (tracked in web's
    // zone) and is refused at db's ingress. web's entry then times out like any other.
    assert_eq!(
        n.send(&web, &udp(1000)),
        Disposition::Dropped(DropReason::PolicyDenied)
    );
    assert_eq!(n.fw.connections(web.id).len(), 1);
    n.p.end_batch(PortRef::Vnic(web.id), n.now + 61 * 1_000_000_000);
    assert!(n.fw.connections(web.id).is_empty());
    // Outside traffic to web (not isolated) is tracked, then expires after the UDP timeout.
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(99).0, mac(1).0)
        .ipv4([192, 0, 2, 9], [10, 0, 0, 1], 64)
        .udp(53, 1000)
        .write(&mut f, b"r")
        .unwrap();
    assert_eq!(n.recv_uplink(&f), to(&web));
    assert_eq!(n.fw.connections(web.id).len(), 1);
    let later = n.now + 61 * 1_000_000_000;
    n.p.end_batch(PortRef::Vnic(web.id), later);
    assert!(n.fw.connections(web.id).is_empty());
    assert!(db.inbox.is_empty());
}

#[test]
fn ping_is_tracked_and_its_reply_passes() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    let echo = |from: u8, to: u8, request: bool, id: u16| {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(mac(from).0, mac(to).0).ipv4(
            [10, 0, 0, from],
            [10, 0, 0, to],
            64,
        );
        let b = if request {
            b.icmpv4_echo_request(id, 1)
        } else {
            b.icmpv4_echo_reply(id, 1)
        };
        b.write(&mut f, b"ping").unwrap();
        f
    };
    // db -> web: neither db's egress nor web's ingress is isolated.
    assert_eq!(n.send(&db, &echo(2, 1, true, 7)), to(&web));
    assert_eq!(n.send(&web, &echo(1, 2, false, 7)), to(&db));
    // web -> db: db's ingress allows only TCP.
    assert_eq!(
        n.send(&web, &echo(1, 2, true, 8)),
        Disposition::Dropped(DropReason::PolicyDenied)
    );
    // An unsolicited reply is not a connection.
    assert_eq!(
        n.send(&db, &echo(2, 1, false, 9)),
        Disposition::Dropped(DropReason::ConntrackInvalid)
    );
    let recs = n.records();
    assert_eq!(recs[0].protocol.as_deref(), Some("ICMP"));
    assert_eq!(recs[0].icmp_type, Some(8));
}

#[test]
fn audit_mode_forwards_would_be_drops_and_logs_them() {
    let mut n = Net::new(true);
    n.engine.set_config(EngineConfig {
        audit: true,
        ..EngineConfig::default()
    });
    n.fw.apply(n.engine.snapshot());
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(n.send(&web, &syn(1, 2, 40001, 22)), to(&db));
    let st = n.fw.status();
    assert_eq!(st[1].counters.audited, 1);
    assert_eq!(st[1].counters.denied_ingress, 0);
    let rec = n
        .records()
        .into_iter()
        .find(|r| r.verdict == FlowVerdict::Audit)
        .unwrap();
    assert_eq!(rec.decided_by, "isolation");
    assert_eq!(rec.direction, Direction::Ingress);
    assert_eq!(rec.drop_reason, None);
}

/// Established packets are counted on their rule through a per-zone cache of the last rule;
/// a newly published state (same rules) keeps the counts going on the same counters.
#[test]
fn established_packets_keep_counting_on_their_rule_across_a_republish() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(n.send(&web, &syn(1, 2, 40000, 5432)), to(&db));
    assert_eq!(n.send(&db, &syn_ack(2, 1, 5432, 40000)), to(&web));
    let packets = |n: &Net| -> u64 {
        n.fw.rule_counters()
            .values()
            .filter(|c| c.sessions == 1)
            .map(|c| c.packets)
            .sum()
    };
    let before = packets(&n);
    for seq in 0..3 {
        let ack = tcp(1, 2, 40000, 5432, 101 + seq, Some(501), false);
        assert_eq!(n.send(&web, &ack), to(&db));
    }
    assert_eq!(packets(&n), before + 3, "three established packets counted");
    n.fw.install(n.engine.snapshot());
    let ack = tcp(1, 2, 40000, 5432, 104, Some(501), false);
    assert_eq!(n.send(&web, &ack), to(&db));
    assert_eq!(packets(&n), before + 4, "counted after the republish too");
}

/// The rule counters count per zone and are flushed for readers: no batch end is needed for
/// the receiver's zone, and a re-check (which renumbers the marks) loses nothing.
#[test]
fn rule_counts_are_exact_for_readers_and_survive_a_recheck() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(n.send(&web, &syn(1, 2, 40000, 5432)), to(&db));
    assert_eq!(n.send(&db, &syn_ack(2, 1, 5432, 40000)), to(&web));
    let allow = |n: &Net| -> RuleCounters {
        let rules = n.fw.rule_counters();
        let mut with_sessions = rules.values().filter(|c| c.sessions != 0);
        let c = *with_sessions.next().expect("db's allow rule");
        assert!(with_sessions.next().is_none(), "{rules:?}");
        c
    };
    let first = allow(&n);
    assert_eq!((first.sessions, first.packets), (1, 2));
    for seq in 0..3 {
        let ack = tcp(1, 2, 40000, 5432, 101 + seq, Some(501), false);
        assert_eq!(n.send(&web, &ack), to(&db));
    }
    let c = allow(&n);
    assert_eq!((c.sessions, c.packets), (1, 5));
    assert_eq!(
        c.bytes - first.bytes,
        3 * 40,
        "IPv4 + TCP headers, no payload"
    );
    // A re-check under the same policy keeps the connection (and re-marks it).
    let report = n.fw.apply(n.engine.snapshot());
    assert_eq!((report.cut, report.kept), (0, 2));
    assert_eq!(allow(&n).packets, 5);
    let ack = tcp(1, 2, 40000, 5432, 104, Some(501), false);
    assert_eq!(n.send(&web, &ack), to(&db));
    assert_eq!(
        n.send(&db, &tcp(2, 1, 5432, 40000, 501, Some(101), false)),
        to(&web)
    );
    assert_eq!(
        allow(&n).packets,
        7,
        "counted on the same rule after the re-check"
    );
}

/// A packet decides with the state it loaded before the zone lock, unless the zone was
/// re-checked under a newer one meanwhile: then that connection would escape the re-check.
#[test]
fn a_crossing_with_a_state_older_than_the_zones_recheck_decides_under_the_new_one() {
    let mut n = Net::new(true);
    let old = n.fw.state.load_full();
    let changed = POLICY.replace("{protocol: TCP, port: 5432}, ", "");
    n.apply_policy(&changed);
    let frame = syn(1, 2, 40000, 5432);
    let Class::Ip { meta, .. } = classify(&ParsedPacket::parse(&frame).unwrap(), false) else {
        panic!("not IP")
    };
    let (web, db) = (old.vnics.get(&n.web.id), old.vnics.get(&n.db.id));
    // Under the old state, db's ingress would admit it.
    let snap = old.snapshot.as_deref().unwrap();
    let q = dfw::compile::FlowQuery::from_tuple(&meta.tuple);
    let d = snap.decide(db.unwrap().handle.unwrap(), Direction::Ingress, &q);
    assert_eq!(d.unwrap().effective(), FlowAction::Allow);
    assert_eq!(
        n.fw.ip_packet(
            &old,
            &FilterContext::new(PortRef::Vnic(n.web.id), PortRef::Vnic(n.db.id), n.now),
            None,
            web,
            db,
            &meta
        ),
        FilterVerdict::Drop(PolicyDrop::Denied)
    );
    assert!(n.fw.connections(n.db.id).is_empty());
}

/// A frame of a burst is decided with the state loaded for the burst, and the re-check rule
/// above still holds for it: a policy applied after the burst loaded its state is not
/// escaped by the burst's remaining frames.
#[test]
fn a_burst_state_older_than_a_recheck_still_decides_under_the_new_policy() {
    let mut n = Net::new(true);
    let burst = n.fw.burst_state();
    let changed = POLICY.replace("{protocol: TCP, port: 5432}, ", "");
    n.apply_policy(&changed);
    let ctx = FilterContext {
        burst: &burst,
        ..FilterContext::new(PortRef::Vnic(n.web.id), PortRef::Vnic(n.db.id), n.now)
    };
    let frame = |dport| ParsedPacket::parse(&syn(1, 2, 40000, dport)).unwrap();
    assert_eq!(
        n.fw.filter(&ctx, &frame(5432)),
        FilterVerdict::Drop(PolicyDrop::Denied)
    );
    assert_eq!(n.fw.filter(&ctx, &frame(6432)), FilterVerdict::Forward);
    assert_eq!(n.fw.connections(n.db.id).len(), 1);
}

/// The state another firewall loaded is not taken for this one's (it would know none of its
/// vNICs here, and fail everything closed).
#[test]
fn a_burst_state_from_another_firewall_is_not_used() {
    let n = Net::new(true);
    let other = Firewall::new(CtConfig::default(), None).unwrap();
    let foreign = other.burst_state();
    let ctx = FilterContext {
        burst: &foreign,
        ..FilterContext::new(PortRef::Vnic(n.web.id), PortRef::Vnic(n.db.id), n.now)
    };
    let frame = syn(1, 2, 40000, 5432);
    let pkt = ParsedPacket::parse(&frame).unwrap();
    assert_eq!(n.fw.filter(&ctx, &pkt), FilterVerdict::Forward);
    assert_eq!(other.unknown_port_drops(), 0);
    assert_eq!(n.fw.unknown_port_drops(), 0);
}

/// A UDP datagram `from` -> `to` (vNIC numbers; 99 = the host behind the uplink), parsed.
fn udp(from: u8, to: u8, sport: u16, dport: u16, payload: usize) -> ParsedPacket {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(from).0, mac(to).0)
        .ipv4(addr(from), addr(to), 64)
        .udp(sport, dport)
        .write(&mut f, &vec![0u8; payload])
        .unwrap();
    ParsedPacket::parse(&f).unwrap()
}

/// The packet counts of `port`'s only connection.
fn conn_packets(n: &Net, port: PortId) -> [u64; 2] {
    let conns = n.fw.connections(port);
    assert_eq!(conns.len(), 1, "{conns:?}");
    conns[0].packets
}

/// Packets of a UDP flow after its first in a burst pass on that packet's verdict (a run,
/// see `run.rs`), and are counted on both zones' connection, their statistics and the rule
/// when the burst ends.
#[test]
fn a_udp_run_in_a_burst_is_counted_everywhere_when_the_burst_ends() {
    let n = Net::new(true);
    let (web, db) = (PortRef::Vnic(n.web.id), PortRef::Vnic(n.db.id));
    // db -> web: both zones crossed, both allow (neither side isolated for it).
    let first = udp(2, 1, 5000, 6000, 10);
    assert_eq!(
        n.fw.filter(&FilterContext::new(db, web, n.now), &first),
        FilterVerdict::Forward
    );
    // The uplink host -> db: db's ingress admits it by its ipBlock rule.
    let from_host = udp(99, 2, 7000, 53, 20);
    assert_eq!(
        n.fw.filter(&FilterContext::new(PortRef::Uplink, db, n.now), &from_host),
        FilterVerdict::Forward
    );
    let rule_packets = |n: &Net| {
        n.fw.rule_counters()
            .values()
            .map(|c| c.packets)
            .sum::<u64>()
    };
    let rules_before = rule_packets(&n);
    let established_before: Vec<u64> =
        n.fw.status()
            .iter()
            .map(|s| s.conntrack.established)
            .collect();

    let burst = n.fw.burst_state();
    let now = n.now + 1000;
    let at = |i, e| FilterContext {
        burst: &burst,
        ..FilterContext::new(i, e, now)
    };
    for _ in 0..10 {
        assert_eq!(n.fw.filter(&at(db, web), &first), FilterVerdict::Forward);
        assert_eq!(
            n.fw.filter(&at(PortRef::Uplink, db), &from_host),
            FilterVerdict::Forward
        );
    }
    // Inside the burst only each flow's first packet crossed its zones.
    assert_eq!(conn_packets(&n, n.web.id), [2, 0]);
    drop(burst);
    assert_eq!(conn_packets(&n, n.web.id), [11, 0]);
    let db_conns = n.fw.connections(n.db.id);
    assert_eq!(db_conns.len(), 2);
    assert!(
        db_conns.iter().all(|c| c.packets == [11, 0]),
        "{db_conns:?}"
    );
    let bytes = |c: &ConnInfo| c.bytes[0];
    assert_eq!(bytes(&db_conns[0]) % 11, 0);
    let established: Vec<u64> =
        n.fw.status()
            .iter()
            .map(|s| s.conntrack.established)
            .collect();
    // web saw 10 of db's; db saw 10 of its own and 10 from the host.
    assert_eq!(
        established
            .iter()
            .zip(&established_before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        [10, 20]
    );
    // The ipBlock rule counted the host's ten (db -> web was decided by no rule).
    assert_eq!(rule_packets(&n) - rules_before, 10);
}

/// A re-check that cuts a flow ends its run: the burst's next packet of it crosses again and
/// meets the new policy.
#[test]
fn a_recheck_during_a_burst_ends_the_runs_it_cut() {
    let mut n = Net::new(true);
    let db = PortRef::Vnic(n.db.id);
    let pkt = udp(99, 2, 7000, 53, 20);
    let burst = n.fw.burst_state();
    let ctx = FilterContext {
        burst: &burst,
        ..FilterContext::new(PortRef::Uplink, db, n.now)
    };
    for _ in 0..3 {
        assert_eq!(n.fw.filter(&ctx, &pkt), FilterVerdict::Forward);
    }
    // Another thread applies a policy without the ipBlock rule.
    let report =
        n.apply_policy(&POLICY.replace("    - from: [{ipBlock: {cidr: 192.0.2.0/24}}]\n", ""));
    assert_eq!(report.cut, 1);
    assert_eq!(
        n.fw.filter(&ctx, &pkt),
        FilterVerdict::Drop(PolicyDrop::Denied)
    );
    drop(burst);
    assert!(n.fw.connections(n.db.id).is_empty());
}

/// TCP segments never pass on an earlier one's verdict: each is tracked as it comes.
#[test]
fn tcp_segments_in_a_burst_are_each_tracked() {
    let mut n = Net::new(true);
    let (web, db) = (n.web.clone(), n.db.clone());
    assert_eq!(n.send(&web, &syn(1, 2, 40000, 5432)), to(&db));
    assert_eq!(n.send(&db, &syn_ack(2, 1, 5432, 40000)), to(&web));
    let burst = n.fw.burst_state();
    let ctx = FilterContext {
        burst: &burst,
        ..FilterContext::new(PortRef::Vnic(web.id), PortRef::Vnic(db.id), n.now)
    };
    for k in 0..3u32 {
        let ack = ParsedPacket::parse(&tcp(1, 2, 40000, 5432, 101 + k, Some(501), false)).unwrap();
        assert_eq!(n.fw.filter(&ctx, &ack), FilterVerdict::Forward);
        assert_eq!(conn_packets(&n, db.id), [2 + u64::from(k), 1]);
    }
    // A segment outside the window is refused in the middle of the burst.
    let stray =
        ParsedPacket::parse(&tcp(1, 2, 40000, 5432, 2_000_000_000, Some(501), false)).unwrap();
    assert_eq!(
        n.fw.filter(&ctx, &stray),
        FilterVerdict::Drop(PolicyDrop::ConntrackInvalid)
    );
}

mod runs_equivalence {
    //! Bursts (with their UDP runs) decide and count exactly as frame-by-frame filtering:
    //! random packet sequences, burst boundaries and policy changes in the middle of bursts,
    //! against a second firewall fed the same frames one at a time.

    use proptest::prelude::*;

    use super::*;

    /// The frames the sequences are drawn from: (ingress, egress) as vNIC numbers (99: the
    /// uplink) and the packet.
    fn frames(n: &Net) -> Vec<(PortRef, PortRef, ParsedPacket)> {
        let port = |k: u8| match k {
            1 => PortRef::Vnic(n.web.id),
            2 => PortRef::Vnic(n.db.id),
            _ => PortRef::Uplink,
        };
        let tcp_seg = |f: Vec<u8>| ParsedPacket::parse(&f).unwrap();
        vec![
            // db -> web, both sides allow; and its reply.
            (port(2), port(1), udp(2, 1, 5000, 6000, 10)),
            (port(1), port(2), udp(1, 2, 6000, 5000, 30)),
            // The host -> db (ipBlock rule), two flows.
            (port(99), port(2), udp(99, 2, 7000, 53, 20)),
            (port(99), port(2), udp(99, 2, 7001, 53, 25)),
            // web -> db UDP: db's ingress denies it.
            (port(1), port(2), udp(1, 2, 4000, 53, 5)),
            // A TCP connection web -> db:5432 and a data segment.
            (port(1), port(2), tcp_seg(syn(1, 2, 40000, 5432))),
            (port(2), port(1), tcp_seg(syn_ack(2, 1, 5432, 40000))),
            (
                port(1),
                port(2),
                tcp_seg(tcp(1, 2, 40000, 5432, 101, Some(501), false)),
            ),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Frame(usize),
        EndBurst,
        /// Apply one of [`policies`].
        Recheck(usize),
    }

    /// The policies a sequence switches between: the original; without the ipBlock rule (the
    /// host's flows are cut with the rule that admitted them); with a higher-priority drop of
    /// the host's DNS (cut, while the rule that admitted them stays and keeps counting).
    fn policies() -> [String; 3] {
        [
            POLICY.to_owned(),
            POLICY.replace("    - from: [{ipBlock: {cidr: 192.0.2.0/24}}]\n", ""),
            format!(
                "{POLICY}---\n{}",
                r#"
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: no-dns-from-outside}
spec:
  priority: 2
  tier: securityops
  appliedTo: [{podSelector: {matchLabels: {app: db}}}]
  ingress:
    - action: Drop
      name: drop-dns
      from: [{ipBlock: {cidr: 192.0.2.0/24}}]
      ports: [{protocol: UDP, port: 53}]
"#
            ),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (0..8usize).prop_map(Op::Frame),
            3 => Just(Op::EndBurst),
            1 => (0..3usize).prop_map(Op::Recheck),
        ]
    }

    /// Everything the two firewalls count, comparable.
    fn counted(n: &Net) -> (Vec<Vec<ConnInfo>>, Vec<String>, String) {
        let mut conns = Vec::new();
        for id in [n.web.id, n.db.id] {
            let mut c = n.fw.connections(id);
            c.sort_by_key(|i| format!("{:?}", i.tuple));
            conns.push(c);
        }
        let stats =
            n.fw.status()
                .iter()
                .map(|s| {
                    serde_json::to_string(&(
                        &s.counters,
                        &s.conntrack.established,
                        &s.conntrack.new,
                        &s.conntrack.denied,
                        &s.conntrack.drops,
                    ))
                    .unwrap()
                })
                .collect();
        let rules = serde_json::to_string(&n.fw.rule_counters()).unwrap();
        (conns, stats, rules)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn bursts_decide_and_count_as_single_frames(
            ops in proptest::collection::vec(op(), 1..120)
        ) {
            let mut bursty = Net::new(true);
            let mut single = Net::new(true);
            let fb = frames(&bursty);
            let fs = frames(&single);
            let policies = policies();
            let mut burst = bursty.fw.burst_state();
            let mut now = 1_000_000u64;
            for op in ops {
                match op {
                    Op::Frame(k) => {
                        let (i, e, pkt) = &fb[k];
                        let ctx = FilterContext {
                            burst: &burst,
                            ..FilterContext::new(*i, *e, now)
                        };
                        let got = bursty.fw.filter(&ctx, pkt);
                        let (i, e, pkt) = &fs[k];
                        let want = single.fw.filter(&FilterContext::new(*i, *e, now), pkt);
                        prop_assert_eq!(got, want, "frame {}", k);
                    }
                    Op::EndBurst => {
                        burst = bursty.fw.burst_state();
                        now += 1_000_000;
                    }
                    Op::Recheck(p) => {
                        let yaml = &policies[p];
                        prop_assert_eq!(bursty.apply_policy(yaml), single.apply_policy(yaml));
                    }
                }
            }
            drop(burst);
            prop_assert_eq!(counted(&bursty), counted(&single));
        }
    }
}

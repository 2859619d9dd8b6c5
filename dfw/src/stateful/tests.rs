//! Stateful firewall tests with a fake clock (`now` is a number the test advances) and
//! policies written as CRD YAML, parsed by `crate::crd`.

use std::net::IpAddr;

use super::*;
use crate::compile::{DecidedBy, Engine, EngineConfig};
use crate::conntrack::{ConnState, CtDropReason, InvalidReason, TcpFlags, TcpPeerState};
use crate::model::{Endpoint, EndpointKind, Namespace, Object};

const SEC: u64 = 1_000_000_000;
const WEB: &str = "10.0.0.1";
const DB: &str = "10.0.0.2";
const CLIENT: &str = "10.0.0.3";
const DNS: &str = "192.0.2.53";

/// db accepts web on 5432 only (K8s isolation); everyone in prod rejects telnet (Antrea
/// securityops, logged); web may only reach db:5432, DNS and ping the world.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {app: db}}}]
      ports: [{port: 5432}]
    - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
      ports: [{port: 53, protocol: UDP}]
---
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: securityops
  priority: 1
  appliedTo: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}}]
  ingress:
    - name: reject-telnet
      action: Reject
      ports: [{port: 23}]
      enableLogging: true
      logLabel: telnet
  egress:
    - name: ping-out
      action: Allow
      protocols: [{icmp: {icmpType: 8}}]
      to: [{ipBlock: {cidr: 192.0.2.0/24}}]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn endpoint(name: &str, addr: &str) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: "prod".into(),
        kind: EndpointKind::Vm,
        labels: [("app".to_string(), name.to_string())].into(),
        ips: vec![ip(addr)],
        mac: None,
        named_ports: Default::default(),
    }
}

fn objects(text: &str) -> Vec<Object> {
    crate::crd::parse_documents(text, "test.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .objects
}

struct Lab {
    engine: Engine,
    web: Vnic,
    db: Vnic,
    client: Vnic,
    fw: StatefulFirewall,
}

impl Lab {
    fn new() -> Self {
        let mut engine = Engine::new(EngineConfig::default());
        engine.upsert_namespace(Namespace {
            name: "prod".into(),
            labels: Default::default(),
        });
        let mut vnic = |zone, name, addr| Vnic {
            zone: Zone(zone),
            endpoint: engine.upsert_endpoint(endpoint(name, addr)).unwrap(),
        };
        let (web, db, client) = (
            vnic(1, "web", WEB),
            vnic(2, "db", DB),
            vnic(3, "client", CLIENT),
        );
        engine.apply(objects(POLICY)).unwrap();
        let fw = StatefulFirewall::new(CtConfig {
            hash_seed: Some(7),
            ..CtConfig::default()
        })
        .unwrap();
        Self {
            engine,
            web,
            db,
            client,
            fw,
        }
    }

    fn endpoint_of(&self) -> impl Fn(Zone) -> Option<EndpointHandle> {
        let vnics = [self.web, self.db, self.client];
        move |z| vnics.iter().find(|v| v.zone == z).map(|v| v.endpoint)
    }
}

fn tcp(src: &str, sp: u16, dst: &str, dp: u16) -> FiveTuple {
    FiveTuple {
        src: ip(src),
        dst: ip(dst),
        protocol: IpProtocol::Tcp,
        src_port: sp,
        dst_port: dp,
    }
}

fn udp(src: &str, sp: u16, dst: &str, dp: u16) -> FiveTuple {
    FiveTuple {
        protocol: IpProtocol::Udp,
        ..tcp(src, sp, dst, dp)
    }
}

fn seg(t: FiveTuple, flags: TcpFlags, seq: u32, ack: u32, len: u32) -> PacketMeta {
    PacketMeta::tcp(t, flags, seq, ack, 64_000, len)
}

const SYN: TcpFlags = TcpFlags::SYN;
const ACK: TcpFlags = TcpFlags::ACK;
const SYN_ACK: TcpFlags = TcpFlags(TcpFlags::SYN.0 | TcpFlags::ACK.0);

fn rule_name(o: &Outcome<'_>) -> String {
    o.decision.unwrap().rule().unwrap().rule_name.clone()
}

/// A three-way handshake web:40000 -> db:5432 through both vNICs (web egress, db ingress,
/// then the replies the other way). Returns the tuple.
fn handshake(lab: &mut Lab, snap: &PolicySnapshot, now: u64) -> FiveTuple {
    let t = tcp(WEB, 40000, DB, 5432);
    let syn = seg(t, SYN, 100, 0, 0);
    let a = lab.fw.process(snap, lab.web, Direction::Egress, &syn, now);
    let b = lab.fw.process(snap, lab.db, Direction::Ingress, &syn, now);
    assert!(
        matches!(a.ct, CtVerdict::New { .. }) && a.forwards(),
        "{a:?}"
    );
    assert!(
        matches!(b.ct, CtVerdict::New { .. }) && b.forwards(),
        "{b:?}"
    );
    assert_eq!(rule_name(&a), "egress-0");
    assert_eq!(
        a.decision.unwrap().rule().unwrap().policy.key.name,
        "web-egress"
    );
    assert_eq!(
        b.decision.unwrap().rule().unwrap().policy.key.name,
        "db-ingress"
    );
    let synack = seg(t.reversed(), SYN_ACK, 5000, 101, 0);
    for (vnic, dir) in [(lab.db, Direction::Egress), (lab.web, Direction::Ingress)] {
        let o = lab.fw.process(snap, vnic, dir, &synack, now);
        assert!(matches!(o.ct, CtVerdict::Established { .. }) && o.decision.is_none());
    }
    let ack = seg(t, ACK, 101, 5001, 0);
    for (vnic, dir) in [(lab.web, Direction::Egress), (lab.db, Direction::Ingress)] {
        assert!(lab.fw.process(snap, vnic, dir, &ack, now).forwards());
    }
    t
}

#[test]
fn established_packets_skip_policy_and_still_name_their_rule() {
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    let t = handshake(&mut lab, &snap, 0);
    assert_eq!(lab.fw.conntrack().len(), 2, "one connection per zone");
    // Take the allow away, without a recheck: tracked packets never ask the policy, so the
    // connection keeps flowing on the old decision.
    let db_ingress = lab
        .engine
        .policies()
        .find(|p| p.key.name == "db-ingress")
        .unwrap()
        .key
        .clone();
    lab.engine
        .remove(vec![crate::compile::ObjectKey::Policy(db_ingress)])
        .unwrap();
    lab.engine
        .apply(objects(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-closed, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: db}}\n",
        ))
        .unwrap();
    let closed = lab.engine.snapshot();
    let mut now = 0;
    for i in 0..10u32 {
        now += 100 * SEC;
        let data = seg(t, ACK, 101 + i * 100, 5001, 100);
        assert!(lab
            .fw
            .process(&closed, lab.web, Direction::Egress, &data, now)
            .forwards());
        let o = lab
            .fw
            .process(&closed, lab.db, Direction::Ingress, &data, now);
        assert!(o.forwards() && o.decision.is_none(), "{o:?}");
        let CtVerdict::Established { dir, .. } = o.ct else {
            panic!("{o:?}")
        };
        assert_eq!(dir, conntrack::Direction::Original);
        // The flow log names the rule that admitted the connection, with its direction.
        let info = lab.fw.describe(o.mark()).unwrap();
        assert_eq!(info.direction, Direction::Ingress);
        assert_eq!(info.rule().unwrap().policy.key.name, "db-ingress");
        assert_eq!(info.action, FlowAction::Allow);
        assert!(!info.audit);
        let reply = seg(t.reversed(), ACK, 5001, 201 + i * 100, 0);
        let o = lab
            .fw
            .process(&closed, lab.web, Direction::Ingress, &reply, now);
        let info = lab.fw.describe(o.mark()).unwrap();
        assert_eq!(
            (
                info.direction,
                info.rule().unwrap().policy.key.name.as_str()
            ),
            (Direction::Egress, "web-egress")
        );
    }
    let stats = lab.fw.conntrack().stats();
    assert_eq!(stats.new, 2);
    assert_eq!(stats.denied, 0);
    // ... while a new connection is decided by the new policy.
    let o = lab.fw.process(
        &closed,
        lab.db,
        Direction::Ingress,
        &seg(tcp(WEB, 40001, DB, 5432), SYN, 1, 0, 0),
        now,
    );
    assert_eq!(o.action, FlowAction::Drop);
    assert!(matches!(o.decision.unwrap().by, DecidedBy::Isolation(p) if p.key.name == "db-closed"));
}

#[test]
fn a_denied_first_packet_tracks_nothing_and_every_retry_is_decided_again() {
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    let t = tcp(CLIENT, 33000, DB, 5432);
    for (i, flags) in [SYN, SYN, ACK, ACK].into_iter().enumerate() {
        let o = lab.fw.process(
            &snap,
            lab.db,
            Direction::Ingress,
            &seg(t, flags, 7, 0, 10),
            i as u64 * SEC,
        );
        assert_eq!(o.action, FlowAction::Drop, "{flags:?}");
        assert!(matches!(o.ct, CtVerdict::Denied { .. }));
        assert!(
            matches!(o.decision.unwrap().by, DecidedBy::Isolation(p) if p.key.name == "db-ingress")
        );
        // The inline facts of a denied mark are there; the rule is in the decision.
        assert_eq!(o.mark().direction(), Some(Direction::Ingress));
        assert_eq!(o.mark().action(), FlowAction::Drop);
    }
    assert_eq!(lab.fw.conntrack().len(), 0);
    assert_eq!(lab.fw.conntrack().stats().denied, 4);
    // The server's answer cannot open the connection from the other side either: a SYN-ACK
    // starts nothing, and db's egress to the client as a new flow is not isolated but it is
    // an answer to nothing.
    let o = lab.fw.process(
        &snap,
        lab.db,
        Direction::Egress,
        &seg(t.reversed(), SYN_ACK, 9, 8, 0),
        5 * SEC,
    );
    assert_eq!(
        o.ct,
        CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::NotSyn))
    );
    assert!(!o.forwards());
}

#[test]
fn reject_rules_reject_and_carry_their_log_label() {
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    let o = lab.fw.process(
        &snap,
        lab.db,
        Direction::Ingress,
        &seg(tcp(CLIENT, 1234, DB, 23), SYN, 1, 0, 0),
        0,
    );
    assert_eq!(o.action, FlowAction::Reject);
    assert_eq!(rule_name(&o), "reject-telnet");
    assert_eq!(
        o.decision.unwrap().rule().unwrap().log_label.as_deref(),
        Some("telnet")
    );
    assert!(o.mark().log());
    assert_eq!(o.mark().action(), FlowAction::Reject);
    assert_eq!(lab.fw.conntrack().len(), 0);
}

#[test]
fn an_expired_connection_is_decided_again_under_the_current_snapshot() {
    let mut lab = Lab::new();
    let old = lab.engine.snapshot();
    let t = udp(WEB, 5353, DNS, 53);
    let q = PacketMeta::datagram(t, 60);
    let o = lab.fw.process(&old, lab.web, Direction::Egress, &q, 0);
    assert!(matches!(o.ct, CtVerdict::New { .. }));
    assert_eq!(rule_name(&o), "egress-1");
    let answer = PacketMeta::datagram(t.reversed(), 120);
    assert!(lab
        .fw
        .process(&old, lab.web, Direction::Ingress, &answer, 30 * SEC)
        .forwards());
    // DNS is no longer allowed; the thread has the new snapshot but did not recheck.
    lab.engine
        .apply(objects(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-egress, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n    - to: [{podSelector: {matchLabels: {app: db}}}]\n      ports: [{port: 5432}]\n",
        ))
        .unwrap();
    let new = lab.engine.snapshot();
    // Still tracked (UDP "multiple" timer: 60 s since the last packet).
    let o = lab
        .fw
        .process(&new, lab.web, Direction::Egress, &q, 89 * SEC);
    assert!(o.forwards() && matches!(o.ct, CtVerdict::Established { .. }));
    // Idle past the timer: the next packet is a new connection, and the new policy says no.
    let o = lab
        .fw
        .process(&new, lab.web, Direction::Egress, &q, 150 * SEC);
    assert_eq!(o.action, FlowAction::Drop);
    assert!(matches!(o.decision.unwrap().by, DecidedBy::Isolation(_)));
    assert_eq!(lab.fw.conntrack().stats().expired, 1);
}

#[test]
fn recheck_keeps_what_is_still_allowed_with_new_marks_and_cuts_the_rest() {
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    let t = handshake(&mut lab, &snap, 0);
    let data = seg(t, ACK, 101, 5001, 500);
    assert!(lab
        .fw
        .process(&snap, lab.db, Direction::Ingress, &data, SEC)
        .forwards());
    let before = lab.fw.conntrack().lookup(lab.db.zone, &t, SEC).unwrap().1;
    let old_mark = Mark(before.mark);
    // Still allowed, by a renamed policy with the same meaning.
    lab.engine
        .transaction(
            objects(&POLICY.replace("name: db-ingress", "name: db-ingress-v2")),
            vec![crate::compile::ObjectKey::Policy(crate::model::PolicyKey {
                kind: crate::model::PolicyKind::KubernetesNetworkPolicy,
                namespace: Some("prod".into()),
                name: "db-ingress".into(),
            })],
        )
        .unwrap();
    let v2 = lab.engine.snapshot();
    assert_eq!(lab.fw.recheck(&v2, lab.endpoint_of()), 0);
    let after = lab.fw.conntrack().lookup(lab.db.zone, &t, SEC).unwrap().1;
    assert_eq!(
        (after.state, after.packets, after.bytes, after.expires),
        (before.state, before.packets, before.bytes, before.expires),
        "state survives"
    );
    assert!(matches!(
        after.state,
        ConnState::Tcp {
            original: TcpPeerState::Established,
            reply: TcpPeerState::Established
        }
    ));
    let info = lab.fw.describe(Mark(after.mark)).unwrap();
    assert_eq!(info.rule().unwrap().policy.key.name, "db-ingress-v2");
    // A mark kept from before the recheck no longer resolves (the table was rebuilt).
    assert!(lab.fw.describe(old_mark).is_none());
    // The web side is unchanged and survives too.
    assert!(lab.fw.conntrack().lookup(lab.web.zone, &t, SEC).is_some());

    // Now db only accepts the client: the web -> db connection is cut at db's vNIC.
    lab.engine
        .apply(objects(
            &POLICY
                .replace("name: db-ingress", "name: db-ingress-v2")
                .replace(
                    "{podSelector: {matchLabels: {app: web}}}]\n      ports: [{port: 5432}]",
                    "{podSelector: {matchLabels: {app: client}}}]\n      ports: [{port: 5432}]",
                ),
        ))
        .unwrap();
    let v3 = lab.engine.snapshot();
    assert_eq!(lab.fw.recheck(&v3, lab.endpoint_of()), 1);
    assert!(lab
        .fw
        .conntrack()
        .lookup(lab.db.zone, &t, 2 * SEC)
        .is_none());
    assert!(lab
        .fw
        .conntrack()
        .lookup(lab.web.zone, &t, 2 * SEC)
        .is_some());
    // Its next packet is picked up as a new connection, decided by v3, and dropped.
    let o = lab.fw.process(
        &v3,
        lab.db,
        Direction::Ingress,
        &seg(t, ACK, 601, 5001, 10),
        2 * SEC,
    );
    assert_eq!(o.action, FlowAction::Drop);
    assert!(matches!(o.ct, CtVerdict::Denied { .. }));
    assert_eq!(lab.fw.conntrack().stats().recheck_cut, 1);
}

#[test]
fn audited_namespaces_track_would_be_drops_marked_audit() {
    let mut lab = Lab::new();
    lab.engine.set_namespace_audit("prod", true);
    let snap = lab.engine.snapshot();
    let t = tcp(CLIENT, 33000, DB, 5432);
    let o = lab
        .fw
        .process(&snap, lab.db, Direction::Ingress, &seg(t, SYN, 1, 0, 0), 0);
    assert!(o.forwards() && o.audit && matches!(o.ct, CtVerdict::New { .. }));
    let o = lab.fw.process(
        &snap,
        lab.db,
        Direction::Egress,
        &seg(t.reversed(), SYN_ACK, 50, 2, 0),
        SEC,
    );
    assert!(o.forwards() && o.audit && o.decision.is_none());
    let info = lab.fw.describe(o.mark()).unwrap();
    assert_eq!(info.action, FlowAction::Drop);
    assert!(info.audit);
    assert!(matches!(info.by, DecidedBy::Isolation(p) if p.key.name == "db-ingress"));
    // Audit off: the recheck cuts it (the isolation now drops).
    lab.engine.set_namespace_audit("prod", false);
    let snap = lab.engine.snapshot();
    assert_eq!(lab.fw.recheck(&snap, lab.endpoint_of()), 1);
}

#[test]
fn a_stale_endpoint_fails_closed() {
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    handshake(&mut lab, &snap, 0);
    lab.engine
        .remove_endpoint(&crate::model::EndpointKey {
            namespace: "prod".into(),
            name: "db".into(),
        })
        .unwrap();
    let snap = lab.engine.snapshot();
    let o = lab.fw.process(
        &snap,
        lab.db,
        Direction::Ingress,
        &seg(tcp(WEB, 40001, DB, 5432), SYN, 1, 0, 0),
        SEC,
    );
    assert_eq!(o.action, FlowAction::Drop);
    assert_eq!(o.ct, CtVerdict::Denied { mark: 0 });
    assert!(o.decision.is_none());
    // The recheck cuts db's connection (stale handle) and web's (db is now `world` to web,
    // which web's egress does not allow on 5432).
    assert_eq!(lab.fw.recheck(&snap, lab.endpoint_of()), 2);
    assert!(lab.fw.conntrack().is_empty());
}

#[test]
fn echo_exchanges_are_rechecked_as_the_request_they_started_with() {
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    let t = FiveTuple {
        src: ip(WEB),
        dst: ip(DNS),
        protocol: IpProtocol::Icmp,
        src_port: 77,
        dst_port: 77,
    };
    let o = lab.fw.process(
        &snap,
        lab.web,
        Direction::Egress,
        &PacketMeta::icmp(t, 8, 0),
        0,
    );
    assert!(matches!(o.ct, CtVerdict::New { .. }));
    assert_eq!(rule_name(&o), "ping-out");
    let reply = PacketMeta::icmp(t.reversed(), 0, 0);
    assert!(lab
        .fw
        .process(&snap, lab.web, Direction::Ingress, &reply, SEC)
        .forwards());
    // Same policy: survives the recheck (it is re-decided as an echo request, type 8).
    assert_eq!(lab.fw.recheck(&snap, lab.endpoint_of()), 0);
    let info = lab
        .fw
        .describe(Mark(lab.fw.conntrack().iter().next().unwrap().mark))
        .unwrap();
    assert_eq!(info.rule().unwrap().rule_name, "ping-out");
    // An unsolicited echo reply opens nothing.
    let stray = PacketMeta::icmp(
        FiveTuple {
            src_port: 78,
            dst_port: 78,
            ..t.reversed()
        },
        0,
        0,
    );
    assert!(!lab
        .fw
        .process(&snap, lab.web, Direction::Ingress, &stray, SEC)
        .forwards());
}

#[test]
fn a_connection_picked_up_mid_stream_is_counted_in_both_zones() {
    // A daemon restart loses the table: the next segment of web's open session to db is a
    // plain ACK with data. It is decided as a new connection, tracked, and counted as picked
    // up in each zone it crosses.
    let mut lab = Lab::new();
    let snap = lab.engine.snapshot();
    let t = tcp(WEB, 40000, DB, 5432);
    let data = seg(t, ACK | TcpFlags::PSH, 7000, 9000, 100);
    for (vnic, dir) in [(lab.web, Direction::Egress), (lab.db, Direction::Ingress)] {
        let o = lab.fw.process(&snap, vnic, dir, &data, 0);
        assert!(
            matches!(
                o.ct,
                CtVerdict::New {
                    picked_up: true,
                    ..
                }
            ) && o.forwards(),
            "{o:?}"
        );
    }
    let reply = seg(t.reversed(), ACK, 9000, 7100, 0);
    for (vnic, dir) in [(lab.db, Direction::Egress), (lab.web, Direction::Ingress)] {
        let o = lab.fw.process(&snap, vnic, dir, &reply, 0);
        assert!(matches!(o.ct, CtVerdict::Established { .. }), "{o:?}");
    }
    let s = lab.fw.conntrack().stats();
    assert_eq!((s.new, s.picked_up, s.established), (2, 2, 2));
}

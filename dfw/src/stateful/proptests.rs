//! Property tests of the conntrack + policy glue, over random policies (Antrea rules with
//! every action, Kubernetes isolation, audit) and random packet sequences through one or two
//! vNICs.
//!
//! The policy answer itself is taken from `PolicySnapshot::decide` (the classifier is
//! checked against the reference evaluator in `compile`); what is checked here is what the
//! glue does with it: what gets tracked, what passes without a decision, what a recheck
//! keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::compile::{Engine, EngineConfig};
use crate::conntrack::TcpFlags;
use crate::model::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const LOCALS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];
const REMOTES: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
const PORTS: [u16; 4] = [80, 81, 82, 83];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn app(i: usize) -> String {
    format!("l{i}")
}

fn selector(i: usize) -> EndpointSelector {
    EndpointSelector {
        namespaces: NamespaceScope::Named("p".into()),
        labels: LabelSelector {
            match_labels: [("app".to_string(), app(i))].into(),
            match_expressions: vec![],
        },
        kinds: KindFilter::Any,
    }
}

/// Per local endpoint and direction: an Antrea policy with a random action per port (or no
/// rule), over a Kubernetes policy isolating both directions (so "no rule" drops), sometimes
/// in audit mode.
///
/// With `force_deny`, the first endpoint's ingress on port 80 is an enforced Drop (so a case
/// always has a denied connection to follow).
fn policies(r: &mut Rng, version: u32, force_deny: bool) -> Vec<Object> {
    let mut out = Vec::new();
    for i in 0..LOCALS.len() {
        let mut rules = Vec::new();
        let forced = force_deny && i == 0;
        for dir in [Direction::Ingress, Direction::Egress] {
            for port in PORTS {
                let action = match r.below(5) {
                    _ if forced && dir == Direction::Ingress && port == 80 => Action::Drop,
                    0 | 1 => Action::Allow,
                    2 => Action::Drop,
                    3 => Action::Reject,
                    _ => continue,
                };
                let protocol = if r.chance(50) {
                    ProtocolMatch::Tcp
                } else {
                    ProtocolMatch::Any
                };
                let n = rules.len();
                rules.push(Rule {
                    id: RuleId(u64::from(version) << 32 | (i as u64) << 16 | n as u64),
                    name: format!("v{version}-r{n}"),
                    direction: dir,
                    action,
                    peers: Peers::Any,
                    ports: vec![PortMatch {
                        protocol,
                        port: Some(PortSpec::Range(PortRange::single(port))),
                        source_ports: None,
                    }],
                    applied_to: None,
                    enable_logging: r.chance(30),
                    log_label: None,
                    unenforced: vec![],
                });
            }
        }
        out.push(Object::Policy(Policy {
            key: PolicyKey {
                kind: PolicyKind::AntreaNetworkPolicy,
                namespace: Some("p".into()),
                name: format!("anp-{i}"),
            },
            layer: Layer::AntreaTier {
                tier: "application".into(),
                tier_priority: 250,
                policy_priority: 1.0,
            },
            applied_to: vec![AppliedTo::Endpoints(selector(i))],
            isolates: vec![],
            subject_isolation: vec![],
            rules,
            audit: r.chance(15) && !forced,
            source: Source::default(),
        }));
        out.push(Object::Policy(Policy {
            key: PolicyKey {
                kind: PolicyKind::KubernetesNetworkPolicy,
                namespace: Some("p".into()),
                name: format!("iso-{i}"),
            },
            layer: Layer::Kubernetes,
            applied_to: vec![AppliedTo::Endpoints(selector(i))],
            isolates: vec![Direction::Ingress, Direction::Egress],
            subject_isolation: vec![],
            rules: vec![],
            audit: r.chance(10),
            source: Source::default(),
        }));
    }
    out
}

struct World {
    engine: Engine,
    vnics: Vec<Vnic>,
}

impl World {
    fn new(r: &mut Rng, force_deny: bool) -> Self {
        let mut engine = Engine::new(EngineConfig::default());
        let vnics = LOCALS
            .iter()
            .enumerate()
            .map(|(i, addr)| Vnic {
                zone: Zone(10 + i as u32),
                endpoint: engine
                    .upsert_endpoint(Endpoint {
                        name: app(i),
                        namespace: "p".into(),
                        kind: EndpointKind::Vm,
                        labels: [("app".to_string(), app(i))].into(),
                        ips: vec![ip(addr)],
                        mac: None,
                        named_ports: Default::default(),
                    })
                    .unwrap(),
            })
            .collect();
        engine.apply(policies(r, 1, force_deny)).unwrap();
        Self { engine, vnics }
    }

    fn endpoint_of(&self) -> impl Fn(Zone) -> Option<EndpointHandle> + '_ {
        |z| self.vnics.iter().find(|v| v.zone == z).map(|v| v.endpoint)
    }

    /// The vNIC crossings of a packet, in path order.
    fn crossings(&self, t: &FiveTuple) -> Vec<(Vnic, Direction)> {
        let local = |a: IpAddr| LOCALS.iter().position(|l| ip(l) == a);
        let mut out = Vec::new();
        if let Some(i) = local(t.src) {
            out.push((self.vnics[i], Direction::Egress));
        }
        if let Some(i) = local(t.dst) {
            out.push((self.vnics[i], Direction::Ingress));
        }
        out
    }
}

/// A connection under test: its first packet's tuple and both sides' next sequence numbers.
#[derive(Clone)]
struct Conn {
    t: FiveTuple,
    seq: [u32; 2],
}

fn gen_conn(r: &mut Rng, n: usize) -> Conn {
    let li = r.below(LOCALS.len());
    let local = ip(LOCALS[li]);
    let peer = if r.chance(40) {
        ip(LOCALS[1 - li])
    } else {
        ip(REMOTES[r.below(REMOTES.len())])
    };
    let (src, dst) = if r.chance(50) {
        (local, peer)
    } else {
        (peer, local)
    };
    Conn {
        t: FiveTuple {
            src,
            dst,
            protocol: if r.chance(70) {
                IpProtocol::Tcp
            } else {
                IpProtocol::Udp
            },
            src_port: 20000 + n as u16,
            dst_port: PORTS[r.below(PORTS.len())],
        },
        seq: [1000 * (n as u32 + 1), 7_000_000 + 1000 * n as u32],
    }
}

/// The first packet of a connection.
fn opening(c: &Conn) -> PacketMeta {
    match c.t.protocol {
        IpProtocol::Tcp => PacketMeta::tcp(c.t, TcpFlags::SYN, c.seq[0], 0, 64_000, 0),
        _ => PacketMeta::datagram(c.t, 100),
    }
}

/// A random later packet of a connection, from either side.
fn follow_up(r: &mut Rng, c: &mut Conn) -> PacketMeta {
    let side = r.below(2);
    let t = if side == 0 { c.t } else { c.t.reversed() };
    if c.t.protocol != IpProtocol::Tcp {
        return PacketMeta::datagram(t, 100);
    }
    let flags = match r.below(8) {
        0 => TcpFlags::SYN,
        1 => TcpFlags::SYN | TcpFlags::ACK,
        2 => TcpFlags::FIN | TcpFlags::ACK,
        3 => TcpFlags::RST,
        _ => TcpFlags::ACK,
    };
    let len = if flags == TcpFlags::ACK {
        r.below(200) as u32
    } else {
        0
    };
    let p = PacketMeta::tcp(t, flags, c.seq[side], c.seq[1 - side], 64_000, len);
    c.seq[side] = p.tcp_seg_end();
    p
}

/// Whether `snap` would let `pkt` open a connection at this crossing.
fn allows_new(snap: &PolicySnapshot, vnic: Vnic, dir: Direction, pkt: &PacketMeta) -> bool {
    snap.decide(vnic.endpoint, dir, &query(pkt))
        .is_some_and(|d| d.effective() == FlowAction::Allow)
}

/// A connection key independent of orientation.
fn canon(t: &FiveTuple) -> FiveTuple {
    if (t.src, t.src_port) <= (t.dst, t.dst_port) {
        *t
    } else {
        t.reversed()
    }
}

/// Send `pkt` through the vNICs on its path (stopping at the first that drops it),
/// checking at each: a packet opens a connection only on an allowing decision for itself, and
/// passes without one only in a connection a decision admitted at that vNIC before.
/// Returns, per vNIC crossed, whether it forwarded.
fn send(
    world: &World,
    snap: &PolicySnapshot,
    fw: &mut StatefulFirewall,
    admitted: &mut BTreeSet<(u32, FiveTuple)>,
    pkt: &PacketMeta,
    now: u64,
) -> Result<Vec<bool>, TestCaseError> {
    let mut seen = Vec::new();
    for (vnic, dir) in world.crossings(&pkt.tuple) {
        let key = (vnic.zone.0, canon(&pkt.tuple));
        let was_admitted = admitted.contains(&key);
        let o = fw.process(snap, vnic, dir, pkt, now);
        if let CtVerdict::New { .. } = o.ct {
            prop_assert!(
                allows_new(snap, vnic, dir, pkt),
                "{pkt:?} opened a connection without an allowing decision"
            );
            prop_assert!(o.decision.is_some());
            admitted.insert(key);
        } else if o.forwards() {
            prop_assert!(
                was_admitted,
                "{pkt:?} passed {:?} {dir:?} in a connection nothing admitted: {o:?}",
                vnic.zone
            );
            prop_assert!(o.decision.is_none());
        } else if let CtVerdict::Denied { .. } = o.ct {
            prop_assert!(!allows_new(snap, vnic, dir, pkt));
        }
        seen.push(o.forwards());
        if !o.forwards() {
            break;
        }
    }
    Ok(seen)
}

fn firewall() -> StatefulFirewall {
    StatefulFirewall::new(CtConfig {
        hash_seed: Some(1),
        ..CtConfig::default()
    })
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Nothing of a connection passes a vNIC until a policy decision at that vNIC admitted
    /// one of its packets: a connection whose first packet was denied stays dropped, however
    /// its later packets look (retransmitted SYNs, ACKs that conntrack may pick up, replies,
    /// FIN, RST), unless the policy allows one of them as a new connection itself.
    #[test]
    fn denied_first_packet_never_passes(seed in any::<u64>()) {
        let mut r = Rng(seed);
        let mut world = World::new(&mut r, true);
        let snap: Arc<PolicySnapshot> = world.engine.snapshot();
        let mut fw = firewall();
        let mut conns: Vec<Conn> = (0..12).map(|n| gen_conn(&mut r, n)).collect();
        // Always one connection the policy refuses at its first vNIC: world -> l0 TCP 80.
        let mut refused = gen_conn(&mut r, 12);
        refused.t = FiveTuple {
            src: ip(REMOTES[0]),
            dst: ip(LOCALS[0]),
            protocol: IpProtocol::Tcp,
            src_port: 31000,
            dst_port: 80,
        };
        conns.push(refused);
        let mut admitted = BTreeSet::new();
        let mut now = 0u64;
        let mut denied_first = 0;
        for c in &conns {
            let seen = send(&world, &snap, &mut fw, &mut admitted, &opening(c), now)?;
            denied_first += seen.iter().filter(|fwd| !**fwd).count();
        }
        prop_assert!(denied_first >= 1);
        for i in 0..120 {
            now += r.below(5) as u64 * 1_000_000_000;
            // Every tenth packet belongs to the refused connection.
            let n = if i % 10 == 0 { conns.len() - 1 } else { r.below(conns.len()) };
            let pkt = follow_up(&mut r, &mut conns[n]);
            send(&world, &snap, &mut fw, &mut admitted, &pkt, now)?;
        }
    }

    /// A recheck against a new snapshot keeps exactly the connections the new policy still
    /// allows, with their protocol state, counters and timers, re-marked with the new
    /// decision; the others are cut, and their next packet (in the direction the connection
    /// was decided in) is decided again and dropped.
    #[test]
    fn recheck_keeps_the_allowed_and_cuts_the_denied(seed in any::<u64>()) {
        let mut r = Rng(seed);
        let mut world = World::new(&mut r, false);
        let a = world.engine.snapshot();
        let mut fw = firewall();
        let mut conns: Vec<Conn> = (0..16).map(|n| gen_conn(&mut r, n)).collect();
        let mut now = 0u64;
        // Open under A, then some traffic both ways.
        for c in &conns {
            let p = opening(c);
            for (vnic, dir) in world.crossings(&p.tuple) {
                if !fw.process(&a, vnic, dir, &p, now).forwards() {
                    break;
                }
            }
        }
        for _ in 0..40 {
            now += 1_000_000_000;
            let n = r.below(conns.len());
            let p = follow_up(&mut r, &mut conns[n]);
            for (vnic, dir) in world.crossings(&p.tuple) {
                if !fw.process(&a, vnic, dir, &p, now).forwards() {
                    break;
                }
            }
        }
        let before: BTreeMap<(u32, FiveTuple), crate::conntrack::ConnInfo> = fw
            .conntrack()
            .iter()
            .map(|c| ((c.zone.0, c.tuple), c))
            .collect();
        // Policy B: new random rules (new rule ids), sometimes the very same policy.
        let b_objects = if r.chance(20) {
            policies(&mut Rng(seed), 1, false)
        } else {
            policies(&mut r, 2, false)
        };
        world.engine.apply(b_objects).unwrap();
        let b = world.engine.snapshot();
        let endpoint_of = world.endpoint_of();
        let mut expect_cut = 0;
        let mut keep = Vec::new();
        for (key, info) in &before {
            let dir = Mark(info.mark).direction().expect("marked by the glue");
            let ep = endpoint_of(info.zone).unwrap();
            let d = b.decide(ep, dir, &tuple_query(&info.tuple)).unwrap();
            if d.effective() == FlowAction::Allow {
                keep.push((*key, d.rule_id(), d.audit));
            } else {
                expect_cut += 1;
            }
        }
        let cut = fw.recheck(&b, &endpoint_of);
        prop_assert_eq!(cut, expect_cut);
        // Read through `iter`, not `lookup`: a recheck also keeps expired entries that no
        // sweep has removed yet.
        let after: BTreeMap<(u32, FiveTuple), crate::conntrack::ConnInfo> = fw
            .conntrack()
            .iter()
            .map(|c| ((c.zone.0, c.tuple), c))
            .collect();
        prop_assert_eq!(after.len(), before.len() - expect_cut);
        for (key, rule_id, audit) in &keep {
            let now_info = after.get(key).expect("kept");
            let old = before[key];
            prop_assert_eq!(
                (now_info.state, now_info.packets, now_info.bytes, now_info.expires),
                (old.state, old.packets, old.bytes, old.expires)
            );
            let info = fw.describe(Mark(now_info.mark)).expect("current mark");
            prop_assert_eq!(info.rule_id(), *rule_id);
            prop_assert_eq!(info.audit, *audit);
            prop_assert_eq!(Some(info.direction), Mark(old.mark).direction());
        }
        for ((zone, tuple), info) in &before {
            if after.contains_key(&(*zone, *tuple)) {
                continue;
            }
            let dir = Mark(info.mark).direction().unwrap();
            let vnic = world.vnics.iter().find(|v| v.zone.0 == *zone).copied().unwrap();
            let next = match tuple.protocol {
                IpProtocol::Tcp => PacketMeta::tcp(*tuple, TcpFlags::ACK, 5, 5, 64_000, 10),
                _ => PacketMeta::datagram(*tuple, 10),
            };
            let o = fw.process(&b, vnic, dir, &next, now);
            prop_assert!(!o.forwards(), "cut connection {tuple} passed: {o:?}");
        }
    }
}

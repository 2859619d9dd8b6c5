//! Property tests: the indexed classifier against the naive reference evaluator, and
//! incremental realization against realization from scratch, over random small inventories
//! and policy sets.
//!
//! Scenarios are generated from a proptest-chosen seed with a small deterministic PRNG
//! (so a failure is reproducible from the printed seed); the generator covers every peer,
//! port, layer and action kind of the model.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::compile::{ApplyReport, EndpointHandle, EngineError};

/// splitmix64: tiny, deterministic, good enough to drive a generator.
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
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"]; // n2 is never declared
const HOST: &str = "172.16.0.1";
const EXTERNAL: [&str; 3] = ["10.1.0.200", "192.0.2.1", HOST];

fn gen_label_selector(r: &mut Rng) -> LabelSelector {
    match r.below(6) {
        0 | 1 => ls(&[]),
        2 => ls(&[("app", *r.pick(&["w", "d"]))]),
        3 => ls(&[("tier", *r.pick(&["f", "b"]))]),
        4 => LabelSelector {
            match_labels: labels(&[]),
            match_expressions: vec![LabelExpression {
                key: "app".into(),
                operator: SelectorOperator::In,
                values: vec!["w".into(), "d".into()],
            }],
        },
        _ => LabelSelector {
            match_labels: labels(&[]),
            match_expressions: vec![LabelExpression {
                key: "tier".into(),
                operator: *r.pick(&[
                    SelectorOperator::NotIn,
                    SelectorOperator::Exists,
                    SelectorOperator::DoesNotExist,
                ]),
                values: vec!["f".into()],
            }],
        },
    }
}

fn gen_selector(r: &mut Rng, allow_same_ns: bool) -> EndpointSelector {
    let namespaces = match r.below(if allow_same_ns { 6 } else { 5 }) {
        0 => NamespaceScope::Named(r.pick(&NAMESPACES).to_string()),
        1 => NamespaceScope::Selector(ls(&[("env", *r.pick(&["a", "b"]))])),
        2 => NamespaceScope::Selector(ls(&[])),
        3 | 4 => NamespaceScope::Any,
        _ => NamespaceScope::SameAsAppliedTo,
    };
    let mut labels = gen_label_selector(r);
    if r.chance(10) {
        labels.match_labels.insert(
            CILIUM_NAMESPACE_LABEL.into(),
            r.pick(&NAMESPACES).to_string(),
        );
    }
    // Cilium namespace-label pseudo-labels, alone (filed under a namespace-label token) or
    // next to an endpoint label, in matchLabels or an `In` expression.
    match r.below(12) {
        0 => {
            labels.match_labels.insert(
                format!("{CILIUM_NAMESPACE_LABELS_PREFIX}env"),
                r.pick(&["a", "b"]).to_string(),
            );
        }
        1 => {
            labels.match_labels.insert(
                format!("{CILIUM_NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}"),
                r.pick(&NAMESPACES).to_string(),
            );
        }
        2 => labels.match_expressions.push(LabelExpression {
            key: format!("{CILIUM_NAMESPACE_LABELS_PREFIX}env"),
            operator: *r.pick(&[SelectorOperator::In, SelectorOperator::NotIn]),
            values: vec!["a".into()],
        }),
        _ => {}
    }
    EndpointSelector {
        namespaces,
        labels,
        kinds: if r.chance(15) {
            KindFilter::VmOnly
        } else {
            KindFilter::Any
        },
    }
}

fn gen_block(r: &mut Rng) -> IpBlock {
    let (cidr, except): (&str, &[&str]) = *r.pick(&[
        ("10.1.0.0/16", &["10.1.0.0/30"][..]),
        ("10.1.0.0/24", &[][..]),
        ("10.1.0.4/30", &[][..]),
        ("0.0.0.0/0", &["10.0.0.0/8"][..]),
        ("192.0.2.0/24", &[][..]),
        ("172.16.0.0/12", &[][..]),
    ]);
    IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

fn gen_peer(r: &mut Rng, antrea: bool) -> Peer {
    match r.below(if antrea { 5 } else { 4 }) {
        0 | 1 => Peer::Endpoints(gen_selector(r, antrea)),
        2 => Peer::IpBlock(gen_block(r)),
        3 => Peer::Entity(*r.pick(&[
            Entity::All,
            Entity::World,
            Entity::Cluster,
            Entity::Host,
            Entity::RemoteNode,
        ])),
        _ => group(r.pick::<&str>(&["g0", "g1", "g2"])),
    }
}

fn gen_port(r: &mut Rng) -> PortMatch {
    let protocol = *r.pick(&[
        ProtocolMatch::Tcp,
        ProtocolMatch::Tcp,
        ProtocolMatch::Udp,
        ProtocolMatch::Any,
        ProtocolMatch::Icmp {
            v6: false,
            icmp_type: Some(8),
            icmp_code: None,
        },
        ProtocolMatch::Number(1),
    ]);
    let port = match r.below(5) {
        0 => None,
        1 => Some(PortSpec::Range(PortRange::single(80))),
        2 => Some(PortSpec::Range(PortRange { start: 81, end: 90 })),
        3 => Some(PortSpec::Range(PortRange {
            start: 1,
            end: 1000,
        })),
        _ => Some(PortSpec::Named(r.pick(&["http", "alt"]).to_string())),
    };
    PortMatch {
        protocol,
        port,
        source_ports: if r.chance(15) {
            Some(PortRange {
                start: 1000,
                end: 1500,
            })
        } else {
            None
        },
    }
}

fn gen_rule(r: &mut Rng, actions: &[Action], antrea: bool, per_rule_applied: bool) -> R {
    let dir = if r.chance(50) {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let mut rule = rule(dir, *r.pick(actions));
    if r.chance(80) {
        let n = r.below(3);
        rule = rule.peers((0..n).map(|_| gen_peer(r, antrea)).collect());
    }
    let n = r.below(3);
    rule = rule.ports((0..n).map(|_| gen_port(r)).collect());
    if per_rule_applied {
        rule = rule.applied(vec![AppliedTo::Endpoints(gen_selector(r, false))]);
    }
    rule
}

fn gen_policy(r: &mut Rng, i: usize) -> Policy {
    let ns = *r.pick(&NAMESPACES);
    let mut p = match r.below(4) {
        0 => {
            let types: &[Direction] = r.pick::<&[Direction]>(&[
                &[Direction::Ingress][..],
                &[Direction::Egress][..],
                &[Direction::Ingress, Direction::Egress][..],
            ]);
            let rules = (0..r.below(3))
                .map(|_| gen_rule(r, &[Action::Allow], false, false))
                .collect();
            let mut p = k8s(ns, &format!("k{i}"), &[], types, rules);
            p.applied_to = vec![AppliedTo::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Named(ns.into()),
                labels: gen_label_selector(r),
                kinds: KindFilter::Any,
            })];
            p
        }
        1 => {
            let isolates: Vec<Direction> = [Direction::Ingress, Direction::Egress]
                .into_iter()
                .filter(|_| r.chance(50))
                .collect();
            let rules = (0..r.below(4))
                .map(|_| {
                    gen_rule(
                        r,
                        &[Action::Allow, Action::Allow, Action::Drop],
                        false,
                        false,
                    )
                })
                .collect();
            let mut p = cnp(
                ns,
                &format!("c{i}"),
                gen_selector(r, false),
                &isolates,
                rules,
            );
            if r.chance(35) {
                // Several `specs` with different subjects: every rule carries its spec's
                // subject and each subject is isolated in its own directions.
                let subjects: Vec<Vec<AppliedTo>> = (0..1 + r.below(3))
                    .map(|_| vec![AppliedTo::Endpoints(gen_selector(r, false))])
                    .collect();
                for rule in &mut p.rules {
                    rule.applied_to = Some(r.pick(&subjects).clone());
                }
                p.applied_to = vec![];
                p.isolates = vec![];
                p.subject_isolation = subjects
                    .into_iter()
                    .filter_map(|applied_to| {
                        let directions: Vec<Direction> = [Direction::Ingress, Direction::Egress]
                            .into_iter()
                            .filter(|_| r.chance(50))
                            .collect();
                        (!directions.is_empty()).then_some(SubjectIsolation {
                            applied_to,
                            directions,
                        })
                    })
                    .collect();
            }
            p
        }
        _ => {
            let tier = *r.pick(&["emergency", "application", "custom", "baseline"]);
            let actions: &[Action] = if tier == "baseline" {
                &[Action::Allow, Action::Drop, Action::Reject]
            } else {
                &[Action::Allow, Action::Drop, Action::Reject, Action::Pass]
            };
            let per_rule = r.chance(20);
            let rules = (0..r.below(4))
                .map(|_| gen_rule(r, actions, true, per_rule))
                .collect();
            let applied = if per_rule {
                vec![]
            } else if r.chance(20) {
                vec![AppliedTo::Group(GroupKey {
                    namespace: None,
                    name: r.pick(&["g0", "g1"]).to_string(),
                })]
            } else {
                vec![AppliedTo::Endpoints(gen_selector(r, false))]
            };
            // Few distinct priorities, so ties (broken by key) happen.
            acnp(&format!("a{i}"), tier, r.below(3) as f64, applied, rules)
        }
    };
    p.audit = r.chance(10);
    p
}

fn gen_groups(r: &mut Rng) -> Vec<Object> {
    let sel = |r: &mut Rng| {
        if r.chance(70) {
            Some(gen_selector(r, false))
        } else {
            None
        }
    };
    let blocks = |r: &mut Rng| {
        if r.chance(40) {
            vec![gen_block(r)]
        } else {
            vec![]
        }
    };
    let mk = |name: &str, selector, ip_blocks, children: &[&str]| Group {
        ip_blocks,
        ..cluster_group(name, selector, &[], children)
    };
    let g0 = mk("g0", sel(r), blocks(r), &[]);
    let g1 = mk(
        "g1",
        sel(r),
        blocks(r),
        if r.chance(60) { &["g0"] } else { &[] },
    );
    let g2 = mk("g2", None, blocks(r), &["g1"]);
    vec![Object::Group(g0), Object::Group(g1), Object::Group(g2)]
}

fn gen_endpoint(r: &mut Rng, i: usize) -> Endpoint {
    let mut l = Vec::new();
    if r.chance(70) {
        l.push(("app", *r.pick(&["w", "d"])));
    }
    if r.chance(50) {
        l.push(("tier", *r.pick(&["f", "b"])));
    }
    let kind = if r.chance(50) {
        EndpointKind::Vm
    } else {
        EndpointKind::Pod
    };
    let mut e = ep(
        r.pick::<&str>(&NAMESPACES),
        &format!("e{i}"),
        kind,
        &format!("10.1.0.{}", i + 1),
        &l,
    );
    if r.chance(50) {
        e.named_ports.insert(
            r.pick(&["http", "alt"]).to_string(),
            NamedPort {
                port: *r.pick(&[80, 85]),
                protocol: *r.pick(&[IpProtocol::Tcp, IpProtocol::Udp]),
            },
        );
    }
    e
}

fn gen_namespace(r: &mut Rng, name: &str) -> Namespace {
    Namespace {
        name: name.into(),
        labels: labels(&[("env", *r.pick(&["a", "b"]))]),
    }
}

fn gen_config(r: &mut Rng) -> EngineConfig {
    EngineConfig {
        default_deny: r.chance(30),
        audit: r.chance(10),
        host_ips: vec![HOST.parse().unwrap()],
        remote_node_ips: vec![],
        audit_namespaces: NAMESPACES
            .iter()
            .filter(|_| r.chance(15))
            .map(|n| n.to_string())
            .collect(),
    }
}

fn tier_object() -> Object {
    Object::Tier(Tier {
        name: "custom".into(),
        priority: 20,
        source: Source::default(),
    })
}

fn queries(engine: &Engine) -> Vec<FlowQuery> {
    let mut ips: Vec<IpAddr> = engine.endpoints().flat_map(|e| e.ips.clone()).collect();
    ips.extend(EXTERNAL.iter().map(|s| s.parse::<IpAddr>().unwrap()));
    ips.sort();
    let mut out = Vec::new();
    for s in &ips {
        for d in &ips {
            if s == d {
                continue;
            }
            for (proto, port) in [(Tcp, 80), (Tcp, 85), (Udp, 80), (Tcp, 95)] {
                out.push(FlowQuery::new(*s, *d, proto, 1200, port));
            }
            out.push(FlowQuery::new(*s, *d, Tcp, 3000, 80));
            out.push(FlowQuery::icmp(*s, *d, 8, 0));
        }
    }
    out
}

/// Every query: the snapshot's per-direction decisions equal the reference's.
fn check_against_reference(engine: &mut Engine) {
    let snap = engine.snapshot();
    for q in queries(engine) {
        let v = snap.evaluate(&q);
        for (dir, got, ip) in [
            (Direction::Egress, v.egress, q.src),
            (Direction::Ingress, v.ingress, q.dst),
        ] {
            let local = engine.endpoints().find(|e| e.ips.contains(&ip));
            match (local, got) {
                (Some(local), Some(got)) => {
                    let want = reference::decide(engine, local, dir, &q);
                    assert_same(&got, &want, &format!("{q:?} {dir:?}"));
                }
                (None, None) => {}
                (l, g) => panic!("{q:?} {dir:?}: endpoint {l:?}, decision {g:?}"),
            }
        }
    }
}

fn scenario(seed: u64) -> Engine {
    let mut r = Rng(seed);
    let mut engine = Engine::new(gen_config(&mut r));
    for ns in &NAMESPACES[..2] {
        engine.upsert_namespace(gen_namespace(&mut r, ns));
    }
    for i in 0..2 + r.below(6) {
        engine.upsert_endpoint(gen_endpoint(&mut r, i)).unwrap();
    }
    let mut objs = vec![tier_object()];
    objs.extend(gen_groups(&mut r));
    for i in 0..1 + r.below(7) {
        objs.push(Object::Policy(gen_policy(&mut r, i)));
    }
    engine.apply(objs).unwrap();
    engine
}

/// The verdict of every query, as comparable values.
fn all_verdicts(engine: &mut Engine) -> Vec<String> {
    let snap = engine.snapshot();
    queries(engine)
        .iter()
        .map(|q| {
            let v = snap.evaluate(q);
            let d = |d: Option<Decision<'_>>| {
                d.map(|d| {
                    let by = match d.by {
                        DecidedBy::Rule(r) => format!("{}#{}", r.policy.key, r.rule_index),
                        DecidedBy::Isolation(p) => format!("iso {}", p.key),
                        other => format!("{other:?}"),
                    };
                    format!("{:?}/{}/{by}", d.action, d.audit)
                })
            };
            format!("{q:?} {:?} {:?} {:?}", v.action, d(v.egress), d(v.ingress))
        })
        .collect()
}

/// Rebuild an engine from scratch out of another engine's current state.
fn rebuild(from: &Engine, inventory_first: bool) -> Engine {
    let mut fresh = Engine::new(from.config().clone());
    let mut objs: Vec<Object> = from.tiers().cloned().map(Object::Tier).collect();
    objs.extend(from.groups().cloned().map(Object::Group));
    objs.extend(from.policies().cloned().map(Object::Policy));
    let inventory = |e: &mut Engine| {
        for ns in from.namespaces() {
            e.upsert_namespace(ns.clone());
        }
        let mut eps: Vec<&Endpoint> = from.endpoints().collect();
        eps.sort_by_key(|e| e.key());
        for ep in eps {
            e.upsert_endpoint(ep.clone()).unwrap();
        }
    };
    if inventory_first {
        inventory(&mut fresh);
        fresh.apply(objs).unwrap();
    } else {
        fresh.apply(objs).unwrap();
        inventory(&mut fresh);
    }
    fresh
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn classifier_matches_reference(seed in any::<u64>()) {
        let mut engine = scenario(seed);
        check_against_reference(&mut engine);
    }

    #[test]
    fn incremental_equals_full(seed in any::<u64>(), inventory_first in any::<bool>()) {
        let mut r = Rng(seed);
        let mut engine = Engine::new(gen_config(&mut r));
        engine.apply(vec![tier_object()]).unwrap();
        let mut next_ep = 0;
        let mut next_policy = 0;
        let mut handles: Vec<EndpointHandle> = Vec::new();
        for _ in 0..25 {
            let result: Result<ApplyReport, EngineError> = match r.below(10) {
                0 => {
                    let ns = *r.pick(&NAMESPACES[..2]);
                    engine.upsert_namespace(gen_namespace(&mut r, ns));
                    Ok(ApplyReport::default())
                }
                1 | 2 => {
                    // New endpoint, or an existing one changed (labels, IP, named ports).
                    let i = if next_ep > 0 && r.chance(40) { r.below(next_ep) } else { next_ep };
                    let mut e = gen_endpoint(&mut r, i);
                    if r.chance(30) {
                        e.ips = vec![format!("10.1.0.{}", 100 + i).parse().unwrap()];
                    }
                    if i == next_ep {
                        next_ep += 1;
                    }
                    engine.upsert_endpoint(e).map(|h| { handles.push(h); ApplyReport::default() })
                }
                3 => {
                    let key = engine.endpoints().next().map(|e| e.key());
                    match key {
                        Some(k) => engine.remove_endpoint(&k).map(|_| ApplyReport::default()),
                        None => Ok(ApplyReport::default()),
                    }
                }
                4 => {
                    let groups = gen_groups(&mut r);
                    let g = r.below(groups.len());
                    engine.apply(vec![groups[g].clone()])
                }
                5 => {
                    // Replace an existing policy.
                    let key = engine.policies().nth(r.below(4)).map(|p| p.key.clone());
                    match key {
                        Some(_) if r.chance(30) => engine.remove(vec![crate::compile::ObjectKey::Policy(key.unwrap())]),
                        _ => {
                            next_policy += 1;
                            let p = gen_policy(&mut r, next_policy);
                            engine.apply(vec![Object::Policy(p)])
                        }
                    }
                }
                6 => engine.apply(vec![Object::Tier(Tier {
                    name: "custom".into(),
                    priority: *r.pick(&[20, 120, 220]),
                    source: Source::default(),
                })]),
                _ => {
                    next_policy += 1;
                    let p = gen_policy(&mut r, next_policy);
                    let mut objs = vec![Object::Policy(p)];
                    if r.chance(30) {
                        objs.extend(gen_groups(&mut r));
                    }
                    engine.apply(objs)
                }
            };
            // Errors are fine (e.g. a group removed while in use): the engine is unchanged.
            let _ = result;
        }
        let mut fresh = rebuild(&engine, inventory_first);
        prop_assert_eq!(all_verdicts(&mut engine), all_verdicts(&mut fresh));
        check_against_reference(&mut engine);
        // Handles of removed endpoints are stale, live ones resolve.
        let snap = engine.snapshot();
        for h in handles {
            if let Some(v) = snap.endpoint_by_handle(h) {
                prop_assert_eq!(v.handle(), h);
            }
        }
    }
}

#[test]
fn moving_a_vm_changes_no_table() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s(
        "x",
        "a-from-yb",
        &[("pod", "a")],
        &[In],
        vec![ingress(Action::Allow).peers(vec![sel(in_ns("y", &[("pod", "b")]))])],
    )]);
    let before = lab.engine.snapshot();
    let key = EndpointKey {
        namespace: "y".into(),
        name: "b".into(),
    };
    let mut moved = lab.engine.endpoint(&key).unwrap().clone();
    moved.ips = vec!["10.9.9.9".parse().unwrap()];
    lab.engine.upsert_endpoint(moved).unwrap();
    let after = lab.engine.snapshot();
    assert_ne!(before.generation(), after.generation());
    for ep in before.endpoints() {
        let now = after.endpoint(&ep.endpoint().key()).unwrap();
        assert!(ep.same_tables(&now), "{} was rebuilt", ep.endpoint().key());
    }
    // The rule follows the VM to its new address.
    lab.check(&[
        ("10.9.9.9", "x/a", Tcp, 80, A),
        ("10.0.2.2", "x/a", Tcp, 80, D),
    ]);
    assert_eq!(
        after.identity_of("10.0.2.2".parse().unwrap()),
        crate::identity::Identity::WORLD
    );
}

#[test]
fn one_policy_change_rebuilds_only_its_identities() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        k8s("x", "xa", &[("pod", "a")], &[In], vec![]),
        k8s("y", "yb", &[("pod", "b")], &[In], vec![]),
    ]);
    let before = lab.engine.snapshot();
    let report = lab
        .engine
        .apply(vec![Object::Policy(k8s(
            "x",
            "xa",
            &[("pod", "a")],
            &[In],
            vec![ingress(Action::Allow).ports(vec![tcp(22)])],
        ))])
        .unwrap();
    assert_eq!((report.updated, report.recomputed_identities), (1, 1));
    let after = lab.engine.snapshot();
    for ep in before.endpoints() {
        let key = ep.endpoint().key();
        let now = after.endpoint(&key).unwrap();
        assert_eq!(ep.same_tables(&now), key.to_string() != "x/a", "{key}");
    }
    // Re-applying the same policy is a no-op.
    let report = lab
        .engine
        .apply(vec![Object::Policy(
            lab.engine
                .policy(&PolicyKey {
                    kind: PolicyKind::KubernetesNetworkPolicy,
                    namespace: Some("x".into()),
                    name: "xa".into(),
                })
                .unwrap()
                .clone(),
        )])
        .unwrap();
    assert_eq!((report.unchanged, report.recomputed_identities), (1, 0));
}

#[test]
fn relabeling_moves_an_endpoint_between_identities_and_decide_uses_handles() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s("x", "iso-web", &[("role", "web")], &[In], vec![])]);
    let key = EndpointKey {
        namespace: "x".into(),
        name: "b".into(),
    };
    let old_id = lab.engine.endpoint_identity(&key).unwrap();
    let mut e = lab.engine.endpoint(&key).unwrap().clone();
    e.labels.insert("role".into(), "web".into());
    let h = lab.engine.upsert_endpoint(e).unwrap();
    let new_id = lab.engine.endpoint_identity(&key).unwrap();
    assert_ne!(old_id, new_id);
    assert!(
        lab.engine.identity_key(old_id).is_none(),
        "unused identity released"
    );
    let snap = lab.engine.snapshot();
    let q = lab.query("y/a", "x/b", Tcp, 80);
    let d = snap.decide(h, In, &q).unwrap();
    assert_eq!(d.effective(), D);
    // Egress of y/a is not isolated.
    let ya = snap.endpoint_by_ip(q.src).unwrap().handle();
    assert_eq!(snap.decide(ya, Eg, &q).unwrap().by, DecidedBy::DefaultAllow);
    // A removed endpoint's handle goes stale, even if its slot is reused.
    lab.engine.remove_endpoint(&key).unwrap();
    lab.engine
        .upsert_endpoint(ep("x", "new", EndpointKind::Vm, "10.0.1.50", &[]))
        .unwrap();
    let snap = lab.engine.snapshot();
    assert!(snap.decide(h, In, &q).is_none());
}

use Direction::{Egress as Eg, Ingress as In};

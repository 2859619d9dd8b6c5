//! Engine tests: builders, a lab harness that cross-checks every verdict against the naive
//! reference evaluator, truth tables, and property tests.

mod prop;
mod truth;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use super::reference::{self, RefBy};
use super::{DecidedBy, Decision, Engine, EngineConfig, FlowAction, FlowQuery};
use crate::flow::IpProtocol;
use crate::model::*;

pub(crate) fn labels(p: &[(&str, &str)]) -> Labels {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn ls(p: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(p),
        match_expressions: vec![],
    }
}

pub(crate) fn in_ns(ns: &str, p: &[(&str, &str)]) -> EndpointSelector {
    EndpointSelector {
        namespaces: NamespaceScope::Named(ns.into()),
        labels: ls(p),
        kinds: KindFilter::Any,
    }
}

pub(crate) fn anywhere(p: &[(&str, &str)]) -> EndpointSelector {
    EndpointSelector {
        namespaces: NamespaceScope::Any,
        labels: ls(p),
        kinds: KindFilter::Any,
    }
}

pub(crate) fn ns_and(ns_p: &[(&str, &str)], p: &[(&str, &str)]) -> EndpointSelector {
    EndpointSelector {
        namespaces: NamespaceScope::Selector(ls(ns_p)),
        labels: ls(p),
        kinds: KindFilter::Any,
    }
}

pub(crate) fn same_ns(p: &[(&str, &str)]) -> EndpointSelector {
    EndpointSelector {
        namespaces: NamespaceScope::SameAsAppliedTo,
        labels: ls(p),
        kinds: KindFilter::Any,
    }
}

pub(crate) fn vm_only(mut s: EndpointSelector) -> EndpointSelector {
    s.kinds = KindFilter::VmOnly;
    s
}

pub(crate) fn ep(
    ns: &str,
    name: &str,
    kind: EndpointKind,
    ip: &str,
    l: &[(&str, &str)],
) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: ns.into(),
        kind,
        labels: labels(l),
        ips: vec![ip.parse().unwrap()],
        mac: None,
        named_ports: BTreeMap::new(),
    }
}

pub(crate) fn port(protocol: ProtocolMatch, p: Option<PortSpec>) -> PortMatch {
    PortMatch {
        protocol,
        port: p,
        source_ports: None,
    }
}
pub(crate) fn tcp(p: u16) -> PortMatch {
    port(
        ProtocolMatch::Tcp,
        Some(PortSpec::Range(PortRange::single(p))),
    )
}
pub(crate) fn udp(p: u16) -> PortMatch {
    port(
        ProtocolMatch::Udp,
        Some(PortSpec::Range(PortRange::single(p))),
    )
}
pub(crate) fn tcp_range(a: u16, b: u16) -> PortMatch {
    port(
        ProtocolMatch::Tcp,
        Some(PortSpec::Range(PortRange { start: a, end: b })),
    )
}
pub(crate) fn named_tcp(n: &str) -> PortMatch {
    port(ProtocolMatch::Tcp, Some(PortSpec::Named(n.into())))
}
pub(crate) fn icmp(t: Option<u8>, c: Option<u8>) -> PortMatch {
    port(
        ProtocolMatch::Icmp {
            v6: false,
            icmp_type: t,
            icmp_code: c,
        },
        None,
    )
}

pub(crate) fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    })
}
pub(crate) fn sel(s: EndpointSelector) -> Peer {
    Peer::Endpoints(s)
}
pub(crate) fn group(name: &str) -> Peer {
    Peer::Group(GroupKey {
        namespace: None,
        name: name.into(),
    })
}

/// A rule under construction.
#[derive(Clone)]
pub(crate) struct R(pub Rule);

pub(crate) fn rule(direction: Direction, action: Action) -> R {
    R(Rule {
        id: RuleId(0),
        name: String::new(),
        direction,
        action,
        peers: Peers::Any,
        ports: vec![],
        applied_to: None,
        enable_logging: false,
        log_label: None,
        unenforced: vec![],
    })
}
pub(crate) fn ingress(a: Action) -> R {
    rule(Direction::Ingress, a)
}
pub(crate) fn egress(a: Action) -> R {
    rule(Direction::Egress, a)
}

impl R {
    pub fn peers(mut self, p: Vec<Peer>) -> Self {
        self.0.peers = Peers::List(p);
        self
    }
    pub fn ports(mut self, p: Vec<PortMatch>) -> Self {
        self.0.ports = p;
        self
    }
    pub fn applied(mut self, a: Vec<AppliedTo>) -> Self {
        self.0.applied_to = Some(a);
        self
    }
    pub fn name(mut self, n: &str) -> Self {
        self.0.name = n.into();
        self
    }
    pub fn log(mut self, label: &str) -> Self {
        self.0.enable_logging = true;
        self.0.log_label = Some(label.into());
        self
    }
}

fn finish(
    key: PolicyKey,
    layer: Layer,
    applied_to: Vec<AppliedTo>,
    isolates: Vec<Direction>,
    rules: Vec<R>,
) -> Policy {
    let rules = rules
        .into_iter()
        .enumerate()
        .map(|(i, R(mut r))| {
            if r.name.is_empty() {
                r.name = format!("{:?}-{i}", r.direction).to_lowercase();
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (key.to_string(), i, &r.name).hash(&mut h);
            r.id = RuleId(h.finish());
            r
        })
        .collect();
    Policy {
        key,
        layer,
        applied_to,
        isolates,
        subject_isolation: Vec::new(),
        rules,
        audit: false,
        source: Source::default(),
    }
}

/// Kubernetes NetworkPolicy: podSelector in its namespace, `types` = policyTypes.
pub(crate) fn k8s(
    ns: &str,
    name: &str,
    pod: &[(&str, &str)],
    types: &[Direction],
    rules: Vec<R>,
) -> Policy {
    finish(
        PolicyKey {
            kind: PolicyKind::KubernetesNetworkPolicy,
            namespace: Some(ns.into()),
            name: name.into(),
        },
        Layer::Kubernetes,
        vec![AppliedTo::Endpoints(in_ns(ns, pod))],
        types.to_vec(),
        rules,
    )
}

fn antrea_layer(tier: &str, prio: f64) -> Layer {
    if tier == "baseline" {
        Layer::AntreaBaseline {
            policy_priority: prio,
        }
    } else {
        Layer::AntreaTier {
            tier: tier.into(),
            // Placeholder on purpose: the engine resolves tier priorities by name.
            tier_priority: 0,
            policy_priority: prio,
        }
    }
}

/// Antrea ClusterNetworkPolicy.
pub(crate) fn acnp(
    name: &str,
    tier: &str,
    prio: f64,
    applied: Vec<AppliedTo>,
    rules: Vec<R>,
) -> Policy {
    finish(
        PolicyKey {
            kind: PolicyKind::AntreaClusterNetworkPolicy,
            namespace: None,
            name: name.into(),
        },
        antrea_layer(tier, prio),
        applied,
        vec![],
        rules,
    )
}

/// Cilium NetworkPolicy (namespaced); `isolates` = directions with rules.
pub(crate) fn cnp(
    ns: &str,
    name: &str,
    selector: EndpointSelector,
    isolates: &[Direction],
    rules: Vec<R>,
) -> Policy {
    finish(
        PolicyKey {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some(ns.into()),
            name: name.into(),
        },
        Layer::Kubernetes,
        vec![AppliedTo::Endpoints(selector)],
        isolates.to_vec(),
        rules,
    )
}

pub(crate) fn applied(s: EndpointSelector) -> Vec<AppliedTo> {
    vec![AppliedTo::Endpoints(s)]
}

pub(crate) fn cluster_group(
    name: &str,
    selector: Option<EndpointSelector>,
    blocks: &[&str],
    children: &[&str],
) -> Group {
    Group {
        key: GroupKey {
            namespace: None,
            name: name.into(),
        },
        selector,
        ip_blocks: blocks
            .iter()
            .map(|b| IpBlock {
                cidr: b.parse().unwrap(),
                except: vec![],
            })
            .collect(),
        child_groups: children
            .iter()
            .map(|c| GroupKey {
                namespace: None,
                name: c.to_string(),
            })
            .collect(),
        service: None,
        source: Source::default(),
    }
}

pub(crate) use FlowAction::{Allow as A, Drop as D, Reject as J};
pub(crate) use IpProtocol::{Sctp, Tcp, Udp};

/// An engine plus name → address resolution, checking every verdict against the reference.
pub(crate) struct Lab {
    pub engine: Engine,
}

impl Lab {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            engine: Engine::new(config),
        }
    }

    /// The Cyclonus inventory: namespaces x, y, z (label `ns`), endpoints a, b, c in each
    /// (label `pod`), a and c VMs, b a pod; x/a declares the named port `serve-80-tcp`.
    pub fn cyclonus(config: EngineConfig) -> Self {
        let mut lab = Self::new(config);
        for (n, ns) in ["x", "y", "z"].iter().enumerate() {
            lab.engine.upsert_namespace(Namespace {
                name: ns.to_string(),
                labels: labels(&[("ns", ns)]),
            });
            for (m, pod) in ["a", "b", "c"].iter().enumerate() {
                let kind = if *pod == "b" {
                    EndpointKind::Pod
                } else {
                    EndpointKind::Vm
                };
                let mut e = ep(
                    ns,
                    pod,
                    kind,
                    &format!("10.0.{}.{}", n + 1, m + 1),
                    &[("pod", pod)],
                );
                if *ns == "x" && *pod == "a" {
                    e.named_ports.insert(
                        "serve-80-tcp".into(),
                        NamedPort {
                            port: 80,
                            protocol: IpProtocol::Tcp,
                        },
                    );
                }
                lab.engine.upsert_endpoint(e).unwrap();
            }
        }
        lab
    }

    pub fn pods() -> Vec<String> {
        let mut v = Vec::new();
        for ns in ["x", "y", "z"] {
            for p in ["a", "b", "c"] {
                v.push(format!("{ns}/{p}"));
            }
        }
        v
    }

    pub fn apply(&mut self, objs: Vec<Object>) {
        self.engine.apply(objs).unwrap();
    }

    pub fn policies(&mut self, ps: Vec<Policy>) {
        self.apply(ps.into_iter().map(Object::Policy).collect());
    }

    pub fn ip(&self, name: &str) -> IpAddr {
        if let Ok(ip) = name.parse() {
            return ip;
        }
        let (ns, n) = name.split_once('/').unwrap();
        let key = EndpointKey {
            namespace: ns.into(),
            name: n.into(),
        };
        self.engine.endpoint(&key).unwrap().ips[0]
    }

    pub fn query(&self, src: &str, dst: &str, proto: IpProtocol, port: u16) -> FlowQuery {
        let (s, d) = (self.ip(src), self.ip(dst));
        if proto.is_icmp() {
            FlowQuery::icmp(s, d, 8, 0)
        } else {
            FlowQuery::new(s, d, proto, 40000, port)
        }
    }

    /// The verdict's action, after checking both directions against the reference.
    pub fn verdict(&mut self, src: &str, dst: &str, proto: IpProtocol, port: u16) -> FlowAction {
        let q = self.query(src, dst, proto, port);
        let snap = self.engine.snapshot();
        let v = snap.evaluate(&q);
        let mut expected = None;
        for (dir, got, ip) in [
            (Direction::Egress, v.egress, q.src),
            (Direction::Ingress, v.ingress, q.dst),
        ] {
            let local = self
                .engine
                .endpoints()
                .find(|e| e.ips.contains(&ip))
                .cloned();
            match (local, got) {
                (Some(local), Some(got)) => {
                    let r = reference::decide(&self.engine, &local, dir, &q);
                    assert_same(&got, &r, &format!("{src} -> {dst} {proto}/{port} {dir:?}"));
                    if expected.is_none() && r.effective() != FlowAction::Allow {
                        expected = Some(r.effective());
                    }
                }
                (None, None) => {}
                (l, g) => panic!("{dir:?}: endpoint {l:?} but decision {g:?}"),
            }
        }
        if v.egress.is_some() || v.ingress.is_some() {
            assert_eq!(v.action, expected.unwrap_or(FlowAction::Allow));
        }
        v.action
    }

    /// Assert a table of `(src, dst, protocol, port, expected)`; report every mismatch.
    pub fn check(&mut self, cases: &[(&str, &str, IpProtocol, u16, FlowAction)]) {
        let mut bad = Vec::new();
        for (s, d, p, port, want) in cases {
            let got = self.verdict(s, d, *p, *port);
            if got != *want {
                bad.push(format!("{s} -> {d} {p}/{port}: want {want:?}, got {got:?}"));
            }
        }
        assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    }

    /// The Kubernetes-e2e style matrix: every ordered pair of distinct endpoints × ports ×
    /// protocols, against `expect`.
    pub fn matrix(
        &mut self,
        ports: &[u16],
        protos: &[IpProtocol],
        expect: impl Fn(&str, &str, IpProtocol, u16) -> FlowAction,
    ) {
        let mut bad = Vec::new();
        let mut n = 0;
        for s in Self::pods() {
            for d in Self::pods() {
                if s == d {
                    continue; // loopback never crosses the switch
                }
                for p in protos {
                    for port in ports {
                        n += 1;
                        let want = expect(&s, &d, *p, *port);
                        let got = self.verdict(&s, &d, *p, *port);
                        if got != want {
                            bad.push(format!("{s} -> {d} {p}/{port}: want {want:?}, got {got:?}"));
                        }
                    }
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {n} cases wrong:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}

/// The classifier's decision and the reference's must agree on action, audit, and what
/// decided (policy + rule index, or the default).
pub(crate) fn assert_same(got: &Decision<'_>, want: &reference::RefDecision, ctx: &str) {
    let by = match got.by {
        DecidedBy::Rule(r) => RefBy::Rule(r.policy.key.clone(), r.rule_index),
        DecidedBy::Isolation(p) => RefBy::Isolation(p.key.clone()),
        DecidedBy::DefaultAllow => RefBy::DefaultAllow,
        DecidedBy::DefaultDeny => RefBy::DefaultDeny,
    };
    let passed = got.passed_by.map(|r| (r.policy.key.clone(), r.rule_index));
    assert_eq!(
        (got.action, got.audit, &by, &passed),
        (want.action, want.audit, &want.by, &want.passed),
        "{ctx}: classifier vs reference"
    );
}

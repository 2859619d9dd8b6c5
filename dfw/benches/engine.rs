//! Engine benchmarks: new-flow verdicts against growing rule sets, full compile, and an
//! incremental one-policy update.
//!
//! The synthetic policy set imitates a real cluster: applications of 5 identical replicas
//! spread over 20 namespaces (so identities = endpoints / 5); many small per-application
//! policies (Kubernetes NetworkPolicies, Antrea policies in several tiers including a custom
//! one, Cilium policies with deny rules) whose peers are other applications, tiers or
//! teams' namespaces, a few CIDR rules and named ports; plus a fixed handful of
//! cluster-wide and baseline policies. Run: `cargo bench -p dfw --bench engine`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use dfw::compile::{Engine, EngineConfig, FlowQuery};
use dfw::flow::IpProtocol;
use dfw::model::*;

const NAMESPACES: usize = 20;
const REPLICAS: usize = 5;
const COMMON_PORTS: [u16; 12] = [
    22, 53, 80, 443, 3306, 5432, 6379, 8080, 8443, 9090, 9200, 27017,
];
const TIERS: [&str; 4] = ["securityops", "platform", "application", "custom"];
const TIERS_VALUES: [&str; 3] = ["web", "api", "db"];

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
}

fn labels(p: &[(&str, String)]) -> Labels {
    p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn ls(p: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(p),
        match_expressions: vec![],
    }
}

fn ns_name(i: usize) -> String {
    format!("ns{i}")
}

fn app_ns(app: usize) -> usize {
    app % NAMESPACES
}

fn endpoint_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0001u32 + i as u32))
}

fn inventory(endpoints: usize) -> (Vec<Namespace>, Vec<Endpoint>) {
    let namespaces = (0..NAMESPACES)
        .map(|i| Namespace {
            name: ns_name(i),
            labels: labels(&[
                ("team", format!("t{}", i % 5)),
                ("env", ["prod", "staging", "dev"][i % 3].to_string()),
            ]),
        })
        .collect();
    let eps = (0..endpoints)
        .map(|i| {
            let app = i / REPLICAS;
            let tier = TIERS_VALUES[app % 3];
            let mut named_ports = BTreeMap::new();
            if tier == "web" {
                named_ports.insert(
                    "http".to_string(),
                    NamedPort {
                        port: 8080,
                        protocol: IpProtocol::Tcp,
                    },
                );
            }
            Endpoint {
                name: format!("vm{i}"),
                namespace: ns_name(app_ns(app)),
                kind: if app.is_multiple_of(2) {
                    EndpointKind::Vm
                } else {
                    EndpointKind::Pod
                },
                labels: labels(&[("app", format!("app{app}")), ("tier", tier.to_string())]),
                ips: vec![endpoint_ip(i)],
                mac: None,
                named_ports,
            }
        })
        .collect();
    (namespaces, eps)
}

fn rule(
    id: u64,
    direction: Direction,
    action: Action,
    peers: Peers,
    ports: Vec<PortMatch>,
) -> Rule {
    Rule {
        id: RuleId(id),
        name: format!("r{id}"),
        direction,
        action,
        peers,
        ports,
        applied_to: None,
        enable_logging: false,
        log_label: None,
        unenforced: vec![],
    }
}

fn tcp(port: u16) -> PortMatch {
    PortMatch {
        protocol: ProtocolMatch::Tcp,
        port: Some(PortSpec::Range(PortRange::single(port))),
        source_ports: None,
    }
}

struct Gen {
    rng: Rng,
    apps: usize,
    next_rule: u64,
}

impl Gen {
    fn peer(&mut self, ns: Option<usize>) -> Peer {
        let r = self.rng.below(100);
        let namespaces = match ns {
            Some(n) => NamespaceScope::Named(ns_name(n)),
            None => NamespaceScope::Any,
        };
        if r < 60 {
            // Another application (same namespace for namespaced policies).
            let app = match ns {
                Some(n) => n + NAMESPACES * self.rng.below(self.apps / NAMESPACES),
                None => self.rng.below(self.apps),
            };
            Peer::Endpoints(EndpointSelector {
                namespaces,
                labels: ls(&[("app", format!("app{app}"))]),
                kinds: KindFilter::Any,
            })
        } else if r < 75 {
            Peer::Endpoints(EndpointSelector {
                namespaces,
                labels: ls(&[("tier", TIERS_VALUES[self.rng.below(3)].to_string())]),
                kinds: KindFilter::Any,
            })
        } else if r < 90 {
            Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Selector(ls(&[(
                    "team",
                    format!("t{}", self.rng.below(5)),
                )])),
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            })
        } else {
            let a = self.rng.below(256) as u8;
            let b = self.rng.below(256) as u8;
            let (cidr, except) = if self.rng.below(2) == 0 {
                (format!("192.168.{a}.0/24"), vec![])
            } else {
                (
                    format!("172.{}.0.0/16", 16 + a % 16),
                    vec![format!("172.{}.{b}.0/24", 16 + a % 16).parse().unwrap()],
                )
            };
            Peer::IpBlock(IpBlock {
                cidr: cidr.parse().unwrap(),
                except,
            })
        }
    }

    fn ports(&mut self) -> Vec<PortMatch> {
        match self.rng.below(10) {
            0 => vec![],
            1 => vec![PortMatch {
                protocol: ProtocolMatch::Tcp,
                port: Some(PortSpec::Range(PortRange {
                    start: 8000,
                    end: 8100,
                })),
                source_ports: None,
            }],
            2 => vec![PortMatch {
                protocol: ProtocolMatch::Tcp,
                port: Some(PortSpec::Named("http".into())),
                source_ports: None,
            }],
            3 => vec![
                tcp(COMMON_PORTS[self.rng.below(12)]),
                tcp(COMMON_PORTS[self.rng.below(12)]),
            ],
            _ => vec![tcp(COMMON_PORTS[self.rng.below(12)])],
        }
    }

    fn rules(&mut self, n: usize, ns: Option<usize>, actions: &[Action]) -> Vec<Rule> {
        (0..n)
            .map(|_| {
                self.next_rule += 1;
                let dir = if self.rng.below(3) == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let action = actions[self.rng.below(actions.len())];
                let peers = Peers::List(vec![self.peer(ns)]);
                let ports = self.ports();
                rule(self.next_rule, dir, action, peers, ports)
            })
            .collect()
    }

    /// One per-application policy of a random flavour.
    fn policy(&mut self, i: usize) -> Policy {
        let app = self.rng.below(self.apps);
        let ns = app_ns(app);
        let nrules = 2 + self.rng.below(4);
        let app_sel = |namespaces| {
            vec![AppliedTo::Endpoints(EndpointSelector {
                namespaces,
                labels: ls(&[("app", format!("app{app}"))]),
                kinds: KindFilter::Any,
            })]
        };
        let source = Source::default();
        match self.rng.below(10) {
            0..=4 => Policy {
                key: PolicyKey {
                    kind: PolicyKind::KubernetesNetworkPolicy,
                    namespace: Some(ns_name(ns)),
                    name: format!("np{i}"),
                },
                layer: Layer::Kubernetes,
                applied_to: app_sel(NamespaceScope::Named(ns_name(ns))),
                isolates: vec![Direction::Ingress],
                subject_isolation: vec![],
                rules: self.rules(nrules, Some(ns), &[Action::Allow]),
                audit: false,
                source,
            },
            5..=7 => Policy {
                key: PolicyKey {
                    kind: PolicyKind::AntreaClusterNetworkPolicy,
                    namespace: None,
                    name: format!("acnp{i}"),
                },
                layer: Layer::AntreaTier {
                    tier: TIERS[self.rng.below(4)].to_string(),
                    tier_priority: 0,
                    policy_priority: self.rng.below(1000) as f64,
                },
                applied_to: app_sel(NamespaceScope::Any),
                isolates: vec![],
                subject_isolation: vec![],
                rules: self.rules(
                    nrules,
                    None,
                    &[Action::Allow, Action::Drop, Action::Drop, Action::Pass],
                ),
                audit: false,
                source,
            },
            _ => Policy {
                key: PolicyKey {
                    kind: PolicyKind::CiliumNetworkPolicy,
                    namespace: Some(ns_name(ns)),
                    name: format!("cnp{i}"),
                },
                layer: Layer::Kubernetes,
                applied_to: app_sel(NamespaceScope::Named(ns_name(ns))),
                isolates: vec![Direction::Ingress, Direction::Egress],
                subject_isolation: vec![],
                rules: self.rules(
                    nrules,
                    Some(ns),
                    &[Action::Allow, Action::Allow, Action::Drop],
                ),
                audit: false,
                source,
            },
        }
    }
}

/// A fixed handful of cluster-wide and baseline policies.
fn cluster_wide(next_rule: &mut u64) -> Vec<Policy> {
    let mut id = || {
        *next_rule += 1;
        *next_rule
    };
    let everyone = vec![AppliedTo::Endpoints(EndpointSelector {
        namespaces: NamespaceScope::Any,
        labels: LabelSelector::everything(),
        kinds: KindFilter::Any,
    })];
    let mut out = vec![Policy {
        key: PolicyKey {
            kind: PolicyKind::AntreaClusterNetworkPolicy,
            namespace: None,
            name: "block-metadata".into(),
        },
        layer: Layer::AntreaTier {
            tier: "securityops".into(),
            tier_priority: 0,
            policy_priority: 1.0,
        },
        applied_to: everyone.clone(),
        isolates: vec![],
        subject_isolation: vec![],
        rules: vec![rule(
            id(),
            Direction::Egress,
            Action::Drop,
            Peers::List(vec![Peer::IpBlock(IpBlock {
                cidr: "169.254.169.254/32".parse().unwrap(),
                except: vec![],
            })]),
            vec![],
        )],
        audit: false,
        source: Source::default(),
    }];
    for n in 0..NAMESPACES {
        out.push(Policy {
            key: PolicyKey {
                kind: PolicyKind::AntreaClusterNetworkPolicy,
                namespace: None,
                name: format!("baseline-ns{n}"),
            },
            layer: Layer::AntreaBaseline {
                policy_priority: n as f64,
            },
            applied_to: vec![AppliedTo::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Named(ns_name(n)),
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            })],
            isolates: vec![],
            subject_isolation: vec![],
            rules: vec![
                rule(
                    id(),
                    Direction::Ingress,
                    Action::Allow,
                    Peers::List(vec![Peer::Endpoints(EndpointSelector {
                        namespaces: NamespaceScope::SameAsAppliedTo,
                        labels: LabelSelector::everything(),
                        kinds: KindFilter::Any,
                    })]),
                    vec![],
                ),
                rule(id(), Direction::Ingress, Action::Drop, Peers::Any, vec![]),
            ],
            audit: false,
            source: Source::default(),
        });
    }
    out
}

/// Objects with about `rules` rules in total (at least the cluster-wide ones).
fn objects(rules: usize, endpoints: usize, seed: u64) -> Vec<Object> {
    let mut g = Gen {
        rng: Rng(seed),
        apps: endpoints / REPLICAS,
        next_rule: 0,
    };
    let mut objs = vec![Object::Tier(Tier {
        name: "custom".into(),
        priority: 120,
        source: Source::default(),
    })];
    let base = cluster_wide(&mut g.next_rule);
    let mut count: usize = base.iter().map(|p| p.rules.len()).sum();
    objs.extend(base.into_iter().map(Object::Policy));
    let mut i = 0;
    while count < rules {
        let mut p = g.policy(i);
        p.rules.truncate(rules - count);
        count += p.rules.len();
        objs.push(Object::Policy(p));
        i += 1;
    }
    objs
}

fn build(endpoints: usize, objs: Vec<Object>) -> Engine {
    let (namespaces, eps) = inventory(endpoints);
    let mut e = Engine::new(EngineConfig::default());
    for ns in namespaces {
        e.upsert_namespace(ns);
    }
    for ep in eps {
        e.upsert_endpoint(ep).expect("unique addresses");
    }
    e.apply(objs).expect("valid policy set");
    e
}

fn queries(endpoints: usize, n: usize) -> Vec<FlowQuery> {
    let mut rng = Rng(7);
    (0..n)
        .map(|i| {
            let dst = endpoint_ip(rng.below(endpoints));
            let src = if i.is_multiple_of(8) {
                IpAddr::V4(Ipv4Addr::new(192, 168, rng.below(256) as u8, 7))
            } else {
                endpoint_ip(rng.below(endpoints))
            };
            let port = if i.is_multiple_of(4) {
                8080
            } else {
                COMMON_PORTS[rng.below(12)]
            };
            FlowQuery::tcp(src, dst, 40000 + (i % 1000) as u16, port)
        })
        .collect()
}

fn verdict(c: &mut Criterion) {
    let mut group = c.benchmark_group("verdict");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for endpoints in [1_000, 10_000] {
        for rules in [10, 1_000, 10_000, 100_000] {
            let mut engine = build(endpoints, objects(rules, endpoints, 1));
            let snap = engine.snapshot();
            let qs = queries(endpoints, 4096);
            let mut i = 0;
            group.bench_with_input(
                BenchmarkId::new(format!("{endpoints}ep"), rules),
                &rules,
                |b, _| {
                    b.iter(|| {
                        i = (i + 1) & 4095;
                        black_box(snap.evaluate(&qs[i]).action)
                    })
                },
            );
        }
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10))
        .sample_size(10);
    let objs = objects(10_000, 10_000, 1);
    group.bench_function("10k_rules_10k_endpoints", |b| {
        b.iter_batched(
            || objs.clone(),
            |objs| {
                let mut e = build(10_000, objs);
                black_box(e.snapshot())
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn incremental(c: &mut Criterion) {
    let mut group = c.benchmark_group("incremental");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let objs = objects(10_000, 10_000, 1);
    let mut engine = build(10_000, objs.clone());
    // One per-application policy, and a variant with one port changed.
    let original = objs
        .iter()
        .find_map(|o| match o {
            Object::Policy(p) if p.key.kind == PolicyKind::KubernetesNetworkPolicy => {
                Some(p.clone())
            }
            _ => None,
        })
        .expect("a K8s policy");
    let mut changed = original.clone();
    changed.rules[0].ports = vec![tcp(12345)];
    let versions = [original, changed];
    let mut flip = 0;
    // The vswitch keeps the previous snapshot alive while the new one is built.
    let mut held = engine.snapshot();
    group.bench_function("update_one_policy_10k_rules_10k_endpoints", |b| {
        b.iter(|| {
            flip ^= 1;
            engine
                .apply(vec![Object::Policy(versions[flip].clone())])
                .expect("valid");
            held = engine.snapshot();
            black_box(held.generation())
        })
    });
    let mut ip = 0u32;
    group.bench_function("move_one_vm_10k_rules_10k_endpoints", |b| {
        let key = EndpointKey {
            namespace: ns_name(0),
            name: "vm0".into(),
        };
        let mut ep = engine.endpoint(&key).expect("vm0").clone();
        b.iter(|| {
            ip += 1;
            ep.ips = vec![IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + ip))];
            engine.upsert_endpoint(ep.clone()).expect("free address");
            held = engine.snapshot();
            black_box(held.generation())
        })
    });
    group.finish();
}

criterion_group!(benches, verdict, compile, incremental);
criterion_main!(benches);

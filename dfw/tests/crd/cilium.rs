use dfw::crd::ErrorKind;
use dfw::model::{
    Action, AppliedTo, Direction, EndpointSelector, Entity, IpBlock, KindFilter, LabelSelector,
    Layer, NamespaceScope, Object, Peer, Peers, PolicyKind, PortRange, PortSpec, ProtocolMatch,
    SelectorOperator, SubjectIsolation, CILIUM_NAMESPACE_LABEL,
};

use crate::{err, expr, parse, policy, sel};

fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: cnp\n  namespace: pay\nspec:\n  endpointSelector: {{matchLabels: {{app: api}}}}\n{spec}"
    )
}

fn ccnp(spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: ccnp\nspec:\n  endpointSelector: {{matchLabels: {{'k8s:app': api}}}}\n{spec}"
    )
}

fn in_ns(labels: LabelSelector) -> Peer {
    Peer::Endpoints(EndpointSelector {
        namespaces: NamespaceScope::Named("pay".into()),
        labels,
        kinds: KindFilter::Any,
    })
}

fn anywhere(labels: LabelSelector) -> Peer {
    Peer::Endpoints(EndpointSelector {
        namespaces: NamespaceScope::Any,
        labels,
        kinds: KindFilter::Any,
    })
}

#[test]
fn namespaced_and_clusterwide_subjects() {
    let p = policy(&cnp(
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: gw}}]\n",
    ));
    assert_eq!(p.key.kind, PolicyKind::CiliumNetworkPolicy);
    assert_eq!(p.layer, Layer::Kubernetes);
    assert_eq!(
        p.applied_to,
        vec![AppliedTo::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Named("pay".into()),
            labels: sel(&[("app", "api")]),
            kinds: KindFilter::Any,
        })]
    );
    assert_eq!(p.isolates, vec![Direction::Ingress]);
    assert_eq!(p.rules[0].name, "ingress-0");
    assert_eq!(p.rules[0].action, Action::Allow);
    assert_eq!(
        p.rules[0].peers,
        Peers::List(vec![in_ns(sel(&[("app", "gw")]))])
    );

    let p = policy(&ccnp(
        "  egress:\n    - toEndpoints: [{matchLabels: {app: db}}]\n",
    ));
    assert_eq!(p.key.kind, PolicyKind::CiliumClusterwideNetworkPolicy);
    assert_eq!(p.key.namespace, None);
    assert_eq!(
        p.applied_to,
        vec![AppliedTo::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Any,
            labels: sel(&[("app", "api")]),
            kinds: KindFilter::Any,
        })]
    );
    assert_eq!(p.isolates, vec![Direction::Egress]);
    assert_eq!(
        p.rules[0].peers,
        Peers::List(vec![anywhere(sel(&[("app", "db")]))])
    );
}

/// Endpoint selector forms in a namespaced policy → model peers.
#[test]
fn selector_translation_table() {
    let cases: Vec<(&str, Peer)> = vec![
        ("{}", in_ns(LabelSelector::everything())),
        ("{matchLabels: {'k8s:app': gw}}", in_ns(sel(&[("app", "gw")]))),
        ("{matchLabels: {'any:app': gw}}", in_ns(sel(&[("app", "gw")]))),
        (
            "{matchLabels: {'k8s:io.kubernetes.pod.namespace': edge, app: gw}}",
            anywhere(sel(&[(CILIUM_NAMESPACE_LABEL, "edge"), ("app", "gw")])),
        ),
        (
            "{matchExpressions: [{key: 'k8s:io.kubernetes.pod.namespace', operator: In, values: [a, b]}]}",
            anywhere(LabelSelector {
                match_labels: Default::default(),
                match_expressions: vec![expr(CILIUM_NAMESPACE_LABEL, SelectorOperator::In, &["a", "b"])],
            }),
        ),
        (
            "{matchLabels: {'io.cilium.k8s.namespace.labels.team': pay}}",
            in_ns(sel(&[("io.cilium.k8s.namespace.labels.team", "pay")])),
        ),
        ("{matchLabels: {'reserved:host': ''}}", Peer::Entity(Entity::Host)),
        ("{matchLabels: {'reserved:world': ''}}", Peer::Entity(Entity::World)),
    ];
    for (selector, expected) in cases {
        let p = policy(&cnp(&format!(
            "  ingress:\n    - fromEndpoints: [{selector}]\n"
        )));
        assert_eq!(
            p.rules[0].peers,
            Peers::List(vec![expected]),
            "selector: {selector}"
        );
    }
}

#[test]
fn peer_fields_are_ored_and_empty_rules_match_nothing() {
    let p = policy(&cnp("  egress:\n    - toEndpoints: [{matchLabels: {app: db}}]\n      toCIDR: [192.0.2.1, 198.51.100.0/24]\n      toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]\n      toEntities: [world, host, kube-apiserver, none]\n"));
    assert_eq!(
        p.rules[0].peers,
        Peers::List(vec![
            in_ns(sel(&[("app", "db")])),
            Peer::IpBlock(IpBlock {
                cidr: "192.0.2.1/32".parse().unwrap(),
                except: vec![]
            }),
            Peer::IpBlock(IpBlock {
                cidr: "198.51.100.0/24".parse().unwrap(),
                except: vec![]
            }),
            Peer::IpBlock(IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.96.0.0/12".parse().unwrap()]
            }),
            Peer::Entity(Entity::World),
            Peer::Entity(Entity::Host),
        ])
    );
    // {} : the default-deny idiom, matches nothing but isolates.
    let p = policy(&cnp("  ingress:\n    - {}\n"));
    assert_eq!(p.rules[0].peers, Peers::List(vec![]));
    assert_eq!(p.isolates, vec![Direction::Ingress]);
    // L4 only: every peer.
    let p = policy(&cnp(
        "  ingress:\n    - toPorts: [{ports: [{port: '80'}]}]\n",
    ));
    assert_eq!(p.rules[0].peers, Peers::Any);
    let p = policy(&cnp("  ingress:\n    - icmps: [{fields: [{type: 8}]}]\n"));
    assert_eq!(p.rules[0].peers, Peers::Any);
    // Empty lists count as absent.
    let p = policy(&cnp(
        "  ingress:\n    - fromEndpoints: []\n      toPorts: [{ports: [{port: '80'}]}]\n",
    ));
    assert_eq!(p.rules[0].peers, Peers::Any);
    let entities = policy(&ccnp(
        "  ingress:\n    - fromEntities: [all, cluster, remote-node]\n",
    ));
    assert_eq!(
        entities.rules[0].peers,
        Peers::List(vec![
            Peer::Entity(Entity::All),
            Peer::Entity(Entity::Cluster),
            Peer::Entity(Entity::RemoteNode)
        ])
    );
}

#[test]
fn deny_rules_and_default_deny() {
    let p = policy(&cnp("  ingressDeny:\n    - fromEntities: [world]\n  egressDeny:\n    - toPorts: [{ports: [{port: '22', protocol: TCP}]}]\n"));
    let summary: Vec<_> = p
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.direction, r.action))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ingressDeny-0", Direction::Ingress, Action::Drop),
            ("egressDeny-0", Direction::Egress, Action::Drop),
        ]
    );
    assert_eq!(p.isolates, vec![Direction::Ingress, Direction::Egress]);
    let p = policy(&cnp(
        "  enableDefaultDeny: {ingress: false}\n  ingress:\n    - fromEntities: [world]\n",
    ));
    assert!(p.isolates.is_empty());
    let p = policy(&cnp(
        "  enableDefaultDeny: {egress: true}\n  ingress:\n    - fromEntities: [world]\n",
    ));
    assert_eq!(p.isolates, vec![Direction::Ingress, Direction::Egress]);
    let p = policy(&cnp(""));
    assert!(p.isolates.is_empty());
    assert!(p.rules.is_empty());
}

#[test]
fn ports_and_icmp() {
    let p = policy(&cnp("  ingress:\n    - toPorts:\n        - ports:\n            - {port: '80', protocol: TCP}\n            - {port: 53, protocol: UDP}\n            - {port: http}\n            - {port: '8000', endPort: 8080, protocol: SCTP}\n            - {port: '0', protocol: TCP}\n      icmps:\n        - fields: [{type: EchoRequest}, {type: 128, family: IPv6}, {type: EchoReply, family: IPv6}]\n"));
    let ports: Vec<_> = p.rules[0]
        .ports
        .iter()
        .map(|m| (m.protocol, m.port.clone()))
        .collect();
    let icmp = |v6, t| ProtocolMatch::Icmp {
        v6,
        icmp_type: Some(t),
        icmp_code: None,
    };
    assert_eq!(
        ports,
        vec![
            (
                ProtocolMatch::Tcp,
                Some(PortSpec::Range(PortRange::single(80)))
            ),
            (
                ProtocolMatch::Udp,
                Some(PortSpec::Range(PortRange::single(53)))
            ),
            (ProtocolMatch::Any, Some(PortSpec::Named("http".into()))),
            (
                ProtocolMatch::Sctp,
                Some(PortSpec::Range(PortRange {
                    start: 8000,
                    end: 8080
                }))
            ),
            (ProtocolMatch::Tcp, None),
            (icmp(false, 8), None),
            (icmp(true, 128), None),
            (icmp(true, 129), None),
        ]
    );
}

#[test]
fn l7_and_other_unenforced_fields() {
    let parsed = parse(&cnp("  egress:\n    - toEndpoints: [{}]\n      toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n          rules:\n            http: [{method: GET, path: /api}]\n    - toFQDNs: [{matchName: example.com}]\n      toPorts: [{ports: [{port: '443'}]}]\n    - toRequires: [{matchLabels: {env: prod}}]\n      toEntities: [world]\n"));
    let Object::Policy(p) = &parsed.objects[0] else {
        panic!()
    };
    // L7: the L4 part stays.
    assert_eq!(p.rules[0].ports.len(), 1);
    assert_eq!(p.rules[0].unenforced[0].field, "toPorts[0].rules");
    assert!(p.rules[0].unenforced[0].value.contains("GET"));
    // toFQDNs is a peer field: the rule matches no peer, not every peer.
    assert_eq!(p.rules[1].peers, Peers::List(vec![]));
    assert_eq!(p.rules[1].unenforced[0].field, "toFQDNs");
    assert_eq!(
        p.rules[2].peers,
        Peers::List(vec![Peer::Entity(Entity::World)])
    );
    assert_eq!(p.rules[2].unenforced[0].field, "toRequires");
    assert_eq!(parsed.warnings.len(), 3, "{:#?}", parsed.warnings);
    assert!(
        parsed.warnings[0]
            .message
            .starts_with("spec.egress[0].toPorts[0].rules (line 12)"),
        "{}",
        parsed.warnings[0].message
    );
}

#[test]
fn multiple_specs() {
    // Same subject: one policy-level appliedTo.
    let p = policy("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: m, namespace: pay}\nspecs:\n  - endpointSelector: {matchLabels: {app: a}}\n    ingress: [{fromEntities: [world]}]\n  - endpointSelector: {matchLabels: {app: a}}\n    egress: [{toEntities: [world]}]\n");
    assert_eq!(p.applied_to.len(), 1);
    assert_eq!(p.isolates, vec![Direction::Ingress, Direction::Egress]);
    assert!(p.rules.iter().all(|r| r.applied_to.is_none()));
    assert_eq!(p.rules[0].name, "spec0-ingress-0");
    assert_eq!(p.rules[1].name, "spec1-egress-0");
    // Different subjects: rules carry their spec's subject.
    let p = policy("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: m, namespace: pay}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress: [{fromEntities: [world]}]\nspecs:\n  - endpointSelector: {matchLabels: {app: b}}\n    egress: [{toEntities: [world]}]\n");
    assert!(p.applied_to.is_empty());
    assert!(p.isolates.is_empty());
    let selector = |app: &str| {
        vec![AppliedTo::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Named("pay".into()),
            labels: sel(&[("app", app)]),
            kinds: KindFilter::Any,
        })]
    };
    assert_eq!(p.rules[0].applied_to, Some(selector("a")));
    assert_eq!(p.rules[1].applied_to, Some(selector("b")));
    // Each subject is isolated in its own spec's directions only.
    assert_eq!(
        p.subject_isolation,
        vec![
            SubjectIsolation {
                applied_to: selector("a"),
                directions: vec![Direction::Ingress],
            },
            SubjectIsolation {
                applied_to: selector("b"),
                directions: vec![Direction::Egress],
            },
        ]
    );
    // enableDefaultDeny is per spec: a's ingress rules do not isolate it, b's absent egress
    // rules do; specs with equal subjects merge; a spec isolating nothing is not listed.
    let p = policy("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: m, namespace: pay}\nspecs:\n  - endpointSelector: {matchLabels: {app: a}}\n    ingress: [{fromEntities: [world]}]\n    enableDefaultDeny: {ingress: false}\n  - endpointSelector: {matchLabels: {app: b}}\n    ingress: [{}]\n  - endpointSelector: {matchLabels: {app: b}}\n    enableDefaultDeny: {egress: true}\n");
    assert_eq!(
        p.subject_isolation,
        vec![SubjectIsolation {
            applied_to: selector("b"),
            directions: vec![Direction::Ingress, Direction::Egress],
        }]
    );
    assert_eq!(p.rules.len(), 2);
}

#[test]
fn log_value_becomes_log_label() {
    let p = policy(&cnp("  log: {value: pay-audit}\n  ingress: [{}]\n"));
    assert_eq!(p.rules[0].log_label.as_deref(), Some("pay-audit"));
}

#[test]
fn validation_errors() {
    let cases: Vec<(String, &str, ErrorKind)> = vec![
        (
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {}\n".into(),
            "spec.nodeSelector",
            ErrorKind::Unsupported,
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: h}\nspec:\n  ingress: []\n".into(),
            "spec.endpointSelector",
            ErrorKind::MissingField,
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: h}\n".into(),
            "spec",
            ErrorKind::MissingField,
        ),
        (cnp("  ingress: [{fromEntities: [everything]}]\n"), "spec.ingress[0].fromEntities[0]", ErrorKind::InvalidValue),
        (cnp("  ingress: [{fromEntities: [world-ipv4]}]\n"), "spec.ingress[0].fromEntities[0]", ErrorKind::Unsupported),
        (cnp("  ingress: [{icmps: [{fields: [{type: 8, family: IPv5}]}]}]\n"), "spec.ingress[0].icmps[0].fields[0].family", ErrorKind::InvalidValue),
        (cnp("  ingress: [{icmps: [{fields: [{type: PacketTooBig}]}]}]\n"), "spec.ingress[0].icmps[0].fields[0].type", ErrorKind::InvalidValue),
        (cnp("  ingress: [{icmps: [{fields: [{type: 256}]}]}]\n"), "spec.ingress[0].icmps[0].fields[0].type", ErrorKind::InvalidValue),
        (
            cnp("  ingressDeny: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]\n"),
            "spec.ingressDeny[0].toPorts[0].rules",
            ErrorKind::UnknownField,
        ),
        (cnp("  egressDeny: [{toFQDNs: [{matchName: a.com}]}]\n"), "spec.egressDeny[0].toFQDNs", ErrorKind::UnknownField),
        (cnp("  ingress: [{fromEndpoints: [{matchLabels: {'cidr:10.0.0.0/8': ''}}]}]\n"), "spec.ingress[0].fromEndpoints[0].matchLabels[\"cidr:10.0.0.0/8\"]", ErrorKind::Unsupported),
        (cnp("  ingress: [{fromEndpoints: [{matchLabels: {'k8s:app': a, app: b}}]}]\n"), "spec.ingress[0].fromEndpoints[0].matchLabels[\"k8s:app\"]", ErrorKind::Conflict),
        (cnp("  ingress: [{fromCIDRSet: [{cidrGroupRef: corp}]}]\n"), "spec.ingress[0].fromCIDRSet[0].cidrGroupRef", ErrorKind::Unsupported),
        (cnp("  ingress: [{fromCIDRSet: [{cidr: 10.0.0.0/16, except: [10.1.0.0/24]}]}]\n"), "spec.ingress[0].fromCIDRSet[0].except[0]", ErrorKind::InvalidValue),
        (cnp("  ingress: [{toPorts: [{ports: [{port: '80', protocol: tcp}]}]}]\n"), "spec.ingress[0].toPorts[0].ports[0].protocol", ErrorKind::InvalidValue),
        (cnp("  ingress: [{toPorts: [{ports: [{port: '443', endPort: 80}]}]}]\n"), "spec.ingress[0].toPorts[0].ports[0].endPort", ErrorKind::InvalidValue),
        (cnp("  ingress: [{toPorts: [{ports: [{port: '99999'}]}]}]\n"), "spec.ingress[0].toPorts[0].ports[0].port", ErrorKind::InvalidValue),
        (cnp("  ingress: [{toPorts: [{ports: [{endPort: 80}]}]}]\n"), "spec.ingress[0].toPorts[0].ports[0].port", ErrorKind::MissingField),
        (cnp("  ingress: [{fromEndpoint: [{}]}]\n"), "spec.ingress[0].fromEndpoint", ErrorKind::UnknownField),
        (cnp("  ingres: []\n"), "spec.ingres", ErrorKind::UnknownField),
    ];
    for (text, path, kind) in cases {
        let e = err(&text);
        assert_eq!(e.path, path, "{e}\n{text}");
        assert_eq!(e.kind, kind, "{e}\n{text}");
    }
}

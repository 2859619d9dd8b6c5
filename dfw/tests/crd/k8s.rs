use dfw::crd::ErrorKind;
use dfw::model::{
    Action, AppliedTo, Direction, EndpointSelector, IpBlock, KindFilter, LabelSelector, Layer,
    NamespaceScope, Peer, Peers, PolicyKind, PortMatch, PortRange, PortSpec, ProtocolMatch,
    SelectorOperator,
};

use crate::{err, expr, parse, policy, sel};

fn np(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: pay\nspec:\n{spec}"
    )
}

#[test]
fn basic_policy_translation() {
    let p = policy(&np("  podSelector:\n    matchLabels: {app: api}\n  ingress:\n    - from:\n        - podSelector: {matchLabels: {app: gw}}\n      ports:\n        - port: 8080\n"));
    assert_eq!(p.key.kind, PolicyKind::KubernetesNetworkPolicy);
    assert_eq!(p.key.namespace.as_deref(), Some("pay"));
    assert_eq!(p.key.name, "np");
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
    assert!(!p.audit);
    assert_eq!(p.source.file, "test.yaml");
    assert_eq!(p.source.line, 1);
    assert_eq!(p.rules.len(), 1);
    let r = &p.rules[0];
    assert_eq!(r.name, "ingress-0");
    assert_eq!(r.direction, Direction::Ingress);
    assert_eq!(r.action, Action::Allow);
    assert_eq!(
        r.peers,
        Peers::List(vec![Peer::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Named("pay".into()),
            labels: sel(&[("app", "gw")]),
            kinds: KindFilter::Any,
        })])
    );
    assert_eq!(
        r.ports,
        vec![PortMatch {
            protocol: ProtocolMatch::Tcp,
            port: Some(PortSpec::Range(PortRange::single(8080))),
            source_ports: None,
        }]
    );
    assert!(r.applied_to.is_none());
    assert!(r.unenforced.is_empty());
}

#[test]
fn policy_types_default_like_the_api_server() {
    let iso = |spec: &str| policy(&np(spec)).isolates;
    assert_eq!(iso("  podSelector: {}\n"), vec![Direction::Ingress]);
    assert_eq!(
        iso("  podSelector: {}\n  egress:\n    - {}\n"),
        vec![Direction::Ingress, Direction::Egress]
    );
    // An empty egress list does not add Egress (len(spec.Egress) != 0 upstream).
    assert_eq!(
        iso("  podSelector: {}\n  egress: []\n"),
        vec![Direction::Ingress]
    );
    assert_eq!(
        iso("  podSelector: {}\n  policyTypes: [Egress]\n"),
        vec![Direction::Egress]
    );
    assert_eq!(
        iso("  podSelector: {}\n  policyTypes: []\n"),
        vec![Direction::Ingress]
    );
    // No spec at all: isolate ingress of the whole namespace.
    let p = policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: pay}\n");
    assert_eq!(p.isolates, vec![Direction::Ingress]);
    assert!(p.rules.is_empty());
    assert_eq!(
        p.applied_to,
        vec![AppliedTo::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Named("pay".into()),
            labels: LabelSelector::everything(),
            kinds: KindFilter::Any,
        })]
    );
}

#[test]
fn rules_outside_policy_types_are_dropped_with_a_warning() {
    let parsed = parse(&np(
        "  podSelector: {}\n  policyTypes: [Egress]\n  ingress:\n    - {}\n  egress:\n    - {}\n",
    ));
    let dfw::model::Object::Policy(p) = &parsed.objects[0] else {
        panic!()
    };
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].direction, Direction::Egress);
    assert_eq!(parsed.warnings.len(), 1);
    assert!(
        parsed.warnings[0].message.contains("spec.ingress"),
        "{:?}",
        parsed.warnings
    );
}

/// Table of peer forms → model peers.
#[test]
fn peer_translation_table() {
    let cases: Vec<(&str, Peers)> = vec![
        ("    - {}\n", Peers::Any),
        ("    - from: []\n", Peers::Any),
        ("    - ports: [{port: 80}]\n", Peers::Any),
        (
            "    - from: [{podSelector: {}}]\n",
            Peers::List(vec![Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Named("pay".into()),
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            })]),
        ),
        (
            "    - from: [{namespaceSelector: {matchLabels: {team: edge}}}]\n",
            Peers::List(vec![Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Selector(sel(&[("team", "edge")])),
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            })]),
        ),
        (
            "    - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: gw}}}]\n",
            Peers::List(vec![Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Selector(LabelSelector::everything()),
                labels: sel(&[("app", "gw")]),
                kinds: KindFilter::Any,
            })]),
        ),
        (
            "    - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {podSelector: {matchExpressions: [{key: tier, operator: In, values: [web, api]}]}}]\n",
            Peers::List(vec![
                Peer::IpBlock(IpBlock {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    except: vec!["10.1.0.0/16".parse().unwrap()],
                }),
                Peer::Endpoints(EndpointSelector {
                    namespaces: NamespaceScope::Named("pay".into()),
                    labels: LabelSelector {
                        match_labels: Default::default(),
                        match_expressions: vec![expr(
                            "tier",
                            SelectorOperator::In,
                            &["api", "web"],
                        )],
                    },
                    kinds: KindFilter::Any,
                }),
            ]),
        ),
    ];
    for (rules, expected) in cases {
        let p = policy(&np(&format!("  podSelector: {{}}\n  ingress:\n{rules}")));
        assert_eq!(p.rules[0].peers, expected, "rules: {rules}");
    }
}

#[test]
fn port_forms() {
    let p = policy(&np("  podSelector: {}\n  egress:\n    - ports:\n        - {port: http}\n        - {protocol: UDP, port: 53}\n        - {protocol: SCTP}\n        - {port: 30000, endPort: 32767}\n"));
    let ports: Vec<_> = p.rules[0]
        .ports
        .iter()
        .map(|m| (m.protocol, m.port.clone()))
        .collect();
    assert_eq!(
        ports,
        vec![
            (ProtocolMatch::Tcp, Some(PortSpec::Named("http".into()))),
            (
                ProtocolMatch::Udp,
                Some(PortSpec::Range(PortRange::single(53)))
            ),
            (ProtocolMatch::Sctp, None),
            (
                ProtocolMatch::Tcp,
                Some(PortSpec::Range(PortRange {
                    start: 30000,
                    end: 32767
                }))
            ),
        ]
    );
}

#[test]
fn namespace_defaults_to_default() {
    let p = policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {podSelector: {}}\n");
    assert_eq!(p.key.namespace.as_deref(), Some("default"));
}

#[test]
fn audit_annotation() {
    let p = policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  annotations:\n    vdfw.io/audit: \"true\"\n");
    assert!(p.audit);
    let e = err("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  annotations:\n    vdfw.io/audit: \"yes\"\n");
    assert_eq!(e.path, "metadata.annotations[\"vdfw.io/audit\"]");
    assert_eq!(e.line, 6);
}

#[test]
fn invalid_values_are_located() {
    let cases: &[(&str, &str, usize, ErrorKind)] = &[
        (
            "  podSelector: {}\n  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.0/8}\n          podSelector: {}\n",
            "spec.ingress[0].from[0].ipBlock",
            10,
            ErrorKind::Conflict,
        ),
        (
            "  podSelector: {}\n  ingress:\n    - from:\n        - {}\n",
            "spec.ingress[0].from[0]",
            10,
            ErrorKind::MissingField,
        ),
        (
            "  podSelector: {}\n  ingress:\n    - ports:\n        - {protocol: tcp}\n",
            "spec.ingress[0].ports[0].protocol",
            10,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector: {}\n  ingress:\n    - ports:\n        - port: 443\n          endPort: 80\n",
            "spec.ingress[0].ports[0].endPort",
            11,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector: {}\n  ingress:\n    - ports:\n        - port: 70000\n",
            "spec.ingress[0].ports[0].port",
            10,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector: {}\n  ingress:\n    - ports:\n        - port: \"80\"\n",
            "spec.ingress[0].ports[0].port",
            10,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector: {}\n  egress:\n    - to:\n        - ipBlock: {cidr: 10.0.0.0/33}\n",
            "spec.egress[0].to[0].ipBlock.cidr",
            10,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector: {}\n  egress:\n    - to:\n        - ipBlock:\n            cidr: 10.0.0.0/16\n            except: [192.168.0.0/24]\n",
            "spec.egress[0].to[0].ipBlock.except[0]",
            12,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector:\n    matchExpressions:\n      - {key: app, operator: Equals, values: [a]}\n",
            "spec.podSelector.matchExpressions[0].operator",
            9,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector:\n    matchExpressions:\n      - {key: app, operator: Exists, values: [a]}\n",
            "spec.podSelector.matchExpressions[0].values",
            9,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector:\n    matchExpressions:\n      - {key: app, operator: In}\n",
            "spec.podSelector.matchExpressions[0].values",
            9,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector:\n    matchLabels: {app: 'a b'}\n",
            "spec.podSelector.matchLabels.app",
            8,
            ErrorKind::InvalidValue,
        ),
        (
            "  policyTypes: [Ingress, Sideways]\n",
            "spec.policyTypes[1]",
            7,
            ErrorKind::InvalidValue,
        ),
        (
            "  podSelector: {}\n  ingress:\n    - from:\n        - podSelecter: {}\n",
            "spec.ingress[0].from[0].podSelecter",
            10,
            ErrorKind::UnknownField,
        ),
    ];
    for (spec, path, line, kind) in cases {
        let e = err(&np(spec));
        assert_eq!(&e.path, path, "{e}");
        assert_eq!(e.line, *line, "{e}");
        assert_eq!(e.kind, *kind, "{e}");
        assert_eq!(e.file, "test.yaml");
        assert_eq!(e.document, 0);
    }
}

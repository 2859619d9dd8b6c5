use dfw::crd::{parse_documents_with, parse_files, ErrorKind, ParseOptions};
use dfw::model::{
    Action, AppliedTo, Direction, EndpointSelector, GroupKey, IpBlock, KindFilter, LabelSelector,
    Layer, NamespaceScope, Object, Peer, Peers, PolicyKind, PortRange, PortSpec, ProtocolMatch,
    ServiceKey, Tier,
};

use crate::{err, parse, policy, sel};

fn acnp(spec: &str) -> String {
    format!(
        "apiVersion: crd.antrea.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata:\n  name: cnp\nspec:\n{spec}"
    )
}

fn annp(spec: &str) -> String {
    format!(
        "apiVersion: crd.antrea.io/v1beta1\nkind: NetworkPolicy\nmetadata:\n  name: anp\n  namespace: pay\nspec:\n{spec}"
    )
}

const APPLIED: &str = "  priority: 5\n  appliedTo:\n    - podSelector: {matchLabels: {app: api}}\n";

#[test]
fn tiers_map_to_layers() {
    let layer = |tier: &str| {
        policy(&acnp(&format!(
            "  tier: {tier}\n{APPLIED}  ingress:\n    - action: Drop\n"
        )))
        .layer
    };
    assert_eq!(
        layer("securityops"),
        Layer::AntreaTier {
            tier: "securityops".into(),
            tier_priority: 100,
            policy_priority: 5.0
        }
    );
    assert_eq!(
        layer("Emergency"),
        Layer::AntreaTier {
            tier: "emergency".into(),
            tier_priority: 50,
            policy_priority: 5.0
        }
    );
    assert_eq!(
        layer("baseline"),
        Layer::AntreaBaseline {
            policy_priority: 5.0
        }
    );
    let p = policy(&acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n")));
    assert_eq!(
        p.layer,
        Layer::AntreaTier {
            tier: "application".into(),
            tier_priority: 250,
            policy_priority: 5.0
        }
    );
    assert!(p.isolates.is_empty(), "Antrea policies isolate nothing");
    let p = policy(&acnp("  priority: 2.5\n  appliedTo: [{podSelector: {}}]\n"));
    assert_eq!(
        p.layer,
        Layer::AntreaTier {
            tier: "application".into(),
            tier_priority: 250,
            policy_priority: 2.5
        }
    );
}

#[test]
fn rules_actions_names_logging() {
    let p = policy(&annp(&format!(
        "{APPLIED}  ingress:\n    - name: allow-gw\n      action: Allow\n      from: [{{podSelector: {{matchLabels: {{app: gw}}}}}}]\n    - action: Reject\n      enableLogging: true\n      logLabel: nope\n  egress:\n    - action: Pass\n    - action: Drop\n"
    )));
    assert_eq!(p.key.kind, PolicyKind::AntreaNetworkPolicy);
    let summary: Vec<_> = p
        .rules
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.direction,
                r.action,
                r.enable_logging,
                r.log_label.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("allow-gw", Direction::Ingress, Action::Allow, false, None),
            (
                "ingress-1",
                Direction::Ingress,
                Action::Reject,
                true,
                Some("nope")
            ),
            ("egress-0", Direction::Egress, Action::Pass, false, None),
            ("egress-1", Direction::Egress, Action::Drop, false, None),
        ]
    );
    // A namespaced policy's bare podSelector stays in its namespace.
    assert_eq!(
        p.rules[0].peers,
        Peers::List(vec![Peer::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Named("pay".into()),
            labels: sel(&[("app", "gw")]),
            kinds: KindFilter::Any,
        })])
    );
    assert_eq!(p.rules[1].peers, Peers::Any);
    assert_eq!(
        p.applied_to,
        vec![AppliedTo::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Named("pay".into()),
            labels: sel(&[("app", "api")]),
            kinds: KindFilter::Any,
        })]
    );
}

/// ACNP peer forms → model peers.
#[test]
fn cluster_peer_translation_table() {
    let any_ns = |labels: LabelSelector, kinds| {
        Peer::Endpoints(EndpointSelector {
            namespaces: NamespaceScope::Any,
            labels,
            kinds,
        })
    };
    let cases: Vec<(&str, Peer)> = vec![
        (
            "{podSelector: {matchLabels: {app: gw}}}",
            any_ns(sel(&[("app", "gw")]), KindFilter::Any),
        ),
        (
            "{externalEntitySelector: {matchLabels: {app: vm}}}",
            any_ns(sel(&[("app", "vm")]), KindFilter::VmOnly),
        ),
        (
            "{namespaceSelector: {matchLabels: {team: a}}}",
            Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Selector(sel(&[("team", "a")])),
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            }),
        ),
        (
            "{namespaceSelector: {}, externalEntitySelector: {matchLabels: {os: linux}}}",
            Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Selector(LabelSelector::everything()),
                labels: sel(&[("os", "linux")]),
                kinds: KindFilter::VmOnly,
            }),
        ),
        (
            "{namespaces: {match: Self}, podSelector: {matchLabels: {app: gw}}}",
            Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::SameAsAppliedTo,
                labels: sel(&[("app", "gw")]),
                kinds: KindFilter::Any,
            }),
        ),
        (
            "{namespaces: {match: Self}}",
            Peer::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::SameAsAppliedTo,
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            }),
        ),
        (
            "{ipBlock: {cidr: 192.168.1.7/24}}",
            Peer::IpBlock(IpBlock {
                cidr: "192.168.1.0/24".parse().unwrap(),
                except: vec![],
            }),
        ),
        (
            "{group: admins}",
            Peer::Group(GroupKey {
                namespace: None,
                name: "admins".into(),
            }),
        ),
    ];
    for (peer, expected) in cases {
        let p = policy(&acnp(&format!(
            "{APPLIED}  ingress:\n    - action: Allow\n      from: [{peer}]\n"
        )));
        assert_eq!(
            p.rules[0].peers,
            Peers::List(vec![expected]),
            "peer: {peer}"
        );
    }
    // In a namespaced policy, group names a Group of the policy's namespace.
    let p = policy(&annp(&format!(
        "{APPLIED}  egress:\n    - action: Allow\n      to: [{{group: dbs}}]\n"
    )));
    assert_eq!(
        p.rules[0].peers,
        Peers::List(vec![Peer::Group(GroupKey {
            namespace: Some("pay".into()),
            name: "dbs".into()
        })])
    );
}

#[test]
fn applied_to_forms() {
    let p = policy(&acnp("  priority: 1\n  appliedTo:\n    - podSelector: {matchLabels: {app: a}}\n    - externalEntitySelector: {}\n    - group: g\n    - namespaceSelector: {matchLabels: {team: x}}\n"));
    assert_eq!(
        p.applied_to,
        vec![
            AppliedTo::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Any,
                labels: sel(&[("app", "a")]),
                kinds: KindFilter::Any,
            }),
            AppliedTo::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Any,
                labels: LabelSelector::everything(),
                kinds: KindFilter::VmOnly,
            }),
            AppliedTo::Group(GroupKey {
                namespace: None,
                name: "g".into()
            }),
            AppliedTo::Endpoints(EndpointSelector {
                namespaces: NamespaceScope::Selector(sel(&[("team", "x")])),
                labels: LabelSelector::everything(),
                kinds: KindFilter::Any,
            }),
        ]
    );
    // Per-rule appliedTo.
    let p = policy(&acnp("  priority: 1\n  ingress:\n    - action: Drop\n      appliedTo: [{podSelector: {matchLabels: {app: a}}}]\n  egress:\n    - action: Drop\n      appliedTo: [{group: g}]\n"));
    assert!(p.applied_to.is_empty());
    assert_eq!(
        p.rules[1].applied_to,
        Some(vec![AppliedTo::Group(GroupKey {
            namespace: None,
            name: "g".into()
        })])
    );
}

#[test]
fn ports_and_protocols() {
    let p = policy(&acnp(&format!("{APPLIED}  egress:\n    - action: Allow\n      ports:\n        - {{protocol: UDP, port: 53, sourcePort: 1024, sourceEndPort: 65535}}\n        - {{port: https}}\n      protocols:\n        - icmp: {{icmpType: 8, icmpCode: 0}}\n        - icmp: {{}}\n")));
    let ports = &p.rules[0].ports;
    assert_eq!(ports.len(), 4);
    assert_eq!(ports[0].protocol, ProtocolMatch::Udp);
    assert_eq!(ports[0].port, Some(PortSpec::Range(PortRange::single(53))));
    assert_eq!(
        ports[0].source_ports,
        Some(PortRange {
            start: 1024,
            end: 65535
        })
    );
    assert_eq!(ports[1].port, Some(PortSpec::Named("https".into())));
    assert_eq!(
        ports[2].protocol,
        ProtocolMatch::Icmp {
            v6: false,
            icmp_type: Some(8),
            icmp_code: Some(0)
        }
    );
    assert_eq!(
        ports[3].protocol,
        ProtocolMatch::Icmp {
            v6: false,
            icmp_type: None,
            icmp_code: None
        }
    );
    let parsed = parse(&acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      protocols:\n        - igmp: {{igmpType: 0x11, groupAddress: 224.0.0.1}}\n")));
    let Object::Policy(p) = &parsed.objects[0] else {
        panic!()
    };
    assert_eq!(p.rules[0].ports[0].protocol, ProtocolMatch::Number(2));
    assert_eq!(p.rules[0].unenforced.len(), 1);
    assert_eq!(parsed.warnings.len(), 1);
}

#[test]
fn unenforced_peers_match_nothing_not_everything() {
    let parsed = parse(&acnp(&format!("{APPLIED}  egress:\n    - action: Allow\n      to: [{{fqdn: '*.example.com'}}]\n    - action: Drop\n      to: [{{fqdn: db.example.com}}, {{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    - action: Allow\n      toServices: [{{name: web, namespace: pay}}]\n    - action: Allow\n      l7Protocols: [{{http: {{path: /api}}}}]\n      ports: [{{port: 80}}]\n  ingress:\n    - action: Allow\n      from: [{{serviceAccount: {{name: sa, namespace: pay}}}}, {{nodeSelector: {{}}}}]\n")));
    let Object::Policy(p) = &parsed.objects[0] else {
        panic!()
    };
    let egress: Vec<_> = p
        .rules
        .iter()
        .filter(|r| r.direction == Direction::Egress)
        .collect();
    assert_eq!(egress[0].peers, Peers::List(vec![]));
    assert_eq!(egress[0].unenforced[0].field, "to[0].fqdn");
    assert_eq!(egress[0].unenforced[0].value, "\"*.example.com\"");
    assert_eq!(
        egress[1].peers.clone(),
        Peers::List(vec![Peer::IpBlock(IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec![]
        })])
    );
    assert_eq!(egress[2].peers, Peers::List(vec![]));
    assert_eq!(egress[2].unenforced[0].field, "toServices");
    // L7: the L3/L4 part stays enforced.
    assert_eq!(egress[3].peers, Peers::Any);
    assert_eq!(egress[3].ports.len(), 1);
    assert_eq!(egress[3].unenforced[0].field, "l7Protocols");
    let ingress = p
        .rules
        .iter()
        .find(|r| r.direction == Direction::Ingress)
        .unwrap();
    assert_eq!(ingress.peers, Peers::List(vec![]));
    assert_eq!(ingress.unenforced.len(), 2);
    assert_eq!(parsed.warnings.len(), 6, "{:#?}", parsed.warnings);
    assert!(parsed
        .warnings
        .iter()
        .all(|w| w.message.contains("not enforced")));
}

#[test]
fn custom_tiers_resolve_within_the_set_or_from_known_tiers() {
    let tier = "apiVersion: crd.antrea.io/v1beta1\nkind: Tier\nmetadata: {name: mytier}\nspec: {priority: 20}\n";
    let pol = acnp(&format!("  tier: mytier\n{APPLIED}"));
    // Policy before its Tier in the same file.
    let parsed = parse(&format!("{pol}---\n{tier}"));
    let Object::Policy(p) = &parsed.objects[0] else {
        panic!()
    };
    assert_eq!(
        p.layer,
        Layer::AntreaTier {
            tier: "mytier".into(),
            tier_priority: 20,
            policy_priority: 5.0
        }
    );
    let Object::Tier(t) = &parsed.objects[1] else {
        panic!()
    };
    assert_eq!((t.name.as_str(), t.priority), ("mytier", 20));
    // Across files of one set.
    let parsed = parse_files(
        &[("a.yaml", &pol), ("b.yaml", tier)],
        &ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(parsed.objects.len(), 2);
    // From an earlier apply.
    let known = [Tier {
        name: "mytier".into(),
        priority: 30,
        source: Default::default(),
    }];
    let parsed =
        parse_documents_with(&pol, "p.yaml", &ParseOptions::with_known_tiers(&known)).unwrap();
    let Object::Policy(p) = &parsed.objects[0] else {
        panic!()
    };
    assert!(matches!(
        p.layer,
        Layer::AntreaTier {
            tier_priority: 30,
            ..
        }
    ));
    // Unknown.
    let e = err(&pol);
    assert_eq!(e.kind, ErrorKind::UnknownReference);
    assert_eq!(e.path, "spec.tier");
    assert_eq!(e.line, 6);
    // Re-declaring a known tier with another priority.
    let e =
        parse_documents_with(tier, "t.yaml", &ParseOptions::with_known_tiers(&known)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.path, "metadata.name");
}

#[test]
fn tier_validation() {
    let tier = |name: &str, prio: &str| {
        format!("apiVersion: crd.antrea.io/v1beta1\nkind: Tier\nmetadata: {{name: {name}}}\nspec:\n  priority: {prio}\n")
    };
    assert_eq!(err(&tier("t", "256")).path, "spec.priority");
    assert_eq!(err(&tier("t", "-1")).path, "spec.priority");
    assert!(err(&tier("t", "251")).message.contains("reserved"));
    assert!(err(&tier("t", "100")).message.contains("securityops"));
    assert!(err(&tier("securityops", "101"))
        .message
        .contains("cannot be changed"));
    // A static tier re-declared unchanged (kubectl get -o yaml output) adds nothing.
    let parsed = parse(&tier("securityops", "100"));
    assert!(parsed.objects.is_empty());
    assert_eq!(parsed.warnings.len(), 1);
    // Two tiers with one priority.
    let e = err(&format!("{}---\n{}", tier("a", "10"), tier("b", "10")));
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.document, 1);
    assert!(e.message.contains("tier a"), "{e}");
    // v1alpha1 is still served.
    let parsed = parse(&tier("t", "7").replace("v1beta1", "v1alpha1"));
    assert_eq!(parsed.objects.len(), 1);
}

#[test]
fn groups() {
    let cg = |spec: &str| {
        format!("apiVersion: crd.antrea.io/v1beta1\nkind: ClusterGroup\nmetadata: {{name: g}}\nspec:\n{spec}")
    };
    let group = |text: &str| match parse(text).objects.into_iter().next() {
        Some(Object::Group(g)) => g,
        other => panic!("{other:?}"),
    };
    let g = group(&cg("  podSelector: {matchLabels: {app: a}}\n"));
    assert_eq!(
        g.key,
        GroupKey {
            namespace: None,
            name: "g".into()
        }
    );
    assert_eq!(
        g.selector,
        Some(EndpointSelector {
            namespaces: NamespaceScope::Any,
            labels: sel(&[("app", "a")]),
            kinds: KindFilter::Any
        })
    );
    let g = group(&cg(
        "  namespaceSelector: {matchLabels: {team: pay}}\n  externalEntitySelector: {}\n",
    ));
    assert_eq!(
        g.selector,
        Some(EndpointSelector {
            namespaces: NamespaceScope::Selector(sel(&[("team", "pay")])),
            labels: LabelSelector::everything(),
            kinds: KindFilter::VmOnly
        })
    );
    let g = group(&cg(
        "  ipBlocks: [{cidr: 10.0.0.0/24}, {cidr: 'fd00::/64'}]\n",
    ));
    assert_eq!(g.selector, None);
    assert_eq!(g.ip_blocks.len(), 2);
    let g = group(&cg("  childGroups: [a, b]\n"));
    assert_eq!(
        g.child_groups,
        vec![
            GroupKey {
                namespace: None,
                name: "a".into()
            },
            GroupKey {
                namespace: None,
                name: "b".into()
            }
        ]
    );
    // serviceReference: the Service's key, resolved by the engine; no warning.
    let parsed = parse(&cg("  serviceReference: {name: web, namespace: pay}\n"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let Some(Object::Group(g)) = parsed.objects.into_iter().next() else {
        panic!("not a group")
    };
    assert_eq!(
        g.service,
        Some(ServiceKey {
            namespace: "pay".into(),
            name: "web".into()
        })
    );
    assert_eq!(g.selector, None);
    // A ClusterGroup must name the Service's namespace.
    let e = err(&cg("  serviceReference: {name: web}\n"));
    assert_eq!(e.kind, ErrorKind::MissingField);
    assert_eq!(e.path, "spec.serviceReference.namespace");
    let e = err(&cg(
        "  serviceReference: {name: web, namespace: pay, port: 80}\n",
    ));
    assert_eq!(e.kind, ErrorKind::UnknownField);
    // A Group's Service is in the Group's namespace.
    let ns_group = |r: &str| {
        format!("apiVersion: crd.antrea.io/v1beta1\nkind: Group\nmetadata: {{name: g, namespace: pay}}\nspec:\n  serviceReference: {r}\n")
    };
    assert_eq!(
        group(&ns_group("{name: web}")).service,
        Some(ServiceKey {
            namespace: "pay".into(),
            name: "web".into()
        })
    );
    let e = err(&ns_group("{name: web, namespace: other}"));
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.path, "spec.serviceReference.namespace");
    let e = err(&cg(
        "  serviceReference: {name: web, namespace: pay}\n  podSelector: {}\n",
    ));
    assert_eq!(e.kind, ErrorKind::Conflict);
    // Combinations Antrea refuses.
    let e = err(&cg("  podSelector: {}\n  ipBlocks: [{cidr: 10.0.0.0/8}]\n"));
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.path, "spec.ipBlocks");
    // The singular ipBlock exists only in the alpha versions.
    let e = err(&cg("  ipBlock: {cidr: 10.0.0.0/8}\n"));
    assert_eq!(e.kind, ErrorKind::UnknownField);
    let g = group(&cg("  ipBlock: {cidr: 10.0.0.0/8}\n").replace("v1beta1", "v1alpha3"));
    assert_eq!(g.ip_blocks.len(), 1);
    // Namespaced Group: a bare podSelector stays in its namespace.
    let g = group("apiVersion: crd.antrea.io/v1beta1\nkind: Group\nmetadata: {name: g, namespace: pay}\nspec:\n  podSelector: {}\n  namespaceSelector: null\n");
    assert_eq!(g.key.namespace.as_deref(), Some("pay"));
    assert_eq!(
        g.selector.unwrap().namespaces,
        NamespaceScope::Named("pay".into())
    );
}

#[test]
fn validation_errors() {
    let cases: Vec<(String, &str, ErrorKind)> = vec![
        (
            acnp("  priority: 1\n  appliedTo: [{podSelector: {}}]\n  ingress:\n    - action: Drop\n      appliedTo: [{podSelector: {}}]\n"),
            "spec.ingress[0].appliedTo",
            ErrorKind::Conflict,
        ),
        (acnp("  priority: 1\n  ingress:\n    - action: Drop\n"), "spec.appliedTo", ErrorKind::MissingField),
        (
            acnp("  priority: 1\n  ingress:\n    - action: Drop\n      appliedTo: [{podSelector: {}}]\n    - action: Drop\n"),
            "spec.ingress[1].appliedTo",
            ErrorKind::MissingField,
        ),
        (acnp("  priority: 10001\n  appliedTo: [{podSelector: {}}]\n"), "spec.priority", ErrorKind::InvalidValue),
        (acnp("  priority: 0.5\n  appliedTo: [{podSelector: {}}]\n"), "spec.priority", ErrorKind::InvalidValue),
        (acnp("  appliedTo: [{podSelector: {}}]\n"), "spec.priority", ErrorKind::MissingField),
        (acnp(&format!("{APPLIED}  ingress:\n    - from: []\n")), "spec.ingress[0].action", ErrorKind::MissingField),
        (acnp(&format!("{APPLIED}  ingress:\n    - action: Deny\n")), "spec.ingress[0].action", ErrorKind::InvalidValue),
        (
            acnp(&format!("  tier: baseline\n{APPLIED}  ingress:\n    - action: Pass\n")),
            "spec.ingress[0].action",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - {{action: Drop, name: x}}\n  egress:\n    - {{action: Drop, name: x}}\n")),
            "spec.egress[0].name",
            ErrorKind::Duplicate,
        ),
        (acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      to: [{{podSelector: {{}}}}]\n")), "spec.ingress[0].to", ErrorKind::InvalidValue),
        (annp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      from: [{{namespaces: {{match: Self}}}}]\n")), "spec.ingress[0].from[0].namespaces", ErrorKind::InvalidValue),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      from: [{{ipBlock: {{cidr: 10.0.0.0/8}}, podSelector: {{}}}}]\n")),
            "spec.ingress[0].from[0].ipBlock",
            ErrorKind::Conflict,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}}}]\n")),
            "spec.ingress[0].from[0].ipBlock.except",
            ErrorKind::UnknownField,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      from: [{{podSelector: {{}}, scope: ClusterSet}}]\n")),
            "spec.ingress[0].from[0].scope",
            ErrorKind::Unsupported,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      from: [{{podSelector: {{}}, externalEntitySelector: {{}}}}]\n")),
            "spec.ingress[0].from[0].externalEntitySelector",
            ErrorKind::Conflict,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      from: [{{fqdn: x.com}}]\n")),
            "spec.ingress[0].from[0].fqdn",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      ports: [{{sourceEndPort: 10}}]\n")),
            "spec.ingress[0].ports[0].sourcePort",
            ErrorKind::MissingField,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      ports: [{{sourcePort: 10, sourceEndPort: 5}}]\n")),
            "spec.ingress[0].ports[0].sourceEndPort",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      protocols: [{{icmp: {{icmpType: 300}}}}]\n")),
            "spec.ingress[0].protocols[0].icmp.icmpType",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      protocols: [{{icmp: {{}}, igmp: {{}}}}]\n")),
            "spec.ingress[0].protocols[0]",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Reject\n      protocols: [{{igmp: {{}}}}]\n")),
            "spec.ingress[0].action",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  egress:\n    - action: Drop\n      l7Protocols: [{{http: {{}}}}]\n")),
            "spec.egress[0].action",
            ErrorKind::InvalidValue,
        ),
        (
            acnp(&format!("{APPLIED}  egress:\n    - action: Allow\n      toServices: [{{name: a, namespace: b}}]\n      ports: [{{port: 80}}]\n")),
            "spec.egress[0].toServices",
            ErrorKind::Conflict,
        ),
        (
            acnp("  priority: 1\n  appliedTo: [{serviceAccount: {name: a, namespace: b}}]\n"),
            "spec.appliedTo[0].serviceAccount",
            ErrorKind::Unsupported,
        ),
        (
            annp("  priority: 1\n  appliedTo: [{namespaceSelector: {}}]\n"),
            "spec.appliedTo[0].namespaceSelector",
            ErrorKind::Unsupported,
        ),
        (
            acnp("  priority: 1\n  appliedTo: [{group: a, podSelector: {}}]\n"),
            "spec.appliedTo[0].group",
            ErrorKind::Conflict,
        ),
        (
            acnp(&format!("{APPLIED}  ingress:\n    - action: Drop\n      logLabel: \"a\\nb\"\n")),
            "spec.ingress[0].logLabel",
            ErrorKind::InvalidValue,
        ),
    ];
    for (text, path, kind) in cases {
        let e = err(&text);
        assert_eq!(e.path, path, "{e}\n{text}");
        assert_eq!(e.kind, kind, "{e}\n{text}");
    }
}

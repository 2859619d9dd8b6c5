//! Truth tables: endpoints × endpoints × ports × protocols → expected verdict, one table per
//! semantic rule. Every case is also checked against the reference evaluator (Lab::verdict).

use super::*;
use crate::compile::{EngineError, ObjectKey};
use Direction::{Egress as Eg, Ingress as In};

const PROTOS: [IpProtocol; 3] = [Tcp, Udp, Sctp];
const PORTS: [u16; 2] = [80, 81];

fn ns_of(p: &str) -> &str {
    p.split_once('/').unwrap().0
}
fn name_of(p: &str) -> &str {
    p.split_once('/').unwrap().1
}
fn yes(b: bool) -> FlowAction {
    if b {
        A
    } else {
        D
    }
}

#[test]
fn no_policy_allows_everything() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| A);
}

#[test]
fn k8s_isolation_then_allow() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s("x", "deny-a", &[("pod", "a")], &[In], vec![])]);
    lab.matrix(&PORTS, &PROTOS, |_, d, _, _| yes(d != "x/a"));
    lab.policies(vec![k8s(
        "x",
        "allow-b",
        &[("pod", "a")],
        &[In],
        vec![ingress(Action::Allow)
            .peers(vec![sel(in_ns("x", &[("pod", "b")]))])
            .ports(vec![tcp(80)])],
    )]);
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| {
        yes(d != "x/a" || (s == "x/b" && p == Tcp && port == 80))
    });
    // The isolation decision names the first isolating policy by key.
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("y/a", "x/a", Tcp, 80));
    match v.ingress.unwrap().by {
        DecidedBy::Isolation(p) => assert_eq!(p.key.name, "allow-b"),
        other => panic!("expected isolation, got {other:?}"),
    }
}

#[test]
fn k8s_union_and_namespace_and_pod_selectors() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        // x/a: from x/b on TCP 80 ...
        k8s(
            "x",
            "a-from-b",
            &[("pod", "a")],
            &[In],
            vec![ingress(Action::Allow)
                .peers(vec![sel(in_ns("x", &[("pod", "b")]))])
                .ports(vec![tcp(80)])],
        ),
        // ... union: from every pod of namespace y on TCP 81.
        k8s(
            "x",
            "a-from-y",
            &[("pod", "a")],
            &[In],
            vec![ingress(Action::Allow)
                .peers(vec![sel(ns_and(&[("ns", "y")], &[]))])
                .ports(vec![tcp(81)])],
        ),
        // x/b: namespaceSelector AND podSelector in one peer: only y/c.
        k8s(
            "x",
            "b-and",
            &[("pod", "b")],
            &[In],
            vec![ingress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "y")], &[("pod", "c")]))])],
        ),
        // x/c: two peers are ORed: all of z, or x/a.
        k8s(
            "x",
            "c-or",
            &[("pod", "c")],
            &[In],
            vec![ingress(Action::Allow).peers(vec![
                sel(ns_and(&[("ns", "z")], &[])),
                sel(in_ns("x", &[("pod", "a")])),
            ])],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| match d {
        "x/a" => yes(p == Tcp && ((s == "x/b" && port == 80) || (ns_of(s) == "y" && port == 81))),
        "x/b" => yes(s == "y/c"),
        "x/c" => yes(ns_of(s) == "z" || s == "x/a"),
        _ => A,
    });
}

#[test]
fn k8s_policy_types_egress() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s(
        "x",
        "c-egress",
        &[("pod", "c")],
        &[Eg],
        vec![egress(Action::Allow)
            .peers(vec![sel(ns_and(&[("ns", "y")], &[]))])
            .ports(vec![tcp(80)])],
    )]);
    // Only egress is isolated: x/c still receives everything.
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| {
        yes(s != "x/c" || (ns_of(d) == "y" && p == Tcp && port == 80))
    });
    // A declared type with no rules denies that direction entirely.
    lab.policies(vec![k8s("y", "deny-all", &[], &[In, Eg], vec![])]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(ns_of(s) != "y" && ns_of(d) != "y" && s != "x/c")
    });
}

#[test]
fn k8s_ip_block_with_except() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s(
        "y",
        "from-block",
        &[("pod", "a")],
        &[In],
        vec![ingress(Action::Allow).peers(vec![block("10.0.0.0/16", &["10.0.1.0/24"])])],
    )]);
    // ipBlocks match endpoint addresses too (Kubernetes semantics).
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(d != "y/a" || ns_of(s) != "x")
    });
    lab.check(&[
        ("10.0.200.9", "y/a", Tcp, 80, A),
        ("10.0.1.77", "y/a", Tcp, 80, D),
        ("192.0.2.1", "y/a", Tcp, 80, D),
        ("192.0.2.1", "y/b", Tcp, 80, A),
    ]);
}

#[test]
fn k8s_named_ports_and_end_port() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        // x/a and x/b only accept the named port; x/b does not declare it.
        k8s(
            "x",
            "named",
            &[],
            &[In],
            vec![ingress(Action::Allow).ports(vec![named_tcp("serve-80-tcp")])],
        ),
        k8s(
            "z",
            "range",
            &[("pod", "a")],
            &[In],
            vec![ingress(Action::Allow).ports(vec![tcp_range(80, 81)])],
        ),
    ]);
    lab.matrix(&[80, 81, 82], &PROTOS, |_, d, p, port| match ns_of(d) {
        "x" => yes(d == "x/a" && p == Tcp && port == 80),
        "z" if name_of(d) == "a" => yes(p == Tcp && port <= 81),
        _ => A,
    });
}

#[test]
fn k8s_egress_named_port_resolves_on_the_peer() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s(
        "y",
        "b-egress-named",
        &[("pod", "b")],
        &[Eg],
        vec![egress(Action::Allow).ports(vec![named_tcp("serve-80-tcp")])],
    )]);
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| {
        yes(s != "y/b" || (d == "x/a" && p == Tcp && port == 80))
    });
    // A peer outside the inventory declares no names.
    lab.check(&[("y/b", "192.0.2.1", Tcp, 80, D)]);
}

#[test]
fn antrea_tier_order_beats_lower_tier_allow() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        acnp(
            "sec-drop",
            "securityops",
            1.0,
            applied(ns_and(&[("ns", "x")], &[])),
            vec![ingress(Action::Drop).peers(vec![sel(ns_and(&[("ns", "y")], &[]))])],
        ),
        acnp(
            "app-allow",
            "application",
            1.0,
            applied(ns_and(&[("ns", "x")], &[])),
            vec![ingress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "y")], &[("pod", "a")]))])],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(!(ns_of(d) == "x" && ns_of(s) == "y"))
    });
}

#[test]
fn antrea_policy_priority_and_rule_order() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        acnp(
            "p10-drop",
            "application",
            10.0,
            applied(ns_and(&[("ns", "x")], &[])),
            vec![ingress(Action::Drop).peers(vec![sel(ns_and(&[("ns", "y")], &[]))])],
        ),
        acnp(
            "p5-allow",
            "application",
            5.0,
            applied(ns_and(&[("ns", "x")], &[])),
            vec![ingress(Action::Allow).peers(vec![sel(anywhere(&[("pod", "a")]))])],
        ),
        // Rule order: the first rule wins within a policy.
        acnp(
            "z-order",
            "platform",
            1.0,
            applied(ns_and(&[("ns", "z")], &[])),
            vec![
                ingress(Action::Allow)
                    .peers(vec![sel(in_ns("x", &[("pod", "a")]))])
                    .ports(vec![tcp(80)]),
                ingress(Action::Drop),
            ],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| match ns_of(d) {
        "x" => yes(ns_of(s) != "y" || name_of(s) == "a"),
        "z" => yes(s == "x/a" && p == Tcp && port == 80),
        _ => A,
    });
}

#[test]
fn antrea_pass_hands_over_to_kubernetes_and_reject_rejects() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        acnp(
            "pass-y",
            "emergency",
            1.0,
            applied(ns_and(&[("ns", "x")], &[])),
            vec![ingress(Action::Pass).peers(vec![sel(ns_and(&[("ns", "y")], &[]))])],
        ),
        acnp(
            "drop-y",
            "application",
            1.0,
            applied(ns_and(&[("ns", "x")], &[])),
            vec![ingress(Action::Drop).peers(vec![sel(ns_and(&[("ns", "y")], &[]))])],
        ),
        k8s(
            "x",
            "b-from-ya",
            &[("pod", "b")],
            &[In],
            vec![ingress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "y")], &[("pod", "a")]))])],
        ),
        acnp(
            "reject-zc",
            "securityops",
            1.0,
            applied(in_ns("z", &[("pod", "c")])),
            vec![egress(Action::Reject)
                .ports(vec![tcp(80)])
                .name("reject-80")
                .log("zc-reject")],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| {
        if s == "z/c" && p == Tcp && port == 80 {
            return J;
        }
        match d {
            // y is passed to K8s (drop-y never sees it), where the NP allows y/a; x/b is
            // isolated, so everything else is dropped by the isolation.
            "x/b" => yes(s == "y/a"),
            // Passed to K8s, which has nothing for x/a and x/c: default allow.
            _ => A,
        }
    });
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("y/a", "x/b", Tcp, 80));
    let d = v.ingress.unwrap();
    assert_eq!(d.passed_by.unwrap().policy.key.name, "pass-y");
    assert_eq!(d.rule().unwrap().policy.key.name, "b-from-ya");
    let v = snap.evaluate(&lab.query("z/c", "x/a", Tcp, 80));
    assert_eq!(v.action, J);
    let e = v.egress.unwrap();
    assert!(e.log());
    assert_eq!(e.rule().unwrap().log_label.as_deref(), Some("zc-reject"));
    assert_eq!(e.rule().unwrap().rule_name, "reject-80");
    let d = snap
        .evaluate(&lab.query("y/b", "x/b", Tcp, 81))
        .ingress
        .unwrap();
    assert!(matches!(d.by, DecidedBy::Isolation(p) if p.key.name == "b-from-ya"));
    assert_eq!(d.passed_by.unwrap().policy.key.name, "pass-y");
}

#[test]
fn antrea_baseline_applies_only_where_kubernetes_did_not_decide() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    // Baseline: namespaces are isolated from each other.
    lab.policies(vec![acnp(
        "ns-isolation",
        "baseline",
        1.0,
        applied(ns_and(&[], &[])),
        vec![
            ingress(Action::Allow).peers(vec![sel(same_ns(&[]))]),
            ingress(Action::Drop).peers(vec![sel(ns_and(&[], &[]))]),
        ],
    )]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| yes(ns_of(s) == ns_of(d)));
    // A K8s NP selecting x/a: its allow beats the baseline drop; for everything else the
    // isolation drops — even x/b -> x/a, which the baseline would allow (Antrea: baseline
    // cannot counteract K8s isolation).
    lab.policies(vec![k8s(
        "x",
        "a-from-ya",
        &[("pod", "a")],
        &[In],
        vec![ingress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "y")], &[("pod", "a")]))])],
    )]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        if d == "x/a" {
            yes(s == "y/a")
        } else {
            yes(ns_of(s) == ns_of(d))
        }
    });
    let snap = lab.engine.snapshot();
    let d = snap
        .evaluate(&lab.query("x/b", "x/a", Tcp, 80))
        .ingress
        .unwrap();
    assert!(matches!(d.by, DecidedBy::Isolation(p) if p.key.name == "a-from-ya"));
}

#[test]
fn antrea_cluster_group_with_children_and_ip_blocks() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.apply(vec![
        Object::Group(cluster_group(
            "cg-ya",
            Some(ns_and(&[("ns", "y")], &[("pod", "a")])),
            &[],
            &[],
        )),
        Object::Group(cluster_group("cg-ext", None, &["192.168.0.0/24"], &[])),
        Object::Group(cluster_group("cg-parent", None, &[], &["cg-ya", "cg-ext"])),
        Object::Policy(acnp(
            "drop-parent",
            "securityops",
            1.0,
            applied(ns_and(&[("ns", "z")], &[])),
            vec![ingress(Action::Drop).peers(vec![group("cg-parent")])],
        )),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(!(ns_of(d) == "z" && s == "y/a"))
    });
    lab.check(&[
        ("192.168.0.5", "z/a", Tcp, 80, D),
        ("192.168.1.5", "z/a", Tcp, 80, A),
    ]);
    // Changing a child group re-realizes the policies using the parent.
    lab.apply(vec![Object::Group(cluster_group(
        "cg-ya",
        Some(ns_and(&[("ns", "y")], &[("pod", "b")])),
        &[],
        &[],
    ))]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(!(ns_of(d) == "z" && s == "y/b"))
    });
    // A group is usable in appliedTo (its IP blocks are ignored there).
    lab.apply(vec![Object::Policy(acnp(
        "applied-group",
        "securityops",
        2.0,
        vec![AppliedTo::Group(GroupKey {
            namespace: None,
            name: "cg-parent".into(),
        })],
        vec![egress(Action::Drop).ports(vec![udp(81)])],
    ))]);
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| {
        let dropped_in = ns_of(d) == "z" && s == "y/b";
        let dropped_out = s == "y/b" && p == Udp && port == 81;
        yes(!dropped_in && !dropped_out)
    });
}

#[test]
fn antrea_external_entity_selector_picks_only_vms() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        acnp(
            "drop-from-vms",
            "application",
            1.0,
            applied(in_ns("x", &[("pod", "b")])),
            vec![ingress(Action::Drop).peers(vec![sel(vm_only(anywhere(&[])))])],
        ),
        // appliedTo with VmOnly over pods: selects nothing.
        acnp(
            "applied-vm-b",
            "application",
            2.0,
            applied(vm_only(anywhere(&[("pod", "b")]))),
            vec![ingress(Action::Drop)],
        ),
    ]);
    // a and c are VMs, b is a pod.
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(!(d == "x/b" && name_of(s) != "b"))
    });
}

#[test]
fn antrea_per_rule_applied_to() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![acnp(
        "per-rule",
        "application",
        1.0,
        vec![],
        vec![
            ingress(Action::Drop)
                .peers(vec![sel(ns_and(&[("ns", "y")], &[]))])
                .applied(applied(in_ns("x", &[("pod", "a")]))),
            ingress(Action::Drop)
                .peers(vec![sel(ns_and(&[("ns", "z")], &[]))])
                .applied(applied(in_ns("x", &[("pod", "b")]))),
        ],
    )]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| match d {
        "x/a" => yes(ns_of(s) != "y"),
        "x/b" => yes(ns_of(s) != "z"),
        _ => A,
    });
}

#[test]
fn antrea_custom_tier_across_applies() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    // Unknown tier: refused, nothing changes.
    let err = lab
        .engine
        .apply(vec![Object::Policy(acnp(
            "early",
            "mytier",
            1.0,
            applied(anywhere(&[])),
            vec![],
        ))])
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownTier { .. }), "{err}");
    lab.apply(vec![Object::Tier(Tier {
        name: "mytier".into(),
        priority: 10,
        source: Source::default(),
    })]);
    lab.policies(vec![
        acnp(
            "sec-drop-xa",
            "securityops",
            1.0,
            applied(in_ns("x", &[("pod", "a")])),
            vec![ingress(Action::Drop)],
        ),
        acnp(
            "my-allow",
            "MyTier",
            1.0,
            applied(in_ns("x", &[("pod", "a")])),
            vec![ingress(Action::Allow).peers(vec![sel(in_ns("y", &[("pod", "a")]))])],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| yes(d != "x/a" || s == "y/a"));
    // Moving the tier after securityops flips the order.
    lab.apply(vec![Object::Tier(Tier {
        name: "mytier".into(),
        priority: 120,
        source: Source::default(),
    })]);
    lab.matrix(&PORTS, &PROTOS, |_, d, _, _| yes(d != "x/a"));
    // A tier in use cannot be removed.
    let err = lab
        .engine
        .remove(vec![ObjectKey::Tier("mytier".into())])
        .unwrap_err();
    assert!(matches!(err, EngineError::TierInUse { .. }), "{err}");
}

#[test]
fn cilium_namespace_confinement_and_union_with_k8s() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        // Namespaced CNP: a bare fromEndpoints is confined to the policy's namespace ...
        cnp(
            "x",
            "a-from-b",
            in_ns("x", &[("pod", "a")]),
            &[In],
            vec![ingress(Action::Allow).peers(vec![sel(in_ns("x", &[("pod", "b")]))])],
        ),
        // ... unless it names the namespace through the pseudo-label.
        cnp(
            "x",
            "a-from-yc",
            in_ns("x", &[("pod", "a")]),
            &[In],
            vec![ingress(Action::Allow).peers(vec![sel(anywhere(&[
                (CILIUM_NAMESPACE_LABEL, "y"),
                ("pod", "c"),
            ]))])],
        ),
        // Union with a K8s NP on the same endpoint.
        k8s(
            "x",
            "a-from-za",
            &[("pod", "a")],
            &[In],
            vec![ingress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "z")], &[("pod", "a")]))])],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(d != "x/a" || s == "x/b" || s == "y/c" || s == "z/a")
    });
}

#[test]
fn cilium_deny_wins_over_any_allow() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        k8s("x", "b-all", &[("pod", "b")], &[In], vec![ingress(Action::Allow)]),
        cnp(
            "x",
            "b-deny-y",
            in_ns("x", &[("pod", "b")]),
            &[],
            vec![ingress(Action::Drop).peers(vec![sel(anywhere(&[(CILIUM_NAMESPACE_LABEL, "y")]))])],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(d != "x/b" || ns_of(s) != "y")
    });
}

#[test]
fn cilium_namespace_label_pseudo_labels() {
    const NS_LABEL: &str = "io.cilium.k8s.namespace.labels.ns";
    let mut lab = Lab::cyclonus(EngineConfig::default());
    let mut from_y_or_z = anywhere(&[]);
    from_y_or_z.labels.match_expressions.push(LabelExpression {
        key: NS_LABEL.into(),
        operator: SelectorOperator::In,
        values: vec!["y".into(), "z".into()],
    });
    lab.policies(vec![
        // x/a accepts pods of namespaces labelled ns=y (a clusterwide-style peer: scope Any,
        // the namespace constraint lives in the label selector).
        cnp(
            "x",
            "a-from-ns-y",
            in_ns("x", &[("pod", "a")]),
            &[In],
            vec![ingress(Action::Allow).peers(vec![sel(anywhere(&[(NS_LABEL, "y")]))])],
        ),
        // x/b accepts b-pods of namespaces labelled ns in (y, z).
        cnp("x", "b-from-yz", in_ns("x", &[("pod", "b")]), &[In], {
            let mut s = from_y_or_z.clone();
            s.labels.match_labels = labels(&[("pod", "b")]);
            vec![ingress(Action::Allow).peers(vec![sel(s)])]
        }),
        // Subjects too: every endpoint of a namespace labelled ns=z is egress-isolated and
        // may only talk to namespace x (named through the implied name label).
        cnp(
            "z",
            "z-to-x",
            anywhere(&[(NS_LABEL, "z")]),
            &[Eg],
            vec![egress(Action::Allow).peers(vec![sel(anywhere(&[(
                "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
                "x",
            )]))])],
        ),
    ]);
    let expect = |relabelled: bool| {
        move |s: &str, d: &str, _: IpProtocol, _: u16| {
            // With ns=y on namespace z, z is not "ns=z" any more (not isolated) and counts as y.
            let label = |n: &str| -> String {
                if relabelled && n == "z" {
                    "y".into()
                } else {
                    n.into()
                }
            };
            let sns = label(ns_of(s));
            let egress_ok = sns != "z" || ns_of(d) == "x";
            let ingress_ok = match d {
                "x/a" => sns == "y",
                "x/b" => name_of(s) == "b" && (sns == "y" || sns == "z"),
                _ => true,
            };
            yes(egress_ok && ingress_ok)
        }
    };
    lab.matrix(&PORTS, &PROTOS, expect(false));
    // The policy follows namespace labels: relabel z as ns=y.
    lab.engine.upsert_namespace(Namespace {
        name: "z".into(),
        labels: labels(&[("ns", "y")]),
    });
    lab.matrix(&PORTS, &PROTOS, expect(true));
    // Deciders name the rule, and the isolation of a pseudo-label subject.
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("z/c", "x/a", Tcp, 80));
    assert_eq!(
        v.ingress.unwrap().rule().unwrap().policy.key.name,
        "a-from-ns-y"
    );
    // And back.
    lab.engine.upsert_namespace(Namespace {
        name: "z".into(),
        labels: labels(&[("ns", "z")]),
    });
    lab.matrix(&PORTS, &PROTOS, expect(false));
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("z/c", "y/a", Tcp, 80));
    match v.egress.unwrap().by {
        DecidedBy::Isolation(p) => assert_eq!(p.key.name, "z-to-x"),
        other => panic!("expected isolation, got {other:?}"),
    }
    // Removing the namespace's labels leaves only the implied name label.
    lab.engine.remove_namespace("y");
    lab.check(&[
        ("y/a", "x/a", Tcp, 80, D),
        ("y/b", "x/b", Tcp, 80, D),
        ("z/b", "x/b", Tcp, 80, A),
    ]);
    // An endpoint cannot claim its namespace's labels through its own labels.
    let mut spoof = ep(
        "y",
        "spoof",
        EndpointKind::Vm,
        "10.0.2.99",
        &[(NS_LABEL, "y")],
    );
    spoof.named_ports.clear();
    lab.engine.upsert_endpoint(spoof).unwrap();
    lab.check(&[("y/spoof", "x/a", Tcp, 80, D)]);
}

#[test]
fn cilium_entities_and_cidr_sets() {
    let host = "172.16.0.1";
    let mut lab = Lab::cyclonus(EngineConfig {
        host_ips: vec![host.parse().unwrap()],
        ..EngineConfig::default()
    });
    let to = |e: Entity| Peer::Entity(e);
    lab.policies(vec![
        cnp(
            "z",
            "c-world",
            in_ns("z", &[("pod", "c")]),
            &[Eg],
            vec![egress(Action::Allow).peers(vec![to(Entity::World)])],
        ),
        cnp(
            "z",
            "b-cluster",
            in_ns("z", &[("pod", "b")]),
            &[Eg],
            vec![egress(Action::Allow).peers(vec![to(Entity::Cluster)])],
        ),
        cnp(
            "z",
            "a-all",
            in_ns("z", &[("pod", "a")]),
            &[Eg],
            vec![egress(Action::Allow).peers(vec![to(Entity::All)])],
        ),
        cnp(
            "y",
            "c-cidr",
            in_ns("y", &[("pod", "c")]),
            &[Eg],
            vec![egress(Action::Allow).peers(vec![
                block("203.0.113.0/24", &["203.0.113.128/25"]),
                // Cilium CIDRs select only addresses outside the cluster.
                block("10.0.0.0/8", &[]),
            ])],
        ),
        cnp(
            "y",
            "b-host",
            in_ns("y", &[("pod", "b")]),
            &[Eg],
            vec![egress(Action::Allow).peers(vec![to(Entity::Host)])],
        ),
    ]);
    lab.matrix(&PORTS, &PROTOS, |s, _, _, _| {
        yes(!matches!(s, "z/c" | "y/c" | "y/b"))
    });
    lab.check(&[
        ("z/c", "8.8.8.8", Tcp, 443, A),
        ("z/c", host, Tcp, 443, D),
        ("z/b", "8.8.8.8", Tcp, 443, D),
        ("z/b", host, Tcp, 443, A),
        ("z/a", "8.8.8.8", Udp, 53, A),
        ("z/a", host, Udp, 53, A),
        ("y/c", "203.0.113.5", Tcp, 80, A),
        ("y/c", "203.0.113.200", Tcp, 80, D),
        ("y/c", "10.99.0.1", Tcp, 80, A),
        ("y/c", "x/a", Tcp, 80, D),
        ("y/b", host, Tcp, 80, A),
        ("y/b", "8.8.8.8", Tcp, 80, D),
    ]);
}

#[test]
fn configured_default_deny_needs_both_directions() {
    let mut lab = Lab::cyclonus(EngineConfig {
        default_deny: true,
        ..EngineConfig::default()
    });
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| D);
    lab.policies(vec![acnp(
        "x-to-y",
        "application",
        1.0,
        applied(anywhere(&[])),
        vec![
            egress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "y")], &[]))]),
            ingress(Action::Allow).peers(vec![sel(ns_and(&[("ns", "x")], &[]))]),
        ],
    )]);
    // x -> y: egress at x allows (to y), ingress at y allows (from x).
    // y -> x: egress at y would need "to x": not allowed.
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(ns_of(s) == "x" && ns_of(d) == "y")
    });
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("z/a", "z/b", Tcp, 80));
    assert_eq!(v.egress.unwrap().by, DecidedBy::DefaultDeny);
}

#[test]
fn audit_forwards_would_be_drops() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    let mut p = acnp(
        "audit-drop",
        "securityops",
        1.0,
        applied(in_ns("x", &[("pod", "a")])),
        vec![ingress(Action::Drop)],
    );
    p.audit = true;
    let mut iso = k8s("y", "iso", &[("pod", "a")], &[In], vec![]);
    iso.audit = true;
    lab.policies(vec![
        p,
        iso,
        k8s("z", "iso-enforced", &[("pod", "a")], &[In], vec![]),
    ]);
    lab.matrix(&PORTS, &PROTOS, |_, d, _, _| yes(d != "z/a"));
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("y/b", "x/a", Tcp, 80));
    assert!(v.audit && v.action == A);
    assert_eq!(v.ingress.unwrap().action, D);
    let v = snap.evaluate(&lab.query("x/b", "y/a", Tcp, 80));
    assert!(v.audit && matches!(v.ingress.unwrap().by, DecidedBy::Isolation(_)));
    // Global audit turns every drop into an audit.
    lab.engine.set_config(EngineConfig {
        audit: true,
        ..EngineConfig::default()
    });
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| A);
    let snap = lab.engine.snapshot();
    assert!(snap.evaluate(&lab.query("x/b", "z/a", Tcp, 80)).audit);
}

#[test]
fn audit_namespaces_forward_drops_decided_there() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![
        k8s("x", "iso-xa", &[("pod", "a")], &[In], vec![]),
        k8s("y", "iso-ya", &[("pod", "a")], &[In], vec![]),
        acnp(
            "xb-not-to-y",
            "securityops",
            1.0,
            applied(in_ns("x", &[("pod", "b")])),
            vec![egress(Action::Reject).peers(vec![sel(ns_and(&[("ns", "y")], &[]))])],
        ),
    ]);
    // Without audit: x/a and y/a are isolated, x/b may not send to y (Reject).
    let blocked = |s: &str, d: &str| -> Option<FlowAction> {
        if s == "x/b" && ns_of(d) == "y" {
            Some(J)
        } else if d == "x/a" || d == "y/a" {
            Some(D)
        } else {
            None
        }
    };
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| blocked(s, d).unwrap_or(A));
    let before = lab.engine.snapshot();

    // Audit x: what x's endpoints decide (x/a's ingress, x/b's egress) is forwarded; what
    // y/a decides is still enforced, also for flows from x/b.
    assert!(lab.engine.set_namespace_audit("x", true));
    assert!(!lab.engine.set_namespace_audit("x", true));
    assert!(lab.engine.namespace_audit("x"));
    lab.matrix(&PORTS, &PROTOS, |_, d, _, _| yes(d != "y/a"));
    let snap = lab.engine.snapshot();
    for s in Lab::pods() {
        for d in Lab::pods() {
            if s == d {
                continue;
            }
            let v = snap.evaluate(&lab.query(&s, &d, Tcp, 80));
            let audited = v.action == A && blocked(&s, &d).is_some();
            assert_eq!(v.audit, audited, "{s} -> {d}: {v:?}");
            if audited {
                // Reported with what would have happened.
                let dec = v.deciding().unwrap();
                assert!(dec.audit);
                assert_eq!(dec.action, blocked(&s, &d).unwrap(), "{s} -> {d}");
            }
        }
    }
    let v = snap.evaluate(&lab.query("x/b", "y/a", Tcp, 80));
    assert_eq!((v.action, v.audit), (D, false));
    assert!(v.egress.unwrap().audit && !v.ingress.unwrap().audit);
    // The flag is read when deciding: no realized table was rebuilt.
    for e in before.endpoints() {
        let now = snap.endpoint(&e.endpoint().key()).unwrap();
        assert!(e.same_tables(&now), "{}", e.endpoint().key());
    }

    // Audit y as well: nothing is dropped any more. Then only y.
    lab.engine.set_namespace_audit("y", true);
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| A);
    assert!(lab.engine.set_namespace_audit("x", false));
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| match blocked(s, d) {
        Some(_) if d == "y/a" && s != "x/b" => A,
        Some(b) => b,
        None => A,
    });

    // With a default-deny baseline: a namespace audited before it has endpoints, and the
    // default deny is audited per side.
    let mut lab = Lab::cyclonus(EngineConfig {
        default_deny: true,
        audit_namespaces: ["z".to_string(), "w".to_string()].into(),
        ..EngineConfig::default()
    });
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(ns_of(s) == "z" && ns_of(d) == "z")
    });
    lab.engine
        .upsert_endpoint(ep("w", "a", EndpointKind::Vm, "10.0.9.1", &[]))
        .unwrap();
    lab.check(&[
        ("w/a", "z/a", Tcp, 80, A),
        ("z/b", "w/a", Udp, 53, A),
        ("w/a", "x/a", Tcp, 80, D),
        ("w/a", "8.8.8.8", Tcp, 443, A),
        ("8.8.8.8", "w/a", Tcp, 443, A),
        ("8.8.8.8", "y/a", Tcp, 443, D),
    ]);
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("w/a", "z/a", Tcp, 80));
    assert!(v.audit);
    assert_eq!(v.egress.unwrap().by, DecidedBy::DefaultDeny);
}

#[test]
fn icmp_type_and_code() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s(
        "x",
        "echo-only",
        &[("pod", "a")],
        &[In],
        vec![ingress(Action::Allow).ports(vec![icmp(Some(8), Some(0))])],
    )]);
    let snap = lab.engine.snapshot();
    let (y, x) = (lab.ip("y/a"), lab.ip("x/a"));
    assert_eq!(snap.evaluate(&FlowQuery::icmp(y, x, 8, 0)).action, A);
    assert_eq!(snap.evaluate(&FlowQuery::icmp(y, x, 13, 0)).action, D);
    assert_eq!(snap.evaluate(&FlowQuery::tcp(y, x, 1, 80)).action, D);
}

#[test]
fn failed_apply_changes_nothing() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    lab.policies(vec![k8s("x", "iso", &[("pod", "a")], &[In], vec![])]);
    let before = lab.engine.snapshot();
    let gen = before.generation();
    let bad = [
        // unknown group
        vec![Object::Policy(acnp(
            "g",
            "application",
            1.0,
            applied(anywhere(&[])),
            vec![ingress(Action::Drop).peers(vec![group("nope")])],
        ))],
        // group cycle
        vec![
            Object::Group(cluster_group("c1", None, &[], &["c2"])),
            Object::Group(cluster_group("c2", None, &[], &["c1"])),
        ],
        // Pass in the baseline tier
        vec![Object::Policy(acnp(
            "b",
            "baseline",
            1.0,
            applied(anywhere(&[])),
            vec![ingress(Action::Pass)],
        ))],
        // a good policy together with a bad one: all or nothing
        vec![
            Object::Policy(k8s("y", "fine", &[], &[In], vec![])),
            Object::Policy(acnp("t", "no-such-tier", 1.0, vec![], vec![])),
        ],
    ];
    for objs in bad {
        let err = lab.engine.apply(objs).unwrap_err();
        let after = lab.engine.snapshot();
        assert_eq!(after.generation(), gen, "{err}");
        assert!(std::sync::Arc::ptr_eq(&before, &after));
    }
    assert_eq!(lab.engine.policies().count(), 1);
    lab.matrix(&PORTS, &PROTOS, |_, d, _, _| yes(d != "x/a"));
    // Removing a group still referenced is refused too.
    lab.apply(vec![
        Object::Group(cluster_group(
            "used",
            Some(anywhere(&[("pod", "c")])),
            &[],
            &[],
        )),
        Object::Policy(acnp(
            "uses",
            "application",
            1.0,
            applied(anywhere(&[])),
            vec![ingress(Action::Drop).peers(vec![group("used")])],
        )),
    ]);
    let err = lab
        .engine
        .remove(vec![ObjectKey::Group(GroupKey {
            namespace: None,
            name: "used".into(),
        })])
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownGroup { .. }), "{err}");
}

/// Parses YAML through the real CRD parser and applies it.
fn apply_yaml(lab: &mut Lab, text: &str) {
    let parsed = crate::crd::parse_documents(text, "test.yaml").unwrap();
    lab.apply(parsed.objects);
}

#[test]
fn cilium_specs_isolate_each_subject_in_its_own_directions() {
    // Three specs, three subjects in namespace x. Upstream Cilium treats every spec as a rule
    // of its own: its endpointSelector isolates the endpoints it picks, in the directions the
    // spec has rules for, and its rules apply to those endpoints only.
    let mut lab = Lab::cyclonus(EngineConfig::default());
    apply_yaml(
        &mut lab,
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: multi, namespace: x}
specs:
  # x/a: ingress only from x/b, TCP 80.
  - endpointSelector: {matchLabels: {pod: a}}
    ingress:
      - fromEndpoints: [{matchLabels: {pod: b}}]
        toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  # x/b: egress only to x/c (any port); its ingress stays open.
  - endpointSelector: {matchLabels: {pod: b}}
    egress:
      - toEndpoints: [{matchLabels: {pod: c}}]
  # x/c: the default-deny idiom, ingress: [{}] isolates and allows nothing.
  - endpointSelector: {matchLabels: {pod: c}}
    ingress: [{}]
",
    );
    lab.matrix(&PORTS, &PROTOS, |s, d, p, port| {
        let egress_ok = s != "x/b" || d == "x/c";
        let ingress_ok = match d {
            "x/a" => s == "x/b" && p == Tcp && port == 80,
            "x/c" => false,
            _ => true,
        };
        yes(egress_ok && ingress_ok)
    });
    // x/b -> x/c is allowed by x/b's egress but dropped by x/c's isolation, which names the
    // policy.
    let snap = lab.engine.snapshot();
    let v = snap.evaluate(&lab.query("x/b", "x/c", Tcp, 80));
    match v.ingress.unwrap().by {
        DecidedBy::Isolation(p) => assert_eq!(p.key.name, "multi"),
        other => panic!("expected isolation, got {other:?}"),
    }
}

#[test]
fn cilium_specs_deny_and_default_deny_per_subject() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    apply_yaml(
        &mut lab,
        "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: multi}
specs:
  # Every b endpoint: egressDeny to namespace z isolates b's egress (deny rules count).
  - endpointSelector: {matchLabels: {pod: b}}
    egressDeny:
      - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: z}}]
    egress:
      - toEntities: [cluster]
  # Every a endpoint: rules, but default deny switched off: the allow is moot, nothing is
  # isolated, and the deny still drops.
  - endpointSelector: {matchLabels: {pod: a}}
    enableDefaultDeny: {ingress: false}
    ingress:
      - fromEndpoints: [{matchLabels: {pod: b}}]
    ingressDeny:
      - fromEndpoints: [{matchLabels: {pod: c}}]
  # Every c endpoint: no rules at all but default deny on for egress: c can send nothing.
  - endpointSelector: {matchLabels: {pod: c}}
    enableDefaultDeny: {egress: true}
",
    );
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        let egress_ok = match name_of(s) {
            "b" => ns_of(d) != "z",
            "c" => false,
            _ => true,
        };
        let ingress_ok = !(name_of(d) == "a" && name_of(s) == "c");
        yes(egress_ok && ingress_ok)
    });
}

#[test]
fn cilium_specs_isolation_follows_incremental_changes() {
    // A new endpoint matching one spec's subject is isolated as soon as it appears, and
    // removing the policy lifts the isolation.
    let mut lab = Lab::cyclonus(EngineConfig::default());
    apply_yaml(
        &mut lab,
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: multi, namespace: y}
specs:
  - endpointSelector: {matchLabels: {pod: a}}
    ingress: [{}]
  - endpointSelector: {matchLabels: {role: db}}
    egress: [{}]
",
    );
    lab.engine
        .upsert_endpoint(ep(
            "y",
            "db",
            EndpointKind::Vm,
            "10.0.2.9",
            &[("role", "db")],
        ))
        .unwrap();
    lab.check(&[
        ("x/a", "y/a", Tcp, 80, D),
        ("y/a", "x/a", Tcp, 80, A),
        ("y/db", "x/a", Tcp, 80, D),
        ("x/a", "y/db", Tcp, 80, A),
        ("x/a", "y/b", Tcp, 80, A),
    ]);
    lab.engine
        .remove(vec![ObjectKey::Policy(PolicyKey {
            kind: PolicyKind::CiliumNetworkPolicy,
            namespace: Some("y".into()),
            name: "multi".into(),
        })])
        .unwrap();
    lab.check(&[("x/a", "y/a", Tcp, 80, A), ("y/db", "x/a", Tcp, 80, A)]);
}

fn service(ns: &str, name: &str, selector: &[(&str, &str)]) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        selector: labels(selector),
    }
}

#[test]
fn antrea_service_reference_groups_follow_the_service_backends() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    // The Service exists before the group: y's b endpoints back it.
    assert_eq!(
        lab.engine
            .upsert_service(service("y", "web", &[("pod", "b")])),
        0
    );
    apply_yaml(
        &mut lab,
        "apiVersion: crd.antrea.io/v1beta1
kind: ClusterGroup
metadata: {name: web-backends}
spec:
  serviceReference: {name: web, namespace: y}
---
apiVersion: crd.antrea.io/v1beta1
kind: ClusterGroup
metadata: {name: parent}
spec:
  childGroups: [web-backends]
---
# The backends accept only x/a on TCP 80 ...
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: protect-web}
spec:
  priority: 1
  tier: securityops
  appliedTo: [{group: web-backends}]
  ingress:
    - action: Allow
      from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {matchLabels: {ns: x}}}]
      ports: [{protocol: TCP, port: 80}]
    - action: Drop
---
# ... and z/c may not reach them (through the parent group, as a peer).
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: z-c-out}
spec:
  priority: 2
  tier: emergency
  appliedTo: [{podSelector: {matchLabels: {pod: c}}, namespaceSelector: {matchLabels: {ns: z}}}]
  egress:
    - action: Reject
      to: [{group: parent}]
",
    );
    let expect = |backend: &'static str| {
        move |s: &str, d: &str, p: IpProtocol, port: u16| {
            if d == backend {
                if s == "z/c" {
                    J
                } else {
                    yes(s == "x/a" && p == Tcp && port == 80)
                }
            } else {
                A
            }
        }
    };
    lab.matrix(&PORTS, &PROTOS, expect("y/b"));
    // The Service's selector changes: the groups follow, the policies using them are
    // recompiled (both, through the child group too).
    assert_eq!(
        lab.engine
            .upsert_service(service("y", "web", &[("pod", "c")])),
        2
    );
    lab.matrix(&PORTS, &PROTOS, expect("y/c"));
    // A Service without a selector has no backends; nor has a removed one.
    lab.engine.upsert_service(service("y", "web", &[]));
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| A);
    lab.engine
        .upsert_service(service("y", "web", &[("pod", "a")]));
    lab.matrix(&PORTS, &PROTOS, expect("y/a"));
    assert!(lab.engine.remove_service(&ServiceKey {
        namespace: "y".into(),
        name: "web".into()
    }));
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| A);
}

#[test]
fn antrea_service_reference_to_unknown_service_warns_and_has_no_members() {
    let mut lab = Lab::cyclonus(EngineConfig::default());
    let parsed = crate::crd::parse_documents(
        "apiVersion: crd.antrea.io/v1beta1
kind: Group
metadata: {name: db, namespace: x}
spec:
  serviceReference: {name: db}
---
apiVersion: crd.antrea.io/v1beta1
kind: NetworkPolicy
metadata: {name: db-out, namespace: x}
spec:
  priority: 1
  appliedTo: [{podSelector: {}}]
  egress:
    - action: Drop
      to: [{group: db}]
",
        "t.yaml",
    )
    .unwrap();
    let report = lab.engine.apply(parsed.objects).unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("Service x/db is not in the inventory")),
        "{:?}",
        report.warnings
    );
    lab.matrix(&PORTS, &PROTOS, |_, _, _, _| A);
    // Once the Service appears, its backends (x's a endpoints only: a Service selects in its
    // own namespace) are members.
    assert_eq!(
        lab.engine
            .upsert_service(service("x", "db", &[("pod", "a")])),
        1
    );
    lab.matrix(&PORTS, &PROTOS, |s, d, _, _| {
        yes(!(ns_of(s) == "x" && d == "x/a"))
    });
}

//! The seed examples end to end: the policy files of `configs/policies/<flavour>/` and the
//! inventory `configs/inventory.yaml`, parsed by `dfw::crd` and `dfw::inventory`, realized by
//! the engine, must enforce the intent `configs/policies/README.md` states, in each flavour
//! that can express it, and say *what* decided each flow.
//!
//! Only first packets are classified here: replies of allowed connections pass through
//! connection tracking, which `dfw::stateful` tests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dfw::compile::{DecidedBy, Decision, Engine, EngineConfig, FlowAction, FlowQuery, Verdict};
use dfw::crd::{parse_files, ParseOptions};
use dfw::flow::IpProtocol;
use dfw::inventory::{parse_inventory, Inventory};
use dfw::model::{Action, Object};

use FlowAction::{Allow as A, Drop as D, Reject as J};
use IpProtocol::{Icmp, Tcp, Udp};

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn inventory() -> Inventory {
    let text = std::fs::read_to_string(configs().join("inventory.yaml")).unwrap();
    parse_inventory(&text, "configs/inventory.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// Parse `files` (relative to `configs/policies`) as one set and load them, with the
/// inventory, into a fresh engine.
fn load(files: &[&str]) -> (Engine, Inventory) {
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let path = configs().join("policies").join(f);
            (f.to_string(), std::fs::read_to_string(path).unwrap())
        })
        .collect();
    let set: Vec<(&str, &str)> = texts
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let parsed = parse_files(&set, &ParseOptions::default()).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    let inv = inventory();
    let mut engine = Engine::new(EngineConfig::default());
    for ns in &inv.namespaces {
        engine.upsert_namespace(ns.clone());
    }
    for ep in &inv.endpoints {
        engine.upsert_endpoint(ep.clone()).unwrap();
    }
    let report = engine.apply(parsed.objects.clone()).unwrap();
    assert_eq!(report.created, parsed.objects.len());
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    assert!(parsed
        .objects
        .iter()
        .any(|o| matches!(o, Object::Policy(_))));
    (engine, inv)
}

/// An address outside the inventory (TEST-NET-2): identity `world`.
const WORLD: &str = "198.51.100.7";

fn ip(inv: &Inventory, name: &str) -> IpAddr {
    if name == "world" {
        return WORLD.parse().unwrap();
    }
    inv.endpoints
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
        .ips[0]
}

/// One side of a verdict: `-` (not an endpoint, not checked), `allow` (nothing decided:
/// Kubernetes default allow), `iso <policy>` (isolation default deny), `<policy> <rule>`.
fn side(d: Option<&Decision<'_>>) -> String {
    let Some(d) = d else { return "-".into() };
    match d.by {
        DecidedBy::Rule(r) => {
            // The decision carries the rule's own action.
            let want = match r.action {
                Action::Allow | Action::Pass => FlowAction::Allow,
                Action::Drop => FlowAction::Drop,
                Action::Reject => FlowAction::Reject,
            };
            assert_eq!(d.action, want, "{r:?}");
            format!("{} {}", r.policy.key, r.rule_name)
        }
        DecidedBy::Isolation(p) => format!("iso {}", p.key),
        DecidedBy::DefaultAllow => "allow".into(),
        DecidedBy::DefaultDeny => "deny".into(),
    }
}

fn describe(v: &Verdict<'_>) -> String {
    format!("{} | {}", side(v.egress.as_ref()), side(v.ingress.as_ref()))
}

/// `(source, destination, protocol, port, verdict, [what decided: "egress | ingress"] per
/// flavour)`. Endpoints are named by their inventory name; `world` is an outside address.
type Case = (
    &'static str,
    &'static str,
    IpProtocol,
    u16,
    FlowAction,
    &'static [&'static str],
);

fn query(inv: &Inventory, src: &str, dst: &str, proto: IpProtocol, port: u16) -> FlowQuery {
    let (s, d) = (ip(inv, src), ip(inv, dst));
    match proto {
        Icmp => FlowQuery::icmp(s, d, 8, 0),
        _ => FlowQuery::new(s, d, proto, 41000, port),
    }
}

/// Check every case against the engine built from `files`; `column` picks the expected
/// deciders. Reports every mismatch at once.
fn check(files: &[&str], column: usize, cases: &[Case]) {
    let (mut engine, inv) = load(files);
    let snap = engine.snapshot();
    let mut bad = Vec::new();
    for (src, dst, proto, port, want, by) in cases {
        let v = snap.evaluate(&query(&inv, src, dst, *proto, *port));
        let got = describe(&v);
        if v.action != *want || v.audit || got != by[column] {
            bad.push(format!(
                "{src} -> {dst} {proto}/{port}: want {want:?} by [{}], got {:?} by [{got}]{}",
                by[column],
                v.action,
                if v.audit { " (audit)" } else { "" }
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{files:?}: {} of {} cases wrong:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

const K8S: &str = "k8s/payments.yaml";
const ANTREA: &str = "antrea/payments.yaml";
const CILIUM: &str = "cilium/payments.yaml";
const CLUSTER: &str = "antrea/cluster.yaml";

/// The README's intent; columns: Kubernetes, Antrea, Cilium.
const PAYMENTS: &[Case] = &[
    // api-gateway (edge) -> payments-api TCP 8080: the one way in.
    (
        "api-gateway",
        "payments-api",
        Tcp,
        8080,
        A,
        &[
            "allow | K8sNP:payments/payments-api-ingress ingress-0",
            "allow | ANP:payments/payments-api allow-gateway",
            "allow | CNP:payments/payments-api ingress-0",
        ],
    ),
    // ... but no other port or protocol of it.
    (
        "api-gateway",
        "payments-api",
        Tcp,
        9999,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    (
        "api-gateway",
        "payments-api",
        Tcp,
        443,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    (
        "api-gateway",
        "payments-api",
        Udp,
        8080,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    (
        "api-gateway",
        "payments-api",
        Icmp,
        0,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    // Every other endpoint -> payments-api: denied at payments-api's ingress.
    (
        "payments-batch",
        "payments-api",
        Tcp,
        8080,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    (
        "payments-db",
        "payments-api",
        Tcp,
        8080,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    (
        "jumphost",
        "payments-api",
        Tcp,
        8080,
        D,
        &[
            "allow | iso K8sNP:payments/payments-api-ingress",
            "allow | ANP:payments/payments-api drop-other-ingress",
            "allow | iso CNP:payments/payments-api",
        ],
    ),
    (
        "world",
        "payments-api",
        Tcp,
        8080,
        D,
        &[
            "- | iso K8sNP:payments/payments-api-ingress",
            "- | ANP:payments/payments-api drop-other-ingress",
            "- | iso CNP:payments/payments-api",
        ],
    ),
    // payments-api -> payments-db 5432: allowed by both ends' policies.
    (
        "payments-api",
        "payments-db",
        Tcp,
        5432,
        A,
        &[
            "K8sNP:payments/payments-api-egress egress-0 | K8sNP:payments/payments-db-ingress ingress-0",
            "ANP:payments/payments-api allow-db | ANP:payments/payments-db allow-api",
            "CNP:payments/payments-api egress-0 | CNP:payments/payments-db ingress-0",
        ],
    ),
    // ... and nothing else of payments-db (both ends refuse; the egress side decides first).
    (
        "payments-api",
        "payments-db",
        Tcp,
        22,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | iso K8sNP:payments/payments-db-ingress",
            "ANP:payments/payments-api drop-other-egress | ANP:payments/payments-db drop-other-ingress",
            "iso CNP:payments/payments-api | CNP:payments/payments-db ingressDeny-0",
        ],
    ),
    (
        "payments-api",
        "payments-db",
        Tcp,
        5433,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | iso K8sNP:payments/payments-db-ingress",
            "ANP:payments/payments-api drop-other-egress | ANP:payments/payments-db drop-other-ingress",
            "iso CNP:payments/payments-api | iso CNP:payments/payments-db",
        ],
    ),
    (
        "payments-api",
        "payments-db",
        Udp,
        5432,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | iso K8sNP:payments/payments-db-ingress",
            "ANP:payments/payments-api drop-other-egress | ANP:payments/payments-db drop-other-ingress",
            "iso CNP:payments/payments-api | iso CNP:payments/payments-db",
        ],
    ),
    // Only payments-api may reach the database.
    (
        "payments-batch",
        "payments-db",
        Tcp,
        5432,
        D,
        &[
            "allow | iso K8sNP:payments/payments-db-ingress",
            "allow | ANP:payments/payments-db drop-other-ingress",
            "allow | iso CNP:payments/payments-db",
        ],
    ),
    (
        "jumphost",
        "payments-db",
        Tcp,
        22,
        D,
        &[
            "allow | iso K8sNP:payments/payments-db-ingress",
            "allow | ANP:payments/payments-db drop-other-ingress",
            "allow | CNP:payments/payments-db ingressDeny-0",
        ],
    ),
    // payments-api -> anything but payments-db:5432: denied at payments-api's egress.
    (
        "payments-api",
        "api-gateway",
        Tcp,
        443,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | allow",
            "ANP:payments/payments-api drop-other-egress | allow",
            "iso CNP:payments/payments-api | allow",
        ],
    ),
    (
        "payments-api",
        "payments-batch",
        Tcp,
        5432,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | allow",
            "ANP:payments/payments-api drop-other-egress | allow",
            "iso CNP:payments/payments-api | allow",
        ],
    ),
    (
        "payments-api",
        "world",
        Udp,
        53,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | -",
            "ANP:payments/payments-api drop-other-egress | -",
            "iso CNP:payments/payments-api | -",
        ],
    ),
    // What the intent does not restrict stays open (no over-isolation).
    (
        "payments-db",
        "world",
        Udp,
        53,
        A,
        &["allow | -", "allow | -", "allow | -"],
    ),
    (
        "jumphost",
        "api-gateway",
        Tcp,
        443,
        A,
        &["allow | allow", "allow | allow", "allow | allow"],
    ),
    (
        "world",
        "payments-batch",
        Tcp,
        22,
        A,
        &["- | allow", "- | allow", "- | allow"],
    ),
];

#[test]
fn payments_kubernetes() {
    check(&[K8S], 0, PAYMENTS);
}

#[test]
fn payments_antrea() {
    check(&[ANTREA], 1, PAYMENTS);
}

#[test]
fn payments_cilium() {
    check(&[CILIUM], 2, PAYMENTS);
}

/// The securityops SSH guard (`antrea/cluster.yaml`, two ClusterGroups) on top of the
/// Kubernetes and of the Antrea payments policies; columns: with K8s, with Antrea.
const SSH_GUARD: &[Case] = &[
    // The jumphost (group `jumphosts`) may SSH into every payments VM (group
    // `payments-vms` = namespaces labelled team=pay), overriding the application policies.
    (
        "jumphost",
        "payments-db",
        Tcp,
        22,
        A,
        &[
            "allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost",
            "allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost",
        ],
    ),
    (
        "jumphost",
        "payments-api",
        Tcp,
        22,
        A,
        &[
            "allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost",
            "allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost",
        ],
    ),
    (
        "jumphost",
        "payments-batch",
        Tcp,
        22,
        A,
        &[
            "allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost",
            "allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost",
        ],
    ),
    // Every other SSH attempt into payments VMs is rejected.
    (
        "api-gateway",
        "payments-api",
        Tcp,
        22,
        J,
        &[
            "allow | ACNP:payments-ssh-guard reject-other-ssh",
            "allow | ACNP:payments-ssh-guard reject-other-ssh",
        ],
    ),
    (
        "payments-batch",
        "payments-db",
        Tcp,
        22,
        J,
        &[
            "allow | ACNP:payments-ssh-guard reject-other-ssh",
            "allow | ACNP:payments-ssh-guard reject-other-ssh",
        ],
    ),
    (
        "world",
        "payments-batch",
        Tcp,
        22,
        J,
        &[
            "- | ACNP:payments-ssh-guard reject-other-ssh",
            "- | ACNP:payments-ssh-guard reject-other-ssh",
        ],
    ),
    // payments-api's own egress refuses SSH before the receiver's Reject is reached.
    (
        "payments-api",
        "payments-db",
        Tcp,
        22,
        D,
        &[
            "iso K8sNP:payments/payments-api-egress | ACNP:payments-ssh-guard reject-other-ssh",
            "ANP:payments/payments-api drop-other-egress | ACNP:payments-ssh-guard reject-other-ssh",
        ],
    ),
    // Not SSH, or not a payments VM: the guard does not decide.
    (
        "jumphost",
        "payments-db",
        Tcp,
        5432,
        D,
        &[
            "allow | iso K8sNP:payments/payments-db-ingress",
            "allow | ANP:payments/payments-db drop-other-ingress",
        ],
    ),
    (
        "api-gateway",
        "payments-api",
        Tcp,
        8080,
        A,
        &[
            "allow | K8sNP:payments/payments-api-ingress ingress-0",
            "allow | ANP:payments/payments-api allow-gateway",
        ],
    ),
    (
        "payments-batch",
        "api-gateway",
        Tcp,
        22,
        A,
        &["allow | allow", "allow | allow"],
    ),
    (
        "api-gateway",
        "jumphost",
        Tcp,
        22,
        A,
        &["allow | allow", "allow | allow"],
    ),
];

#[test]
fn ssh_guard_over_kubernetes() {
    check(&[K8S, CLUSTER], 0, SSH_GUARD);
}

#[test]
fn ssh_guard_over_antrea() {
    check(&[ANTREA, CLUSTER], 1, SSH_GUARD);
}

/// The guard alone: the SSH part of the table, with everything else open.
#[test]
fn ssh_guard_alone() {
    let cases: &[Case] = &[
        (
            "jumphost",
            "payments-db",
            Tcp,
            22,
            A,
            &["allow | ACNP:payments-ssh-guard allow-ssh-from-jumphost"],
        ),
        (
            "api-gateway",
            "payments-db",
            Tcp,
            22,
            J,
            &["allow | ACNP:payments-ssh-guard reject-other-ssh"],
        ),
        (
            "payments-api",
            "payments-db",
            Tcp,
            22,
            J,
            &["allow | ACNP:payments-ssh-guard reject-other-ssh"],
        ),
        // The guard's rules are ingress rules: SSH *out of* payments VMs is not its business.
        ("payments-db", "jumphost", Tcp, 22, A, &["allow | allow"]),
        (
            "api-gateway",
            "payments-db",
            Tcp,
            5432,
            A,
            &["allow | allow"],
        ),
    ];
    check(&[CLUSTER], 0, cases);
}

/// The Reject rule is logged with its label, and the rule identity the flow log carries is
/// the parser's stable one.
#[test]
fn reject_is_logged_with_its_label() {
    let (mut engine, inv) = load(&[ANTREA, CLUSTER]);
    let snap = engine.snapshot();
    let v = snap.evaluate(&query(&inv, "payments-batch", "payments-db", Tcp, 22));
    assert_eq!(v.action, J);
    let d = v.deciding().unwrap();
    let rule = d.rule().unwrap();
    assert_eq!(rule.rule_name, "reject-other-ssh");
    assert_eq!(rule.log_label.as_deref(), Some("ssh-blocked"));
    assert!(d.log());
    let parsed = engine
        .policies()
        .find(|p| p.key.name == "payments-ssh-guard")
        .unwrap();
    assert_eq!(d.rule_id(), Some(parsed.rules[1].id));
    // The drop-other rules of the Antrea flavour log too, the isolation of K8s cannot.
    let v = snap.evaluate(&query(&inv, "payments-api", "api-gateway", Tcp, 443));
    let d = v.deciding().unwrap();
    assert!(d.log());
    assert_eq!(
        d.rule().unwrap().log_label.as_deref(),
        Some("payments-api-egress-deny")
    );
}

/// The flavours agree with each other on the verdict of every flow between the inventory's
/// endpoints (and the outside) over a port sweep, not only on the hand-picked cases.
#[test]
fn flavours_agree_on_the_whole_matrix() {
    let names = [
        "api-gateway",
        "payments-api",
        "payments-db",
        "payments-batch",
        "jumphost",
        "world",
    ];
    let flows: Vec<(IpProtocol, u16)> = [22u16, 53, 443, 5432, 5433, 8080, 8081]
        .iter()
        .flat_map(|p| [(Tcp, *p), (Udp, *p)])
        .chain([(Icmp, 0)])
        .collect();
    let snaps: Vec<_> = [K8S, ANTREA, CILIUM]
        .iter()
        .map(|f| {
            let (mut engine, inv) = load(&[f]);
            (engine.snapshot(), inv)
        })
        .collect();
    let mut n = 0;
    let mut bad = Vec::new();
    for s in names {
        for d in names {
            if s == d {
                continue;
            }
            for (proto, port) in &flows {
                let verdicts: Vec<FlowAction> = snaps
                    .iter()
                    .map(|(snap, inv)| snap.evaluate(&query(inv, s, d, *proto, *port)).action)
                    .collect();
                n += 1;
                // The intent, stated once.
                let want = match (s, d, proto, port) {
                    ("api-gateway", "payments-api", Tcp, 8080) => A,
                    ("payments-api", "payments-db", Tcp, 5432) => A,
                    (_, "payments-api" | "payments-db", _, _) => D,
                    ("payments-api", _, _, _) => D,
                    _ => A,
                };
                if verdicts.iter().any(|v| *v != want) {
                    bad.push(format!(
                        "{s} -> {d} {proto}/{port}: want {want:?}, K8s/Antrea/Cilium {verdicts:?}"
                    ));
                }
            }
        }
    }
    assert!(n > 400);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Auditing the `payments` namespace (what the API's per-namespace audit switch does):
/// every would-be drop decided by a payments endpoint is forwarded and reported with its
/// decider; drops decided elsewhere, and allowed flows, are unchanged.
#[test]
fn payments_namespace_in_audit_mode() {
    for files in [[K8S], [ANTREA], [CILIUM]] {
        let (mut engine, inv) = load(&files);
        assert!(engine.set_namespace_audit("payments", true));
        let snap = engine.snapshot();
        for (src, dst, proto, port, want, _) in PAYMENTS {
            let v = snap.evaluate(&query(&inv, src, dst, *proto, *port));
            assert_eq!(v.action, A, "{files:?} {src} -> {dst} {proto}/{port}");
            assert_eq!(
                v.audit,
                *want == D,
                "{files:?} {src} -> {dst} {proto}/{port}"
            );
            if v.audit {
                let d = v.deciding().unwrap();
                assert_eq!(d.action, D);
                assert!(d
                    .policy()
                    .is_some_and(|p| p.key.namespace.as_deref() == Some("payments")));
            }
        }
        assert!(engine.set_namespace_audit("payments", false));
        let snap = engine.snapshot();
        let v = snap.evaluate(&query(&inv, "jumphost", "payments-api", Tcp, 8080));
        assert_eq!((v.action, v.audit), (D, false));
    }
}

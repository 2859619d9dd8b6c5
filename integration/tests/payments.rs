//! Issue 3, scenarios 1 and 2: the payments example of `configs/policies/` enforced by vdfwd
//! between three real QEMU guests — api-gateway (namespace `edge`), payments-api and
//! payments-db (namespace `payments`) — configured by `configs/demo/vdfwd.toml`, the very
//! configuration the demo uses.
//!
//! Every verdict is checked from the guests (a real TCP client against a real listener) and
//! in vdfwd's flow log (verdict plus the deciding policy / rule). Listeners run on every port
//! probed, so a refusal or a silence can only come from vdfwd, never from a closed port.
//!
//! Needs root and QEMU: without them these tests FAIL naming `install-deps.sh`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use vdfw_integration::{require, ConnectOutcome, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec};

const API: &str = "10.0.1.5";
const DB: &str = "10.0.1.6";
const GW: &str = "10.0.2.10";
const VNICS: [&str; 3] = ["api-gateway", "payments-api", "payments-db"];

/// Finds the flow record of `src -> dst:port` with `verdict` decided in `direction`, printing
/// it. Each new connection is decided (and logged) twice between local vNICs: by the sender's
/// egress policy on its vNIC, then by the receiver's ingress policy on the receiver's vNIC.
fn flow(vd: &Vdfwd, src: &str, dst: &str, port: u16, verdict: &str, direction: &str) -> Value {
    let (s, d) = (ip(src), ip(dst));
    let r = vd
        .wait_flow(
            &format!("{src} -> {dst}:{port} {verdict} ({direction})"),
            Duration::from_secs(5),
            |r| is_flow_in(r, s, d, port, verdict, direction),
        )
        .unwrap();
    eprintln!("    flow log: {}", show_flow(&r));
    r
}

fn str_at<'a>(r: &'a Value, path: &str) -> &'a str {
    field(r, path).and_then(Value::as_str).unwrap_or("")
}

/// Antrea flavour (`antrea/payments.yaml` + `antrea/cluster.yaml`): the allow / drop matrix of
/// the example, Reject vs Drop as the client sees them, and the flow log naming the deciding
/// policy and rule of each denial.
#[test]
fn payments_antrea_allow_deny_reject_and_flow_log() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu]).unwrap();
    let clock = Clock::start("payments_antrea");
    let vd = Vdfwd::start(
        VdfwdSpec::new(VdfwdConfig::load(DEMO_CONFIG).unwrap())
            .policies(["configs/policies/antrea"]),
    )
    .unwrap();
    let g = boot(&vd, &VNICS, 16);
    let (gw, api, db) = (&g[0], &g[1], &g[2]);
    clock.step("three guests up");
    api.spawn_tcp_echo(8080).unwrap();
    db.spawn_tcp_echo(5432).unwrap();
    db.spawn_tcp_echo(22).unwrap();

    // --- Scenario 1: the isolation matrix ---
    expect_echo(
        gw,
        ip(API),
        8080,
        "charge-order-42",
        "allow-gateway: api-gateway in namespace edge may reach payments-api:8080",
    );
    let r = flow(&vd, GW, API, 8080, "forwarded", "ingress");
    assert_eq!(str_at(&r, "rule_name"), "allow-gateway", "{r}");

    expect_connect(
        db,
        ip(API),
        8080,
        2,
        ConnectOutcome::TimedOut,
        "payments-api's drop-other-ingress: only the gateway may call it",
    );
    let r = flow(&vd, DB, API, 8080, "dropped", "ingress");
    assert!(str_at(&r, "policy").contains("payments-api"), "{r}");
    assert_eq!(str_at(&r, "rule_name"), "drop-other-ingress", "{r}");
    assert_eq!(str_at(&r, "log_label"), "payments-api-ingress-deny", "{r}");

    expect_echo(
        api,
        ip(DB),
        5432,
        "SELECT 1",
        "allow-db (egress of payments-api) and allow-api (ingress of payments-db)",
    );
    let r = flow(&vd, API, DB, 5432, "forwarded", "egress");
    assert_eq!(str_at(&r, "rule_name"), "allow-db", "{r}");
    let r = flow(&vd, API, DB, 5432, "forwarded", "ingress");
    assert_eq!(str_at(&r, "rule_name"), "allow-api", "{r}");

    expect_connect(
        api,
        ip(DB),
        22,
        2,
        ConnectOutcome::TimedOut,
        "payments-api's egress allows only payments-db:5432 (drop-other-egress)",
    );
    let r = flow(&vd, API, DB, 22, "dropped", "egress");
    assert_eq!(str_at(&r, "rule_name"), "drop-other-egress", "{r}");
    clock.step("isolation matrix checked");

    // --- Scenario 2: Reject answers at once, Drop leaves the client waiting ---
    let took = expect_connect(
        gw,
        ip(DB),
        22,
        5,
        ConnectOutcome::Refused,
        "securityops ClusterNetworkPolicy payments-ssh-guard rejects SSH from anywhere but a jumphost",
    );
    assert!(
        took < Duration::from_secs(1),
        "a Reject must answer at once (TCP RST), took {took:?}"
    );
    eprintln!("    Reject: Refused after {took:?} (measured in the guest)");
    let r = flow(&vd, GW, DB, 22, "rejected", "ingress");
    assert!(str_at(&r, "policy").contains("payments-ssh-guard"), "{r}");
    assert_eq!(str_at(&r, "rule_name"), "reject-other-ssh", "{r}");
    assert_eq!(str_at(&r, "log_label"), "ssh-blocked", "{r}");

    let took = expect_connect(
        gw,
        ip(DB),
        5432,
        2,
        ConnectOutcome::TimedOut,
        "payments-db's drop-other-ingress: only payments-api may use postgres",
    );
    assert!(
        took >= Duration::from_secs(2),
        "a Drop must leave the client waiting for its whole timeout, gave up after {took:?}"
    );
    eprintln!("    Drop: TimedOut after {took:?}");
    let r = flow(&vd, GW, DB, 5432, "dropped", "ingress");
    assert_eq!(str_at(&r, "rule_name"), "drop-other-ingress", "{r}");
    assert!(str_at(&r, "policy").contains("payments-db"), "{r}");

    // The data path counted them by reason, on the sending vNIC.
    let c = vd
        .wait_counters(
            "api-gateway's policy_rejected and policy_denied",
            Duration::from_secs(5),
            |_| {
                vd.drops("api-gateway", "policy_rejected").unwrap_or(0) >= 1
                    && vd.drops("api-gateway", "policy_denied").unwrap_or(0) >= 1
            },
        )
        .map(|_| vd.all_drops("api-gateway").unwrap());
    eprintln!("    api-gateway drops: {:?}", c.unwrap());
    clock.step("reject vs drop checked");
}

/// Kubernetes NetworkPolicy flavour, then the Cilium flavour of the same intent applied to
/// the running guests with a SIGHUP reload: the same matrix holds under both, and the flow
/// log names each flavour's deciding policy.
#[test]
fn payments_k8s_then_cilium_by_reload() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu]).unwrap();
    let clock = Clock::start("payments_k8s_then_cilium");
    let vd = Vdfwd::start(
        VdfwdSpec::new(VdfwdConfig::load(DEMO_CONFIG).unwrap()).policies(["configs/policies/k8s"]),
    )
    .unwrap();
    let g = boot(&vd, &VNICS, 16);
    let (gw, api, db) = (&g[0], &g[1], &g[2]);
    clock.step("three guests up");
    api.spawn_tcp_echo(8080).unwrap();
    db.spawn_tcp_echo(5432).unwrap();
    db.spawn_tcp_echo(22).unwrap();

    let matrix = |flavour: &str, generation: Option<u64>| {
        let newer = |r: &Value| {
            generation.is_none_or(|g| field(r, "generation").and_then(Value::as_u64) >= Some(g))
        };
        expect_echo(
            gw,
            ip(API),
            8080,
            "order",
            &format!("{flavour}: gateway -> api allowed"),
        );
        expect_connect(
            db,
            ip(API),
            8080,
            2,
            ConnectOutcome::TimedOut,
            &format!("{flavour}: payments-api admits only the gateway"),
        );
        let r = vd
            .wait_flow("db -> api:8080 dropped", Duration::from_secs(5), |r| {
                is_flow(r, ip(DB), ip(API), 8080, "dropped") && newer(r)
            })
            .unwrap();
        eprintln!("    {flavour} flow log: {}", show_flow(&r));
        assert!(
            str_at(&r, "policy").contains("payments-api"),
            "{flavour}: the drop must name the policy isolating payments-api: {r}"
        );
        expect_echo(
            api,
            ip(DB),
            5432,
            "SELECT 1",
            &format!("{flavour}: api -> db:5432 allowed"),
        );
        expect_connect(
            api,
            ip(DB),
            22,
            2,
            ConnectOutcome::TimedOut,
            &format!("{flavour}: payments-api may only reach payments-db:5432"),
        );
        expect_connect(
            gw,
            ip(DB),
            5432,
            2,
            ConnectOutcome::TimedOut,
            &format!("{flavour}: payments-db admits only payments-api"),
        );
    };

    matrix("k8s", None);
    clock.step("k8s flavour checked");

    vd.replace_policies(&["configs/policies/cilium"]).unwrap();
    let policy = vd.reload().unwrap();
    let generation = field(&policy, "generation").and_then(Value::as_u64);
    eprintln!("    reloaded to cilium: {policy}");
    matrix("cilium", generation);
    // Cilium's ingressDeny on 22 is a rule of its own, not just isolation.
    expect_connect(
        gw,
        ip(DB),
        22,
        2,
        ConnectOutcome::TimedOut,
        "cilium: payments-db's ingressDeny blocks SSH",
    );
    let r = vd
        .wait_flow(
            "gw -> db:22 dropped (cilium)",
            Duration::from_secs(5),
            |r| is_flow(r, ip(GW), ip(DB), 22, "dropped"),
        )
        .unwrap();
    eprintln!("    cilium flow log: {}", show_flow(&r));
    assert!(str_at(&r, "policy").contains("payments-db"), "{r}");
    clock.step("cilium flavour checked");
}

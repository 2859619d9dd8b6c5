//! Issue 3, scenario 3: a guest that forges its source IP or MAC gets nothing through, while
//! its real identity keeps working.
//!
//! The forged identity is a privileged one: vNIC `trusted` (no guest attached) may reach the
//! server's port 9090, which the client itself may not. Forging it must not open 9090, and a
//! forged source must not even keep the client's own allowed port (8080) working.
//!
//! Needs root and QEMU: without them this test FAILS naming `install-deps.sh`.

mod common;

use std::time::Duration;

use common::*;
use vdfw_integration::{
    require, ConnectOutcome, MacAddr, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef,
};

const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";
const TRUSTED: &str = "10.0.0.3";
const T: Duration = Duration::from_secs(20);

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: lab
spec:
  podSelector:
    matchLabels: {app: server}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 8080}]
    - from: [{podSelector: {matchLabels: {app: trusted}}}]
      ports: [{port: 9090}]
"#;

fn config() -> VdfwdConfig {
    let vnic = |name: &str, n: u32, addr: &str| {
        VnicDef::new(name, "lab", MacAddr::local(n), ip(addr)).label("app", name)
    };
    VdfwdConfig::new()
        .with_vnic(vnic("client", 1, CLIENT))
        .with_vnic(vnic("server", 2, SERVER))
        .with_vnic(vnic("trusted", 3, TRUSTED))
}

#[test]
fn forged_ip_or_mac_gets_nothing_through_real_identity_still_works() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu]).unwrap();
    let clock = Clock::start("spoofing");
    let vd = Vdfwd::start(VdfwdSpec::new(config()).policy_text("lab.yaml", POLICY)).unwrap();
    let g = boot(&vd, &["client", "server"], 24);
    let (client, server) = (&g[0], &g[1]);
    clock.step("two guests up");
    server.spawn_tcp_echo(8080).unwrap();
    server.spawn_tcp_echo(9090).unwrap();

    // The real identity: 8080 allowed, 9090 not (only `trusted` may).
    expect_echo(
        client,
        ip(SERVER),
        8080,
        "real-identity",
        "client may reach 8080",
    );
    expect_connect(
        client,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "only `trusted` may reach 9090",
    );

    // --- Forged source IP: the client adds trusted's address and routes to the server from it.
    let spoofed_ip_before = vd.drops("client", "spoofed_source_ip").unwrap();
    client
        .exec_ok(
            &format!(
                "ip addr add {TRUSTED}/32 dev eth0 && ip route add {SERVER}/32 dev eth0 src {TRUSTED}"
            ),
            T,
        )
        .unwrap();
    let route = client
        .exec_ok(&format!("ip route get {SERVER}"), T)
        .unwrap();
    assert!(
        route.contains(&format!("src {TRUSTED}")),
        "the guest must really send from the forged address: {route}"
    );
    for port in [9090, 8080] {
        let (got, _) = client.tcp_connect_timed(ip(SERVER), port, 2).unwrap();
        assert_ne!(
            got,
            ConnectOutcome::Connected,
            "a connection from the forged source {TRUSTED} to {SERVER}:{port} got through"
        );
    }
    vd.wait_counters("client's spoofed_source_ip grows", T, |_| {
        vd.drops("client", "spoofed_source_ip").unwrap_or(0) >= spoofed_ip_before + 2
    })
    .unwrap();
    let r = vd
        .wait_flow("a spoof-guard drop from the forged address", T, |r| {
            is_flow(r, ip(TRUSTED), ip(SERVER), 9090, "dropped")
        })
        .unwrap();
    eprintln!("    flow log: {}", show_flow(&r));
    assert_eq!(
        field(&r, "vnic").and_then(|v| v.as_str()),
        Some("client"),
        "{r}"
    );
    assert_eq!(
        field(&r, "decided_by").and_then(|v| v.as_str()),
        Some("spoof_guard"),
        "{r}"
    );
    assert_eq!(
        field(&r, "drop_reason").and_then(|v| v.as_str()),
        Some("spoofed_source_ip"),
        "{r}"
    );
    let half_open = server
        .exec(&format!("netstat -tn | grep '{TRUSTED}:'"), T)
        .unwrap();
    assert!(
        !half_open.success(),
        "the server saw a SYN from the forged address:\n{}",
        half_open.output
    );
    client
        .exec_ok(
            &format!("ip route del {SERVER}/32 && ip addr del {TRUSTED}/32 dev eth0"),
            T,
        )
        .unwrap();
    clock.step("forged IP refused");

    // --- Forged MAC: the client takes trusted's MAC (its IP stays its own).
    let spoofed_mac_before = vd.drops("client", "spoofed_source_mac").unwrap();
    let forged_mac = MacAddr::local(3);
    let set_mac = |mac: MacAddr| {
        client
            .exec_ok(
                &format!(
                    "ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up \
                     && cat /sys/class/net/eth0/address"
                ),
                T,
            )
            .unwrap()
    };
    assert_eq!(set_mac(forged_mac).trim(), forged_mac.to_string());
    for port in [8080, 9090] {
        let (got, _) = client.tcp_connect_timed(ip(SERVER), port, 2).unwrap();
        assert_ne!(
            got,
            ConnectOutcome::Connected,
            "with the forged MAC {forged_mac}, {SERVER}:{port} was reachable"
        );
    }
    vd.wait_counters("client's spoofed_source_mac grows", T, |_| {
        vd.drops("client", "spoofed_source_mac").unwrap_or(0) > spoofed_mac_before
    })
    .unwrap();
    clock.step("forged MAC refused");

    // --- Back to the real identity: everything it is allowed works again.
    assert_eq!(
        set_mac(MacAddr::local(1)).trim(),
        MacAddr::local(1).to_string()
    );
    expect_echo(
        client,
        ip(SERVER),
        8080,
        "real-identity-again",
        "the real identity still works after the forgeries",
    );
    eprintln!("    client drops: {:?}", vd.all_drops("client").unwrap());
    clock.step("real identity works again");
}

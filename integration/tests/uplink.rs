//! Issue 3, scenario 6: the uplink. vdfwd runs inside a network namespace the test creates,
//! with its uplink TAP attached to a Linux bridge there; the bridge carries a "host" address
//! (10.0.0.254) with TCP listeners. The guest (QEMU outside the namespace: vhost-user sockets
//! are not namespaced) reaches the host only where an ipBlock rule allows it, and the host
//! reaches the guest only where one allows that.
//!
//! All addresses live in the namespace and the guest; nothing touches the machine's own
//! interfaces. Needs root and QEMU: without them this test FAILS naming `install-deps.sh`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vdfw_integration::{
    require, ConnectOutcome, MacAddr, NetNs, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef,
};

const GUEST: &str = "10.0.0.1";
const HOST: &str = "10.0.0.254";

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-uplink
  namespace: lab
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress, Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.0.254/32}}]
      ports: [{protocol: TCP, port: 8443}]
  ingress:
    - from: [{ipBlock: {cidr: 10.0.0.254/32}}]
      ports: [{protocol: TCP, port: 8080}]
"#;

/// A TCP echo server on the namespace's host address.
fn host_echo(ns: &NetNs, port: u16) -> Child {
    let child = ns
        .command("busybox")
        .args(["nc", "-ll", "-p", &port.to_string(), "-e", "cat"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !ns
        .run("ss", &["-ltn"])
        .unwrap()
        .contains(&format!(":{port} "))
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "host echo on {port} not listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// `sh -c script` inside the namespace, returning (success, output).
fn in_ns(ns: &NetNs, script: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "busybox", "sh", "-c", script])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn guest_reaches_the_uplink_host_only_where_policy_allows() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu, Prereq::NetTools]).unwrap();
    let clock = Clock::start("uplink");
    let ns =
        NetNs::with_bridge("uplink", "br0", Some(format!("{HOST}/24").parse().unwrap())).unwrap();
    let cfg = VdfwdConfig::new()
        .with_vnic(VnicDef::new("web", "lab", MacAddr::local(1), ip(GUEST)).label("app", "web"))
        .with_uplink("vdfwup0", Some("br0"));
    let vd = Vdfwd::start(
        VdfwdSpec::new(cfg)
            .policy_text("web.yaml", POLICY)
            .in_netns(&ns),
    )
    .unwrap();
    let links = ns.ip(&["-o", "link", "show", "master", "br0"]).unwrap();
    assert!(
        links.contains("vdfwup0"),
        "vdfwd's TAP is not on br0: {links}"
    );
    let mut host_servers = vec![host_echo(&ns, 8443), host_echo(&ns, 9000)];
    let g = boot(&vd, &["web"], 24);
    let web = &g[0];
    clock.step("guest up, vdfwd's uplink on the namespace's bridge");
    web.spawn_tcp_echo(8080).unwrap();
    web.spawn_tcp_echo(8081).unwrap();

    // Guest -> host: 8443 allowed by the ipBlock rule, 9000 not.
    expect_echo(
        web,
        ip(HOST),
        8443,
        "to-the-host",
        "egress ipBlock 10.0.0.254/32 port 8443",
    );
    expect_connect(
        web,
        ip(HOST),
        9000,
        2,
        ConnectOutcome::TimedOut,
        "egress allows only port 8443 to the host",
    );
    let r = vd
        .wait_flow("web -> host:9000 dropped", Duration::from_secs(5), |r| {
            is_flow(r, ip(GUEST), ip(HOST), 9000, "dropped")
        })
        .unwrap();
    eprintln!("    flow log: {}", show_flow(&r));

    // Host -> guest: 8080 allowed by the ingress ipBlock rule, 8081 not.
    let (ok, out) = in_ns(&ns, &format!("printf from-the-host | nc -w 3 {GUEST} 8080"));
    assert!(
        ok && out == "from-the-host",
        "host -> guest:8080 should echo: {out:?}"
    );
    let (ok, out) = in_ns(&ns, &format!("nc -w 2 {GUEST} 8081 -e true"));
    assert!(
        !ok && out.to_lowercase().contains("timed out"),
        "host -> guest:8081 must time out (not in the ingress rule): {out:?}"
    );
    let r = vd
        .wait_flow("host -> web:8081 dropped", Duration::from_secs(5), |r| {
            is_flow_in(r, ip(HOST), ip(GUEST), 8081, "dropped", "ingress")
        })
        .unwrap();
    eprintln!("    flow log: {}", show_flow(&r));
    let up = vd.port_status("uplink:vdfwup0").unwrap();
    eprintln!("    uplink port: {up}");
    clock.step("uplink allow / deny both ways checked");

    for c in &mut host_servers {
        let _ = c.kill();
        let _ = c.wait();
    }
}

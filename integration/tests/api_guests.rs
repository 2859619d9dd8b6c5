//! Issue 4 with real guests: what the API shows and does for traffic QEMU guests send through
//! a real vdfwd process, driven by the real `vdfwctl` over vdfwd's API socket.
//!
//! 1. `policy generate` round trip: with no policy, the client talks to the server on two
//!    ports; `vdfwctl policy generate` turns the observed flows into an allow-list policy
//!    (Antrea flavour) that, applied back through the API, allows exactly those flows: the two
//!    observed ports still connect, a port never observed is now denied.
//! 2. observe: a connection an explicit Drop rule denies shows up in `vdfwctl observe
//!    --verdict DROPPED` with the endpoints, the deciding policy and rule name.
//! 3. audit: `vdfwctl audit on --policy` forwards what that policy drops and reports it with
//!    verdict AUDIT and the rule that would have dropped it; `audit off` enforces again.
//!
//! 4. metrics: `/metrics` on the API socket counts packets and policy drops per vNIC and
//!    sessions per rule for that traffic.
//!
//! Needs root and QEMU: without them this test FAILS naming `install-deps.sh`.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use vdfw_integration::{
    require, ConnectOutcome, MacAddr, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef,
};

const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";

/// The server admits the client on 8080; 9090 is dropped by a named rule.
const GUARD: &str = r#"
apiVersion: crd.antrea.io/v1beta1
kind: NetworkPolicy
metadata:
  name: server-guard
  namespace: lab
spec:
  priority: 5
  tier: application
  appliedTo: [{podSelector: {matchLabels: {app: server}}}]
  ingress:
    - name: web-from-client
      action: Allow
      from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{protocol: TCP, port: 8080}]
    - name: no-9090
      action: Drop
      ports: [{protocol: TCP, port: 9090}]
"#;

/// `vdfwctl -o json observe ARGS`: one record per line.
fn observe(vd: &Vdfwd, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-o", "json", "observe", "--last", "500"];
    all.extend_from_slice(args);
    let out = vd.vdfwctl(&all).unwrap();
    assert!(
        out.status.success(),
        "vdfwctl observe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Whether an API flow record is the TCP flow `src -> dst:port` with `verdict`.
fn api_flow(r: &Value, src: IpAddr, dst: IpAddr, port: u16, verdict: &str) -> bool {
    let t = &r["tuple"];
    t["src"] == src.to_string()
        && t["dst"] == dst.to_string()
        && t["dst_port"] == port
        && r["verdict"] == verdict
}

/// Waits (the flow log is drained asynchronously) for a record matching `pred`.
fn wait_api_flow(vd: &Vdfwd, args: &[&str], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = observe(vd, args);
        if let Some(r) = flows.iter().find(|r| pred(r)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no flow record {what} in `vdfwctl observe {}`; got:\n{}",
            args.join(" "),
            flows
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ctl_ok(vd: &Vdfwd, args: &[&str]) -> String {
    let out = vd.vdfwctl(args).unwrap();
    assert!(
        out.status.success(),
        "vdfwctl {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn observe_audit_and_generated_policy_with_real_guests() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu]).unwrap();
    let clock = Clock::start("api_guests");
    let cfg = VdfwdConfig::new()
        .with_vnic(
            VnicDef::new("client", "lab", MacAddr::local(1), ip(CLIENT)).label("app", "client"),
        )
        .with_vnic(
            VnicDef::new("server", "lab", MacAddr::local(2), ip(SERVER)).label("app", "server"),
        );
    let vd = Vdfwd::start(VdfwdSpec::new(cfg)).unwrap();
    let g = boot(&vd, &["client", "server"], 24);
    let (client, server) = (&g[0], &g[1]);
    for port in [7070, 8080, 9090] {
        server.spawn_tcp_echo(port).unwrap();
    }
    clock.step("vdfwd without policy, two guests up");

    // --- 1. policy generate round trip ------------------------------------------------------
    expect_echo(client, ip(SERVER), 8080, "gen-8080", "no policy yet");
    expect_echo(client, ip(SERVER), 7070, "gen-7070", "no policy yet");
    for port in [7070, 8080] {
        wait_api_flow(&vd, &["--namespace", "lab"], "observed", |r| {
            api_flow(r, ip(CLIENT), ip(SERVER), port, "FORWARDED")
        });
    }
    let generated = ctl_ok(
        &vd,
        &[
            "policy",
            "generate",
            "--flavor",
            "antrea",
            "--namespace",
            "lab",
            "--last",
            "1000",
        ],
    );
    eprintln!("    generated:\n{generated}");
    let gen_file = vd.dir().join("generated.yaml");
    std::fs::write(&gen_file, &generated).unwrap();
    let applied = ctl_ok(&vd, &["apply", "-f", gen_file.to_str().unwrap()]);
    eprintln!("    {}", applied.trim());
    clock.step("generated policy applied through the API");
    expect_echo(
        client,
        ip(SERVER),
        8080,
        "after-8080",
        "observed, so generated",
    );
    expect_echo(
        client,
        ip(SERVER),
        7070,
        "after-7070",
        "observed, so generated",
    );
    expect_connect(
        client,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "never observed: the generated allow-list must not admit it",
    );
    let denied = wait_api_flow(&vd, &["--verdict", "DROPPED"], "9090 denied", |r| {
        api_flow(r, ip(CLIENT), ip(SERVER), 9090, "DROPPED")
    });
    assert_eq!(
        denied["dst"]["endpoint"]["name"], "server",
        "the record names the receiving endpoint: {denied}"
    );
    clock.step("generated policy allows exactly the observed flows");
    // The generated policies go; the guard policy comes (by name, through the API).
    let generated_names: Vec<String> = vd.vdfwctl_json(&["get", "policies"]).unwrap()["objects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["object"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !generated_names.is_empty(),
        "no policy listed after applying the generated one"
    );
    for name in &generated_names {
        let reference = name.trim_start_matches("policy ");
        ctl_ok(&vd, &["delete", "policy", reference]);
    }

    // --- 2. observe: the deciding rule of a drop -------------------------------------------
    let guard_file = vd.dir().join("guard.yaml");
    std::fs::write(&guard_file, GUARD).unwrap();
    ctl_ok(&vd, &["apply", "-f", guard_file.to_str().unwrap()]);
    expect_echo(
        client,
        ip(SERVER),
        8080,
        "guard-8080",
        "allowed by web-from-client",
    );
    expect_connect(
        client,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "dropped by no-9090",
    );
    let drop = wait_api_flow(
        &vd,
        &["--verdict", "DROPPED", "--policy", "server-guard"],
        "dropped by no-9090",
        |r| {
            api_flow(r, ip(CLIENT), ip(SERVER), 9090, "DROPPED") && r["policy"]["rule"] == "no-9090"
        },
    );
    eprintln!("    drop record: {drop}");
    assert_eq!(drop["direction"], "ingress", "{drop}");
    assert_eq!(drop["src"]["endpoint"]["name"], "client", "{drop}");
    assert_eq!(drop["policy"]["policy"]["name"], "server-guard", "{drop}");
    assert!(drop["src"]["identity"].as_u64().is_some(), "{drop}");
    let human = ctl_ok(&vd, &["observe", "--verdict", "DROPPED", "--last", "50"]);
    assert!(
        human.contains("no-9090") && human.contains("server-guard"),
        "human observe output names the policy and rule:\n{human}"
    );
    let allowed = wait_api_flow(&vd, &["--verdict", "FORWARDED"], "8080 allowed", |r| {
        api_flow(r, ip(CLIENT), ip(SERVER), 8080, "FORWARDED")
            && r["policy"]["rule"] == "web-from-client"
    });
    assert_eq!(allowed["direction"], "ingress", "{allowed}");
    clock.step("observe names the deciding rule of a drop and of an allow");

    // --- 3. audit mode per policy -----------------------------------------------------------
    ctl_ok(&vd, &["audit", "on", "--policy", "ANP:lab/server-guard"]);
    expect_echo(
        client,
        ip(SERVER),
        9090,
        "audited",
        "audit mode forwards what no-9090 would drop",
    );
    let audit = wait_api_flow(&vd, &["--verdict", "AUDIT"], "audited 9090", |r| {
        api_flow(r, ip(CLIENT), ip(SERVER), 9090, "AUDIT")
    });
    assert_eq!(audit["policy"]["rule"], "no-9090", "{audit}");
    let listed = vd
        .vdfwctl_json(&["get", "policy", "ANP:lab/server-guard"])
        .unwrap();
    assert_eq!(listed["audit"], true, "{listed}");
    ctl_ok(&vd, &["audit", "off", "--policy", "ANP:lab/server-guard"]);
    expect_connect(
        client,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "audit off: no-9090 drops again",
    );
    clock.step("audit on forwards and reports, audit off enforces");

    // --- 4. Prometheus metrics for that traffic ---------------------------------------------
    let metrics = scrape(&vd);
    let value = |prefix: &str, needles: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let client_tx = value(
        "vdfw_vnic_packets_total",
        &["lab/client", "direction=\"tx\""],
    );
    let denied = value("vdfw_vnic_drops_total", &["POLICY_DENIED"]);
    let rule_hits = value("vdfw_rule_sessions_total", &["rule=\"no-9090\""]);
    eprintln!(
        "    metrics: client tx {client_tx}, policy drops {denied}, no-9090 sessions {rule_hits}"
    );
    assert!(client_tx > 0, "no tx packets for lab/client:\n{metrics}");
    assert!(denied > 0, "no POLICY_DENIED drops counted:\n{metrics}");
    assert!(rule_hits > 0, "no sessions for rule no-9090:\n{metrics}");
    assert!(
        metrics.contains("vdfw_api_request_duration_seconds_bucket"),
        "no API latency histogram:\n{metrics}"
    );
}

/// `GET /metrics` over the API's unix socket (HTTP/1.0: the body ends at EOF).
fn scrape(vd: &Vdfwd) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(vd.api_socket()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: vdfwd\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

//! Issue 3, scenario 5: vdfwd restarts (SIGTERM, then SIGKILL) while the guests keep running.
//! The guests re-attach — the client's QEMU connects with `reconnect=1` (vdfwd listens), the
//! server's QEMU listens (`server=on`) and vdfwd connects — and traffic resumes under the same
//! policy: the allowed port works again, the denied one stays denied, and an allowed TCP
//! session that was open across the restarts carries on (picked up mid-stream, through policy).
//!
//! Needs root and QEMU: without them this test FAILS naming `install-deps.sh`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vdfw_integration::{
    require, ConnectOutcome, Guest, MacAddr, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef,
    VnicRole,
};

const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";

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
"#;

/// Allowed still allowed (payload echoed), denied still denied.
fn check_policy(client: &Guest, tag: &str) {
    expect_echo(
        client,
        ip(SERVER),
        8080,
        tag,
        "client -> server:8080 is allowed",
    );
    expect_connect(
        client,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "client -> server:9090 is not in the policy",
    );
}

/// Retries the allowed exchange until it works: how long traffic took to resume.
fn wait_resumed(client: &Guest, vd: &Vdfwd, tag: &str) -> Duration {
    let t = Instant::now();
    loop {
        if let Ok(reply) = client.tcp_exchange(ip(SERVER), 8080, tag, 2) {
            if reply == tag {
                return t.elapsed();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "traffic did not resume within 45 s after the restart; counters: {:?}",
            vd.counters().ok()
        );
    }
}

#[test]
fn guests_reattach_and_policy_holds_after_vdfwd_restarts() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu]).unwrap();
    let clock = Clock::start("restart");
    let cfg = VdfwdConfig::new()
        .with_vnic(
            VnicDef::new("client", "lab", MacAddr::local(1), ip(CLIENT)).label("app", "client"),
        )
        .with_vnic(
            VnicDef::new("server", "lab", MacAddr::local(2), ip(SERVER))
                .label("app", "server")
                .role(VnicRole::Connect),
        );
    let mut vd = Vdfwd::start(VdfwdSpec::new(cfg).policy_text("server.yaml", POLICY)).unwrap();
    let g = boot(&vd, &["client", "server"], 24);
    let (client, server) = (&g[0], &g[1]);
    clock.step("two guests up (client: vdfwd listens; server: vdfwd connects)");
    server.spawn_tcp_echo(8080).unwrap();
    server.spawn_tcp_echo(9090).unwrap();
    check_policy(client, "before-restart");
    // A session open across the restarts: vdfwd's connection table is gone after a restart,
    // so the session's next segment is mid-stream; conntrack picks it up through policy.
    let session = client.open_session(ip(SERVER), 8080).unwrap();
    client.session_send(&session, "session-before").unwrap();
    assert!(client
        .session_wait_for(&session, "session-before", Duration::from_secs(5))
        .unwrap());

    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        let old_pid = vd.pid();
        let status = vd.stop(signal, Duration::from_secs(10)).unwrap();
        if signal == libc::SIGTERM {
            assert!(
                status.success(),
                "vdfwd must exit cleanly on SIGTERM: {status}"
            );
        }
        // While vdfwd is gone nothing passes (and the guests keep running).
        assert_ne!(
            client.tcp_connect(ip(SERVER), 8080, 1).unwrap(),
            ConnectOutcome::Connected,
            "traffic flowed with vdfwd stopped"
        );
        assert!(
            !client.has_exited() && !server.has_exited(),
            "a guest died with vdfwd"
        );
        clock.step(&format!("vdfwd stopped with {name} ({status})"));

        vd.start_again().unwrap();
        assert_ne!(vd.pid(), old_pid);
        vd.wait_connected(&["client", "server"], Duration::from_secs(30))
            .unwrap();
        let resumed = wait_resumed(client, &vd, &format!("after-{name}"));
        clock.step(&format!(
            "both guests re-attached, traffic resumed {resumed:?} after"
        ));
        check_policy(client, &format!("policy-after-{name}"));
        let line = format!("session-after-{name}");
        client.session_send(&session, &line).unwrap();
        assert!(
            client
                .session_wait_for(&session, &line, Duration::from_secs(10))
                .unwrap(),
            "the allowed TCP session open across the {name} restart did not resume; got:\n{}",
            client.session_output(&session).unwrap()
        );
        assert!(vd.is_running());
    }
    let sessions = vd.port_status("client").unwrap();
    eprintln!("    client port after the restarts: {sessions}");
}

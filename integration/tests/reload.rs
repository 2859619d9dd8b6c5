//! Issue 3, scenario 4: a policy change while connections are open. After the policy
//! directory is rewritten and vdfwd gets SIGHUP, a connection the new policy still allows keeps
//! exchanging data over the same TCP session, and one it no longer allows is cut.
//!
//! The sessions are long-lived `nc` processes in the client guest fed through a FIFO
//! ([`vdfw_integration::Guest::open_session`]), talking to echo servers: each line sent must
//! come back over the same connection.
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
const ECHO: Duration = Duration::from_secs(5);

/// The server admits the client on `ports`.
fn policy(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-ingress
  namespace: lab
spec:
  podSelector:
    matchLabels: {{app: server}}
  ingress:
    - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
      ports: [{}]
"#,
        ports.join(", ")
    )
}

#[test]
fn reload_keeps_allowed_sessions_and_cuts_the_others() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu]).unwrap();
    let clock = Clock::start("reload");
    let cfg = VdfwdConfig::new()
        .with_vnic(
            VnicDef::new("client", "lab", MacAddr::local(1), ip(CLIENT)).label("app", "client"),
        )
        .with_vnic(
            VnicDef::new("server", "lab", MacAddr::local(2), ip(SERVER)).label("app", "server"),
        );
    let vd = Vdfwd::start(VdfwdSpec::new(cfg).policy_text("server.yaml", &policy(&[8080, 9090])))
        .unwrap();
    let g = boot(&vd, &["client", "server"], 24);
    let (client, server) = (&g[0], &g[1]);
    clock.step("two guests up");
    server.spawn_tcp_echo(8080).unwrap();
    server.spawn_tcp_echo(9090).unwrap();

    // Two long-lived sessions, both allowed and both exchanging data.
    let keep = client.open_session(ip(SERVER), 8080).unwrap();
    let cut = client.open_session(ip(SERVER), 9090).unwrap();
    for (s, line) in [(&keep, "before-8080"), (&cut, "before-9090")] {
        client.session_send(s, line).unwrap();
        assert!(
            client.session_wait_for(s, line, ECHO).unwrap(),
            "session to {}: {line:?} not echoed before the change",
            s.port
        );
    }
    clock.step("both sessions exchange data");

    // The new policy drops 9090.
    vd.write_policies(&[("server.yaml", &policy(&[8080]))])
        .unwrap();
    let status = vd.reload().unwrap();
    eprintln!("    reload: {status}");
    // vdfwd's own account of the re-check: the 9090 connection cut, the 8080 one kept (each
    // is tracked in both vNICs' zones).
    let conns =
        |k: &str| field(&status, &format!("last_change/connections/{k}")).and_then(|v| v.as_u64());
    assert!(
        conns("cut") >= Some(1) && conns("kept") >= Some(1),
        "re-check report: {status}"
    );
    clock.step("policy reloaded (8080 only)");

    client.session_send(&keep, "after-8080").unwrap();
    assert!(
        client.session_wait_for(&keep, "after-8080", ECHO).unwrap(),
        "the still-allowed 8080 session stopped exchanging data after the reload; it got:\n{}",
        client.session_output(&keep).unwrap()
    );
    assert!(client.session_established(&keep).unwrap());
    let out = client.session_output(&keep).unwrap();
    assert_eq!(
        out, "before-8080\nafter-8080\n",
        "both lines over the one 8080 session"
    );

    // The 9090 session is cut: what the client sends no longer comes back, and vdfwd answers
    // that segment with an RST, so the client's stack drops the connection at once instead
    // of retransmitting until it times out.
    let _ = client.session_send(&cut, "after-9090");
    assert!(
        !client.session_wait_for(&cut, "after-9090", ECHO).unwrap(),
        "the no-longer-allowed 9090 session still exchanges data after the reload"
    );
    let reset = (0..20).any(|_| {
        let up = client.session_established(&cut).unwrap_or(true);
        if up {
            std::thread::sleep(Duration::from_millis(250));
        }
        !up
    });
    assert!(
        reset,
        "the cut 9090 session is still ESTABLISHED in the client's stack: no RST reached it"
    );
    let resets = vd
        .port_status("server")
        .ok()
        .and_then(|s| field(&s, "firewall/counters/cut_reset").and_then(|v| v.as_u64()));
    eprintln!("    cut session reset by vdfwd (server's cut_reset counter: {resets:?})");
    expect_connect(
        client,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "new connections to 9090 are denied by the new policy",
    );
    expect_echo(
        client,
        ip(SERVER),
        8080,
        "fresh-8080",
        "new 8080 connections still allowed",
    );
    clock.step("allowed session kept, denied session cut");

    // A broken policy set is refused as a whole; the running policy stays.
    vd.write_policies(&[
        ("server.yaml", &policy(&[8080])),
        (
            "broken.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: [\n",
        ),
    ])
    .unwrap();
    let err = vd
        .reload()
        .expect_err("a broken policy file must be refused");
    eprintln!(
        "    broken reload refused: {}",
        err.to_string().lines().next().unwrap_or("")
    );
    client.session_send(&keep, "after-broken").unwrap();
    assert!(
        client
            .session_wait_for(&keep, "after-broken", ECHO)
            .unwrap(),
        "a refused reload disturbed the allowed session"
    );

    // And back: 9090 allowed again for new connections.
    vd.write_policies(&[("server.yaml", &policy(&[8080, 9090]))])
        .unwrap();
    vd.reload().unwrap();
    expect_echo(
        client,
        ip(SERVER),
        9090,
        "allowed-again",
        "9090 re-allowed by the third policy",
    );
    clock.step("refused reload kept the policy; re-allow works");
}

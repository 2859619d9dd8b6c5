//! The firewall end to end: a real `Daemon` (config -> policy directory -> dfw engine ->
//! firewall -> vhost-user backends) driven by test VMs over real vhost-user sockets (see
//! `common`), and the `vdfwd` binary for start-up errors and SIGHUP.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;

use common::*;
use vswitch::config::{Config, NamespaceConfig, VnicConfig, DEFAULT_CONNTRACK_MAX};
use vswitch::counters::DropReason;
use vswitch::daemon::{Daemon, FilterMode};
use vswitch::device::SocketRole;
use vswitch::flowlog::{FlowRecord, FlowVerdict};
use vswitch::mac::MacAddr;
use vswitch::net_hdr::VirtioNetHdr;
use vswitch::packet::ParsedPacket;
use vswitch::port::VnicPort;

const ALLOW_8080: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-8080-from-a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{protocol: TCP, port: 8080}]
"#;

const ALLOW_9090: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-9090-from-a, namespace: shop}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{protocol: TCP, port: 9090}]
"#;

const REJECT_2323: &str = r#"
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: reject-2323}
spec:
  priority: 5
  tier: securityops
  appliedTo: [{podSelector: {matchLabels: {app: b}}}]
  ingress:
    - action: Reject
      name: no-2323
      enableLogging: true
      logLabel: legacy
      ports: [{protocol: TCP, port: 2323}]
"#;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn vnic(dir: &Path, n: u8, app: &str) -> VnicConfig {
    VnicConfig {
        name: format!("{app}-eth0"),
        socket: dir.join(format!("{app}.sock")),
        role: SocketRole::Listen,
        vm: app.into(),
        namespace: "shop".into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
        mac: mac(n),
        ips: vec![IpAddr::from([10, 0, 0, n])],
        ports: vec![],
    }
}

struct Setup {
    dir: tempfile::TempDir,
    cfg: Config,
}

impl Setup {
    fn new(policies: &[(&str, &str)]) -> Setup {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(policy_dir.join("sub")).unwrap();
        for (name, text) in policies {
            std::fs::write(policy_dir.join(name), text).unwrap();
        }
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let cfg = Config {
            state_dir,
            policy_dir: Some(policy_dir),
            default_deny: false,
            audit: false,
            conntrack_max_per_vnic: DEFAULT_CONNTRACK_MAX,
            huge_pages: false,
            conntrack_initial_per_vnic: None,
            poll_threads: 0,
            poll_cpus: vec![],
            poll_us: 0,
            namespaces: vec![NamespaceConfig {
                name: "shop".into(),
                labels: [("team".to_owned(), "web".to_owned())].into(),
            }],
            uplink: None,
            api: None,
            vnics: vec![
                vnic(dir.path(), 1, "a"),
                vnic(dir.path(), 2, "b"),
                vnic(dir.path(), 3, "c"),
            ],
        };
        Setup { dir, cfg }
    }

    fn policy(&self, name: &str) -> PathBuf {
        self.cfg.policy_dir.as_ref().unwrap().join(name)
    }
}

/// A started daemon with test VMs connected to vNICs a and b.
struct Running {
    d: Daemon,
    a: TestVm,
    b: TestVm,
    pa: std::sync::Arc<VnicPort>,
    pb: std::sync::Arc<VnicPort>,
}

fn start(s: &Setup) -> Running {
    let d = Daemon::start(s.cfg.clone(), FilterMode::Firewall).unwrap();
    let port = |name: &str| {
        let id = d.vnic_id(name).unwrap();
        d.dataplane().pipeline().table().vnic(id).unwrap().clone()
    };
    let (pa, pb) = (port("a-eth0"), port("b-eth0"));
    let mut a = TestVm::connect(&s.cfg.vnics[0].socket, GuestConfig::full());
    let mut b = TestVm::connect(&s.cfg.vnics[1].socket, GuestConfig::full());
    wait_rx_ready(&pa);
    wait_rx_ready(&pb);
    a.post_rx(64, 2048);
    b.post_rx(64, 2048);
    Running { d, a, b, pa, pb }
}

#[derive(Clone, Copy)]
enum Seg {
    Syn,
    SynAck,
    Data,
}

fn tcp(from: u8, to: u8, sport: u16, dport: u16, seg: Seg) -> Vec<u8> {
    let (seq, ack) = match seg {
        Seg::Syn => (1000, None),
        Seg::SynAck => (5000, Some(1001)),
        Seg::Data => (1001, Some(5001)),
    };
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(mac(from).0, mac(to).0)
        .ipv4([10, 0, 0, from], [10, 0, 0, to], 64)
        .tcp(sport, dport, seq, 64000);
    let b = if matches!(seg, Seg::Syn | Seg::SynAck) {
        b.syn()
    } else {
        b
    };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    let payload: &[u8] = if matches!(seg, Seg::Data) {
        b"hello"
    } else {
        &[]
    };
    b.write(&mut f, payload).unwrap();
    f
}

const QUIET: Duration = Duration::from_millis(150);

/// Sends and waits until the backend consumed the frame (so its fate is decided).
fn send(vm: &mut TestVm, frame: &[u8]) {
    vm.send(&VirtioNetHdr::default(), frame);
    vm.wait_tx_used(1);
}

fn assert_arrives(vm: &mut TestVm, frame: &[u8]) {
    let (_, got) = vm.recv();
    assert_eq!(got, frame);
}

fn assert_nothing(vm: &mut TestVm) {
    if let Some((_, f)) = vm.try_recv(QUIET) {
        panic!("unexpected frame: {:?}", ParsedPacket::parse(&f));
    }
}

/// Opens a connection a -> b on `port` through the firewall (SYN, SYN-ACK, ACK+data).
fn connect(r: &mut Running, sport: u16, port: u16) {
    let syn = tcp(1, 2, sport, port, Seg::Syn);
    send(&mut r.a, &syn);
    assert_arrives(&mut r.b, &syn);
    let syn_ack = tcp(2, 1, port, sport, Seg::SynAck);
    send(&mut r.b, &syn_ack);
    assert_arrives(&mut r.a, &syn_ack);
    let data = tcp(1, 2, sport, port, Seg::Data);
    send(&mut r.a, &data);
    assert_arrives(&mut r.b, &data);
}

fn flows(d: &Daemon) -> Vec<FlowRecord> {
    assert!(d.flow_log().sync(Duration::from_secs(5)));
    d.flows(10_000)
}

#[test]
fn allowed_port_and_its_replies_pass_others_are_denied_or_rejected() {
    let s = Setup::new(&[
        ("allow-8080.yaml", ALLOW_8080),
        ("sub/reject.yaml", REJECT_2323),
    ]);
    let mut r = start(&s);

    // SYN a -> b:8080 arrives, the SYN-ACK back arrives on the reply fast path.
    connect(&mut r, 40000, 8080);

    // SYN to :22 does not arrive; it is counted as policy-denied on the sender's port.
    send(&mut r.a, &tcp(1, 2, 40001, 22, Seg::Syn));
    assert_nothing(&mut r.b);
    assert_eq!(r.pa.counters.drops(DropReason::PolicyDenied), 1);

    // The reject rule answers with an RST to the sender.
    let syn = tcp(1, 2, 40002, 2323, Seg::Syn);
    send(&mut r.a, &syn);
    let (_, rst) = r.a.recv();
    let p = ParsedPacket::parse(&rst).unwrap();
    let t = p.tcp().unwrap();
    assert!(t.flags.rst(), "{p:?}");
    assert_eq!((t.src_port, t.dst_port, t.ack), (2323, 40002, 1001));
    assert_eq!(p.ip().unwrap().src, IpAddr::from([10, 0, 0, 2]));
    assert_nothing(&mut r.b);
    assert_eq!(r.pa.counters.drops(DropReason::PolicyRejected), 1);

    // Flow records: the new connection at both vNICs, the denial naming the isolating
    // policy, the reject naming its rule and log label.
    let recs = flows(&r.d);
    let forwarded: Vec<_> = recs
        .iter()
        .filter(|f| f.verdict == FlowVerdict::Forwarded)
        .collect();
    assert_eq!(forwarded.len(), 2, "{recs:#?}");
    assert_eq!(forwarded[0].vnic, "a-eth0");
    assert_eq!(forwarded[1].vnic, "b-eth0");
    assert_eq!(forwarded[1].decided_by, "rule");
    assert_eq!(
        forwarded[1].policy.as_deref(),
        Some("K8sNP:shop/b-8080-from-a")
    );
    let denied = recs
        .iter()
        .find(|f| f.drop_reason == Some("policy_denied"))
        .unwrap();
    assert_eq!(denied.vnic, "b-eth0");
    assert_eq!(denied.decided_by, "isolation");
    assert_eq!(denied.policy.as_deref(), Some("K8sNP:shop/b-8080-from-a"));
    assert_eq!(denied.dst.as_ref().unwrap().port, 22);
    assert_eq!(
        denied.src.as_ref().unwrap().endpoint.as_deref(),
        Some("shop/a-eth0")
    );
    assert!(denied.src.as_ref().unwrap().identity >= 256);
    let rejected = recs
        .iter()
        .find(|f| f.verdict == FlowVerdict::Rejected)
        .unwrap();
    assert_eq!(rejected.policy.as_deref(), Some("ACNP:reject-2323"));
    assert_eq!(rejected.rule_name.as_deref(), Some("no-2323"));
    assert_eq!(rejected.log_label.as_deref(), Some("legacy"));

    // The same, in flows.jsonl.
    let text = std::fs::read_to_string(s.cfg.state_dir.join("flows.jsonl")).unwrap();
    assert_eq!(text.lines().count(), recs.len());
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["vnic"], "a-eth0");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));

    // Counters: per vNIC and per rule.
    let st = serde_json::to_value(r.d.status()).unwrap();
    let b = &st["ports"][1];
    assert_eq!(b["name"], "b-eth0");
    assert_eq!(b["firewall"]["counters"]["allowed_ingress"], 1);
    assert_eq!(b["firewall"]["counters"]["denied_ingress"], 2);
    assert_eq!(b["firewall"]["counters"]["rejected"], 1);
    assert_eq!(b["firewall"]["connections"], 1);
    assert_eq!(st["ports"][0]["drops"]["policy_denied"], 1);
    let rules = st["rules"].as_array().unwrap();
    let allow = rules
        .iter()
        .find(|r| r["policy"] == "K8sNP:shop/b-8080-from-a")
        .unwrap();
    assert_eq!(allow["sessions"], 1);
    assert_eq!(allow["packets"], 3, "SYN, SYN-ACK and data");
    let reject = rules.iter().find(|r| r["name"] == "no-2323").unwrap();
    assert_eq!(reject["sessions"], 1);
    // Only rules that matched are listed; the others are counted.
    assert!(rules
        .iter()
        .all(|r| r["packets"].as_u64() > Some(0) || r["sessions"].as_u64() > Some(0)));
    let idle = st["rules_idle"].as_u64().unwrap() as usize;
    assert_eq!(
        idle + rules.len(),
        r.d.firewall().rule_counters().len(),
        "every rule is listed or counted as idle"
    );
    assert_eq!(st["policy"]["policies"], 2);
}

#[test]
fn reload_cuts_connections_the_new_policy_refuses_and_keeps_the_others() {
    let s = Setup::new(&[
        ("allow-8080.yaml", ALLOW_8080),
        ("allow-9090.yaml", ALLOW_9090),
    ]);
    let mut r = start(&s);
    connect(&mut r, 40000, 8080);
    connect(&mut r, 40001, 9090);
    let gen = r.d.firewall().generation().unwrap();

    // A broken policy set is refused whole; the running policy stays.
    std::fs::write(s.policy("broken.yaml"), "kind: NetworkPolicy\nspec: [").unwrap();
    let err = r.d.reload_policy_dir().unwrap_err();
    assert!(err.lines()[0].contains("broken.yaml"), "{:?}", err.lines());
    assert_eq!(r.d.firewall().generation(), Some(gen));
    assert!(r.d.status().policy.last_error.is_some());
    std::fs::remove_file(s.policy("broken.yaml")).unwrap();

    // Removing the 8080 allow: b's ingress no longer admits that connection, so it is cut in
    // b's zone (a's egress still allows it: a's entry stays); 9090 survives everywhere.
    std::fs::remove_file(s.policy("allow-8080.yaml")).unwrap();
    let report = r.d.reload_policy_dir().unwrap();
    assert_eq!(report.removed, 1);
    assert_eq!(report.unchanged, 1);
    assert_eq!(report.connections.checked, 4);
    assert_eq!(report.connections.cut, 1);
    assert_eq!(report.connections.kept, 3);
    assert!(report.generation > gen);
    assert!(r.d.status().policy.last_error.is_none());

    let data_9090 = tcp(1, 2, 40001, 9090, Seg::Data);
    send(&mut r.a, &data_9090);
    assert_arrives(&mut r.b, &data_9090);
    // The cut connection's next segment does not arrive: a gets an RST with the sequence
    // number its segment acknowledged (so its stack accepts it) instead of retransmitting
    // into silence until it times out.
    send(&mut r.a, &tcp(1, 2, 40000, 8080, Seg::Data));
    let (_, rst) = r.a.recv();
    let p = ParsedPacket::parse(&rst).unwrap();
    let t = p.tcp().unwrap();
    assert!(t.flags.rst(), "{p:?}");
    assert_eq!((t.src_port, t.dst_port, t.seq), (8080, 40000, 5001));
    assert_nothing(&mut r.b);
    assert_eq!(r.pa.counters.drops(DropReason::PolicyRejected), 1);
    let cut = flows(&r.d)
        .into_iter()
        .rfind(|f| f.drop_reason == Some("policy_rejected"))
        .unwrap();
    assert_eq!(cut.dst.unwrap().port, 8080);
    assert_eq!(cut.policy.as_deref(), Some("K8sNP:shop/b-9090-from-a"));
    assert_eq!(cut.generation, report.generation);
    let status = serde_json::to_value(r.d.status()).unwrap();
    assert_eq!(
        status["ports"][1]["firewall"]["counters"]["cut_reset"], 1,
        "{status:#}"
    );
    // A new connection to the same port is refused silently, as the policy says (only
    // segments of cut connections are reset).
    send(&mut r.a, &tcp(1, 2, 40005, 8080, Seg::Syn));
    assert_nothing(&mut r.a);
    assert_nothing(&mut r.b);
    assert_eq!(r.pa.counters.drops(DropReason::PolicyDenied), 1);
}

#[test]
fn spoofed_source_is_dropped_counted_and_logged() {
    let s = Setup::new(&[("allow-8080.yaml", ALLOW_8080)]);
    let mut r = start(&s);
    // a claims c's address (10.0.0.3), which b's policy would not allow anyway; the spoof
    // guard drops it before the firewall.
    let mut f = tcp(1, 2, 40000, 8080, Seg::Syn);
    f[26..30].copy_from_slice(&[10, 0, 0, 3]);
    send(&mut r.a, &f);
    assert_nothing(&mut r.b);
    assert_eq!(r.pa.counters.drops(DropReason::SpoofedSourceIp), 1);
    let rec = flows(&r.d).pop().unwrap();
    assert_eq!(rec.decided_by, "spoof_guard");
    assert_eq!(rec.vnic, "a-eth0");
    assert_eq!(rec.src.unwrap().endpoint.as_deref(), Some("shop/c-eth0"));
    // The vNIC itself still works.
    connect(&mut r, 40000, 8080);
    assert_eq!(r.pb.counters.snapshot().rx_packets, 2);
}

#[test]
fn arp_passes_without_policy_under_default_deny() {
    let mut s = Setup::new(&[]);
    s.cfg.default_deny = true;
    let mut r = start(&s);
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac(1).0);
    arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    send(&mut r.a, &arp);
    assert_arrives(&mut r.b, &arp);
    // IP does not: default deny.
    send(&mut r.a, &tcp(1, 2, 40000, 8080, Seg::Syn));
    assert_nothing(&mut r.b);
    let rec = flows(&r.d).pop().unwrap();
    assert_eq!(rec.decided_by, "default_deny");
    assert_eq!(rec.direction, dfw::model::Direction::Egress);
    assert!(r.d.summary()[0].contains("default_deny=true"));
}

// --- the vdfwd binary --------------------------------------------------------------------

fn write_config(s: &Setup) -> PathBuf {
    let path = s.dir.path().join("vdfwd.toml");
    std::fs::write(&path, toml::to_string(&s.cfg).unwrap()).unwrap();
    path
}

#[test]
fn vdfwd_refuses_a_bad_policy_set_naming_every_error() {
    let s = Setup::new(&[
        ("good.yaml", ALLOW_8080),
        (
            "bad.yaml",
            &ALLOW_9090.replace("podSelector: {matchLabels: {app: b}}", "podSelecter: {}"),
        ),
        (
            "sub/bad2.yaml",
            &REJECT_2323.replace("action: Reject", "action: Maybe"),
        ),
    ]);
    let cfg = write_config(&s);
    for extra in [&["--check"][..], &[]] {
        let out = Command::new(env!("CARGO_BIN_EXE_vdfwd"))
            .arg("--config")
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("vdfwd: ")).collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].contains("/bad.yaml:6:"), "{err}");
        assert!(lines[0].contains("podSelecter"), "{err}");
        assert!(
            lines[1].contains("sub/bad2.yaml") && lines[1].contains("action"),
            "{err}"
        );
    }
    // Nothing was served.
    assert!(!s.cfg.vnics[0].socket.exists());
}

#[test]
fn vdfwd_check_prints_the_summary() {
    let s = Setup::new(&[("allow-8080.yaml", ALLOW_8080)]);
    let out = Command::new(env!("CARGO_BIN_EXE_vdfwd"))
        .arg("--config")
        .arg(write_config(&s))
        .arg("--check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 vNICs, 1 policies (kubernetes 1)"),
        "{text}"
    );
    assert!(
        text.contains("vNIC b-eth0 = endpoint shop/b-eth0"),
        "{text}"
    );
    assert!(!s.cfg.vnics[0].socket.exists());
}

fn read_counters(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("counters.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn wait_counters(dir: &Path, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if read_counters(dir).is_some_and(|c| cond(&c)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vdfwd_reloads_on_sighup_and_keeps_the_policy_on_a_bad_set() {
    let s = Setup::new(&[("allow-8080.yaml", ALLOW_8080)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdfwd"))
        .arg("--config")
        .arg(write_config(&s))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = s.cfg.state_dir.clone();
    let pid = child.id() as i32;
    let hup = || {
        // SAFETY: signalling the child we spawned.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    wait_counters(&state, "start", |c| c["policy"]["policies"] == 1);
    assert!(s.cfg.vnics[0].socket.exists());
    let gen = read_counters(&state).unwrap()["policy"]["generation"].clone();

    std::fs::write(s.policy("allow-9090.yaml"), ALLOW_9090).unwrap();
    hup();
    wait_counters(&state, "reload", |c| c["policy"]["policies"] == 2);
    assert_ne!(read_counters(&state).unwrap()["policy"]["generation"], gen);

    std::fs::write(s.policy("bad.yaml"), "apiVersion: v1\nkind: Nonsense\n").unwrap();
    hup();
    wait_counters(&state, "refused reload", |c| {
        c["policy"]["last_error"][0]
            .as_str()
            .is_some_and(|e| e.contains("bad.yaml"))
    });
    assert_eq!(read_counters(&state).unwrap()["policy"]["policies"], 2);

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!s.cfg.vnics[0].socket.exists(), "socket removed on exit");
}

// --- vNICs registered through the control plane ----------------------------------------

#[test]
fn a_vnic_registered_through_the_controller_is_served_and_follows_its_labels() {
    let s = Setup::new(&[("allow-8080.yaml", ALLOW_8080)]);
    let mut r = start(&s);
    let ctl = r.d.controller().clone();
    // A fourth VM, registered at run time (as `vdfwctl endpoint` does), labelled app=x:
    // b's ingress admits only app=a.
    let mut x = vnic(s.dir.path(), 4, "x");
    x.labels = [("app".to_owned(), "x".to_owned())].into();
    let mut spec = vswitch::daemon::endpoint_spec(&x).unwrap();
    let rev = ctl.upsert_endpoint(spec.clone()).unwrap().revision;
    assert!(
        x.socket.exists(),
        "registering serves the vhost-user socket"
    );
    let id = r.d.vnic_id("x-eth0").expect("the port exists");
    let px = r.d.dataplane().pipeline().table().vnic(id).unwrap().clone();
    let mut vx = TestVm::connect(&x.socket, GuestConfig::full());
    wait_rx_ready(&px);
    vx.post_rx(64, 2048);
    send(&mut vx, &tcp(4, 2, 41000, 8080, Seg::Syn));
    assert_nothing(&mut r.b);
    assert_eq!(px.counters.drops(DropReason::PolicyDenied), 1);

    // Relabelled app=a: the same port (no reconnect), re-realized at once.
    spec.labels = [("app".to_owned(), "a".to_owned())].into();
    assert!(ctl.upsert_endpoint(spec.clone()).unwrap().revision > rev);
    assert_eq!(
        r.d.vnic_id("x-eth0"),
        Some(id),
        "a label change keeps the port"
    );
    let syn = tcp(4, 2, 41001, 8080, Seg::Syn);
    send(&mut vx, &syn);
    assert_arrives(&mut r.b, &syn);

    // Removed: the socket goes, the endpoint is gone from the realized state.
    ctl.remove_endpoint(&spec.key()).unwrap();
    assert!(r.d.vnic_id("x-eth0").is_none());
    assert!(!x.socket.exists(), "removing tears the socket down");
    assert!(ctl.realized().snapshot.endpoint(&spec.key()).is_none());
    drop(vx);
}

#[test]
fn api_registered_vnics_and_policies_survive_a_restart_config_vnics_follow_the_file() {
    let mut s = Setup::new(&[("allow-8080.yaml", ALLOW_8080)]);
    let x = vnic(s.dir.path(), 4, "x");
    {
        let d = Daemon::start(s.cfg.clone(), FilterMode::Firewall).unwrap();
        d.controller()
            .upsert_endpoint(vswitch::daemon::endpoint_spec(&x).unwrap())
            .unwrap();
        d.controller()
            .apply(
                &[api::controller::InputFile {
                    file: "via-api.yaml".into(),
                    text: ALLOW_9090.into(),
                    content_type: None,
                }],
                false,
            )
            .unwrap();
        assert_eq!(d.status().policy.policies, 2);
    }
    // c is dropped from the configuration file.
    s.cfg.vnics.retain(|v| v.name != "c-eth0");
    let d = Daemon::start(s.cfg.clone(), FilterMode::Firewall).unwrap();
    assert!(d.vnic_id("x-eth0").is_some(), "API-registered vNIC is back");
    assert!(x.socket.exists());
    assert!(d.vnic_id("c-eth0").is_none(), "c left the config file");
    let names: Vec<String> = d
        .controller()
        .realized()
        .policies
        .iter()
        .map(|p| p.key.name.clone())
        .collect();
    assert_eq!(names, ["b-8080-from-a", "b-9090-from-a"]);
}

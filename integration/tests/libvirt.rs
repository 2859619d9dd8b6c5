//! libvirt integration with a real libvirtd: a domain gets its firewall identity from its own
//! `<metadata>` through vdfw's qemu hook, and does not start when vdfwd cannot admit it.
//!
//! 1. vdfwd runs with one configured vNIC (`server`, a plain QEMU guest) and a Kubernetes
//!    NetworkPolicy admitting only `app=lv-web` on TCP 8080 to it. `lv-web` exists nowhere in
//!    vdfwd's configuration: only in the libvirt domain's `<vdfw:vm>` metadata.
//! 2. `virsh start`: the hook (installed by `configs/libvirt/install-hook.sh`, run by libvirtd)
//!    registers the endpoint at `prepare begin`; `vdfwctl get endpoints` shows it with the
//!    metadata's namespace, labels, IP, MAC and socket; vdfwd serves its socket and QEMU attaches.
//! 3. The libvirt guest reaches the server on 8080 (allowed by its metadata label) and is
//!    dropped on 9090; the drop's flow record names the endpoint `lab/lv-web`.
//! 4. `virsh destroy`: the hook removes the endpoint.
//! 5. Fail closed: with vdfwd stopped, `virsh start` fails with the hook's message and the
//!    domain stays shut off.
//!
//! Needs root, QEMU and libvirt (install-deps.sh); starts virtlogd/libvirtd itself when they
//! are not running and stops what it started.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use vdfw_integration::{
    cargo_bin, require, ConnectOutcome, Domain, DomainSpec, Guest, Libvirt, MacAddr, Prereq, Vdfwd,
    VdfwdConfig, VdfwdSpec, VnicDef, HOOK_ENV,
};

const SERVER: &str = "10.0.0.2";
const LV_IP: &str = "10.0.0.3";

/// The server admits `app=lv-web` on 8080 only; selecting it isolates it for ingress.
const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: server-from-libvirt
  namespace: lab
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: lv-web}}}]
      ports: [{protocol: TCP, port: 8080}]
"#;

fn metadata(mac: MacAddr) -> String {
    format!(
        r#"<vdfw:vm xmlns:vdfw='https://vdfw.io/libvirt/1' namespace='lab'>
      <vdfw:label key='env' value='test'/>
      <vdfw:vnic mac='{mac}' name='lv-web' ips='{LV_IP}'>
        <vdfw:label key='app' value='lv-web'/>
      </vdfw:vnic>
    </vdfw:vm>"#
    )
}

fn endpoint(vd: &Vdfwd, name: &str) -> Option<Value> {
    let eps = vd.vdfwctl_json(&["get", "endpoints"]).unwrap();
    eps.as_array()?.iter().find(|e| e["name"] == name).cloned()
}

/// Waits for an API flow record (the flow log is drained asynchronously).
fn wait_record(vd: &Vdfwd, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = vd
            .vdfwctl(&["-o", "json", "observe", "--last", "500"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Some(r) = records.iter().find(|r| pred(r)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no flow record {what}; got:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn libvirt_domain_identity_from_metadata_and_fail_closed_start() {
    let _heavy = heavy();
    require(&[Prereq::Root, Prereq::Qemu, Prereq::Libvirt]).unwrap();
    // Built before the clock starts: the steps below time libvirt, not cargo.
    let vdfwctl = cargo_bin("vdfwctl").unwrap();
    cargo_bin("vdfwd").unwrap();
    let clock = Clock::start("libvirt");
    let cfg = VdfwdConfig::new().with_vnic(
        VnicDef::new("server", "lab", MacAddr::local(2), ip(SERVER)).label("app", "server"),
    );
    let mut vd =
        Vdfwd::start(VdfwdSpec::new(cfg).policy_text("server-from-libvirt.yaml", POLICY)).unwrap();
    let server = Guest::boot(vd.guest_spec("server", 24).unwrap()).unwrap();
    vd.wait_connected(&["server"], Duration::from_secs(30))
        .unwrap();
    server.spawn_tcp_echo(8080).unwrap();
    server.spawn_tcp_echo(9090).unwrap();
    clock.step("vdfwd and the plain QEMU server guest up");

    let api = format!("unix:{}", vd.api_socket().display());
    let env_before = std::fs::read(HOOK_ENV).ok();
    let lv = Libvirt::setup(&vdfwctl, &api).unwrap();
    clock.step("libvirtd up with the vdfw hook");

    let mac = MacAddr::local(0x0a01);
    let spec = DomainSpec {
        name: format!("vdfw-lv-{}", std::process::id()),
        mac,
        socket: vd.dir().join("sockets/lv-web.sock"),
        ip_cidr: format!("{LV_IP}/24").parse().unwrap(),
        metadata: metadata(mac),
    };
    let dom = Domain::define(&lv, &spec).unwrap();
    assert!(
        endpoint(&vd, "lv-web").is_none(),
        "registered before the domain started"
    );

    // --- 2. start: the hook registers the endpoint from the metadata -------------------------
    let guest = dom.start().unwrap();
    clock.step("libvirt domain started, console attached");
    let ep = endpoint(&vd, "lv-web").expect("the hook registered lab/lv-web");
    eprintln!("    registered: {ep}");
    assert_eq!(ep["namespace"], "lab", "{ep}");
    assert_eq!(ep["labels"]["app"], "lv-web", "{ep}");
    assert_eq!(ep["labels"]["env"], "test", "{ep}");
    assert_eq!(ep["ips"][0], LV_IP, "{ep}");
    assert_eq!(ep["mac"], mac.to_string(), "{ep}");
    assert_eq!(
        ep["socket"]["role"], "server",
        "libvirt mode='client' => vdfwd listens"
    );
    assert_eq!(
        ep["socket"]["path"],
        spec.socket.display().to_string(),
        "{ep}"
    );
    let human =
        String::from_utf8_lossy(&vd.vdfwctl(&["get", "endpoints"]).unwrap().stdout).into_owned();
    assert!(
        human.contains("lab/lv-web") && human.contains("app=lv-web"),
        "{human}"
    );
    vd.wait_connected(&["lv-web"], Duration::from_secs(30))
        .unwrap();

    // --- 3. policy selects the libvirt guest by its metadata labels --------------------------
    expect_echo(
        &guest,
        ip(SERVER),
        8080,
        "from-libvirt",
        "app=lv-web (libvirt metadata) is allowed on 8080",
    );
    expect_connect(
        &guest,
        ip(SERVER),
        9090,
        2,
        ConnectOutcome::TimedOut,
        "the server is isolated: 9090 is not allowed",
    );
    let drop_rec = wait_record(&vd, "lv-web -> server:9090 DROPPED", |r| {
        r["tuple"]["src"] == LV_IP && r["tuple"]["dst_port"] == 9090 && r["verdict"] == "DROPPED"
    });
    assert_eq!(drop_rec["src"]["endpoint"]["name"], "lv-web", "{drop_rec}");
    assert_eq!(
        drop_rec["src"]["endpoint"]["namespace"], "lab",
        "{drop_rec}"
    );
    assert_eq!(drop_rec["src"]["labels"]["app"], "lv-web", "{drop_rec}");
    clock.step("allowed on 8080 and dropped on 9090 by the metadata's labels");

    // --- 4. destroy: the hook removes the endpoint -------------------------------------------
    drop(guest);
    dom.destroy().unwrap();
    assert!(
        endpoint(&vd, "lv-web").is_none(),
        "lab/lv-web still registered after virsh destroy"
    );
    clock.step("virsh destroy removed the endpoint");

    // --- 5. fail closed: no vdfwd, no start --------------------------------------------------
    vd.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let out = dom.try_start().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "virsh start succeeded without vdfwd");
    assert!(
        stderr.contains(&format!("refusing to start domain {}", spec.name))
            && stderr.contains("cannot connect to vdfwd"),
        "virsh start's error does not carry the hook's reason:\n{stderr}"
    );
    assert_eq!(dom.state().unwrap(), "shut off");
    clock.step("virsh start refused while vdfwd is down");

    // --- cleanup: the domain is undefined, the hook's env file restored ----------------------
    let name = spec.name.clone();
    drop(dom);
    let list = lv.virsh_ok(&["list", "--all", "--name"]).unwrap();
    assert!(
        !list.lines().any(|l| l.trim() == name),
        "domain {name} still defined"
    );
    drop(lv);
    assert_eq!(
        std::fs::read(HOOK_ENV).ok(),
        env_before,
        "{HOOK_ENV} not restored"
    );
    drop(server);
}

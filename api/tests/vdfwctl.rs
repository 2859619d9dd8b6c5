//! The real `vdfwctl` binary against the real in-process server.

mod common;

use api::flows::{FlowPeer, FlowRecord, FlowVerdict};
use common::{Harness, TOKEN};
use dfw::flow::{FiveTuple, IpProtocol};
use dfw::model::{Direction, EndpointKey};
use serde_json::{json, Value};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn ctl(server: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdfwctl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("VDFW_TOKEN")
        .output()
        .await
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn peer(name: &str, app: &str) -> FlowPeer {
    FlowPeer {
        endpoint: Some(EndpointKey {
            namespace: "prod".into(),
            name: name.into(),
        }),
        identity: None,
        labels: [("app".to_string(), app.to_string())].into(),
    }
}

#[tokio::test]
async fn vdfwctl_end_to_end() {
    let h = Harness::start().await;
    let server = format!("unix:{}", h.socket().display());
    let s = server.as_str();

    let r = ctl(s, &["namespace", "prod", "-l", "env=prod"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("namespace prod set (revision 1)"),
        "{}",
        r.stdout
    );

    let ep_file = h.dir.path().join("web.json");
    std::fs::write(
        &ep_file,
        json!({
            "name": "web-0", "namespace": "prod", "labels": {"app": "web"},
            "mac": "52:54:00:00:00:01", "ips": ["10.0.0.1"],
            "socket": {"path": h.dir.path().join("web.sock"), "role": "server"}
        })
        .to_string(),
    )
    .unwrap();
    let r = ctl(s, &["endpoint", "-f", ep_file.to_str().unwrap()]).await;
    assert!(r.ok, "{}", r.stderr);
    let r = ctl(s, &["get", "endpoints"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("prod/web-0") && r.stdout.contains("52:54:00:00:00:01"),
        "{}",
        r.stdout
    );
    let r = ctl(s, &["-o", "json", "get", "endpoints", "prod/web-0"]).await;
    let eps: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(eps[0]["ips"][0], "10.0.0.1");

    // Bad input: the message says what to fix, exit code is non-zero.
    let r = ctl(s, &["namespace", "Bad_Name"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("not a valid name"), "{}", r.stderr);
    let r = ctl(s, &["delete", "endpoint", "web-0"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("NAMESPACE/NAME"), "{}", r.stderr);

    let r = ctl(s, &["audit", "on", "--namespace", "prod"]).await;
    assert!(r.ok, "{}", r.stderr);
    let r = ctl(s, &["get", "audit"]).await;
    assert!(r.stdout.contains("namespace prod: on"), "{}", r.stdout);

    // Flows: observe -o json, then generate policies from that output.
    let ring = h.controller.flows().clone();
    for (i, port) in [5432u16, 5432, 9187].into_iter().enumerate() {
        ring.push(FlowRecord {
            time_ns: 1_700_000_000_000_000_000 + i as u64,
            src: peer("web-0", "web"),
            dst: peer("db-0", "db"),
            tuple: FiveTuple {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                protocol: IpProtocol::Tcp,
                src_port: 40000 + i as u16,
                dst_port: port,
            },
            direction: Direction::Ingress,
            verdict: FlowVerdict::Audit,
            drop_reason: None,
            policy: None,
        });
    }
    let r = ctl(s, &["observe", "--last", "2"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("prod/web-0 (10.0.0.1:40001) -> prod/db-0"),
        "{}",
        r.stdout
    );
    let r = ctl(
        s,
        &[
            "-o",
            "json",
            "observe",
            "--verdict",
            "audit",
            "--last",
            "10",
        ],
    )
    .await;
    assert_eq!(r.stdout.lines().count(), 3);
    let flows_file = h.dir.path().join("flows.jsonl");
    std::fs::write(&flows_file, &r.stdout).unwrap();

    let r = ctl(
        s,
        &[
            "policy",
            "generate",
            "--flavor",
            "cilium",
            "--from-file",
            flows_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("kind: CiliumNetworkPolicy"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("name: allow-db"), "{}", r.stdout);
    assert!(r.stdout.contains("port: \"9187\""), "{}", r.stdout);
    // Straight from the daemon, Antrea flavour.
    let r = ctl(s, &["policy", "generate"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("kind: NetworkPolicy") && r.stdout.contains("action: Drop"),
        "{}",
        r.stdout
    );

    let r = ctl(s, &["stats"]).await;
    assert!(
        r.stdout.contains("AUDIT=3") && r.stdout.contains("not attached"),
        "{}",
        r.stdout
    );

    // TCP needs the token.
    let tcp = format!("http://{}", h.tcp());
    let r = ctl(&tcp, &["revision"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("unauthenticated"), "{}", r.stderr);
    let r = ctl(&tcp, &["--token", TOKEN, "revision"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "3");

    let r = ctl(s, &["delete", "endpoint", "prod/web-0"]).await;
    assert!(
        r.ok && r.stdout.contains("revision 4"),
        "{} {}",
        r.stdout,
        r.stderr
    );

    let sock = h.socket();
    h.stop().await;
    let r = ctl(&format!("unix:{}", sock.display()), &["revision"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("cannot connect to vdfwd"), "{}", r.stderr);
}

#[tokio::test]
async fn vdfwctl_apply_get_trace_delete_policies() {
    let h = Harness::start().await;
    let server = format!("unix:{}", h.socket().display());
    let s = server.as_str();
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The example inventory's payments endpoints.
    for (name, app, ip) in [
        ("payments-api", "payments-api", "10.0.1.5"),
        ("payments-db", "payments-db", "10.0.1.6"),
    ] {
        let f = h.dir.path().join(format!("{name}.json"));
        std::fs::write(
            &f,
            json!({"name": name, "namespace": "payments", "labels": {"app": app}, "ips": [ip],
                   "named_ports": {"http": {"port": 8080, "protocol": "Tcp"}}})
            .to_string(),
        )
        .unwrap();
        let r = ctl(s, &["endpoint", "-f", f.to_str().unwrap()]).await;
        assert!(r.ok, "{}", r.stderr);
    }
    let dir = repo.join("configs/policies/k8s");
    let r = ctl(s, &["apply", "-f", dir.to_str().unwrap(), "--dry-run"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("(dry run) nothing changed"),
        "{}",
        r.stdout
    );
    let r = ctl(s, &["apply", "-f", dir.to_str().unwrap()]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("K8sNP:payments/payments-db-ingress added (rules +1"),
        "{}",
        r.stdout
    );

    let r = ctl(s, &["get", "policies"]).await;
    assert!(
        r.stdout.contains("K8sNP:payments/payments-api-ingress") && r.stdout.contains("realized"),
        "{}",
        r.stdout
    );
    let r = ctl(s, &["get", "policy", "K8sNP:payments/payments-db-ingress"]).await;
    assert!(
        r.ok && r.stdout.contains("port: 5432"),
        "{} {}",
        r.stdout,
        r.stderr
    );

    let r = ctl(
        s,
        &[
            "trace",
            "--src",
            "payments/payments-api",
            "--dst",
            "payments/payments-db",
            "--port",
            "22",
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    // Egress isolation at the sender decides first.
    assert!(
        r.stdout.contains("DROP")
            && r.stdout
                .contains("by isolation policy K8sNP:payments/payments-api-egress"),
        "{}",
        r.stdout
    );
    let r = ctl(
        s,
        &[
            "-o",
            "json",
            "trace",
            "--src",
            "payments/payments-api",
            "--dst",
            "payments/payments-db",
            "--port",
            "5432",
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["verdict"], "allow");

    // A broken file: the message points at the file, line and field; nothing applied.
    let bad = h.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: payments}\nspec:\n  podSelector: {}\n  ingress:\n    - ports: [{port: 99999}]\n",
    )
    .unwrap();
    let r = ctl(s, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("bad.yaml:7:") && r.stderr.contains("spec.ingress[0].ports[0].port"),
        "{}",
        r.stderr
    );

    let r = ctl(
        s,
        &[
            "delete",
            "policies",
            "K8sNP:payments/payments-db-ingress",
            "K8sNP:payments/payments-api-ingress",
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("payments-db-ingress removed"),
        "{}",
        r.stdout
    );
    let r = ctl(
        s,
        &["delete", "policy", "K8sNP:payments/payments-db-ingress"],
    )
    .await;
    assert!(!r.ok && r.stderr.contains("not found"), "{}", r.stderr);
    h.stop().await;
}

//! `vdfwctl trace` OFFLINE against the example policies and inventory in `configs/` (the
//! intent table of configs/policies/README.md), with the real binary.

use std::path::PathBuf;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vdfwctl"))
        .args(args)
        .output()
        .unwrap()
}

const FLOWS: &str = r#"# intent table of configs/policies/README.md
{"src": "edge/api-gateway", "dst": "payments/payments-api", "protocol": "TCP", "port": 8080}
{"src": "ops/jumphost", "dst": "payments/payments-api", "protocol": "TCP", "port": 8080}
{"src": "payments/payments-api", "dst": "payments/payments-db", "protocol": "TCP", "port": 5432}
{"src": "payments/payments-api", "dst": "payments/payments-db", "protocol": "TCP", "port": 22}
{"src": "10.0.1.5", "dst": "192.0.2.80", "protocol": "TCP", "port": 443}
{"src": "ops/jumphost", "dst": "edge/api-gateway", "port": 443}
"#;

fn trace(flavor: &str, flows: &std::path::Path, extra: &[&str]) -> Vec<Value> {
    let policies = repo().join("configs/policies").join(flavor);
    let inventory = repo().join("configs/inventory.yaml");
    let mut args = vec![
        "trace",
        "--policies",
        policies.to_str().unwrap(),
        "--inventory",
        inventory.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn offline_trace_follows_the_example_intent_in_every_flavor() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, FLOWS).unwrap();
    for flavor in ["k8s", "antrea", "cilium"] {
        let out = trace(flavor, &flows, &[]);
        assert_eq!(out.len(), 6, "one JSON object per flow line ({flavor})");
        let verdicts: Vec<&str> = out.iter().map(|v| v["verdict"].as_str().unwrap()).collect();
        assert_eq!(
            &verdicts[..5],
            ["allow", "drop", "allow", "drop", "drop"],
            "{flavor}: {out:#?}"
        );
        // Every drop names its deciding policy.
        for v in out.iter().filter(|v| v["verdict"] != "allow") {
            assert!(v["policy"].is_string(), "{flavor}: {v}");
        }
    }
    // The gateway is not isolated by any policy: allowed by default, dropped with
    // --default-deny.
    let k8s = trace("k8s", &flows, &[]);
    assert_eq!(k8s[5]["verdict"], "allow");
    assert_eq!(k8s[5]["decided_by"], "default-allow");
    let deny = trace("k8s", &flows, &["--default-deny"]);
    assert_eq!(deny[5]["verdict"], "drop");
    assert_eq!(deny[5]["decided_by"], "default-deny");
}

#[test]
fn offline_trace_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(
        &flows,
        "{\"src\": \"edge/api-gateway\", \"dst\": \"payments/payments-api\", \"port\": 8080}\n{\"src\": \"a\", \"dts\": \"b\"}\n",
    )
    .unwrap();
    let policies = repo().join("configs/policies/k8s");
    let inventory = repo().join("configs/inventory.yaml");
    let out = run(&[
        "trace",
        "--policies",
        policies.to_str().unwrap(),
        "--inventory",
        inventory.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flows.jsonl:2:") && err.contains("dts"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing printed for a bad flow file");

    // A broken policy file: file, line and field path.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: a}\nspec:\n  podSelecter: {}\n",
    )
    .unwrap();
    std::fs::write(
        &flows,
        "{\"src\": \"10.0.0.1\", \"dst\": \"10.0.0.2\", \"port\": 1}\n",
    )
    .unwrap();
    let out = run(&[
        "trace",
        "--policies",
        bad.to_str().unwrap(),
        "--inventory",
        inventory.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("line 5") && err.contains("spec.podSelecter"),
        "{err}"
    );

    // An unknown endpoint in a flow.
    std::fs::write(
        &flows,
        "{\"src\": \"edge/nope\", \"dst\": \"10.0.0.2\", \"port\": 1}\n",
    )
    .unwrap();
    let out = run(&[
        "trace",
        "--policies",
        policies.to_str().unwrap(),
        "--inventory",
        inventory.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("edge/nope is not in the inventory"));
}

//! `vdfwctl libvirt-hook` as libvirt runs it (the real binary, the domain XML on stdin) against
//! the real in-process API server. The full path with libvirtd and QEMU guests is
//! `integration/tests/libvirt.rs`; this covers the hook's contract with vdfwd in milliseconds.

mod common;

use std::process::Stdio;

use common::Harness;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn hook(server: &str, args: &[&str], xml: &str) -> Out {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vdfwctl"))
        .arg("--server")
        .arg(server)
        .arg("libvirt-hook")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(xml.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn domain_xml(dir: &std::path::Path, second_ip: &str) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>shop</name>
  <metadata>
    <vdfw:vm xmlns:vdfw='https://vdfw.io/libvirt/1' namespace='prod'>
      <vdfw:label key='app' value='shop'/>
      <vdfw:vnic mac='52:54:00:00:01:01' ips='10.0.0.11'><vdfw:label key='tier' value='front'/></vdfw:vnic>
      <vdfw:vnic mac='52:54:00:00:01:02' ips='{second_ip}' name='shop-back'/>
    </vdfw:vm>
  </metadata>
  <devices>
    <interface type='vhostuser'>
      <mac address='52:54:00:00:01:01'/>
      <source type='unix' path='{dir}/shop0.sock' mode='client'/>
      <model type='virtio'/>
    </interface>
    <interface type='vhostuser'>
      <mac address='52:54:00:00:01:02'/>
      <source type='unix' path='{dir}/shop1.sock' mode='server'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"#,
        dir = dir.display()
    )
}

async fn endpoints(h: &Harness) -> Vec<Value> {
    let v: Value = h.unix_client().get("/v1/endpoints").await.unwrap();
    v.as_array().unwrap().clone()
}

#[tokio::test]
async fn prepare_registers_and_stop_removes() {
    let h = Harness::start().await;
    let server = format!("unix:{}", h.socket().display());
    let xml = domain_xml(h.dir.path(), "10.0.0.12");

    // Operations the hook does not act on: exit 0, nothing on stdout (libvirt would read it as
    // a replacement XML for migrate/restore), nothing registered.
    for op in [
        ["start", "begin"],
        ["migrate", "begin"],
        ["started", "begin"],
    ] {
        let r = hook(&server, &["shop", op[0], op[1], "-"], &xml).await;
        assert!(r.ok && r.stdout.is_empty(), "{op:?}: {}", r.stderr);
    }
    assert!(endpoints(&h).await.is_empty());

    let r = hook(&server, &["shop", "prepare", "begin", "-"], &xml).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("registered prod/shop-net0, prod/shop-back"),
        "{}",
        r.stderr
    );
    let eps = endpoints(&h).await;
    assert_eq!(eps.len(), 2, "{eps:?}");
    let front = eps.iter().find(|e| e["name"] == "shop-net0").unwrap();
    assert_eq!(front["namespace"], "prod");
    assert_eq!(front["labels"]["app"], "shop");
    assert_eq!(front["labels"]["tier"], "front");
    assert_eq!(front["ips"][0], "10.0.0.11");
    assert_eq!(front["mac"], "52:54:00:00:01:01");
    assert_eq!(front["socket"]["role"], "server");
    let back = eps.iter().find(|e| e["name"] == "shop-back").unwrap();
    assert_eq!(back["socket"]["role"], "client");
    assert!(back["labels"].get("tier").is_none(), "{back}");

    // A second prepare (libvirtd retried, or a stale registration) is an idempotent upsert.
    let r = hook(&server, &["shop", "prepare", "begin", "-"], &xml).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(endpoints(&h).await.len(), 2);

    let r = hook(&server, &["shop", "stopped", "end", "-"], &xml).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("removed prod/shop-net0, prod/shop-back"));
    assert!(endpoints(&h).await.is_empty());
    // release end follows stopped end: the endpoints are already gone, which is fine.
    let r = hook(&server, &["shop", "release", "end", "-"], &xml).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);

    // A domain without vdfw metadata is left alone, whatever the operation.
    let plain = "<domain><name>other</name><devices/></domain>";
    let r = hook(&server, &["other", "prepare", "begin", "-"], plain).await;
    assert!(r.ok && r.stderr.is_empty(), "{}", r.stderr);
}

#[tokio::test]
async fn fails_closed_when_vdfwd_is_unreachable_or_refuses() {
    let h = Harness::start().await;
    let xml = domain_xml(h.dir.path(), "10.0.0.12");

    // Nobody listens: prepare must fail, naming the domain and the reason.
    let gone = format!("unix:{}", h.dir.path().join("nobody.sock").display());
    let r = hook(&gone, &["shop", "prepare", "begin", "-"], &xml).await;
    assert!(!r.ok, "prepare succeeded without vdfwd");
    assert!(
        r.stderr.contains("refusing to start domain shop") && r.stderr.contains("cannot connect"),
        "{}",
        r.stderr
    );
    // Operations that need no vdfwd still succeed (a hook must not block e.g. `started`).
    let r = hook(&gone, &["shop", "started", "begin", "-"], &xml).await;
    assert!(r.ok, "{}", r.stderr);

    // Refused: the second vNIC claims an address another endpoint owns. Nothing of the domain
    // may stay registered (the first vNIC is rolled back).
    let server = format!("unix:{}", h.socket().display());
    let other = serde_json::json!({
        "name": "db", "namespace": "prod", "mac": "52:54:00:00:09:09", "ips": ["10.0.0.99"]
    });
    let _: Value = h
        .unix_client()
        .call(hyper::Method::PUT, "/v1/endpoints", Some(&other))
        .await
        .unwrap();
    let clash = domain_xml(h.dir.path(), "10.0.0.99");
    let r = hook(&server, &["shop", "prepare", "begin", "-"], &clash).await;
    assert!(!r.ok, "a refused registration let the domain start");
    assert!(
        r.stderr.contains("refusing to start domain shop")
            && r.stderr.contains("prod/shop-back")
            && r.stderr.contains("10.0.0.99"),
        "{}",
        r.stderr
    );
    let names: Vec<Value> = endpoints(&h)
        .await
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("db")], "rolled back");

    // A name another VM's vNIC holds (another MAC) is not taken over, and that VM's endpoint
    // survives this domain's stop.
    let theirs = serde_json::json!({
        "name": "shop-back", "namespace": "prod", "mac": "52:54:00:00:09:0a", "ips": ["10.0.0.50"]
    });
    let _: Value = h
        .unix_client()
        .call(hyper::Method::PUT, "/v1/endpoints", Some(&theirs))
        .await
        .unwrap();
    let r = hook(&server, &["shop", "prepare", "begin", "-"], &xml).await;
    assert!(!r.ok, "took over another VM's endpoint name");
    assert!(
        r.stderr
            .contains("prod/shop-back is already registered with MAC 52:54:00:00:09:0a"),
        "{}",
        r.stderr
    );
    let r = hook(&server, &["shop", "release", "end", "-"], &xml).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("left prod/shop-back alone"),
        "{}",
        r.stderr
    );
    let names: Vec<Value> = endpoints(&h)
        .await
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("db"), Value::from("shop-back")]);

    // Broken metadata refuses the start too.
    let typo = xml.replace("vdfw:label key='app'", "vdfw:lable key='app'");
    let r = hook(&server, &["shop", "prepare", "begin", "-"], &typo).await;
    assert!(!r.ok && r.stderr.contains("<vdfw:lable>"), "{}", r.stderr);
}

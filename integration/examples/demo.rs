//! The newcomer demo (`integration/scripts/demo.sh`): vdfwd with the demo config and the
//! Antrea flavour of the payments policies, three small QEMU guests booted through it, one
//! allowed, one dropped and one rejected connection, and the flow-log lines that explain them.
//!
//! It uses the same harness and configuration as `integration/tests/payments.rs`, which
//! asserts what this only shows.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{boot, field, show_flow, DEMO_CONFIG};
use serde_json::Value;
use vdfw_integration::{require, ConnectOutcome, Prereq, Vdfwd, VdfwdConfig, VdfwdSpec};

const API: &str = "10.0.1.5";
const DB: &str = "10.0.1.6";
const GW: &str = "10.0.2.10";

fn say(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn ip(s: &str) -> Result<IpAddr> {
    s.parse().with_context(|| format!("bad address {s}"))
}

/// Waits for the flow record of `src -> dst:port` with `verdict`, decided in `direction`
/// (`egress` by the sender's vNIC policy, `ingress` by the receiver's), and prints it.
fn explain(
    vd: &Vdfwd,
    src: &str,
    dst: &str,
    port: u16,
    verdict: &str,
    direction: &str,
) -> Result<()> {
    let record = vd
        .wait_flow(
            &format!("{src} -> {dst}:{port} {verdict} ({direction})"),
            Duration::from_secs(5),
            |r: &Value| {
                field(r, "src/ip").and_then(Value::as_str) == Some(src)
                    && field(r, "dst/ip").and_then(Value::as_str) == Some(dst)
                    && field(r, "dst/port").and_then(Value::as_u64) == Some(u64::from(port))
                    && field(r, "verdict").and_then(Value::as_str) == Some(verdict)
                    && field(r, "direction").and_then(Value::as_str) == Some(direction)
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("    flow log: {}", show_flow(&record));
    Ok(())
}

fn main() -> Result<()> {
    require(&[Prereq::Root, Prereq::Qemu]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();

    say("Starting vdfwd: configs/demo/vdfwd.toml (3 vNICs) + configs/policies/antrea (payments isolation, SSH guard)");
    let config = VdfwdConfig::load(DEMO_CONFIG).map_err(|e| anyhow::anyhow!("{e}"))?;
    let vd = Vdfwd::start(VdfwdSpec::new(config).policies(["configs/policies/antrea"]))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "    vdfwd is running; state and flow log in {}",
        vd.state_dir().display()
    );

    say("Booting three QEMU guests through vdfwd: api-gateway (edge), payments-api and payments-db (payments)");
    let guests = boot(&vd, &["api-gateway", "payments-api", "payments-db"], 16);
    let (gw, api, db) = (&guests[0], &guests[1], &guests[2]);
    api.spawn_tcp_echo(8080)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.spawn_tcp_echo(22).map_err(|e| anyhow::anyhow!("{e}"))?;
    db.spawn_tcp_echo(5432)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("    guests up after {:.0}s; echo servers listen on payments-api:8080, payments-db:22 and :5432", started.elapsed().as_secs_f64());

    say("ALLOWED: api-gateway -> payments-api:8080 (rule allow-gateway)");
    let reply = gw
        .tcp_exchange(ip(API)?, 8080, "charge-order-42", 5)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "    sent 'charge-order-42', the echo server answered {:?}",
        reply.trim()
    );
    if !reply.contains("charge-order-42") {
        bail!("the allowed connection did not carry the payload");
    }
    explain(&vd, GW, API, 8080, "forwarded", "egress")?;
    explain(&vd, GW, API, 8080, "forwarded", "ingress")?;

    say("DENIED: payments-db -> payments-api:8080 (only the gateway may call the API)");
    let outcome = db
        .tcp_connect(ip(API)?, 8080, 3)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("    the client saw: {outcome:?} (a Drop rule: silence until the client gives up)");
    if outcome != ConnectOutcome::TimedOut {
        bail!("expected the dropped connection to time out, got {outcome:?}");
    }
    explain(&vd, DB, API, 8080, "dropped", "ingress")?;

    say("REJECTED: api-gateway -> payments-db:22 (securityops ClusterNetworkPolicy payments-ssh-guard)");
    let t = Instant::now();
    let outcome = gw
        .tcp_connect(ip(DB)?, 22, 5)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "    the client saw: {outcome:?} after {:.2}s (a Reject rule: vdfwd answers with a TCP RST)",
        t.elapsed().as_secs_f64()
    );
    if outcome != ConnectOutcome::Refused {
        bail!("expected the rejected connection to be refused, got {outcome:?}");
    }
    explain(&vd, GW, DB, 22, "rejected", "ingress")?;

    say("Drop counters by reason, per sending vNIC (counters.json, refreshed every second)");
    std::thread::sleep(Duration::from_millis(1500));
    for vnic in ["api-gateway", "payments-api", "payments-db"] {
        let drops = vd.all_drops(vnic).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("    {vnic}: {drops:?}");
    }
    println!(
        "    the flow log held {} records (one per new-connection decision and per drop)",
        vd.flows().len()
    );

    say("The same through the API (vdfwctl over vdfwd's unix socket): policies, then observe");
    for args in [
        &["get", "policies"][..],
        &["observe", "--namespace", "payments", "--last", "6"][..],
    ] {
        println!("    $ vdfwctl {}", args.join(" "));
        let out = vd.vdfwctl(args).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !out.status.success() {
            bail!(
                "vdfwctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }
    }

    say(&format!(
        "Done in {:.0}s. Everything (vdfwd, guests, sockets) is cleaned up on exit.",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

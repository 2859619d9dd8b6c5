//! Apply-to-enforced latency through the API of a real vdfwd (a benchmark, not a test):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-shared cargo run --release -p vdfw-integration --example apply_latency [RUNS]
//! ```
//!
//! With `--release` the example builds and starts the release vdfwd. Per run, against one
//! daemon with 200 inventory endpoints in 10 namespaces:
//!
//! - **A**: apply a 10-rule set (one policy of 10 ingress rules) on an empty policy state;
//! - **D**: a one-policy change on top of it (one rule's port edited), 3 times;
//! - **B**: apply a 10k-rule set (1000 such policies) as one file, one call;
//! - **C**: a one-policy change on top of the 10k set, 3 times;
//!
//! each set being deleted again before the next. For every apply it records the latency the
//! client observes (REST over the unix socket, request sent → `ChangeReport` received) and
//! vdfwd's own publish duration (`counters.json` `policy.last_publish.duration_us`: firewall
//! swap + connection re-check). The controller publishes to the data plane before it
//! acknowledges, so acknowledged = enforced; this is confirmed on every apply by reading
//! `stats` right after the acknowledgement: its `enforced_revision` must already be the
//! acknowledged revision. Medians over the runs, and B/A, C/D ratios from the same runs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use api::client::{Client, Target};
use api::controller::ChangeReport;
use hyper::Method;
use serde_json::{json, Value};
use vdfw_integration::{MacAddr, Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef};

const NAMESPACES: usize = 10;
const ENDPOINTS: usize = 200;
const RULES_PER_POLICY: usize = 10;
const CHANGES_PER_RUN: usize = 3;

/// Policy `i` in namespace `ns{i % 10}`: 10 ingress rules, rule `j` admitting
/// `app: client{(i + j) % 100}` on port `base + j`.
fn policy(i: usize, base: u16) -> String {
    let mut s = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n",
        i % NAMESPACES,
        i % 100
    );
    for j in 0..RULES_PER_POLICY {
        s.push_str(&format!(
            "    - from: [{{podSelector: {{matchLabels: {{app: client{}}}}}}}]\n      ports: [{{port: {}}}]\n",
            (i + j) % 100,
            base + j as u16
        ));
    }
    s
}

fn policy_set(n: usize) -> String {
    (0..n)
        .map(|i| policy(i, 10000))
        .collect::<Vec<_>>()
        .join("---\n")
}

struct Bench {
    rt: tokio::runtime::Runtime,
    client: Client,
    vd: Vdfwd,
}

struct Sample {
    client_us: u64,
    publish_us: u64,
}

impl Bench {
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T> {
        self.rt
            .block_on(self.client.call(method.clone(), path, Some(body)))
            .with_context(|| format!("{method} {path}"))
    }

    /// One apply: client-observed latency, enforced-revision check, vdfwd's publish time.
    fn apply(&self, file: &str, text: &str) -> Result<Sample> {
        let body = json!({"files": [{"file": file, "text": text}], "dry_run": false});
        let t0 = Instant::now();
        let rep: ChangeReport = self.call(Method::POST, "/v1/apply", &body)?;
        let client_us = t0.elapsed().as_micros() as u64;
        let stats: Value = self.rt.block_on(self.client.get("/v1/stats"))?;
        let enforced = stats["data_plane"]["enforced_revision"].as_u64();
        ensure!(
            enforced == Some(rep.revision),
            "acknowledged revision {} but the data plane enforces {enforced:?}",
            rep.revision
        );
        ensure!(rep.warnings.is_empty(), "warnings: {:?}", rep.warnings);
        let counters = self.vd.wait_counters(
            &format!("last_publish of revision {}", rep.revision),
            Duration::from_secs(10),
            |c| c["policy"]["last_publish"]["revision"].as_u64() == Some(rep.revision),
        )?;
        let publish_us = counters["policy"]["last_publish"]["duration_us"]
            .as_u64()
            .context("no policy.last_publish.duration_us in counters.json")?;
        Ok(Sample {
            client_us,
            publish_us,
        })
    }

    fn rules_enforced(&self) -> Result<usize> {
        let list: Value = self.rt.block_on(self.client.get("/v1/policies"))?;
        Ok(list["objects"]
            .as_array()
            .map(|o| {
                o.iter()
                    .map(|p| p["rules"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0))
    }

    fn delete_all(&self, n: usize) -> Result<()> {
        let refs: Vec<Value> = (0..n)
            .map(|i| json!({"kind": "policy", "ref": format!("K8sNP:ns{}/p{i}", i % NAMESPACES)}))
            .collect();
        let _: ChangeReport = self.call(
            Method::POST,
            "/v1/delete",
            &json!({"refs": refs, "dry_run": false}),
        )?;
        ensure!(self.rules_enforced()? == 0, "policies left after delete");
        Ok(())
    }

    /// Applies an `n`-policy set, then `CHANGES_PER_RUN` one-policy edits, then deletes it.
    fn run_set(&self, n: usize) -> Result<(Sample, Vec<Sample>)> {
        let set = self.apply("set.yaml", &policy_set(n))?;
        let rules = self.rules_enforced()?;
        ensure!(
            rules == n * RULES_PER_POLICY,
            "{rules} rules enforced, expected {}",
            n * RULES_PER_POLICY
        );
        let mut changes = Vec::new();
        for k in 0..CHANGES_PER_RUN {
            // Policy 0 with its ports moved: 10 rules out, 10 in, everything else unchanged.
            let edited = policy(0, 20000 + 100 * k as u16);
            changes.push(self.apply("set.yaml", &edited)?);
        }
        self.delete_all(n)?;
        Ok((set, changes))
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("usage: apply_latency [RUNS]")?,
        None => 5,
    };
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut cfg = VdfwdConfig::new();
    for ns in 0..NAMESPACES {
        cfg = cfg.with_namespace(&format!("ns{ns}"), &[("tier", "bench")]);
    }
    // Two local vNICs (so the publish has ports to re-check), the rest inventory only.
    for v in 0..2u32 {
        cfg = cfg.with_vnic(
            VnicDef::new(
                &format!("vm{v}"),
                "ns0",
                MacAddr::local(v + 1),
                format!("10.1.0.{}", v + 1).parse()?,
            )
            .label("app", &format!("app{v}")),
        );
    }
    eprintln!("starting vdfwd ({profile} build)...");
    let vd = Vdfwd::start(VdfwdSpec::new(cfg))?;
    let bench = Bench {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        client: Client::new(Target::Unix(vd.api_socket()), None),
        vd,
    };
    for e in 2..ENDPOINTS {
        let ep = json!({
            "name": format!("vm{e}"), "namespace": format!("ns{}", e % NAMESPACES),
            "labels": {"app": if e % 2 == 0 { format!("app{}", e % 100) } else { format!("client{}", e % 100) }},
            "ips": [format!("10.1.{}.{}", e / 250, e % 250 + 1)],
        });
        let _: Value = bench.call(Method::PUT, "/v1/endpoints", &ep)?;
    }
    eprintln!(
        "{ENDPOINTS} endpoints registered; {runs} runs of: 10-rule set + {CHANGES_PER_RUN} one-policy changes, 10k-rule set + {CHANGES_PER_RUN} one-policy changes"
    );

    let (mut a, mut b, mut c, mut d) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let (small, small_changes) = bench.run_set(1)?;
        let (big, big_changes) = bench.run_set(1000)?;
        eprintln!(
            "run {run}: 10 rules {} (publish {}), 10k rules {} (publish {}), change on 10k {} (publish {})",
            ms(small.client_us),
            ms(small.publish_us),
            ms(big.client_us),
            ms(big.publish_us),
            ms(big_changes[0].client_us),
            ms(big_changes[0].publish_us)
        );
        a.push(small);
        d.extend(small_changes);
        b.push(big);
        c.extend(big_changes);
    }
    let med = |v: &[Sample]| {
        (
            median(v.iter().map(|s| s.client_us).collect()),
            median(v.iter().map(|s| s.publish_us).collect()),
        )
    };
    let (ma, mb, mc, md) = (med(&a), med(&b), med(&c), med(&d));
    println!("\napply-to-enforced latency, vdfwd {profile} build, {ENDPOINTS} endpoints, medians of {runs} runs ({} changes)", runs * CHANGES_PER_RUN);
    println!(
        "| apply | client-observed (acknowledged = enforced) | vdfwd publish | ratio (client) |"
    );
    println!("| --- | --- | --- | --- |");
    println!("| A: 10-rule set | {} | {} | 1 |", ms(ma.0), ms(ma.1));
    println!(
        "| B: 10k-rule set (1000 policies, one call) | {} | {} | B/A = {:.0}x |",
        ms(mb.0),
        ms(mb.1),
        mb.0 as f64 / ma.0 as f64
    );
    println!(
        "| D: one-policy change on 10 rules | {} | {} | 1 |",
        ms(md.0),
        ms(md.1)
    );
    println!(
        "| C: one-policy change on 10k rules | {} | {} | C/D = {:.1}x |",
        ms(mc.0),
        ms(mc.1),
        mc.0 as f64 / md.0 as f64
    );
    Ok(())
}

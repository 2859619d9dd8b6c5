//! vdfwctl: command-line client of vdfwd (REST over the unix socket by default).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use api::client::{encode, Client, ClientTls, Target};
use api::controller::{ChangeReport, InputFile, MutationReport, ObjectInfo, ObjectStatus};
use api::flows::FlowRecord;
use api::generate::{generate, PolicyFlavor};
use api::realized::ChangeAction;
use api::server::rest::{ApplyRequest, DeleteRequest, ObjectList, ObjectRefBody};
use api::types::EndpointSpec;
use clap::{Parser, Subcommand, ValueEnum};
use dfw::model::Namespace;
use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "vdfwctl",
    version,
    about = "Control a vdfw host: policies, endpoints, flows"
)]
struct Cli {
    /// vdfwd API address: unix:/path, http://HOST:PORT or https://HOST:PORT (TCP needs --token).
    #[arg(
        short,
        long,
        global = true,
        env = "VDFW_SERVER",
        default_value = "unix:/run/vdfw/api.sock"
    )]
    server: String,
    /// Bearer token for the TCP listener.
    #[arg(long, global = true, env = "VDFW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) that signed the server's, for https:// servers.
    #[arg(long, global = true, env = "VDFW_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "VDFW_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "VDFW_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Apply policy/group/tier documents (YAML or JSON) atomically: all or nothing.
    Apply {
        /// A file or a directory (its *.yaml, *.yml and *.json files); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Report what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List or show objects: policies, groups, tiers, endpoints, namespaces, audit.
    Get {
        kind: String,
        /// Object reference, e.g. ANP:prod/allow-web (policies), prod/web-0 (endpoints).
        reference: Option<String>,
    },
    /// Delete objects: `delete policy REF...`, `delete endpoint NS/NAME`, `delete namespace NAME`.
    Delete {
        kind: String,
        #[arg(required = true)]
        references: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Register or update an endpoint from a JSON file (see `get endpoints -o json`).
    Endpoint {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Declare a namespace and its labels.
    Namespace {
        name: String,
        /// key=value, repeatable.
        #[arg(short, long = "label")]
        labels: Vec<String>,
    },
    /// Show flow records (the last N, and live ones with --follow).
    Observe {
        #[command(flatten)]
        filter: FlowArgs,
        /// Keep streaming new records.
        #[arg(short, long)]
        follow: bool,
    },
    /// Data-plane and flow counters.
    Stats,
    /// Turn audit mode on or off for a policy or a namespace.
    Audit {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(
            long,
            conflicts_with = "namespace",
            required_unless_present = "namespace"
        )]
        policy: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Trace a flow: live against the daemon (--src/--dst), or OFFLINE against files
    /// (--policies/--inventory/--flows), printing one JSON verdict per flow line.
    Trace(TraceArgs),
    /// Policy helpers.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The current store revision.
    Revision,
    /// libvirt's qemu hook (installed by configs/libvirt/install-hook.sh as
    /// /etc/libvirt/hooks/qemu): reads the domain XML on stdin; on `prepare begin` registers one
    /// endpoint per vhost-user interface of a domain carrying <vdfw:vm> metadata (and fails, so
    /// libvirt refuses to start the domain, if vdfwd is unreachable or refuses one); on
    /// `stopped end` / `release end` removes them.
    LibvirtHook {
        /// The domain's name.
        domain: String,
        /// libvirt's operation: prepare, start, started, stopped, release, migrate, ...
        op: String,
        /// begin or end.
        subop: String,
        /// libvirt's extra argument(s) (usually `-`), unused.
        extra: Vec<String>,
        /// Give up (and fail) if vdfwd has not answered within this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Source: namespace/name or IP (live mode).
    #[arg(long, required_unless_present = "flows", conflicts_with_all = ["policies", "inventory", "flows"])]
    src: Option<String>,
    /// Destination: namespace/name or IP (live mode).
    #[arg(long, required_unless_present = "flows")]
    dst: Option<String>,
    /// TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number (live mode).
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// Destination port (ICMP type for ICMP) (live mode).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Offline: policy files or directories (repeatable).
    #[arg(long, requires_all = ["inventory", "flows"])]
    policies: Vec<PathBuf>,
    /// Offline: the endpoint inventory (YAML).
    #[arg(long, requires = "flows")]
    inventory: Option<PathBuf>,
    /// Offline: JSON lines of flows ({"src": "ns/name" or IP, "dst": ..., "protocol": "TCP", "port": 8080}).
    #[arg(long, requires_all = ["policies", "inventory"])]
    flows: Option<PathBuf>,
    /// Offline: drop what no rule decides, even for endpoints no policy isolates.
    #[arg(long)]
    default_deny: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Generate allow-list policies from observed flows (from the daemon, or a JSON-lines
    /// file of flow records as printed by `observe -o json`).
    Generate {
        #[arg(long, value_enum, default_value_t = Flavor::Antrea)]
        flavor: Flavor,
        /// Read flow records from this file instead of the daemon.
        #[arg(long)]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        filter: FlowArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Flavor {
    Antrea,
    Cilium,
}

#[derive(clap::Args)]
struct FlowArgs {
    /// FORWARDED, DROPPED, REJECTED or AUDIT.
    #[arg(long)]
    verdict: Option<String>,
    #[arg(short, long)]
    namespace: Option<String>,
    /// NAMESPACE/NAME
    #[arg(long)]
    endpoint: Option<String>,
    /// key=value, repeatable (ANDed).
    #[arg(short, long = "label")]
    labels: Vec<String>,
    /// Deciding policy name or reference.
    #[arg(long)]
    policy: Option<String>,
    /// How many recent records.
    #[arg(long, default_value_t = 20)]
    last: usize,
}

impl FlowArgs {
    fn query(&self, follow: bool) -> String {
        let mut q = vec![format!("last={}", self.last)];
        if follow {
            q.push("follow=true".into());
        }
        for (k, v) in [
            ("verdict", &self.verdict),
            ("namespace", &self.namespace),
            ("endpoint", &self.endpoint),
            ("policy", &self.policy),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        if !self.labels.is_empty() {
            q.push(format!("labels={}", encode(&self.labels.join(","))));
        }
        format!("/v1/flows?{}", q.join("&"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", api::report::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let client = || -> Result<Client> {
        let target = Target::parse(&cli.server)?;
        let tls = matches!(target, Target::Tls(_));
        let client = Client::new(target, cli.token.clone());
        if !tls {
            return Ok(client);
        }
        Ok(client.with_tls(&ClientTls {
            ca: cli.cacert.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
        })?)
    };
    let json_out = cli.output == Output::Json;
    match &cli.command {
        Command::Apply { files, dry_run } => {
            let files = read_inputs(files)?;
            let req = ApplyRequest {
                files,
                dry_run: *dry_run,
            };
            let r: ChangeReport = client()?
                .call(Method::POST, "/v1/apply", Some(&req))
                .await?;
            if json_out {
                print_json(&r)?;
            } else {
                print_report(&r);
            }
        }
        Command::Get { kind, reference } => {
            get(&client()?, kind, reference.as_deref(), json_out).await?
        }
        Command::Delete {
            kind,
            references,
            dry_run,
        } => delete(&client()?, kind, references, *dry_run, json_out).await?,
        Command::Endpoint { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let spec: EndpointSpec = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not an endpoint (fields: name, namespace, labels, mac, ips, named_ports, socket{{path, role}})",
                    file.display()
                )
            })?;
            let r: MutationReport = client()?
                .call(Method::PUT, "/v1/endpoints", Some(&spec))
                .await?;
            print_mutation(&r, &format!("endpoint {} registered", spec.key()), json_out)?;
        }
        Command::Namespace { name, labels } => {
            let ns = Namespace {
                name: name.clone(),
                labels: parse_labels(labels)?,
            };
            let r: MutationReport = client()?
                .call(Method::PUT, "/v1/namespaces", Some(&ns))
                .await?;
            print_mutation(&r, &format!("namespace {name} set"), json_out)?;
        }
        Command::Observe { filter, follow } => {
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            client()?
                .lines(&filter.query(*follow), |line| {
                    let res = if json_out {
                        writeln!(out, "{line}")
                    } else {
                        writeln!(out, "{}", human_flow(line))
                    };
                    // Stop quietly when stdout is closed (e.g. piped into head).
                    if let Err(e) = res.and_then(|_| out.flush()) {
                        failed = Some(e);
                        return false;
                    }
                    true
                })
                .await?;
            if let Some(e) = failed {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
        }
        Command::Stats => {
            let s: Value = client()?.get("/v1/stats").await?;
            if json_out {
                print_json(&s)?;
            } else {
                print_stats(&s);
            }
        }
        Command::Audit {
            state,
            policy,
            namespace,
        } => {
            let body = json!({"policy": policy, "namespace": namespace, "enabled": state == "on"});
            let r: MutationReport = client()?
                .call(Method::PUT, "/v1/audit", Some(&body))
                .await?;
            let what = match (policy, namespace) {
                (Some(p), _) => format!("policy {p}"),
                (_, Some(n)) => format!("namespace {n}"),
                _ => bail!("give --policy REF or --namespace NS"),
            };
            print_mutation(&r, &format!("audit {state} for {what}"), json_out)?;
        }
        Command::Policy {
            command:
                PolicyCommand::Generate {
                    flavor,
                    from_file,
                    filter,
                },
        } => {
            let flows = match from_file {
                Some(path) => read_flow_file(path)?,
                None => {
                    let mut flows = Vec::new();
                    let mut bad = None;
                    client()?
                        .lines(&filter.query(false), |l| {
                            match serde_json::from_str::<FlowRecord>(l) {
                                Ok(f) => flows.push(f),
                                Err(e) if !l.contains("\"lost\"") => bad = Some(e),
                                Err(_) => {}
                            }
                            true
                        })
                        .await?;
                    if let Some(e) = bad {
                        bail!("the daemon sent a flow record this vdfwctl cannot read: {e}");
                    }
                    flows
                }
            };
            if flows.is_empty() {
                bail!("no flow records to generate policies from (try a larger --last, or check the filters)");
            }
            let flavor = match flavor {
                Flavor::Antrea => PolicyFlavor::Antrea,
                Flavor::Cilium => PolicyFlavor::Cilium,
            };
            let (policies, skipped) = generate(&flows, flavor);
            for s in &skipped {
                eprintln!("skipped: {s}");
            }
            if json_out {
                print_json(&policies)?;
            } else {
                for p in &policies {
                    print!("---\n{}", api::yaml::to_yaml(p));
                }
            }
        }
        Command::Trace(t) => {
            if let (Some(flows), Some(inventory)) = (&t.flows, &t.inventory) {
                return offline_trace(&t.policies, inventory, flows, t.default_deny);
            }
            let (Some(src), Some(dst)) = (&t.src, &t.dst) else {
                bail!(
                    "give --src and --dst (live), or --policies, --inventory and --flows (offline)"
                );
            };
            let req = api::trace::TraceRequest {
                src: src.clone(),
                dst: dst.clone(),
                protocol: t.protocol.clone(),
                port: t.port,
                src_port: None,
            };
            let r: api::trace::TraceResult = client()?
                .call(Method::POST, "/v1/trace", Some(&req))
                .await?;
            if json_out {
                print_json(&r)?;
            } else {
                print_trace(&r);
            }
        }
        Command::LibvirtHook {
            domain,
            op,
            subop,
            extra: _,
            timeout,
        } => return libvirt_hook(&client()?, domain, op, subop, *timeout).await,
        Command::Revision => {
            let r: Value = client()?.get("/v1/revision").await?;
            if json_out {
                print_json(&r)?;
            } else {
                println!("{}", r["revision"]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Expands directories (non-recursive, sorted) and reads every file.
fn read_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| {
                    e.is_file()
                        && matches!(
                            e.extension().and_then(|x| x.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!(
                    "{}: no .yaml, .yml or .json files in this directory",
                    p.display()
                );
            }
            for e in entries {
                files.push(read_input(&e)?);
            }
        } else {
            files.push(read_input(p)?);
        }
    }
    Ok(files)
}

fn read_input(p: &Path) -> Result<InputFile> {
    Ok(InputFile {
        file: p.display().to_string(),
        text: std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        content_type: None,
    })
}

fn read_flow_file(path: &Path) -> Result<Vec<FlowRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut flows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.contains("\"lost\"") {
            continue;
        }
        flows.push(serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a flow record (expected the JSON lines of `vdfwctl observe -o json`)",
                path.display(),
                i + 1
            )
        })?);
    }
    Ok(flows)
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("bad label {l:?}: write key=value"))
        })
        .collect()
}

fn print_report(r: &ChangeReport) {
    let prefix = if r.dry_run { "(dry run) " } else { "" };
    for c in &r.changes {
        let action = match c.action {
            ChangeAction::Added => "added",
            ChangeAction::Changed => "changed",
            ChangeAction::Unchanged => "unchanged",
            ChangeAction::Removed => "removed",
        };
        let mut rules = String::new();
        if !c.rules_added.is_empty() || !c.rules_removed.is_empty() {
            rules = format!(
                " (rules +{} -{}: {})",
                c.rules_added.len(),
                c.rules_removed.len(),
                c.rules_added
                    .iter()
                    .map(|r| format!("+{r}"))
                    .chain(c.rules_removed.iter().map(|r| format!("-{r}")))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        println!("{prefix}{} {action}{rules}", c.object);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if r.dry_run {
        println!(
            "(dry run) nothing changed; store at revision {}",
            r.revision
        );
    } else {
        println!("revision {}", r.revision);
    }
}

fn print_mutation(r: &MutationReport, what: &str, json_out: bool) -> Result<()> {
    if json_out {
        return print_json(r);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!("{what} (revision {})", r.revision);
    Ok(())
}

fn kind_path(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind.trim_end_matches('s') {
        "policy" | "policie" => Some(("policy", "/v1/policies")),
        "group" => Some(("group", "/v1/groups")),
        "tier" => Some(("tier", "/v1/tiers")),
        _ => None,
    }
}

async fn get(c: &Client, kind: &str, reference: Option<&str>, json_out: bool) -> Result<()> {
    if let Some((singular, list_path)) = kind_path(kind) {
        if let Some(r) = reference {
            let info: ObjectInfo = c
                .get(&format!("/v1/objects/{singular}/{}", encode(r)))
                .await?;
            if json_out {
                return print_json(&info);
            }
            println!(
                "# {} ({:?}, revision {})",
                info.object, info.status, info.mod_revision
            );
            println!("# from {}:{}", info.document.file, info.document.line);
            for e in &info.errors {
                println!("# error: {e}");
            }
            for rule in &info.rules {
                println!(
                    "# rule {} {} {} {}{}",
                    rule.id,
                    rule.name,
                    rule.direction,
                    rule.action,
                    rule.log_label
                        .as_ref()
                        .map(|l| format!(" log-label={l}"))
                        .unwrap_or_default()
                );
            }
            print!("{}", info.document.text);
            return Ok(());
        }
        let list: ObjectList = c.get(list_path).await?;
        if json_out {
            return print_json(&list);
        }
        println!(
            "{:<44} {:<9} {:>5} {:<5} {:>8}  SOURCE",
            "NAME", "STATUS", "RULES", "AUDIT", "REVISION"
        );
        for o in &list.objects {
            println!(
                "{:<44} {:<9} {:>5} {:<5} {:>8}  {}:{}",
                api::refs::object_ref(&o.key),
                match o.status {
                    ObjectStatus::Realized => "realized",
                    ObjectStatus::Failed => "FAILED",
                },
                o.rules.len(),
                if o.audit { "on" } else { "" },
                o.mod_revision,
                o.document.file,
                o.document.line
            );
        }
        return Ok(());
    }
    match kind.trim_end_matches('s') {
        "endpoint" => {
            let mut eps: Vec<EndpointSpec> = c.get("/v1/endpoints").await?;
            if let Some(r) = reference {
                eps.retain(|e| e.key().to_string() == r);
                if eps.is_empty() {
                    bail!("endpoint {r} not found");
                }
            }
            if json_out {
                return print_json(&eps);
            }
            println!(
                "{:<32} {:<17} {:<32} {:<30} SOCKET",
                "NAME", "MAC", "IPS", "LABELS"
            );
            for e in &eps {
                println!(
                    "{:<32} {:<17} {:<32} {:<30} {}",
                    e.key().to_string(),
                    e.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                    e.ips
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    fmt_labels(&e.labels),
                    e.socket
                        .as_ref()
                        .map(|s| format!("{} ({:?})", s.path.display(), s.role).to_lowercase())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        "namespace" => {
            let nss: Vec<Namespace> = c.get("/v1/namespaces").await?;
            if json_out {
                return print_json(&nss);
            }
            for n in nss.iter().filter(|n| reference.is_none_or(|r| r == n.name)) {
                println!("{:<32} {}", n.name, fmt_labels(&n.labels));
            }
        }
        "audit" => {
            let a: Value = c.get("/v1/audit").await?;
            if json_out {
                return print_json(&a);
            }
            for s in a.as_array().into_iter().flatten() {
                let target = &s["target"];
                let what = if let Some(ns) = target.get("namespace") {
                    format!("namespace {}", ns.as_str().unwrap_or_default())
                } else {
                    format!("policy {}", target["policy"])
                };
                println!(
                    "{what}: {}",
                    if s["enabled"] == true { "on" } else { "off" }
                );
            }
        }
        other => bail!(
            "unknown kind {other:?}: use policies, groups, tiers, endpoints, namespaces or audit"
        ),
    }
    Ok(())
}

async fn delete(
    c: &Client,
    kind: &str,
    refs: &[String],
    dry_run: bool,
    json_out: bool,
) -> Result<()> {
    if let Some((singular, _)) = kind_path(kind) {
        let req = DeleteRequest {
            refs: refs
                .iter()
                .map(|r| ObjectRefBody {
                    kind: singular.into(),
                    reference: r.clone(),
                })
                .collect(),
            dry_run,
        };
        let r: ChangeReport = c.call(Method::POST, "/v1/delete", Some(&req)).await?;
        return if json_out {
            print_json(&r)
        } else {
            print_report(&r);
            Ok(())
        };
    }
    if dry_run {
        bail!("--dry-run applies to policies, groups and tiers only");
    }
    for r in refs {
        let (path, what) = match kind.trim_end_matches('s') {
            "endpoint" => {
                let key = api::refs::parse_endpoint_ref(r).map_err(|e| anyhow!(e.0))?;
                (
                    format!(
                        "/v1/endpoints/{}/{}",
                        encode(&key.namespace),
                        encode(&key.name)
                    ),
                    format!("endpoint {key} deleted"),
                )
            }
            "namespace" => (
                format!("/v1/namespaces/{}", encode(r)),
                format!("namespace {r} deleted"),
            ),
            other => {
                bail!("unknown kind {other:?}: use policy, group, tier, endpoint or namespace")
            }
        };
        let m: MutationReport = c.call(Method::DELETE, &path, None::<&()>).await?;
        print_mutation(&m, &what, json_out)?;
    }
    Ok(())
}

fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn human_flow(line: &str) -> String {
    let Ok(f) = serde_json::from_str::<FlowRecord>(line) else {
        return match serde_json::from_str::<Value>(line) {
            Ok(v) if v.get("lost").is_some() => {
                format!("... {} records lost (follower too slow)", v["lost"])
            }
            _ => line.to_string(),
        };
    };
    let end = |p: &api::flows::FlowPeer, ip: std::net::IpAddr, port: u16| match &p.endpoint {
        Some(e) => format!("{e} ({ip}:{port})"),
        None => format!("{ip}:{port}"),
    };
    let secs = f.time_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mut out = format!(
        "{h:02}:{m:02}:{s:02}.{:03} {} -> {} {} {:<9} {}",
        (f.time_ns / 1_000_000) % 1000,
        end(&f.src, f.tuple.src, f.tuple.src_port),
        end(&f.dst, f.tuple.dst, f.tuple.dst_port),
        f.tuple.protocol,
        f.verdict,
        format!("{:?}", f.direction).to_lowercase(),
    );
    if let Some(r) = f.drop_reason {
        out.push_str(&format!(
            " reason={}",
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ));
    }
    if let Some(p) = &f.policy {
        out.push_str(&format!(
            " policy={} rule={} ({})",
            p.policy, p.rule, p.rule_id
        ));
        if let Some(l) = &p.log_label {
            out.push_str(&format!(" label={l}"));
        }
    }
    out
}

fn print_stats(s: &Value) {
    println!("revision: {}", s["revision"]);
    if let Some(m) = s["flows_by_verdict"].as_object() {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("flows: {}", parts.join(" "));
    }
    let dp = &s["data_plane"];
    if dp.is_null() {
        println!("data plane: not attached (offline controller)");
        return;
    }
    println!(
        "enforced revision: {}  conntrack entries: {}",
        dp["enforced_revision"], dp["conntrack_entries"]
    );
    for v in dp["vnics"].as_array().into_iter().flatten() {
        println!(
            "vnic {} {} rx {} pkts/{} B tx {} pkts/{} B drops {}",
            v["endpoint"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
                + "/"
                + v["endpoint"]["name"].as_str().unwrap_or_default(),
            if v["connected"] == true { "up" } else { "down" },
            v["rx_packets"],
            v["rx_bytes"],
            v["tx_packets"],
            v["tx_bytes"],
            v["drops"]
        );
    }
    for r in dp["rules"].as_array().into_iter().flatten() {
        let policy = serde_json::from_value::<dfw::model::PolicyKey>(r["policy"].clone())
            .map(|k| k.to_string())
            .unwrap_or_else(|_| r["policy"].to_string());
        println!(
            "rule {} {policy} {} hits {} packets {} bytes {} sessions {}",
            r["rule_id"]
                .as_u64()
                .map(|id| dfw::model::RuleId(id).to_string())
                .unwrap_or_else(|| r["rule_id"].to_string()),
            r["rule"],
            r["hits"],
            r["packets"],
            r["bytes"],
            r["sessions"]
        );
    }
}

/// `vdfwctl libvirt-hook`: stdout stays empty (libvirt reads a `migrate`/`restore` hook's
/// stdout as a replacement XML); what was done goes to stderr, which libvirt logs and, when the
/// hook fails, shows to whoever started the domain.
async fn libvirt_hook(
    client: &Client,
    domain: &str,
    op: &str,
    subop: &str,
    timeout_s: u64,
) -> Result<ExitCode> {
    use api::libvirt::{run_hook, HookOutcome};
    use std::io::Read;
    // Always read all of stdin, even for operations we ignore: libvirt writes the whole XML.
    let mut xml = String::new();
    std::io::stdin()
        .read_to_string(&mut xml)
        .context("reading the domain XML from stdin")?;
    let run = run_hook(client, domain, op, subop, &xml);
    let outcome = match tokio::time::timeout(std::time::Duration::from_secs(timeout_s), run).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(_) => {
            eprintln!(
                "vdfw: {op} {subop} of domain {domain}: vdfwd did not answer within {timeout_s} s{}",
                if op == "prepare" {
                    "; refusing to start the domain"
                } else {
                    ""
                }
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let list = |keys: &[dfw::model::EndpointKey]| {
        keys.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match outcome {
        HookOutcome::Nothing => {}
        HookOutcome::Registered(keys) => {
            eprintln!("vdfw: domain {domain}: registered {}", list(&keys))
        }
        HookOutcome::Unregistered { removed, foreign } => {
            if !removed.is_empty() {
                eprintln!("vdfw: domain {domain}: removed {}", list(&removed));
            }
            if !foreign.is_empty() {
                eprintln!(
                    "vdfw: domain {domain}: left {} alone: now registered with another MAC",
                    list(&foreign)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Offline trace: one JSON object per flow line on stdout.
fn offline_trace(
    policies: &[PathBuf],
    inventory: &Path,
    flows: &Path,
    default_deny: bool,
) -> Result<ExitCode> {
    let snapshot = api::offline::realize(policies, inventory, default_deny)?;
    let flows = api::offline::read_flows(flows)?;
    let mut out = std::io::stdout().lock();
    for (i, f) in flows.iter().enumerate() {
        let r = api::engine::trace(&snapshot, f)
            .map_err(|e| anyhow!("flow {} ({} -> {}): {e}", i + 1, f.src, f.dst))?;
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_trace(r: &api::trace::TraceResult) {
    let end = |p: &api::trace::TracePeer| match &p.endpoint {
        Some(e) => format!("{e} ({})", p.ip),
        None => p.ip.clone(),
    };
    println!(
        "{} -> {} {}/{}: {}{}",
        end(&r.src),
        end(&r.dst),
        r.protocol,
        r.port,
        format!("{:?}", r.verdict).to_uppercase(),
        if r.audit {
            " (audit: would be dropped)"
        } else {
            ""
        }
    );
    let mut by = format!("decided at {} by {}", r.direction, r.decided_by);
    if let Some(p) = &r.policy {
        by.push_str(&format!(" policy {p}"));
    }
    if let (Some(rule), Some(id)) = (&r.rule, &r.rule_id) {
        by.push_str(&format!(" rule {rule} ({id})"));
    }
    if let Some(l) = &r.log_label {
        by.push_str(&format!(" label {l}"));
    }
    println!("  {by}");
}

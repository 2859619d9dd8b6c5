//! vdfwd: the vdfw data-plane daemon.
//!
//! `vdfwd --config FILE` loads the policy directory, realizes it for the configured vNICs and
//! only then serves their vhost-user sockets, with the dfw firewall in the packet path. A
//! policy set that does not parse (or that the engine refuses) is printed error by error and
//! vdfwd exits with status 2 before serving anything.
//!
//! * The REST + gRPC API (`[api]`; default: the unix socket `<state_dir>/api.sock`, mode 0600)
//!   serves `vdfwctl`: policies, endpoints, namespaces, audit, flows, stats, trace. Everything
//!   applied through it is stored in `state_dir` (redb) before it is acknowledged and realized
//!   again at the next start, before any vNIC forwards a packet.
//! * SIGHUP re-reads `policy_dir` and swaps the policy atomically; existing connections are
//!   re-checked (cut if no longer allowed). A bad set is logged and the old policy kept.
//! * `state_dir`: `ports.json` once at start, `counters.json` every second (ports with their
//!   firewall counters, per-rule counters, policy state, flow-log stats), `flows.jsonl` (the
//!   flow log: one JSON object per line).
//! * SIGTERM/SIGINT disconnect the frontends, remove the sockets and exit.
//! * `--insecure-allow-all` turns the firewall OFF (spoof guard only). Testing only.
//! * `--check` loads config and policy, prints the summary and exits (0 if both are valid).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::{error, info, warn};

/// Large tables on transparent huge pages (config `huge_pages`, see `vswitch::huge_alloc`).
#[global_allocator]
static ALLOC: vswitch::huge_alloc::HugeTableAlloc = vswitch::huge_alloc::HugeTableAlloc;

use vswitch::config::Config;
use vswitch::daemon::{Daemon, DaemonError, FilterMode};

#[derive(Parser, Debug)]
#[command(
    name = "vdfwd",
    about = "vdfw data plane: vhost-user virtio-net backend with a distributed firewall"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// INSECURE: forward everything that passes the spoof guard, turning the firewall OFF.
    /// Policy is still loaded and validated. For testing only.
    #[arg(long)]
    insecure_allow_all: bool,
    /// Validate the configuration and the policy directory, print the summary, and exit.
    #[arg(long)]
    check: bool,
}

fn write_atomic(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<DaemonError>() {
                Some(d) => {
                    for line in d.lines() {
                        eprintln!("vdfwd: {line}");
                    }
                }
                None => eprintln!("vdfwd: {}", api::report::error_chain(&e)),
            }
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    vswitch::huge_alloc::set_enabled(cfg.huge_pages);
    if args.check {
        for line in Daemon::check(&cfg)? {
            println!("{line}");
        }
        return Ok(());
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing SIGHUP handler")?;

    let mode = if args.insecure_allow_all {
        FilterMode::InsecureAllowAll
    } else {
        FilterMode::Firewall
    };
    let vnics = cfg.vnics.clone();
    let state_dir = cfg.state_dir.clone();
    let api_config = cfg.api_config();
    let d = Daemon::start(cfg, mode)?;
    d.log_summary();
    write_atomic(&state_dir, "ports.json", &serde_json::to_value(&vnics)?)?;

    // The API runs on its own small runtime; the data path has its own threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("vdfw-api")
        .enable_all()
        .build()
        .context("starting the API runtime")?;
    let server = runtime
        .block_on(api::server::start(d.controller().clone(), &api_config))
        .context("starting the API server")?;

    while !stop.load(Ordering::Acquire) {
        if hup.swap(false, Ordering::AcqRel) {
            info!("SIGHUP: reloading the policy directory");
            match d.reload_policy_dir() {
                Ok(r) => info!(
                    generation = r.generation,
                    files = r.files,
                    policies = r.policies,
                    created = r.created,
                    updated = r.updated,
                    removed = r.removed,
                    unchanged = r.unchanged,
                    connections_cut = r.connections.cut,
                    connections_kept = r.connections.kept,
                    "policy reloaded"
                ),
                Err(e) => {
                    for line in e.lines() {
                        error!("reload refused, keeping the running policy: {line}");
                    }
                }
            }
        }
        d.tick();
        if let Err(e) = write_atomic(
            &state_dir,
            "counters.json",
            &serde_json::to_value(d.status())?,
        ) {
            warn!("cannot write counters: {e:#}");
        }
        for _ in 0..10 {
            if stop.load(Ordering::Acquire) || hup.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    info!("shutting down");
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
    });
    d.shutdown();
    let _ = write_atomic(
        &state_dir,
        "counters.json",
        &serde_json::to_value(d.status())?,
    );
    info!("stopped");
    Ok(())
}

//! vdfwd: the vdfw data-plane daemon.
//!
//! `vdfwd --config FILE` serves the configured vNICs over vhost-user and switches between them
//! and the uplink. The dfw policy engine is not wired yet: every frame meets the fail-closed
//! filter and is dropped (`policy_not_realized`). `--insecure-allow-all` replaces it with a
//! filter that forwards everything, for bring-up and tests only.
//!
//! Runtime state goes to `state_dir`: `ports.json` once at start, `counters.json` refreshed
//! every second. SIGTERM/SIGINT disconnect the frontends, remove the sockets and exit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::{info, warn};

use vswitch::config::Config;
use vswitch::dataplane::Dataplane;
use vswitch::filter::{FailClosed, InsecureAllowAll, PacketFilter};

#[derive(Parser, Debug)]
#[command(
    name = "vdfwd",
    about = "vdfw data plane: vhost-user virtio-net backend with a distributed firewall"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Forward everything: turns the firewall OFF. For testing only.
    #[arg(long)]
    insecure_allow_all: bool,
}

fn write_atomic(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;

    let filter: Arc<dyn PacketFilter> = if args.insecure_allow_all {
        warn!("--insecure-allow-all: the firewall is OFF, every frame that passes the spoof guard is forwarded");
        Arc::new(InsecureAllowAll)
    } else {
        info!("dfw policy engine not wired yet: fail-closed filter, no frame will be forwarded");
        Arc::new(FailClosed)
    };
    if let Some(dir) = &cfg.policy_dir {
        info!(policy_dir = %dir.display(), "policy directory noted (parsed once dfw is integrated)");
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }

    let dp = Dataplane::new(filter);
    if let Some(up) = &cfg.uplink {
        dp.attach_uplink(up).context("attaching the uplink")?;
    }
    for v in &cfg.vnics {
        if let Some(parent) = v.socket.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let id = dp
            .add_vnic(v)
            .with_context(|| format!("adding vNIC {}", v.name))?;
        info!(vnic = %v.name, %id, socket = %v.socket.display(), role = ?v.role, mac = %v.mac, "vNIC ready");
    }
    write_atomic(
        &cfg.state_dir,
        "ports.json",
        &serde_json::to_value(&cfg.vnics)?,
    )?;

    while !stop.load(Ordering::Acquire) {
        if let Err(e) = write_atomic(
            &cfg.state_dir,
            "counters.json",
            &serde_json::to_value(dp.status())?,
        ) {
            warn!("cannot write counters: {e:#}");
        }
        for _ in 0..10 {
            if stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    info!("shutting down");
    let final_status = dp.status();
    dp.shutdown();
    let _ = write_atomic(
        &cfg.state_dir,
        "counters.json",
        &serde_json::to_value(final_status)?,
    );
    info!("stopped");
    Ok(())
}

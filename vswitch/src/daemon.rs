//! The daemon as a library: configuration → control plane (store + controller) → enforcer
//! (data plane + firewall) and what `vdfwd` does with them (policy reload, vNIC add/remove,
//! status).
//!
//! One owner of policy: the api [`Controller`]. It holds the only dfw engine, persists every
//! change in the embedded store under `state_dir` before acknowledging it, and publishes each
//! realized state to the [`Enforcer`]. The configuration file and the policy directory are two
//! declarative *sources* synced into the controller (so they take the same path as an API
//! call); everything applied through the API lives beside them in the store.
//!
//! # Start-up order (fail closed)
//! 1. the data plane is created with the fail-closed filter;
//! 2. the controller loads and realizes the store (everything applied before the restart);
//! 3. the configuration is synced in: namespaces, every `[[vnic]]` as an endpoint with its
//!    socket (vNICs dropped from the file since the last start are removed), then the policy
//!    directory as one set (one bad file and nothing starts);
//! 4. the enforcer is attached: the realized state is installed in the firewall (which becomes
//!    the filter), and only then are the vNIC sockets served — configured and API-registered
//!    alike — and the uplink attached.
//!
//! # Policy changes
//! SIGHUP re-reads `policy_dir` and syncs it as one change set: what the directory no longer
//! declares is deleted, the rest applied. If anything fails to parse or realize the running
//! policy is untouched. Otherwise the new snapshot is installed and every tracked connection
//! re-checked ([`crate::firewall::Firewall::recheck`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use api::controller::{ChangeReport, Controller, ControllerConfig, ControllerError, InputFile};
use api::realized::ChangeAction;
use api::store::{RedbStore, Store, StoreError};
use api::types::{EndpointSpec, MacAddr as ApiMac, SocketRole as ApiRole, VnicSocket};
use dfw::compile::EngineConfig;
use dfw::conntrack::{CtConfig, CtConfigError};
use dfw::model::{Direction, EndpointKey, NamedPort, PolicyKind};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, VnicConfig};
use crate::dataplane::{Dataplane, DataplaneError, PortStatus};
use crate::device::SocketRole;
pub use crate::enforcer::FilterMode;
use crate::enforcer::{Enforcer, PublishReport};
use crate::filter::FailClosed;
use crate::firewall::{Firewall, RecheckReport};
use crate::flowlog::{FlowLog, FlowLogStats, FlowRecord, RuleInfo};
use crate::policy::{read_policy_dir, PolicyLoadError};
use crate::port::PortId;

/// Expiry budget per vNIC table for [`Daemon::tick`].
pub const TICK_EXPIRE_BUDGET: usize = 4096;

/// Endpoint keys the configuration file registered at the last start, so a `[[vnic]]` removed
/// from the file is removed from the store too (and not an API-registered endpoint).
const CONFIG_ENDPOINTS_FILE: &str = "config-endpoints.json";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("policy: {0}")]
    Policy(#[from] PolicyLoadError),
    #[error("{0}")]
    Control(#[from] ControllerError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("conntrack: {0}")]
    Conntrack(#[from] CtConfigError),
    #[error("flow log: {0}")]
    FlowLog(std::io::Error),
    #[error("cannot start poll threads: {0}")]
    PollThreads(std::io::Error),
    #[error("state dir {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    #[error("no policy_dir configured")]
    NoPolicyDir,
    #[error("no vNIC named {0:?}")]
    NoSuchVnic(String),
    #[error("vNIC {0:?} already exists")]
    VnicExists(String),
    #[error("vNIC {0:?} did not come up: {1}")]
    VnicDown(String, String),
}

impl DaemonError {
    /// One line per problem (every policy parse error on its own line).
    pub fn lines(&self) -> Vec<String> {
        match self {
            DaemonError::Policy(e) => e.lines(),
            DaemonError::Control(ControllerError::Invalid(errors)) => {
                errors.iter().map(|e| e.to_string()).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// What a policy-directory sync did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// The store revision holding the change (unchanged if nothing changed).
    pub revision: u64,
    /// The dfw snapshot generation enforced after it.
    pub generation: u64,
    /// Policy files read.
    pub files: usize,
    pub policies: usize,
    pub groups: usize,
    pub tiers: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Parse warnings and fields kept but not enforced (L7, FQDN).
    pub warnings: Vec<String>,
    pub connections: RecheckReport,
    pub duration_us: u64,
}

/// A rule's counters with its names, for `counters.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    pub rule_id: String,
    #[serde(flatten)]
    pub info: Option<RuleInfo>,
    pub sessions: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    pub generation: Option<u64>,
    /// The store revision being enforced.
    pub revision: u64,
    pub policy_dir: Option<PathBuf>,
    pub default_deny: bool,
    pub audit: bool,
    /// Policies enforced (from the policy directory and the API).
    pub policies: usize,
    pub last_change: Option<ReloadReport>,
    /// The last change published to the data plane (any source).
    pub last_publish: Option<PublishReport>,
    /// Errors of the last refused reload (the running policy was kept).
    pub last_error: Option<Vec<String>>,
}

/// Everything `counters.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub mode: FilterMode,
    pub policy: PolicyStatus,
    /// Every port (vNICs with their firewall state, then the uplink).
    pub ports: Vec<PortStatus>,
    /// Per-rule hit counters of the rules applying to a local vNIC that matched anything.
    /// Rules without a hit are only counted (`rules_idle`): with a 100k-rule policy, listing
    /// them all every second cost a fifth of a core (the API lists every rule on request).
    pub rules: Vec<RuleStatus>,
    /// Rules applying to a local vNIC that never matched.
    pub rules_idle: usize,
    pub flow_log: FlowLogStats,
}

#[derive(Default)]
struct Reloads {
    last_change: Option<ReloadReport>,
    last_error: Option<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// vdfwd: controller + enforcer. `Send + Sync`; the API server shares the controller.
pub struct Daemon {
    cfg: Config,
    controller: Arc<Controller>,
    enforcer: Arc<Enforcer>,
    reloads: Mutex<Reloads>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Daemon>();
};

fn engine_config(cfg: &Config) -> EngineConfig {
    EngineConfig {
        default_deny: cfg.default_deny,
        audit: cfg.audit,
        ..EngineConfig::default()
    }
}

/// The registered-endpoint form of a configured vNIC.
pub fn endpoint_spec(v: &VnicConfig) -> Result<EndpointSpec, ConfigError> {
    let model = v.endpoint()?;
    Ok(EndpointSpec {
        name: v.name.clone(),
        namespace: v.namespace.clone(),
        labels: v.labels.clone(),
        mac: Some(ApiMac(v.mac.octets())),
        ips: v.ips.clone(),
        named_ports: model
            .named_ports
            .into_iter()
            .map(|(name, p)| {
                (
                    name,
                    NamedPort {
                        port: p.port,
                        protocol: p.protocol,
                    },
                )
            })
            .collect(),
        socket: Some(VnicSocket {
            path: v.socket.clone(),
            role: match v.role {
                SocketRole::Listen => ApiRole::Server,
                SocketRole::Connect => ApiRole::Client,
            },
        }),
    })
}

fn endpoint_key(v: &VnicConfig) -> EndpointKey {
    EndpointKey {
        namespace: v.namespace.clone(),
        name: v.name.clone(),
    }
}

/// The prefix every document file name from `dir` starts with (the sync's source).
fn source_prefix(dir: &Path) -> String {
    let mut s = dir.display().to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// Syncs the configuration's namespaces and vNIC endpoints into the controller.
fn sync_inventory(controller: &Controller, cfg: &Config) -> Result<(), DaemonError> {
    for ns in cfg.model_namespaces() {
        controller.upsert_namespace(ns)?;
    }
    let path = cfg.state_dir.join(CONFIG_ENDPOINTS_FILE);
    let previous: Vec<EndpointKey> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now: BTreeSet<EndpointKey> = cfg.vnics.iter().map(endpoint_key).collect();
    let registered: BTreeSet<EndpointKey> =
        controller.endpoints().iter().map(|e| e.key()).collect();
    for gone in previous.iter().filter(|k| !now.contains(*k)) {
        if registered.contains(gone) {
            info!(endpoint = %gone, "vNIC no longer in the configuration: removing it");
            controller.remove_endpoint(gone)?;
        }
    }
    for v in &cfg.vnics {
        controller.upsert_endpoint(endpoint_spec(v)?)?;
    }
    let keys: Vec<&EndpointKey> = now.iter().collect();
    let json = serde_json::to_vec(&keys).unwrap_or_default();
    std::fs::write(&path, json).map_err(|e| DaemonError::StateDir(path, e))?;
    Ok(())
}

/// Syncs `dir` into the controller as one change set.
fn sync_policy_dir(
    controller: &Controller,
    dir: &Path,
    dry_run: bool,
) -> Result<(usize, ChangeReport), DaemonError> {
    let files: Vec<InputFile> = read_policy_dir(dir)?
        .into_iter()
        .map(|(path, text)| InputFile {
            file: path.display().to_string(),
            text,
            content_type: None,
        })
        .collect();
    let n = files.len();
    let report = controller.sync_source(&source_prefix(dir), &files, dry_run)?;
    Ok((n, report))
}

fn count(report: &ChangeReport, action: ChangeAction) -> usize {
    report.changes.iter().filter(|c| c.action == action).count()
}

impl Daemon {
    /// Validates the configuration and the policy directory and realizes the policy on a
    /// throwaway in-memory store, without serving anything: `vdfwd --check`. Returns the
    /// summary [`Daemon::summary`] would print.
    pub fn check(cfg: &Config) -> Result<Vec<String>, DaemonError> {
        cfg.validate()?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory()?);
        let controller = Controller::open(
            store,
            ControllerConfig {
                engine: engine_config(cfg),
                ..ControllerConfig::default()
            },
        )?;
        for ns in cfg.model_namespaces() {
            controller.upsert_namespace(ns)?;
        }
        for v in &cfg.vnics {
            controller.upsert_endpoint(endpoint_spec(v)?)?;
        }
        let warnings = match &cfg.policy_dir {
            Some(dir) => sync_policy_dir(&controller, dir, false)?.1.warnings,
            None => Vec::new(),
        };
        let vnics: Vec<(Option<PortId>, VnicConfig)> =
            cfg.vnics.iter().map(|v| (None, v.clone())).collect();
        Ok(summarize(
            cfg,
            FilterMode::Firewall,
            &controller,
            &vnics,
            &warnings,
        ))
    }

    /// Builds everything and starts serving (see the module doc for the order). The store
    /// and the flow log (`flows.jsonl`) live in `state_dir` (created if needed).
    pub fn start(cfg: Config, mode: FilterMode) -> Result<Daemon, DaemonError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| DaemonError::StateDir(cfg.state_dir.clone(), e))?;
        let t0 = Instant::now();
        let dataplane = Dataplane::new(Arc::new(FailClosed));
        if let Some(poll) = cfg.poll_config() {
            dataplane
                .pipeline()
                .start_polling(&poll)
                .map_err(DaemonError::PollThreads)?;
        }
        let flowlog = FlowLog::start(
            Some(cfg.state_dir.join("flows.jsonl")),
            dataplane.pipeline().now(),
        )
        .map_err(DaemonError::FlowLog)?;
        let max = cfg.conntrack_max_per_vnic;
        let ct = CtConfig {
            max_entries: max,
            max_entries_per_zone: max,
            // By default pre-sized up to 64k: growing a big table rehashes it in one go, a
            // pause of hundreds of ms at 1M entries (dfw's conntrack growth bench); entry
            // storage only takes memory as it fills, the index ~32-64 B per slot up front.
            initial_capacity: cfg.conntrack_initial(),
            ..CtConfig::default()
        };
        let firewall = Arc::new(Firewall::new(ct, Some(flowlog.sink()))?);
        let enforcer = Arc::new(Enforcer::new(mode, dataplane, firewall, flowlog));

        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&cfg.state_dir)?);
        let controller = Arc::new(Controller::open(
            store,
            ControllerConfig {
                engine: engine_config(&cfg),
                ..ControllerConfig::default()
            },
        )?);
        sync_inventory(&controller, &cfg)?;
        let mut reloads = Reloads::default();
        if let Some(dir) = &cfg.policy_dir {
            let (files, report) = sync_policy_dir(&controller, dir, false)?;
            reloads.last_change = Some(Self::reload_report(&controller, None, files, &report, t0));
        }

        // Realized: install it, then serve the vNICs.
        let failures = controller.attach_data_plane(enforcer.clone())?;
        for w in &failures {
            warn!("{w}");
        }
        for v in &cfg.vnics {
            if enforcer.vnic_id(&v.name).is_none() {
                let why = failures
                    .iter()
                    .find(|w| w.contains(&v.name))
                    .cloned()
                    .unwrap_or_else(|| "not attached".into());
                return Err(DaemonError::VnicDown(v.name.clone(), why));
            }
        }
        if let Some(up) = &cfg.uplink {
            enforcer.dataplane().attach_uplink(up)?;
        }
        if let Some(r) = reloads.last_change.as_mut() {
            r.duration_us = t0.elapsed().as_micros() as u64;
        }
        Ok(Daemon {
            cfg,
            controller,
            enforcer,
            reloads: Mutex::new(reloads),
        })
    }

    fn reload_report(
        controller: &Controller,
        enforcer: Option<&Enforcer>,
        files: usize,
        report: &ChangeReport,
        t0: Instant,
    ) -> ReloadReport {
        let state = controller.realized();
        let changed = count(report, ChangeAction::Added)
            + count(report, ChangeAction::Changed)
            + count(report, ChangeAction::Removed)
            > 0;
        let connections = match enforcer.and_then(|e| e.last_publish()) {
            Some(p) if changed && p.revision == report.revision => p.connections,
            _ => RecheckReport::default(),
        };
        ReloadReport {
            revision: report.revision,
            generation: state.snapshot.generation(),
            files,
            policies: state.policies.len(),
            groups: state.groups.len(),
            tiers: state.tiers.len(),
            created: count(report, ChangeAction::Added),
            updated: count(report, ChangeAction::Changed),
            unchanged: count(report, ChangeAction::Unchanged),
            removed: count(report, ChangeAction::Removed),
            warnings: report.warnings.clone(),
            connections,
            duration_us: t0.elapsed().as_micros() as u64,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The control plane (what the API server serves).
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    pub fn enforcer(&self) -> &Arc<Enforcer> {
        &self.enforcer
    }

    pub fn mode(&self) -> FilterMode {
        self.enforcer.mode()
    }

    pub fn dataplane(&self) -> &Dataplane {
        self.enforcer.dataplane()
    }

    pub fn firewall(&self) -> &Arc<Firewall> {
        self.enforcer.firewall()
    }

    pub fn flow_log(&self) -> &FlowLog {
        self.enforcer.flow_log()
    }

    /// The data path's clock (monotonic ns).
    pub fn now(&self) -> u64 {
        self.dataplane().pipeline().now()
    }

    /// The port id of a vNIC (configured or API-registered), by name.
    pub fn vnic_id(&self, name: &str) -> Option<PortId> {
        self.enforcer.vnic_id(name)
    }

    /// The last `n` flow records, oldest first.
    pub fn flows(&self, n: usize) -> Vec<FlowRecord> {
        self.flow_log().recent(n)
    }

    /// Re-reads `policy_dir` and syncs it as one change set (SIGHUP). On any error the
    /// running policy stays, and the error is returned (and kept for the status).
    pub fn reload_policy_dir(&self) -> Result<ReloadReport, DaemonError> {
        let t0 = Instant::now();
        let dir = self
            .cfg
            .policy_dir
            .as_ref()
            .ok_or(DaemonError::NoPolicyDir)?;
        match sync_policy_dir(&self.controller, dir, false) {
            Ok((files, report)) => {
                let out =
                    Self::reload_report(&self.controller, Some(&self.enforcer), files, &report, t0);
                let mut r = lock(&self.reloads);
                r.last_change = Some(out.clone());
                r.last_error = None;
                Ok(out)
            }
            Err(e) => {
                lock(&self.reloads).last_error = Some(e.lines());
                Err(e)
            }
        }
    }

    /// Registers a vNIC at run time (as the API's endpoint registration does): its endpoint
    /// joins the policy, then its socket is served.
    pub fn add_vnic(&self, v: &VnicConfig) -> Result<PortId, DaemonError> {
        if self.vnic_id(&v.name).is_some() {
            return Err(DaemonError::VnicExists(v.name.clone()));
        }
        let report = self.controller.upsert_endpoint(endpoint_spec(v)?)?;
        self.vnic_id(&v.name)
            .ok_or_else(|| DaemonError::VnicDown(v.name.clone(), report.warnings.join("; ")))
    }

    /// Removes a vNIC: disconnects it, forgets its connections and its endpoint.
    pub fn remove_vnic(&self, name: &str) -> Result<(), DaemonError> {
        let key = self
            .enforcer
            .vnics()
            .into_iter()
            .find(|(_, v)| v.name == name)
            .map(|(_, v)| endpoint_key(&v))
            .ok_or_else(|| DaemonError::NoSuchVnic(name.to_owned()))?;
        self.controller.remove_endpoint(&key)?;
        Ok(())
    }

    /// Periodic control-plane work: a bounded expiry sweep of every connection table.
    pub fn tick(&self) -> usize {
        self.firewall().expire_all(self.now(), TICK_EXPIRE_BUDGET)
    }

    /// Everything `counters.json` holds.
    pub fn status(&self) -> DaemonStatus {
        let state = self.controller.realized();
        let (last_change, last_error) = {
            let r = lock(&self.reloads);
            (r.last_change.clone(), r.last_error.clone())
        };
        let fw: BTreeMap<u32, _> = self
            .firewall()
            .status()
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        let mut ports = self.dataplane().status();
        for p in &mut ports {
            if let Some(id) = p.id {
                p.firewall = fw.get(&id).cloned();
            }
        }
        let catalog = self.flow_log().catalog();
        let counters = self.firewall().rule_counters();
        let rules_total = counters.len();
        let rules: Vec<RuleStatus> = counters
            .into_iter()
            .filter(|(_, c)| c.sessions != 0 || c.packets != 0)
            .map(|(id, c)| RuleStatus {
                rule_id: id.to_string(),
                info: catalog.rules.get(&id).cloned(),
                sessions: c.sessions,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        DaemonStatus {
            mode: self.mode(),
            policy: PolicyStatus {
                generation: self.firewall().generation(),
                revision: state.revision,
                policy_dir: self.cfg.policy_dir.clone(),
                default_deny: self.cfg.default_deny,
                audit: self.cfg.audit,
                policies: state.policies.len(),
                last_change,
                last_publish: self.enforcer.last_publish(),
                last_error,
            },
            ports,
            rules_idle: rules_total - rules.len(),
            rules,
            flow_log: self.flow_log().stats(),
        }
    }

    /// A concise start-up summary, one line each: totals, every vNIC with its realized rule
    /// counts, then warnings.
    pub fn summary(&self) -> Vec<String> {
        let vnics: Vec<(Option<PortId>, VnicConfig)> = self
            .enforcer
            .vnics()
            .into_iter()
            .map(|(id, v)| (Some(id), v))
            .collect();
        let warnings = lock(&self.reloads)
            .last_change
            .as_ref()
            .map(|c| c.warnings.clone())
            .unwrap_or_default();
        summarize(&self.cfg, self.mode(), &self.controller, &vnics, &warnings)
    }

    /// Logs [`Daemon::summary`].
    pub fn log_summary(&self) {
        for line in self.summary() {
            if let Some(w) = line.strip_prefix("warning: ") {
                warn!("{w}");
            } else {
                info!("{line}");
            }
        }
    }

    /// Disconnects every vNIC and the uplink, and flushes the flow log.
    pub fn shutdown(&self) {
        self.enforcer.shutdown();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn summarize(
    cfg: &Config,
    mode: FilterMode,
    controller: &Controller,
    vnics: &[(Option<PortId>, VnicConfig)],
    warnings: &[String],
) -> Vec<String> {
    let state = controller.realized();
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in &state.policies {
        *by_kind.entry(kind_family(p.key.kind)).or_default() += 1;
    }
    let kinds = by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = vec![format!(
        "{} vNICs, {} policies{}, {} groups, {} custom tiers; default_deny={}, audit={}, mode={}, store revision {}",
        vnics.len(),
        by_kind.values().sum::<usize>(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({kinds})")
        },
        state.groups.len(),
        state.tiers.len(),
        cfg.default_deny,
        cfg.audit,
        match mode {
            FilterMode::Firewall => "firewall",
            FilterMode::InsecureAllowAll => "INSECURE-ALLOW-ALL",
        },
        state.revision,
    )];
    for (id, v) in vnics {
        let id = id.map(|i| format!(" ({i})")).unwrap_or_default();
        let view = state.snapshot.endpoint(&endpoint_key(v));
        out.push(match view {
            Some(e) => format!(
                "vNIC {}{id} = endpoint {}/{} identity {}: {} ingress / {} egress rules",
                v.name,
                v.namespace,
                v.name,
                e.identity(),
                e.rule_count(Direction::Ingress),
                e.rule_count(Direction::Egress),
            ),
            None => format!("vNIC {}{id}: NOT REALIZED, forwards nothing", v.name),
        });
    }
    if mode == FilterMode::InsecureAllowAll {
        out.push("warning: --insecure-allow-all: the firewall is OFF".into());
    }
    if cfg.policy_dir.is_none() && state.policies.is_empty() {
        out.push(format!(
            "warning: no policy_dir and no policy applied: {}",
            if cfg.default_deny {
                "default_deny drops every flow"
            } else {
                "every flow is allowed (Kubernetes default; set default_deny = true to invert)"
            }
        ));
    }
    out.extend(warnings.iter().map(|w| format!("warning: {w}")));
    out
}

fn kind_family(k: PolicyKind) -> &'static str {
    match k {
        PolicyKind::KubernetesNetworkPolicy => "kubernetes",
        PolicyKind::AntreaNetworkPolicy | PolicyKind::AntreaClusterNetworkPolicy => "antrea",
        PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy => "cilium",
    }
}

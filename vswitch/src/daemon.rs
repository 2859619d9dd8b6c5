//! The daemon as a library: configuration -> policy engine -> firewall -> data plane, and
//! the operations the control plane performs on it (policy reload, vNIC add/remove, status).
//!
//! `vdfwd` is a thin shell around [`Daemon`]; the REST/gRPC API calls the same methods
//! ([`Daemon::reload_policy_dir`], [`Daemon::apply_policy_set`], [`Daemon::add_vnic`], ...),
//! so a SIGHUP and an API apply take the same path.
//!
//! # Start-up order (fail closed)
//! 1. the data plane is created with the fail-closed filter;
//! 2. the engine gets the namespaces and every configured vNIC as a `vm` endpoint, then the
//!    policy set from `policy_dir` (parsed as a whole: one bad file and nothing starts);
//! 3. the realized snapshot is installed in the firewall, which becomes the filter;
//! 4. only then are the uplink attached and the vNIC sockets served.
//!
//! # Policy changes
//! A change (reload or API) is applied to the engine as one transaction: upsert everything in
//! the new set, remove what is no longer in it. If parsing or the transaction fails, the
//! running policy is untouched. Otherwise the new snapshot is installed and every tracked
//! connection re-checked ([`crate::firewall::Firewall::recheck`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use dfw::compile::{Engine, EngineConfig, EngineError, ObjectKey};
use dfw::conntrack::{CtConfig, CtConfigError};
use dfw::crd::Parsed;
use dfw::model::{Direction, EndpointKey, PolicyKind};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, VnicConfig};
use crate::dataplane::{Dataplane, DataplaneError, PortStatus};
use crate::filter::{FailClosed, InsecureAllowAll, PacketFilter};
use crate::firewall::glue::PolicyTag;
use crate::firewall::{Firewall, RecheckReport};
use crate::flowlog::{FlowCatalog, FlowLog, FlowLogStats, FlowRecord, RuleInfo};
use crate::policy::{load_policy_dir, PolicyLoadError};
use crate::port::PortId;

/// Expiry budget per vNIC table for [`Daemon::tick`].
pub const TICK_EXPIRE_BUDGET: usize = 4096;

/// What filters the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterMode {
    /// The dfw firewall (the default).
    Firewall,
    /// No firewall at all: every frame that passes the spoof guard is forwarded. Policy is
    /// still loaded and validated. For bring-up and tests only.
    InsecureAllowAll,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("policy: {0}")]
    Policy(#[from] PolicyLoadError),
    #[error("policy engine refused the change: {0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("conntrack: {0}")]
    Conntrack(#[from] CtConfigError),
    #[error("flow log: {0}")]
    FlowLog(std::io::Error),
    #[error("no policy_dir configured")]
    NoPolicyDir,
    #[error("no vNIC named {0:?}")]
    NoSuchVnic(String),
    #[error("vNIC {0:?} already exists")]
    VnicExists(String),
}

impl DaemonError {
    /// One line per problem (every policy parse error on its own line).
    pub fn lines(&self) -> Vec<String> {
        match self {
            DaemonError::Policy(e) => e.lines(),
            other => vec![other.to_string()],
        }
    }
}

/// What a policy change did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    /// Policy files read (0 for an API apply).
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
    pub policy_dir: Option<PathBuf>,
    pub default_deny: bool,
    pub audit: bool,
    pub policies: usize,
    pub last_change: Option<ReloadReport>,
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
    /// Per-rule hit counters, for rules applying to a local vNIC.
    pub rules: Vec<RuleStatus>,
    pub flow_log: FlowLogStats,
}

struct Control {
    engine: Engine,
    /// vNIC name -> (id, config).
    vnics: BTreeMap<String, (PortId, VnicConfig)>,
    last_change: Option<ReloadReport>,
    last_error: Option<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// vdfwd: data plane + firewall + policy engine + flow log.
pub struct Daemon {
    cfg: Config,
    mode: FilterMode,
    dataplane: Dataplane,
    firewall: Arc<Firewall>,
    flowlog: FlowLog,
    control: Mutex<Control>,
}

fn warning_lines(parsed: &Parsed) -> Vec<String> {
    parsed
        .warnings
        .iter()
        .map(|w| format!("{}:{}: {}", w.source.file, w.source.line, w.message))
        .collect()
}

/// The engine with the configuration's namespaces, vNIC endpoints and policy set.
struct Prepared {
    engine: Engine,
    files: Vec<PathBuf>,
    counts: Counts,
    report: dfw::compile::ApplyReport,
    warnings: Vec<String>,
}

fn prepare(cfg: &Config) -> Result<Prepared, DaemonError> {
    let mut engine = Engine::new(EngineConfig {
        default_deny: cfg.default_deny,
        audit: cfg.audit,
        ..EngineConfig::default()
    });
    for ns in cfg.model_namespaces() {
        engine.upsert_namespace(ns);
    }
    for v in &cfg.vnics {
        engine.upsert_endpoint(v.endpoint()?)?;
    }
    let (files, parsed) = match &cfg.policy_dir {
        Some(dir) => load_policy_dir(dir)?,
        None => (Vec::new(), Parsed::default()),
    };
    let mut warnings = warning_lines(&parsed);
    let counts = Counts::of(&parsed);
    let report = engine.apply(parsed.objects)?;
    warnings.extend(report.warnings.iter().cloned());
    Ok(Prepared {
        engine,
        files,
        counts,
        report,
        warnings,
    })
}

impl Daemon {
    /// Validates the configuration and the policy directory and realizes the policy, without
    /// serving anything: `vdfwd --check`. Returns the summary [`Daemon::summary`] would print.
    pub fn check(cfg: &Config) -> Result<Vec<String>, DaemonError> {
        cfg.validate()?;
        let mut p = prepare(cfg)?;
        let snap = p.engine.snapshot();
        let vnics: Vec<(Option<PortId>, &VnicConfig)> =
            cfg.vnics.iter().map(|v| (None, v)).collect();
        Ok(summarize(
            cfg,
            FilterMode::Firewall,
            &p.engine,
            Some(&snap),
            &vnics,
            &p.warnings,
        ))
    }

    /// Builds everything and starts serving (see the module doc for the order). The state
    /// directory must exist; the flow log goes to `state_dir/flows.jsonl`.
    pub fn start(cfg: Config, mode: FilterMode) -> Result<Daemon, DaemonError> {
        cfg.validate()?;
        let t0 = Instant::now();
        let dataplane = Dataplane::new(Arc::new(FailClosed));
        let flowlog = FlowLog::start(
            Some(cfg.state_dir.join("flows.jsonl")),
            dataplane.pipeline().now(),
        )
        .map_err(DaemonError::FlowLog)?;
        let max = cfg.conntrack_max_per_vnic;
        let ct = CtConfig {
            max_entries: max,
            max_entries_per_zone: max,
            initial_capacity: max.min(1024),
            ..CtConfig::default()
        };
        let firewall = Arc::new(Firewall::new(ct, Some(flowlog.sink()))?);

        let Prepared {
            mut engine,
            files,
            counts,
            report,
            warnings,
        } = prepare(&cfg)?;
        let mut vnics = BTreeMap::new();
        for v in &cfg.vnics {
            let id = dataplane.pipeline().alloc_port_id();
            firewall.bind_vnic(id, &v.name, endpoint_key(v), v.ips.clone())?;
            vnics.insert(v.name.clone(), (id, v.clone()));
        }
        let snapshot = engine.snapshot();
        firewall.install(snapshot.clone());
        let generation = snapshot.generation();
        let daemon = Daemon {
            mode,
            dataplane,
            firewall,
            flowlog,
            control: Mutex::new(Control {
                engine,
                vnics,
                last_change: Some(ReloadReport {
                    generation,
                    files: files.len(),
                    policies: counts.policies,
                    groups: counts.groups,
                    tiers: counts.tiers,
                    created: report.created,
                    updated: report.updated,
                    unchanged: report.unchanged,
                    removed: report.removed,
                    warnings,
                    connections: RecheckReport::default(),
                    duration_us: t0.elapsed().as_micros() as u64,
                }),
                last_error: None,
            }),
            cfg,
        };
        daemon.publish_catalog(&lock(&daemon.control));
        let filter: Arc<dyn PacketFilter> = match mode {
            FilterMode::Firewall => daemon.firewall.clone(),
            FilterMode::InsecureAllowAll => Arc::new(InsecureAllowAll),
        };
        daemon.dataplane.set_filter(filter);

        // Policy is realized: now traffic may arrive.
        if let Some(up) = &daemon.cfg.uplink {
            daemon.dataplane.attach_uplink(up)?;
        }
        let ctl = lock(&daemon.control);
        for (id, v) in ctl.vnics.values() {
            if let Some(parent) = v.socket.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            daemon.dataplane.add_vnic_with_id(*id, v)?;
        }
        drop(ctl);
        Ok(daemon)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn mode(&self) -> FilterMode {
        self.mode
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    pub fn firewall(&self) -> &Arc<Firewall> {
        &self.firewall
    }

    pub fn flow_log(&self) -> &FlowLog {
        &self.flowlog
    }

    /// The data path's clock (monotonic ns).
    pub fn now(&self) -> u64 {
        self.dataplane.pipeline().now()
    }

    /// The id of a configured vNIC.
    pub fn vnic_id(&self, name: &str) -> Option<PortId> {
        lock(&self.control).vnics.get(name).map(|(id, _)| *id)
    }

    /// The last `n` flow records, oldest first.
    pub fn flows(&self, n: usize) -> Vec<FlowRecord> {
        self.flowlog.recent(n)
    }

    /// Re-reads `policy_dir` and applies it as the whole policy set (SIGHUP). On any error
    /// the running policy stays, and the error is returned (and kept for the status).
    pub fn reload_policy_dir(&self) -> Result<ReloadReport, DaemonError> {
        let dir = self
            .cfg
            .policy_dir
            .as_ref()
            .ok_or(DaemonError::NoPolicyDir)?;
        let (files, parsed) = match load_policy_dir(dir) {
            Ok(x) => x,
            Err(e) => {
                let e = DaemonError::Policy(e);
                lock(&self.control).last_error = Some(e.lines());
                return Err(e);
            }
        };
        self.apply_policy_set(parsed, files.len())
    }

    /// Replaces the whole policy set (policies, groups, tiers) with `parsed`, atomically;
    /// re-checks tracked connections. `files`: how many files it came from (for the report).
    pub fn apply_policy_set(
        &self,
        parsed: Parsed,
        files: usize,
    ) -> Result<ReloadReport, DaemonError> {
        let t0 = Instant::now();
        let mut ctl = lock(&self.control);
        let mut warnings = warning_lines(&parsed);
        let counts = Counts::of(&parsed);
        let keep: BTreeSet<ObjectKey> = parsed.objects.iter().map(object_key).collect();
        let mut removals: Vec<ObjectKey> = Vec::new();
        removals.extend(
            ctl.engine
                .policies()
                .map(|p| ObjectKey::Policy(p.key.clone())),
        );
        removals.extend(ctl.engine.groups().map(|g| ObjectKey::Group(g.key.clone())));
        removals.extend(
            ctl.engine
                .tiers()
                .map(|t| ObjectKey::Tier(t.name.to_ascii_lowercase())),
        );
        removals.retain(|k| !keep.contains(k));
        let report = match ctl.engine.transaction(parsed.objects, removals) {
            Ok(r) => r,
            Err(e) => {
                let e = DaemonError::Engine(e);
                ctl.last_error = Some(e.lines());
                return Err(e);
            }
        };
        warnings.extend(report.warnings.iter().cloned());
        let snapshot = ctl.engine.snapshot();
        let connections = self.firewall.apply(snapshot.clone());
        self.publish_catalog(&ctl);
        let out = ReloadReport {
            generation: snapshot.generation(),
            files,
            policies: counts.policies,
            groups: counts.groups,
            tiers: counts.tiers,
            created: report.created,
            updated: report.updated,
            unchanged: report.unchanged,
            removed: report.removed,
            warnings,
            connections,
            duration_us: t0.elapsed().as_micros() as u64,
        };
        ctl.last_change = Some(out.clone());
        ctl.last_error = None;
        Ok(out)
    }

    /// Adds a vNIC at run time: its endpoint joins the policy (and connections are
    /// re-checked, since a new endpoint can change what other vNICs' rules match), then its
    /// socket is served.
    pub fn add_vnic(&self, v: &VnicConfig) -> Result<PortId, DaemonError> {
        let mut ctl = lock(&self.control);
        if ctl.vnics.contains_key(&v.name) {
            return Err(DaemonError::VnicExists(v.name.clone()));
        }
        let endpoint = v.endpoint()?;
        ctl.engine.upsert_endpoint(endpoint)?;
        let id = self.dataplane.pipeline().alloc_port_id();
        let undo = |ctl: &mut Control| {
            let _ = ctl.engine.remove_endpoint(&endpoint_key(v));
        };
        if let Err(e) = self
            .firewall
            .bind_vnic(id, &v.name, endpoint_key(v), v.ips.clone())
        {
            undo(&mut ctl);
            return Err(e.into());
        }
        self.firewall.apply(ctl.engine.snapshot());
        if let Err(e) = self.dataplane.add_vnic_with_id(id, v) {
            self.firewall.unbind_vnic(id);
            undo(&mut ctl);
            self.firewall.apply(ctl.engine.snapshot());
            return Err(e.into());
        }
        ctl.vnics.insert(v.name.clone(), (id, v.clone()));
        self.publish_catalog(&ctl);
        Ok(id)
    }

    /// Removes a vNIC: disconnects it, forgets its connections and its endpoint.
    pub fn remove_vnic(&self, name: &str) -> Result<(), DaemonError> {
        let mut ctl = lock(&self.control);
        let (id, v) = ctl
            .vnics
            .remove(name)
            .ok_or_else(|| DaemonError::NoSuchVnic(name.to_owned()))?;
        let _ = self.dataplane.remove_vnic(id);
        self.firewall.unbind_vnic(id);
        ctl.engine.remove_endpoint(&endpoint_key(&v))?;
        self.firewall.apply(ctl.engine.snapshot());
        self.publish_catalog(&ctl);
        Ok(())
    }

    /// Periodic control-plane work: a bounded expiry sweep of every connection table.
    pub fn tick(&self) -> usize {
        self.firewall.expire_all(self.now(), TICK_EXPIRE_BUDGET)
    }

    /// Names for the flow log and the rule counters: vNICs, rules, policies.
    fn publish_catalog(&self, ctl: &Control) {
        let old = self.flowlog.catalog();
        let mut cat = FlowCatalog {
            snapshot: self.firewall.snapshot(),
            vnics: ctl
                .vnics
                .iter()
                .map(|(name, (id, _))| (*id, name.clone()))
                .collect(),
            rules: HashMap::new(),
            policies: HashMap::new(),
        };
        for p in ctl.engine.policies() {
            let key = p.key.to_string();
            cat.policies.insert(PolicyTag::of(&p.key), key.clone());
            for r in &p.rules {
                cat.rules.insert(
                    r.id,
                    RuleInfo {
                        policy: key.clone(),
                        name: r.name.clone(),
                        direction: r.direction,
                        action: r.action,
                        log_label: r.log_label.clone(),
                    },
                );
            }
        }
        // Events queued just before a change may name what it removed: keep the previous
        // generation's names resolvable.
        for (id, info) in &old.rules {
            cat.rules.entry(*id).or_insert_with(|| info.clone());
        }
        for (tag, key) in &old.policies {
            cat.policies.entry(*tag).or_insert_with(|| key.clone());
        }
        for (id, name) in &old.vnics {
            cat.vnics.entry(*id).or_insert_with(|| name.clone());
        }
        self.flowlog.set_catalog(cat);
    }

    /// Everything `counters.json` holds.
    pub fn status(&self) -> DaemonStatus {
        let (policies, last_change, last_error) = {
            let ctl = lock(&self.control);
            (
                ctl.engine.policies().count(),
                ctl.last_change.clone(),
                ctl.last_error.clone(),
            )
        };
        let fw: HashMap<u32, _> = self
            .firewall
            .status()
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        let mut ports = self.dataplane.status();
        for p in &mut ports {
            if let Some(id) = p.id {
                p.firewall = fw.get(&id).cloned();
            }
        }
        let catalog = self.flowlog.catalog();
        let rules = self
            .firewall
            .rule_counters()
            .into_iter()
            .map(|(id, c)| RuleStatus {
                rule_id: id.to_string(),
                info: catalog.rules.get(&id).cloned(),
                sessions: c.sessions,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        DaemonStatus {
            mode: self.mode,
            policy: PolicyStatus {
                generation: self.firewall.generation(),
                policy_dir: self.cfg.policy_dir.clone(),
                default_deny: self.cfg.default_deny,
                audit: self.cfg.audit,
                policies,
                last_change,
                last_error,
            },
            ports,
            rules,
            flow_log: self.flowlog.stats(),
        }
    }

    /// A concise start-up summary, one line each: totals, every vNIC with its realized rule
    /// counts, then warnings.
    pub fn summary(&self) -> Vec<String> {
        let ctl = lock(&self.control);
        let snap = self.firewall.snapshot();
        let vnics: Vec<(Option<PortId>, &VnicConfig)> =
            ctl.vnics.values().map(|(id, v)| (Some(*id), v)).collect();
        let warnings = ctl
            .last_change
            .as_ref()
            .map(|c| c.warnings.clone())
            .unwrap_or_default();
        summarize(
            &self.cfg,
            self.mode,
            &ctl.engine,
            snap.as_deref(),
            &vnics,
            &warnings,
        )
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
        self.dataplane.shutdown();
        self.flowlog.shutdown();
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
    engine: &Engine,
    snap: Option<&dfw::compile::PolicySnapshot>,
    vnics: &[(Option<PortId>, &VnicConfig)],
    warnings: &[String],
) -> Vec<String> {
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in engine.policies() {
        *by_kind.entry(kind_family(p.key.kind)).or_default() += 1;
    }
    let kinds = by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = vec![format!(
        "{} vNICs, {} policies{}, {} groups, {} custom tiers; default_deny={}, audit={}, mode={}",
        vnics.len(),
        by_kind.values().sum::<usize>(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({kinds})")
        },
        engine.groups().count(),
        engine.tiers().count(),
        cfg.default_deny,
        cfg.audit,
        match mode {
            FilterMode::Firewall => "firewall",
            FilterMode::InsecureAllowAll => "INSECURE-ALLOW-ALL",
        },
    )];
    for (id, v) in vnics {
        let id = id.map(|i| format!(" ({i})")).unwrap_or_default();
        let view = snap.and_then(|s| s.endpoint(&endpoint_key(v)));
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
    if cfg.policy_dir.is_none() {
        out.push(format!(
            "warning: no policy_dir: {}",
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

fn endpoint_key(v: &VnicConfig) -> EndpointKey {
    EndpointKey {
        namespace: v.namespace.clone(),
        name: v.name.clone(),
    }
}

fn object_key(o: &dfw::model::Object) -> ObjectKey {
    match o {
        dfw::model::Object::Policy(p) => ObjectKey::Policy(p.key.clone()),
        dfw::model::Object::Group(g) => ObjectKey::Group(g.key.clone()),
        dfw::model::Object::Tier(t) => ObjectKey::Tier(t.name.to_ascii_lowercase()),
    }
}

fn kind_family(k: PolicyKind) -> &'static str {
    match k {
        PolicyKind::KubernetesNetworkPolicy => "kubernetes",
        PolicyKind::AntreaNetworkPolicy | PolicyKind::AntreaClusterNetworkPolicy => "antrea",
        PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy => "cilium",
    }
}

struct Counts {
    policies: usize,
    groups: usize,
    tiers: usize,
}

impl Counts {
    fn of(p: &Parsed) -> Counts {
        Counts {
            policies: p.policies().count(),
            groups: p.groups().count(),
            tiers: p.tiers().count(),
        }
    }
}

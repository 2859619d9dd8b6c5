//! vdfwd's half of the control-plane contract: [`api::DataPlane`] over the vswitch data plane
//! and the dfw firewall.
//!
//! The api [`Controller`](api::controller::Controller) is the only owner of policy: it parses,
//! realizes (one dfw engine for the whole daemon) and persists. The enforcer takes what it
//! publishes and makes the packet path obey it:
//! * [`DataPlane::publish`]: the realized snapshot is swapped into the firewall atomically and
//!   every tracked connection is re-checked; the first publish also replaces the fail-closed
//!   filter, so nothing is forwarded before policy is realized;
//! * [`DataPlane::add_vnic`] / [`DataPlane::remove_vnic`]: vNIC ports (the vhost-user socket
//!   served or connected) bound to their endpoint's conntrack zone;
//! * flow records from the firewall's flow log are forwarded to the controller's flow ring.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use api::dataplane::{DataPlane, DataPlaneError, DataPlaneStats, RuleStats, VnicStats};
use api::flows::{
    DropReason as ApiDropReason, FlowPeer as ApiPeer, FlowRecord as ApiRecord, FlowSink,
    FlowVerdict as ApiVerdict, PolicyRef,
};
use api::realized::RealizedState;
use api::types::{EndpointSpec, SocketRole as ApiRole};
use dfw::compile::PolicySnapshot;
use dfw::model::{EndpointKey, RuleId};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::VnicConfig;
use crate::counters::DropReason;
use crate::dataplane::Dataplane;
use crate::device::SocketRole;
use crate::filter::{InsecureAllowAll, PacketFilter};
use crate::firewall::decision::{Decider, PolicyTag};
use crate::firewall::{Firewall, RecheckReport};
use crate::flowlog::{FlowCatalog, FlowDecider, FlowEvent, FlowLog, FlowVerdict, RuleInfo};
use crate::mac::MacAddr;
use crate::port::{NamedPort, PortId};

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

/// What the last publish did, for `counters.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The store revision of the published state.
    pub revision: u64,
    /// The dfw snapshot generation now enforced.
    pub generation: u64,
    pub connections: RecheckReport,
    /// From the call to the new policy being enforced (re-check included).
    pub duration_us: u64,
}

struct State {
    vnics: BTreeMap<EndpointKey, (PortId, VnicConfig)>,
    published: Option<Arc<RealizedState>>,
    last_publish: Option<PublishReport>,
    /// The names the last catalog was built from, before the ones it carried over were
    /// merged in: only these are carried into the next one, so the catalog holds two
    /// generations of names rather than every rule ever published.
    catalog_names: FlowCatalog,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The data plane as the controller drives it.
pub struct Enforcer {
    mode: FilterMode,
    dataplane: Dataplane,
    firewall: Arc<Firewall>,
    flowlog: FlowLog,
    state: Mutex<State>,
}

impl Enforcer {
    /// `dataplane` must still run its fail-closed filter: the first publish replaces it.
    pub fn new(
        mode: FilterMode,
        dataplane: Dataplane,
        firewall: Arc<Firewall>,
        flowlog: FlowLog,
    ) -> Enforcer {
        Enforcer {
            mode,
            dataplane,
            firewall,
            flowlog,
            state: Mutex::new(State {
                vnics: BTreeMap::new(),
                published: None,
                last_publish: None,
                catalog_names: FlowCatalog::default(),
            }),
        }
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

    /// The realized state being enforced, if any was published yet.
    pub fn published(&self) -> Option<Arc<RealizedState>> {
        lock(&self.state).published.clone()
    }

    pub fn last_publish(&self) -> Option<PublishReport> {
        lock(&self.state).last_publish.clone()
    }

    /// Port id and configuration of every vNIC, by vNIC name.
    pub fn vnics(&self) -> Vec<(PortId, VnicConfig)> {
        lock(&self.state).vnics.values().cloned().collect()
    }

    /// The port id of the vNIC named `name`.
    pub fn vnic_id(&self, name: &str) -> Option<PortId> {
        lock(&self.state)
            .vnics
            .values()
            .find(|(_, v)| v.name == name)
            .map(|(id, _)| *id)
    }

    /// Names for the flow log and the rule counters: vNICs, rules, policies. Names of the
    /// previous catalog are kept, so events queued just before a change still resolve.
    fn publish_catalog(&self, st: &mut State) {
        let mut cat = FlowCatalog {
            snapshot: self.firewall.snapshot(),
            vnics: st
                .vnics
                .values()
                .map(|(id, v)| (*id, v.name.clone()))
                .collect(),
            rules: HashMap::new(),
            policies: HashMap::new(),
            policy_keys: HashMap::new(),
        };
        for p in st.published.iter().flat_map(|s| s.policies.iter()) {
            let key = p.key.to_string();
            let tag = PolicyTag::of(&p.key);
            cat.policies.insert(tag, key.clone());
            cat.policy_keys.insert(tag, p.key.clone());
            for r in &p.rules {
                cat.rules.insert(
                    r.id,
                    RuleInfo {
                        policy: key.clone(),
                        policy_key: Some(p.key.clone()),
                        name: r.name.clone(),
                        direction: r.direction,
                        action: r.action,
                        log_label: r.log_label.clone(),
                    },
                );
            }
        }
        let old = std::mem::replace(
            &mut st.catalog_names,
            FlowCatalog {
                snapshot: None,
                vnics: cat.vnics.clone(),
                rules: cat.rules.clone(),
                policies: cat.policies.clone(),
                policy_keys: cat.policy_keys.clone(),
            },
        );
        for (id, info) in old.rules {
            cat.rules.entry(id).or_insert(info);
        }
        for (tag, key) in old.policies {
            cat.policies.entry(tag).or_insert(key);
        }
        for (tag, key) in old.policy_keys {
            cat.policy_keys.entry(tag).or_insert(key);
        }
        for (id, name) in old.vnics {
            cat.vnics.entry(id).or_insert(name);
        }
        self.flowlog.set_catalog(cat);
    }

    /// Disconnects every vNIC and the uplink, and flushes the flow log.
    pub fn shutdown(&self) {
        self.dataplane.shutdown();
        self.flowlog.shutdown();
    }
}

fn vnic_err(endpoint: &EndpointKey, reason: impl Into<String>) -> DataPlaneError {
    DataPlaneError::Vnic {
        endpoint: endpoint.clone(),
        reason: reason.into(),
    }
}

/// The port configuration of a registered endpoint with a vNIC.
pub fn vnic_config(spec: &EndpointSpec) -> Result<VnicConfig, DataPlaneError> {
    let key = spec.key();
    let socket = spec
        .socket
        .as_ref()
        .ok_or_else(|| vnic_err(&key, "the endpoint has no vhost-user socket"))?;
    let mac = spec
        .mac
        .ok_or_else(|| vnic_err(&key, "a vNIC needs a MAC address"))?;
    let mac = MacAddr(mac.0);
    if !mac.is_valid_unicast() {
        return Err(vnic_err(&key, format!("MAC {mac} is not unicast")));
    }
    if let Some(ip) = spec
        .ips
        .iter()
        .find(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(vnic_err(&key, format!("IP {ip} cannot be bound")));
    }
    Ok(VnicConfig {
        name: spec.name.clone(),
        socket: socket.path.clone(),
        role: match socket.role {
            ApiRole::Server => SocketRole::Listen,
            ApiRole::Client => SocketRole::Connect,
        },
        vm: spec.name.clone(),
        namespace: spec.namespace.clone(),
        labels: spec.labels.clone(),
        mac,
        ips: spec.ips.clone(),
        ports: spec
            .named_ports
            .iter()
            .map(|(name, p)| NamedPort {
                name: name.clone(),
                port: p.port,
                protocol: p.protocol.to_string().to_ascii_uppercase(),
            })
            .collect(),
    })
}

/// Whether two configurations can share one running port (only labels or named ports,
/// which live in the realized policy, differ).
fn same_port(a: &VnicConfig, b: &VnicConfig) -> bool {
    a.name == b.name && a.socket == b.socket && a.role == b.role && a.mac == b.mac && a.ips == b.ips
}

impl DataPlane for Enforcer {
    fn publish(&self, state: Arc<RealizedState>) -> Result<(), DataPlaneError> {
        let t0 = Instant::now();
        let mut st = lock(&self.state);
        let snapshot: Arc<PolicySnapshot> = state.snapshot.clone();
        let first = st.published.is_none();
        let connections = if first {
            self.firewall.install(snapshot.clone());
            RecheckReport::default()
        } else {
            self.firewall.apply(snapshot.clone())
        };
        let revision = state.revision;
        st.published = Some(state);
        self.publish_catalog(&mut st);
        if first {
            // Policy is realized: only now may anything be forwarded.
            let filter: Arc<dyn PacketFilter> = match self.mode {
                FilterMode::Firewall => self.firewall.clone(),
                FilterMode::InsecureAllowAll => Arc::new(InsecureAllowAll),
            };
            self.dataplane.set_filter(filter);
        }
        let report = PublishReport {
            revision,
            generation: snapshot.generation(),
            connections,
            duration_us: t0.elapsed().as_micros() as u64,
        };
        if !first {
            info!(
                revision,
                generation = report.generation,
                connections_cut = report.connections.cut,
                connections_kept = report.connections.kept,
                duration_us = report.duration_us,
                "policy enforced"
            );
        }
        st.last_publish = Some(report);
        Ok(())
    }

    fn add_vnic(&self, spec: &EndpointSpec) -> Result<(), DataPlaneError> {
        let cfg = vnic_config(spec)?;
        let key = spec.key();
        let mut st = lock(&self.state);
        if let Some((other, _)) = st
            .vnics
            .iter()
            .find(|(k, (_, v))| **k != key && v.name == cfg.name)
        {
            return Err(vnic_err(
                &key,
                format!(
                    "vNIC name {:?} is already used by endpoint {other}",
                    cfg.name
                ),
            ));
        }
        if let Some((id, old)) = st.vnics.get(&key).cloned() {
            if same_port(&old, &cfg) {
                st.vnics.insert(key, (id, cfg));
                self.publish_catalog(&mut st);
                return Ok(());
            }
            // Socket, MAC or addresses changed: the port is rebuilt (the VMM reconnects).
            let _ = self.dataplane.remove_vnic(id);
            self.firewall.unbind_vnic(id);
            st.vnics.remove(&key);
        }
        if let Some(parent) = cfg.socket.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let id = self.dataplane.pipeline().alloc_port_id();
        self.firewall
            .bind_vnic(id, &cfg.name, key.clone())
            .map_err(|e| vnic_err(&key, e.to_string()))?;
        if let Err(e) = self.dataplane.add_vnic_with_id(id, &cfg) {
            self.firewall.unbind_vnic(id);
            return Err(vnic_err(&key, e.to_string()));
        }
        info!(vnic = %cfg.name, endpoint = %key, socket = %cfg.socket.display(), role = ?cfg.role, mac = %cfg.mac, "vNIC served");
        st.vnics.insert(key, (id, cfg));
        self.publish_catalog(&mut st);
        Ok(())
    }

    fn remove_vnic(&self, endpoint: &EndpointKey) -> Result<(), DataPlaneError> {
        let mut st = lock(&self.state);
        let (id, cfg) = st
            .vnics
            .remove(endpoint)
            .ok_or_else(|| DataPlaneError::UnknownVnic(endpoint.clone()))?;
        if let Err(e) = self.dataplane.remove_vnic(id) {
            warn!(vnic = %cfg.name, "removing the port: {e}");
        }
        self.firewall.unbind_vnic(id);
        info!(vnic = %cfg.name, endpoint = %endpoint, "vNIC removed");
        self.publish_catalog(&mut st);
        Ok(())
    }

    fn stats(&self) -> Result<DataPlaneStats, DataPlaneError> {
        let (vnics, revision) = {
            let st = lock(&self.state);
            let vnics: HashMap<u32, EndpointKey> = st
                .vnics
                .iter()
                .map(|(k, (id, _))| (id.0, k.clone()))
                .collect();
            (vnics, st.published.as_ref().map_or(0, |s| s.revision))
        };
        let fw = self.firewall.status();
        let conntrack_entries = fw.iter().map(|s| s.connections as u64).sum();
        let vnic_stats = self
            .dataplane
            .status()
            .into_iter()
            .filter_map(|p| {
                let endpoint = vnics.get(&p.id?)?.clone();
                Some(VnicStats {
                    endpoint,
                    connected: p.connected,
                    // vswitch counts from the port's side (tx: sent by the guest); the API
                    // from the VM's side as well.
                    rx_packets: p.rx_packets,
                    rx_bytes: p.rx_bytes,
                    tx_packets: p.tx_packets,
                    tx_bytes: p.tx_bytes,
                    drops: p
                        .drops
                        .iter()
                        .map(|(r, n)| (r.to_ascii_uppercase(), *n))
                        .collect(),
                })
            })
            .collect();
        let catalog = self.flowlog.catalog();
        let rules = self
            .firewall
            .rule_counters()
            .into_iter()
            .filter_map(|(id, c)| {
                let info = catalog.rules.get(&id)?;
                Some(RuleStats {
                    policy: info.policy_key.clone()?,
                    rule_id: id,
                    rule: info.name.clone(),
                    hits: c.sessions,
                    packets: c.packets,
                    bytes: c.bytes,
                    sessions: c.sessions,
                })
            })
            .collect();
        Ok(DataPlaneStats {
            vnics: vnic_stats,
            rules,
            conntrack_entries,
            enforced_revision: revision,
        })
    }

    fn set_flow_sink(&self, sink: FlowSink) {
        self.flowlog
            .set_forward(Arc::new(move |ev, _rec, catalog, unix_ns| {
                if let Some(r) = api_record(ev, catalog, unix_ns) {
                    sink.push(r);
                }
            }));
    }
}

fn api_peer(snapshot: Option<&PolicySnapshot>, ip: IpAddr) -> ApiPeer {
    let Some(s) = snapshot else {
        return ApiPeer::default();
    };
    let view = s.endpoint_by_ip(ip);
    ApiPeer {
        endpoint: view.as_ref().map(|v| v.endpoint().key()),
        identity: Some(s.identity_of(ip).0),
        labels: view
            .map(|v| v.endpoint().labels.clone())
            .unwrap_or_default(),
    }
}

/// Rule id shown for a drop decided by isolation (no rule matched): the isolating policy is
/// named, the rule is not.
pub const ISOLATION_RULE_ID: RuleId = RuleId(0);

/// The API's view of a flow-log event (`None` for non-IP events such as a spoofed ARP,
/// which have no 5-tuple; they stay in `flows.jsonl` and the counters).
fn api_record(ev: &FlowEvent, catalog: &FlowCatalog, unix_ns: u64) -> Option<ApiRecord> {
    let tuple = ev.tuple?;
    let snapshot = catalog.snapshot.as_deref();
    let policy = match ev.decider {
        FlowDecider::Policy(Decider::Rule(id)) => catalog.rules.get(&id).and_then(|r| {
            Some(PolicyRef {
                policy: r.policy_key.clone()?,
                rule: r.name.clone(),
                rule_id: id,
                log_label: r.log_label.clone(),
            })
        }),
        FlowDecider::Policy(Decider::Isolation(tag)) => {
            catalog.policy_keys.get(&tag).map(|key| PolicyRef {
                policy: key.clone(),
                rule: "(isolated: no rule allows it)".into(),
                rule_id: ISOLATION_RULE_ID,
                log_label: None,
            })
        }
        _ => None,
    };
    let explicit_rule = matches!(ev.decider, FlowDecider::Policy(Decider::Rule(_)));
    let drop_reason = ev.reason.map(|r| match r {
        DropReason::PolicyDenied | DropReason::PolicyRejected if explicit_rule => {
            ApiDropReason::PolicyDeny
        }
        DropReason::PolicyDenied | DropReason::PolicyRejected | DropReason::PolicyNotRealized => {
            ApiDropReason::PolicyDenied
        }
        DropReason::SpoofedSourceMac
        | DropReason::SpoofedSourceIp
        | DropReason::SpoofedArp
        | DropReason::SpoofedNeighborAdvert
        | DropReason::DhcpServerFromGuest
        | DropReason::RouterAdvertFromGuest => ApiDropReason::Spoofed,
        DropReason::ConntrackInvalid => ApiDropReason::ConntrackInvalid,
        DropReason::ConntrackFull => ApiDropReason::ConntrackFull,
        _ => ApiDropReason::InvalidPacket,
    });
    Some(ApiRecord {
        time_ns: unix_ns,
        src: api_peer(snapshot, tuple.src),
        dst: api_peer(snapshot, tuple.dst),
        tuple,
        direction: ev.direction,
        verdict: match ev.verdict {
            FlowVerdict::Forwarded => ApiVerdict::Forwarded,
            FlowVerdict::Dropped => ApiVerdict::Dropped,
            FlowVerdict::Rejected => ApiVerdict::Rejected,
            FlowVerdict::Audit => ApiVerdict::Audit,
        },
        drop_reason,
        policy,
    })
}

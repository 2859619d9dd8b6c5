//! The engine: inventory + object set → selector cache → per-identity realized tables →
//! snapshots.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::realize::{
    self as realize, CPeer, CPeers, CPort, DirTable, FastMap, IdentityTables, NamedPortC, NsBits,
    PortCheck, RuleInput, SelectorId, SEC_ALLOW, SEC_BASELINE, SEC_DENY, SEC_TIER,
};
use super::snapshot::{EndpointEntry, EndpointHandle, IdentityInfo, PolicySnapshot};
use super::token::{self, kind, selector_tokens, Interners};
use super::validate::{self, policy_group_refs, ResolvedLayer, View};
use super::verdict::{PolicyLayer, PolicyRef, RuleRef};
use super::{EngineError, ObjectKey};
use crate::identity::{Identity, IdentityAllocator, IdentityKey, IpCache};
use crate::model::{
    Action, AppliedTo, Direction, Endpoint, EndpointKey, EndpointKind, EndpointSelector, Entity,
    Group, GroupKey, IpBlock, KindFilter, Labels, Namespace, NamespaceScope, Object, Peer, Peers,
    Policy, PolicyKey, PolicyKind, Service, ServiceKey, Tier, NAMESPACE_NAME_LABEL,
};

/// Engine-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// A configured default-deny baseline: traffic no rule decides is dropped even for
    /// endpoints no policy isolates (Kubernetes would allow it).
    pub default_deny: bool,
    /// Global audit mode: every would-be drop is forwarded and flagged.
    pub audit: bool,
    /// Namespaces in audit mode: a would-be drop (by a rule, isolation or the default deny)
    /// decided for an endpoint of one of these namespaces, in either direction, is
    /// forwarded and flagged. The deciding endpoint is the one whose table decided: the
    /// sender for egress, the receiver for ingress. See also [`Engine::set_namespace_audit`].
    #[serde(default)]
    pub audit_namespaces: BTreeSet<String>,
    /// Addresses of the local host (peer identity `host`, entity `host`).
    pub host_ips: Vec<IpAddr>,
    /// Addresses of other nodes (peer identity `remote-node`, entity `remote-node`).
    pub remote_node_ips: Vec<IpAddr>,
}

/// What an apply/remove did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Policies recompiled because a group or tier they use changed.
    pub recompiled_dependents: usize,
    /// Identities whose realized tables were rebuilt.
    pub recomputed_identities: usize,
    /// Fields parsed but not enforced (L7, FQDN), per rule.
    pub warnings: Vec<String>,
}

type PolicyId = u32;

struct SelEntry {
    sel: EndpointSelector,
    tokens: Vec<u64>,
    refs: u32,
    members: BTreeSet<Identity>,
    /// Policies using this selector in an appliedTo (with use counts).
    applied_users: BTreeMap<PolicyId, u32>,
}

#[derive(Default)]
struct SelectorCache {
    entries: Vec<Option<SelEntry>>,
    free: Vec<SelectorId>,
    /// Released to zero during the current change; freed (or revived) at its end.
    pending: Vec<SelectorId>,
    by_sel: HashMap<EndpointSelector, SelectorId>,
    by_token: HashMap<u64, BTreeSet<SelectorId>>,
}

impl SelectorCache {
    fn get(&self, id: SelectorId) -> Option<&SelEntry> {
        self.entries.get(id as usize)?.as_ref()
    }

    fn get_mut(&mut self, id: SelectorId) -> Option<&mut SelEntry> {
        self.entries.get_mut(id as usize)?.as_mut()
    }
}

struct EpState {
    endpoint: Endpoint,
    identity: Identity,
    handle: EndpointHandle,
    named: Box<[NamedPortC]>,
}

struct IdState {
    key: IdentityKey,
    sel_labels: Labels,
    ns_labels: Labels,
    ns: u32,
    tokens: Vec<u64>,
    matched: BTreeSet<SelectorId>,
    slots: BTreeSet<u32>,
    tables: Arc<IdentityTables>,
    info: Arc<IdentityInfo>,
}

struct CRule {
    meta: Arc<RuleRef>,
    section: usize,
    ports: Arc<[CPort]>,
    port_keys: Box<[(u32, PortCheck)]>,
    applied: Option<Vec<SelectorId>>,
    peers: CPeers,
}

struct PolicyState {
    policy: Policy,
    pref: Arc<PolicyRef>,
    layer: ResolvedLayer,
    applied: Vec<SelectorId>,
    /// [`Policy::subject_isolation`] resolved: selectors and the directions
    /// (`[ingress, egress]`) they isolate.
    subjects: Vec<(Vec<SelectorId>, [bool; 2])>,
    rules: Vec<CRule>,
    group_refs: BTreeSet<GroupKey>,
}

impl PolicyState {
    fn tier_name(&self) -> Option<&str> {
        match &self.layer {
            ResolvedLayer::Tier { tier, .. } => Some(tier),
            _ => None,
        }
    }

    fn all_applied(&self) -> impl Iterator<Item = SelectorId> + '_ {
        self.applied
            .iter()
            .copied()
            .chain(self.subjects.iter().flat_map(|(s, _)| s.iter().copied()))
            .chain(
                self.rules
                    .iter()
                    .flat_map(|r| r.applied.iter().flatten().copied()),
            )
    }
}

/// Orders applicable rules: section, tier priority, policy priority, policy key, rule index.
#[derive(Clone, Copy)]
struct OrderKey<'a> {
    section: usize,
    tier_priority: u32,
    priority: f64,
    policy: &'a PolicyKey,
    rule: usize,
}

impl OrderKey<'_> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.section
            .cmp(&o.section)
            .then(self.tier_priority.cmp(&o.tier_priority))
            .then(self.priority.total_cmp(&o.priority))
            .then_with(|| self.policy.cmp(o.policy))
            .then(self.rule.cmp(&o.rule))
    }
}

/// Identifies an object for removal.
pub(crate) fn object_key(o: &Object) -> ObjectKey {
    match o {
        Object::Policy(p) => ObjectKey::Policy(p.key.clone()),
        Object::Group(g) => ObjectKey::Group(g.key.clone()),
        Object::Tier(t) => ObjectKey::Tier(t.name.to_ascii_lowercase()),
    }
}

/// The policy engine. Pure: no I/O, no threads, no clock.
///
/// Every mutating call is atomic (validated first; on error nothing changes) and incremental:
/// only identities whose applicable rules changed get their tables rebuilt. Call
/// [`Engine::snapshot`] to get the realized state for the data path.
pub struct Engine {
    config: Arc<EngineConfig>,
    reserved: Arc<FastMap<IpAddr, Identity>>,
    audit_ns: Arc<NsBits>,
    namespaces: BTreeMap<String, Namespace>,
    endpoints: HashMap<EndpointKey, EpState>,
    slot_generation: Vec<u32>,
    slot_keys: Vec<Option<EndpointKey>>,
    free_slots: Vec<u32>,
    ipcache: IpCache,
    alloc: IdentityAllocator,
    ids: HashMap<Identity, IdState>,
    ids_by_token: HashMap<u64, BTreeSet<Identity>>,
    ns_identities: HashMap<String, BTreeSet<Identity>>,
    interners: Interners,
    sels: SelectorCache,
    policies: Vec<Option<PolicyState>>,
    free_policies: Vec<PolicyId>,
    policy_ids: BTreeMap<PolicyKey, PolicyId>,
    groups: BTreeMap<GroupKey, Group>,
    tiers: BTreeMap<String, Tier>,
    /// Services of the inventory, for groups' `serviceReference`.
    services: BTreeMap<ServiceKey, Service>,
    empty_tables: Arc<IdentityTables>,
    /// Identities whose realized tables must be rebuilt.
    dirty_ids: BTreeSet<Identity>,
    /// Identities whose selector memberships changed (their `IdentityInfo` is rebuilt).
    info_dirty: BTreeSet<Identity>,
    snap_endpoints: Arc<Vec<Option<Arc<EndpointEntry>>>>,
    snap_by_ip: Arc<FastMap<IpAddr, u32>>,
    snap_by_key: Arc<HashMap<EndpointKey, u32>>,
    generation: u64,
    snapshot: Option<Arc<PolicySnapshot>>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

/// The audit namespaces of `config` as a bit set over interned namespace ids (interning the
/// names, so endpoints created later in those namespaces get the same ids).
fn audit_set(config: &EngineConfig, interners: &mut Interners) -> NsBits {
    let mut bits = NsBits::default();
    for ns in &config.audit_namespaces {
        bits.insert(interners.namespace(ns));
    }
    bits
}

fn reserved_map(config: &EngineConfig) -> FastMap<IpAddr, Identity> {
    let mut m = FastMap::default();
    for ip in &config.remote_node_ips {
        m.insert(*ip, Identity::REMOTE_NODE);
    }
    for ip in &config.host_ips {
        m.insert(*ip, Identity::HOST);
    }
    m
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        let mut interners = Interners::default();
        let audit_ns = Arc::new(audit_set(&config, &mut interners));
        Self {
            reserved: Arc::new(reserved_map(&config)),
            audit_ns,
            config: Arc::new(config),
            namespaces: BTreeMap::new(),
            endpoints: HashMap::new(),
            slot_generation: Vec::new(),
            slot_keys: Vec::new(),
            free_slots: Vec::new(),
            ipcache: IpCache::new(),
            alloc: IdentityAllocator::new(),
            ids: HashMap::new(),
            ids_by_token: HashMap::new(),
            ns_identities: HashMap::new(),
            interners,
            sels: SelectorCache::default(),
            policies: Vec::new(),
            free_policies: Vec::new(),
            policy_ids: BTreeMap::new(),
            groups: BTreeMap::new(),
            tiers: BTreeMap::new(),
            services: BTreeMap::new(),
            empty_tables: Arc::new(IdentityTables::default()),
            dirty_ids: BTreeSet::new(),
            info_dirty: BTreeSet::new(),
            snap_endpoints: Arc::new(Vec::new()),
            snap_by_ip: Arc::new(FastMap::default()),
            snap_by_key: Arc::new(HashMap::new()),
            generation: 0,
            snapshot: None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Read access
    // -----------------------------------------------------------------------------------------

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values().map(|e| &e.endpoint)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.endpoints.get(key).map(|e| &e.endpoint)
    }

    /// The identity of an endpoint.
    pub fn endpoint_identity(&self, key: &EndpointKey) -> Option<Identity> {
        self.endpoints.get(key).map(|e| e.identity)
    }

    /// The label set behind an identity.
    pub fn identity_key(&self, identity: Identity) -> Option<&IdentityKey> {
        self.alloc.key(identity)
    }

    pub fn identity_count(&self) -> usize {
        self.ids.len()
    }

    pub fn policy(&self, key: &PolicyKey) -> Option<&Policy> {
        let id = self.policy_ids.get(key)?;
        self.policies[*id as usize].as_ref().map(|s| &s.policy)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policy_ids
            .values()
            .filter_map(|id| self.policies[*id as usize].as_ref().map(|s| &s.policy))
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.values()
    }

    /// Number of live entries in the selector cache.
    pub fn selector_count(&self) -> usize {
        self.sels.by_sel.len()
    }

    /// Identities a realized selector currently matches (for diagnostics and tests).
    pub fn selector_members(&self, sel: &EndpointSelector) -> Option<Vec<Identity>> {
        let id = self.sels.by_sel.get(sel)?;
        self.sels
            .get(*id)
            .map(|e| e.members.iter().copied().collect())
    }

    // -----------------------------------------------------------------------------------------
    // Snapshots
    // -----------------------------------------------------------------------------------------

    fn invalidate(&mut self) {
        self.generation += 1;
        self.snapshot = None;
    }

    /// The realized state. Cheap when nothing changed since the last call (same `Arc`);
    /// otherwise a new snapshot sharing every unchanged table with the previous one.
    pub fn snapshot(&mut self) -> Arc<PolicySnapshot> {
        if let Some(s) = &self.snapshot {
            return s.clone();
        }
        let s = Arc::new(PolicySnapshot {
            generation: self.generation,
            config: self.config.clone(),
            reserved: self.reserved.clone(),
            audit_ns: self.audit_ns.clone(),
            endpoints: self.snap_endpoints.clone(),
            by_ip: self.snap_by_ip.clone(),
            by_key: self.snap_by_key.clone(),
        });
        self.snapshot = Some(s.clone());
        s
    }

    pub fn set_config(&mut self, config: EngineConfig) {
        if *self.config == config {
            return;
        }
        self.reserved = Arc::new(reserved_map(&config));
        self.audit_ns = Arc::new(audit_set(&config, &mut self.interners));
        self.config = Arc::new(config);
        self.invalidate();
    }

    /// Put a namespace in audit mode or take it out (see
    /// [`EngineConfig::audit_namespaces`]). The namespace need not exist yet. Touches no
    /// realized table: the flag is read when deciding. Returns whether anything changed.
    pub fn set_namespace_audit(&mut self, namespace: &str, audit: bool) -> bool {
        if self.config.audit_namespaces.contains(namespace) == audit {
            return false;
        }
        let mut config = (*self.config).clone();
        if audit {
            config.audit_namespaces.insert(namespace.to_string());
        } else {
            config.audit_namespaces.remove(namespace);
        }
        self.set_config(config);
        true
    }

    /// Whether a namespace is in audit mode.
    pub fn namespace_audit(&self, namespace: &str) -> bool {
        self.config.audit_namespaces.contains(namespace)
    }

    // -----------------------------------------------------------------------------------------
    // Inventory
    // -----------------------------------------------------------------------------------------

    /// Add or update a namespace. Label changes re-evaluate the namespace's identities.
    pub fn upsert_namespace(&mut self, ns: Namespace) {
        if self.namespaces.get(&ns.name) == Some(&ns) {
            return;
        }
        let name = ns.name.clone();
        self.namespaces.insert(name.clone(), ns);
        self.refresh_namespace(&name);
    }

    /// Forget a namespace's labels (its endpoints stay; they then see only the implied
    /// name label). Returns whether it existed.
    pub fn remove_namespace(&mut self, name: &str) -> bool {
        if self.namespaces.remove(name).is_none() {
            return false;
        }
        self.refresh_namespace(name);
        true
    }

    fn ns_effective_labels(&self, ns: &str) -> Labels {
        match self.namespaces.get(ns) {
            Some(n) => n.effective_labels(),
            None => Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]),
        }
    }

    fn refresh_namespace(&mut self, name: &str) {
        let ids: Vec<Identity> = self
            .ns_identities
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let ns_labels = self.ns_effective_labels(name);
        for id in ids {
            self.unindex_identity(id);
            if let Some(st) = self.ids.get_mut(&id) {
                // Cilium selectors see the namespace's labels as pseudo-labels of the endpoint.
                st.sel_labels = st.key.selector_labels_with_namespace(&ns_labels);
                st.ns_labels = ns_labels.clone();
            }
            self.index_identity(id);
            self.dirty_ids.insert(id);
        }
        self.flush();
        self.invalidate();
    }

    /// Add or update a Service. Policies using a group that references it (directly or
    /// through child groups) are recompiled against its new backends. Returns how many.
    pub fn upsert_service(&mut self, service: Service) -> usize {
        let key = service.key();
        if self.services.get(&key) == Some(&service) {
            return 0;
        }
        let old = self.services.insert(key.clone(), service);
        let changed = old.map(|o| o.backends()) != Some(self.services[&key].backends());
        if changed {
            self.recompile_service_users(&key)
        } else {
            0
        }
    }

    /// Forget a Service: groups referencing it lose its backends. Returns whether it existed.
    pub fn remove_service(&mut self, key: &ServiceKey) -> bool {
        if self.services.remove(key).is_none() {
            return false;
        }
        self.recompile_service_users(key);
        true
    }

    /// Recompile every policy using (through any group) a group that references `key`.
    fn recompile_service_users(&mut self, key: &ServiceKey) -> usize {
        let direct: BTreeSet<GroupKey> = self
            .groups
            .values()
            .filter(|g| g.service.as_ref() == Some(key))
            .map(|g| g.key.clone())
            .collect();
        if direct.is_empty() {
            return 0;
        }
        let all_groups: Vec<&Group> = self.groups.values().collect();
        let affected = with_ancestors(direct, &all_groups);
        let dependents: Vec<PolicyKey> = self
            .policy_ids
            .keys()
            .filter(|k| {
                self.policy_state(k)
                    .is_some_and(|st| st.group_refs.iter().any(|g| affected.contains(g)))
            })
            .cloned()
            .collect();
        let mut warnings = Vec::new();
        for k in &dependents {
            if let Some(p) = self.uncompile_policy(k) {
                self.compile_policy(p, &mut warnings);
            }
        }
        self.reclaim_selectors();
        self.flush();
        self.invalidate();
        dependents.len()
    }

    /// Add or update an endpoint. Changing only its addresses or named ports touches no
    /// realized table; changing its labels moves it to another identity.
    pub fn upsert_endpoint(&mut self, endpoint: Endpoint) -> Result<EndpointHandle, EngineError> {
        let key = endpoint.key();
        self.ipcache.check(&key, &endpoint.ips)?;
        let idkey = IdentityKey {
            namespace: endpoint.namespace.clone(),
            kind: endpoint.kind,
            labels: endpoint.labels.clone(),
        };
        let old = self.endpoints.remove(&key);
        let handle = match &old {
            Some(o) => o.handle,
            None => self.alloc_slot(),
        };
        let acquired = self.alloc.acquire(&idkey);
        if acquired.new {
            self.create_identity(acquired.identity, idkey);
        }
        if let Some(o) = &old {
            if let Some(st) = self.ids.get_mut(&o.identity) {
                st.slots.remove(&handle.slot);
            }
            if self.alloc.release(o.identity) {
                self.destroy_identity(o.identity);
            }
        }
        if let Some(st) = self.ids.get_mut(&acquired.identity) {
            st.slots.insert(handle.slot);
        }
        let old_ips = old
            .as_ref()
            .map(|o| o.endpoint.ips.clone())
            .unwrap_or_default();
        self.ipcache.replace(&key, &old_ips, &endpoint.ips);
        {
            let by_ip = Arc::make_mut(&mut self.snap_by_ip);
            for ip in &old_ips {
                if by_ip.get(ip) == Some(&handle.slot) {
                    by_ip.remove(ip);
                }
            }
            for ip in &endpoint.ips {
                by_ip.insert(*ip, handle.slot);
            }
        }
        if old.is_none() {
            Arc::make_mut(&mut self.snap_by_key).insert(key.clone(), handle.slot);
            self.slot_keys[handle.slot as usize] = Some(key.clone());
        }
        let mut named: Vec<NamedPortC> = endpoint
            .named_ports
            .iter()
            .map(|(name, np)| NamedPortC {
                name: self.interners.port_name(name),
                port: np.port,
                proto: np.protocol.number(),
            })
            .collect();
        named.sort();
        self.endpoints.insert(
            key,
            EpState {
                endpoint,
                identity: acquired.identity,
                handle,
                named: named.into_boxed_slice(),
            },
        );
        self.flush();
        self.refresh_entry(handle.slot);
        self.invalidate();
        Ok(handle)
    }

    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), EngineError> {
        let old = self
            .endpoints
            .remove(key)
            .ok_or_else(|| EngineError::EndpointNotFound(key.clone()))?;
        self.ipcache.replace(key, &old.endpoint.ips, &[]);
        {
            let by_ip = Arc::make_mut(&mut self.snap_by_ip);
            for ip in &old.endpoint.ips {
                if by_ip.get(ip) == Some(&old.handle.slot) {
                    by_ip.remove(ip);
                }
            }
        }
        Arc::make_mut(&mut self.snap_by_key).remove(key);
        if let Some(st) = self.ids.get_mut(&old.identity) {
            st.slots.remove(&old.handle.slot);
        }
        if self.alloc.release(old.identity) {
            self.destroy_identity(old.identity);
        }
        Arc::make_mut(&mut self.snap_endpoints)[old.handle.slot as usize] = None;
        self.slot_generation[old.handle.slot as usize] += 1;
        self.slot_keys[old.handle.slot as usize] = None;
        self.free_slots.push(old.handle.slot);
        self.flush();
        self.invalidate();
        Ok(())
    }

    fn alloc_slot(&mut self) -> EndpointHandle {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slot_generation.push(0);
                self.slot_keys.push(None);
                Arc::make_mut(&mut self.snap_endpoints).push(None);
                (self.slot_generation.len() - 1) as u32
            }
        };
        EndpointHandle {
            slot,
            generation: self.slot_generation[slot as usize],
        }
    }

    fn refresh_entry(&mut self, slot: u32) {
        if let Some(Some(key)) = self.slot_keys.get(slot as usize).cloned() {
            self.refresh_entry_of(&key);
        }
    }

    fn refresh_entry_of(&mut self, key: &EndpointKey) {
        let Some(ep) = self.endpoints.get(key) else {
            return;
        };
        let Some(st) = self.ids.get(&ep.identity) else {
            return;
        };
        let entry = EndpointEntry {
            endpoint: ep.endpoint.clone(),
            handle: ep.handle,
            info: st.info.clone(),
            tables: st.tables.clone(),
            named: ep.named.clone(),
        };
        Arc::make_mut(&mut self.snap_endpoints)[ep.handle.slot as usize] = Some(Arc::new(entry));
    }

    // -----------------------------------------------------------------------------------------
    // Identities and the selector cache
    // -----------------------------------------------------------------------------------------

    fn create_identity(&mut self, id: Identity, key: IdentityKey) {
        let ns = self.interners.namespace(&key.namespace);
        let ns_labels = self.ns_effective_labels(&key.namespace);
        let st = IdState {
            sel_labels: key.selector_labels_with_namespace(&ns_labels),
            ns_labels,
            ns,
            tokens: Vec::new(),
            matched: BTreeSet::new(),
            slots: BTreeSet::new(),
            tables: self.empty_tables.clone(),
            info: Arc::new(IdentityInfo {
                identity: id,
                ns,
                tokens: Box::new([]),
                matched: Box::new([]),
            }),
            key,
        };
        self.ns_identities
            .entry(st.key.namespace.clone())
            .or_default()
            .insert(id);
        self.ids.insert(id, st);
        self.index_identity(id);
        self.dirty_ids.insert(id);
    }

    fn destroy_identity(&mut self, id: Identity) {
        self.unindex_identity(id);
        if let Some(st) = self.ids.remove(&id) {
            if let Some(set) = self.ns_identities.get_mut(&st.key.namespace) {
                set.remove(&id);
            }
        }
        self.dirty_ids.remove(&id);
    }

    /// Compute an identity's tokens and selector memberships (from its labels and its
    /// namespace's current labels).
    fn index_identity(&mut self, id: Identity) {
        let Some(st) = self.ids.get(&id) else { return };
        let mut tokens = Vec::new();
        for (k, v) in &st.sel_labels {
            // Namespace pseudo-labels are covered by the NS_LABEL tokens below.
            if !token::is_namespace_pseudo_label(k) {
                tokens.push(token::token(kind::LABEL, self.interners.pair(k, v)));
            }
        }
        tokens.push(token::token(kind::NAMESPACE, st.ns));
        for (k, v) in &st.ns_labels {
            tokens.push(token::token(kind::NS_LABEL, self.interners.pair(k, v)));
        }
        tokens.push(token::ANY_ENDPOINT);
        let mut candidates = BTreeSet::new();
        for t in &tokens {
            self.ids_by_token.entry(*t).or_default().insert(id);
            if let Some(sels) = self.sels.by_token.get(t) {
                candidates.extend(sels.iter().copied());
            }
        }
        let matched: BTreeSet<SelectorId> = candidates
            .into_iter()
            .filter(|s| {
                self.sels
                    .get(*s)
                    .is_some_and(|e| selector_matches(&e.sel, st))
            })
            .collect();
        for s in &matched {
            if let Some(e) = self.sels.get_mut(*s) {
                e.members.insert(id);
            }
        }
        let mut peer_tokens = tokens.clone();
        peer_tokens.push(token::CLUSTER);
        peer_tokens.push(token::ANY_PEER);
        let Some(st) = self.ids.get_mut(&id) else {
            return;
        };
        st.info = Arc::new(IdentityInfo {
            identity: id,
            ns: st.ns,
            tokens: peer_tokens.into_boxed_slice(),
            matched: matched.iter().copied().collect(),
        });
        st.tokens = tokens;
        st.matched = matched;
    }

    fn unindex_identity(&mut self, id: Identity) {
        let Some(st) = self.ids.get_mut(&id) else {
            return;
        };
        let matched = std::mem::take(&mut st.matched);
        let tokens = std::mem::take(&mut st.tokens);
        for s in matched {
            if let Some(e) = self.sels.get_mut(s) {
                e.members.remove(&id);
            }
        }
        for t in tokens {
            if let Some(set) = self.ids_by_token.get_mut(&t) {
                set.remove(&id);
                if set.is_empty() {
                    self.ids_by_token.remove(&t);
                }
            }
        }
    }

    fn acquire_selector(&mut self, sel: &EndpointSelector) -> SelectorId {
        if let Some(id) = self.sels.by_sel.get(sel).copied() {
            if let Some(e) = self.sels.get_mut(id) {
                e.refs += 1;
            }
            return id;
        }
        let tokens = selector_tokens(sel, &mut self.interners);
        let mut candidates = BTreeSet::new();
        for t in &tokens {
            if let Some(ids) = self.ids_by_token.get(t) {
                candidates.extend(ids.iter().copied());
            }
        }
        let members: BTreeSet<Identity> = candidates
            .into_iter()
            .filter(|i| self.ids.get(i).is_some_and(|st| selector_matches(sel, st)))
            .collect();
        let id = match self.sels.free.pop() {
            Some(id) => id,
            None => {
                self.sels.entries.push(None);
                (self.sels.entries.len() - 1) as SelectorId
            }
        };
        for m in &members {
            if let Some(st) = self.ids.get_mut(m) {
                st.matched.insert(id);
            }
        }
        self.info_dirty.extend(members.iter().copied());
        for t in &tokens {
            self.sels.by_token.entry(*t).or_default().insert(id);
        }
        self.sels.by_sel.insert(sel.clone(), id);
        self.sels.entries[id as usize] = Some(SelEntry {
            sel: sel.clone(),
            tokens,
            refs: 1,
            members,
            applied_users: BTreeMap::new(),
        });
        id
    }

    fn release_selector(&mut self, id: SelectorId) {
        if let Some(e) = self.sels.get_mut(id) {
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 {
                self.sels.pending.push(id);
            }
        }
    }

    /// Free selectors whose last user went away during this change. Deferred to the end of
    /// the change so no table still being rebuilt can name a reused id.
    fn reclaim_selectors(&mut self) {
        for id in std::mem::take(&mut self.sels.pending) {
            let Some(e) = self.sels.get(id) else { continue };
            if e.refs > 0 {
                continue;
            }
            let Some(e) = self.sels.entries[id as usize].take() else {
                continue;
            };
            for m in &e.members {
                if let Some(st) = self.ids.get_mut(m) {
                    st.matched.remove(&id);
                }
            }
            self.info_dirty.extend(e.members.iter().copied());
            for t in &e.tokens {
                if let Some(set) = self.sels.by_token.get_mut(t) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.sels.by_token.remove(t);
                    }
                }
            }
            self.sels.by_sel.remove(&e.sel);
            self.sels.free.push(id);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Objects
    // -----------------------------------------------------------------------------------------

    /// Upsert objects atomically.
    pub fn apply(&mut self, objects: Vec<Object>) -> Result<ApplyReport, EngineError> {
        self.transaction(objects, Vec::new())
    }

    /// Remove objects atomically. A group or tier still in use cannot be removed.
    pub fn remove(&mut self, keys: Vec<ObjectKey>) -> Result<ApplyReport, EngineError> {
        self.transaction(Vec::new(), keys)
    }

    fn has_object(&self, key: &ObjectKey) -> bool {
        match key {
            ObjectKey::Policy(k) => self.policy_ids.contains_key(k),
            ObjectKey::Group(k) => self.groups.contains_key(k),
            ObjectKey::Tier(k) => self.tiers.contains_key(&k.to_ascii_lowercase()),
        }
    }

    fn policy_state(&self, key: &PolicyKey) -> Option<&PolicyState> {
        self.policies[*self.policy_ids.get(key)? as usize].as_ref()
    }

    /// Upserts and removals in one atomic change: everything is validated against the
    /// resulting object set first, and on error nothing changes.
    pub fn transaction(
        &mut self,
        upserts: Vec<Object>,
        removals: Vec<ObjectKey>,
    ) -> Result<ApplyReport, EngineError> {
        // --- validation (read-only) ---
        let mut seen = BTreeSet::new();
        for k in upserts
            .iter()
            .map(object_key)
            .chain(removals.iter().map(|k| match k {
                ObjectKey::Tier(t) => ObjectKey::Tier(t.to_ascii_lowercase()),
                other => other.clone(),
            }))
        {
            if !seen.insert(k.clone()) {
                return Err(EngineError::Duplicate(k));
            }
        }
        for k in &removals {
            if !self.has_object(k) {
                return Err(EngineError::NotFound(k.clone()));
            }
        }
        let mut changed_groups: BTreeSet<GroupKey> = BTreeSet::new();
        let mut changed_tiers: BTreeSet<String> = BTreeSet::new();
        let mut view = View {
            groups: self.groups.iter().collect(),
            tiers: self.tiers.iter().map(|(k, v)| (k.clone(), v)).collect(),
        };
        for k in &removals {
            match k {
                ObjectKey::Group(g) => {
                    view.groups.remove(g);
                    changed_groups.insert(g.clone());
                }
                ObjectKey::Tier(t) => {
                    let t = t.to_ascii_lowercase();
                    view.tiers.remove(&t);
                    changed_tiers.insert(t);
                }
                ObjectKey::Policy(_) => {}
            }
        }
        for o in &upserts {
            match o {
                Object::Group(g) => {
                    if self.groups.get(&g.key) != Some(g) {
                        changed_groups.insert(g.key.clone());
                    }
                    view.groups.insert(&g.key, g);
                }
                Object::Tier(t) => {
                    let name = t.name.to_ascii_lowercase();
                    if self.tiers.get(&name).map(|x| x.priority) != Some(t.priority) {
                        changed_tiers.insert(name.clone());
                    }
                    view.tiers.insert(name, t);
                }
                Object::Policy(_) => {}
            }
        }
        validate::validate_tiers(&view)?;
        validate::validate_groups(&view)?;
        // Groups whose flattened content changed: the changed ones and their ancestors.
        let all_groups: Vec<&Group> = view
            .groups
            .values()
            .copied()
            .chain(self.groups.values())
            .collect();
        let affected_groups = with_ancestors(changed_groups.clone(), &all_groups);
        let upserted_policies: BTreeMap<&PolicyKey, &Policy> = upserts
            .iter()
            .filter_map(|o| match o {
                Object::Policy(p) => Some((&p.key, p)),
                _ => None,
            })
            .collect();
        let removed_policies: BTreeSet<&PolicyKey> = removals
            .iter()
            .filter_map(|k| match k {
                ObjectKey::Policy(p) => Some(p),
                _ => None,
            })
            .collect();
        // Existing policies that depend on a changed group or tier.
        let dependents: Vec<PolicyKey> = self
            .policy_ids
            .keys()
            .filter(|k| !removed_policies.contains(k) && !upserted_policies.contains_key(k))
            .filter(|k| {
                self.policy_state(k).is_some_and(|st| {
                    st.group_refs.iter().any(|g| affected_groups.contains(g))
                        || st.tier_name().is_some_and(|t| changed_tiers.contains(t))
                })
            })
            .cloned()
            .collect();
        for p in upserted_policies.values() {
            validate::validate_policy(p, &view)?;
        }
        for k in &dependents {
            if let Some(st) = self.policy_state(k) {
                validate::validate_policy(&st.policy, &view).map_err(|e| match e {
                    EngineError::UnknownTier { tier, policy } => {
                        EngineError::TierInUse { tier, policy }
                    }
                    other => other,
                })?;
            }
        }
        drop(view);

        // --- mutation (cannot fail from here on) ---
        let mut report = ApplyReport::default();
        for k in &removals {
            match k {
                ObjectKey::Group(g) => {
                    self.groups.remove(g);
                    report.removed += 1;
                }
                ObjectKey::Tier(t) => {
                    self.tiers.remove(&t.to_ascii_lowercase());
                    report.removed += 1;
                }
                ObjectKey::Policy(_) => {}
            }
        }
        let mut policy_upserts = Vec::new();
        for o in upserts {
            match o {
                Object::Group(g) => {
                    if let Some(svc) = &g.service {
                        if !self.services.contains_key(svc) {
                            report.warnings.push(format!(
                                "group {}: Service {svc} is not in the inventory; the group has no members until it is",
                                g.key
                            ));
                        }
                    }
                    match self.groups.get(&g.key) {
                        None => report.created += 1,
                        Some(x) if *x == g => report.unchanged += 1,
                        Some(_) => report.updated += 1,
                    }
                    self.groups.insert(g.key.clone(), g);
                }
                Object::Tier(t) => {
                    let name = t.name.to_ascii_lowercase();
                    match self.tiers.get(&name) {
                        None => report.created += 1,
                        Some(x) if *x == t => report.unchanged += 1,
                        Some(_) => report.updated += 1,
                    }
                    self.tiers.insert(name, t);
                }
                Object::Policy(p) => policy_upserts.push(p),
            }
        }
        for k in removals {
            if let ObjectKey::Policy(k) = k {
                self.uncompile_policy(&k);
                report.removed += 1;
            }
        }
        for k in dependents {
            if let Some(p) = self.uncompile_policy(&k) {
                self.compile_policy(p, &mut report.warnings);
                report.recompiled_dependents += 1;
            }
        }
        for p in policy_upserts {
            match self.policy(&p.key) {
                Some(existing) if *existing == p => {
                    report.unchanged += 1;
                    continue;
                }
                Some(_) => report.updated += 1,
                None => report.created += 1,
            }
            self.uncompile_policy(&p.key);
            self.compile_policy(p, &mut report.warnings);
        }
        // Selectors no compiled rule uses any more can go before tables are rebuilt.
        self.reclaim_selectors();
        report.recomputed_identities = self.flush();
        self.invalidate();
        Ok(report)
    }

    /// Remove a policy's realization; its applied identities become dirty.
    fn uncompile_policy(&mut self, key: &PolicyKey) -> Option<Policy> {
        let pid = self.policy_ids.remove(key)?;
        let st = self.policies[pid as usize].take()?;
        self.free_policies.push(pid);
        for s in st.all_applied() {
            if let Some(e) = self.sels.get_mut(s) {
                self.dirty_ids.extend(e.members.iter().copied());
                if let Some(n) = e.applied_users.get_mut(&pid) {
                    *n -= 1;
                    if *n == 0 {
                        e.applied_users.remove(&pid);
                    }
                }
            }
            self.release_selector(s);
        }
        for r in &st.rules {
            if let CPeers::List(peers) = &r.peers {
                for p in peers {
                    if let CPeer::Selector { id, .. } = p {
                        self.release_selector(*id);
                    }
                }
            }
        }
        Some(st.policy)
    }

    fn flatten_group(
        &self,
        key: &GroupKey,
        sels: &mut Vec<EndpointSelector>,
        blocks: &mut Vec<IpBlock>,
        seen: &mut BTreeSet<GroupKey>,
    ) {
        if !seen.insert(key.clone()) {
            return;
        }
        let Some(g) = self.groups.get(key) else {
            return;
        };
        if let Some(s) = &g.selector {
            sels.push(s.clone());
        }
        if let Some(backends) = g
            .service
            .as_ref()
            .and_then(|k| self.services.get(k))
            .and_then(Service::backends)
        {
            sels.push(backends);
        }
        blocks.extend(g.ip_blocks.iter().cloned());
        for c in &g.child_groups {
            self.flatten_group(c, sels, blocks, seen);
        }
    }

    /// AppliedTo entries → selectors (group IP blocks are ignored in appliedTo, as Antrea does).
    fn applied_selectors(&mut self, list: &[AppliedTo], pid: PolicyId) -> Vec<SelectorId> {
        let mut sels = Vec::new();
        for a in list {
            match a {
                AppliedTo::Endpoints(s) => sels.push(s.clone()),
                AppliedTo::Group(g) => {
                    self.flatten_group(g, &mut sels, &mut Vec::new(), &mut BTreeSet::new())
                }
            }
        }
        sels.iter()
            .map(|s| {
                let id = self.acquire_selector(s);
                if let Some(e) = self.sels.get_mut(id) {
                    *e.applied_users.entry(pid).or_default() += 1;
                    self.dirty_ids.extend(e.members.iter().copied());
                }
                id
            })
            .collect()
    }

    fn peer_selector(&mut self, sel: &EndpointSelector, out: &mut Vec<CPeer>) {
        let same_ns = sel.namespaces == NamespaceScope::SameAsAppliedTo;
        let cache_sel = if same_ns {
            EndpointSelector {
                namespaces: NamespaceScope::Any,
                ..sel.clone()
            }
        } else {
            sel.clone()
        };
        let everything = cache_sel.namespaces == NamespaceScope::Any
            && cache_sel.labels.is_everything()
            && cache_sel.kinds == KindFilter::Any;
        let id = self.acquire_selector(&cache_sel);
        let tokens = self
            .sels
            .get(id)
            .map(|e| e.tokens.clone().into_boxed_slice())
            .unwrap_or_default();
        out.push(CPeer::Selector {
            id,
            tokens,
            same_ns,
            everything,
        });
    }

    fn compile_policy(&mut self, policy: Policy, warnings: &mut Vec<String>) {
        let tiers = &self.tiers;
        // Validated before: the layer resolves.
        let layer = validate::resolve_layer(&policy, |n| {
            validate::static_tier(n).or_else(|| tiers.get(n).map(|t| t.priority))
        })
        .unwrap_or(ResolvedLayer::Kubernetes);
        let pid = match self.free_policies.pop() {
            Some(id) => id,
            None => {
                self.policies.push(None);
                (self.policies.len() - 1) as PolicyId
            }
        };
        let pref = Arc::new(PolicyRef {
            key: policy.key.clone(),
            layer: match &layer {
                ResolvedLayer::Tier {
                    tier,
                    tier_priority,
                    priority,
                } => PolicyLayer::AntreaTier {
                    tier: tier.clone(),
                    tier_priority: *tier_priority,
                    priority: *priority,
                },
                ResolvedLayer::Kubernetes => PolicyLayer::Kubernetes,
                ResolvedLayer::Baseline { priority } => PolicyLayer::AntreaBaseline {
                    priority: *priority,
                },
            },
            audit: policy.audit,
        });
        let world_only_cidrs = matches!(
            policy.key.kind,
            PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy
        );
        let applied = self.applied_selectors(&policy.applied_to, pid);
        let subjects = policy
            .subject_isolation
            .iter()
            .map(|s| {
                let dirs = [
                    s.directions.contains(&Direction::Ingress),
                    s.directions.contains(&Direction::Egress),
                ];
                (self.applied_selectors(&s.applied_to, pid), dirs)
            })
            .collect();
        let mut rules = Vec::with_capacity(policy.rules.len());
        for (index, r) in policy.rules.iter().enumerate() {
            for u in &r.unenforced {
                warnings.push(format!(
                    "{} rule {:?}: {} is not enforced (L3/L4 part is)",
                    policy.key, r.name, u.field
                ));
            }
            let section = match (&layer, r.action) {
                (ResolvedLayer::Tier { .. }, _) => SEC_TIER,
                (ResolvedLayer::Baseline { .. }, _) => SEC_BASELINE,
                (ResolvedLayer::Kubernetes, Action::Allow | Action::Pass) => SEC_ALLOW,
                (ResolvedLayer::Kubernetes, Action::Drop | Action::Reject) => SEC_DENY,
            };
            let ports: Vec<CPort> = r
                .ports
                .iter()
                .map(|p| CPort::compile(p, &mut self.interners))
                .collect();
            let port_keys = realize::port_keys(&ports);
            let rule_applied = r
                .applied_to
                .as_ref()
                .map(|a| self.applied_selectors(a, pid));
            let peers = match &r.peers {
                Peers::Any => CPeers::Any,
                Peers::List(list) => {
                    let mut out = Vec::new();
                    for p in list {
                        match p {
                            Peer::Endpoints(sel) => self.peer_selector(sel, &mut out),
                            Peer::IpBlock(b) => out.push(CPeer::Block {
                                block: b.clone(),
                                world_only: world_only_cidrs,
                            }),
                            Peer::Group(g) => {
                                let mut sels = Vec::new();
                                let mut blocks = Vec::new();
                                self.flatten_group(g, &mut sels, &mut blocks, &mut BTreeSet::new());
                                for s in &sels {
                                    self.peer_selector(s, &mut out);
                                }
                                out.extend(blocks.into_iter().map(|block| CPeer::Block {
                                    block,
                                    world_only: false,
                                }));
                            }
                            Peer::Entity(e) => out.push(CPeer::Token(match e {
                                Entity::All => token::ANY_PEER,
                                Entity::World => token::WORLD,
                                Entity::Cluster => token::CLUSTER,
                                Entity::Host => token::HOST,
                                Entity::RemoteNode => token::REMOTE_NODE,
                            })),
                        }
                    }
                    CPeers::List(out)
                }
            };
            rules.push(CRule {
                meta: Arc::new(RuleRef {
                    policy: (*pref).clone(),
                    rule_id: r.id,
                    rule_name: r.name.clone(),
                    rule_index: index,
                    direction: r.direction,
                    action: r.action,
                    log_label: r.log_label.clone(),
                    enable_logging: r.enable_logging,
                }),
                section,
                ports: ports.into(),
                port_keys: port_keys.into_boxed_slice(),
                applied: rule_applied,
                peers,
            });
        }
        let group_refs = policy_group_refs(&policy);
        self.policy_ids.insert(policy.key.clone(), pid);
        self.policies[pid as usize] = Some(PolicyState {
            policy,
            pref,
            layer,
            applied,
            subjects,
            rules,
            group_refs,
        });
    }

    // -----------------------------------------------------------------------------------------
    // Realization
    // -----------------------------------------------------------------------------------------

    /// Rebuild the tables of every dirty identity and the peer info of every identity whose
    /// selector memberships changed; refresh their endpoints' entries. Returns how many
    /// tables were rebuilt.
    fn flush(&mut self) -> usize {
        let dirty = std::mem::take(&mut self.dirty_ids);
        let info_dirty = std::mem::take(&mut self.info_dirty);
        let mut n = 0;
        for id in &dirty {
            if !self.ids.contains_key(id) {
                continue;
            }
            let tables = self.build_tables(*id);
            if let Some(st) = self.ids.get_mut(id) {
                st.tables = tables;
                n += 1;
            }
        }
        for id in &info_dirty {
            if let Some(st) = self.ids.get_mut(id) {
                let matched: Box<[u32]> = st.matched.iter().copied().collect();
                if *st.info.matched != *matched {
                    st.info = Arc::new(IdentityInfo {
                        identity: *id,
                        ns: st.ns,
                        tokens: st.info.tokens.clone(),
                        matched,
                    });
                }
            }
        }
        let touched: BTreeSet<Identity> = dirty.into_iter().chain(info_dirty).collect();
        for id in touched {
            let slots: Vec<u32> = match self.ids.get(&id) {
                Some(st) => st.slots.iter().copied().collect(),
                None => continue,
            };
            for slot in slots {
                self.refresh_entry(slot);
            }
        }
        n
    }

    fn build_tables(&self, id: Identity) -> Arc<IdentityTables> {
        let Some(st) = self.ids.get(&id) else {
            return self.empty_tables.clone();
        };
        let mut pids: BTreeSet<PolicyId> = BTreeSet::new();
        for s in &st.matched {
            if let Some(e) = self.sels.get(*s) {
                pids.extend(e.applied_users.keys().copied());
            }
        }
        if pids.is_empty() {
            return self.empty_tables.clone();
        }
        let mut lists: [Vec<(OrderKey<'_>, &CRule)>; 2] = [Vec::new(), Vec::new()];
        let mut isolation: [Vec<&Arc<PolicyRef>>; 2] = [Vec::new(), Vec::new()];
        let dir_idx = |d: Direction| match d {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        for pid in pids {
            let Some(p) = self.policies[pid as usize].as_ref() else {
                continue;
            };
            let policy_applies = p.applied.iter().any(|s| st.matched.contains(s));
            if p.layer == ResolvedLayer::Kubernetes {
                let mut iso = [false; 2];
                if policy_applies {
                    for d in &p.policy.isolates {
                        iso[dir_idx(*d)] = true;
                    }
                }
                for (sels, dirs) in &p.subjects {
                    if sels.iter().any(|s| st.matched.contains(s)) {
                        iso[0] |= dirs[0];
                        iso[1] |= dirs[1];
                    }
                }
                for (i, on) in iso.into_iter().enumerate() {
                    if on {
                        isolation[i].push(&p.pref);
                    }
                }
            }
            let (tier_priority, priority) = match &p.layer {
                ResolvedLayer::Tier {
                    tier_priority,
                    priority,
                    ..
                } => (*tier_priority, *priority),
                ResolvedLayer::Kubernetes => (0, 0.0),
                ResolvedLayer::Baseline { priority } => (0, *priority),
            };
            for (index, r) in p.rules.iter().enumerate() {
                let applies = match &r.applied {
                    Some(a) => a.iter().any(|s| st.matched.contains(s)),
                    None => policy_applies,
                };
                if applies {
                    lists[dir_idx(r.meta.direction)].push((
                        OrderKey {
                            section: r.section,
                            tier_priority,
                            priority,
                            policy: &p.policy.key,
                            rule: index,
                        },
                        r,
                    ));
                }
            }
        }
        let ns_token = token::token(kind::NAMESPACE, st.ns);
        let mut dirs = [DirTable::default(), DirTable::default()];
        for (i, list) in lists.iter_mut().enumerate() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            isolation[i].sort_by(|a, b| a.key.cmp(&b.key));
            let inputs: Vec<RuleInput<'_>> = list
                .iter()
                .map(|(k, r)| RuleInput {
                    section: k.section,
                    meta: &r.meta,
                    ports: &r.ports,
                    port_keys: &r.port_keys,
                    peers: &r.peers,
                })
                .collect();
            let isolated_by = isolation[i].first().map(|p| (*p).clone());
            let isolation_audit = !isolation[i].is_empty() && isolation[i].iter().all(|p| p.audit);
            dirs[i] = DirTable::build(&inputs, st.ns, ns_token, isolated_by, isolation_audit);
        }
        let [ingress, egress] = dirs;
        if ingress.is_empty() && egress.is_empty() {
            return self.empty_tables.clone();
        }
        Arc::new(IdentityTables { ingress, egress })
    }
}

/// `groups` plus every group of `all` that has one of them as a (transitive) child (`all`
/// may list a group twice, e.g. as it is before and after a change).
fn with_ancestors(mut groups: BTreeSet<GroupKey>, all: &[&Group]) -> BTreeSet<GroupKey> {
    loop {
        let before = groups.len();
        for g in all {
            if g.child_groups.iter().any(|c| groups.contains(c)) {
                groups.insert(g.key.clone());
            }
        }
        if groups.len() == before {
            return groups;
        }
    }
}

/// Exact selector semantics against an identity (namespace scope, kind, labels).
fn selector_matches(sel: &EndpointSelector, st: &IdState) -> bool {
    if sel.kinds == KindFilter::VmOnly && st.key.kind != EndpointKind::Vm {
        return false;
    }
    let ns_ok = match &sel.namespaces {
        NamespaceScope::Named(n) => *n == st.key.namespace,
        NamespaceScope::Selector(ls) => ls.matches(&st.ns_labels),
        NamespaceScope::Any | NamespaceScope::SameAsAppliedTo => true,
    };
    ns_ok && sel.labels.matches(&st.sel_labels)
}

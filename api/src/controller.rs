//! The controller: the single writer of control-plane state.
//!
//! Every mutation follows the same pipeline, under one lock so change sets are serialized:
//! parse everything → validate → realize a candidate with the engine (the dry-run) → persist
//! as one store change set → swap the realized state → publish it to the data plane. A
//! failure before "persist" changes nothing anywhere; a data-plane failure after it is
//! reported as a warning (the desired state is durable and the data plane will converge
//! when it is re-attached).
//!
//! Reads (list/get) come from the store, joined with the in-memory realization status, so
//! they show exactly what is persisted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use dfw::compile::EngineConfig;
use dfw::model::{EndpointKey, Namespace, Object};
use serde::{Deserialize, Serialize};

use crate::dataplane::{DataPlane, DataPlaneError, DataPlaneStats};
use crate::engine::Live;
use crate::flows::{FlowRing, DEFAULT_RING_CAPACITY};
use crate::realized::{
    self, ChangeAction, Desired, DocumentError, EngineChange, ObjectChange, ParsedDocument,
    RealizedState,
};
use crate::store::{Change, ChangeSet, Store, StoreError, Versioned};
use crate::trace::{TraceRequest, TraceResult};
use crate::types::{
    AuditSetting, AuditTarget, ContentType, Document, EndpointSpec, Resource, ResourceKey,
    ResourceKind, Revision,
};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{} invalid document(s), nothing was applied:\n{}", .0.len(), join_errors(.0))]
    Invalid(Vec<DocumentError>),
    #[error("rejected by the policy engine, nothing was applied: {0}")]
    Rejected(String),
    #[error("{0} not found")]
    NotFound(ResourceKey),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("data plane: {0}")]
    DataPlane(#[from] DataPlaneError),
    #[error("internal error: controller state lock poisoned by an earlier panic")]
    Poisoned,
}

fn join_errors(errors: &[DocumentError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file submitted to `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InputFile {
    /// The name shown in errors and stored with each document.
    pub file: String,
    pub text: String,
    /// Guessed from `file` (`.json` → JSON, else YAML) when absent.
    #[serde(default)]
    pub content_type: Option<ContentType>,
}

/// The result of an apply or delete (or of their dry-run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeReport {
    /// The revision that holds the change (the current one for a dry-run or a no-op).
    pub revision: Revision,
    pub dry_run: bool,
    pub changes: Vec<ObjectChange>,
    /// Parser warnings (e.g. L7 rules kept but not enforced) and data-plane warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Result of a mutation that is not a document apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MutationReport {
    pub revision: Revision,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Whether a stored document is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStatus {
    Realized,
    /// Stored, but no longer parses (e.g. after an upgrade made the parser stricter); not
    /// enforced until re-applied. The errors say why.
    Failed,
}

/// A compact view of one rule, for listings and `get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleSummary {
    /// Stable content-derived id (hex).
    pub id: String,
    pub name: String,
    pub direction: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_label: Option<String>,
}

/// A stored policy, group or tier with its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectInfo {
    /// Display form of the key (`policy ANP:prod/allow-web`).
    pub object: String,
    #[schema(value_type = Object)]
    pub key: ResourceKey,
    pub document: Document,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub status: ObjectStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<DocumentError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSummary>,
    /// Audit mode in effect (on the policy itself or its namespace).
    #[serde(default)]
    pub audit: bool,
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub flow_ring_capacity: usize,
    /// Engine-wide settings (default deny, global audit, host addresses) every realization
    /// uses, dry-runs included.
    pub engine: EngineConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            flow_ring_capacity: DEFAULT_RING_CAPACITY,
            engine: EngineConfig::default(),
        }
    }
}

struct Inner {
    revision: Revision,
    desired: Desired,
    /// The live engine; always holds `desired` (changes are rolled back on failure).
    engine: Live,
    /// Stored documents that no longer parse, with why.
    failed: BTreeMap<ResourceKey, Vec<DocumentError>>,
}

/// Counters the metrics endpoint exposes.
#[derive(Debug, Default)]
pub struct ControllerCounters {
    pub applies: std::sync::atomic::AtomicU64,
    pub applies_failed: std::sync::atomic::AtomicU64,
}

pub struct Controller {
    store: Arc<dyn Store>,
    engine_config: EngineConfig,
    inner: Mutex<Inner>,
    realized: RwLock<Arc<RealizedState>>,
    data_plane: RwLock<Option<Arc<dyn DataPlane>>>,
    flows: Arc<FlowRing>,
    counters: ControllerCounters,
}

impl Controller {
    /// Loads every resource from the store and realizes it. The data plane, if any, is
    /// attached afterwards with [`Controller::attach_data_plane`], so it only ever sees a
    /// fully realized state.
    pub fn open(store: Arc<dyn Store>, config: ControllerConfig) -> Result<Self, ControllerError> {
        let snapshot = store.snapshot()?;
        let mut desired = Desired::default();
        let mut failed = BTreeMap::new();
        // Tiers first, then groups, then policies: later documents may refer to earlier ones.
        let mut resources = snapshot.resources;
        resources.sort_by_key(|v| match v.value {
            Resource::Tier { .. } => 0,
            Resource::Group { .. } => 1,
            _ => 2,
        });
        for Versioned { value, .. } in resources {
            let key = value.key();
            match value {
                Resource::Policy { document, .. }
                | Resource::Group { document, .. }
                | Resource::Tier { document, .. } => {
                    match realized::parse_document(&document, &desired) {
                        Ok(parsed) if parsed.key() == key => {
                            desired.documents.insert(key, Arc::new(parsed));
                        }
                        Ok(parsed) => {
                            let err = DocumentError {
                                file: document.file.clone(),
                                line: document.line,
                                column: None,
                                field: None,
                                message: format!(
                                    "stored as {key} but now parses as {}",
                                    parsed.key()
                                ),
                            };
                            tracing::error!("{err}; not enforced until re-applied");
                            failed.insert(key, vec![err]);
                        }
                        Err(errors) => {
                            for e in &errors {
                                tracing::error!(
                                "stored {key} no longer parses: {e}; not enforced until re-applied"
                            );
                            }
                            failed.insert(key, errors);
                        }
                    }
                }
                Resource::Endpoint(e) => {
                    desired.endpoints.insert(e.key(), e);
                }
                Resource::Namespace(n) => {
                    desired.namespaces.insert(n.name.clone(), n);
                }
                Resource::Audit(a) => {
                    desired.audit.insert(a.target.clone(), a);
                }
            }
        }
        let mut engine = Live::build_with(&desired, config.engine.clone()).map_err(|e| {
            ControllerError::Rejected(format!(
                "the stored state at revision {} cannot be realized: {e}",
                snapshot.revision
            ))
        })?;
        let realized = Arc::new(RealizedState::new(
            &desired,
            snapshot.revision,
            engine.snapshot(),
        ));
        tracing::info!(
            revision = snapshot.revision,
            objects = desired.documents.len(),
            endpoints = desired.endpoints.len(),
            failed = failed.len(),
            "control-plane state loaded and realized"
        );
        Ok(Self {
            store,
            engine_config: config.engine,
            inner: Mutex::new(Inner {
                revision: snapshot.revision,
                desired,
                engine,
                failed,
            }),
            realized: RwLock::new(realized),
            data_plane: RwLock::new(None),
            flows: Arc::new(FlowRing::new(config.flow_ring_capacity)),
            counters: ControllerCounters::default(),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, ControllerError> {
        self.inner.lock().map_err(|_| ControllerError::Poisoned)
    }

    /// The state the data plane enforces (or would, offline).
    pub fn realized(&self) -> Arc<RealizedState> {
        match self.realized.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn revision(&self) -> Revision {
        self.realized().revision
    }

    pub fn flows(&self) -> &Arc<FlowRing> {
        &self.flows
    }

    /// How many stored documents are not enforced because they no longer parse.
    pub fn failed_count(&self) -> usize {
        self.lock().map(|i| i.failed.len()).unwrap_or(0)
    }

    pub fn counters(&self) -> &ControllerCounters {
        &self.counters
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn data_plane(&self) -> Option<Arc<dyn DataPlane>> {
        self.data_plane.read().ok().and_then(|d| d.clone())
    }

    /// Hands the realized state and every registered vNIC to a data plane, in that order.
    /// Returns the vNICs that failed to come up (they stay registered).
    pub fn attach_data_plane(
        &self,
        dp: Arc<dyn DataPlane>,
    ) -> Result<Vec<String>, ControllerError> {
        let _inner = self.lock()?; // no change may slip between publish and add_vnic
        dp.set_flow_sink(self.flows.clone());
        let state = self.realized();
        dp.publish(state.clone())?;
        let mut warnings = Vec::new();
        for ep in state.endpoints.iter().filter(|e| e.socket.is_some()) {
            if let Err(e) = dp.add_vnic(ep) {
                tracing::error!("{e}");
                warnings.push(e.to_string());
            }
        }
        if let Ok(mut slot) = self.data_plane.write() {
            *slot = Some(dp);
        }
        Ok(warnings)
    }

    /// Swaps in a new realized state and publishes it; returns data-plane warnings.
    fn swap(&self, state: Arc<RealizedState>) -> Vec<String> {
        match self.realized.write() {
            Ok(mut r) => *r = state.clone(),
            Err(poisoned) => *poisoned.into_inner() = state.clone(),
        }
        let mut warnings = Vec::new();
        if let Some(dp) = self.data_plane() {
            if let Err(e) = dp.publish(state) {
                tracing::error!("publishing realized state: {e}");
                warnings.push(format!("data plane did not take the new state: {e}"));
            }
        }
        warnings
    }

    /// Moves the live engine to `candidate`, persists `changes` as one change set at
    /// `inner.revision + 1`, then publishes the new realized state. On any failure the engine
    /// is rolled back and nothing is persisted or published.
    fn commit(
        &self,
        inner: &mut Inner,
        candidate: Desired,
        changes: Vec<Change>,
    ) -> Result<(Revision, Vec<String>), ControllerError> {
        if changes.is_empty() {
            return Ok((inner.revision, Vec::new()));
        }
        let forward = EngineChange::between(&inner.desired, &candidate);
        inner
            .engine
            .apply(&forward)
            .map_err(ControllerError::Rejected)?;
        let committed = self.store.commit(&ChangeSet {
            changes,
            expect_revision: Some(inner.revision),
        });
        let revision = match committed {
            Ok(r) => r,
            Err(e) => {
                let back = EngineChange::between(&candidate, &inner.desired);
                if let Err(undo) = inner.engine.apply(&back) {
                    tracing::error!("engine rollback failed ({undo}); rebuilding it");
                    match Live::build_with(&inner.desired, self.engine_config.clone()) {
                        Ok(engine) => inner.engine = engine,
                        Err(e) => tracing::error!("rebuilding the engine failed: {e}"),
                    }
                }
                return Err(e.into());
            }
        };
        let state = Arc::new(RealizedState::new(
            &candidate,
            revision,
            inner.engine.snapshot(),
        ));
        inner.revision = revision;
        inner.desired = candidate;
        let warnings = self.swap(state);
        Ok((revision, warnings))
    }

    /// Validates `candidate` on a throwaway engine (dry-runs never touch the live one).
    fn dry_run(&self, candidate: &Desired) -> Result<(), ControllerError> {
        Live::build_with(candidate, self.engine_config.clone())
            .map(drop)
            .map_err(ControllerError::Rejected)
    }

    // -----------------------------------------------------------------------------------
    // Policies, groups, tiers (documents)
    // -----------------------------------------------------------------------------------

    /// Applies every document of every file as one change set.
    pub fn apply(
        &self,
        files: &[InputFile],
        dry_run: bool,
    ) -> Result<ChangeReport, ControllerError> {
        self.counted(self.apply_inner(files, dry_run, None))
    }

    /// Makes the documents whose file name starts with `source` exactly those of `files`
    /// (every file of a policy directory, named by path under it): applies them and deletes
    /// what an earlier sync of that source stored and `files` no longer declare, as one
    /// change set. Objects applied through the API under other file names are left alone,
    /// unless `files` declare the same object (then the source's version wins). An empty
    /// `files` removes everything the source declared.
    pub fn sync_source(
        &self,
        source: &str,
        files: &[InputFile],
        dry_run: bool,
    ) -> Result<ChangeReport, ControllerError> {
        self.counted(self.apply_inner(files, dry_run, Some(source)))
    }

    /// Counts an apply's outcome for the metrics.
    fn counted(
        &self,
        result: Result<ChangeReport, ControllerError>,
    ) -> Result<ChangeReport, ControllerError> {
        let c = &self.counters;
        let counter = if result.is_ok() {
            &c.applies
        } else {
            &c.applies_failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    fn apply_inner(
        &self,
        files: &[InputFile],
        dry_run: bool,
        prune_source: Option<&str>,
    ) -> Result<ChangeReport, ControllerError> {
        let mut inner = self.lock()?;
        let docs: Vec<Document> = files
            .iter()
            .flat_map(|f| {
                let ct = f
                    .content_type
                    .unwrap_or_else(|| ContentType::from_file_name(&f.file));
                realized::split_documents(&f.file, &f.text, ct)
            })
            .collect();
        let mut results: Vec<_> = docs
            .iter()
            .map(|d| realized::parse_document(d, &inner.desired))
            .collect();
        // Tiers declared in this apply may be used by its other documents: parse the ones
        // that failed again with those tiers known.
        let new_tiers: Vec<ParsedDocument> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|p| matches!(p.object, Object::Tier(_)))
            .cloned()
            .collect();
        if !new_tiers.is_empty() && results.iter().any(Result::is_err) {
            let mut context = inner.desired.clone();
            for t in new_tiers {
                context.documents.insert(t.key(), Arc::new(t));
            }
            for (doc, result) in docs.iter().zip(results.iter_mut()) {
                if result.is_err() {
                    *result = realized::parse_document(doc, &context);
                }
            }
        }
        let mut parsed: Vec<ParsedDocument> = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(p) => parsed.push(p),
                Err(e) => errors.extend(e),
            }
        }
        // The same object twice in one apply is ambiguous: refuse rather than pick one.
        let mut seen: BTreeMap<ResourceKey, &Document> = BTreeMap::new();
        for p in &parsed {
            if let Some(first) = seen.insert(p.key(), &p.document) {
                errors.push(DocumentError {
                    file: p.document.file.clone(),
                    line: p.document.line,
                    column: None,
                    field: Some("metadata.name".into()),
                    message: format!(
                        "{} is declared twice (first at {}:{})",
                        p.key(),
                        first.file,
                        first.line
                    ),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ControllerError::Invalid(errors));
        }
        if parsed.is_empty() && prune_source.is_none() {
            return Err(ControllerError::BadRequest(
                "no documents found in the given files".into(),
            ));
        }
        let warnings: Vec<String> = parsed
            .iter()
            .flat_map(|p| {
                p.warnings
                    .iter()
                    .map(|w| format!("{}:{}: {}", w.source.file, w.source.line, w.message))
            })
            .collect();

        let declared: std::collections::BTreeSet<ResourceKey> =
            parsed.iter().map(ParsedDocument::key).collect();
        let mut candidate = inner.desired.clone();
        let mut report = Vec::new();
        let mut changes = Vec::new();
        for p in parsed {
            let key = p.key();
            let before = candidate.documents.get(&key);
            let mut change =
                realized::diff_object(&key, before.map(|b| &b.object), Some(&p.object));
            if inner.failed.contains_key(&key) {
                change.action = ChangeAction::Changed;
            }
            let text_changed = before.is_none_or(|b| b.document != p.document);
            if change.action != ChangeAction::Unchanged || text_changed {
                changes.push(Change::Put(p.to_resource()));
            }
            report.push(change);
            candidate.documents.insert(key, Arc::new(p));
        }
        if let Some(source) = prune_source {
            let from_source = |file: &str| file.starts_with(source);
            let stale: Vec<ResourceKey> = inner
                .desired
                .documents
                .iter()
                .filter(|(k, d)| !declared.contains(*k) && from_source(&d.document.file))
                .map(|(k, _)| k.clone())
                .chain(
                    inner
                        .failed
                        .iter()
                        .filter(|(k, errs)| {
                            !declared.contains(*k) && errs.iter().any(|e| from_source(&e.file))
                        })
                        .map(|(k, _)| k.clone()),
                )
                .collect();
            for key in stale {
                let before = candidate.documents.remove(&key);
                report.push(realized::diff_object(
                    &key,
                    before.as_ref().map(|b| &b.object),
                    None,
                ));
                changes.push(Change::Delete(key.clone()));
                if let ResourceKey::Policy(pk) = &key {
                    let target = AuditTarget::Policy(pk.clone());
                    if candidate.audit.remove(&target).is_some() {
                        changes.push(Change::Delete(ResourceKey::Audit(target)));
                    }
                }
            }
        }
        if dry_run {
            self.dry_run(&candidate)?;
            return Ok(ChangeReport {
                revision: inner.revision,
                dry_run,
                changes: report,
                warnings,
            });
        }
        let keys: Vec<ResourceKey> = changes
            .iter()
            .map(|c| match c {
                Change::Put(r) => r.key(),
                Change::Delete(k) => k.clone(),
            })
            .collect();
        let (revision, dp_warnings) = self.commit(&mut inner, candidate, changes)?;
        for k in keys {
            inner.failed.remove(&k);
        }
        Ok(ChangeReport {
            revision,
            dry_run,
            changes: report,
            warnings: warnings.into_iter().chain(dp_warnings).collect(),
        })
    }

    /// Deletes policies/groups/tiers (one change set). Audit settings of deleted policies go
    /// with them.
    pub fn delete_objects(
        &self,
        keys: &[ResourceKey],
        dry_run: bool,
    ) -> Result<ChangeReport, ControllerError> {
        let mut inner = self.lock()?;
        let mut candidate = inner.desired.clone();
        let mut report = Vec::new();
        let mut changes = Vec::new();
        for key in keys {
            if !matches!(
                key.kind(),
                ResourceKind::Policy | ResourceKind::Group | ResourceKind::Tier
            ) {
                return Err(ControllerError::BadRequest(format!(
                    "{key} is not a policy, group or tier"
                )));
            }
            let before = candidate.documents.remove(key);
            if before.is_none() && !inner.failed.contains_key(key) {
                return Err(ControllerError::NotFound(key.clone()));
            }
            report.push(realized::diff_object(
                key,
                before.as_ref().map(|b| &b.object),
                None,
            ));
            changes.push(Change::Delete(key.clone()));
            if let ResourceKey::Policy(pk) = key {
                let target = AuditTarget::Policy(pk.clone());
                if candidate.audit.remove(&target).is_some() {
                    changes.push(Change::Delete(ResourceKey::Audit(target)));
                }
            }
        }
        if dry_run {
            self.dry_run(&candidate)?;
            return Ok(ChangeReport {
                revision: inner.revision,
                dry_run,
                changes: report,
                warnings: Vec::new(),
            });
        }
        let (revision, warnings) = self.commit(&mut inner, candidate, changes)?;
        for k in keys {
            inner.failed.remove(k);
        }
        Ok(ChangeReport {
            revision,
            dry_run,
            changes: report,
            warnings,
        })
    }

    /// Stored policies, groups or tiers with their realization status.
    pub fn list_objects(
        &self,
        kind: ResourceKind,
    ) -> Result<(Revision, Vec<ObjectInfo>), ControllerError> {
        if !matches!(
            kind,
            ResourceKind::Policy | ResourceKind::Group | ResourceKind::Tier
        ) {
            return Err(ControllerError::BadRequest(format!(
                "{kind:?} is not a document kind"
            )));
        }
        let (rev, stored) = self.store.list(kind)?;
        let inner = self.lock()?;
        let infos = stored
            .into_iter()
            .filter_map(|v| self.info(&inner, v))
            .collect();
        Ok((rev, infos))
    }

    pub fn get_object(&self, key: &ResourceKey) -> Result<ObjectInfo, ControllerError> {
        let stored = self
            .store
            .get(key)?
            .ok_or_else(|| ControllerError::NotFound(key.clone()))?;
        let inner = self.lock()?;
        self.info(&inner, stored)
            .ok_or_else(|| ControllerError::NotFound(key.clone()))
    }

    fn info(&self, inner: &Inner, v: Versioned<Resource>) -> Option<ObjectInfo> {
        let key = v.value.key();
        let document = match v.value {
            Resource::Policy { document, .. }
            | Resource::Group { document, .. }
            | Resource::Tier { document, .. } => document,
            _ => return None,
        };
        let (status, errors) = match inner.failed.get(&key) {
            Some(e) => (ObjectStatus::Failed, e.clone()),
            None => (ObjectStatus::Realized, Vec::new()),
        };
        let (rules, audit) = match inner.desired.documents.get(&key).map(|p| &p.object) {
            Some(Object::Policy(p)) => (
                p.rules
                    .iter()
                    .map(|r| RuleSummary {
                        id: r.id.to_string(),
                        name: r.name.clone(),
                        direction: format!("{:?}", r.direction).to_lowercase(),
                        action: format!("{:?}", r.action),
                        log_label: r.log_label.clone(),
                    })
                    .collect(),
                p.audit || inner.desired.audited(p),
            ),
            _ => (Vec::new(), false),
        };
        Some(ObjectInfo {
            object: key.to_string(),
            key,
            document,
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            status,
            errors,
            rules,
            audit,
        })
    }

    // -----------------------------------------------------------------------------------
    // Endpoints
    // -----------------------------------------------------------------------------------

    /// Registers or updates an endpoint; its vNIC (if it has a socket) is added to the data
    /// plane after the state containing it is published.
    pub fn upsert_endpoint(&self, spec: EndpointSpec) -> Result<MutationReport, ControllerError> {
        validate_name("endpoint name", &spec.name)?;
        validate_name("endpoint namespace", &spec.namespace)?;
        if let Some(sock) = &spec.socket {
            if spec.mac.is_none() {
                return Err(ControllerError::BadRequest(format!(
                    "endpoint {}: a vNIC (socket {}) needs its MAC address (the switch and the spoof guard bind to it)",
                    spec.key(),
                    sock.path.display()
                )));
            }
            if !sock.path.is_absolute() {
                return Err(ControllerError::BadRequest(format!(
                    "endpoint {}: socket path {} must be absolute",
                    spec.key(),
                    sock.path.display()
                )));
            }
        }
        let mut inner = self.lock()?;
        let key = spec.key();
        for other in inner.desired.endpoints.values().filter(|o| o.key() != key) {
            if let (Some(a), Some(b)) = (spec.mac, other.mac) {
                if a == b {
                    return Err(ControllerError::BadRequest(format!(
                        "endpoint {key}: MAC {a} already belongs to endpoint {}",
                        other.key()
                    )));
                }
            }
            if let Some(ip) = spec.ips.iter().find(|ip| other.ips.contains(ip)) {
                return Err(ControllerError::BadRequest(format!(
                    "endpoint {key}: IP {ip} already belongs to endpoint {}",
                    other.key()
                )));
            }
            if let (Some(a), Some(b)) = (&spec.socket, &other.socket) {
                if a.path == b.path {
                    return Err(ControllerError::BadRequest(format!(
                        "endpoint {key}: socket {} already belongs to endpoint {}",
                        a.path.display(),
                        other.key()
                    )));
                }
            }
        }
        if inner.desired.endpoints.get(&key) == Some(&spec) {
            return Ok(MutationReport {
                revision: inner.revision,
                warnings: Vec::new(),
            });
        }
        let had_vnic = inner
            .desired
            .endpoints
            .get(&key)
            .is_some_and(|old| old.socket.is_some());
        let mut candidate = inner.desired.clone();
        candidate.endpoints.insert(key.clone(), spec.clone());
        let changes = vec![Change::Put(Resource::Endpoint(spec.clone()))];
        let (revision, mut warnings) = self.commit(&mut inner, candidate, changes)?;
        if had_vnic && spec.socket.is_none() {
            // The endpoint moved off this host (or lost its vNIC): tear the port down.
            if let Some(dp) = self.data_plane() {
                if let Err(e) = dp.remove_vnic(&key) {
                    warnings.push(format!("removing the vNIC: {e}"));
                }
            }
        }
        if spec.socket.is_some() {
            if let Some(dp) = self.data_plane() {
                if let Err(e) = dp.add_vnic(&spec) {
                    tracing::error!("{e}");
                    warnings.push(format!("endpoint stored, but the vNIC is not up: {e}"));
                }
            }
        }
        Ok(MutationReport { revision, warnings })
    }

    pub fn remove_endpoint(&self, key: &EndpointKey) -> Result<MutationReport, ControllerError> {
        let mut inner = self.lock()?;
        let mut candidate = inner.desired.clone();
        let Some(old) = candidate.endpoints.remove(key) else {
            return Err(ControllerError::NotFound(ResourceKey::Endpoint(
                key.clone(),
            )));
        };
        let mut warnings = Vec::new();
        // Stop forwarding first; the state without the endpoint follows.
        if old.socket.is_some() {
            if let Some(dp) = self.data_plane() {
                if let Err(e) = dp.remove_vnic(key) {
                    warnings.push(format!("removing the vNIC: {e}"));
                }
            }
        }
        let changes = vec![Change::Delete(ResourceKey::Endpoint(key.clone()))];
        let (revision, w) = self.commit(&mut inner, candidate, changes)?;
        warnings.extend(w);
        Ok(MutationReport { revision, warnings })
    }

    pub fn endpoints(&self) -> Vec<EndpointSpec> {
        self.realized().endpoints.clone()
    }

    // -----------------------------------------------------------------------------------
    // Namespaces
    // -----------------------------------------------------------------------------------

    pub fn upsert_namespace(&self, ns: Namespace) -> Result<MutationReport, ControllerError> {
        validate_name("namespace name", &ns.name)?;
        let mut inner = self.lock()?;
        if inner.desired.namespaces.get(&ns.name) == Some(&ns) {
            return Ok(MutationReport {
                revision: inner.revision,
                warnings: Vec::new(),
            });
        }
        let mut candidate = inner.desired.clone();
        candidate.namespaces.insert(ns.name.clone(), ns.clone());
        let (revision, warnings) = self.commit(
            &mut inner,
            candidate,
            vec![Change::Put(Resource::Namespace(ns))],
        )?;
        Ok(MutationReport { revision, warnings })
    }

    pub fn delete_namespace(&self, name: &str) -> Result<MutationReport, ControllerError> {
        let mut inner = self.lock()?;
        let mut candidate = inner.desired.clone();
        let key = ResourceKey::Namespace {
            name: name.to_string(),
        };
        if candidate.namespaces.remove(name).is_none() {
            return Err(ControllerError::NotFound(key));
        }
        let (revision, warnings) = self.commit(&mut inner, candidate, vec![Change::Delete(key)])?;
        Ok(MutationReport { revision, warnings })
    }

    pub fn namespaces(&self) -> Vec<Namespace> {
        self.realized().namespaces.clone()
    }

    // -----------------------------------------------------------------------------------
    // Audit
    // -----------------------------------------------------------------------------------

    pub fn set_audit(
        &self,
        target: AuditTarget,
        enabled: bool,
    ) -> Result<MutationReport, ControllerError> {
        let mut inner = self.lock()?;
        match &target {
            AuditTarget::Policy(pk) => {
                let key = ResourceKey::Policy(pk.clone());
                if !inner.desired.documents.contains_key(&key) && !inner.failed.contains_key(&key) {
                    return Err(ControllerError::NotFound(key));
                }
            }
            AuditTarget::Namespace(ns) => validate_name("namespace name", ns)?,
        }
        let setting = AuditSetting { target, enabled };
        if inner.desired.audit.get(&setting.target) == Some(&setting) {
            return Ok(MutationReport {
                revision: inner.revision,
                warnings: Vec::new(),
            });
        }
        let mut candidate = inner.desired.clone();
        candidate
            .audit
            .insert(setting.target.clone(), setting.clone());
        let (revision, warnings) = self.commit(
            &mut inner,
            candidate,
            vec![Change::Put(Resource::Audit(setting))],
        )?;
        Ok(MutationReport { revision, warnings })
    }

    pub fn audit_settings(&self) -> Result<Vec<AuditSetting>, ControllerError> {
        Ok(self.lock()?.desired.audit.values().cloned().collect())
    }

    // -----------------------------------------------------------------------------------
    // Trace
    // -----------------------------------------------------------------------------------

    /// Evaluates a hypothetical flow against the live realized state.
    pub fn trace(&self, req: &TraceRequest) -> Result<TraceResult, ControllerError> {
        crate::engine::trace(&self.realized().snapshot, req)
            .map_err(|e| ControllerError::BadRequest(e.to_string()))
    }

    // -----------------------------------------------------------------------------------
    // Stats
    // -----------------------------------------------------------------------------------

    /// Data-plane counters, or `None` when running without a data plane.
    pub fn data_plane_stats(&self) -> Result<Option<DataPlaneStats>, ControllerError> {
        match self.data_plane() {
            Some(dp) => Ok(Some(dp.stats()?)),
            None => Ok(None),
        }
    }
}

/// Kubernetes DNS-1123 subdomain rules: what names and namespaces must look like.
pub fn validate_name(what: &str, name: &str) -> Result<(), ControllerError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ControllerError::BadRequest(format!(
            "{what} {name:?} is not a valid name: use 1-253 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
        )))
    }
}

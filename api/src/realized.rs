//! From stored documents to what the data plane enforces: parsing (via `dfw::crd`) and
//! realization (via the dfw engine), plus the diff that `apply --dry-run` reports.
//!
//! This module is the only place the control plane touches the policy engine, so the engine
//! can evolve without the services noticing.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use dfw::model::{Group, Namespace, Object, Policy, RuleId, Tier, Warning};
use serde::{Deserialize, Serialize};

use crate::types::{
    AuditSetting, AuditTarget, ContentType, Document, EndpointSpec, Resource, ResourceKey, Revision,
};

/// A precise complaint about one document: where, which field, what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentError {
    pub file: String,
    /// One-based line in `file`.
    pub line: usize,
    /// One-based column, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// Dotted path of the offending field (`spec.ingress[0].ports[1].port`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.file, self.line)?;
        if let Some(c) = self.column {
            write!(f, "{c}:")?;
        }
        f.write_str(" ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// One document of an applied file and what it declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDocument {
    pub document: Document,
    pub object: Object,
    pub warnings: Vec<Warning>,
}

impl ParsedDocument {
    pub fn key(&self) -> ResourceKey {
        object_key(&self.object)
    }

    /// How the document is stored: under the key of the object it declares.
    pub fn to_resource(&self) -> Resource {
        let document = self.document.clone();
        match &self.object {
            Object::Policy(p) => Resource::Policy {
                key: p.key.clone(),
                document,
            },
            Object::Group(g) => Resource::Group {
                key: g.key.clone(),
                document,
            },
            Object::Tier(t) => Resource::Tier {
                name: t.name.clone(),
                document,
            },
        }
    }
}

pub fn object_key(object: &Object) -> ResourceKey {
    match object {
        Object::Policy(p) => ResourceKey::Policy(p.key.clone()),
        Object::Group(g) => ResourceKey::Group(g.key.clone()),
        Object::Tier(t) => ResourceKey::Tier {
            name: t.name.clone(),
        },
    }
}

/// Splits a YAML stream into its documents (`---` separators), keeping each document's
/// starting line so errors from re-parsing a stored document still point into the user's
/// file. Documents with nothing but blank lines and comments are skipped. A JSON file is one
/// document.
pub fn split_documents(file: &str, text: &str, content_type: ContentType) -> Vec<Document> {
    if content_type == ContentType::Json {
        return vec![Document {
            file: file.to_string(),
            content_type,
            text: text.to_string(),
            line: 1,
        }];
    }
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut flush = |current: &mut String, start: usize| {
        let meaningful = current.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        });
        if meaningful {
            docs.push(Document {
                file: file.to_string(),
                content_type,
                text: std::mem::take(current),
                line: start,
            });
        } else {
            current.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---"
            || (line.starts_with("---")
                && line[3..].starts_with([' ', '\t'])
                && line[3..].trim_start().starts_with('#'));
        if is_separator {
            flush(&mut current, start);
            start = i + 2;
        } else {
            if current.is_empty() {
                start = i + 1;
            }
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, start);
    docs
}

/// Parses one stored/applied document into exactly one object. `context` supplies what a
/// document may refer to (custom tiers).
pub fn parse_document(
    doc: &Document,
    context: &Desired,
) -> Result<ParsedDocument, Vec<DocumentError>> {
    crate::engine::parse_document(doc, context)
}

/// The desired state the controller realizes: every parsed object plus the inventory.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Shared, so the candidate of every change is a cheap copy of the current state.
    pub documents: BTreeMap<ResourceKey, Arc<ParsedDocument>>,
    pub endpoints: BTreeMap<dfw::model::EndpointKey, EndpointSpec>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub audit: BTreeMap<AuditTarget, AuditSetting>,
}

impl Desired {
    /// Whether audit settings treat `object` the same in `self` and `other`.
    fn audited_same(&self, other: &Desired, object: &Object) -> bool {
        match object {
            Object::Policy(p) => self.audited(p) == other.audited(p),
            _ => true,
        }
    }

    /// Whether audit mode applies to a policy (set on the policy or on its namespace).
    pub fn audited(&self, policy: &Policy) -> bool {
        let on = |t: AuditTarget| self.audit.get(&t).is_some_and(|a| a.enabled);
        on(AuditTarget::Policy(policy.key.clone()))
            || policy
                .key
                .namespace
                .as_ref()
                .is_some_and(|ns| on(AuditTarget::Namespace(ns.clone())))
    }
}

/// The realized state published to the data plane: the model the engine compiled and the
/// engine's snapshot, at one store revision.
#[derive(Debug)]
pub struct RealizedState {
    pub revision: Revision,
    /// Policies as enforced (audit settings applied).
    pub policies: Vec<Policy>,
    pub groups: Vec<Group>,
    pub tiers: Vec<Tier>,
    pub endpoints: Vec<EndpointSpec>,
    pub namespaces: Vec<Namespace>,
    /// The engine's realized policy (per-endpoint tables, ipcache, `evaluate`).
    pub snapshot: crate::engine::Snapshot,
}

impl RealizedState {
    pub fn new(desired: &Desired, revision: Revision, snapshot: crate::engine::Snapshot) -> Self {
        let mut policies = Vec::new();
        let mut groups = Vec::new();
        let mut tiers = Vec::new();
        for object in effective_objects(desired).into_values() {
            match object {
                Object::Policy(p) => policies.push(p),
                Object::Group(g) => groups.push(g),
                Object::Tier(t) => tiers.push(t),
            }
        }
        Self {
            revision,
            policies,
            groups,
            tiers,
            endpoints: desired.endpoints.values().cloned().collect(),
            namespaces: desired.namespaces.values().cloned().collect(),
            snapshot,
        }
    }
}

/// The objects as the engine must see them: policies get the audit flag from the audit
/// settings (on the policy or its namespace) on top of what the document says.
pub fn effective_objects(desired: &Desired) -> BTreeMap<ResourceKey, Object> {
    desired
        .documents
        .iter()
        .map(|(key, doc)| (key.clone(), effective(desired, doc).into_owned()))
        .collect()
}

/// One document's object as the engine must see it; borrowed unless audit settings change it.
fn effective<'a>(desired: &Desired, doc: &'a ParsedDocument) -> Cow<'a, Object> {
    match &doc.object {
        Object::Policy(p) if !p.audit && desired.audited(p) => {
            let mut p = p.clone();
            p.audit = true;
            Cow::Owned(Object::Policy(p))
        }
        other => Cow::Borrowed(other),
    }
}

/// What the engine must do to go from one desired state to another.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineChange {
    pub upserts: Vec<Object>,
    pub removals: Vec<ResourceKey>,
    pub namespaces_upsert: Vec<Namespace>,
    pub namespaces_remove: Vec<String>,
    pub endpoints_upsert: Vec<EndpointSpec>,
    pub endpoints_remove: Vec<dfw::model::EndpointKey>,
}

impl EngineChange {
    /// The difference `old → new`; `between(new, old)` is its undo.
    pub fn between(old: &Desired, new: &Desired) -> Self {
        // Compared in place: only what changed is copied (a change is O(objects) compares,
        // not O(objects) copies).
        let mut c = Self::default();
        for (k, doc) in &new.documents {
            let unchanged = old.documents.get(k).is_some_and(|before| {
                Arc::ptr_eq(before, doc) && old.audited_same(new, &doc.object)
                    || effective(old, before) == effective(new, doc)
            });
            if !unchanged {
                c.upserts.push(effective(new, doc).into_owned());
            }
        }
        c.removals = old
            .documents
            .keys()
            .filter(|k| !new.documents.contains_key(*k))
            .cloned()
            .collect();
        for (k, n) in &new.namespaces {
            if old.namespaces.get(k) != Some(n) {
                c.namespaces_upsert.push(n.clone());
            }
        }
        c.namespaces_remove = old
            .namespaces
            .keys()
            .filter(|k| !new.namespaces.contains_key(*k))
            .cloned()
            .collect();
        for (k, e) in &new.endpoints {
            if old.endpoints.get(k) != Some(e) {
                c.endpoints_upsert.push(e.clone());
            }
        }
        c.endpoints_remove = old
            .endpoints
            .keys()
            .filter(|k| !new.endpoints.contains_key(*k))
            .cloned()
            .collect();
        c
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What an apply/delete changes for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Added,
    Changed,
    Unchanged,
    Removed,
}

/// One line of an apply/delete report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectChange {
    /// Display form of the key (`policy ANP:prod/allow-web`).
    pub object: String,
    pub action: ChangeAction,
    /// Stable rule ids (hex) the change adds / removes; a rule edited in place shows up as one
    /// removed and one added id, since ids derive from rule content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules_removed: Vec<String>,
}

fn rule_ids(obj: Option<&Object>) -> BTreeSet<RuleId> {
    match obj {
        Some(Object::Policy(p)) => p.rules.iter().map(|r| r.id).collect(),
        _ => BTreeSet::new(),
    }
}

/// Compares one object before and after.
pub fn diff_object(
    key: &ResourceKey,
    before: Option<&Object>,
    after: Option<&Object>,
) -> ObjectChange {
    let action = match (before, after) {
        (None, Some(_)) => ChangeAction::Added,
        (Some(_), None) => ChangeAction::Removed,
        (Some(a), Some(b)) if same_object(a, b) => ChangeAction::Unchanged,
        _ => ChangeAction::Changed,
    };
    let (old, new) = (rule_ids(before), rule_ids(after));
    ObjectChange {
        object: key.to_string(),
        action,
        rules_added: new.difference(&old).map(|r| r.to_string()).collect(),
        rules_removed: old.difference(&new).map(|r| r.to_string()).collect(),
    }
}

/// Equality ignoring where the object came from (re-applying the same content from another
/// file or line is not a change).
fn same_object(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Policy(a), Object::Policy(b)) => {
            let mut b = b.clone();
            b.source = a.source.clone();
            *a == b
        }
        (Object::Group(a), Object::Group(b)) => {
            let mut b = b.clone();
            b.source = a.source.clone();
            *a == b
        }
        (Object::Tier(a), Object::Tier(b)) => a.name == b.name && a.priority == b.priority,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_start_lines_and_skips_empty_documents() {
        let text =
            "# header comment\n---\na: 1\nb: 2\n---\n\n# only a comment\n--- # trailing\nc: 3\n";
        let docs = split_documents("f.yaml", text, ContentType::Yaml);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "a: 1\nb: 2\n");
        assert_eq!(docs[0].line, 3);
        assert_eq!(docs[1].text, "c: 3\n");
        assert_eq!(docs[1].line, 9);
        let single = split_documents("g.yaml", "x: 1\n", ContentType::Yaml);
        assert_eq!(single[0].line, 1);
        let json = split_documents("h.json", "{\n}\n---\n", ContentType::Json);
        assert_eq!(json.len(), 1);
    }
}

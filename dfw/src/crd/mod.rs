//! CRD policy parsing: YAML/JSON documents → [`crate::model`] objects.
//!
//! # API
//! - [`parse_documents`]`(text, file)`: one file (multi-document YAML, a JSON object, a JSON
//!   array of objects, or a `kind: List` with `items`). The first error, if any.
//! - [`parse_files`]`(&[(file, text)], &ParseOptions)`: a set of files, accepted whole or not at
//!   all; returns every error found (at most one per object).
//! - [`ParseOptions::known_tiers`]: custom Antrea tiers applied earlier (see below).
//!
//! No I/O here: callers read the files and pass the text in.
//!
//! # Formats
//! Kubernetes NetworkPolicy (`crd/k8s.rs`), Antrea NetworkPolicy / ClusterNetworkPolicy / Tier /
//! ClusterGroup / Group (`crd/antrea.rs`), Cilium (Clusterwide)NetworkPolicy (`crd/cilium.rs`); each
//! module documents its semantics. Fields are checked strictly: unknown fields, bad values and
//! forbidden combinations are errors naming file, document, line, column and field path
//! ([`ParseError`]). Fields that are valid upstream but not enforced by vdfw (L7, FQDN, ...)
//! are kept in [`crate::model::Rule::unenforced`] and reported in [`Parsed::warnings`].
//!
//! # Decisions
//! - **Namespaces**: a namespaced object without `metadata.namespace` goes to `default`, as
//!   `kubectl apply` does; `metadata.namespace` on a cluster-scoped kind is ignored with a
//!   warning. Server-populated metadata (`uid`, `resourceVersion`, `managedFields`, ...) and
//!   `status` are accepted and ignored so `kubectl get -o yaml` output re-applies.
//! - **Audit mode**: the annotation `vdfw.io/audit: "true"` ([`AUDIT_ANNOTATION`]) on any
//!   policy sets [`crate::model::Policy::audit`].
//! - **Custom Antrea tiers** are resolved at parse time, against the static tiers, the Tier
//!   objects of the same set, and [`ParseOptions::known_tiers`] (tiers from earlier applies);
//!   an unknown tier is an error. Resolving early is sound because Antrea makes a Tier's
//!   priority immutable and refuses to delete a Tier that policies reference, so the callers
//!   (API store) must enforce the same two rules; in exchange the compiler never sees an
//!   unresolved tier. A Tier in the set that redefines a known tier's priority is an error.
//! - **Rule identity**: see `crd/ruleid.rs`; content-derived, stable under re-ordering and under
//!   edits of other rules.
//! - **Rule names**: Antrea `name` if given, else `<field>-<index>` (`ingress-0`,
//!   `egressDeny-1`; Cilium rules of `specs[i]` in a multi-spec object get `spec<i>-`).
//! - **Duplicates**: two documents of one set declaring the same object are an error.
//!   Group references (`group`, `childGroups`) are not checked for existence: groups may come
//!   from earlier applies; the compiler reports dangling ones.

mod antrea;
mod cilium;
pub(crate) mod de;
pub(crate) mod error;
mod k8s;
pub(crate) mod meta;
mod ruleid;
pub(crate) mod yaml;

use std::collections::BTreeMap;

pub use error::{ErrorKind, ParseError};
pub use meta::{AUDIT_ANNOTATION, DEFAULT_NAMESPACE};

use crate::model::{
    GroupKey, Layer, Object, Policy, PolicyKey, Source, Tier, Warning, ANTREA_STATIC_TIERS,
};
use error::{Invalid, Path};
use meta::Cx;
use yaml::{Document, Node, Value};

/// Everything a set of documents declares, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub warnings: Vec<Warning>,
}

impl Parsed {
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.objects.iter().filter_map(|o| match o {
            Object::Policy(p) => Some(p),
            _ => None,
        })
    }

    pub fn groups(&self) -> impl Iterator<Item = &crate::model::Group> {
        self.objects.iter().filter_map(|o| match o {
            Object::Group(g) => Some(g),
            _ => None,
        })
    }

    pub fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.objects.iter().filter_map(|o| match o {
            Object::Tier(t) => Some(t),
            _ => None,
        })
    }
}

/// Context from outside the set being parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Custom Antrea tiers already applied (name → priority), which policies in the set may
    /// reference. Static tiers need not be listed.
    pub known_tiers: BTreeMap<String, u32>,
}

impl ParseOptions {
    pub fn with_known_tiers<'a>(tiers: impl IntoIterator<Item = &'a Tier>) -> Self {
        Self {
            known_tiers: tiers
                .into_iter()
                .map(|t| (t.name.clone(), t.priority))
                .collect(),
        }
    }
}

/// Parses one file with no outside context. Returns the first error.
pub fn parse_documents(text: &str, file: &str) -> Result<Parsed, ParseError> {
    parse_documents_with(text, file, &ParseOptions::default())
}

/// Parses one file; custom tiers may come from `options`. Returns the first error.
pub fn parse_documents_with(
    text: &str,
    file: &str,
    options: &ParseOptions,
) -> Result<Parsed, ParseError> {
    parse_files(&[(file, text)], options).map_err(|errors| {
        errors.into_iter().next().unwrap_or_else(|| ParseError {
            file: file.to_string(),
            document: 0,
            line: 1,
            column: 1,
            path: String::new(),
            kind: ErrorKind::Syntax,
            message: "rejected without a reason (internal error)".into(),
        })
    })
}

/// Parses a set of `(file name, text)` pairs as one unit: either every object, or every error
/// (in file order; at most one per object, plus cross-document errors).
pub fn parse_files(
    files: &[(&str, &str)],
    options: &ParseOptions,
) -> Result<Parsed, Vec<ParseError>> {
    let mut state = SetState::default();
    for (file, text) in files {
        match yaml::load(text) {
            Err(e) => state.errors.push(ParseError {
                file: (*file).to_string(),
                document: e.document,
                line: e.mark.line,
                column: e.mark.column,
                path: String::new(),
                kind: ErrorKind::Syntax,
                message: e.message,
            }),
            Ok(docs) => {
                for doc in &docs {
                    state.document(file, doc);
                }
            }
        }
    }
    state.resolve_tiers(options);
    if state.errors.is_empty() {
        Ok(Parsed {
            objects: state.entries.into_iter().map(|e| e.object).collect(),
            warnings: state.warnings,
        })
    } else {
        // Cross-document errors (tiers) are found last; report in file and line order.
        let order = |file: &str| files.iter().position(|(f, _)| *f == file);
        state
            .errors
            .sort_by_key(|e| (order(&e.file), e.document, e.line, e.column));
        Err(state.errors)
    }
}

// ---------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------

/// What a translator returns: the object and, for Antrea policies in a custom tier, the tier
/// to resolve once the whole set is known.
pub(crate) struct Translated {
    pub object: Object,
    pub tier_ref: Option<TierRef>,
}

pub(crate) struct TierRef {
    pub name: String,
    pub path: Path,
}

/// A position, kept to report cross-document errors after the documents are gone.
#[derive(Clone)]
struct Loc {
    file: String,
    document: usize,
    line: usize,
    column: usize,
    path: String,
}

impl Loc {
    fn new(file: &str, document: usize, root: &Node, path: &Path) -> Self {
        let mark = path.locate(root);
        Self {
            file: file.to_string(),
            document,
            line: mark.line,
            column: mark.column,
            path: path.to_string(),
        }
    }

    fn error(&self, kind: ErrorKind, message: String) -> ParseError {
        ParseError {
            file: self.file.clone(),
            document: self.document,
            line: self.line,
            column: self.column,
            path: self.path.clone(),
            kind,
            message,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} document {} (line {})",
            self.file,
            self.document + 1,
            self.line
        )
    }
}

struct Entry {
    object: Object,
    name_loc: Loc,
    tier: Option<(String, Loc)>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum ObjectKey {
    Policy(PolicyKey),
    Group(GroupKey),
    Tier(String),
}

impl ObjectKey {
    fn of(object: &Object) -> Self {
        match object {
            Object::Policy(p) => Self::Policy(p.key.clone()),
            Object::Group(g) => Self::Group(g.key.clone()),
            Object::Tier(t) => Self::Tier(t.name.clone()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Policy(k) => format!("policy {k}"),
            Self::Group(k) if k.namespace.is_some() => format!("Group {k}"),
            Self::Group(k) => format!("ClusterGroup {k}"),
            Self::Tier(t) => format!("Tier {t}"),
        }
    }
}

#[derive(Default)]
struct SetState {
    entries: Vec<Entry>,
    warnings: Vec<Warning>,
    errors: Vec<ParseError>,
    seen: BTreeMap<ObjectKey, Loc>,
}

#[derive(Clone, Copy)]
enum KindId {
    K8sNetworkPolicy,
    AntreaNetworkPolicy,
    AntreaClusterNetworkPolicy,
    AntreaTier,
    AntreaClusterGroup,
    AntreaGroup,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

/// (API group, served versions, kind).
const SUPPORTED: &[(&str, &[&str], &str, KindId)] = &[
    (
        "networking.k8s.io",
        &["v1"],
        "NetworkPolicy",
        KindId::K8sNetworkPolicy,
    ),
    (
        "crd.antrea.io",
        &["v1beta1", "v1alpha1"],
        "NetworkPolicy",
        KindId::AntreaNetworkPolicy,
    ),
    (
        "crd.antrea.io",
        &["v1beta1", "v1alpha1"],
        "ClusterNetworkPolicy",
        KindId::AntreaClusterNetworkPolicy,
    ),
    (
        "crd.antrea.io",
        &["v1beta1", "v1alpha1"],
        "Tier",
        KindId::AntreaTier,
    ),
    (
        "crd.antrea.io",
        &["v1beta1", "v1alpha3", "v1alpha2"],
        "ClusterGroup",
        KindId::AntreaClusterGroup,
    ),
    (
        "crd.antrea.io",
        &["v1beta1", "v1alpha3"],
        "Group",
        KindId::AntreaGroup,
    ),
    (
        "cilium.io",
        &["v2"],
        "CiliumNetworkPolicy",
        KindId::CiliumNetworkPolicy,
    ),
    (
        "cilium.io",
        &["v2"],
        "CiliumClusterwideNetworkPolicy",
        KindId::CiliumClusterwideNetworkPolicy,
    ),
];

/// Finds the kind, or says which of `apiVersion`/`kind` is wrong and why.
fn lookup(api_version: &str, kind: &str) -> Result<KindId, (&'static str, ErrorKind, String)> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let candidates: Vec<_> = SUPPORTED.iter().filter(|(_, _, k, _)| *k == kind).collect();
    if candidates.is_empty() {
        let mut kinds: Vec<&str> = SUPPORTED.iter().map(|(_, _, k, _)| *k).collect();
        kinds.dedup();
        return Err((
            "kind",
            ErrorKind::UnknownKind,
            format!(
                "unsupported kind {kind:?} (apiVersion {api_version:?}); vdfw reads {}, and List",
                kinds.join(", ")
            ),
        ));
    }
    for (g, versions, _, id) in &candidates {
        if *g == group && versions.contains(&version) {
            return Ok(*id);
        }
    }
    let served: Vec<String> = candidates
        .iter()
        .flat_map(|(g, versions, _, _)| versions.iter().map(move |v| format!("{g}/{v}")))
        .collect();
    Err((
        "apiVersion",
        ErrorKind::UnknownKind,
        format!(
            "apiVersion {api_version:?} does not serve kind {kind}; supported: {}",
            served.join(", ")
        ),
    ))
}

fn is_list_kind(kind: &str) -> bool {
    kind == "List"
        || kind
            .strip_suffix("List")
            .is_some_and(|k| SUPPORTED.iter().any(|(_, _, s, _)| *s == k))
}

/// A string field of an object node: `Ok(None)` if absent.
fn string_field<'a>(node: &'a Node, path: &Path, field: &str) -> Result<Option<&'a str>, Invalid> {
    match node.get(field) {
        None => Ok(None),
        Some(v) => match &v.value {
            Value::Scalar(s) if !v.is_null() => Ok(Some(&s.text)),
            _ => Err(Invalid::value(&path.key(field), "must be a string")),
        },
    }
}

impl SetState {
    fn document(&mut self, file: &str, doc: &Document) {
        let root = &doc.root;
        match &root.value {
            _ if root.is_null() => {}
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.object(file, doc, item, &Path::root().idx(i));
                }
            }
            Value::Map(_) => {
                let path = Path::root();
                match self.list_items(root, &path) {
                    Err(e) => self.errors.push(e.into_parse_error(file, doc.index, root)),
                    Ok(Some(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            self.object(file, doc, item, &path.key("items").idx(i));
                        }
                    }
                    Ok(None) => self.object(file, doc, root, &path),
                }
            }
            Value::Scalar(_) => self.errors.push(
                Invalid::value(
                    &Path::root(),
                    "expected an object with apiVersion and kind, a list of objects, or a kind: List",
                )
                .into_parse_error(file, doc.index, root),
            ),
        }
    }

    /// `Some(items)` if `node` is a `kind: List` (or `<Kind>List`).
    fn list_items<'a>(&self, node: &'a Node, path: &Path) -> Result<Option<&'a [Node]>, Invalid> {
        let Some(kind) = string_field(node, path, "kind")? else {
            return Ok(None);
        };
        if !is_list_kind(kind) {
            return Ok(None);
        }
        if let Value::Map(entries) = &node.value {
            for (k, _) in entries {
                let key = k.scalar_text().unwrap_or_default();
                if !matches!(key, "apiVersion" | "kind" | "metadata" | "items") {
                    return Err(Invalid::new(
                        &path.key(key),
                        ErrorKind::UnknownField,
                        "unknown field; expected one of `apiVersion`, `kind`, `metadata`, `items`",
                    ));
                }
            }
        }
        match node.get("items") {
            None => Ok(Some(&[])),
            Some(items) => match &items.value {
                Value::Seq(list) => Ok(Some(list)),
                _ if items.is_null() => Ok(Some(&[])),
                _ => Err(Invalid::value(
                    &path.key("items"),
                    "must be a list of objects",
                )),
            },
        }
    }

    fn object(&mut self, file: &str, doc: &Document, node: &Node, path: &Path) {
        let source = Source {
            file: file.to_string(),
            document: doc.index,
            line: node.mark.line,
        };
        let mut cx = Cx {
            root: &doc.root,
            source,
            warnings: Vec::new(),
        };
        let result = translate(node, path, &mut cx);
        self.warnings.append(&mut cx.warnings);
        match result {
            Err(e) => self
                .errors
                .push(e.into_parse_error(file, doc.index, &doc.root)),
            Ok(None) => {}
            Ok(Some(t)) => {
                let name_loc = Loc::new(
                    file,
                    doc.index,
                    &doc.root,
                    &path.key("metadata").key("name"),
                );
                let key = ObjectKey::of(&t.object);
                if let Some(first) = self.seen.get(&key) {
                    self.errors.push(name_loc.error(
                        ErrorKind::Duplicate,
                        format!(
                            "{} is already declared in {}",
                            key.describe(),
                            first.describe()
                        ),
                    ));
                    return;
                }
                self.seen.insert(key, name_loc.clone());
                let tier = t
                    .tier_ref
                    .map(|r| (r.name, Loc::new(file, doc.index, &doc.root, &r.path)));
                self.entries.push(Entry {
                    object: t.object,
                    name_loc,
                    tier,
                });
            }
        }
    }

    fn resolve_tiers(&mut self, options: &ParseOptions) {
        // name → (priority, where declared: None for static / known tiers)
        let mut tiers: BTreeMap<String, (u32, Option<Loc>)> = ANTREA_STATIC_TIERS
            .iter()
            .map(|(n, p)| ((*n).to_string(), (*p, None)))
            .collect();
        for (name, priority) in &options.known_tiers {
            tiers.entry(name.clone()).or_insert((*priority, None));
        }
        for entry in &self.entries {
            let Object::Tier(tier) = &entry.object else {
                continue;
            };
            let loc = &entry.name_loc;
            if let Some((known, _)) = tiers.get(&tier.name) {
                if *known != tier.priority {
                    self.errors.push(loc.error(
                        ErrorKind::Conflict,
                        format!(
                            "tier {} already exists with priority {known}; a tier's priority cannot be changed",
                            tier.name
                        ),
                    ));
                }
                continue;
            }
            if let Some((other, (_, other_loc))) =
                tiers.iter().find(|(_, (p, _))| *p == tier.priority)
            {
                let where_ = other_loc
                    .as_ref()
                    .map(|l| format!(" (declared in {})", l.describe()))
                    .unwrap_or_default();
                self.errors.push(loc.error(
                    ErrorKind::Conflict,
                    format!(
                        "tier priority {} overlaps with tier {other}{where_}",
                        tier.priority
                    ),
                ));
                continue;
            }
            tiers.insert(tier.name.clone(), (tier.priority, Some(loc.clone())));
        }
        for entry in &mut self.entries {
            let (Some((name, loc)), Object::Policy(policy)) = (&entry.tier, &mut entry.object)
            else {
                continue;
            };
            match (tiers.get(name), &mut policy.layer) {
                (Some((priority, _)), Layer::AntreaTier { tier_priority, .. }) => {
                    *tier_priority = *priority;
                }
                _ => self.errors.push(loc.error(
                    ErrorKind::UnknownReference,
                    format!(
                        "tier {name:?} does not exist: it is not a static tier ({}), not declared in this set, and not known from earlier applies",
                        ANTREA_STATIC_TIERS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
    }
}

fn translate(node: &Node, path: &Path, cx: &mut Cx<'_>) -> Result<Option<Translated>, Invalid> {
    if !matches!(node.value, Value::Map(_)) {
        return Err(Invalid::value(
            path,
            "expected an object with apiVersion and kind",
        ));
    }
    let api_version = string_field(node, path, "apiVersion")?
        .ok_or_else(|| Invalid::missing(&path.key("apiVersion"), "required field is missing"))?;
    let kind = string_field(node, path, "kind")?
        .ok_or_else(|| Invalid::missing(&path.key("kind"), "required field is missing"))?;
    if is_list_kind(kind) {
        return Err(Invalid::value(
            &path.key("kind"),
            "a List cannot be nested in a list",
        ));
    }
    let id = lookup(api_version, kind)
        .map_err(|(field, k, message)| Invalid::new(&path.key(field), k, message))?;
    let policy = |object| {
        Ok(Some(Translated {
            object,
            tier_ref: None,
        }))
    };
    match id {
        KindId::K8sNetworkPolicy => policy(k8s::translate(node, path, cx)?),
        KindId::AntreaNetworkPolicy => antrea::translate_policy(node, path, cx, false).map(Some),
        KindId::AntreaClusterNetworkPolicy => {
            antrea::translate_policy(node, path, cx, true).map(Some)
        }
        KindId::AntreaTier => antrea::translate_tier(node, path, cx),
        KindId::AntreaClusterGroup => {
            antrea::translate_group(node, path, cx, true, api_version).map(Some)
        }
        KindId::AntreaGroup => {
            antrea::translate_group(node, path, cx, false, api_version).map(Some)
        }
        KindId::CiliumNetworkPolicy => policy(cilium::translate(node, path, cx, false)?),
        KindId::CiliumClusterwideNetworkPolicy => policy(cilium::translate(node, path, cx, true)?),
    }
}

//! `cilium.io/v2` CiliumNetworkPolicy (CNP, namespaced) and CiliumClusterwideNetworkPolicy
//! (CCNP), L3/L4.
//!
//! Semantics (see [`crate::model`]):
//! - layer [`Layer::Kubernetes`]: allows form a union with Kubernetes NetworkPolicy; `ingress`
//!   / `egress` rules → [`Action::Allow`], `ingressDeny` / `egressDeny` → [`Action::Drop`] (deny
//!   wins over any allow).
//! - `isolates`: every direction with at least one rule (allow or deny), unless
//!   `enableDefaultDeny` says otherwise for that direction.
//! - A CNP's `endpointSelector` is confined to its namespace. Its `fromEndpoints` /
//!   `toEndpoints` selectors are too, unless they name `io.kubernetes.pod.namespace`: then
//!   the scope is [`NamespaceScope::Any`] and the key stays in the selector, to be matched
//!   against endpoints' pseudo-labels (like `io.cilium.k8s.namespace.labels.<key>`, see
//!   [`crate::model::CILIUM_NAMESPACE_LABELS_PREFIX`]). Label source prefixes `k8s:` and
//!   `any:` are stripped; `reserved:host|world|remote-node` selectors become entities.
//! - Peer fields of one rule are ORed. A rule with no peer field but with `toPorts`/`icmps`
//!   applies to every peer ([`Peers::Any`]); a rule with neither (`{}`) matches nothing
//!   ([`Peers::List`] empty: the Cilium default-deny idiom). Empty lists count as absent, as
//!   in Go.
//! - `toPorts.ports`: `port` is a string (number or named port); `"0"`/empty = all ports;
//!   protocol `TCP`/`UDP`/`SCTP`/`ANY` (default `ANY`). `icmps.fields`: numeric or named type,
//!   family `IPv4` (default) or `IPv6`.
//! - Kept but not enforced (warned, in [`Rule::unenforced`]): L7 `toPorts.rules`
//!   (http/kafka/dns/...), TLS/listener settings, `toFQDNs`, `toServices`, `fromGroups` /
//!   `toGroups`, `fromNodes` / `toNodes`, `authentication`, the deprecated `fromRequires` /
//!   `toRequires`. An unenforced peer field still counts as a peer field: a rule whose only
//!   peer is `toFQDNs` matches no peer, never every peer.
//! - Refused: `nodeSelector` subjects (host policies), `world-ipv4`/`world-ipv6` entities,
//!   `cidrGroupRef`/`cidrGroupSelector`.
//! - `specs`: several rules in one object. When they select different endpoints, each rule
//!   carries its spec's selector as [`Rule::applied_to`], the policy-level `applied_to` is
//!   empty, and each spec's subject is isolated in its own directions
//!   ([`crate::model::Policy::subject_isolation`]), as Cilium treats every spec as a rule of
//!   its own.
//!   `log.value` becomes each rule's log label.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value as Json;

use super::error::{ErrorKind, Invalid, Path};
use super::meta::{self, Cx, IntOrString, ObjectMeta, RawSelector};
use super::ruleid;
use super::yaml::Node;
use crate::model::{
    Action, AppliedTo, Direction, EndpointSelector, Entity, KindFilter, NamespaceScope, Object,
    Peer, Peers, Policy, PolicyKey, PolicyKind, PortMatch, PortRange, PortSpec, ProtocolMatch,
    Rule, RuleId, SubjectIsolation, Unenforced, CILIUM_NAMESPACE_LABEL,
};
use crate::model::{LabelSelector, Layer};

// ---------------------------------------------------------------------------------------------
// Schema (pkg/policy/api)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDoc {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<CRule>,
    #[serde(default)]
    specs: Option<Vec<CRule>>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CRule {
    #[serde(default)]
    endpoint_selector: Option<RawSelector>,
    #[serde(default)]
    node_selector: Option<RawSelector>,
    #[serde(default)]
    ingress: Option<Vec<CIngress>>,
    #[serde(default)]
    ingress_deny: Option<Vec<CIngress>>,
    #[serde(default)]
    egress: Option<Vec<CEgress>>,
    #[serde(default)]
    egress_deny: Option<Vec<CEgress>>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<IgnoredAny>,
    #[serde(default)]
    enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<IgnoredAny>,
    #[serde(default)]
    log: Option<LogConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    #[serde(default)]
    ingress: Option<bool>,
    #[serde(default)]
    egress: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CIngress {
    #[serde(default)]
    from_endpoints: Option<Vec<RawSelector>>,
    #[serde(default)]
    from_requires: Option<Vec<Json>>,
    #[serde(default, rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(default, rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    from_entities: Option<Vec<String>>,
    #[serde(default)]
    from_groups: Option<Vec<Json>>,
    #[serde(default)]
    from_nodes: Option<Vec<Json>>,
    #[serde(default)]
    to_ports: Option<Vec<PortRule>>,
    #[serde(default)]
    icmps: Option<Vec<IcmpRule>>,
    #[serde(default)]
    authentication: Option<Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CEgress {
    #[serde(default)]
    to_endpoints: Option<Vec<RawSelector>>,
    #[serde(default)]
    to_requires: Option<Vec<Json>>,
    #[serde(default, rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    to_entities: Option<Vec<String>>,
    #[serde(default)]
    to_services: Option<Vec<Json>>,
    #[serde(default)]
    to_groups: Option<Vec<Json>>,
    #[serde(default)]
    to_nodes: Option<Vec<Json>>,
    #[serde(default)]
    to_ports: Option<Vec<PortRule>>,
    #[serde(default, rename = "toFQDNs")]
    to_fqdns: Option<Vec<Json>>,
    #[serde(default)]
    icmps: Option<Vec<IcmpRule>>,
    #[serde(default)]
    authentication: Option<Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CidrRule {
    #[serde(default)]
    cidr: Option<String>,
    #[serde(default)]
    cidr_group_ref: Option<String>,
    #[serde(default)]
    cidr_group_selector: Option<Json>,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortRule {
    #[serde(default)]
    ports: Option<Vec<PortProtocol>>,
    #[serde(default)]
    rules: Option<Json>,
    #[serde(default, rename = "terminatingTLS")]
    terminating_tls: Option<Json>,
    #[serde(default, rename = "originatingTLS")]
    originating_tls: Option<Json>,
    #[serde(default)]
    server_names: Option<Json>,
    #[serde(default)]
    listener: Option<Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortProtocol {
    #[serde(default)]
    port: Option<IntOrString>,
    #[serde(default)]
    end_port: Option<i64>,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpRule {
    #[serde(default)]
    fields: Option<Vec<IcmpField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IcmpField {
    #[serde(default)]
    family: Option<String>,
    #[serde(rename = "type")]
    icmp_type: IntOrString,
}

// ---------------------------------------------------------------------------------------------
// One rule, direction-neutral
// ---------------------------------------------------------------------------------------------

/// A Cilium ingress/egress (allow or deny) rule with its field names, so one translation
/// serves all four lists.
struct Generic<'a> {
    endpoints: (&'static str, &'a [RawSelector]),
    cidr: (&'static str, &'a [String]),
    cidr_set: (&'static str, &'a [CidrRule]),
    entities: (&'static str, &'a [String]),
    /// Peer fields kept but not enforced: (field, value, why).
    unenforced_peers: Vec<(&'static str, &'a [Json], &'static str)>,
    requires: (&'static str, &'a [Json]),
    to_ports: &'a [PortRule],
    icmps: &'a [IcmpRule],
    authentication: Option<&'a Json>,
    /// Fields that exist in allow rules only, present in a deny rule.
    deny_only_violation: Option<&'static str>,
}

fn s<T>(v: &Option<Vec<T>>) -> &[T] {
    v.as_deref().unwrap_or_default()
}

impl<'a> Generic<'a> {
    fn ingress(r: &'a CIngress) -> Self {
        Self {
            endpoints: ("fromEndpoints", s(&r.from_endpoints)),
            cidr: ("fromCIDR", s(&r.from_cidr)),
            cidr_set: ("fromCIDRSet", s(&r.from_cidr_set)),
            entities: ("fromEntities", s(&r.from_entities)),
            unenforced_peers: vec![
                (
                    "fromGroups",
                    s(&r.from_groups),
                    "cloud-provider groups are not resolved by vdfw; matches nothing",
                ),
                (
                    "fromNodes",
                    s(&r.from_nodes),
                    "vdfw has no Node inventory; matches nothing",
                ),
            ],
            requires: ("fromRequires", s(&r.from_requires)),
            to_ports: s(&r.to_ports),
            icmps: s(&r.icmps),
            authentication: r.authentication.as_ref(),
            deny_only_violation: r.authentication.as_ref().map(|_| "authentication"),
        }
    }

    fn egress(r: &'a CEgress) -> Self {
        let deny_only_violation = if r.authentication.is_some() {
            Some("authentication")
        } else if r.to_fqdns.is_some() {
            Some("toFQDNs")
        } else {
            None
        };
        Self {
            endpoints: ("toEndpoints", s(&r.to_endpoints)),
            cidr: ("toCIDR", s(&r.to_cidr)),
            cidr_set: ("toCIDRSet", s(&r.to_cidr_set)),
            entities: ("toEntities", s(&r.to_entities)),
            unenforced_peers: vec![
                (
                    "toFQDNs",
                    s(&r.to_fqdns),
                    "FQDN peers need DNS proxying, which vdfw does not do; matches nothing",
                ),
                (
                    "toServices",
                    s(&r.to_services),
                    "vdfw has no Services; matches nothing",
                ),
                (
                    "toGroups",
                    s(&r.to_groups),
                    "cloud-provider groups are not resolved by vdfw; matches nothing",
                ),
                (
                    "toNodes",
                    s(&r.to_nodes),
                    "vdfw has no Node inventory; matches nothing",
                ),
            ],
            requires: ("toRequires", s(&r.to_requires)),
            to_ports: s(&r.to_ports),
            icmps: s(&r.icmps),
            authentication: r.authentication.as_ref(),
            deny_only_violation,
        }
    }

    fn has_peer_field(&self) -> bool {
        !self.endpoints.1.is_empty()
            || !self.cidr.1.is_empty()
            || !self.cidr_set.1.is_empty()
            || !self.entities.1.is_empty()
            || self.unenforced_peers.iter().any(|(_, v, _)| !v.is_empty())
    }
}

/// Where a namespaced policy lives (`None` for CCNP).
type PolicyNamespace<'a> = Option<&'a str>;

pub(crate) fn translate(
    node: &Node,
    base: &Path,
    cx: &mut Cx<'_>,
    cluster: bool,
) -> Result<Object, Invalid> {
    let doc: PolicyDoc = super::de::from_node(node, base)?;
    let meta = meta::meta(&doc.metadata, !cluster, base, cx)?;
    let ns: PolicyNamespace<'_> = meta.namespace.as_deref();
    let key = PolicyKey {
        kind: if cluster {
            PolicyKind::CiliumClusterwideNetworkPolicy
        } else {
            PolicyKind::CiliumNetworkPolicy
        },
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };

    let mut specs: Vec<(Path, &CRule)> = Vec::new();
    if let Some(spec) = &doc.spec {
        specs.push((base.key("spec"), spec));
    }
    for (i, spec) in doc.specs.iter().flatten().enumerate() {
        specs.push((base.key("specs").idx(i), spec));
    }
    if specs.is_empty() {
        return Err(Invalid::missing(
            &base.key("spec"),
            "spec or specs is required",
        ));
    }
    let multi = specs.len() > 1;

    struct SpecOut {
        selector: EndpointSelector,
        isolates: [bool; 2],
    }
    let mut outs = Vec::new();
    let mut rules = Vec::new();
    for (si, (sp, spec)) in specs.iter().enumerate() {
        let selector = subject(spec, sp, ns)?;
        let prefix = if multi {
            format!("spec{si}-")
        } else {
            String::new()
        };
        let log_label = match spec.log.as_ref().and_then(|l| l.value.as_deref()) {
            Some(v) if !v.is_empty() => Some(meta::log_label(v, &sp.key("log").key("value"))?),
            _ => None,
        };
        let lists: [(&str, Direction, Action, Vec<Generic<'_>>); 4] = [
            (
                "ingress",
                Direction::Ingress,
                Action::Allow,
                s(&spec.ingress).iter().map(Generic::ingress).collect(),
            ),
            (
                "ingressDeny",
                Direction::Ingress,
                Action::Drop,
                s(&spec.ingress_deny).iter().map(Generic::ingress).collect(),
            ),
            (
                "egress",
                Direction::Egress,
                Action::Allow,
                s(&spec.egress).iter().map(Generic::egress).collect(),
            ),
            (
                "egressDeny",
                Direction::Egress,
                Action::Drop,
                s(&spec.egress_deny).iter().map(Generic::egress).collect(),
            ),
        ];
        let mut has_rules = [false; 2];
        for (field, direction, action, list) in &lists {
            for (i, g) in list.iter().enumerate() {
                has_rules[*direction as usize] = true;
                let rp = sp.key(field).idx(i);
                let mut rule = translate_rule(g, *direction, *action, &rp, ns, cx)?;
                rule.name = format!("{prefix}{field}-{i}");
                rule.log_label.clone_from(&log_label);
                rules.push((si, rule));
            }
        }
        let edd = spec.enable_default_deny.as_ref();
        let isolates = [
            edd.and_then(|d| d.ingress).unwrap_or(has_rules[0]),
            edd.and_then(|d| d.egress).unwrap_or(has_rules[1]),
        ];
        outs.push(SpecOut { selector, isolates });
    }

    let dirs = |iso: [bool; 2]| -> Vec<Direction> {
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter(|d| iso[*d as usize])
            .collect()
    };
    let same_subject = outs.iter().all(|o| o.selector == outs[0].selector);
    let (applied_to, isolates, subject_isolation) = if same_subject {
        // One subject: any spec's default deny isolates it (Cilium enables default deny on
        // an endpoint as soon as one rule selecting it does).
        let union = [
            outs.iter().any(|o| o.isolates[0]),
            outs.iter().any(|o| o.isolates[1]),
        ];
        (
            vec![AppliedTo::Endpoints(outs[0].selector.clone())],
            dirs(union),
            Vec::new(),
        )
    } else {
        // Per-spec subjects: each spec isolates what its own selector picks, in its own
        // directions; specs with equal selectors are merged.
        let mut subjects: Vec<(EndpointSelector, [bool; 2])> = Vec::new();
        for o in &outs {
            match subjects.iter_mut().find(|(s, _)| *s == o.selector) {
                Some((_, iso)) => {
                    iso[0] |= o.isolates[0];
                    iso[1] |= o.isolates[1];
                }
                None => subjects.push((o.selector.clone(), o.isolates)),
            }
        }
        let subject_isolation = subjects
            .into_iter()
            .filter(|(_, iso)| iso[0] || iso[1])
            .map(|(s, iso)| SubjectIsolation {
                applied_to: vec![AppliedTo::Endpoints(s)],
                directions: dirs(iso),
            })
            .collect();
        (Vec::new(), Vec::new(), subject_isolation)
    };
    let mut rules: Vec<Rule> = rules
        .into_iter()
        .map(|(si, mut r)| {
            if !same_subject {
                r.applied_to = Some(vec![AppliedTo::Endpoints(outs[si].selector.clone())]);
            }
            r
        })
        .collect();
    let explicit = vec![false; rules.len()];
    ruleid::assign(&key, &mut rules, &explicit);

    Ok(Object::Policy(Policy {
        key,
        layer: Layer::Kubernetes,
        applied_to,
        isolates,
        subject_isolation,
        rules,
        audit: meta.audit,
        source: cx.source.clone(),
    }))
}

/// The endpoints a spec applies to.
fn subject(spec: &CRule, sp: &Path, ns: PolicyNamespace<'_>) -> Result<EndpointSelector, Invalid> {
    match (&spec.endpoint_selector, &spec.node_selector) {
        (Some(_), Some(_)) => Err(Invalid::conflict(
            &sp.key("nodeSelector"),
            "endpointSelector and nodeSelector cannot be combined",
        )),
        (None, Some(_)) => Err(Invalid::unsupported(
            &sp.key("nodeSelector"),
            "host policies (nodeSelector) are not supported: vdfw enforces on VM and pod endpoints",
        )),
        (None, None) => Err(Invalid::missing(
            &sp.key("endpointSelector"),
            "required field is missing",
        )),
        (Some(raw), None) => {
            let path = sp.key("endpointSelector");
            let labels = cilium_labels(raw, &path)?;
            if labels.has_reserved {
                return Err(Invalid::unsupported(
                    &path,
                    "reserved: labels in endpointSelector (host policies) are not supported",
                ));
            }
            Ok(EndpointSelector {
                // A CNP's subjects are always in its namespace (Cilium adds the namespace
                // label to its endpointSelector).
                namespaces: match ns {
                    Some(ns) => NamespaceScope::Named(ns.to_string()),
                    None => NamespaceScope::Any,
                },
                labels: labels.selector,
                kinds: KindFilter::Any,
            })
        }
    }
}

struct CiliumLabels {
    selector: LabelSelector,
    has_reserved: bool,
    /// `reserved:<name>` when the selector is exactly one reserved label.
    reserved_only: Option<String>,
}

/// Strips `k8s:`/`any:` source prefixes and validates keys; notes `reserved:` labels.
fn cilium_labels(raw: &RawSelector, path: &Path) -> Result<CiliumLabels, Invalid> {
    let mut reserved = Vec::new();
    let selector = meta::label_selector_with(raw, path, |key, p| {
        let (source, rest) = match key.split_once(':') {
            Some((s, r)) => (Some(s), r),
            None => (None, key),
        };
        match source {
            None | Some("k8s") | Some("any") => {
                meta::qualified_name(rest, p)?;
                Ok(rest.to_string())
            }
            Some("reserved") => {
                reserved.push(rest.to_string());
                Ok(key.to_string())
            }
            Some(other) => Err(Invalid::unsupported(
                p,
                format!("label source `{other}:` is not supported (use k8s:, any: or no prefix)"),
            )),
        }
    })?;
    let reserved_only = (reserved.len() == 1
        && selector.match_labels.len() == 1
        && selector.match_expressions.is_empty())
    .then(|| reserved[0].clone());
    Ok(CiliumLabels {
        selector,
        has_reserved: !reserved.is_empty(),
        reserved_only,
    })
}

/// A `fromEndpoints`/`toEndpoints` selector.
fn endpoint_peer(raw: &RawSelector, path: &Path, ns: PolicyNamespace<'_>) -> Result<Peer, Invalid> {
    let labels = cilium_labels(raw, path)?;
    if labels.has_reserved {
        return match labels.reserved_only.as_deref() {
            Some("host") => Ok(Peer::Entity(Entity::Host)),
            Some("world") => Ok(Peer::Entity(Entity::World)),
            Some("remote-node") => Ok(Peer::Entity(Entity::RemoteNode)),
            _ => Err(Invalid::unsupported(
                path,
                "reserved: labels are supported only alone, as reserved:host, reserved:world or reserved:remote-node (prefer fromEntities/toEntities)",
            )),
        };
    }
    let selector = labels.selector;
    let names_namespace = selector.match_labels.contains_key(CILIUM_NAMESPACE_LABEL)
        || selector
            .match_expressions
            .iter()
            .any(|e| e.key == CILIUM_NAMESPACE_LABEL);
    let namespaces = match ns {
        Some(ns) if !names_namespace => NamespaceScope::Named(ns.to_string()),
        _ => NamespaceScope::Any,
    };
    Ok(Peer::Endpoints(EndpointSelector {
        namespaces,
        labels: selector,
        kinds: KindFilter::Any,
    }))
}

fn translate_rule(
    g: &Generic<'_>,
    direction: Direction,
    action: Action,
    rp: &Path,
    ns: PolicyNamespace<'_>,
    cx: &mut Cx<'_>,
) -> Result<Rule, Invalid> {
    let deny = action == Action::Drop;
    if deny {
        if let Some(field) = g.deny_only_violation {
            return Err(Invalid::new(
                &rp.key(field),
                ErrorKind::UnknownField,
                format!("unknown field: {field} is not allowed in deny rules"),
            ));
        }
    }
    let mut unenforced: Vec<Unenforced> = Vec::new();

    let peers = if !g.has_peer_field() {
        if g.to_ports.is_empty() && g.icmps.is_empty() {
            Peers::List(Vec::new())
        } else {
            Peers::Any
        }
    } else {
        let mut list = Vec::new();
        let (field, sels) = g.endpoints;
        for (i, sel) in sels.iter().enumerate() {
            list.push(endpoint_peer(sel, &rp.key(field).idx(i), ns)?);
        }
        let (field, cidrs) = g.cidr;
        for (i, c) in cidrs.iter().enumerate() {
            let p = rp.key(field).idx(i);
            list.push(Peer::IpBlock(crate::model::IpBlock {
                cidr: meta::cidr(c, &p, true)?,
                except: Vec::new(),
            }));
        }
        let (field, sets) = g.cidr_set;
        for (i, set) in sets.iter().enumerate() {
            let p = rp.key(field).idx(i);
            if set.cidr_group_ref.is_some() || set.cidr_group_selector.is_some() {
                let f = if set.cidr_group_ref.is_some() {
                    "cidrGroupRef"
                } else {
                    "cidrGroupSelector"
                };
                return Err(Invalid::unsupported(
                    &p.key(f),
                    "CiliumCIDRGroup references are not supported: list the CIDRs",
                ));
            }
            let Some(c) = &set.cidr else {
                return Err(Invalid::missing(
                    &p.key("cidr"),
                    "required field is missing",
                ));
            };
            list.push(Peer::IpBlock(meta::ip_block(
                c,
                set.except.as_deref().unwrap_or_default(),
                &p,
                true,
            )?));
        }
        let (field, entities) = g.entities;
        for (i, e) in entities.iter().enumerate() {
            if let Some(entity) = entity(e, &rp.key(field).idx(i), cx)? {
                list.push(Peer::Entity(entity));
            }
        }
        for (field, values, why) in &g.unenforced_peers {
            if !values.is_empty() {
                cx.unenforced(
                    &mut unenforced,
                    &rp.key(field),
                    (*field).to_string(),
                    &Json::Array(values.to_vec()),
                    why,
                );
            }
        }
        Peers::List(list)
    };

    let (field, requires) = g.requires;
    if !requires.is_empty() {
        cx.unenforced(
            &mut unenforced,
            &rp.key(field),
            field.to_string(),
            &Json::Array(requires.to_vec()),
            "deprecated requirement is not enforced; the rule matches more peers than written",
        );
    }
    if let Some(auth) = g.authentication {
        cx.unenforced(
            &mut unenforced,
            &rp.key("authentication"),
            "authentication".into(),
            auth,
            "mutual authentication is not implemented",
        );
    }

    let mut ports = Vec::new();
    for (j, pr) in g.to_ports.iter().enumerate() {
        let pp = rp.key("toPorts").idx(j);
        for (name, value) in [
            ("rules", &pr.rules),
            ("terminatingTLS", &pr.terminating_tls),
            ("originatingTLS", &pr.originating_tls),
            ("serverNames", &pr.server_names),
            ("listener", &pr.listener),
        ] {
            let Some(v) = value.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            if deny {
                return Err(Invalid::new(
                    &pp.key(name),
                    ErrorKind::UnknownField,
                    format!("unknown field: {name} is not allowed in deny rules"),
                ));
            }
            cx.unenforced(
                &mut unenforced,
                &pp.key(name),
                format!("toPorts[{j}].{name}"),
                v,
                "layer-7 policy is not implemented; the L4 part of the rule is enforced",
            );
        }
        for (k, p) in pr.ports.iter().flatten().enumerate() {
            ports.push(port(p, &pp.key("ports").idx(k))?);
        }
    }
    for (j, icmp) in g.icmps.iter().enumerate() {
        for (k, f) in icmp.fields.iter().flatten().enumerate() {
            ports.push(icmp_field(f, &rp.key("icmps").idx(j).key("fields").idx(k))?);
        }
    }
    Ok(Rule {
        id: RuleId(0),
        name: String::new(),
        direction,
        action,
        peers,
        ports,
        applied_to: None,
        enable_logging: false,
        log_label: None,
        unenforced,
    })
}

fn entity(name: &str, path: &Path, cx: &mut Cx<'_>) -> Result<Option<Entity>, Invalid> {
    Ok(Some(match name {
        "all" => Entity::All,
        "world" => Entity::World,
        "cluster" => Entity::Cluster,
        "host" => Entity::Host,
        "remote-node" => Entity::RemoteNode,
        "none" => return Ok(None),
        "kube-apiserver" | "health" | "init" | "unmanaged" | "ingress" => {
            cx.warn(
                path,
                format!("entity `{name}` has no members in a vdfw deployment; matches nothing"),
            );
            return Ok(None);
        }
        "world-ipv4" | "world-ipv6" => {
            return Err(Invalid::unsupported(
                path,
                format!("entity `{name}` is not supported: use `world`, or toCIDR 0.0.0.0/0 / ::/0"),
            ))
        }
        other => {
            return Err(Invalid::value(
                path,
                format!("unknown entity {other:?}: expected all, world, cluster, host, remote-node, kube-apiserver, health, init, unmanaged, ingress, none"),
            ))
        }
    }))
}

fn port(p: &PortProtocol, pp: &Path) -> Result<PortMatch, Invalid> {
    let protocol = match p.protocol.as_deref() {
        None | Some("ANY") => ProtocolMatch::Any,
        Some("TCP") => ProtocolMatch::Tcp,
        Some("UDP") => ProtocolMatch::Udp,
        Some("SCTP") => ProtocolMatch::Sctp,
        Some(other) => {
            return Err(Invalid::value(
                &pp.key("protocol"),
                format!("unsupported protocol {other:?}: expected TCP, UDP, SCTP or ANY"),
            ))
        }
    };
    // Cilium ports are strings: a number ("0" or empty = every port) or a named port.
    let number = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::Str(s)) if s.is_empty() => None,
        Some(IntOrString::Str(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.parse::<i64>().unwrap_or(i64::MAX))
        }
        Some(IntOrString::Str(name)) => {
            if p.end_port.is_some() {
                return Err(Invalid::conflict(
                    &pp.key("endPort"),
                    "`endPort` cannot be used with a named `port`",
                ));
            }
            return Ok(PortMatch {
                protocol,
                port: Some(PortSpec::Named(meta::port_name(name, &pp.key("port"))?)),
                source_ports: None,
            });
        }
    };
    let port = match number {
        None | Some(0) => {
            if p.end_port.is_some_and(|e| e != 0) {
                return Err(Invalid::missing(
                    &pp.key("port"),
                    "a non-zero `port` is required when `endPort` is set",
                ));
            }
            None
        }
        Some(n) => {
            let start = meta::port_number(n, &pp.key("port"))?;
            let end = match p.end_port {
                None | Some(0) => start,
                Some(e) => {
                    let end = meta::port_number(e, &pp.key("endPort"))?;
                    if end < start {
                        return Err(Invalid::value(
                            &pp.key("endPort"),
                            format!("endPort {end} is less than port {start}"),
                        ));
                    }
                    end
                }
            };
            Some(PortSpec::Range(PortRange { start, end }))
        }
    };
    Ok(PortMatch {
        protocol,
        port,
        source_ports: None,
    })
}

/// Cilium's ICMP type names (pkg/policy/api/icmp.go).
const ICMP_V4_TYPES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

const ICMP_V6_TYPES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

fn icmp_field(f: &IcmpField, path: &Path) -> Result<PortMatch, Invalid> {
    let v6 = match f.family.as_deref() {
        None | Some("IPv4") => false,
        Some("IPv6") => true,
        Some(other) => {
            return Err(Invalid::value(
                &path.key("family"),
                format!("unsupported family {other:?}: expected IPv4 or IPv6"),
            ))
        }
    };
    let tp = path.key("type");
    let out_of_range = |v: &dyn std::fmt::Display| {
        Invalid::value(&tp, format!("ICMP type {v} is out of range 0-255"))
    };
    let icmp_type = match &f.icmp_type {
        IntOrString::Int(n) => u8::try_from(*n).map_err(|_| out_of_range(n))?,
        IntOrString::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u8>().map_err(|_| out_of_range(s))?
        }
        IntOrString::Str(name) => {
            let table = if v6 { ICMP_V6_TYPES } else { ICMP_V4_TYPES };
            table
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    Invalid::value(
                        &tp,
                        format!(
                            "unknown ICMP type {name:?} for {}",
                            if v6 { "IPv6" } else { "IPv4" }
                        ),
                    )
                })?
        }
    };
    Ok(PortMatch {
        protocol: ProtocolMatch::Icmp {
            v6,
            icmp_type: Some(icmp_type),
            icmp_code: None,
        },
        port: None,
        source_ports: None,
    })
}

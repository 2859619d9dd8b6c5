//! `crd.antrea.io` NetworkPolicy (ANNP), ClusterNetworkPolicy (ACNP), Tier, ClusterGroup and
//! Group, validated as Antrea's CRD schemas and admission webhook do.
//!
//! Accepted apiVersions: policies `v1beta1` and the deprecated `v1alpha1`; Tier `v1beta1`,
//! `v1alpha1`; ClusterGroup `v1beta1`, `v1alpha3`, `v1alpha2`; Group `v1beta1`, `v1alpha3`. All
//! are read with the v1beta1 schema, except that the alpha group versions also take the
//! singular `ipBlock` they had.
//!
//! Semantics (see [`crate::model`]):
//! - layer: [`Layer::AntreaTier`] with the tier's priority, or [`Layer::AntreaBaseline`] for
//!   the `baseline` tier; no tier = `application`. Tier names are compared lower-cased.
//!   Custom tiers are resolved after the whole set is read (see [`super`]).
//! - Antrea policies isolate nothing: `isolates` is empty, every rule is explicit.
//! - ACNP: a peer/appliedTo `podSelector` alone selects in every namespace; ANNP: in the
//!   policy's namespace. `namespaces: {match: Self}` (ACNP only) →
//!   [`NamespaceScope::SameAsAppliedTo`]. `externalEntitySelector` → [`KindFilter::VmOnly`].
//!   `group` → a ClusterGroup (ACNP) or a Group of the policy's namespace (ANNP).
//! - Groups: `serviceReference` → [`Group::service`], whose members are the backends of that
//!   Service as the engine knows it (see [`crate::model::Service`]). A ClusterGroup must name
//!   the Service's namespace; a Group's Service is in the Group's namespace.
//! - Kept but not enforced (warned, listed in [`Rule::unenforced`]): `fqdn`, `serviceAccount`
//!   and `nodeSelector` peers (vdfw has no DNS snooping, service accounts or Nodes; such a
//!   peer matches nothing), `toServices`, `l7Protocols`, IGMP type/group. A rule whose every
//!   peer is unenforced matches no peer rather than every peer.
//! - Refused: `serviceAccount`/`service`/`nodeSelector` in `appliedTo` (a policy silently
//!   applied to nothing is worse than an error), `scope: ClusterSet`, `namespaces.sameLabels`.

use std::collections::BTreeSet;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::{ErrorKind, Invalid, Path};
use super::meta::{self, Cx, IntOrString, ObjectMeta, RawSelector};
use super::yaml::Node;
use super::{ruleid, TierRef, Translated};
use crate::model::{
    Action, AppliedTo, Direction, EndpointSelector, Group, GroupKey, KindFilter, LabelSelector,
    Layer, NamespaceScope, Object, Peer, Peers, Policy, PolicyKey, PolicyKind, PortMatch,
    PortRange, ProtocolMatch, Rule, RuleId, ServiceKey, Tier, Unenforced, ANTREA_STATIC_TIERS,
};

/// Tier priorities Antrea reserves (besides the static tiers' own).
const RESERVED_TIER_PRIORITIES: [u32; 4] = [251, 252, 254, 255];
const DEFAULT_TIER: &str = "application";
const BASELINE_TIER: &str = "baseline";

/// The priority of a static tier.
pub(crate) fn static_tier_priority(name: &str) -> Option<u32> {
    ANTREA_STATIC_TIERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}

// ---------------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDoc {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: ObjectMeta,
    spec: PolicySpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicySpec {
    #[serde(default)]
    tier: Option<String>,
    priority: f64,
    #[serde(default)]
    applied_to: Option<Vec<RawAppliedTo>>,
    #[serde(default)]
    ingress: Option<Vec<RawRule>>,
    #[serde(default)]
    egress: Option<Vec<RawRule>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum RawAction {
    Allow,
    Drop,
    Reject,
    Pass,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    action: RawAction,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
    #[serde(default)]
    protocols: Option<Vec<RawProtocol>>,
    #[serde(default)]
    l7_protocols: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    from: Option<Vec<RawPeer>>,
    #[serde(default)]
    to: Option<Vec<RawPeer>>,
    #[serde(default)]
    to_services: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    enable_logging: Option<bool>,
    #[serde(default)]
    log_label: Option<String>,
    #[serde(default)]
    applied_to: Option<Vec<RawAppliedTo>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<IntOrString>,
    #[serde(default)]
    end_port: Option<i64>,
    #[serde(default)]
    source_port: Option<i64>,
    #[serde(default)]
    source_end_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    #[serde(default)]
    icmp: Option<RawIcmp>,
    #[serde(default)]
    igmp: Option<RawIgmp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIcmp {
    #[serde(default)]
    icmp_type: Option<i64>,
    #[serde(default)]
    icmp_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIgmp {
    #[serde(default)]
    igmp_type: Option<i64>,
    #[serde(default)]
    group_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeer {
    #[serde(default)]
    ip_block: Option<RawIpBlock>,
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
    #[serde(default)]
    namespaces: Option<RawPeerNamespaces>,
    #[serde(default)]
    external_entity_selector: Option<RawSelector>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    fqdn: Option<String>,
    #[serde(default)]
    service_account: Option<serde_json::Value>,
    #[serde(default)]
    node_selector: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpBlock {
    cidr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPeerNamespaces {
    #[serde(default, rename = "match")]
    match_: Option<String>,
    #[serde(default)]
    same_labels: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAppliedTo {
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
    #[serde(default)]
    external_entity_selector: Option<RawSelector>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    service_account: Option<IgnoredAny>,
    #[serde(default)]
    service: Option<IgnoredAny>,
    #[serde(default)]
    node_selector: Option<IgnoredAny>,
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// Whether the policy is cluster-scoped (ACNP) or lives in a namespace (ANNP).
#[derive(Clone, Copy)]
enum Scope<'a> {
    Cluster,
    Namespace(&'a str),
}

impl Scope<'_> {
    fn group_key(self, name: &str) -> GroupKey {
        GroupKey {
            namespace: match self {
                Scope::Cluster => None,
                Scope::Namespace(ns) => Some(ns.to_string()),
            },
            name: name.to_string(),
        }
    }

    /// Where a bare pod/externalEntity selector looks.
    fn default_namespaces(self) -> NamespaceScope {
        match self {
            Scope::Cluster => NamespaceScope::Any,
            Scope::Namespace(ns) => NamespaceScope::Named(ns.to_string()),
        }
    }
}

pub(crate) fn translate_policy(
    node: &Node,
    base: &Path,
    cx: &mut Cx<'_>,
    cluster: bool,
) -> Result<Translated, Invalid> {
    let doc: PolicyDoc = super::de::from_node(node, base)?;
    let meta = meta::meta(&doc.metadata, !cluster, base, cx)?;
    let sp = base.key("spec");
    let spec = doc.spec;
    let scope = match &meta.namespace {
        Some(ns) => Scope::Namespace(ns),
        None => Scope::Cluster,
    };

    if !(1.0..=10000.0).contains(&spec.priority) {
        return Err(Invalid::value(
            &sp.key("priority"),
            format!("priority {} is out of range 1-10000", spec.priority),
        ));
    }
    let tier = spec
        .tier
        .as_deref()
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TIER)
        .to_ascii_lowercase();
    let mut tier_ref = None;
    let layer = if tier == BASELINE_TIER {
        Layer::AntreaBaseline {
            policy_priority: spec.priority,
        }
    } else {
        let tier_priority = match static_tier_priority(&tier) {
            Some(p) => p,
            None => {
                tier_ref = Some(TierRef {
                    name: tier.clone(),
                    path: sp.key("tier"),
                });
                // Placeholder, replaced when the set's tiers are resolved.
                0
            }
        };
        Layer::AntreaTier {
            tier: tier.clone(),
            tier_priority,
            policy_priority: spec.priority,
        }
    };

    // appliedTo: in the spec or in every rule, never both (Antrea's validateAppliedTo).
    let spec_applied = spec.applied_to.as_ref().is_some_and(|a| !a.is_empty());
    let rule_lists: [(Direction, &str, &[RawRule]); 2] = [
        (
            Direction::Ingress,
            "ingress",
            spec.ingress.as_deref().unwrap_or_default(),
        ),
        (
            Direction::Egress,
            "egress",
            spec.egress.as_deref().unwrap_or_default(),
        ),
    ];
    let mut with_rule_applied = Vec::new();
    let mut without_rule_applied = Vec::new();
    for (_, field, rules) in &rule_lists {
        for (i, r) in rules.iter().enumerate() {
            let p = sp.key(field).idx(i);
            if r.applied_to.as_ref().is_some_and(|a| !a.is_empty()) {
                with_rule_applied.push(p.key("appliedTo"));
            } else {
                without_rule_applied.push(p);
            }
        }
    }
    if spec_applied {
        if let Some(p) = with_rule_applied.first() {
            return Err(Invalid::conflict(
                p,
                "appliedTo cannot be set both in the spec and in rules",
            ));
        }
    } else if with_rule_applied.is_empty() {
        return Err(Invalid::missing(
            &sp.key("appliedTo"),
            "appliedTo must be set in the spec or in every rule",
        ));
    } else if let Some(p) = without_rule_applied.first() {
        return Err(Invalid::missing(
            &p.key("appliedTo"),
            "appliedTo must be set in every rule or in none (it is set in other rules)",
        ));
    }
    let applied_to = applied_to_list(
        spec.applied_to.as_deref().unwrap_or_default(),
        &sp.key("appliedTo"),
        scope,
    )?;

    let kind = if cluster {
        PolicyKind::AntreaClusterNetworkPolicy
    } else {
        PolicyKind::AntreaNetworkPolicy
    };
    let key = PolicyKey {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };

    let mut rules = Vec::new();
    let mut explicit = Vec::new();
    let mut names = BTreeSet::new();
    for (direction, field, list) in rule_lists {
        for (i, raw) in list.iter().enumerate() {
            let rp = sp.key(field).idx(i);
            if let Some(name) = raw.name.as_deref().filter(|n| !n.is_empty()) {
                if !names.insert(name.to_string()) {
                    return Err(Invalid::new(
                        &rp.key("name"),
                        ErrorKind::Duplicate,
                        format!("rule name {name:?} is used twice in this policy"),
                    ));
                }
            }
            let rule = translate_rule(raw, direction, field, i, &rp, scope, &tier, cx)?;
            explicit.push(raw.name.as_deref().is_some_and(|n| !n.is_empty()));
            rules.push(rule);
        }
    }
    ruleid::assign(&key, &mut rules, &explicit);

    Ok(Translated {
        object: Object::Policy(Policy {
            key,
            layer,
            applied_to,
            isolates: Vec::new(),
            subject_isolation: Vec::new(),
            rules,
            audit: meta.audit,
            source: cx.source.clone(),
        }),
        tier_ref,
    })
}

#[allow(clippy::too_many_arguments)]
fn translate_rule(
    raw: &RawRule,
    direction: Direction,
    field: &str,
    index: usize,
    rp: &Path,
    scope: Scope<'_>,
    tier: &str,
    cx: &mut Cx<'_>,
) -> Result<Rule, Invalid> {
    let action = match raw.action {
        RawAction::Allow => Action::Allow,
        RawAction::Drop => Action::Drop,
        RawAction::Reject => Action::Reject,
        RawAction::Pass => Action::Pass,
    };
    if action == Action::Pass && tier == BASELINE_TIER {
        return Err(Invalid::value(
            &rp.key("action"),
            "Pass is not allowed in baseline tier policies",
        ));
    }
    let (peer_field, wrong_field, wrong) = match direction {
        Direction::Ingress => ("from", "to", &raw.to),
        Direction::Egress => ("to", "from", &raw.from),
    };
    if wrong.as_ref().is_some_and(|w| !w.is_empty()) {
        return Err(Invalid::value(
            &rp.key(wrong_field),
            format!("{field} rules select peers with `{peer_field}`, not `{wrong_field}`"),
        ));
    }
    let raw_peers = match direction {
        Direction::Ingress => raw.from.as_deref(),
        Direction::Egress => raw.to.as_deref(),
    }
    .unwrap_or_default();

    let mut unenforced = Vec::new();
    let ports_given = raw.ports.as_ref().is_some_and(|p| !p.is_empty());
    let protocols_given = raw.protocols.as_ref().is_some_and(|p| !p.is_empty());

    let mut peers = if raw_peers.is_empty() {
        Peers::Any
    } else {
        let mut list = Vec::new();
        for (i, p) in raw_peers.iter().enumerate() {
            let pp = rp.key(peer_field).idx(i);
            let rel = format!("{peer_field}[{i}]");
            if let Some(peer) = peer(p, &pp, &rel, scope, direction, &mut unenforced, cx)? {
                list.push(peer);
            }
        }
        Peers::List(list)
    };

    if let Some(services) = raw.to_services.as_ref().filter(|s| !s.is_empty()) {
        let sp = rp.key("toServices");
        if direction == Direction::Ingress {
            return Err(Invalid::value(
                &sp,
                "toServices is only valid in egress rules",
            ));
        }
        if !raw_peers.is_empty() || ports_given || protocols_given {
            return Err(Invalid::conflict(
                &sp,
                "toServices cannot be used with `to`, `ports` or `protocols`",
            ));
        }
        cx.unenforced(
            &mut unenforced,
            &sp,
            "toServices".into(),
            &serde_json::Value::Array(services.clone()),
            "vdfw has no Services; this rule matches no destination",
        );
        peers = Peers::List(Vec::new());
    }

    let mut ports = Vec::new();
    for (i, p) in raw.ports.iter().flatten().enumerate() {
        ports.push(port(p, &rp.key("ports").idx(i))?);
    }
    let mut has_igmp = false;
    let mut has_icmp = false;
    for (i, proto) in raw.protocols.iter().flatten().enumerate() {
        let pp = rp.key("protocols").idx(i);
        match (&proto.icmp, &proto.igmp) {
            (Some(icmp), None) => {
                has_icmp = true;
                let byte = |v: Option<i64>, name: &str| -> Result<Option<u8>, Invalid> {
                    v.map(|v| {
                        u8::try_from(v).map_err(|_| {
                            Invalid::value(
                                &pp.key("icmp").key(name),
                                format!("{v} is out of range 0-255"),
                            )
                        })
                    })
                    .transpose()
                };
                ports.push(PortMatch {
                    protocol: ProtocolMatch::Icmp {
                        v6: false,
                        icmp_type: byte(icmp.icmp_type, "icmpType")?,
                        icmp_code: byte(icmp.icmp_code, "icmpCode")?,
                    },
                    port: None,
                    source_ports: None,
                });
            }
            (None, Some(igmp)) => {
                has_igmp = true;
                if let Some(group) = &igmp.group_address {
                    let ip: std::net::IpAddr = group.parse().map_err(|_| {
                        Invalid::value(
                            &pp.key("igmp").key("groupAddress"),
                            format!("{group:?} is not an IP address"),
                        )
                    })?;
                    if !ip.is_multicast() {
                        return Err(Invalid::value(
                            &pp.key("igmp").key("groupAddress"),
                            format!("{ip} is not a multicast address"),
                        ));
                    }
                }
                if igmp.igmp_type.is_some() || igmp.group_address.is_some() {
                    let value = serde_json::json!({
                        "igmpType": igmp.igmp_type,
                        "groupAddress": igmp.group_address,
                    });
                    cx.unenforced(
                        &mut unenforced,
                        &pp.key("igmp"),
                        format!("protocols[{i}].igmp"),
                        &value,
                        "IGMP type and group address are not matched; the rule applies to all IGMP",
                    );
                }
                ports.push(PortMatch {
                    protocol: ProtocolMatch::Number(2),
                    port: None,
                    source_ports: None,
                });
            }
            _ => {
                return Err(Invalid::value(
                    &pp,
                    "a protocols entry must set exactly one of icmp, igmp",
                ))
            }
        }
    }
    if has_igmp {
        if ports_given || has_icmp || !raw_peers.is_empty() {
            return Err(Invalid::conflict(
                &rp.key("protocols"),
                "IGMP cannot be combined with other protocols, ports, from or to",
            ));
        }
        if matches!(action, Action::Pass | Action::Reject) {
            return Err(Invalid::value(
                &rp.key("action"),
                "IGMP rules support only Allow and Drop",
            ));
        }
    }

    if let Some(l7) = raw.l7_protocols.as_ref().filter(|l| !l.is_empty()) {
        if action != Action::Allow {
            return Err(Invalid::value(
                &rp.key("action"),
                "rules with l7Protocols support only Allow",
            ));
        }
        cx.unenforced(
            &mut unenforced,
            &rp.key("l7Protocols"),
            "l7Protocols".into(),
            &serde_json::Value::Array(l7.clone()),
            "layer-7 matching is not implemented; the rule allows all matching L3/L4 traffic",
        );
    }

    let applied_to = match raw.applied_to.as_deref() {
        Some(list) if !list.is_empty() => Some(applied_to_list(list, &rp.key("appliedTo"), scope)?),
        _ => None,
    };
    let log_label = match raw.log_label.as_deref() {
        Some(l) if !l.is_empty() => Some(meta::log_label(l, &rp.key("logLabel"))?),
        _ => None,
    };
    Ok(Rule {
        id: RuleId(0),
        name: match raw.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{field}-{index}"),
        },
        direction,
        action,
        peers,
        ports,
        applied_to,
        enable_logging: raw.enable_logging.unwrap_or(false),
        log_label,
        unenforced,
    })
}

fn port(p: &RawPort, pp: &Path) -> Result<PortMatch, Invalid> {
    let source_ports = match (p.source_port, p.source_end_port) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(Invalid::missing(
                &pp.key("sourcePort"),
                "`sourcePort` is required when `sourceEndPort` is set",
            ))
        }
        (Some(s), e) => {
            let start = meta::port_number(s, &pp.key("sourcePort"))?;
            let end = match e {
                None => start,
                Some(e) => {
                    let end = meta::port_number(e, &pp.key("sourceEndPort"))?;
                    if end < start {
                        return Err(Invalid::value(
                            &pp.key("sourceEndPort"),
                            format!("sourceEndPort {end} is less than sourcePort {start}"),
                        ));
                    }
                    end
                }
            };
            Some(PortRange { start, end })
        }
    };
    Ok(PortMatch {
        protocol: meta::l4_protocol(p.protocol.as_deref(), &pp.key("protocol"))?,
        port: meta::k8s_port_spec(p.port.as_ref(), p.end_port, pp)?,
        source_ports,
    })
}

/// A label selector plus the namespace scope and kinds it selects in.
fn endpoint_selector(
    pod: Option<&RawSelector>,
    external: Option<&RawSelector>,
    namespaces: NamespaceScope,
    path: &Path,
) -> Result<EndpointSelector, Invalid> {
    let (labels, kinds) = match (pod, external) {
        (Some(_), Some(_)) => {
            return Err(Invalid::conflict(
                &path.key("externalEntitySelector"),
                "podSelector and externalEntitySelector cannot be combined",
            ))
        }
        (Some(p), None) => (
            meta::label_selector(p, &path.key("podSelector"))?,
            KindFilter::Any,
        ),
        (None, Some(e)) => (
            meta::label_selector(e, &path.key("externalEntitySelector"))?,
            KindFilter::VmOnly,
        ),
        (None, None) => (LabelSelector::everything(), KindFilter::Any),
    };
    Ok(EndpointSelector {
        namespaces,
        labels,
        kinds,
    })
}

fn peer(
    raw: &RawPeer,
    pp: &Path,
    rel: &str,
    scope: Scope<'_>,
    direction: Direction,
    unenforced: &mut Vec<Unenforced>,
    cx: &mut Cx<'_>,
) -> Result<Option<Peer>, Invalid> {
    let set: Vec<&str> = [
        ("ipBlock", raw.ip_block.is_some()),
        ("podSelector", raw.pod_selector.is_some()),
        ("namespaceSelector", raw.namespace_selector.is_some()),
        ("namespaces", raw.namespaces.is_some()),
        (
            "externalEntitySelector",
            raw.external_entity_selector.is_some(),
        ),
        ("group", raw.group.is_some()),
        ("fqdn", raw.fqdn.is_some()),
        ("serviceAccount", raw.service_account.is_some()),
        ("nodeSelector", raw.node_selector.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    let Some(first) = set.first() else {
        return Err(Invalid::missing(
            pp,
            "a peer must set one of ipBlock, podSelector, namespaceSelector, namespaces, externalEntitySelector, group, fqdn, serviceAccount, nodeSelector",
        ));
    };
    for standalone in ["ipBlock", "group", "fqdn", "serviceAccount", "nodeSelector"] {
        if set.len() > 1 && set.contains(&standalone) {
            return Err(Invalid::conflict(
                &pp.key(standalone),
                format!("{standalone} cannot be combined with other fields in a peer"),
            ));
        }
    }
    if raw.namespaces.is_some() && raw.namespace_selector.is_some() {
        return Err(Invalid::conflict(
            &pp.key("namespaces"),
            "namespaces and namespaceSelector cannot be combined",
        ));
    }
    match raw.scope.as_deref() {
        None | Some("Cluster") => {}
        Some("ClusterSet") => {
            return Err(Invalid::unsupported(
                &pp.key("scope"),
                "scope ClusterSet (multi-cluster) is not supported",
            ))
        }
        Some(other) => {
            return Err(Invalid::value(
                &pp.key("scope"),
                format!("unsupported scope {other:?}: expected Cluster"),
            ))
        }
    }

    match *first {
        "ipBlock" => {
            let cidr = raw
                .ip_block
                .as_ref()
                .map(|b| b.cidr.as_str())
                .unwrap_or_default();
            return Ok(Some(Peer::IpBlock(meta::ip_block(
                cidr,
                &[],
                &pp.key("ipBlock"),
                false,
            )?)));
        }
        "group" => {
            let name = raw.group.as_deref().unwrap_or_default();
            meta::dns_subdomain(name, &pp.key("group"))?;
            return Ok(Some(Peer::Group(scope.group_key(name))));
        }
        "fqdn" => {
            let fqdn = raw.fqdn.as_deref().unwrap_or_default();
            let fp = pp.key("fqdn");
            if direction == Direction::Ingress {
                return Err(Invalid::value(&fp, "fqdn is only valid in egress rules"));
            }
            if fqdn.is_empty()
                || !fqdn
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'))
            {
                return Err(Invalid::value(
                    &fp,
                    format!("{fqdn:?} is not a valid FQDN pattern"),
                ));
            }
            cx.unenforced(
                unenforced,
                &fp,
                format!("{rel}.fqdn"),
                &serde_json::Value::String(fqdn.to_string()),
                "FQDN peers need DNS snooping, which vdfw does not do; this peer matches nothing",
            );
            return Ok(None);
        }
        "serviceAccount" | "nodeSelector" => {
            let (value, why) = if *first == "serviceAccount" {
                (
                    raw.service_account.clone(),
                    "VMs have no service accounts; this peer matches nothing",
                )
            } else {
                (
                    raw.node_selector.clone(),
                    "vdfw has no Node inventory; this peer matches nothing",
                )
            };
            cx.unenforced(
                unenforced,
                &pp.key(first),
                format!("{rel}.{first}"),
                &value.unwrap_or_default(),
                why,
            );
            return Ok(None);
        }
        _ => {}
    }

    let namespaces = if let Some(ns) = &raw.namespaces {
        let np = pp.key("namespaces");
        if matches!(scope, Scope::Namespace(_)) {
            return Err(Invalid::value(
                &np,
                "namespaces can only be used in ClusterNetworkPolicy peers",
            ));
        }
        if ns.same_labels.is_some() {
            return Err(Invalid::unsupported(
                &np.key("sameLabels"),
                "namespaces.sameLabels is not supported",
            ));
        }
        match ns.match_.as_deref() {
            Some("Self") => NamespaceScope::SameAsAppliedTo,
            Some(other) => {
                return Err(Invalid::value(
                    &np.key("match"),
                    format!("unsupported value {other:?}: expected Self"),
                ))
            }
            None => {
                return Err(Invalid::missing(
                    &np.key("match"),
                    "required field is missing",
                ))
            }
        }
    } else if let Some(sel) = &raw.namespace_selector {
        NamespaceScope::Selector(meta::label_selector(sel, &pp.key("namespaceSelector"))?)
    } else {
        scope.default_namespaces()
    };
    Ok(Some(Peer::Endpoints(endpoint_selector(
        raw.pod_selector.as_ref(),
        raw.external_entity_selector.as_ref(),
        namespaces,
        pp,
    )?)))
}

fn applied_to_list(
    list: &[RawAppliedTo],
    path: &Path,
    scope: Scope<'_>,
) -> Result<Vec<AppliedTo>, Invalid> {
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let ap = path.idx(i);
        for (name, present) in [
            ("serviceAccount", a.service_account.is_some()),
            ("service", a.service.is_some()),
            ("nodeSelector", a.node_selector.is_some()),
        ] {
            if present {
                return Err(Invalid::unsupported(
                    &ap.key(name),
                    format!("appliedTo {name} is not supported: vdfw enforces on VM and pod endpoints only"),
                ));
            }
        }
        if let Some(group) = &a.group {
            if a.pod_selector.is_some()
                || a.namespace_selector.is_some()
                || a.external_entity_selector.is_some()
            {
                return Err(Invalid::conflict(
                    &ap.key("group"),
                    "group cannot be combined with other fields in appliedTo",
                ));
            }
            meta::dns_subdomain(group, &ap.key("group"))?;
            out.push(AppliedTo::Group(scope.group_key(group)));
            continue;
        }
        if a.pod_selector.is_none()
            && a.namespace_selector.is_none()
            && a.external_entity_selector.is_none()
        {
            return Err(Invalid::missing(
                &ap,
                "appliedTo must set podSelector, namespaceSelector, externalEntitySelector or group",
            ));
        }
        let namespaces = match (&a.namespace_selector, scope) {
            (Some(_), Scope::Namespace(_)) => return Err(Invalid::unsupported(
                &ap.key("namespaceSelector"),
                "namespaceSelector cannot be used in the appliedTo of a namespaced NetworkPolicy",
            )),
            (Some(sel), Scope::Cluster) => {
                NamespaceScope::Selector(meta::label_selector(sel, &ap.key("namespaceSelector"))?)
            }
            (None, _) => scope.default_namespaces(),
        };
        out.push(AppliedTo::Endpoints(endpoint_selector(
            a.pod_selector.as_ref(),
            a.external_entity_selector.as_ref(),
            namespaces,
            &ap,
        )?));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Tiers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TierDoc {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: ObjectMeta,
    spec: TierSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSpec {
    priority: i64,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// `None` when the document re-declares a static tier unchanged (as `kubectl get tiers -o
/// yaml` output does): nothing to add.
pub(crate) fn translate_tier(
    node: &Node,
    base: &Path,
    cx: &mut Cx<'_>,
) -> Result<Option<Translated>, Invalid> {
    let doc: TierDoc = super::de::from_node(node, base)?;
    let meta = meta::meta(&doc.metadata, false, base, cx)?;
    let pp = base.key("spec").key("priority");
    let priority = u32::try_from(doc.spec.priority)
        .ok()
        .filter(|p| *p <= 255)
        .ok_or_else(|| {
            Invalid::value(
                &pp,
                format!("tier priority {} is out of range 0-255", doc.spec.priority),
            )
        })?;
    if let Some(static_priority) = static_tier_priority(&meta.name) {
        if static_priority == priority {
            cx.warn(
                &base.key("metadata").key("name"),
                "static tier re-declared with its built-in priority; ignored",
            );
            return Ok(None);
        }
        return Err(Invalid::value(
            &pp,
            format!(
                "{} is a static tier with priority {static_priority}; its priority cannot be changed",
                meta.name
            ),
        ));
    }
    if RESERVED_TIER_PRIORITIES.contains(&priority) {
        return Err(Invalid::value(
            &pp,
            format!("tier priority {priority} is reserved"),
        ));
    }
    if let Some((name, _)) = ANTREA_STATIC_TIERS.iter().find(|(_, p)| *p == priority) {
        return Err(Invalid::conflict(
            &pp,
            format!("tier priority {priority} overlaps with static tier {name}"),
        ));
    }
    Ok(Some(Translated {
        object: Object::Tier(Tier {
            name: meta.name,
            priority,
            source: cx.source.clone(),
        }),
        tier_ref: None,
    }))
}

// ---------------------------------------------------------------------------------------------
// ClusterGroup / Group
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupDoc {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<GroupSpec>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupSpec {
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
    #[serde(default)]
    ip_blocks: Option<Vec<RawIpBlock>>,
    #[serde(default)]
    ip_block: Option<RawIpBlock>,
    #[serde(default)]
    service_reference: Option<RawServiceReference>,
    #[serde(default)]
    external_entity_selector: Option<RawSelector>,
    #[serde(default)]
    child_groups: Option<Vec<String>>,
}

/// `serviceReference: {name, namespace}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceReference {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

pub(crate) fn translate_group(
    node: &Node,
    base: &Path,
    cx: &mut Cx<'_>,
    cluster: bool,
    api_version: &str,
) -> Result<Translated, Invalid> {
    let doc: GroupDoc = super::de::from_node(node, base)?;
    let meta = meta::meta(&doc.metadata, !cluster, base, cx)?;
    let sp = base.key("spec");
    let spec = doc.spec.unwrap_or_default();
    let scope = match &meta.namespace {
        Some(ns) => Scope::Namespace(ns),
        None => Scope::Cluster,
    };

    if spec.ip_block.is_some() && api_version.ends_with("/v1beta1") {
        return Err(Invalid::new(
            &sp.key("ipBlock"),
            ErrorKind::UnknownField,
            "unknown field: crd.antrea.io/v1beta1 groups use `ipBlocks`",
        ));
    }
    // Antrea's validateAntreaGroupSpec: at most two fields, and two only as
    // namespaceSelector + podSelector/externalEntitySelector.
    let set: Vec<&str> = [
        ("podSelector", spec.pod_selector.is_some()),
        ("namespaceSelector", spec.namespace_selector.is_some()),
        ("ipBlocks", spec.ip_blocks.is_some()),
        ("ipBlock", spec.ip_block.is_some()),
        ("serviceReference", spec.service_reference.is_some()),
        (
            "externalEntitySelector",
            spec.external_entity_selector.is_some(),
        ),
        ("childGroups", spec.child_groups.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, p)| p.then_some(n))
    .collect();
    let selector_pair = set.len() == 2
        && spec.namespace_selector.is_some()
        && (spec.pod_selector.is_some() || spec.external_entity_selector.is_some());
    if set.len() > 2 || (set.len() == 2 && !selector_pair) {
        return Err(Invalid::conflict(
            &sp.key(set[1]),
            format!(
                "{} cannot be combined: a group sets one of podSelector, externalEntitySelector, serviceReference, ipBlocks or childGroups (selectors optionally with namespaceSelector)",
                set.join(" and ")
            ),
        ));
    }

    let key = scope.group_key(&meta.name);
    let mut ip_blocks = Vec::new();
    if let Some(b) = &spec.ip_block {
        ip_blocks.push(meta::ip_block(&b.cidr, &[], &sp.key("ipBlock"), false)?);
    }
    for (i, b) in spec.ip_blocks.iter().flatten().enumerate() {
        ip_blocks.push(meta::ip_block(
            &b.cidr,
            &[],
            &sp.key("ipBlocks").idx(i),
            false,
        )?);
    }
    let mut child_groups = Vec::new();
    for (i, c) in spec.child_groups.iter().flatten().enumerate() {
        meta::dns_subdomain(c, &sp.key("childGroups").idx(i))?;
        child_groups.push(scope.group_key(c));
    }
    // Antrea: a Group's Service lives in the Group's namespace; a ClusterGroup names it.
    let service = match &spec.service_reference {
        None => None,
        Some(r) => {
            let rp = sp.key("serviceReference");
            meta::dns_label(&r.name, &rp.key("name"))?;
            let namespace = match (scope, r.namespace.as_deref().filter(|n| !n.is_empty())) {
                (Scope::Cluster, None) => {
                    return Err(Invalid::missing(
                        &rp.key("namespace"),
                        "a ClusterGroup's serviceReference must name the Service's namespace",
                    ))
                }
                (Scope::Cluster, Some(n)) => n.to_string(),
                (Scope::Namespace(own), None) => own.to_string(),
                (Scope::Namespace(own), Some(n)) if n == own => own.to_string(),
                (Scope::Namespace(own), Some(n)) => {
                    return Err(Invalid::conflict(
                        &rp.key("namespace"),
                        format!("a Group in namespace {own} can only reference Services of its own namespace, not {n}"),
                    ))
                }
            };
            meta::dns_label(&namespace, &rp.key("namespace"))?;
            Some(ServiceKey {
                namespace,
                name: r.name.clone(),
            })
        }
    };
    let selector = if spec.pod_selector.is_some()
        || spec.namespace_selector.is_some()
        || spec.external_entity_selector.is_some()
    {
        let namespaces = match &spec.namespace_selector {
            Some(sel) => {
                NamespaceScope::Selector(meta::label_selector(sel, &sp.key("namespaceSelector"))?)
            }
            None => scope.default_namespaces(),
        };
        Some(endpoint_selector(
            spec.pod_selector.as_ref(),
            spec.external_entity_selector.as_ref(),
            namespaces,
            &sp,
        )?)
    } else {
        None
    };
    Ok(Translated {
        object: Object::Group(Group {
            key,
            selector,
            ip_blocks,
            child_groups,
            service,
            source: cx.source.clone(),
        }),
        tier_ref: None,
    })
}

//! `networking.k8s.io/v1` NetworkPolicy.
//!
//! Semantics kept explicit in the output (see [`crate::model`]):
//! - layer [`Layer::Kubernetes`], every rule [`Action::Allow`], `isolates` = `policyTypes`
//!   (default `[Ingress]`, plus `Egress` when there is at least one egress rule);
//! - `podSelector` picks endpoints (VMs and pods alike) of the policy's namespace;
//! - a rule's missing *or empty* `from`/`to` is [`Peers::Any`]; peers are ORed;
//! - peer `podSelector` alone = the policy's namespace, `namespaceSelector` alone = every
//!   endpoint of the selected namespaces, both = AND; `ipBlock` stands alone;
//! - ports: protocol TCP by default, `port` numeric or named, `endPort >= port`.
//!
//! Rules of a direction missing from an explicit `policyTypes` have no effect upstream; they
//! are dropped with a warning.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::{Invalid, Path};
use super::meta::{self, Cx, IntOrString, ObjectMeta, RawSelector};
use super::ruleid;
use crate::model::{
    Action, AppliedTo, Direction, EndpointSelector, KindFilter, Layer, NamespaceScope, Object,
    Peer, Peers, Policy, PolicyKey, PolicyKind, PortMatch, Rule, RuleId,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkPolicy {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: ObjectMeta,
    /// Optional upstream: a NetworkPolicy without a spec isolates ingress of the whole
    /// namespace.
    #[serde(default)]
    spec: Option<Spec>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressRule {
    #[serde(default)]
    from: Option<Vec<K8sPeer>>,
    #[serde(default)]
    ports: Option<Vec<K8sPort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRule {
    #[serde(default)]
    to: Option<Vec<K8sPeer>>,
    #[serde(default)]
    ports: Option<Vec<K8sPort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sPeer {
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
    #[serde(default)]
    ip_block: Option<K8sIpBlock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sIpBlock {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sPort {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<IntOrString>,
    #[serde(default)]
    end_port: Option<i64>,
}

pub(crate) fn translate(
    node: &super::yaml::Node,
    base: &Path,
    cx: &mut Cx<'_>,
) -> Result<Object, Invalid> {
    let np: NetworkPolicy = super::de::from_node(node, base)?;
    let meta = meta::meta(&np.metadata, true, base, cx)?;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let spec = np.spec.unwrap_or_default();
    let sp = base.key("spec");

    let pod_selector = match &spec.pod_selector {
        Some(raw) => meta::label_selector(raw, &sp.key("podSelector"))?,
        None => Default::default(),
    };
    let applied_to = vec![AppliedTo::Endpoints(EndpointSelector {
        namespaces: NamespaceScope::Named(namespace.clone()),
        labels: pod_selector,
        kinds: KindFilter::Any,
    })];

    // Defaulting as the API server does it (SetDefaults_NetworkPolicy): an absent or empty
    // policyTypes means Ingress, plus Egress when there is at least one egress rule.
    let isolates = match spec.policy_types.as_deref() {
        None | Some([]) => {
            let mut d = vec![Direction::Ingress];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                d.push(Direction::Egress);
            }
            d
        }
        Some(types) => {
            let mut d = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let dir = match t.as_str() {
                    "Ingress" => Direction::Ingress,
                    "Egress" => Direction::Egress,
                    other => {
                        return Err(Invalid::value(
                            &sp.key("policyTypes").idx(i),
                            format!(
                                "unsupported policy type {other:?}: expected Ingress or Egress"
                            ),
                        ))
                    }
                };
                if d.contains(&dir) {
                    return Err(Invalid::conflict(
                        &sp.key("policyTypes").idx(i),
                        format!("{t} is listed twice"),
                    ));
                }
                d.push(dir);
            }
            d
        }
    };

    let key = PolicyKey {
        kind: PolicyKind::KubernetesNetworkPolicy,
        namespace: Some(namespace.clone()),
        name: meta.name.clone(),
    };
    let mut rules = Vec::new();
    let directions = [
        (
            Direction::Ingress,
            "ingress",
            "from",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect::<Vec<_>>(),
        ),
        (
            Direction::Egress,
            "egress",
            "to",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect::<Vec<_>>(),
        ),
    ];
    for (direction, field, peer_field, list) in directions {
        if !list.is_empty() && !isolates.contains(&direction) {
            cx.warn(
                &sp.key(field),
                format!("ignored: policyTypes does not include {direction:?}"),
            );
            continue;
        }
        for (i, (peers, ports)) in list.into_iter().enumerate() {
            let rp = sp.key(field).idx(i);
            rules.push(Rule {
                id: RuleId(0),
                name: format!("{field}-{i}"),
                direction,
                action: Action::Allow,
                peers: peers_of(peers, &rp.key(peer_field), &namespace)?,
                ports: ports_of(ports, &rp.key("ports"))?,
                applied_to: None,
                enable_logging: false,
                log_label: None,
                unenforced: Vec::new(),
            });
        }
    }
    let explicit = vec![false; rules.len()];
    ruleid::assign(&key, &mut rules, &explicit);

    Ok(Object::Policy(Policy {
        key,
        layer: Layer::Kubernetes,
        applied_to,
        isolates,
        subject_isolation: Vec::new(),
        rules,
        audit: meta.audit,
        source: cx.source.clone(),
    }))
}

fn peers_of(peers: Option<&[K8sPeer]>, path: &Path, namespace: &str) -> Result<Peers, Invalid> {
    let peers = match peers {
        None | Some([]) => return Ok(Peers::Any),
        Some(p) => p,
    };
    let mut out = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let pp = path.idx(i);
        if let Some(block) = &peer.ip_block {
            if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                return Err(Invalid::conflict(
                    &pp.key("ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ));
            }
            let except = block.except.clone().unwrap_or_default();
            out.push(Peer::IpBlock(meta::ip_block(
                &block.cidr,
                &except,
                &pp.key("ipBlock"),
                false,
            )?));
            continue;
        }
        let namespaces = match &peer.namespace_selector {
            Some(raw) => {
                NamespaceScope::Selector(meta::label_selector(raw, &pp.key("namespaceSelector"))?)
            }
            None => NamespaceScope::Named(namespace.to_string()),
        };
        let labels = match &peer.pod_selector {
            Some(raw) => meta::label_selector(raw, &pp.key("podSelector"))?,
            None if peer.namespace_selector.is_some() => Default::default(),
            None => {
                return Err(Invalid::missing(
                    &pp,
                    "a peer must set podSelector, namespaceSelector or ipBlock",
                ))
            }
        };
        out.push(Peer::Endpoints(EndpointSelector {
            namespaces,
            labels,
            kinds: KindFilter::Any,
        }));
    }
    Ok(Peers::List(out))
}

fn ports_of(ports: Option<&[K8sPort]>, path: &Path) -> Result<Vec<PortMatch>, Invalid> {
    let mut out = Vec::new();
    for (i, p) in ports.iter().copied().flatten().enumerate() {
        let pp = path.idx(i);
        out.push(PortMatch {
            protocol: meta::l4_protocol(p.protocol.as_deref(), &pp.key("protocol"))?,
            port: meta::k8s_port_spec(p.port.as_ref(), p.end_port, &pp)?,
            source_ports: None,
        });
    }
    Ok(out)
}

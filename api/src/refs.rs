//! The textual object references shared by REST paths, gRPC and vdfwctl:
//! - policy: `<KIND>:<namespace>/<name>`, or `<KIND>:<name>` for cluster-scoped kinds, with
//!   KIND one of `K8sNP`, `ANP`, `ACNP`, `CNP`, `CCNP` (case-insensitive), exactly as
//!   [`PolicyKey`]'s `Display` prints them;
//! - group: `<namespace>/<name>` (Group) or `<name>` (ClusterGroup);
//! - tier: `<name>`.

use dfw::model::{EndpointKey, GroupKey, PolicyKey, PolicyKind};

use crate::types::{ResourceKey, ResourceKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefError(pub String);

const KINDS: [PolicyKind; 5] = [
    PolicyKind::KubernetesNetworkPolicy,
    PolicyKind::AntreaNetworkPolicy,
    PolicyKind::AntreaClusterNetworkPolicy,
    PolicyKind::CiliumNetworkPolicy,
    PolicyKind::CiliumClusterwideNetworkPolicy,
];

fn namespaced(kind: PolicyKind) -> bool {
    matches!(
        kind,
        PolicyKind::KubernetesNetworkPolicy
            | PolicyKind::AntreaNetworkPolicy
            | PolicyKind::CiliumNetworkPolicy
    )
}

pub fn parse_policy_ref(s: &str) -> Result<PolicyKey, RefError> {
    let usage = || {
        RefError(format!(
            "bad policy reference {s:?}: write KIND:NAMESPACE/NAME (K8sNP, ANP, CNP) or KIND:NAME (ACNP, CCNP), e.g. ANP:prod/allow-web"
        ))
    };
    let (kind, rest) = s.split_once(':').ok_or_else(usage)?;
    let kind = KINDS
        .into_iter()
        .find(|k| k.short_name().eq_ignore_ascii_case(kind))
        .ok_or_else(usage)?;
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (None, rest.to_string()),
    };
    if name.is_empty() || name.contains('/') || namespace.as_deref() == Some("") {
        return Err(usage());
    }
    if namespaced(kind) != namespace.is_some() {
        return Err(RefError(format!(
            "bad policy reference {s:?}: {} policies are {}",
            kind.short_name(),
            if namespaced(kind) {
                "namespaced: write KIND:NAMESPACE/NAME"
            } else {
                "cluster-scoped: write KIND:NAME"
            }
        )));
    }
    Ok(PolicyKey {
        kind,
        namespace,
        name,
    })
}

pub fn parse_group_ref(s: &str) -> Result<GroupKey, RefError> {
    let bad = || {
        RefError(format!(
            "bad group reference {s:?}: write NAMESPACE/NAME or NAME"
        ))
    };
    let (namespace, name) = match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() => (Some(ns.to_string()), name.to_string()),
        Some(_) => return Err(bad()),
        None => (None, s.to_string()),
    };
    if name.is_empty() || name.contains('/') {
        return Err(bad());
    }
    Ok(GroupKey { namespace, name })
}

pub fn parse_endpoint_ref(s: &str) -> Result<EndpointKey, RefError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(EndpointKey {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(RefError(format!(
            "bad endpoint reference {s:?}: write NAMESPACE/NAME"
        ))),
    }
}

/// Parses `policy|group|tier` (singular or plural).
pub fn parse_document_kind(s: &str) -> Result<ResourceKind, RefError> {
    match s.trim_end_matches('s') {
        "policy" | "policie" => Ok(ResourceKind::Policy),
        "group" => Ok(ResourceKind::Group),
        "tier" => Ok(ResourceKind::Tier),
        _ => Err(RefError(format!(
            "unknown object kind {s:?}: use policy, group or tier"
        ))),
    }
}

pub fn parse_object_ref(kind: ResourceKind, s: &str) -> Result<ResourceKey, RefError> {
    match kind {
        ResourceKind::Policy => parse_policy_ref(s).map(ResourceKey::Policy),
        ResourceKind::Group => parse_group_ref(s).map(ResourceKey::Group),
        ResourceKind::Tier if !s.is_empty() && !s.contains('/') => Ok(ResourceKey::Tier {
            name: s.to_string(),
        }),
        ResourceKind::Tier => Err(RefError(format!("bad tier reference {s:?}: write NAME"))),
        other => Err(RefError(format!(
            "{other:?} is not a policy, group or tier"
        ))),
    }
}

/// The reference string of a document key (inverse of [`parse_object_ref`]).
pub fn object_ref(key: &ResourceKey) -> String {
    match key {
        ResourceKey::Policy(k) => k.to_string(),
        ResourceKey::Group(k) => k.to_string(),
        ResourceKey::Tier { name } => name.clone(),
        other => other.storage_key(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refs_roundtrip_with_display() {
        for s in [
            "ANP:prod/allow-web",
            "ACNP:baseline-deny",
            "K8sNP:a/b",
            "CCNP:x",
        ] {
            let key = parse_policy_ref(s).unwrap();
            assert_eq!(key.to_string(), s);
            assert_eq!(object_ref(&ResourceKey::Policy(key)), s);
        }
        assert_eq!(
            parse_policy_ref("anp:prod/x").unwrap().kind,
            PolicyKind::AntreaNetworkPolicy
        );
        assert!(parse_policy_ref("ANP:x").is_err(), "ANP is namespaced");
        assert!(
            parse_policy_ref("ACNP:ns/x").is_err(),
            "ACNP is cluster-scoped"
        );
        assert!(parse_policy_ref("prod/x").is_err());
        assert!(parse_policy_ref("XNP:prod/x").is_err());
        assert!(parse_policy_ref("ANP:prod/").is_err());
    }

    #[test]
    fn group_and_endpoint_refs() {
        assert_eq!(parse_group_ref("web").unwrap().namespace, None);
        assert_eq!(
            parse_group_ref("a/web").unwrap().namespace.as_deref(),
            Some("a")
        );
        assert!(parse_group_ref("/web").is_err());
        assert_eq!(parse_endpoint_ref("a/vm").unwrap().name, "vm");
        assert!(parse_endpoint_ref("vm").is_err());
        assert_eq!(
            parse_document_kind("policies").unwrap(),
            ResourceKind::Policy
        );
        assert_eq!(parse_document_kind("tier").unwrap(), ResourceKind::Tier);
        assert!(parse_document_kind("endpoints").is_err());
    }
}

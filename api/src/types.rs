//! Control-plane resource types shared by the store, the controller and both services.
//!
//! Policies, groups and tiers are kept as the documents the user wrote (text, file name,
//! content type), never as the parsed model: the parser may improve between releases, and
//! `get` must give back exactly what was applied. Endpoints, namespaces and audit settings are
//! structured records because the control plane itself produces them (a vNIC registers, an
//! operator toggles audit).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use dfw::model::{
    Endpoint, EndpointKey, EndpointKind, GroupKey, Labels, NamedPort, Namespace, PolicyKey,
};
use serde::{Deserialize, Serialize};

/// A global, monotonically increasing store revision. Each committed change set gets the next
/// one; revision 0 is the empty store.
pub type Revision = u64;

/// How a document's text is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    Yaml,
    Json,
}

impl ContentType {
    /// Guesses from a file name; YAML is the default because it is what users write.
    pub fn from_file_name(name: &str) -> Self {
        if name.to_ascii_lowercase().ends_with(".json") {
            Self::Json
        } else {
            Self::Yaml
        }
    }
}

/// One policy/group/tier document exactly as the user applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Document {
    /// The file the document came from (as given by the client), for error messages and `get`.
    pub file: String,
    pub content_type: ContentType,
    /// The text of this one document (a multi-document file is split before storing).
    pub text: String,
    /// One-based line of the document's start within `file`, so errors found when the stored
    /// document is re-parsed still point into the user's file.
    #[serde(default = "one")]
    pub line: usize,
}

fn one() -> usize {
    1
}

/// A 48-bit MAC address, written `52:54:00:12:34:56` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| MacParseError(s.to_string()))?;
            if part.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_string()));
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which side of the vhost-user socket vdfwd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SocketRole {
    /// vdfwd listens, the VMM connects (QEMU `server=off`, the usual setup).
    Server,
    /// vdfwd connects to a socket the VMM listens on (QEMU `server=on`).
    Client,
}

/// The vhost-user socket backing a VM vNIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VnicSocket {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub role: SocketRole,
}

/// A registered endpoint: a VM vNIC (with its vhost-user socket) or an endpoint known only by
/// inventory (no socket: e.g. a peer VM on another host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub ips: Vec<IpAddr>,
    /// Named ports (`http: {port: 8080, protocol: Tcp}`), resolved by rules that name ports.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub named_ports: BTreeMap<String, NamedPort>,
    #[serde(default)]
    pub socket: Option<VnicSocket>,
}

impl EndpointSpec {
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The policy engine's view: endpoints registered here are VMs.
    pub fn to_model(&self) -> Endpoint {
        Endpoint {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            kind: EndpointKind::Vm,
            labels: self.labels.clone(),
            ips: self.ips.clone(),
            mac: self.mac.map(|m| m.0),
            named_ports: self.named_ports.clone(),
        }
    }
}

/// What an audit toggle applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditTarget {
    Policy(PolicyKey),
    Namespace(String),
}

impl fmt::Display for AuditTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(k) => write!(f, "policy {k}"),
            Self::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

/// Audit mode for a policy or for every policy of a namespace: would-be drops are forwarded
/// and reported with verdict `audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSetting {
    pub target: AuditTarget,
    pub enabled: bool,
}

/// Everything the store holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Resource {
    Policy { key: PolicyKey, document: Document },
    Group { key: GroupKey, document: Document },
    Tier { name: String, document: Document },
    Endpoint(EndpointSpec),
    Namespace(Namespace),
    Audit(AuditSetting),
}

/// The kinds of [`Resource`], used to list one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Policy,
    Group,
    Tier,
    Endpoint,
    Namespace,
    Audit,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 6] = [
        Self::Policy,
        Self::Group,
        Self::Tier,
        Self::Endpoint,
        Self::Namespace,
        Self::Audit,
    ];

    /// The key prefix: keys of one kind are contiguous, so listing a kind is one range scan
    /// (and maps onto an etcd prefix read).
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Policy => "policy/",
            Self::Group => "group/",
            Self::Tier => "tier/",
            Self::Endpoint => "endpoint/",
            Self::Namespace => "namespace/",
            Self::Audit => "audit/",
        }
    }
}

/// The unique key of a [`Resource`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKey {
    Policy(PolicyKey),
    Group(GroupKey),
    Tier { name: String },
    Endpoint(EndpointKey),
    Namespace { name: String },
    Audit(AuditTarget),
}

impl ResourceKey {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Policy(_) => ResourceKind::Policy,
            Self::Group(_) => ResourceKind::Group,
            Self::Tier { .. } => ResourceKind::Tier,
            Self::Endpoint(_) => ResourceKind::Endpoint,
            Self::Namespace { .. } => ResourceKind::Namespace,
            Self::Audit(_) => ResourceKind::Audit,
        }
    }

    /// The storage key: `<kind>/<namespace or empty>/<name>`. Kubernetes names and namespaces
    /// cannot contain `/`, and cluster-scoped objects use an empty namespace segment, so the
    /// encoding is unambiguous.
    pub fn storage_key(&self) -> String {
        let prefix = self.kind().prefix();
        match self {
            Self::Policy(k) => format!(
                "{prefix}{}/{}/{}",
                k.kind.short_name(),
                k.namespace.as_deref().unwrap_or(""),
                k.name
            ),
            Self::Group(k) => {
                format!(
                    "{prefix}{}/{}",
                    k.namespace.as_deref().unwrap_or(""),
                    k.name
                )
            }
            Self::Tier { name } | Self::Namespace { name } => format!("{prefix}{name}"),
            Self::Endpoint(k) => format!("{prefix}{}/{}", k.namespace, k.name),
            Self::Audit(AuditTarget::Policy(k)) => format!(
                "{prefix}policy/{}/{}/{}",
                k.kind.short_name(),
                k.namespace.as_deref().unwrap_or(""),
                k.name
            ),
            Self::Audit(AuditTarget::Namespace(ns)) => format!("{prefix}namespace/{ns}"),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(k) => write!(f, "policy {k}"),
            Self::Group(k) => write!(f, "group {k}"),
            Self::Tier { name } => write!(f, "tier {name}"),
            Self::Endpoint(k) => write!(f, "endpoint {k}"),
            Self::Namespace { name } => write!(f, "namespace {name}"),
            Self::Audit(t) => write!(f, "audit setting for {t}"),
        }
    }
}

impl Resource {
    pub fn key(&self) -> ResourceKey {
        match self {
            Self::Policy { key, .. } => ResourceKey::Policy(key.clone()),
            Self::Group { key, .. } => ResourceKey::Group(key.clone()),
            Self::Tier { name, .. } => ResourceKey::Tier { name: name.clone() },
            Self::Endpoint(e) => ResourceKey::Endpoint(e.key()),
            Self::Namespace(n) => ResourceKey::Namespace {
                name: n.name.clone(),
            },
            Self::Audit(a) => ResourceKey::Audit(a.target.clone()),
        }
    }

    pub fn kind(&self) -> ResourceKind {
        self.key().kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfw::model::PolicyKind;

    #[test]
    fn mac_roundtrip_and_rejects_garbage() {
        let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:01:02".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
        assert!("5:54:00:ab:cd:01".parse::<MacAddr>().is_err());
    }

    #[test]
    fn storage_keys_are_prefixed_and_distinct() {
        let ns_policy = ResourceKey::Policy(PolicyKey {
            kind: PolicyKind::AntreaNetworkPolicy,
            namespace: Some("a".into()),
            name: "b".into(),
        });
        let cluster_policy = ResourceKey::Policy(PolicyKey {
            kind: PolicyKind::AntreaClusterNetworkPolicy,
            namespace: None,
            name: "b".into(),
        });
        assert_eq!(ns_policy.storage_key(), "policy/ANP/a/b");
        assert_eq!(cluster_policy.storage_key(), "policy/ACNP//b");
        for kind in ResourceKind::ALL {
            for other in ResourceKind::ALL {
                if kind != other {
                    assert!(!kind.prefix().starts_with(other.prefix()));
                }
            }
        }
    }
}

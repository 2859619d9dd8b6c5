//! The policy compiler and classifier: model → selector/identity cache → per-identity
//! realized policy → immutable snapshots the data path classifies against.
//!
//! # Pipeline (Cilium's shape)
//!
//! 1. **Identities** ([`crate::identity`]): every distinct (namespace, kind, labels) is one
//!    numeric identity; endpoints with equal labels share it.
//! 2. **Selector cache**: every selector used by a policy (appliedTo or peer, groups
//!    flattened) is resolved once to the set of identities it matches, and kept current as
//!    identities come and go and namespace labels change.
//! 3. **Realized policy**: per identity and direction, the applicable rules in precedence
//!    order, indexed by peer token and port ([`realize`]). Endpoints point at their
//!    identity's tables; a change rebuilds only the tables of identities whose applicable
//!    rules changed.
//! 4. **Snapshots** ([`PolicySnapshot`]): immutable, `Send + Sync`, sharing unchanged tables
//!    with the previous snapshot through `Arc`.
//!
//! # Precedence
//!
//! For one direction of one endpoint (egress is decided at the sender, ingress at the
//! receiver; a flow between two known endpoints needs both to allow it, a flow to or from
//! an address that is not a known endpoint is decided on the known side only, the peer
//! having identity `world` — or `host` / `remote-node` for configured addresses):
//!
//! 1. **Antrea tiers** (every tier but `baseline`): ordered by tier priority, then policy
//!    priority, then rule order (ties: policy key). The first matching rule decides:
//!    Allow, Drop or Reject. A matching **Pass** rule skips the remaining Antrea tiers and
//!    hands the flow to step 2.
//! 2. **Kubernetes layer** (Kubernetes NetworkPolicy and Cilium policies, one unordered set):
//!    if any deny rule (Cilium `ingressDeny`/`egressDeny`) matches, the flow is dropped;
//!    otherwise, if any allow rule matches, it is allowed (allows are a union, also across
//!    flavours).
//! 3. **Isolation**: otherwise, if some Kubernetes-layer policy selects the endpoint and
//!    isolates it in this direction (K8s `policyTypes`, Cilium directions with rules; for a
//!    Cilium policy whose `specs` select different endpoints, each spec's subject in that
//!    spec's directions, see [`crate::model::Policy::subject_isolation`]), the
//!    flow is dropped by that default deny. The baseline tier is **not** consulted: as Antrea
//!    documents, "baseline policies cannot counteract the isolated Pod behavior provided by
//!    K8s NetworkPolicies" (its OVS pipeline installs baseline flows at a lower priority than
//!    the K8s default-drop flows, in the same table).
//! 4. **Antrea baseline tier**: ordered by policy priority, then rule order; first match
//!    decides (Allow, Drop or Reject; Pass is rejected at apply time).
//! 5. **Default**: allow (Kubernetes semantics for non-isolated endpoints), unless the
//!    engine is configured with `default_deny`, then drop.
//!
//! A decision whose action is Drop or Reject is turned into a forwarded, flagged **audit**
//! verdict when the deciding policy is in audit mode (for isolation: when every isolating
//! policy is), when the deciding endpoint's namespace is
//! ([`EngineConfig::audit_namespaces`], [`Engine::set_namespace_audit`]), or when the global
//! config is.
//!
//! # Peers
//!
//! Endpoint selectors match VMs exactly as pods (`KindFilter::VmOnly` only for
//! `externalEntitySelector`); an endpoint's labels as selectors see them include
//! `io.kubernetes.pod.namespace=<ns>`, namespace selectors see the namespace's labels plus
//! `kubernetes.io/metadata.name`. Kubernetes and Antrea `ipBlock`s match any address inside
//! them (endpoints' too), Cilium CIDR peers only addresses outside the cluster (identity
//! `world`). Entities: `all` = anything, `world` = not an endpoint, host or remote node,
//! `cluster` = every endpoint plus host and remote nodes, `host` / `remote-node` = the
//! configured addresses. Groups are the union of their selector, IP blocks and child groups
//! (IP blocks are ignored when a group is used in an appliedTo, as in Antrea). Named ports
//! resolve on the destination endpoint for ingress and on the peer for egress; a name the
//! endpoint does not declare (or a peer that is not an endpoint) matches nothing.

mod engine;
mod prefix;
pub(crate) mod realize;
mod snapshot;
mod token;
mod validate;
mod verdict;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use engine::{ApplyReport, Engine, EngineConfig};
pub use snapshot::{EndpointHandle, EndpointView, PolicySnapshot};
pub use verdict::{
    DecidedBy, Decision, FlowAction, FlowQuery, PolicyLayer, PolicyRef, RuleRef, Verdict,
};

use crate::identity::IpConflict;
use crate::model::{EndpointKey, GroupKey, PolicyKey};

/// Names an object of the policy set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKey {
    Policy(PolicyKey),
    Group(GroupKey),
    /// Tier names are case-insensitive.
    Tier(String),
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(k) => write!(f, "policy {k}"),
            Self::Group(k) => write!(f, "group {k}"),
            Self::Tier(t) => write!(f, "tier {t}"),
        }
    }
}

/// Why the engine refused a change. A refused change has changed nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("{referrer} references unknown group {group}")]
    UnknownGroup { referrer: String, group: GroupKey },
    #[error("group cycle: {}", .cycle.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(" -> "))]
    GroupCycle { cycle: Vec<GroupKey> },
    #[error("policy {policy} references unknown tier {tier:?}")]
    UnknownTier { policy: PolicyKey, tier: String },
    #[error("tier {tier:?} is still used by policy {policy}")]
    TierInUse { tier: String, policy: PolicyKey },
    #[error("tier {tier:?}: {reason}")]
    InvalidTier { tier: String, reason: String },
    #[error("policy {policy}: {reason}")]
    InvalidPolicy { policy: PolicyKey, reason: String },
    #[error("policy {policy} rule {rule:?}: {reason}")]
    InvalidRule {
        policy: PolicyKey,
        rule: String,
        reason: String,
    },
    #[error("{0} appears twice in one change")]
    Duplicate(ObjectKey),
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("endpoint {0} not found")]
    EndpointNotFound(EndpointKey),
    #[error(transparent)]
    IpConflict(#[from] IpConflict),
}

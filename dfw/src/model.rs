//! The normalized policy model.
//!
//! Every CRD flavour (Kubernetes NetworkPolicy, Antrea NetworkPolicy / ClusterNetworkPolicy,
//! Cilium (Clusterwide)NetworkPolicy) is translated by [`crate::crd`] into these types, so the
//! compiler reasons about one model. The translation keeps each flavour's semantics explicit
//! here (which [`Layer`] a policy sits in, which directions it isolates, whether an empty peer
//! list means "anyone" or "no one") instead of hiding it in the compiler.
//!
//! Workloads are always named by labels (plus namespace), never by IP: IPs only appear in
//! `ipBlock`/CIDR peers, which by design address things outside the endpoint inventory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::flow::IpProtocol;

/// Labels of an endpoint or namespace. Ordered, so identities derived from them are stable.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries implicitly (Kubernetes sets it automatically).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The pseudo-label through which Cilium selectors name an endpoint's namespace.
pub const CILIUM_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// Prefix of the pseudo-labels through which Cilium selectors name the labels of an
/// endpoint's namespace: `io.cilium.k8s.namespace.labels.team: pay` selects endpoints whose
/// namespace has `team: pay`. Like [`CILIUM_NAMESPACE_LABEL`], such keys stay in the label
/// selector; whoever matches Cilium selectors gives each endpoint these pseudo-labels.
pub const CILIUM_NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

/// A Kubernetes label selector: `matchLabels` AND every `matchExpressions` entry.
/// The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelExpression {
    pub key: String,
    pub operator: SelectorOperator,
    /// Non-empty for `In`/`NotIn`, empty for `Exists`/`DoesNotExist` (validated by the parser).
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// The selector that matches every label set (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Kubernetes semantics: every `matchLabels` pair present, every expression satisfied.
    /// `NotIn` and `DoesNotExist` match when the key is absent.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

impl LabelExpression {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Which namespaces an endpoint selector reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NamespaceScope {
    /// Exactly this namespace (K8s peer `podSelector` alone; a namespaced policy's appliedTo;
    /// a namespaced Cilium selector that does not name a namespace).
    Named(String),
    /// Namespaces whose labels match (K8s/Antrea `namespaceSelector`).
    Selector(LabelSelector),
    /// Antrea `namespaces: {match: Self}`: the namespace of the endpoint the rule is applied to.
    SameAsAppliedTo,
    /// Every namespace (cluster-scoped policies' bare `podSelector`; Cilium selectors that name
    /// `io.kubernetes.pod.namespace`, whose namespace constraint then lives in the label
    /// selector itself, matched against the endpoint's pseudo-labels).
    Any,
}

/// Which endpoint kinds a selector may pick.
///
/// `podSelector`/`endpointSelector` pick VMs exactly as they pick pods (that is how VMs and
/// containers share one policy set); Antrea's `externalEntitySelector` picks only VMs, which
/// vdfw treats as external entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KindFilter {
    Any,
    VmOnly,
}

/// Selects endpoints by namespace and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointSelector {
    pub namespaces: NamespaceScope,
    pub labels: LabelSelector,
    pub kinds: KindFilter,
}

// ---------------------------------------------------------------------------------------------
// Endpoints and namespaces (the inventory)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Vm,
    Pod,
}

/// A named port an endpoint declares (K8s container port names; VM service names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub port: u16,
    pub protocol: IpProtocol,
}

/// A VM vNIC or a pod. A VM's tags are its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    pub kind: EndpointKind,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// Six bytes; `None` for endpoints known only through the inventory (e.g. offline trace).
    pub mac: Option<[u8; 6]>,
    pub named_ports: BTreeMap<String, NamedPort>,
}

impl Endpoint {
    /// `namespace/name`, the endpoint's unique key.
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Names a Kubernetes Service: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes Service, reduced to what policy needs: which endpoints back it. Its backends
/// are the endpoints (VMs and pods alike) of its namespace whose labels match `selector`, as
/// the Kubernetes endpoints controller picks them. An empty selector is a Service without
/// one (its Endpoints are managed by hand, which vdfw does not model): it has no backends.
/// Antrea groups name Services through `serviceReference`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub selector: Labels,
}

impl Service {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The endpoints backing the Service, as a selector; `None` when it selects nothing.
    pub fn backends(&self) -> Option<EndpointSelector> {
        (!self.selector.is_empty()).then(|| EndpointSelector {
            namespaces: NamespaceScope::Named(self.namespace.clone()),
            labels: LabelSelector {
                match_labels: self.selector.clone(),
                match_expressions: Vec::new(),
            },
            kinds: KindFilter::Any,
        })
    }
}

/// A namespace and its labels. `kubernetes.io/metadata.name` is implied, never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// The labels selectors see: the declared ones plus the implied name label.
    pub fn effective_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), self.name.clone());
        labels
    }
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Drop,
    /// Drop and tell the sender (TCP RST, ICMP administratively prohibited).
    Reject,
    /// Antrea: skip the remaining Antrea tiers; the Kubernetes/Cilium layer decides.
    Pass,
}

/// An inclusive port range. A single port is `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        start: 0,
        end: u16::MAX,
    };

    pub const fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    pub const fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

/// A destination port as written: a number range or a name resolved against endpoints'
/// declared named ports at compile time (on the destination for ingress, on the peer for
/// egress).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortSpec {
    Range(PortRange),
    Named(String),
}

/// Which protocols a port entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProtocolMatch {
    /// Any IP protocol (Cilium `protocol: ANY`, or a port-less rule).
    Any,
    Tcp,
    Udp,
    Sctp,
    /// ICMP (v4) or ICMPv6, optionally narrowed by type and code.
    Icmp {
        v6: bool,
        icmp_type: Option<u8>,
        icmp_code: Option<u8>,
    },
    /// Antrea `protocols: [{igmp: ...}]` and other raw protocol numbers.
    Number(u8),
}

/// One entry of a rule's `ports` / `toPorts` / `protocols` list. Entries are ORed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMatch {
    pub protocol: ProtocolMatch,
    /// `None`: every port of the protocol.
    pub port: Option<PortSpec>,
    /// Antrea `sourcePort`/`sourceEndPort`.
    pub source_ports: Option<PortRange>,
}

/// Cilium reserved entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything, inside and outside the cluster.
    All,
    /// Anything that is not a known endpoint (addresses outside the inventory).
    World,
    /// Every known endpoint plus the host.
    Cluster,
    /// The local host (the hypervisor / uplink host address).
    Host,
    RemoteNode,
}

/// A CIDR with holes (`ipBlock{cidr, except}`, `fromCIDRSet`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Reference to an Antrea ClusterGroup (namespace `None`) or Group (namespaced).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The other end of a flow, as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Peer {
    Endpoints(EndpointSelector),
    IpBlock(IpBlock),
    Group(GroupKey),
    Entity(Entity),
}

/// A rule's peer list. Kept as an explicit enum because the flavours disagree on what an
/// empty list means: in Kubernetes/Antrea a missing `from` means "any peer", while a Cilium
/// rule with no peer field but with `toPorts` applies to all peers, and Cilium's `ingress: [{}]`
/// matches nothing (it only turns on default deny).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Peers {
    Any,
    /// ORed; an empty list matches no peer.
    List(Vec<Peer>),
}

/// Rule fields that are parsed and kept but not enforced yet (L7, FQDN). The rule's L3/L4
/// part is still enforced; the compiler reports these as warnings, never drops them silently.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unenforced {
    /// e.g. `toPorts.rules.http`, `toFQDNs`, `l7Protocols`.
    pub field: String,
    /// The original value as JSON, for reporting and round-tripping.
    pub value: String,
}

/// A stable rule identity derived from the rule's content (as Antrea does), so counters and
/// flow logs survive a re-apply that does not change the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleId(pub u64);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: RuleId,
    /// Antrea rule `name`; otherwise generated as `<direction>-<index>` by the parser.
    pub name: String,
    pub direction: Direction,
    pub action: Action,
    pub peers: Peers,
    /// ORed; empty = every protocol and port.
    pub ports: Vec<PortMatch>,
    /// Antrea per-rule `appliedTo`; when `Some`, it replaces the policy-level appliedTo.
    pub applied_to: Option<Vec<AppliedTo>>,
    pub enable_logging: bool,
    pub log_label: Option<String>,
    pub unenforced: Vec<Unenforced>,
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    /// networking.k8s.io/v1 NetworkPolicy
    KubernetesNetworkPolicy,
    /// crd.antrea.io NetworkPolicy (namespaced), a.k.a. AntreaNetworkPolicy
    AntreaNetworkPolicy,
    /// crd.antrea.io ClusterNetworkPolicy
    AntreaClusterNetworkPolicy,
    /// cilium.io/v2 CiliumNetworkPolicy
    CiliumNetworkPolicy,
    /// cilium.io/v2 CiliumClusterwideNetworkPolicy
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// Short stable name used in policy references, flow logs and the API.
    pub const fn short_name(self) -> &'static str {
        match self {
            Self::KubernetesNetworkPolicy => "K8sNP",
            Self::AntreaNetworkPolicy => "ANP",
            Self::AntreaClusterNetworkPolicy => "ACNP",
            Self::CiliumNetworkPolicy => "CNP",
            Self::CiliumClusterwideNetworkPolicy => "CCNP",
        }
    }
}

/// Unique key of a policy: kind, namespace (for namespaced kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}:{ns}/{}", self.kind.short_name(), self.name),
            None => write!(f, "{}:{}", self.kind.short_name(), self.name),
        }
    }
}

/// Where a policy sits in the evaluation order (see the README's precedence section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Layer {
    /// An Antrea policy in a non-baseline tier: ordered by tier priority, then policy
    /// priority, then rule order; first match wins.
    AntreaTier {
        tier: String,
        tier_priority: u32,
        policy_priority: f64,
    },
    /// Kubernetes NetworkPolicy and Cilium policies: allows form a union, Cilium denies win
    /// over any allow, and isolation makes the rest of the direction default-deny.
    Kubernetes,
    /// An Antrea policy in the `baseline` tier: evaluated after the Kubernetes layer.
    AntreaBaseline { policy_priority: f64 },
}

/// The static Antrea tiers and their priorities (lower is evaluated first).
pub const ANTREA_STATIC_TIERS: [(&str, u32); 6] = [
    ("emergency", 50),
    ("securityops", 100),
    ("networkops", 150),
    ("platform", 200),
    ("application", 250),
    ("baseline", 253),
];

/// Where a document came from, for error messages and `get` output.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    /// Zero-based index of the document in a multi-document file.
    pub document: usize,
    /// One-based line of the document's start.
    pub line: usize,
}

/// What a policy (or an Antrea rule) is applied to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AppliedTo {
    Endpoints(EndpointSelector),
    Group(GroupKey),
}

/// Endpoints a policy isolates in some directions, apart from its policy-level appliedTo (see
/// [`Policy::subject_isolation`]). Cilium semantics: each spec's `endpointSelector` isolates
/// the endpoints it picks in the directions that spec has rules for (or `enableDefaultDeny`
/// turns on), and only in those.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectIsolation {
    pub applied_to: Vec<AppliedTo>,
    /// Non-empty: a subject isolated in no direction is not listed.
    pub directions: Vec<Direction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub key: PolicyKey,
    pub layer: Layer,
    /// Policy-level appliedTo / podSelector / endpointSelector. Empty when every rule carries
    /// its own (Antrea per-rule appliedTo).
    pub applied_to: Vec<AppliedTo>,
    /// Directions in which the endpoints of `applied_to` become isolated (default-deny for
    /// what the rules do not allow): K8s `policyTypes`; Cilium directions that have rules (or
    /// `enableDefaultDeny`). Antrea policies isolate nothing: their rules are explicit.
    pub isolates: Vec<Direction>,
    /// Further subjects this policy isolates, each in its own directions, independently of
    /// `applied_to`: a Cilium policy whose `specs` select different endpoints has an empty
    /// `applied_to`, rules that each carry their spec's subject, and one entry here per spec.
    /// An endpoint is isolated in a direction when `applied_to` picks it and `isolates` lists
    /// the direction, or when any entry here picks it and lists the direction. Only
    /// [`Layer::Kubernetes`] policies isolate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_isolation: Vec<SubjectIsolation>,
    /// In order: rule order matters for Antrea (first match wins).
    pub rules: Vec<Rule>,
    /// Audit mode: would-be drops by this policy are forwarded and reported as `audit`.
    pub audit: bool,
    pub source: Source,
}

// ---------------------------------------------------------------------------------------------
// Groups and tiers
// ---------------------------------------------------------------------------------------------

/// An Antrea ClusterGroup (namespace `None`) or Group. Members are the union of the selector,
/// the IP blocks, the backends of the referenced Service and the child groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub key: GroupKey,
    pub selector: Option<EndpointSelector>,
    pub ip_blocks: Vec<IpBlock>,
    pub child_groups: Vec<GroupKey>,
    /// Antrea `serviceReference`: the endpoints backing this Service (see [`Service`]),
    /// resolved against the Services the engine knows, and kept current as they change. A
    /// Service the engine does not know (yet) contributes no members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceKey>,
    pub source: Source,
}

/// A custom Antrea Tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub name: String,
    pub priority: u32,
    pub source: Source,
}

/// Anything a policy document can declare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Policy(Policy),
    Group(Group),
    Tier(Tier),
}

/// A parse-time warning (e.g. an L7 rule kept but not enforced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub source: Source,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::everything().matches(&Labels::new()));
        assert!(LabelSelector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn selector_operators_follow_kubernetes() {
        let expr = |operator, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelExpression {
                key: "tier".into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        let web = labels(&[("tier", "web")]);
        let none = Labels::new();
        assert!(expr(SelectorOperator::In, &["web", "db"]).matches(&web));
        assert!(!expr(SelectorOperator::In, &["db"]).matches(&web));
        assert!(!expr(SelectorOperator::In, &["web"]).matches(&none));
        assert!(expr(SelectorOperator::NotIn, &["db"]).matches(&web));
        assert!(expr(SelectorOperator::NotIn, &["db"]).matches(&none));
        assert!(!expr(SelectorOperator::NotIn, &["web"]).matches(&web));
        assert!(expr(SelectorOperator::Exists, &[]).matches(&web));
        assert!(!expr(SelectorOperator::Exists, &[]).matches(&none));
        assert!(expr(SelectorOperator::DoesNotExist, &[]).matches(&none));
        assert!(!expr(SelectorOperator::DoesNotExist, &[]).matches(&web));
    }

    #[test]
    fn ip_block_except_carves_holes() {
        let block = IpBlock {
            cidr: "10.0.0.0/16".parse().unwrap(),
            except: vec!["10.0.5.0/24".parse().unwrap()],
        };
        assert!(block.contains("10.0.1.1".parse().unwrap()));
        assert!(!block.contains("10.0.5.1".parse().unwrap()));
        assert!(!block.contains("10.1.0.1".parse().unwrap()));
    }

    #[test]
    fn namespace_name_label_is_implied() {
        let ns = Namespace {
            name: "payments".into(),
            labels: labels(&[("team", "pay")]),
        };
        let eff = ns.effective_labels();
        assert_eq!(
            eff.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("payments")
        );
        assert_eq!(eff.get("team").map(String::as_str), Some("pay"));
    }
}

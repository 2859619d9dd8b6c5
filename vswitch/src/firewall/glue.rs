//! Thin glue between the packet path and dfw's realized policy: one decision per direction,
//! taken at this host only where a side of the flow is a local vNIC.
//!
//! dfw's [`Decision`] borrows rule descriptions from the snapshot that made it. The data path
//! keeps decisions beyond that borrow (in the flow log ring, in conntrack marks), so they are
//! summarized here into a `Copy` [`SideDecision`] that names rules by their content-derived
//! [`RuleId`] and policies by a [`PolicyTag`] (a hash of the policy key): fixed size, no
//! allocation, and resolvable to names later from the control plane's catalog.
//!
//! # Which decisions a host takes
//! A flow between two local vNICs needs the sender's egress AND the receiver's ingress. A flow
//! to or from the uplink is decided on the local side only (the remote host, or nothing,
//! decides the other): egress of the local sender, or ingress of the local receiver. That is
//! the distributed-firewall split: every vNIC's policy is enforced at its own vNIC.

use std::fmt::{self, Write as _};

use dfw::compile::{DecidedBy, Decision, EndpointHandle, FlowAction, FlowQuery, PolicySnapshot};
use dfw::model::{Action, Direction, PolicyKey, RuleId};

use crate::filter::RejectKind;

/// Names a policy in a fixed-size value: FNV-1a 64 of the policy key's display form
/// (`K8sNP:ns/name`). Stable across processes, like [`RuleId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyTag(pub u64);

struct Fnv(u64);

impl fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}

impl PolicyTag {
    /// Hashes the key through its `Display` impl without allocating.
    pub fn of(key: &PolicyKey) -> PolicyTag {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        // Writing into `Fnv` cannot fail.
        let _ = write!(h, "{key}");
        PolicyTag(h.0)
    }
}

/// What decided one direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decider {
    /// A rule matched; its action is the decision's.
    Rule(RuleId),
    /// No allow matched and this policy isolates the endpoint in this direction.
    Isolation(PolicyTag),
    /// Nothing matched and nothing isolates the endpoint (Kubernetes default).
    DefaultAllow,
    /// Nothing matched and the engine runs with `default_deny`.
    DefaultDeny,
}

/// One direction's decision, detached from the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SideDecision {
    pub direction: Direction,
    /// What the deciding rule or default asks for, before audit mode.
    pub action: FlowAction,
    /// `action` blocks but the decision is audited: the flow is forwarded and flagged.
    pub audit: bool,
    pub by: Decider,
    /// The deciding rule asked for a reject (only meaningful when `action` is Reject).
    pub reject: bool,
}

impl SideDecision {
    pub fn from_dfw(d: &Decision<'_>) -> SideDecision {
        let by = match d.by {
            DecidedBy::Rule(r) => Decider::Rule(r.rule_id),
            DecidedBy::Isolation(p) => Decider::Isolation(PolicyTag::of(&p.key)),
            DecidedBy::DefaultAllow => Decider::DefaultAllow,
            DecidedBy::DefaultDeny => Decider::DefaultDeny,
        };
        SideDecision {
            direction: d.direction,
            action: d.action,
            audit: d.audit,
            by,
            reject: d.rule().is_some_and(|r| r.action == Action::Reject),
        }
    }

    /// What the data path does: the action, unless audited (then allow).
    pub fn effective(&self) -> FlowAction {
        if self.audit {
            FlowAction::Allow
        } else {
            self.action
        }
    }

    pub fn blocks(&self) -> bool {
        self.effective() != FlowAction::Allow
    }

    /// The conntrack mark stored with a connection this decision admitted: the deciding
    /// rule's id (0 for defaults), which keys the per-rule counters of later packets.
    pub fn mark(&self) -> u64 {
        match self.by {
            Decider::Rule(id) => id.0,
            _ => 0,
        }
    }

    /// How to refuse, for a blocking decision: a reject rule answers (RST for TCP, ICMP
    /// admin-prohibited otherwise; the reject builder picks), everything else drops silently.
    pub fn reject_kind(&self) -> Option<RejectKind> {
        (self.effective() == FlowAction::Reject).then_some(RejectKind::TcpRst)
    }
}

/// The endpoint handle went stale between loading the snapshot and deciding: the caller
/// treats the vNIC as not realized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale;

/// One direction at one local endpoint.
pub fn decide(
    snap: &PolicySnapshot,
    local: EndpointHandle,
    direction: Direction,
    q: &FlowQuery,
) -> Result<SideDecision, Stale> {
    snap.decide(local, direction, q)
        .map(|d| SideDecision::from_dfw(&d))
        .ok_or(Stale)
}

/// The decisions this host takes for a flow (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowDecision {
    /// Egress at the local sender, if the sender is a local vNIC.
    pub egress: Option<SideDecision>,
    /// Ingress at the local receiver, if the receiver is a local vNIC and egress did not
    /// already block (the packet never reaches the receiver then).
    pub ingress: Option<SideDecision>,
}

impl FlowDecision {
    /// The first side that blocks, egress first (the packet meets the sender's vNIC first).
    pub fn blocking(&self) -> Option<SideDecision> {
        [self.egress, self.ingress]
            .into_iter()
            .flatten()
            .find(SideDecision::blocks)
    }

    pub fn allows(&self) -> bool {
        self.blocking().is_none()
    }
}

/// Decides a flow at this host: egress at `sender` (a local vNIC's endpoint), then ingress at
/// `receiver`, stopping at the first side that blocks.
pub fn decide_flow(
    snap: &PolicySnapshot,
    sender: Option<EndpointHandle>,
    receiver: Option<EndpointHandle>,
    q: &FlowQuery,
) -> Result<FlowDecision, Stale> {
    let mut out = FlowDecision::default();
    if let Some(h) = sender {
        let d = decide(snap, h, Direction::Egress, q)?;
        out.egress = Some(d);
        if d.blocks() {
            return Ok(out);
        }
    }
    if let Some(h) = receiver {
        out.ingress = Some(decide(snap, h, Direction::Ingress, q)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfw::compile::{Engine, EngineConfig};
    use dfw::model::{Endpoint, EndpointKind, PolicyKind};
    use std::net::IpAddr;

    fn ep(name: &str, app: &str, ip: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            namespace: "shop".into(),
            kind: EndpointKind::Vm,
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            mac: None,
            named_ports: Default::default(),
        }
    }

    const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{protocol: TCP, port: 5432}]
---
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: no-telnet}
spec:
  priority: 1
  tier: securityops
  appliedTo: [{podSelector: {}}]
  ingress:
    - action: Reject
      name: reject-telnet
      ports: [{protocol: TCP, port: 23}]
"#;

    fn engine(config: EngineConfig) -> (Engine, EndpointHandle, EndpointHandle) {
        let mut e = Engine::new(config);
        let web = e.upsert_endpoint(ep("web", "web", "10.0.0.1")).unwrap();
        let db = e.upsert_endpoint(ep("db", "db", "10.0.0.2")).unwrap();
        let parsed = dfw::crd::parse_documents(POLICY, "p.yaml").unwrap();
        e.apply(parsed.objects).unwrap();
        (e, web, db)
    }

    fn tcp(dport: u16) -> FlowQuery {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        FlowQuery::tcp(a, b, 40000, dport)
    }

    #[test]
    fn both_local_sides_decide_and_name_their_deciders() {
        let (mut e, web, db) = engine(EngineConfig::default());
        let snap = e.snapshot();
        let ok = decide_flow(&snap, Some(web), Some(db), &tcp(5432)).unwrap();
        assert!(ok.allows());
        assert_eq!(ok.egress.unwrap().by, Decider::DefaultAllow);
        let ing = ok.ingress.unwrap();
        assert!(matches!(ing.by, Decider::Rule(_)));
        assert_ne!(ing.mark(), 0);

        let ssh = decide_flow(&snap, Some(web), Some(db), &tcp(22)).unwrap();
        let b = ssh.blocking().unwrap();
        assert_eq!(b.direction, Direction::Ingress);
        let key = e.policies().next().map(|p| p.key.clone());
        let isolating = e
            .policies()
            .find(|p| p.key.kind == PolicyKind::KubernetesNetworkPolicy)
            .map(|p| PolicyTag::of(&p.key));
        assert!(key.is_some());
        assert_eq!(b.by, Decider::Isolation(isolating.unwrap()));
        assert_eq!(b.reject_kind(), None);

        let telnet = decide_flow(&snap, Some(web), Some(db), &tcp(23)).unwrap();
        let b = telnet.blocking().unwrap();
        assert!(b.reject);
        assert_eq!(b.reject_kind(), Some(RejectKind::TcpRst));
    }

    #[test]
    fn one_sided_flows_and_egress_first() {
        let (mut e, web, db) = engine(EngineConfig {
            default_deny: true,
            ..Default::default()
        });
        let snap = e.snapshot();
        // Only the receiver is local: no egress decision.
        let d = decide_flow(&snap, None, Some(db), &tcp(5432)).unwrap();
        assert!(d.egress.is_none());
        assert!(d.allows());
        // default_deny blocks web's egress; ingress is then not evaluated.
        let d = decide_flow(&snap, Some(web), Some(db), &tcp(5432)).unwrap();
        assert_eq!(d.egress.unwrap().by, Decider::DefaultDeny);
        assert!(d.ingress.is_none());
        assert_eq!(d.blocking().unwrap().direction, Direction::Egress);
    }

    #[test]
    fn audit_forwards_but_keeps_the_decider() {
        let (mut e, web, db) = engine(EngineConfig {
            audit: true,
            ..Default::default()
        });
        let snap = e.snapshot();
        let d = decide_flow(&snap, Some(web), Some(db), &tcp(22)).unwrap();
        assert!(d.allows());
        let ing = d.ingress.unwrap();
        assert!(ing.audit);
        assert_eq!(ing.action, FlowAction::Drop);
        assert!(matches!(ing.by, Decider::Isolation(_)));
    }

    #[test]
    fn stale_handles_are_reported() {
        let (mut e, web, _db) = engine(EngineConfig::default());
        e.remove_endpoint(&ep("web", "web", "10.0.0.1").key())
            .unwrap();
        let snap = e.snapshot();
        assert_eq!(decide_flow(&snap, Some(web), None, &tcp(5432)), Err(Stale));
    }

    #[test]
    fn policy_tags_are_stable_and_distinct() {
        let k = |name: &str| PolicyKey {
            kind: PolicyKind::KubernetesNetworkPolicy,
            namespace: Some("shop".into()),
            name: name.into(),
        };
        assert_eq!(PolicyTag::of(&k("a")), PolicyTag::of(&k("a")));
        assert_ne!(PolicyTag::of(&k("a")), PolicyTag::of(&k("b")));
    }
}

//! Detached summaries of dfw policy decisions, for flow events.
//!
//! dfw's [`Decision`] borrows rule descriptions from the snapshot that made it. A flow event
//! outlives that borrow (it waits in the flow-log channel), so the firewall summarizes the
//! decision into a `Copy` [`SideDecision`] naming rules by their content-derived [`RuleId`]
//! and policies by a [`PolicyTag`] (a hash of the policy key): fixed size, no allocation,
//! resolved to names later by the flow-log writer from the control plane's catalog.

use std::fmt::{self, Write as _};

use dfw::compile::{DecidedBy, Decision, FlowAction};
use dfw::model::{Direction, PolicyKey, RuleId};

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

impl Decider {
    pub fn of(by: &DecidedBy<'_>) -> Decider {
        match by {
            DecidedBy::Rule(r) => Decider::Rule(r.rule_id),
            DecidedBy::Isolation(p) => Decider::Isolation(PolicyTag::of(&p.key)),
            DecidedBy::DefaultAllow => Decider::DefaultAllow,
            DecidedBy::DefaultDeny => Decider::DefaultDeny,
        }
    }

    pub fn rule_id(&self) -> Option<RuleId> {
        match self {
            Decider::Rule(id) => Some(*id),
            _ => None,
        }
    }
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
}

impl SideDecision {
    pub fn from_dfw(d: &Decision<'_>) -> SideDecision {
        SideDecision {
            direction: d.direction,
            action: d.action,
            audit: d.audit,
            by: Decider::of(&d.by),
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

    /// How to refuse, for a blocking decision: a reject rule answers (RST for TCP, ICMP
    /// admin-prohibited otherwise; the reject builder picks), everything else drops silently.
    pub fn reject_kind(&self) -> Option<RejectKind> {
        (self.effective() == FlowAction::Reject).then_some(RejectKind::TcpRst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfw::compile::{Engine, EngineConfig, FlowQuery};
    use dfw::model::{Endpoint, EndpointKind, PolicyKind};

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

    #[test]
    fn summaries_keep_decider_action_and_audit() {
        for audit in [false, true] {
            let mut e = Engine::new(EngineConfig {
                audit,
                ..Default::default()
            });
            e.upsert_endpoint(ep("web", "web", "10.0.0.1")).unwrap();
            let db = e.upsert_endpoint(ep("db", "db", "10.0.0.2")).unwrap();
            e.apply(dfw::crd::parse_documents(POLICY, "p.yaml").unwrap().objects)
                .unwrap();
            let isolating = e
                .policies()
                .find(|p| p.key.kind == PolicyKind::KubernetesNetworkPolicy)
                .map(|p| PolicyTag::of(&p.key))
                .unwrap();
            let snap = e.snapshot();
            let q = |port| {
                FlowQuery::tcp(
                    "10.0.0.1".parse().unwrap(),
                    "10.0.0.2".parse().unwrap(),
                    40000,
                    port,
                )
            };
            let s = |port| {
                SideDecision::from_dfw(&snap.decide(db, Direction::Ingress, &q(port)).unwrap())
            };
            let ok = s(5432);
            assert_eq!(ok.effective(), FlowAction::Allow);
            assert!(ok.by.rule_id().is_some());
            let ssh = s(22);
            assert_eq!(ssh.by, Decider::Isolation(isolating));
            assert_eq!(ssh.action, FlowAction::Drop);
            assert_eq!(ssh.audit, audit);
            assert_eq!(ssh.reject_kind(), None);
            let telnet = s(23);
            assert_eq!(telnet.action, FlowAction::Reject);
            assert_eq!(
                telnet.reject_kind(),
                (!audit).then_some(RejectKind::TcpRst),
                "audited rejects are forwarded"
            );
        }
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

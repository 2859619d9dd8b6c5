//! What the classifier answers: a [`Verdict`] for a flow, made of one [`Decision`] per
//! direction, each naming the policy and rule (or the default) that decided it.
//!
//! Decisions borrow the rule and policy descriptions from the [`super::PolicySnapshot`] they
//! came from, so answering a new flow allocates nothing; call [`RuleRef::clone`] to keep one.

use std::net::IpAddr;

use serde::Serialize;

use crate::flow::{FiveTuple, IpProtocol};
use crate::model::{Action, Direction, PolicyKey, RuleId};

/// What happens to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowAction {
    Allow,
    Drop,
    /// Drop and tell the sender (TCP RST / ICMP administratively prohibited).
    Reject,
}

/// Where a policy sits in the precedence order (resolved, see the precedence doc on
/// [`super`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum PolicyLayer {
    /// Antrea policy in a non-baseline tier.
    AntreaTier {
        tier: String,
        tier_priority: u32,
        priority: f64,
    },
    /// Kubernetes NetworkPolicy or Cilium policy.
    Kubernetes,
    /// Antrea policy in the `baseline` tier.
    AntreaBaseline { priority: f64 },
}

/// A policy as decisions name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRef {
    pub key: PolicyKey,
    pub layer: PolicyLayer,
    /// The policy is in audit mode: its would-be drops are forwarded and flagged.
    pub audit: bool,
}

/// A rule as decisions name it. `rule_id` is the model's content-derived [`RuleId`]: stable
/// across re-applies, so use it to key counters and correlate flow logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub rule_id: RuleId,
    pub rule_name: String,
    /// Position of the rule in its policy (ingress and egress rules share one list).
    pub rule_index: usize,
    pub direction: Direction,
    pub action: Action,
    pub log_label: Option<String>,
    pub enable_logging: bool,
}

/// What decided one direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "ref", rename_all = "snake_case")]
pub enum DecidedBy<'a> {
    /// A rule matched (its action is the decision's action).
    Rule(&'a RuleRef),
    /// No Kubernetes/Cilium allow matched and this policy (the first, by key, of those that
    /// select the endpoint for this direction) isolates the endpoint: default deny.
    Isolation(&'a PolicyRef),
    /// Nothing matched and nothing isolates the endpoint: Kubernetes' default allow.
    DefaultAllow,
    /// Nothing matched and the engine is configured with a default-deny baseline.
    DefaultDeny,
}

/// The decision for one direction (egress at the sender, ingress at the receiver).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision<'a> {
    pub direction: Direction,
    /// The action the deciding rule or default asks for (before audit mode is applied).
    pub action: FlowAction,
    /// `action` is Drop/Reject but the deciding policy (or the global config) is in audit
    /// mode: the flow is forwarded and reported.
    pub audit: bool,
    pub by: DecidedBy<'a>,
    /// The Antrea `Pass` rule that handed this flow to the Kubernetes layer, if any.
    pub passed_by: Option<&'a RuleRef>,
}

impl<'a> Decision<'a> {
    /// What the data path does: `action`, unless audited, then Allow.
    pub fn effective(&self) -> FlowAction {
        if self.audit {
            FlowAction::Allow
        } else {
            self.action
        }
    }

    pub fn rule(&self) -> Option<&'a RuleRef> {
        match self.by {
            DecidedBy::Rule(r) => Some(r),
            _ => None,
        }
    }

    /// The deciding rule's id (the key for per-rule counters).
    pub fn rule_id(&self) -> Option<RuleId> {
        self.rule().map(|r| r.rule_id)
    }

    /// The deciding policy, for rules and isolation.
    pub fn policy(&self) -> Option<&'a PolicyRef> {
        match self.by {
            DecidedBy::Rule(r) => Some(&r.policy),
            DecidedBy::Isolation(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the flow must be logged (the deciding rule has `enableLogging`).
    pub fn log(&self) -> bool {
        self.rule().is_some_and(|r| r.enable_logging)
    }
}

/// The verdict for a whole flow: allowed only if the sender's egress AND the receiver's
/// ingress allow it. A side that is not a known endpoint is not checked (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict<'a> {
    /// What the data path does (audit already applied: an audited drop is `Allow`).
    pub action: FlowAction,
    /// The flow is forwarded although a decision asked to drop/reject it (audit mode).
    pub audit: bool,
    pub egress: Option<Decision<'a>>,
    pub ingress: Option<Decision<'a>>,
}

impl<'a> Verdict<'a> {
    /// The decision that determined `action`: the first non-allowing side (egress first, as
    /// the packet meets the sender's vNIC first), else the first audited side (the would-be
    /// drop an `audit` verdict reports), else the ingress side, else egress.
    pub fn deciding(&self) -> Option<&Decision<'a>> {
        let blocks = |d: &&Decision<'a>| d.effective() != FlowAction::Allow;
        let audited = |d: &&Decision<'a>| d.audit;
        self.egress
            .as_ref()
            .filter(blocks)
            .or(self.ingress.as_ref().filter(blocks))
            .or(self.egress.as_ref().filter(audited))
            .or(self.ingress.as_ref().filter(audited))
            .or(self.ingress.as_ref())
            .or(self.egress.as_ref())
    }
}

/// A flow to classify, oriented as the first packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FlowQuery {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProtocol,
    /// TCP/UDP/SCTP ports; ignored for other protocols.
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP/ICMPv6 type and code; ignored for other protocols.
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl FlowQuery {
    pub fn new(
        src: IpAddr,
        dst: IpAddr,
        protocol: IpProtocol,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        Self {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
            icmp_type: 0,
            icmp_code: 0,
        }
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, IpProtocol::Tcp, src_port, dst_port)
    }

    pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, IpProtocol::Udp, src_port, dst_port)
    }

    /// ICMP (v4 or v6 after the address family of `src`) with a type and code.
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, icmp_code: u8) -> Self {
        let protocol = if src.is_ipv6() {
            IpProtocol::Icmpv6
        } else {
            IpProtocol::Icmp
        };
        Self {
            icmp_type,
            icmp_code,
            ..Self::new(src, dst, protocol, 0, 0)
        }
    }

    /// From a 5-tuple (ICMP type/code must be set separately).
    pub fn from_tuple(t: &FiveTuple) -> Self {
        Self::new(t.src, t.dst, t.protocol, t.src_port, t.dst_port)
    }
}

//! A naive reference evaluator for tests: scans every policy and rule in precedence order,
//! straight from the model, with none of the engine's caches or indexes. The classifier must
//! agree with it on the action and on the deciding rule.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::validate::static_tier;
use super::verdict::{FlowAction, FlowQuery};
use super::Engine;
use crate::flow::IpProtocol;
use crate::model::{
    Action, AppliedTo, Direction, Endpoint, EndpointKind, EndpointSelector, Entity, GroupKey,
    IpBlock, KindFilter, Labels, Layer, NamespaceScope, Peer, Peers, Policy, PolicyKind, PortSpec,
    ProtocolMatch, Rule, CILIUM_NAMESPACE_LABEL, NAMESPACE_NAME_LABEL,
};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RefBy {
    Rule(crate::model::PolicyKey, usize),
    Isolation(crate::model::PolicyKey),
    DefaultAllow,
    DefaultDeny,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RefDecision {
    pub action: FlowAction,
    pub audit: bool,
    pub by: RefBy,
    pub passed: Option<(crate::model::PolicyKey, usize)>,
}

impl RefDecision {
    pub fn effective(&self) -> FlowAction {
        if self.audit {
            FlowAction::Allow
        } else {
            self.action
        }
    }
}

enum PeerKind<'a> {
    Endpoint(&'a Endpoint),
    Host,
    Remote,
    World,
}

struct Ctx<'a> {
    engine: &'a Engine,
}

impl<'a> Ctx<'a> {
    fn ns_labels(&self, ns: &str) -> Labels {
        self.engine
            .namespaces()
            .find(|n| n.name == ns)
            .map(|n| n.effective_labels())
            .unwrap_or_else(|| Labels::from([(NAMESPACE_NAME_LABEL.into(), ns.into())]))
    }

    fn sel_match(&self, sel: &EndpointSelector, ep: &Endpoint, applied_ns: Option<&str>) -> bool {
        if sel.kinds == KindFilter::VmOnly && ep.kind != EndpointKind::Vm {
            return false;
        }
        let ns_ok = match &sel.namespaces {
            NamespaceScope::Named(n) => *n == ep.namespace,
            NamespaceScope::Selector(ls) => ls.matches(&self.ns_labels(&ep.namespace)),
            NamespaceScope::SameAsAppliedTo => applied_ns == Some(ep.namespace.as_str()),
            NamespaceScope::Any => true,
        };
        // Written out rather than through `IdentityKey`, so the reference does not share the
        // engine's code for it.
        let mut labels = ep.labels.clone();
        labels.insert(CILIUM_NAMESPACE_LABEL.into(), ep.namespace.clone());
        labels.retain(|k, _| !k.starts_with("io.cilium.k8s.namespace.labels."));
        for (k, v) in self.ns_labels(&ep.namespace) {
            labels.insert(format!("io.cilium.k8s.namespace.labels.{k}"), v);
        }
        ns_ok && sel.labels.matches(&labels)
    }

    fn group_parts(
        &self,
        key: &GroupKey,
        sels: &mut Vec<EndpointSelector>,
        blocks: &mut Vec<IpBlock>,
        seen: &mut BTreeSet<GroupKey>,
    ) {
        if !seen.insert(key.clone()) {
            return;
        }
        if let Some(g) = self.engine.groups().find(|g| g.key == *key) {
            sels.extend(g.selector.clone());
            // A Service's backends: the endpoints of its namespace carrying all of its
            // selector's labels; a Service without a selector (or unknown) has none.
            if let Some(svc) = g.service.as_ref().and_then(|k| self.engine.service(k)) {
                if !svc.selector.is_empty() {
                    sels.push(EndpointSelector {
                        namespaces: NamespaceScope::Named(svc.namespace.clone()),
                        labels: crate::model::LabelSelector {
                            match_labels: svc.selector.clone(),
                            match_expressions: vec![],
                        },
                        kinds: KindFilter::Any,
                    });
                }
            }
            blocks.extend(g.ip_blocks.iter().cloned());
            for c in &g.child_groups {
                self.group_parts(c, sels, blocks, seen);
            }
        }
    }

    fn applied(&self, list: &[AppliedTo], ep: &Endpoint) -> bool {
        list.iter().any(|a| match a {
            AppliedTo::Endpoints(s) => self.sel_match(s, ep, None),
            AppliedTo::Group(g) => {
                let mut sels = Vec::new();
                self.group_parts(g, &mut sels, &mut Vec::new(), &mut BTreeSet::new());
                sels.iter().any(|s| self.sel_match(s, ep, None))
            }
        })
    }

    fn rule_applies(&self, p: &Policy, r: &Rule, ep: &Endpoint) -> bool {
        match &r.applied_to {
            Some(list) => self.applied(list, ep),
            None => self.applied(&p.applied_to, ep),
        }
    }

    fn peer_match(
        &self,
        p: &Policy,
        r: &Rule,
        local: &Endpoint,
        ip: IpAddr,
        peer: &PeerKind<'_>,
    ) -> bool {
        let Peers::List(list) = &r.peers else {
            return true;
        };
        let cilium = matches!(
            p.key.kind,
            PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy
        );
        let sel_ok = |s: &EndpointSelector| match peer {
            PeerKind::Endpoint(e) => self.sel_match(s, e, Some(&local.namespace)),
            _ => false,
        };
        list.iter().any(|peer_spec| match peer_spec {
            Peer::Endpoints(s) => sel_ok(s),
            Peer::IpBlock(b) => b.contains(ip) && (!cilium || matches!(peer, PeerKind::World)),
            Peer::Group(g) => {
                let mut sels = Vec::new();
                let mut blocks = Vec::new();
                self.group_parts(g, &mut sels, &mut blocks, &mut BTreeSet::new());
                sels.iter().any(sel_ok) || blocks.iter().any(|b| b.contains(ip))
            }
            Peer::Entity(e) => match e {
                Entity::All => true,
                Entity::World => matches!(peer, PeerKind::World),
                Entity::Cluster => !matches!(peer, PeerKind::World),
                Entity::Host => matches!(peer, PeerKind::Host),
                Entity::RemoteNode => matches!(peer, PeerKind::Remote),
            },
        })
    }

    fn ports_match(&self, r: &Rule, q: &FlowQuery, resolve_on: Option<&Endpoint>) -> bool {
        if r.ports.is_empty() {
            return true;
        }
        let has_ports = matches!(
            q.protocol,
            IpProtocol::Tcp | IpProtocol::Udp | IpProtocol::Sctp
        );
        r.ports.iter().any(|pm| {
            let proto_ok = match pm.protocol {
                ProtocolMatch::Any => true,
                ProtocolMatch::Tcp => q.protocol == IpProtocol::Tcp,
                ProtocolMatch::Udp => q.protocol == IpProtocol::Udp,
                ProtocolMatch::Sctp => q.protocol == IpProtocol::Sctp,
                ProtocolMatch::Icmp {
                    v6,
                    icmp_type,
                    icmp_code,
                } => {
                    q.protocol
                        == if v6 {
                            IpProtocol::Icmpv6
                        } else {
                            IpProtocol::Icmp
                        }
                        && icmp_type.is_none_or(|t| t == q.icmp_type)
                        && icmp_code.is_none_or(|c| c == q.icmp_code)
                }
                ProtocolMatch::Number(n) => q.protocol.number() == n,
            };
            let dst_ok = match &pm.port {
                None => true,
                Some(PortSpec::Range(range)) => has_ports && range.contains(q.dst_port),
                Some(PortSpec::Named(name)) => {
                    has_ports
                        && resolve_on
                            .and_then(|e| e.named_ports.get(name))
                            .is_some_and(|np| np.port == q.dst_port && np.protocol == q.protocol)
                }
            };
            let src_ok = pm
                .source_ports
                .is_none_or(|range| has_ports && range.contains(q.src_port));
            proto_ok && dst_ok && src_ok
        })
    }

    fn tier_priority(&self, name: &str) -> u32 {
        let name = name.to_ascii_lowercase();
        static_tier(&name)
            .or_else(|| {
                self.engine
                    .tiers()
                    .find(|t| t.name.to_ascii_lowercase() == name)
                    .map(|t| t.priority)
            })
            .unwrap_or(u32::MAX)
    }
}

/// Decide one direction for `local`, the slow and obvious way.
pub(crate) fn decide(
    engine: &Engine,
    local: &Endpoint,
    dir: Direction,
    q: &FlowQuery,
) -> RefDecision {
    let cx = Ctx { engine };
    let cfg = engine.config();
    let audit_all = cfg.audit || cfg.audit_namespaces.contains(&local.namespace);
    let peer_ip = match dir {
        Direction::Egress => q.dst,
        Direction::Ingress => q.src,
    };
    let peer_ep = engine.endpoints().find(|e| e.ips.contains(&peer_ip));
    let peer = match peer_ep {
        Some(e) => PeerKind::Endpoint(e),
        None if cfg.host_ips.contains(&peer_ip) => PeerKind::Host,
        None if cfg.remote_node_ips.contains(&peer_ip) => PeerKind::Remote,
        None => PeerKind::World,
    };
    let resolve_on = match dir {
        Direction::Ingress => Some(local),
        Direction::Egress => peer_ep,
    };
    let matches = |p: &Policy, r: &Rule| {
        r.direction == dir
            && cx.rule_applies(p, r, local)
            && cx.peer_match(p, r, local, peer_ip, &peer)
            && cx.ports_match(r, q, resolve_on)
    };
    let decision = |p: &Policy, i: usize, passed: Option<(crate::model::PolicyKey, usize)>| {
        let action = match p.rules[i].action {
            Action::Allow | Action::Pass => FlowAction::Allow,
            Action::Drop => FlowAction::Drop,
            Action::Reject => FlowAction::Reject,
        };
        RefDecision {
            action,
            audit: action != FlowAction::Allow && (p.audit || audit_all),
            by: RefBy::Rule(p.key.clone(), i),
            passed,
        }
    };
    let is_baseline = |p: &Policy| match &p.layer {
        Layer::AntreaBaseline { .. } => true,
        Layer::AntreaTier { tier, .. } => tier.eq_ignore_ascii_case("baseline"),
        Layer::Kubernetes => false,
    };
    let prio = |p: &Policy| match &p.layer {
        Layer::AntreaBaseline { policy_priority } => *policy_priority,
        Layer::AntreaTier {
            policy_priority, ..
        } => *policy_priority,
        Layer::Kubernetes => 0.0,
    };

    // 1. Antrea tiers.
    let mut tiered: Vec<&Policy> = engine
        .policies()
        .filter(|p| matches!(p.layer, Layer::AntreaTier { .. }) && !is_baseline(p))
        .collect();
    tiered.sort_by(|a, b| {
        let ta = match &a.layer {
            Layer::AntreaTier { tier, .. } => cx.tier_priority(tier),
            _ => 0,
        };
        let tb = match &b.layer {
            Layer::AntreaTier { tier, .. } => cx.tier_priority(tier),
            _ => 0,
        };
        ta.cmp(&tb)
            .then(prio(a).total_cmp(&prio(b)))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut passed = None;
    'tiers: for p in &tiered {
        for (i, r) in p.rules.iter().enumerate() {
            if matches(p, r) {
                if r.action == Action::Pass {
                    passed = Some((p.key.clone(), i));
                    break 'tiers;
                }
                return decision(p, i, None);
            }
        }
    }
    // 2. Kubernetes layer: deny wins, then allow (first by policy key, rule order).
    let mut k8s: Vec<&Policy> = engine
        .policies()
        .filter(|p| matches!(p.layer, Layer::Kubernetes))
        .collect();
    k8s.sort_by(|a, b| a.key.cmp(&b.key));
    for want_deny in [true, false] {
        for p in &k8s {
            for (i, r) in p.rules.iter().enumerate() {
                let deny = matches!(r.action, Action::Drop | Action::Reject);
                if deny == want_deny && matches(p, r) {
                    return decision(p, i, passed);
                }
            }
        }
    }
    // 3. Isolation.
    let isolating: Vec<&&Policy> = k8s
        .iter()
        .filter(|p| {
            (p.isolates.contains(&dir) && cx.applied(&p.applied_to, local))
                || p.subject_isolation
                    .iter()
                    .any(|s| s.directions.contains(&dir) && cx.applied(&s.applied_to, local))
        })
        .collect();
    if let Some(first) = isolating.first() {
        return RefDecision {
            action: FlowAction::Drop,
            audit: isolating.iter().all(|p| p.audit) || audit_all,
            by: RefBy::Isolation(first.key.clone()),
            passed,
        };
    }
    // 4. Baseline.
    let mut base: Vec<&Policy> = engine.policies().filter(|p| is_baseline(p)).collect();
    base.sort_by(|a, b| prio(a).total_cmp(&prio(b)).then_with(|| a.key.cmp(&b.key)));
    for p in &base {
        for (i, r) in p.rules.iter().enumerate() {
            if matches(p, r) {
                return decision(p, i, passed);
            }
        }
    }
    // 5. Default.
    if cfg.default_deny {
        RefDecision {
            action: FlowAction::Drop,
            audit: audit_all,
            by: RefBy::DefaultDeny,
            passed,
        }
    } else {
        RefDecision {
            action: FlowAction::Allow,
            audit: false,
            by: RefBy::DefaultAllow,
            passed,
        }
    }
}

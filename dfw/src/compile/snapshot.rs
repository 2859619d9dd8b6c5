//! The immutable realized policy the data path reads.
//!
//! A [`PolicySnapshot`] is `Send + Sync` and meant to live in an `ArcSwap`: the engine builds
//! a new one after each change, and data-path threads keep classifying against the one they
//! loaded. Per-identity tables, endpoint entries and selector member sets are `Arc`s shared
//! with the previous snapshot unless the change touched them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::realize::{
    FastMap, FlowFacts, IdentityTables, NamedPortC, NsBits, PeerFacts, SEC_ALLOW, SEC_BASELINE,
    SEC_DENY, SEC_TIER,
};
use super::token::{HOST_TOKENS, REMOTE_NODE_TOKENS, WORLD_TOKENS};
use super::verdict::{DecidedBy, Decision, FlowAction, FlowQuery, RuleRef, Verdict};
use super::EngineConfig;
use crate::identity::Identity;
use crate::model::{Action, Direction, Endpoint, EndpointKey};

/// Names an endpoint across snapshots. The generation changes when the slot is reused, so a
/// stale handle is detected instead of silently naming another endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EndpointHandle {
    pub slot: u32,
    pub generation: u32,
}

/// The identity-level facts of an identity, shared by its endpoints.
#[derive(Debug)]
pub(crate) struct IdentityInfo {
    pub identity: Identity,
    pub ns: u32,
    /// Index tokens the identity carries as a peer (see `token`).
    pub tokens: Box<[u64]>,
    /// Sorted ids of the cached selectors matching the identity.
    pub matched: Box<[u32]>,
}

/// One endpoint as realized.
#[derive(Debug)]
pub(crate) struct EndpointEntry {
    pub endpoint: Endpoint,
    pub handle: EndpointHandle,
    pub info: Arc<IdentityInfo>,
    pub tables: Arc<IdentityTables>,
    pub named: Box<[NamedPortC]>,
}

/// A known endpoint in a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct EndpointView<'a> {
    entry: &'a EndpointEntry,
}

impl<'a> EndpointView<'a> {
    pub fn handle(&self) -> EndpointHandle {
        self.entry.handle
    }

    pub fn endpoint(&self) -> &'a Endpoint {
        &self.entry.endpoint
    }

    pub fn identity(&self) -> Identity {
        self.entry.info.identity
    }

    /// Number of realized rules applying to the endpoint in `direction`.
    pub fn rule_count(&self, direction: Direction) -> usize {
        self.entry.tables.dir(direction).rules.len()
    }

    /// Whether two views share their realized tables (same `Arc`): tells a test or a
    /// diagnostics tool that a change left this endpoint's policy untouched.
    pub fn same_tables(&self, other: &EndpointView<'_>) -> bool {
        Arc::ptr_eq(&self.entry.tables, &other.entry.tables)
    }

    /// The realized rules applying to the endpoint in `direction`, in precedence order.
    pub fn rules(&self, direction: Direction) -> impl Iterator<Item = &'a RuleRef> {
        self.entry
            .tables
            .dir(direction)
            .rules
            .iter()
            .map(|r| &*r.meta)
    }
}

/// Realized policy for every known endpoint.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub(crate) generation: u64,
    pub(crate) config: Arc<EngineConfig>,
    pub(crate) reserved: Arc<FastMap<IpAddr, Identity>>,
    /// `config.audit_namespaces` as interned namespace ids.
    pub(crate) audit_ns: Arc<NsBits>,
    pub(crate) endpoints: Arc<Vec<Option<Arc<EndpointEntry>>>>,
    pub(crate) by_ip: Arc<FastMap<IpAddr, u32>>,
    pub(crate) by_key: Arc<HashMap<EndpointKey, u32>>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicySnapshot>();
};

impl PolicySnapshot {
    /// Increases with every engine change; equal generations mean equal policy.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn entry(&self, slot: u32) -> Option<&EndpointEntry> {
        self.endpoints.get(slot as usize)?.as_deref()
    }

    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointView<'_>> {
        let slot = *self.by_ip.get(&ip)?;
        self.entry(slot).map(|entry| EndpointView { entry })
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Option<EndpointView<'_>> {
        let slot = *self.by_key.get(key)?;
        self.entry(slot).map(|entry| EndpointView { entry })
    }

    pub fn endpoint_by_handle(&self, handle: EndpointHandle) -> Option<EndpointView<'_>> {
        self.entry(handle.slot)
            .filter(|e| e.handle == handle)
            .map(|entry| EndpointView { entry })
    }

    pub fn endpoints(&self) -> impl Iterator<Item = EndpointView<'_>> {
        self.endpoints
            .iter()
            .filter_map(|e| e.as_deref().map(|entry| EndpointView { entry }))
    }

    pub fn endpoint_count(&self) -> usize {
        self.by_key.len()
    }

    /// The identity an address has as a peer: its endpoint's, a reserved one (host, remote
    /// node), or `world`.
    pub fn identity_of(&self, ip: IpAddr) -> Identity {
        match self.by_ip.get(&ip).and_then(|s| self.entry(*s)) {
            Some(e) => e.info.identity,
            None => self.reserved.get(&ip).copied().unwrap_or(Identity::WORLD),
        }
    }

    /// Classify a new flow: the sender's egress (if the source is a known endpoint) and the
    /// receiver's ingress (if the destination is). A flow neither end of which is a known
    /// endpoint is not vdfw's traffic: it is dropped with no decision.
    pub fn evaluate(&self, q: &FlowQuery) -> Verdict<'_> {
        let src = self.by_ip.get(&q.src).and_then(|s| self.entry(*s));
        let dst = self.by_ip.get(&q.dst).and_then(|s| self.entry(*s));
        let egress = src.map(|e| self.decide_entry(e, Direction::Egress, q));
        let ingress = dst.map(|e| self.decide_entry(e, Direction::Ingress, q));
        let action = match (&egress, &ingress) {
            (None, None) => FlowAction::Drop,
            _ => [egress, ingress]
                .iter()
                .flatten()
                .map(Decision::effective)
                .find(|a| *a != FlowAction::Allow)
                .unwrap_or(FlowAction::Allow),
        };
        let audit =
            action == FlowAction::Allow && [egress, ingress].iter().flatten().any(|d| d.audit);
        Verdict {
            action,
            audit,
            egress,
            ingress,
        }
    }

    /// One direction, for the data path: egress at the sender's vNIC (`local` = sender, the
    /// peer is `q.dst`), ingress at the receiver's vNIC (`local` = receiver, the peer is
    /// `q.src`). `None` if the handle is stale.
    pub fn decide(
        &self,
        local: EndpointHandle,
        direction: Direction,
        q: &FlowQuery,
    ) -> Option<Decision<'_>> {
        let e = self.entry(local.slot).filter(|e| e.handle == local)?;
        Some(self.decide_entry(e, direction, q))
    }

    /// Precedence, for one direction of one endpoint (see the module doc of `compile`).
    fn decide_entry<'a>(
        &'a self,
        local: &'a EndpointEntry,
        direction: Direction,
        q: &FlowQuery,
    ) -> Decision<'a> {
        let peer_ip = match direction {
            Direction::Egress => q.dst,
            Direction::Ingress => q.src,
        };
        let peer_entry = self.by_ip.get(&peer_ip).and_then(|s| self.entry(*s));
        let peer = match peer_entry {
            Some(e) => PeerFacts {
                ip: peer_ip,
                identity: e.info.identity,
                ns: e.info.ns,
                tokens: &e.info.tokens,
                matched: &e.info.matched,
            },
            None => {
                let identity = self
                    .reserved
                    .get(&peer_ip)
                    .copied()
                    .unwrap_or(Identity::WORLD);
                let tokens: &[u64] = match identity {
                    Identity::HOST => &HOST_TOKENS,
                    Identity::REMOTE_NODE => &REMOTE_NODE_TOKENS,
                    _ => &WORLD_TOKENS,
                };
                PeerFacts {
                    ip: peer_ip,
                    identity,
                    ns: u32::MAX,
                    tokens,
                    matched: &[],
                }
            }
        };
        let named = match direction {
            Direction::Ingress => Some(&*local.named),
            Direction::Egress => peer_entry.map(|e| &*e.named),
        };
        let facts = FlowFacts {
            proto: q.protocol.number(),
            has_ports: q.protocol.has_ports(),
            src_port: q.src_port,
            dst_port: q.dst_port,
            icmp_type: q.icmp_type,
            icmp_code: q.icmp_code,
        };
        let table = local.tables.dir(direction);
        let best = table.classify(&peer, &facts, named);
        // Audit for this decision: global, or the deciding (local) endpoint's namespace.
        let global_audit = self.config.audit || self.audit_ns.contains(local.info.ns);
        let by_rule = |pos: u32, passed_by: Option<&'a RuleRef>| {
            let rule = &table.rules[pos as usize];
            let action = match rule.action {
                Action::Allow | Action::Pass => FlowAction::Allow,
                Action::Drop => FlowAction::Drop,
                Action::Reject => FlowAction::Reject,
            };
            Decision {
                direction,
                action,
                audit: action != FlowAction::Allow && (rule.audit || global_audit),
                by: DecidedBy::Rule(&rule.meta),
                passed_by,
            }
        };
        let mut passed_by = None;
        if best[SEC_TIER] != u32::MAX {
            let rule = &table.rules[best[SEC_TIER] as usize];
            if rule.action == Action::Pass {
                passed_by = Some(&*rule.meta);
            } else {
                return by_rule(best[SEC_TIER], None);
            }
        }
        if best[SEC_DENY] != u32::MAX {
            return by_rule(best[SEC_DENY], passed_by);
        }
        if best[SEC_ALLOW] != u32::MAX {
            return by_rule(best[SEC_ALLOW], passed_by);
        }
        if let Some(p) = &table.isolated_by {
            return Decision {
                direction,
                action: FlowAction::Drop,
                audit: table.isolation_audit || global_audit,
                by: DecidedBy::Isolation(p),
                passed_by,
            };
        }
        if best[SEC_BASELINE] != u32::MAX {
            return by_rule(best[SEC_BASELINE], passed_by);
        }
        if self.config.default_deny {
            Decision {
                direction,
                action: FlowAction::Drop,
                audit: global_audit,
                by: DecidedBy::DefaultDeny,
                passed_by,
            }
        } else {
            Decision {
                direction,
                action: FlowAction::Allow,
                audit: false,
                by: DecidedBy::DefaultAllow,
                passed_by,
            }
        }
    }
}

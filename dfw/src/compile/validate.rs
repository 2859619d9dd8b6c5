//! Validation of a prospective object set, done before an apply touches anything (so a
//! failed apply changes nothing).

use std::collections::{BTreeMap, BTreeSet};

use super::EngineError;
use crate::model::{
    Action, AppliedTo, Group, GroupKey, Layer, NamespaceScope, Peer, Peers, Policy, PortSpec, Tier,
    ANTREA_STATIC_TIERS,
};

/// The name of the Antrea tier evaluated after the Kubernetes layer.
pub(crate) const BASELINE_TIER: &str = "baseline";
/// Custom tiers must sort before the application tier (Antrea rejects >= 250).
pub(crate) const MAX_CUSTOM_TIER_PRIORITY: u32 = 249;

/// Groups and tiers as they will be after the change.
pub(crate) struct View<'a> {
    pub groups: BTreeMap<&'a GroupKey, &'a Group>,
    /// Custom tiers by lower-cased name.
    pub tiers: BTreeMap<String, &'a Tier>,
}

/// Where a policy resolves to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResolvedLayer {
    Tier {
        tier: String,
        tier_priority: u32,
        priority: f64,
    },
    Kubernetes,
    Baseline {
        priority: f64,
    },
}

pub(crate) fn static_tier(name: &str) -> Option<u32> {
    ANTREA_STATIC_TIERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}

/// Resolve a policy's layer. Tier priorities come from the tier *name*: the static tiers,
/// then custom [`Tier`] objects (so a policy parsed before its Tier, with a placeholder
/// priority, still lands in the right place, and a tier's priority can be looked up across
/// applies). The parser's `tier_priority` is not trusted.
pub(crate) fn resolve_layer(
    policy: &Policy,
    tier_priority: impl Fn(&str) -> Option<u32>,
) -> Result<ResolvedLayer, EngineError> {
    let check_priority = |p: f64| {
        if p.is_finite() {
            Ok(p)
        } else {
            Err(EngineError::InvalidPolicy {
                policy: policy.key.clone(),
                reason: format!("priority {p} is not a finite number"),
            })
        }
    };
    match &policy.layer {
        Layer::Kubernetes => Ok(ResolvedLayer::Kubernetes),
        Layer::AntreaBaseline { policy_priority } => Ok(ResolvedLayer::Baseline {
            priority: check_priority(*policy_priority)?,
        }),
        Layer::AntreaTier {
            tier,
            policy_priority,
            ..
        } => {
            let name = tier.to_ascii_lowercase();
            let priority = check_priority(*policy_priority)?;
            if name == BASELINE_TIER {
                return Ok(ResolvedLayer::Baseline { priority });
            }
            let tier_priority = tier_priority(&name).ok_or_else(|| EngineError::UnknownTier {
                policy: policy.key.clone(),
                tier: tier.clone(),
            })?;
            Ok(ResolvedLayer::Tier {
                tier: name,
                tier_priority,
                priority,
            })
        }
    }
}

impl View<'_> {
    pub fn tier_priority(&self, name: &str) -> Option<u32> {
        static_tier(name).or_else(|| self.tiers.get(name).map(|t| t.priority))
    }
}

/// Tiers: custom priorities unique, below the application tier; static tiers not redefined.
pub(crate) fn validate_tiers(view: &View<'_>) -> Result<(), EngineError> {
    let mut used: BTreeMap<u32, String> = ANTREA_STATIC_TIERS
        .iter()
        .map(|(n, p)| (*p, n.to_string()))
        .collect();
    for (name, tier) in &view.tiers {
        if let Some(p) = static_tier(name) {
            if p != tier.priority {
                return Err(EngineError::InvalidTier {
                    tier: tier.name.clone(),
                    reason: format!("static tier has priority {p}"),
                });
            }
            continue;
        }
        if tier.priority > MAX_CUSTOM_TIER_PRIORITY {
            return Err(EngineError::InvalidTier {
                tier: tier.name.clone(),
                reason: format!(
                    "custom tier priority {} must be at most {MAX_CUSTOM_TIER_PRIORITY}",
                    tier.priority
                ),
            });
        }
        if let Some(other) = used.insert(tier.priority, name.clone()) {
            return Err(EngineError::InvalidTier {
                tier: tier.name.clone(),
                reason: format!("priority {} already used by tier {other:?}", tier.priority),
            });
        }
    }
    Ok(())
}

/// Groups: every child exists, no cycles.
pub(crate) fn validate_groups(view: &View<'_>) -> Result<(), EngineError> {
    for g in view.groups.values() {
        for c in &g.child_groups {
            if !view.groups.contains_key(c) {
                return Err(EngineError::UnknownGroup {
                    referrer: format!("group {}", g.key),
                    group: c.clone(),
                });
            }
        }
    }
    // Depth-first search with colours: 1 = on the stack, 2 = done.
    let mut colour: BTreeMap<&GroupKey, u8> = BTreeMap::new();
    for start in view.groups.keys() {
        let mut stack: Vec<(&GroupKey, usize)> = vec![(start, 0)];
        if colour.get(start).copied() == Some(2) {
            continue;
        }
        colour.insert(start, 1);
        while let Some((key, next)) = stack.last().copied() {
            let children = &view.groups[key].child_groups;
            if next < children.len() {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                let child = &children[next];
                let child = view.groups.get_key_value(child).map(|(k, _)| *k);
                let Some(child) = child else { continue };
                match colour.get(child).copied() {
                    Some(1) => {
                        let from = stack.iter().position(|(k, _)| *k == child).unwrap_or(0);
                        let mut cycle: Vec<GroupKey> =
                            stack[from..].iter().map(|(k, _)| (*k).clone()).collect();
                        cycle.push(child.clone());
                        return Err(EngineError::GroupCycle { cycle });
                    }
                    Some(_) => {}
                    None => {
                        colour.insert(child, 1);
                        stack.push((child, 0));
                    }
                }
            } else {
                colour.insert(key, 2);
                stack.pop();
            }
        }
    }
    Ok(())
}

/// The groups a policy names directly.
pub(crate) fn policy_group_refs(policy: &Policy) -> BTreeSet<GroupKey> {
    let mut out = BTreeSet::new();
    let applied = |a: &AppliedTo, out: &mut BTreeSet<GroupKey>| {
        if let AppliedTo::Group(g) = a {
            out.insert(g.clone());
        }
    };
    for a in &policy.applied_to {
        applied(a, &mut out);
    }
    for a in policy.subject_isolation.iter().flat_map(|s| &s.applied_to) {
        applied(a, &mut out);
    }
    for r in &policy.rules {
        for a in r.applied_to.iter().flatten() {
            applied(a, &mut out);
        }
        if let Peers::List(peers) = &r.peers {
            for p in peers {
                if let Peer::Group(g) = p {
                    out.insert(g.clone());
                }
            }
        }
    }
    out
}

/// Whether `group` (or one of its descendants) has a selector scoped to "the applied-to
/// namespace", which means nothing inside an appliedTo.
fn group_has_same_ns(view: &View<'_>, group: &GroupKey, seen: &mut BTreeSet<GroupKey>) -> bool {
    if !seen.insert(group.clone()) {
        return false;
    }
    let Some(g) = view.groups.get(group) else {
        return false;
    };
    g.selector
        .as_ref()
        .is_some_and(|s| s.namespaces == NamespaceScope::SameAsAppliedTo)
        || g.child_groups
            .iter()
            .any(|c| group_has_same_ns(view, c, seen))
}

/// Everything about one policy that can be checked against the prospective view.
pub(crate) fn validate_policy(policy: &Policy, view: &View<'_>) -> Result<(), EngineError> {
    let layer = resolve_layer(policy, |n| view.tier_priority(n))?;
    for g in policy_group_refs(policy) {
        if !view.groups.contains_key(&g) {
            return Err(EngineError::UnknownGroup {
                referrer: format!("policy {}", policy.key),
                group: g,
            });
        }
    }
    let check_applied = |list: &[AppliedTo], rule: Option<&str>| -> Result<(), EngineError> {
        for a in list {
            let bad = match a {
                AppliedTo::Endpoints(s) => s.namespaces == NamespaceScope::SameAsAppliedTo,
                AppliedTo::Group(g) => group_has_same_ns(view, g, &mut BTreeSet::new()),
            };
            if bad {
                let reason = "appliedTo cannot use `namespaces: {match: Self}`".to_string();
                return Err(match rule {
                    Some(r) => EngineError::InvalidRule {
                        policy: policy.key.clone(),
                        rule: r.to_string(),
                        reason,
                    },
                    None => EngineError::InvalidPolicy {
                        policy: policy.key.clone(),
                        reason,
                    },
                });
            }
        }
        Ok(())
    };
    check_applied(&policy.applied_to, None)?;
    for s in &policy.subject_isolation {
        check_applied(&s.applied_to, None)?;
    }
    for r in &policy.rules {
        let invalid = |reason: String| EngineError::InvalidRule {
            policy: policy.key.clone(),
            rule: r.name.clone(),
            reason,
        };
        if let Some(a) = &r.applied_to {
            check_applied(a, Some(&r.name))?;
        }
        match (&layer, r.action) {
            (ResolvedLayer::Kubernetes, Action::Pass) => {
                return Err(invalid(
                    "Pass is an Antrea tier action; Kubernetes/Cilium rules allow or deny".into(),
                ))
            }
            (ResolvedLayer::Baseline { .. }, Action::Pass) => {
                return Err(invalid(
                    "Pass is not allowed in the baseline tier (nothing follows it)".into(),
                ))
            }
            _ => {}
        }
        for p in &r.ports {
            let ranges = [
                match &p.port {
                    Some(PortSpec::Range(r)) => Some(*r),
                    _ => None,
                },
                p.source_ports,
            ];
            for range in ranges.into_iter().flatten() {
                if range.start > range.end {
                    return Err(invalid(format!(
                        "port range {}-{} is empty",
                        range.start, range.end
                    )));
                }
            }
        }
    }
    Ok(())
}

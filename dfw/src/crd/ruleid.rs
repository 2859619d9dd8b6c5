//! Stable rule identities.
//!
//! NSX users lose counters and log correlation when rule ids renumber on edits; so a rule's
//! id here is a hash of what the rule *is*, not where it sits: the policy key plus a canonical
//! serialization of the rule's matching content (direction, action, peers, ports, per-rule
//! appliedTo, unenforced fields, and its name when the author gave one). Peers, ports and
//! appliedTo entries are sorted first (they are ORed, order carries no meaning). Generated
//! names (`ingress-3`) and logging settings (`enableLogging`, `logLabel`) are left out, so
//! re-ordering rules or toggling logging keeps every id.
//!
//! The hash is FNV-1a 64 over the JSON encoding of that canonical form: fixed, with no
//! per-process keys, so ids are the same in every process and across restarts (for the same
//! vdfw version: changing the model's serde shape changes ids). Identical rules in one policy
//! are told apart by occurrence number (and the same loop resolves the astronomically unlikely
//! 64-bit collision).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::model::{
    Action, AppliedTo, Direction, Peers, PolicyKey, PortMatch, Rule, RuleId, Unenforced,
};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

#[derive(Serialize)]
struct Canonical<'a> {
    policy: &'a PolicyKey,
    name: Option<&'a str>,
    direction: Direction,
    action: Action,
    peers: Peers,
    ports: Vec<PortMatch>,
    applied_to: Option<Vec<AppliedTo>>,
    unenforced: Vec<Unenforced>,
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

fn canonical_bytes(policy: &PolicyKey, rule: &Rule, explicit_name: bool) -> Vec<u8> {
    let canonical = Canonical {
        policy,
        name: explicit_name.then_some(rule.name.as_str()),
        direction: rule.direction,
        action: rule.action,
        peers: match &rule.peers {
            Peers::Any => Peers::Any,
            Peers::List(list) => Peers::List(sorted(list)),
        },
        ports: sorted(&rule.ports),
        applied_to: rule.applied_to.as_deref().map(sorted),
        unenforced: sorted(&rule.unenforced),
    };
    // Serializing these plain data types to JSON cannot fail (string map keys only); the
    // Debug fallback keeps the function total without a panic path.
    serde_json::to_vec(&canonical).unwrap_or_else(|_| {
        format!(
            "{policy:?}{:?}{:?}{:?}{:?}{:?}{:?}",
            rule.direction, rule.action, rule.peers, rule.ports, rule.applied_to, rule.unenforced
        )
        .into_bytes()
    })
}

/// Assigns ids to a policy's rules. `explicit_name[i]` says whether rule `i`'s name was
/// written by the author (and so is part of its identity).
pub(crate) fn assign(policy: &PolicyKey, rules: &mut [Rule], explicit_name: &[bool]) {
    let mut used = BTreeSet::new();
    for (i, rule) in rules.iter_mut().enumerate() {
        let bytes = canonical_bytes(policy, rule, explicit_name.get(i).copied().unwrap_or(false));
        let base = fnv1a(&bytes, FNV_OFFSET);
        let mut id = base;
        let mut occurrence = 0u64;
        while !used.insert(id) {
            occurrence += 1;
            id = fnv1a(format!("#{occurrence}").as_bytes(), base);
        }
        rule.id = RuleId(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b"", FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar", FNV_OFFSET), 0x8594_4171_f739_67e8);
    }
}

//! Conntrack marks that name the policy decision a connection was admitted by.
//!
//! A connection's 64-bit conntrack mark packs the facts the data path needs on every packet
//! (direction, action, audit, log) and a slot in a [`MarkTable`] that holds the deciding rule
//! or policy, so a flow log for the millionth packet of a connection names the same rule as
//! for its first one without any policy lookup.
//!
//! ```text
//!  bits  0..32  slot in the mark table (NO_SLOT: the decider needs none: a default)
//!  bits 32..34  what decided: rule, isolation, default allow, default deny
//!  bit  34      direction decided: 1 egress (packet leaving the guest), 0 ingress
//!  bits 35..37  action asked for: allow, drop, reject
//!  bit  37      audit (a would-be drop that was forwarded)
//!  bit  38      the deciding rule has enableLogging
//!  bits 40..56  table epoch (see below)
//!  bit  63      set on every mark this module writes
//! ```
//!
//! The table is rebuilt, compacted, at every [`super::StatefulFirewall::recheck`], which
//! re-marks every live connection; the epoch tells a mark kept from before the rebuild (by a
//! flow-log consumer) from a current one, so it is never resolved against the wrong entry.
//! (16 bits: a mark kept across 65536 rechecks could alias; nothing in the data path keeps
//! marks that long.)

use std::collections::HashMap;

use crate::compile::{DecidedBy, Decision, FlowAction, PolicyRef, RuleRef};
use crate::model::{Direction, RuleId};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

const NO_SLOT: u32 = u32::MAX;
const KIND_SHIFT: u32 = 32;
const KIND_RULE: u64 = 0;
const KIND_ISOLATION: u64 = 1;
const KIND_DEFAULT_ALLOW: u64 = 2;
const KIND_DEFAULT_DENY: u64 = 3;
const EGRESS_BIT: u64 = 1 << 34;
const ACTION_SHIFT: u32 = 35;
const AUDIT_BIT: u64 = 1 << 37;
const LOG_BIT: u64 = 1 << 38;
const EPOCH_SHIFT: u32 = 40;
const VALID_BIT: u64 = 1 << 63;

/// A decoded-on-demand conntrack mark written by [`super::StatefulFirewall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark(pub u64);

impl Mark {
    /// "No decision": what a packet dropped before any policy decision carries.
    pub const NONE: Mark = Mark(0);

    /// Whether this module wrote the mark (and so its fields mean something).
    pub const fn is_valid(self) -> bool {
        self.0 & VALID_BIT != 0
    }

    /// The direction the decision was made for (`None` for an invalid mark).
    pub const fn direction(self) -> Option<Direction> {
        if !self.is_valid() {
            None
        } else if self.0 & EGRESS_BIT != 0 {
            Some(Direction::Egress)
        } else {
            Some(Direction::Ingress)
        }
    }

    /// The action the decision asked for (before audit). Drop for an invalid mark.
    pub const fn action(self) -> FlowAction {
        if !self.is_valid() {
            return FlowAction::Drop;
        }
        match (self.0 >> ACTION_SHIFT) & 3 {
            0 => FlowAction::Allow,
            2 => FlowAction::Reject,
            _ => FlowAction::Drop,
        }
    }

    /// A would-be drop that was forwarded because of audit mode.
    pub const fn audit(self) -> bool {
        self.0 & AUDIT_BIT != 0
    }

    /// The deciding rule asks for its flows to be logged.
    pub const fn log(self) -> bool {
        self.0 & LOG_BIT != 0
    }

    fn kind(self) -> u64 {
        (self.0 >> KIND_SHIFT) & 3
    }

    fn slot(self) -> u32 {
        self.0 as u32
    }

    fn epoch(self) -> u16 {
        (self.0 >> EPOCH_SHIFT) as u16
    }

    fn encode(d: &Decision<'_>, slot: u32, epoch: u16) -> Mark {
        let kind = match d.by {
            DecidedBy::Rule(_) => KIND_RULE,
            DecidedBy::Isolation(_) => KIND_ISOLATION,
            DecidedBy::DefaultAllow => KIND_DEFAULT_ALLOW,
            DecidedBy::DefaultDeny => KIND_DEFAULT_DENY,
        };
        let action = match d.action {
            FlowAction::Allow => 0u64,
            FlowAction::Drop => 1,
            FlowAction::Reject => 2,
        };
        let mut m = VALID_BIT
            | u64::from(slot)
            | kind << KIND_SHIFT
            | action << ACTION_SHIFT
            | u64::from(epoch) << EPOCH_SHIFT;
        if d.direction == Direction::Egress {
            m |= EGRESS_BIT;
        }
        if d.audit {
            m |= AUDIT_BIT;
        }
        if d.log() {
            m |= LOG_BIT;
        }
        Mark(m)
    }
}

/// What a mark names, borrowed from the firewall's mark table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarkInfo<'a> {
    pub direction: Direction,
    /// The action the decision asked for (before audit).
    pub action: FlowAction,
    pub audit: bool,
    pub by: DecidedBy<'a>,
}

impl<'a> MarkInfo<'a> {
    pub fn rule(&self) -> Option<&'a RuleRef> {
        match self.by {
            DecidedBy::Rule(r) => Some(r),
            _ => None,
        }
    }

    /// The deciding rule's stable id (the key for per-rule counters).
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
}

#[derive(Debug, Clone)]
enum Owned {
    Rule(RuleRef),
    Isolation(PolicyRef),
}

#[derive(Debug, Clone)]
struct Slot {
    owned: Owned,
    /// Snapshot generation the copy was last checked against.
    generation: u64,
}

/// Owned copies of the rules and policies that admitted tracked connections.
///
/// Interning costs one `u64` hash probe per *new* connection (rules are keyed by their
/// stable [`RuleId`]); a rule is copied once, and again only when a newer snapshot carries
/// different metadata for it (renamed log label, moved priority).
#[derive(Debug, Default)]
pub(crate) struct MarkTable {
    slots: Vec<Slot>,
    by_rule: FastMap<u64, u32>,
    /// Rules whose id is already taken by another rule (hand-built policies with equal ids;
    /// a 64-bit collision); searched linearly, empty in practice.
    rule_collisions: Vec<u32>,
    /// Isolating policies (only audited isolation admits connections).
    by_policy: HashMap<crate::model::PolicyKey, u32>,
    epoch: u16,
}

impl MarkTable {
    pub fn with_epoch(epoch: u16) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// A mark for `d`; interns its rule or policy when `keep` (the connection will be
    /// tracked and later packets need to name it).
    pub fn mark(&mut self, d: &Decision<'_>, generation: u64, keep: bool) -> Mark {
        let slot = if keep {
            match d.by {
                DecidedBy::Rule(r) => self.intern_rule(r, generation),
                DecidedBy::Isolation(p) => self.intern_policy(p, generation),
                DecidedBy::DefaultAllow | DecidedBy::DefaultDeny => NO_SLOT,
            }
        } else {
            NO_SLOT
        };
        Mark::encode(d, slot, self.epoch)
    }

    fn push(&mut self, owned: Owned, generation: u64) -> u32 {
        // Slots are u32 and NO_SLOT is reserved: a table can name 4 billion deciders, far
        // beyond the distinct rules of any policy set; past that, connections go unnamed.
        let Ok(slot) = u32::try_from(self.slots.len()) else {
            return NO_SLOT;
        };
        if slot == NO_SLOT {
            return NO_SLOT;
        }
        self.slots.push(Slot { owned, generation });
        slot
    }

    fn refresh_rule(slot: &mut Slot, r: &RuleRef, generation: u64) {
        if slot.generation != generation {
            if let Owned::Rule(old) = &slot.owned {
                if old != r {
                    slot.owned = Owned::Rule(r.clone());
                }
            }
            slot.generation = generation;
        }
    }

    fn same_rule(slot: &Slot, r: &RuleRef) -> bool {
        matches!(&slot.owned, Owned::Rule(o)
            if o.rule_id == r.rule_id && o.policy.key == r.policy.key && o.rule_name == r.rule_name)
    }

    fn intern_rule(&mut self, r: &RuleRef, generation: u64) -> u32 {
        if let Some(&i) = self.by_rule.get(&r.rule_id.0) {
            let slot = &mut self.slots[i as usize];
            if Self::same_rule(slot, r) {
                Self::refresh_rule(slot, r, generation);
                return i;
            }
            for &j in &self.rule_collisions {
                let slot = &mut self.slots[j as usize];
                if Self::same_rule(slot, r) {
                    Self::refresh_rule(slot, r, generation);
                    return j;
                }
            }
            let j = self.push(Owned::Rule(r.clone()), generation);
            if j != NO_SLOT {
                self.rule_collisions.push(j);
            }
            return j;
        }
        let i = self.push(Owned::Rule(r.clone()), generation);
        if i != NO_SLOT {
            self.by_rule.insert(r.rule_id.0, i);
        }
        i
    }

    fn intern_policy(&mut self, p: &PolicyRef, generation: u64) -> u32 {
        if let Some(&i) = self.by_policy.get(&p.key) {
            let slot = &mut self.slots[i as usize];
            if slot.generation != generation {
                slot.owned = Owned::Isolation(p.clone());
                slot.generation = generation;
            }
            return i;
        }
        let i = self.push(Owned::Isolation(p.clone()), generation);
        if i != NO_SLOT {
            self.by_policy.insert(p.key.clone(), i);
        }
        i
    }

    /// Decode a mark of this table. `None` for marks not written by this module, marks of
    /// an earlier table (before a recheck), and rule/isolation marks with no slot.
    pub fn describe(&self, mark: Mark) -> Option<MarkInfo<'_>> {
        let direction = mark.direction()?;
        if mark.epoch() != self.epoch {
            return None;
        }
        let by = match mark.kind() {
            KIND_DEFAULT_ALLOW => DecidedBy::DefaultAllow,
            KIND_DEFAULT_DENY => DecidedBy::DefaultDeny,
            kind => match (&self.slots.get(mark.slot() as usize)?.owned, kind) {
                (Owned::Rule(r), KIND_RULE) => DecidedBy::Rule(r),
                (Owned::Isolation(p), KIND_ISOLATION) => DecidedBy::Isolation(p),
                _ => return None,
            },
        };
        Some(MarkInfo {
            direction,
            action: mark.action(),
            audit: mark.audit(),
            by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{PolicyLayer, PolicyRef};
    use crate::model::{Action, PolicyKey, PolicyKind};

    fn rule(id: u64, name: &str, label: Option<&str>) -> RuleRef {
        RuleRef {
            policy: PolicyRef {
                key: PolicyKey {
                    kind: PolicyKind::AntreaClusterNetworkPolicy,
                    namespace: None,
                    name: "p".into(),
                },
                layer: PolicyLayer::Kubernetes,
                audit: false,
            },
            rule_id: RuleId(id),
            rule_name: name.into(),
            rule_index: 0,
            direction: Direction::Egress,
            action: Action::Allow,
            log_label: label.map(Into::into),
            enable_logging: label.is_some(),
        }
    }

    fn decision(r: &RuleRef) -> Decision<'_> {
        Decision {
            direction: r.direction,
            action: FlowAction::Allow,
            audit: false,
            by: DecidedBy::Rule(r),
            passed_by: None,
        }
    }

    #[test]
    fn marks_round_trip_and_intern_once() {
        let mut t = MarkTable::with_epoch(3);
        let a = rule(1, "a", Some("web"));
        let b = rule(2, "b", None);
        let ma = t.mark(&decision(&a), 1, true);
        let mb = t.mark(&decision(&b), 1, true);
        assert_eq!(t.mark(&decision(&a), 1, true), ma);
        assert_eq!(t.len(), 2);
        assert_eq!(ma.direction(), Some(Direction::Egress));
        assert_eq!(ma.action(), FlowAction::Allow);
        assert!(ma.log() && !mb.log());
        assert_eq!(t.describe(ma).unwrap().rule(), Some(&a));
        assert_eq!(t.describe(mb).unwrap().rule_id(), Some(RuleId(2)));
        // Not kept: no slot, so nothing to name.
        let loose = t.mark(&decision(&rule(9, "z", None)), 1, false);
        assert!(t.describe(loose).is_none());
        assert_eq!(t.len(), 2);
        // Another table epoch does not resolve the mark.
        assert!(MarkTable::with_epoch(4).describe(ma).is_none());
        assert!(t.describe(Mark::NONE).is_none());
        assert_eq!(Mark::NONE.action(), FlowAction::Drop);
    }

    #[test]
    fn a_new_generation_refreshes_metadata_and_collisions_stay_apart() {
        let mut t = MarkTable::default();
        let a = rule(1, "a", Some("old"));
        let m = t.mark(&decision(&a), 1, true);
        let a2 = rule(1, "a", Some("new"));
        assert_eq!(t.mark(&decision(&a2), 2, true), {
            // Same slot, but the log flag comes from the new decision.
            Mark(m.0)
        });
        assert_eq!(
            t.describe(m).unwrap().rule().unwrap().log_label.as_deref(),
            Some("new")
        );
        // Same id, different rule (hand-built ids): its own slot.
        let c = rule(1, "c", None);
        let mc = t.mark(&decision(&c), 2, true);
        assert_ne!(mc, m);
        assert_eq!(t.describe(mc).unwrap().rule().unwrap().rule_name, "c");
        assert_eq!(t.describe(m).unwrap().rule().unwrap().rule_name, "a");
    }
}

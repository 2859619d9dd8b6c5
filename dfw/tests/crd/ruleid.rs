//! Rule identity: derived from content and policy key, not position.

use std::collections::BTreeMap;

use dfw::model::{Policy, RuleId};

use crate::policy;

fn acnp(rules: &[&str]) -> String {
    let mut s = String::from("apiVersion: crd.antrea.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: ids}\nspec:\n  priority: 1\n  appliedTo: [{podSelector: {}}]\n  ingress:\n");
    for r in rules {
        s.push_str("    - ");
        s.push_str(r);
        s.push('\n');
    }
    s
}

const A: &str =
    "{action: Allow, from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}";
const B: &str = "{action: Drop, from: [{ipBlock: {cidr: 10.0.0.0/8}}]}";
const C: &str = "{action: Reject, ports: [{port: 22}]}";
const C_EDITED: &str = "{action: Reject, ports: [{port: 2222}]}";

fn ids(p: &Policy) -> Vec<RuleId> {
    p.rules.iter().map(|r| r.id).collect()
}

#[test]
fn reordering_keeps_ids() {
    let abc = policy(&acnp(&[A, B, C]));
    let cab = policy(&acnp(&[C, A, B]));
    let by_content = |p: &Policy| -> BTreeMap<String, RuleId> {
        p.rules
            .iter()
            .map(|r| (format!("{:?}{:?}{:?}", r.action, r.peers, r.ports), r.id))
            .collect()
    };
    assert_eq!(by_content(&abc), by_content(&cab));
    // Generated names follow the position, ids do not.
    assert_eq!(abc.rules[2].name, "ingress-2");
    assert_eq!(cab.rules[0].name, "ingress-0");
    assert_eq!(abc.rules[2].id, cab.rules[0].id);
}

#[test]
fn editing_one_rule_changes_only_its_id() {
    let before = ids(&policy(&acnp(&[A, B, C])));
    let after = ids(&policy(&acnp(&[A, B, C_EDITED])));
    assert_eq!(before[..2], after[..2]);
    assert_ne!(before[2], after[2]);
    // Inserting a rule in front changes nobody else's id.
    let inserted = ids(&policy(&acnp(&[C_EDITED, A, B, C])));
    assert_eq!(inserted[1..], before[..]);
}

#[test]
fn identical_rules_get_distinct_stable_ids() {
    let p = policy(&acnp(&[A, A, B]));
    assert_ne!(p.rules[0].id, p.rules[1].id);
    let again = policy(&acnp(&[A, A, B]));
    assert_eq!(ids(&p), ids(&again));
    // The first occurrence keeps the id of the lone rule.
    let single = policy(&acnp(&[A, B]));
    assert_eq!(p.rules[0].id, single.rules[0].id);
}

#[test]
fn logging_settings_do_not_change_ids_but_names_do() {
    let plain = policy(&acnp(&[C])).rules[0].id;
    let logged = policy(&acnp(&[
        "{action: Reject, ports: [{port: 22}], enableLogging: true, logLabel: x}",
    ]))
    .rules[0]
        .id;
    assert_eq!(plain, logged);
    let named = policy(&acnp(&[
        "{action: Reject, ports: [{port: 22}], name: no-ssh}",
    ]))
    .rules[0]
        .id;
    assert_ne!(plain, named);
    // OR-lists are order-insensitive.
    let ab = policy(&acnp(&[
        "{action: Drop, from: [{ipBlock: {cidr: 10.0.0.0/8}}, {ipBlock: {cidr: 192.168.0.0/16}}]}",
    ]))
    .rules[0]
        .id;
    let ba = policy(&acnp(&[
        "{action: Drop, from: [{ipBlock: {cidr: 192.168.0.0/16}}, {ipBlock: {cidr: 10.0.0.0/8}}]}",
    ]))
    .rules[0]
        .id;
    assert_eq!(ab, ba);
}

#[test]
fn ids_depend_on_the_policy_key() {
    let a = policy(&acnp(&[A])).rules[0].id;
    let b = policy(&acnp(&[A]).replace("name: ids", "name: other")).rules[0].id;
    assert_ne!(a, b);
}

/// Guards the canonical form: ids are persisted by users (counters, log correlation), so a
/// change here is a breaking change that must be deliberate.
#[test]
fn golden_id() {
    let p = policy("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 443}]}]\n");
    assert_eq!(p.rules[0].id.to_string(), GOLDEN);
}

const GOLDEN: &str = "f29b2d900ceb87f5";

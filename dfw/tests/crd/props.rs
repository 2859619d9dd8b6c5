//! Property tests: label maps round-trip, rule ids ignore order, no input makes the parser
//! panic.

use std::collections::BTreeMap;

use dfw::crd::parse_documents;
use dfw::model::{AppliedTo, RuleId};
use proptest::prelude::*;

use crate::policy;

/// Valid Kubernetes label keys (optionally prefixed) and values.
fn label_key() -> impl Strategy<Value = String> {
    let name = "[a-zA-Z0-9]([a-zA-Z0-9._-]{0,20}[a-zA-Z0-9])?";
    (
        proptest::option::of("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]{2,5})?"),
        name,
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
}

fn label_value() -> impl Strategy<Value = String> {
    "([a-zA-Z0-9]([a-zA-Z0-9._-]{0,20}[a-zA-Z0-9])?)?"
}

/// YAML single-quoted scalar.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn label_maps_roundtrip(labels in proptest::collection::btree_map(label_key(), label_value(), 0..8)) {
        let mut text = String::from("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  podSelector:\n    matchLabels:\n");
        for (k, v) in &labels {
            text.push_str(&format!("      {}: {}\n", q(k), q(v)));
        }
        let p = policy(&text);
        let AppliedTo::Endpoints(sel) = &p.applied_to[0] else { panic!() };
        prop_assert_eq!(&sel.labels.match_labels, &labels);
        prop_assert!(sel.labels.match_expressions.is_empty());
        prop_assert!(sel.labels.matches(&labels));
    }

    #[test]
    fn rule_ids_ignore_rule_order(
        ports in proptest::collection::btree_set(1u16..=65535, 1..12),
        seed in any::<u64>(),
    ) {
        let ports: Vec<u16> = ports.into_iter().collect();
        let mut shuffled = ports.clone();
        // Deterministic Fisher-Yates from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let cnp = |ps: &[u16]| {
            let mut t = String::from("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  endpointSelector: {}\n  ingress:\n");
            for p in ps {
                t.push_str(&format!("    - toPorts: [{{ports: [{{port: '{p}', protocol: TCP}}]}}]\n"));
            }
            policy(&t)
        };
        let by_port = |ps: &[u16]| -> BTreeMap<String, RuleId> {
            cnp(ps).rules.iter().map(|r| (format!("{:?}", r.ports), r.id)).collect()
        };
        let a = by_port(&ports);
        prop_assert_eq!(a.len(), ports.len());
        prop_assert_eq!(a, by_port(&shuffled));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_documents(&text, "fuzz.yaml");
    }

    #[test]
    fn mutated_policies_never_panic(cut in 0usize..600, len in 0usize..20, insert in "[ :\\-\\[\\]{}'\"a-z0-9\n]{0,6}") {
        let base = include_str!("../../../configs/policies/antrea/payments.yaml");
        let mut bytes: Vec<char> = base.chars().collect();
        let start = cut.min(bytes.len());
        let end = (start + len).min(bytes.len());
        bytes.splice(start..end, insert.chars());
        let text: String = bytes.into_iter().collect();
        let _ = parse_documents(&text, "fuzz.yaml");
    }
}

//! Index tokens: the keys under which the classifier files a rule's peers.
//!
//! A selector is filed under a token that every identity it matches is guaranteed to carry
//! (one of its `matchLabels` pairs, an `In` value, its namespace, ...). A lookup then probes
//! only the handful of tokens the peer carries instead of scanning every rule, and confirms a
//! candidate with the selector cache. The invariant that makes this exact:
//!
//! > if selector `s` matches identity `i`, then `tokens(s) ∩ tokens(i) ≠ ∅`.

use std::collections::HashMap;
use std::hash::Hash;

use crate::model::{
    EndpointSelector, LabelSelector, NamespaceScope, SelectorOperator,
    CILIUM_NAMESPACE_LABELS_PREFIX,
};

/// Token kinds live in the top 6 bits; the low 32 bits carry an interned id; bits 32..58 are
/// left free for the classifier to fold a port key in.
pub(crate) mod kind {
    pub const LABEL: u64 = 1;
    pub const NAMESPACE: u64 = 2;
    pub const NS_LABEL: u64 = 3;
    pub const ANY_ENDPOINT: u64 = 4;
    pub const ANY_PEER: u64 = 5;
    pub const WORLD: u64 = 6;
    pub const HOST: u64 = 7;
    pub const REMOTE_NODE: u64 = 8;
    pub const CLUSTER: u64 = 9;
}

pub(crate) const fn token(kind: u64, id: u32) -> u64 {
    (kind << 58) | id as u64
}

pub(crate) const ANY_ENDPOINT: u64 = token(kind::ANY_ENDPOINT, 0);
pub(crate) const ANY_PEER: u64 = token(kind::ANY_PEER, 0);
pub(crate) const WORLD: u64 = token(kind::WORLD, 0);
pub(crate) const HOST: u64 = token(kind::HOST, 0);
pub(crate) const REMOTE_NODE: u64 = token(kind::REMOTE_NODE, 0);
pub(crate) const CLUSTER: u64 = token(kind::CLUSTER, 0);

/// Tokens carried by peers that are not endpoints.
pub(crate) const WORLD_TOKENS: [u64; 2] = [WORLD, ANY_PEER];
pub(crate) const HOST_TOKENS: [u64; 3] = [HOST, CLUSTER, ANY_PEER];
pub(crate) const REMOTE_NODE_TOKENS: [u64; 3] = [REMOTE_NODE, CLUSTER, ANY_PEER];

/// A string → dense id table. Ids are never recycled (the tables stay small: distinct label
/// pairs, namespaces and port names).
#[derive(Debug)]
pub(crate) struct Interner<K> {
    ids: HashMap<K, u32>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Interner<K> {
    pub fn intern(&mut self, key: &K) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.ids.len() as u32;
        self.ids.insert(key.clone(), id);
        id
    }
}

/// All interners of an engine.
#[derive(Debug, Default)]
pub(crate) struct Interners {
    pub pairs: Interner<(String, String)>,
    pub namespaces: Interner<String>,
    pub port_names: Interner<String>,
}

impl Interners {
    pub fn pair(&mut self, k: &str, v: &str) -> u32 {
        let key = (k.to_string(), v.to_string());
        self.pairs.intern(&key)
    }

    pub fn namespace(&mut self, ns: &str) -> u32 {
        self.namespaces.intern(&ns.to_string())
    }

    pub fn port_name(&mut self, name: &str) -> u32 {
        self.port_names.intern(&name.to_string())
    }
}

/// The token of one `key=value` constraint of a label selector of token kind `kind`.
///
/// A Cilium namespace pseudo-label (`io.cilium.k8s.namespace.labels.<k>=v`) is filed under
/// the namespace-label token of `k=v`, which every endpoint of such a namespace carries
/// anyway: identities then need no extra token per namespace label (each peer token costs
/// the classifier a probe), and the invariant holds because an identity has the pseudo-label
/// exactly when its namespace has the label.
fn pair_token(kind: u64, k: &str, v: &str, i: &mut Interners) -> u64 {
    if kind == self::kind::LABEL {
        if let Some(ns_key) = k.strip_prefix(CILIUM_NAMESPACE_LABELS_PREFIX) {
            return token(self::kind::NS_LABEL, i.pair(ns_key, v));
        }
    }
    token(kind, i.pair(k, v))
}

/// Whether an identity's selector label is a namespace pseudo-label that [`pair_token`] files
/// under a namespace-label token (so the identity needs no label token for it).
pub(crate) fn is_namespace_pseudo_label(k: &str) -> bool {
    k.starts_with(CILIUM_NAMESPACE_LABELS_PREFIX)
}

/// Tokens for a label selector in the given token kind (LABEL or NS_LABEL), or `None` if the
/// selector has no equality constraint to file it under.
fn label_tokens(
    sel: &LabelSelector,
    kind: u64,
    skip_key: Option<&str>,
    i: &mut Interners,
) -> Option<Vec<u64>> {
    // Prefer a matchLabels pair that is not a namespace pseudo-label (more selective: those
    // are shared by every endpoint of a namespace).
    let pseudo = |k: &str| skip_key.is_some_and(|s| k == s || is_namespace_pseudo_label(k));
    let pick = sel
        .match_labels
        .iter()
        .find(|(k, _)| !pseudo(k))
        .or_else(|| sel.match_labels.iter().next());
    if let Some((k, v)) = pick {
        return Some(vec![pair_token(kind, k, v, i)]);
    }
    // Otherwise the `In` expression with the fewest values: one token per value.
    let best = sel
        .match_expressions
        .iter()
        .filter(|e| e.operator == SelectorOperator::In && !e.values.is_empty())
        .min_by_key(|e| e.values.len())?;
    Some(
        best.values
            .iter()
            .map(|v| pair_token(kind, &best.key, v, i))
            .collect(),
    )
}

/// The tokens a selector is filed under. `SameAsAppliedTo` is filed like `Any`; the caller
/// narrows it to the applied-to namespace.
pub(crate) fn selector_tokens(sel: &EndpointSelector, i: &mut Interners) -> Vec<u64> {
    if let Some(t) = label_tokens(
        &sel.labels,
        kind::LABEL,
        Some(crate::model::CILIUM_NAMESPACE_LABEL),
        i,
    ) {
        return t;
    }
    match &sel.namespaces {
        NamespaceScope::Named(ns) => vec![token(kind::NAMESPACE, i.namespace(ns))],
        NamespaceScope::Selector(ls) => {
            label_tokens(ls, kind::NS_LABEL, None, i).unwrap_or_else(|| vec![ANY_ENDPOINT])
        }
        NamespaceScope::SameAsAppliedTo | NamespaceScope::Any => vec![ANY_ENDPOINT],
    }
}

/// Port keys: which `(protocol, destination port)` buckets a rule's port entry is filed in.
pub(crate) mod portkey {
    /// Protocol value meaning "any protocol".
    pub const ANY_PROTO: u32 = 256;
    /// Port value meaning "not indexed by port; check the rule".
    pub const WILD: u32 = 1 << 16;

    pub const fn key(proto: u32, port: u32) -> u32 {
        (proto << 17) | port
    }

    pub const ANY: u32 = key(ANY_PROTO, WILD);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KindFilter, LabelExpression, Labels};

    fn sel(ns: NamespaceScope, pairs: &[(&str, &str)]) -> EndpointSelector {
        EndpointSelector {
            namespaces: ns,
            labels: LabelSelector {
                match_labels: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Labels>(),
                match_expressions: vec![],
            },
            kinds: KindFilter::Any,
        }
    }

    #[test]
    fn selectors_prefer_label_tokens_over_namespace() {
        let mut i = Interners::default();
        let a = selector_tokens(
            &sel(NamespaceScope::Named("x".into()), &[("app", "web")]),
            &mut i,
        );
        assert_eq!(a, vec![token(kind::LABEL, i.pair("app", "web"))]);
        let b = selector_tokens(&sel(NamespaceScope::Named("x".into()), &[]), &mut i);
        assert_eq!(b, vec![token(kind::NAMESPACE, i.namespace("x"))]);
        let c = selector_tokens(&sel(NamespaceScope::Any, &[]), &mut i);
        assert_eq!(c, vec![ANY_ENDPOINT]);
        // The Cilium namespace pseudo-label is used only when nothing better exists.
        let d = selector_tokens(
            &sel(
                NamespaceScope::Any,
                &[("app", "db"), (crate::model::CILIUM_NAMESPACE_LABEL, "x")],
            ),
            &mut i,
        );
        assert_eq!(d, vec![token(kind::LABEL, i.pair("app", "db"))]);
    }

    #[test]
    fn namespace_pseudo_labels_are_filed_as_namespace_labels() {
        let mut i = Interners::default();
        let a = selector_tokens(
            &sel(
                NamespaceScope::Any,
                &[("io.cilium.k8s.namespace.labels.team", "pay")],
            ),
            &mut i,
        );
        assert_eq!(a, vec![token(kind::NS_LABEL, i.pair("team", "pay"))]);
        // An endpoint label is preferred.
        let b = selector_tokens(
            &sel(
                NamespaceScope::Any,
                &[("io.cilium.k8s.namespace.labels.team", "pay"), ("zz", "1")],
            ),
            &mut i,
        );
        assert_eq!(b, vec![token(kind::LABEL, i.pair("zz", "1"))]);
    }

    #[test]
    fn in_expressions_give_one_token_per_value() {
        let mut i = Interners::default();
        let mut s = sel(NamespaceScope::Any, &[]);
        s.labels.match_expressions.push(LabelExpression {
            key: "tier".into(),
            operator: SelectorOperator::In,
            values: vec!["a".into(), "b".into()],
        });
        let t = selector_tokens(&s, &mut i);
        assert_eq!(t.len(), 2);
        assert!(t.contains(&token(kind::LABEL, i.pair("tier", "b"))));
    }
}

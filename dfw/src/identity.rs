//! Security identities and the IP → endpoint cache.
//!
//! As in Cilium, policy never names an IP of a workload: each distinct
//! (namespace, kind, labels) gets a numeric [`Identity`], selectors are resolved against
//! identities, and the data path maps a packet's address to an identity through the
//! [`IpCache`]. Moving a VM to a new IP therefore only changes an `IpCache` entry; no rule
//! and no realized table is touched.
//!
//! Replicas with identical labels share one identity (and so one realized policy table),
//! which is what keeps the realized state proportional to the number of *distinct* workloads
//! rather than the number of vNICs.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    EndpointKey, EndpointKind, Labels, CILIUM_NAMESPACE_LABEL, CILIUM_NAMESPACE_LABELS_PREFIX,
};

/// A numeric security identity. Numbers below [`Identity::FIRST_ALLOCATED`] are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity(pub u32);

impl Identity {
    /// Not resolved (never matched by any rule).
    pub const UNKNOWN: Identity = Identity(0);
    /// The local host (hypervisor / uplink host addresses from the engine config).
    pub const HOST: Identity = Identity(1);
    /// Any address that is not a known endpoint, host or remote node.
    pub const WORLD: Identity = Identity(2);
    /// Other nodes of the cluster (configured remote-node addresses).
    pub const REMOTE_NODE: Identity = Identity(6);
    /// First identity handed out for endpoint label sets (Cilium's numbering).
    pub const FIRST_ALLOCATED: u32 = 256;

    /// Whether this identity stands for a set of endpoints (as opposed to a reserved one).
    pub const fn is_endpoint(self) -> bool {
        self.0 >= Self::FIRST_ALLOCATED
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UNKNOWN => f.write_str("unknown"),
            Self::HOST => f.write_str("reserved:host"),
            Self::WORLD => f.write_str("reserved:world"),
            Self::REMOTE_NODE => f.write_str("reserved:remote-node"),
            Identity(n) => write!(f, "{n}"),
        }
    }
}

/// What an endpoint identity is derived from. Two endpoints with equal keys are
/// indistinguishable to every selector, so they share an identity.
///
/// The kind is part of the key because `externalEntitySelector` (KindFilter::VmOnly) tells
/// VMs from pods even when their labels are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentityKey {
    pub namespace: String,
    pub kind: EndpointKind,
    pub labels: Labels,
}

impl IdentityKey {
    /// The labels endpoint selectors are matched against: the endpoint's own labels plus the
    /// Cilium pseudo-label `io.kubernetes.pod.namespace=<ns>` (through which Cilium selectors
    /// name a namespace).
    pub fn selector_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(CILIUM_NAMESPACE_LABEL.to_string(), self.namespace.clone());
        labels
    }

    /// [`Self::selector_labels`] plus the labels of the endpoint's namespace under Cilium's
    /// pseudo-label prefix (`io.cilium.k8s.namespace.labels.<key>`, see
    /// [`CILIUM_NAMESPACE_LABELS_PREFIX`]). `namespace_labels` are the namespace's effective
    /// labels (with `kubernetes.io/metadata.name`, which Cilium exposes the same way).
    ///
    /// These are the labels the engine matches every endpoint selector against: the
    /// pseudo-labels depend on the namespace, not on the identity key, so the engine
    /// recomputes them (and the identity's selector memberships) when namespace labels
    /// change. The namespace is authoritative for these keys: an endpoint's own label under
    /// the prefix is not seen (it would let a workload claim its namespace's labels).
    pub fn selector_labels_with_namespace(&self, namespace_labels: &Labels) -> Labels {
        let mut labels = self.selector_labels();
        labels.retain(|k, _| !k.starts_with(CILIUM_NAMESPACE_LABELS_PREFIX));
        for (k, v) in namespace_labels {
            labels.insert(format!("{CILIUM_NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        labels
    }
}

#[derive(Debug, Clone)]
struct Allocated {
    identity: Identity,
    refs: usize,
}

/// Reference-counted identity allocation.
///
/// Numbers are handed out monotonically and not reused while the allocator lives, so a
/// number seen in a flow log never silently denotes a different label set later in the same
/// process. (u32 space: 4 billion allocations before wrap-around, which is not handled.)
#[derive(Debug, Default)]
pub struct IdentityAllocator {
    by_key: HashMap<IdentityKey, Allocated>,
    by_id: HashMap<Identity, IdentityKey>,
    next: u32,
}

/// Result of [`IdentityAllocator::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    pub identity: Identity,
    /// This key had no identity before: selectors have to be evaluated for it.
    pub new: bool,
}

impl IdentityAllocator {
    pub fn new() -> Self {
        Self {
            next: Identity::FIRST_ALLOCATED,
            ..Self::default()
        }
    }

    /// Take a reference on the identity of `key`, allocating one if needed.
    pub fn acquire(&mut self, key: &IdentityKey) -> Acquired {
        if self.next < Identity::FIRST_ALLOCATED {
            self.next = Identity::FIRST_ALLOCATED;
        }
        match self.by_key.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                e.get_mut().refs += 1;
                Acquired {
                    identity: e.get().identity,
                    new: false,
                }
            }
            Entry::Vacant(e) => {
                let identity = Identity(self.next);
                self.next = self.next.wrapping_add(1);
                e.insert(Allocated { identity, refs: 1 });
                self.by_id.insert(identity, key.clone());
                Acquired {
                    identity,
                    new: true,
                }
            }
        }
    }

    /// Drop a reference. Returns `true` when it was the last one and the identity is gone.
    pub fn release(&mut self, identity: Identity) -> bool {
        let Some(key) = self.by_id.get(&identity) else {
            return false;
        };
        let Some(alloc) = self.by_key.get_mut(key) else {
            return false;
        };
        alloc.refs -= 1;
        if alloc.refs > 0 {
            return false;
        }
        let key = key.clone();
        self.by_key.remove(&key);
        self.by_id.remove(&identity);
        true
    }

    pub fn key(&self, identity: Identity) -> Option<&IdentityKey> {
        self.by_id.get(&identity)
    }

    pub fn lookup(&self, key: &IdentityKey) -> Option<Identity> {
        self.by_key.get(key).map(|a| a.identity)
    }

    pub fn refs(&self, identity: Identity) -> usize {
        self.by_id
            .get(&identity)
            .and_then(|k| self.by_key.get(k))
            .map_or(0, |a| a.refs)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Identity, &IdentityKey)> {
        self.by_id.iter().map(|(i, k)| (*i, k))
    }
}

/// Exact host addresses of endpoints → the endpoint that owns them.
///
/// Only exact addresses live here; CIDR peers are matched by the classifier's prefix index.
/// An address belongs to at most one endpoint (a second claim is a configuration error the
/// engine reports, since it would make the source of a packet ambiguous).
#[derive(Debug, Default, Clone)]
pub struct IpCache {
    by_ip: HashMap<IpAddr, EndpointKey>,
}

/// An address is already claimed by another endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {ip} already belongs to endpoint {owner}")]
pub struct IpConflict {
    pub ip: IpAddr,
    pub owner: EndpointKey,
}

impl IpCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Check that `owner` may claim all of `ips` (no other endpoint owns one of them).
    pub fn check(&self, owner: &EndpointKey, ips: &[IpAddr]) -> Result<(), IpConflict> {
        for ip in ips {
            if let Some(existing) = self.by_ip.get(ip) {
                if existing != owner {
                    return Err(IpConflict {
                        ip: *ip,
                        owner: existing.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Replace the addresses of `owner`: `old` are removed, `new` inserted. Call
    /// [`IpCache::check`] first.
    pub fn replace(&mut self, owner: &EndpointKey, old: &[IpAddr], new: &[IpAddr]) {
        for ip in old {
            if self.by_ip.get(ip) == Some(owner) {
                self.by_ip.remove(ip);
            }
        }
        for ip in new {
            self.by_ip.insert(*ip, owner.clone());
        }
    }

    pub fn get(&self, ip: &IpAddr) -> Option<&EndpointKey> {
        self.by_ip.get(ip)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, kind: EndpointKind, pairs: &[(&str, &str)]) -> IdentityKey {
        IdentityKey {
            namespace: ns.into(),
            kind,
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn same_labels_share_an_identity_and_refcount() {
        let mut alloc = IdentityAllocator::new();
        let k = key("prod", EndpointKind::Vm, &[("app", "web")]);
        let a = alloc.acquire(&k);
        let b = alloc.acquire(&k);
        assert!(a.new);
        assert!(!b.new);
        assert_eq!(a.identity, b.identity);
        assert_eq!(a.identity.0, Identity::FIRST_ALLOCATED);
        assert_eq!(alloc.refs(a.identity), 2);
        assert!(!alloc.release(a.identity));
        assert!(alloc.release(a.identity));
        assert!(alloc.key(a.identity).is_none());
        // Not reused: a new label set gets a fresh number.
        let c = alloc.acquire(&k);
        assert!(c.new);
        assert_ne!(c.identity, a.identity);
    }

    #[test]
    fn namespace_and_kind_are_part_of_the_identity() {
        let mut alloc = IdentityAllocator::new();
        let vm = alloc.acquire(&key("a", EndpointKind::Vm, &[("app", "x")]));
        let pod = alloc.acquire(&key("a", EndpointKind::Pod, &[("app", "x")]));
        let other_ns = alloc.acquire(&key("b", EndpointKind::Vm, &[("app", "x")]));
        assert_ne!(vm.identity, pod.identity);
        assert_ne!(vm.identity, other_ns.identity);
        assert!(vm.identity.is_endpoint());
        assert!(!Identity::WORLD.is_endpoint());
    }

    #[test]
    fn selector_labels_carry_the_cilium_namespace_label() {
        let k = key("prod", EndpointKind::Vm, &[("app", "web")]);
        let l = k.selector_labels();
        assert_eq!(
            l.get(CILIUM_NAMESPACE_LABEL).map(String::as_str),
            Some("prod")
        );
        assert_eq!(l.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn selector_labels_carry_the_namespace_labels_under_the_cilium_prefix() {
        let k = key(
            "prod",
            EndpointKind::Vm,
            &[
                ("app", "web"),
                ("io.cilium.k8s.namespace.labels.env", "spoof"),
            ],
        );
        let ns: Labels = [("team", "pay"), ("kubernetes.io/metadata.name", "prod")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let l = k.selector_labels_with_namespace(&ns);
        assert_eq!(
            l.get("io.cilium.k8s.namespace.labels.team")
                .map(String::as_str),
            Some("pay")
        );
        assert_eq!(
            l.get("io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            l.get(CILIUM_NAMESPACE_LABEL).map(String::as_str),
            Some("prod")
        );
        // The namespace's own labels are not endpoint labels, and an endpoint cannot claim
        // a namespace label.
        assert!(!l.contains_key("team"));
        assert!(!l.contains_key("io.cilium.k8s.namespace.labels.env"));
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn ip_cache_rejects_a_second_owner_and_follows_moves() {
        let mut cache = IpCache::new();
        let a = EndpointKey {
            namespace: "n".into(),
            name: "a".into(),
        };
        let b = EndpointKey {
            namespace: "n".into(),
            name: "b".into(),
        };
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        cache.check(&a, &[ip1]).unwrap();
        cache.replace(&a, &[], &[ip1]);
        assert_eq!(
            cache.check(&b, &[ip1]),
            Err(IpConflict {
                ip: ip1,
                owner: a.clone()
            })
        );
        // a moves to ip2: ip1 becomes free.
        cache.replace(&a, &[ip1], &[ip2]);
        assert_eq!(cache.get(&ip2), Some(&a));
        assert!(cache.get(&ip1).is_none());
        cache.check(&b, &[ip1]).unwrap();
    }
}

//! Realized per-identity policy: for one identity and one direction, the rules that apply
//! to it in precedence order, indexed for the classifier.
//!
//! A [`DirTable`] never scans its rules. A rule is filed under
//! `(peer token, protocol/port key)` — see [`super::token`] — and CIDR peers in a
//! [`PrefixMap`]. Classifying a flow probes each of the few tokens the peer carries (its label
//! pairs, namespace, namespace labels, entity tokens) once in a compact token index, takes the
//! buckets of at most three port keys under it, walks those (short) candidate lists, confirms
//! each candidate's peer through the selector cache and its ports through a check kept inline
//! in the candidate, and keeps the first position per precedence section. Cost grows with the
//! number of *candidates for this peer and port*, not with the number of rules; the layout
//! (see `TokenIndex`) is about cache misses, which is what a cold table of a large policy
//! set costs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::prefix::{Bloom, PrefixMap};
use super::token::{portkey, Interners, ANY_ENDPOINT, ANY_PEER};
use super::verdict::{PolicyRef, RuleRef};
use crate::identity::Identity;
use crate::model::{IpBlock, PortMatch, PortRange, PortSpec, ProtocolMatch};

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A set of interned namespace ids (the audit namespaces), read once per decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NsBits(Vec<u64>);

impl NsBits {
    pub fn insert(&mut self, ns: u32) {
        let (w, b) = ((ns / 64) as usize, ns % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    #[inline]
    pub fn contains(&self, ns: u32) -> bool {
        self.0
            .get((ns / 64) as usize)
            .is_some_and(|w| w & (1 << (ns % 64)) != 0)
    }
}

/// Index of a selector in the selector cache.
pub(crate) type SelectorId = u32;

/// Protocols the port check distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtoM {
    Any,
    Num(u8),
    Icmp {
        num: u8,
        icmp_type: Option<u8>,
        icmp_code: Option<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DstM {
    Any,
    Range(PortRange),
    /// Interned port name, resolved at lookup on the destination (ingress) or peer (egress).
    Named(u32),
}

/// A compiled port entry of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CPort {
    pub proto: ProtoM,
    pub dst: DstM,
    pub src: Option<PortRange>,
}

/// A declared named port of an endpoint, interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NamedPortC {
    pub name: u32,
    pub port: u16,
    pub proto: u8,
}

/// The facts of a flow that port checks need, computed once per lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowFacts {
    pub proto: u8,
    pub has_ports: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// Ranges up to this many ports are filed under each port; wider ones under the wildcard.
const EXPAND_RANGE: u32 = 16;

const PORTED_PROTOCOLS: [u8; 3] = [6, 17, 132];

impl CPort {
    pub fn compile(pm: &PortMatch, i: &mut Interners) -> CPort {
        let proto = match pm.protocol {
            ProtocolMatch::Any => ProtoM::Any,
            ProtocolMatch::Tcp => ProtoM::Num(6),
            ProtocolMatch::Udp => ProtoM::Num(17),
            ProtocolMatch::Sctp => ProtoM::Num(132),
            ProtocolMatch::Icmp {
                v6,
                icmp_type,
                icmp_code,
            } => ProtoM::Icmp {
                num: if v6 { 58 } else { 1 },
                icmp_type,
                icmp_code,
            },
            ProtocolMatch::Number(n) => ProtoM::Num(n),
        };
        let dst = match &pm.port {
            None => DstM::Any,
            Some(PortSpec::Range(r)) => DstM::Range(*r),
            Some(PortSpec::Named(n)) => DstM::Named(i.port_name(n)),
        };
        CPort {
            proto,
            dst,
            src: pm.source_ports,
        }
    }

    /// The port keys this entry is filed under, each with whether being found under that
    /// key already proves the port match (exact protocol/port from this entry, no
    /// source-port condition), so the classifier can skip the residual check.
    pub fn keys(&self, out: &mut Vec<(u32, bool)>) {
        use portkey::{key, ANY_PROTO, WILD};
        let no_src = self.src.is_none();
        let proto = match self.proto {
            ProtoM::Any => None,
            ProtoM::Num(n) => Some(n),
            ProtoM::Icmp {
                num,
                icmp_type,
                icmp_code,
            } => {
                let proven = no_src && icmp_type.is_none() && icmp_code.is_none();
                out.push((key(num as u32, WILD), proven));
                return;
            }
        };
        match (proto, self.dst) {
            (None, DstM::Any) => out.push((key(ANY_PROTO, WILD), no_src)),
            (None, DstM::Named(_)) => out.push((key(ANY_PROTO, WILD), false)),
            (Some(p), DstM::Any) => out.push((key(p as u32, WILD), no_src)),
            (Some(p), DstM::Named(_)) => out.push((key(p as u32, WILD), false)),
            (p, DstM::Range(r)) => {
                let protos: &[u8] = match &p {
                    Some(p) => std::slice::from_ref(p),
                    None => &PORTED_PROTOCOLS,
                };
                let narrow = (r.end as u32).saturating_sub(r.start as u32) < EXPAND_RANGE;
                for p in protos {
                    // A port-bound entry of a port-less protocol never matches.
                    if !PORTED_PROTOCOLS.contains(p) {
                        continue;
                    }
                    if narrow && r.start <= r.end {
                        for port in r.start..=r.end {
                            out.push((key(*p as u32, port as u32), no_src));
                        }
                    } else {
                        out.push((key(*p as u32, WILD), false));
                    }
                }
            }
        }
    }

    /// Whether the flow matches this entry. `named` are the named ports of the endpoint the
    /// destination port is resolved on (`None` if it is not a known endpoint).
    #[inline]
    pub fn matches(&self, f: &FlowFacts, named: Option<&[NamedPortC]>) -> bool {
        let proto_ok = match self.proto {
            ProtoM::Any => true,
            ProtoM::Num(n) => n == f.proto,
            ProtoM::Icmp {
                num,
                icmp_type,
                icmp_code,
            } => {
                num == f.proto
                    && icmp_type.is_none_or(|t| t == f.icmp_type)
                    && icmp_code.is_none_or(|c| c == f.icmp_code)
            }
        };
        if !proto_ok {
            return false;
        }
        let dst_ok = match self.dst {
            DstM::Any => true,
            DstM::Range(r) => f.has_ports && r.contains(f.dst_port),
            DstM::Named(id) => {
                f.has_ports
                    && named.is_some_and(|ports| {
                        ports
                            .iter()
                            .any(|np| np.name == id && np.port == f.dst_port && np.proto == f.proto)
                    })
            }
        };
        dst_ok
            && self
                .src
                .is_none_or(|r| f.has_ports && r.contains(f.src_port))
    }
}

/// How a candidate found in a `(token, port key)` bucket confirms its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortCheck {
    /// Being in the bucket proves the match (see [`CPort::keys`]).
    Proven,
    /// Exactly one of the rule's port entries is filed under this key: checking it alone is
    /// enough (any port entry that matches a flow is filed under a key the flow probes, so
    /// a match through another entry is found in that entry's own bucket). Kept inline so a
    /// candidate is confirmed without loading the rule.
    One(CPort),
    /// Several entries share the key (or the candidate came from the prefix index): check
    /// the rule's whole port list.
    All,
}

/// The port keys a rule's port list is filed under, one per key, each with how a candidate
/// found there confirms its ports.
pub(crate) fn port_keys(ports: &[CPort]) -> Vec<(u32, PortCheck)> {
    if ports.is_empty() {
        return vec![(portkey::ANY, PortCheck::Proven)];
    }
    let mut keys: Vec<(u32, PortCheck)> = Vec::new();
    let mut scratch = Vec::new();
    for p in ports {
        scratch.clear();
        p.keys(&mut scratch);
        for (k, proven) in &scratch {
            let check = if *proven {
                PortCheck::Proven
            } else {
                PortCheck::One(*p)
            };
            match keys.iter_mut().find(|(key, _)| key == k) {
                None => keys.push((*k, check)),
                Some((_, existing)) => {
                    *existing = match (*existing, check) {
                        (PortCheck::Proven, _) | (_, PortCheck::Proven) => PortCheck::Proven,
                        (PortCheck::One(a), PortCheck::One(b)) if a == b => PortCheck::One(a),
                        _ => PortCheck::All,
                    }
                }
            }
        }
    }
    keys.sort_unstable_by_key(|(k, _)| *k);
    keys
}

/// Whether a rule's port list matches (empty = everything).
#[inline]
pub(crate) fn ports_match(ports: &[CPort], f: &FlowFacts, named: Option<&[NamedPortC]>) -> bool {
    ports.is_empty() || ports.iter().any(|p| p.matches(f, named))
}

/// A compiled peer of a rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CPeer {
    Selector {
        id: SelectorId,
        tokens: Box<[u64]>,
        /// Antrea `namespaces: {match: Self}`: only peers in the applied-to namespace.
        same_ns: bool,
        /// The selector matches every endpoint (no membership check needed).
        everything: bool,
    },
    Block {
        block: IpBlock,
        /// Cilium CIDR peers select only addresses outside the cluster (identity `world`);
        /// Kubernetes/Antrea ipBlocks match any address, endpoints included.
        world_only: bool,
    },
    /// An entity token (world, host, cluster, remote-node, any peer).
    Token(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CPeers {
    Any,
    List(Vec<CPeer>),
}

/// How a candidate's peer is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerCheck {
    /// The token itself proves the match (entities, catch-all selectors).
    None,
    /// The peer's identity must be a member of the selector.
    Selector(SelectorId),
    /// As `Selector`, and the peer must be in the applied-to namespace.
    SelectorSameNs(SelectorId),
    /// Found through the prefix index: check the block's holes (and `world_only`).
    Block { excepts: u32, world_only: bool },
    /// As `None`, and the peer must be in the applied-to namespace.
    SameNs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub pos: u32,
    pub port: PortCheck,
    pub check: PeerCheck,
}

/// A rule as realized in a table.
#[derive(Debug, Clone)]
pub(crate) struct TableRule {
    pub meta: Arc<RuleRef>,
    pub ports: Arc<[CPort]>,
    /// Copies of `meta.action` / `meta.policy.audit`, so deciding does not chase `meta`.
    pub action: crate::model::Action,
    pub audit: bool,
}

/// Precedence sections of a table, in evaluation order.
pub(crate) const SEC_TIER: usize = 0;
pub(crate) const SEC_DENY: usize = 1;
pub(crate) const SEC_ALLOW: usize = 2;
pub(crate) const SEC_BASELINE: usize = 3;

/// The peer of a flow as the classifier sees it.
pub(crate) struct PeerFacts<'a> {
    pub ip: IpAddr,
    pub identity: Identity,
    /// Interned namespace of an endpoint peer (`u32::MAX` otherwise).
    pub ns: u32,
    pub tokens: &'a [u64],
    /// Sorted ids of the selectors the peer's identity is a member of (empty for
    /// non-endpoints). Candidates are confirmed against this one short, hot list instead of
    /// one member set per selector.
    pub matched: &'a [u32],
}

/// One direction of an identity's realized policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirTable {
    pub rules: Box<[TableRule]>,
    /// End positions of the tier, deny, allow and baseline sections.
    pub ends: [u32; 4],
    ns: u32,
    /// Peer token → its port buckets (see [`TokenIndex`]).
    index: TokenIndex,
    cidrs: PrefixMap<Box<[Entry]>>,
    excepts: Box<[Box<[IpNet]>]>,
    /// First (by key) Kubernetes-layer policy isolating the identity in this direction.
    pub isolated_by: Option<Arc<PolicyRef>>,
    /// Every isolating policy is in audit mode.
    pub isolation_audit: bool,
}

/// Input to [`DirTable::build`]: one applicable rule, already in precedence order.
pub(crate) struct RuleInput<'a> {
    pub section: usize,
    pub meta: &'a Arc<RuleRef>,
    pub ports: &'a Arc<[CPort]>,
    pub port_keys: &'a [(u32, PortCheck)],
    pub peers: &'a CPeers,
}

impl DirTable {
    /// Build a table. `rules` must be sorted by section and precedence; `ns_token` is the
    /// namespace token of the identity (for `namespaces: {match: Self}`), `ns` its id.
    pub fn build(
        rules: &[RuleInput<'_>],
        ns: u32,
        ns_token: u64,
        isolated_by: Option<Arc<PolicyRef>>,
        isolation_audit: bool,
    ) -> DirTable {
        let mut tokens: FastMap<u64, BTreeMap<u32, Vec<Entry>>> = FastMap::default();
        let mut cidrs: Vec<(IpNet, Box<[Entry]>)> = Vec::new();
        let mut excepts: Vec<Box<[IpNet]>> = Vec::new();
        let mut ends = [0u32; 4];
        let mut table_rules = Vec::with_capacity(rules.len());
        let mut add = |tok: u64, keys: &[(u32, PortCheck)], e: Entry| {
            let buckets = tokens.entry(tok).or_default();
            for (k, port) in keys {
                let list = buckets.entry(*k).or_default();
                let e = Entry { port: *port, ..e };
                if list.last() != Some(&e) {
                    list.push(e);
                }
            }
        };
        for (pos, r) in rules.iter().enumerate() {
            let pos = pos as u32;
            debug_assert!(table_rules.is_empty() || r.section >= section_of(&ends, pos - 1));
            for end in ends.iter_mut().skip(r.section) {
                *end = pos + 1;
            }
            table_rules.push(TableRule {
                meta: r.meta.clone(),
                ports: r.ports.clone(),
                action: r.meta.action,
                audit: r.meta.policy.audit,
            });
            match r.peers {
                CPeers::Any => add(
                    ANY_PEER,
                    r.port_keys,
                    Entry {
                        pos,
                        port: PortCheck::All,
                        check: PeerCheck::None,
                    },
                ),
                CPeers::List(peers) => {
                    for p in peers {
                        match p {
                            CPeer::Selector {
                                id,
                                tokens: toks,
                                same_ns,
                                everything,
                            } => {
                                let check = match (*same_ns, *everything) {
                                    (false, false) => PeerCheck::Selector(*id),
                                    (true, false) => PeerCheck::SelectorSameNs(*id),
                                    (false, true) => PeerCheck::None,
                                    (true, true) => PeerCheck::SameNs,
                                };
                                let e = Entry {
                                    pos,
                                    port: PortCheck::All,
                                    check,
                                };
                                if *same_ns && toks.as_ref() == [ANY_ENDPOINT] {
                                    // Narrow the catch-all to the applied-to namespace.
                                    add(ns_token, r.port_keys, e);
                                } else {
                                    for t in toks.iter() {
                                        add(*t, r.port_keys, e);
                                    }
                                }
                            }
                            CPeer::Block { block, world_only } => {
                                let idx = excepts.len() as u32;
                                excepts.push(block.except.clone().into_boxed_slice());
                                cidrs.push((
                                    block.cidr,
                                    Box::new([Entry {
                                        pos,
                                        port: PortCheck::All,
                                        check: PeerCheck::Block {
                                            excepts: idx,
                                            world_only: *world_only,
                                        },
                                    }]),
                                ));
                            }
                            CPeer::Token(t) => add(
                                *t,
                                r.port_keys,
                                Entry {
                                    pos,
                                    port: PortCheck::All,
                                    check: PeerCheck::None,
                                },
                            ),
                        }
                    }
                }
            }
        }
        let index = TokenIndex::build(tokens);
        let cidrs = PrefixMap::build(cidrs, |a, b| {
            let mut v = std::mem::take(a).into_vec();
            v.extend(b.iter().copied());
            v.sort_by_key(|e| e.pos);
            *a = v.into_boxed_slice();
        });
        DirTable {
            rules: table_rules.into_boxed_slice(),
            ends,
            ns,
            index,
            cidrs,
            excepts: excepts.into_boxed_slice(),
            isolated_by,
            isolation_audit,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.isolated_by.is_none()
    }

    /// First matching position per section (`u32::MAX` when none matches).
    ///
    /// `named` are the named ports the destination port is resolved on: the local endpoint's
    /// for ingress, the peer's for egress.
    #[inline]
    pub fn classify(
        &self,
        peer: &PeerFacts<'_>,
        f: &FlowFacts,
        named: Option<&[NamedPortC]>,
    ) -> [u32; 4] {
        let mut best = [u32::MAX; 4];
        if self.rules.is_empty() {
            return best;
        }
        // Port keys to probe per token: exact (protocol, port), (protocol, any port), any.
        let probe_proto = portkey::key(f.proto as u32, portkey::WILD);
        let with_port = [
            portkey::key(f.proto as u32, f.dst_port as u32),
            probe_proto,
            portkey::ANY,
        ];
        let probes: &[u32] = if f.has_ports {
            &with_port
        } else {
            &with_port[1..]
        };
        let mut consider = |entries: &[Entry]| {
            for e in entries {
                let sec = section_of(&self.ends, e.pos);
                if e.pos >= best[sec] {
                    continue;
                }
                let peer_ok = match e.check {
                    PeerCheck::None => true,
                    PeerCheck::Selector(s) => peer.matched.binary_search(&s).is_ok(),
                    PeerCheck::SelectorSameNs(s) => {
                        peer.ns == self.ns && peer.matched.binary_search(&s).is_ok()
                    }
                    PeerCheck::SameNs => peer.ns == self.ns,
                    PeerCheck::Block {
                        excepts,
                        world_only,
                    } => {
                        (!world_only || peer.identity == Identity::WORLD)
                            && !self.excepts[excepts as usize]
                                .iter()
                                .any(|n| n.contains(&peer.ip))
                    }
                };
                let port_ok = match &e.port {
                    PortCheck::Proven => true,
                    PortCheck::One(p) => p.matches(f, named),
                    PortCheck::All => ports_match(&self.rules[e.pos as usize].ports, f, named),
                };
                if peer_ok && port_ok {
                    best[sec] = e.pos;
                }
            }
        };
        for t in peer.tokens {
            let Some(buckets) = self.index.buckets(*t) else {
                continue;
            };
            for b in buckets {
                if probes.contains(&b.key) {
                    consider(&self.index.entries[b.start as usize..b.end as usize]);
                }
            }
        }
        if !self.cidrs.is_empty() {
            self.cidrs.for_each_match(peer.ip, |l| consider(l));
        }
        best
    }
}

/// The entries of one `(peer token, port key)`: `entries[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    key: u32,
    start: u32,
    end: u32,
}

/// One token's slot in the open-addressing table: its buckets are `buckets[start..end]`.
/// Token 0 (kind 0, which no token has) marks an empty slot.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(16))]
struct TokenSlot {
    token: u64,
    start: u32,
    end: u32,
}

/// A table's peer index, keyed by peer token alone, laid out for few cache misses.
///
/// A lookup probes each of the peer's tokens once (not once per port key): a Bloom word
/// rejects most absent tokens; a present token is found in a linear-probing table of 16-byte
/// slots at most half full (usually one cache line), whose slot holds the range of the
/// token's port buckets; the buckets (sorted by port key) and then the entries of the port
/// keys the flow asks for are contiguous arrays, each token's laid out together. Filing by
/// token then port, rather than by the pair, keeps the filter and the table small (a table
/// has far fewer distinct tokens than (token, port) pairs) and turns the three port probes
/// of a token into one scan of a few adjacent buckets.
#[derive(Debug, Clone, Default)]
struct TokenIndex {
    slots: Box<[TokenSlot]>,
    /// `slots.len() - 1` (a power of two minus one); unused when `slots` is empty.
    mask: usize,
    buckets: Box<[Bucket]>,
    entries: Box<[Entry]>,
    bloom: Bloom,
}

impl TokenIndex {
    fn build(tokens: FastMap<u64, BTreeMap<u32, Vec<Entry>>>) -> Self {
        if tokens.is_empty() {
            return Self::default();
        }
        // Deterministic layout (the map's order is random): by token.
        let mut tokens: Vec<(u64, BTreeMap<u32, Vec<Entry>>)> = tokens.into_iter().collect();
        tokens.sort_unstable_by_key(|(t, _)| *t);
        let cap = (tokens.len() * 2).next_power_of_two();
        let mut slots = vec![TokenSlot::default(); cap].into_boxed_slice();
        let mut buckets = Vec::new();
        let mut entries = Vec::new();
        let mut bloom = Bloom::with_capacity(tokens.len());
        for (t, by_port) in tokens {
            debug_assert_ne!(t, 0, "token 0 marks empty slots");
            let start = buckets.len() as u32;
            for (key, list) in by_port {
                let first = entries.len() as u32;
                entries.extend(list);
                buckets.push(Bucket {
                    key,
                    start: first,
                    end: entries.len() as u32,
                });
            }
            let mut i = Self::home(t, cap - 1);
            while slots[i].token != 0 {
                i = (i + 1) & (cap - 1);
            }
            slots[i] = TokenSlot {
                token: t,
                start,
                end: buckets.len() as u32,
            };
            bloom.insert(t);
        }
        Self {
            slots,
            mask: cap - 1,
            buckets: buckets.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
            bloom,
        }
    }

    #[inline]
    fn home(token: u64, mask: usize) -> usize {
        (token.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
    }

    /// The port buckets filed under `token`.
    #[inline]
    fn buckets(&self, token: u64) -> Option<&[Bucket]> {
        if self.slots.is_empty() || !self.bloom.may_contain(token) {
            return None;
        }
        let mut i = Self::home(token, self.mask);
        loop {
            let s = &self.slots[i];
            if s.token == token {
                return Some(&self.buckets[s.start as usize..s.end as usize]);
            }
            if s.token == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

#[inline]
fn section_of(ends: &[u32; 4], pos: u32) -> usize {
    if pos < ends[SEC_TIER] {
        SEC_TIER
    } else if pos < ends[SEC_DENY] {
        SEC_DENY
    } else if pos < ends[SEC_ALLOW] {
        SEC_ALLOW
    } else {
        SEC_BASELINE
    }
}

/// Both directions of an identity's realized policy. Shared (through `Arc`) by every
/// endpoint of the identity and by every snapshot until a change touches the identity.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdentityTables {
    pub ingress: DirTable,
    pub egress: DirTable,
}

impl IdentityTables {
    pub fn dir(&self, d: crate::model::Direction) -> &DirTable {
        match d {
            crate::model::Direction::Ingress => &self.ingress,
            crate::model::Direction::Egress => &self.egress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(proto: u8, sport: u16, dport: u16) -> FlowFacts {
        FlowFacts {
            proto,
            has_ports: matches!(proto, 6 | 17 | 132),
            src_port: sport,
            dst_port: dport,
            icmp_type: 8,
            icmp_code: 0,
        }
    }

    #[test]
    fn port_keys_keep_one_inline_check_per_key() {
        let mut i = Interners::default();
        let c = |pm: PortMatch, i: &mut Interners| CPort::compile(&pm, i);
        let pm = |protocol, port: Option<PortSpec>| PortMatch {
            protocol,
            port,
            source_ports: None,
        };
        let wide = |a, b| Some(PortSpec::Range(PortRange { start: a, end: b }));
        let tcp80 = c(pm(ProtocolMatch::Tcp, wide(80, 80)), &mut i);
        let wide1 = c(pm(ProtocolMatch::Tcp, wide(1000, 2000)), &mut i);
        let wide2 = c(pm(ProtocolMatch::Tcp, wide(3000, 4000)), &mut i);
        let any_tcp = c(pm(ProtocolMatch::Tcp, None), &mut i);
        let wild = portkey::key(6, portkey::WILD);
        assert_eq!(port_keys(&[]), vec![(portkey::ANY, PortCheck::Proven)]);
        assert_eq!(
            port_keys(&[wide1, tcp80]),
            vec![
                (portkey::key(6, 80), PortCheck::Proven),
                (wild, PortCheck::One(wide1))
            ]
        );
        // Two entries under one key: the whole list is checked.
        assert_eq!(port_keys(&[wide1, wide2]), vec![(wild, PortCheck::All)]);
        // A proving entry under the key wins.
        assert_eq!(
            port_keys(&[wide1, any_tcp]),
            vec![(wild, PortCheck::Proven)]
        );
    }

    #[test]
    fn port_entries_match_like_the_model_says() {
        let mut i = Interners::default();
        let tcp80 = CPort::compile(
            &PortMatch {
                protocol: ProtocolMatch::Tcp,
                port: Some(PortSpec::Range(PortRange::single(80))),
                source_ports: None,
            },
            &mut i,
        );
        assert!(tcp80.matches(&facts(6, 1000, 80), None));
        assert!(!tcp80.matches(&facts(17, 1000, 80), None));
        assert!(!tcp80.matches(&facts(6, 1000, 81), None));

        let any_range = CPort::compile(
            &PortMatch {
                protocol: ProtocolMatch::Any,
                port: Some(PortSpec::Range(PortRange { start: 80, end: 81 })),
                source_ports: Some(PortRange {
                    start: 1000,
                    end: 2000,
                }),
            },
            &mut i,
        );
        assert!(any_range.matches(&facts(17, 1500, 81), None));
        assert!(!any_range.matches(&facts(17, 999, 81), None));
        // A port-bound entry never matches a port-less protocol.
        assert!(!any_range.matches(&facts(1, 1500, 81), None));
        let mut keys = Vec::new();
        any_range.keys(&mut keys);
        assert_eq!(keys.len(), 6);
        // A source-port condition means the bucket alone proves nothing.
        assert!(keys.iter().all(|(_, proven)| !proven));
        keys.clear();
        tcp80.keys(&mut keys);
        assert_eq!(keys, vec![(portkey::key(6, 80), true)]);

        let icmp_echo = CPort::compile(
            &PortMatch {
                protocol: ProtocolMatch::Icmp {
                    v6: false,
                    icmp_type: Some(8),
                    icmp_code: None,
                },
                port: None,
                source_ports: None,
            },
            &mut i,
        );
        assert!(icmp_echo.matches(&facts(1, 0, 0), None));
        assert!(!icmp_echo.matches(&facts(58, 0, 0), None));

        let named = CPort::compile(
            &PortMatch {
                protocol: ProtocolMatch::Tcp,
                port: Some(PortSpec::Named("http".into())),
                source_ports: None,
            },
            &mut i,
        );
        let http = i.port_name("http");
        let declared = [NamedPortC {
            name: http,
            port: 8080,
            proto: 6,
        }];
        assert!(named.matches(&facts(6, 1, 8080), Some(&declared)));
        assert!(!named.matches(&facts(6, 1, 80), Some(&declared)));
        assert!(!named.matches(&facts(17, 1, 8080), Some(&declared)));
        assert!(!named.matches(&facts(6, 1, 8080), None));
        assert!(!named.matches(&facts(6, 1, 8080), Some(&[])));
    }
}

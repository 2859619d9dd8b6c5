//! A prefix index for CIDR peers: one hash table per prefix length and address family.
//!
//! A lookup masks the address once per distinct prefix length present (longest first) and
//! probes that length's table, so its cost depends on how many *different lengths* the rules
//! use (typically a handful), not on how many CIDRs there are. Every containing prefix is
//! reported, not only the longest: rules with different prefixes are different rules, and the
//! classifier needs all of them to find the first match in precedence order.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A blocked Bloom filter (two bits in one 64-bit word per key, about 16 bits per key):
/// answers "certainly absent" for most probes of a large table with one cache line, so a
/// lookup does not pay a hash-table cache miss per absent key.
#[derive(Debug, Clone)]
pub(crate) struct Bloom {
    words: Box<[u64]>,
    shift: u32,
}

impl Default for Bloom {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Bloom {
    pub fn with_capacity(keys: usize) -> Self {
        let words = (keys / 4).next_power_of_two().max(8);
        Self {
            words: vec![0; words].into_boxed_slice(),
            shift: 64 - words.trailing_zeros(),
        }
    }

    #[inline]
    fn bits(&self, key: u64) -> (usize, u64) {
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let word = (h >> self.shift) as usize;
        let g = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (word, (1u64 << (g >> 58)) | (1u64 << ((g >> 52) & 63)))
    }

    pub fn insert(&mut self, key: u64) {
        let (w, b) = self.bits(key);
        self.words[w] |= b;
    }

    #[inline]
    pub fn may_contain(&self, key: u64) -> bool {
        let (w, b) = self.bits(key);
        self.words[w] & b == b
    }
}

#[inline]
fn bloom_key4(masked: u32, len: u8) -> u64 {
    ((masked as u64) << 8) | len as u64
}

#[inline]
fn bloom_key6(masked: u128, len: u8) -> u64 {
    (((masked >> 64) as u64) ^ (masked as u64)).rotate_left(8) ^ len as u64
}

#[derive(Debug, Clone)]
pub(crate) struct PrefixMap<V> {
    v4: Vec<(u8, Map<u32, V>)>,
    v6: Vec<(u8, Map<u128, V>)>,
    bloom: Bloom,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
            bloom: Bloom::default(),
        }
    }
}

const fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

const fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl<V> PrefixMap<V> {
    /// Build from `(prefix, value)` pairs; values of equal prefixes are merged with `merge`.
    pub fn build(
        items: impl IntoIterator<Item = (IpNet, V)>,
        mut merge: impl FnMut(&mut V, V),
    ) -> Self {
        let items: Vec<(IpNet, V)> = items.into_iter().collect();
        let mut bloom = Bloom::with_capacity(items.len());
        let mut v4: BTreeMap<u8, Map<u32, V>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, Map<u128, V>> = BTreeMap::new();
        for (net, v) in items {
            match net {
                IpNet::V4(n) => {
                    let len = n.prefix_len();
                    let key = u32::from(n.network()) & mask4(len);
                    bloom.insert(bloom_key4(key, len));
                    let m = v4.entry(len).or_default();
                    match m.get_mut(&key) {
                        Some(existing) => merge(existing, v),
                        None => {
                            m.insert(key, v);
                        }
                    }
                }
                IpNet::V6(n) => {
                    let len = n.prefix_len();
                    let key = u128::from(n.network()) & mask6(len);
                    bloom.insert(bloom_key6(key, len));
                    let m = v6.entry(len).or_default();
                    match m.get_mut(&key) {
                        Some(existing) => merge(existing, v),
                        None => {
                            m.insert(key, v);
                        }
                    }
                }
            }
        }
        Self {
            v4: v4.into_iter().rev().collect(),
            v6: v6.into_iter().rev().collect(),
            bloom,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Call `f` with the value of every stored prefix that contains `ip`, longest first.
    #[inline]
    pub fn for_each_match(&self, ip: IpAddr, mut f: impl FnMut(&V)) {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, m) in &self.v4 {
                    let k = a & mask4(*len);
                    if !self.bloom.may_contain(bloom_key4(k, *len)) {
                        continue;
                    }
                    if let Some(v) = m.get(&k) {
                        f(v);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, m) in &self.v6 {
                    let k = a & mask6(*len);
                    if !self.bloom.may_contain(bloom_key6(k, *len)) {
                        continue;
                    }
                    if let Some(v) = m.get(&k) {
                        f(v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_containing_prefix_longest_first() {
        let map = PrefixMap::build(
            [
                ("10.0.0.0/8".parse().unwrap(), vec![1]),
                ("10.1.0.0/16".parse().unwrap(), vec![2]),
                ("10.1.2.0/24".parse().unwrap(), vec![3]),
                ("10.1.0.0/16".parse().unwrap(), vec![4]),
                ("0.0.0.0/0".parse().unwrap(), vec![5]),
                ("fd00::/8".parse().unwrap(), vec![6]),
                // Host bits set in the written prefix are ignored, as ipBlock does.
                ("192.168.1.7/24".parse().unwrap(), vec![7]),
            ],
            |a: &mut Vec<i32>, b| a.extend(b),
        );
        let mut seen = Vec::new();
        map.for_each_match("10.1.2.3".parse().unwrap(), |v| seen.push(v.clone()));
        assert_eq!(seen, vec![vec![3], vec![2, 4], vec![1], vec![5]]);
        seen.clear();
        map.for_each_match("11.0.0.1".parse().unwrap(), |v| seen.push(v.clone()));
        assert_eq!(seen, vec![vec![5]]);
        seen.clear();
        map.for_each_match("fd12::1".parse().unwrap(), |v| seen.push(v.clone()));
        assert_eq!(seen, vec![vec![6]]);
        seen.clear();
        map.for_each_match("192.168.1.200".parse().unwrap(), |v| seen.push(v.clone()));
        assert_eq!(seen, vec![vec![7], vec![5]]);
    }
}

//! Counters. The data path counts drops by reason instead of returning errors per packet.

use std::fmt;

/// Why a packet was judged invalid by the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidReason {
    /// TCP flag combination no real stack sends (SYN+FIN, SYN+RST, no flags, FIN without ACK...).
    BadFlags,
    /// First packet of an untracked TCP flow is not a SYN (and mid-stream pickup is off, or the
    /// packet is a SYN-ACK, FIN or RST, which are never picked up).
    NotSyn,
    /// TCP segment outside the tracked sequence/acknowledgement window.
    OutOfWindow,
    /// ICMP error whose quoted header matches no tracked connection (or is missing / inconsistent).
    UnrelatedIcmpError,
    /// ICMP echo reply without a tracked request, or an echo message in the wrong direction.
    UnexpectedIcmp,
    /// Source and destination (address and port) are identical: both directions would be the
    /// same key. Never legitimate on a vNIC (a LAND-style packet).
    SelfAddressed,
}

impl InvalidReason {
    pub const ALL: [Self; 6] = [
        Self::BadFlags,
        Self::NotSyn,
        Self::OutOfWindow,
        Self::UnrelatedIcmpError,
        Self::UnexpectedIcmp,
        Self::SelfAddressed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadFlags => "bad_flags",
            Self::NotSyn => "not_syn",
            Self::OutOfWindow => "out_of_window",
            Self::UnrelatedIcmpError => "unrelated_icmp_error",
            Self::UnexpectedIcmp => "unexpected_icmp",
            Self::SelfAddressed => "self_addressed",
        }
    }
}

/// Why conntrack dropped a packet (policy denials are counted separately, see [`CtStats::denied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtDropReason {
    /// Global entry limit reached: a new connection was refused.
    TableFull,
    /// The zone's entry limit reached: a new connection was refused.
    ZoneFull,
    Invalid(InvalidReason),
}

impl CtDropReason {
    pub const COUNT: usize = 2 + InvalidReason::ALL.len();

    /// Every reason, in counter order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::TableFull,
        Self::ZoneFull,
        Self::Invalid(InvalidReason::BadFlags),
        Self::Invalid(InvalidReason::NotSyn),
        Self::Invalid(InvalidReason::OutOfWindow),
        Self::Invalid(InvalidReason::UnrelatedIcmpError),
        Self::Invalid(InvalidReason::UnexpectedIcmp),
        Self::Invalid(InvalidReason::SelfAddressed),
    ];

    const fn index(self) -> usize {
        match self {
            Self::TableFull => 0,
            Self::ZoneFull => 1,
            Self::Invalid(r) => {
                2 + match r {
                    InvalidReason::BadFlags => 0,
                    InvalidReason::NotSyn => 1,
                    InvalidReason::OutOfWindow => 2,
                    InvalidReason::UnrelatedIcmpError => 3,
                    InvalidReason::UnexpectedIcmp => 4,
                    InvalidReason::SelfAddressed => 5,
                }
            }
        }
    }

    /// Stable label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TableFull => "table_full",
            Self::ZoneFull => "zone_full",
            Self::Invalid(r) => r.as_str(),
        }
    }
}

impl fmt::Display for CtDropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Table-wide counters. Monotonic; the caller exports and diffs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Connections created (first packet allowed by the decision).
    pub new: u64,
    /// Of `new`: TCP connections picked up mid-stream (first packet was not a SYN).
    pub picked_up: u64,
    /// Packets of tracked connections that passed without a policy lookup.
    pub established: u64,
    /// ICMP errors passed as related to a tracked connection.
    pub related: u64,
    /// Packets not subject to tracking (ICMP other than echo/errors), decided per packet.
    pub untracked: u64,
    /// First packets the decision denied.
    pub denied: u64,
    /// Entries removed because their timer ran out (incremental sweep or lazy on lookup).
    pub expired: u64,
    /// Closed TCP entries replaced by a new connection reusing the same 5-tuple.
    pub reopened: u64,
    /// Entries cut by a policy re-check.
    pub recheck_cut: u64,
    drops: [u64; CtDropReason::COUNT],
}

impl CtStats {
    pub fn drops(&self, reason: CtDropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// `(reason, count)` for every reason, zero counts included.
    pub fn drop_counts(&self) -> impl Iterator<Item = (CtDropReason, u64)> + '_ {
        CtDropReason::ALL
            .iter()
            .map(move |r| (*r, self.drops[r.index()]))
    }

    pub(crate) fn count_drop(&mut self, reason: CtDropReason) {
        self.drops[reason.index()] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter() {
        let mut s = CtStats::default();
        for (i, r) in CtDropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                s.count_drop(*r);
            }
        }
        for (i, (r, n)) in s.drop_counts().enumerate() {
            assert_eq!(r, CtDropReason::ALL[i]);
            assert_eq!(n, i as u64 + 1, "{r}");
        }
        let labels: std::collections::BTreeSet<_> =
            CtDropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), CtDropReason::COUNT);
    }
}

//! Table limits and per-state timers.

use std::time::Duration;

use thiserror::Error;

/// Per-state idle timeouts. Defaults are the NSX DFW session timers, which are the pf timers
/// NSX inherited (`tcp.first`, `tcp.opening`, ...), so the state each applies to follows pf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP: only the initiator has sent (SYN sent, or a picked-up flow not yet answered).
    pub tcp_first: Duration,
    /// TCP: both sides have sent but the handshake is not complete.
    pub tcp_opening: Duration,
    pub tcp_established: Duration,
    /// TCP: one side has sent a FIN.
    pub tcp_closing: Duration,
    /// TCP: both sides have sent a FIN, not both acknowledged yet.
    pub tcp_fin_wait: Duration,
    /// TCP: both FINs acknowledged, or reset.
    pub tcp_closed: Duration,
    /// UDP (and other datagram protocols): after the first packet.
    pub udp_first: Duration,
    /// UDP: the initiator sent more than one packet, no reply yet.
    pub udp_single: Duration,
    /// UDP: both sides have sent.
    pub udp_multiple: Duration,
    /// ICMP echo: after the request.
    pub icmp_first: Duration,
    /// ICMP echo: after any later packet (the reply).
    pub icmp_error_reply: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            tcp_first: s(120),
            tcp_opening: s(30),
            tcp_established: s(43_200),
            tcp_closing: s(120),
            tcp_fin_wait: s(45),
            tcp_closed: s(20),
            udp_first: s(60),
            udp_single: s(30),
            udp_multiple: s(60),
            icmp_first: s(20),
            icmp_error_reply: s(10),
        }
    }
}

/// Which timer an entry runs on; indexes the nanosecond table the tracker precomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TimeoutClass {
    TcpFirst,
    TcpOpening,
    TcpEstablished,
    TcpClosing,
    TcpFinWait,
    TcpClosed,
    UdpFirst,
    UdpSingle,
    UdpMultiple,
    IcmpFirst,
    IcmpErrorReply,
}

impl TimeoutClass {
    pub(crate) const COUNT: usize = 11;
}

impl Timeouts {
    pub(crate) fn to_nanos(self) -> [u64; TimeoutClass::COUNT] {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut t = [0u64; TimeoutClass::COUNT];
        t[TimeoutClass::TcpFirst as usize] = ns(self.tcp_first);
        t[TimeoutClass::TcpOpening as usize] = ns(self.tcp_opening);
        t[TimeoutClass::TcpEstablished as usize] = ns(self.tcp_established);
        t[TimeoutClass::TcpClosing as usize] = ns(self.tcp_closing);
        t[TimeoutClass::TcpFinWait as usize] = ns(self.tcp_fin_wait);
        t[TimeoutClass::TcpClosed as usize] = ns(self.tcp_closed);
        t[TimeoutClass::UdpFirst as usize] = ns(self.udp_first);
        t[TimeoutClass::UdpSingle as usize] = ns(self.udp_single);
        t[TimeoutClass::UdpMultiple as usize] = ns(self.udp_multiple);
        t[TimeoutClass::IcmpFirst as usize] = ns(self.icmp_first);
        t[TimeoutClass::IcmpErrorReply as usize] = ns(self.icmp_error_reply);
        t
    }
}

/// Largest table: slots are `u32` index values and `u32::MAX` marks a free way (kept at
/// 2^31 - 1, the limit of the earlier two-keys-per-connection index, so configs stay valid).
pub const MAX_TABLE_ENTRIES: u32 = (1 << 31) - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtConfig {
    /// Global entry limit. New connections beyond it are dropped (`TableFull`).
    pub max_entries: u32,
    /// Default per-zone entry limit (override per zone with `ConnTrack::set_zone_limit`).
    pub max_entries_per_zone: u32,
    /// Track TCP flows whose first seen packet is a plain ACK (Linux `nf_conntrack_tcp_loose`).
    /// The packet still goes through the policy decision as a new connection.
    pub pickup_established: bool,
    pub timeouts: Timeouts,
    /// Entries to allocate up front (clamped to `max_entries`). Growing past it doubles the slab
    /// and rebuilds the index: an O(n) pause on the packet path (tens of ms at 1M entries).
    /// Setting it to `max_entries` means the data path never allocates nor pauses, at the price
    /// of the memory (~160 B per entry) being committed from the start.
    pub initial_capacity: u32,
    /// Hash seed. `None` (the default) draws a random seed per table so a guest cannot
    /// precompute colliding 5-tuples (HashDoS). Fixed seeds are for reproducible tests only.
    pub hash_seed: Option<u64>,
    /// On a full table, how many slots to sweep for expired entries before dropping the new
    /// connection. Bounds the extra work a flood of new flows can cause per packet.
    pub full_table_reclaim: u32,
}

impl Default for CtConfig {
    fn default() -> Self {
        Self {
            max_entries: 1 << 20,
            max_entries_per_zone: 1 << 18,
            pickup_established: true,
            timeouts: Timeouts::default(),
            initial_capacity: 1024,
            hash_seed: None,
            full_table_reclaim: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CtConfigError {
    #[error("max_entries {0} exceeds the table maximum {MAX_TABLE_ENTRIES}")]
    TooManyEntries(u32),
}

impl CtConfig {
    pub fn validate(&self) -> Result<(), CtConfigError> {
        if self.max_entries > MAX_TABLE_ENTRIES {
            return Err(CtConfigError::TooManyEntries(self.max_entries));
        }
        Ok(())
    }
}

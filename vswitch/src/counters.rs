//! Per-port counters: traffic in each direction and drops by reason.
//!
//! The data path never returns an error per packet; it bumps one of these atomics and moves on.
//! Relaxed ordering is enough: counters are statistics, read by the control plane as a snapshot
//! that may be a few packets stale.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// Why a frame (or a descriptor chain) did not reach its destination.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum DropReason {
            $( $(#[$doc])* $variant, )*
        }

        impl DropReason {
            /// Every reason, in counter-array order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Number of reasons (length of the counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used in logs and the metrics the API exports.
            pub const fn name(self) -> &'static str {
                match self {
                    $( DropReason::$variant => $name, )*
                }
            }
        }
    };
}

drop_reasons! {
    // --- TX descriptor chains (guest -> backend) ---
    /// A descriptor points outside guest memory, or the descriptor table itself does.
    DescriptorOutOfMemory => "descriptor_out_of_memory",
    /// The chain loops, or is longer than the queue (the iterator ran out of budget).
    DescriptorLoop => "descriptor_loop",
    /// A zero-length descriptor or an empty chain.
    ZeroLength => "zero_length",
    /// Frame longer than 64 KiB plus the virtio-net header.
    Oversized => "oversized",
    /// A TX chain containing a device-writable descriptor.
    WriteOnlyDescriptor => "write_only_descriptor",
    /// Shorter than the virtio-net header plus an Ethernet header.
    ShortFrame => "short_frame",
    /// virtio-net header asks for an offload that was not negotiated, or is inconsistent.
    BadVnetHeader => "bad_vnet_header",
    // --- pipeline ---
    /// etherparse rejected the frame (truncated or inconsistent headers).
    Malformed => "malformed",
    /// GSO type in the header does not match the frame (e.g. TCPv4 GSO on a UDP packet).
    GsoMismatch => "gso_mismatch",
    /// VLAN-tagged frame: vNICs are access ports.
    VlanTagged => "vlan_tagged",
    /// Ethertype other than IPv4, IPv6 or ARP.
    DisallowedEthertype => "disallowed_ethertype",
    /// Source MAC differs from the vNIC's MAC.
    SpoofedSourceMac => "spoofed_source_mac",
    /// Source IP is not one of the vNIC's addresses.
    SpoofedSourceIp => "spoofed_source_ip",
    /// ARP sender MAC/IP not the vNIC's.
    SpoofedArp => "spoofed_arp",
    /// IPv6 neighbour advertisement for an address the vNIC does not own.
    SpoofedNeighborAdvert => "spoofed_neighbor_advert",
    /// DHCP (v4 or v6) server message sent by a guest.
    DhcpServerFromGuest => "dhcp_server_from_guest",
    /// IPv6 router advertisement or redirect sent by a guest.
    RouterAdvertFromGuest => "router_advert_from_guest",
    /// Destination is the sender itself.
    Hairpin => "hairpin",
    /// No port for the destination (no uplink configured, or unknown unicast from the uplink).
    NoRoute => "no_route",
    /// Broadcast/multicast from the uplink that no local vNIC owns.
    UnclaimedMulticast => "unclaimed_multicast",
    /// The vNIC's policy is not realized yet: fail closed.
    PolicyNotRealized => "policy_not_realized",
    /// The firewall dropped the packet.
    PolicyDenied => "policy_denied",
    /// The firewall rejected the packet (a TCP RST / ICMP error was sent back).
    PolicyRejected => "policy_rejected",
    /// The firewall saw a packet that fits no tracked connection state.
    ConntrackInvalid => "conntrack_invalid",
    /// The vNIC's connection table is full: a new connection was refused.
    ConntrackFull => "conntrack_full",
    /// Non-first IP fragment (no ports to decide on; vdfw does not reassemble).
    IpFragment => "ip_fragment",
    // --- delivery (backend -> guest / uplink) ---
    /// Destination vNIC has no frontend connected or its RX ring is not running.
    PortDown => "port_down",
    /// RX backlog of the destination vNIC is full (guest not posting buffers).
    BacklogFull => "backlog_full",
    /// Frame larger than the RX chain and mergeable buffers were not negotiated.
    RxBufferTooSmall => "rx_buffer_too_small",
    /// Guest posted an RX chain we cannot write into.
    RxChainInvalid => "rx_chain_invalid",
    /// Software segmentation (receiver without TSO) failed on a malformed GSO frame.
    SegmentationFailed => "segmentation_failed",
    /// write() to the uplink TAP failed.
    UplinkWriteFailed => "uplink_write_failed",
}

/// A point-in-time copy of [`PortCounters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl CounterSnapshot {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Non-zero drop counters by name, for logs and the API.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops[*r as usize]))
            .filter(|(_, n)| *n != 0)
    }
}

/// Counters of one port.
///
/// Direction is named from the guest's point of view, like the virtqueues: `tx` counts frames
/// the guest transmitted (our TX queue), `rx` frames delivered into the guest's RX queue. For
/// the uplink, `tx` is what we read from the TAP and `rx` what we wrote to it.
/// Drops are charged to the port whose frame it was at the time of the drop: the ingress port
/// for TX/pipeline reasons, the egress port for delivery reasons.
#[derive(Debug)]
pub struct PortCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl Default for PortCounters {
    fn default() -> Self {
        Self {
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PortCounters {
    pub fn count_tx(&self, bytes: usize) {
        self.count_tx_many(1, bytes);
    }

    /// `packets` frames of `bytes` bytes in all (one update per burst).
    pub fn count_tx_many(&self, packets: u64, bytes: usize) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_rx(&self, bytes: usize) {
        self.count_rx_many(1, bytes);
    }

    /// `packets` frames of `bytes` bytes in all (one update per burst).
    pub fn count_rx_many(&self, packets: u64, bytes: usize) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            drops: std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT, "names must be unique");
    }

    #[test]
    fn counts_land_in_the_right_slot() {
        let c = PortCounters::default();
        c.count_drop(DropReason::SpoofedSourceIp);
        c.count_drop(DropReason::SpoofedSourceIp);
        c.count_drop(DropReason::BacklogFull);
        c.count_tx(100);
        c.count_rx(60);
        let s = c.snapshot();
        assert_eq!(s.drops(DropReason::SpoofedSourceIp), 2);
        assert_eq!(s.drops(DropReason::BacklogFull), 1);
        assert_eq!(s.drops(DropReason::Malformed), 0);
        assert_eq!(s.total_drops(), 3);
        assert_eq!(
            (s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes),
            (1, 100, 1, 60)
        );
        let nz: Vec<_> = s.nonzero_drops().collect();
        assert_eq!(nz, vec![("spoofed_source_ip", 2), ("backlog_full", 1)]);
    }
}

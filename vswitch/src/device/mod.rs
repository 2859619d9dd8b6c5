//! The vhost-user virtio-net device: one backend per vNIC.
//!
//! * [`backend`]: the `VhostUserBackend` implementation (features, config space, the TX and RX
//!   virtqueue handlers);
//! * [`queues`]: copying frames out of TX chains and into RX chains, hostile-input safe;
//! * [`ring`]: split-ring and guest-memory access for the packet path, translated once per
//!   batch instead of per access;
//! * [`shim`]: relays vhost-user messages between the frontend and the crate's handler,
//!   papering over QEMU's early `SET_VRING_ENABLE`;
//! * [`poller`]: poll mode, shared threads serving every vNIC's queues (OVS-DPDK PMD style);
//! * [`runner`]: the socket roles — vdfwd listening (QEMU `-chardev socket,path=`) or
//!   connecting to a listening frontend (QEMU `server=on`) — with reconnect.
//!
//! Offered virtio features and why:
//! * `VERSION_1`, `MAC` (MAC in config space), `STATUS` (link always up);
//! * `MRG_RXBUF`: without it a Linux guest with GUEST_TSO posts ~19-descriptor buffers per
//!   packet (pitfall 7);
//! * `RING_EVENT_IDX`: fewer notifications; the crate applies it to the vrings at
//!   SET_FEATURES (pitfall 5), before any SET_VRING_BASE;
//! * `RING_INDIRECT_DESC`: fewer ring slots per TX packet; tables are checked and bounded in
//!   [`ring`] (one level, whole descriptors, inside guest memory);
//! * `CSUM`/`GUEST_CSUM`, `HOST_TSO4/6`/`GUEST_TSO4/6`: offloads pass between VMs untouched
//!   when both negotiated them and are resolved in software otherwise ([`crate::offload`]);
//! * `IN_ORDER`: every chain is already used in the order it was made available (TX per
//!   burst, RX buffers as popped, bad chains included), so offering it costs nothing; a
//!   driver that negotiates it (DPDK's virtio PMD does by default) skips reading the used
//!   ring on TX and frees descriptors without walking chains, which keeps those cache lines
//!   on one core. QEMU 7.2 does not pass it to the guest, so Linux guests are unaffected;
//! * not offered: UFO/USO (would need software IP fragmentation; Linux no longer emits UFO),
//!   ECN-GSO, CTRL_VQ/MQ (one queue pair, no RX filtering to configure).
//!
//! Protocol features: `CONFIGURE_MEM_SLOTS` (more than 8 memory regions, add/remove region),
//! `CONFIG` (GET_CONFIG returns our config space) and `REPLY_ACK` (handled by the crate).

pub mod backend;
pub mod poller;
pub mod queues;
pub mod ring;
pub mod runner;
pub mod shim;

pub use backend::VnicBackend;
pub use poller::{PollConfig, PollerPool};
pub use runner::{SocketRole, VnicRunner};

use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Virtqueue index of the receive queue (device -> guest).
pub const RX_QUEUE: u16 = 0;
/// Virtqueue index of the transmit queue (guest -> device).
pub const TX_QUEUE: u16 = 1;
pub const NUM_QUEUES: usize = 2;
/// Largest vring we accept (QEMU `rx_queue_size`/`tx_queue_size` up to 1024).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Virtio feature bits offered to the frontend (without the vhost-user PROTOCOL_FEATURES bit).
pub const OFFERED_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_F_IN_ORDER);

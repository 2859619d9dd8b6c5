//! vdfw data plane: the vhost-user virtio-net backend, the ports, and the packet pipeline that
//! calls the firewall.
//!
//! Layout (data flows top to bottom):
//! * [`device`]: one vhost-user backend per vNIC (TX/RX virtqueues, features, config space)
//!   and the socket roles (listen / connect, with reconnect) in [`device::runner`];
//! * [`uplink`]: the TAP device attached to a Linux bridge, with its reader thread;
//! * [`pipeline`]: parse -> spoof guard -> switch -> [`filter::PacketFilter`] -> deliver;
//! * [`switch`]: the port table snapshot and the forwarding decision;
//! * pure helpers: [`packet`] (typed view), [`spoof`], [`reject`], [`offload`] (checksum /
//!   TSO resolution), [`net_hdr`], [`checksum`], [`counters`], [`inbox`];
//! * [`firewall`]: the dfw-backed [`filter::PacketFilter`]: realized policy + per-vNIC
//!   connection tracking, with [`flowlog`] for its decisions;
//! * [`config`], [`policy`] (the policy directory), [`dataplane`] and [`daemon`]: what the
//!   `vdfwd` binary (and the API) drives.

pub mod checksum;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod device;
pub mod enforcer;
pub mod filter;
pub mod firewall;
pub mod flowlog;
pub mod huge_alloc;
pub mod inbox;
pub mod mac;
pub mod net_hdr;
pub mod offload;
pub mod packet;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod reject;
pub mod spoof;
pub mod switch;
pub mod uplink;

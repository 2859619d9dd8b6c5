//! Integration-test harness for vdfw: real peers, driven from Rust tests.
//!
//! - [`Guest`]: a small Linux guest under QEMU (TCG) on a vhost-user socket, driven interactively over
//!   its serial console ([`Guest::exec`], [`Guest::spawn`], [`Guest::tcp_connect`], [`Guest::ping`]).
//! - [`Testpmd`]: DPDK testpmd as an independent vhost-user backend or virtio-user frontend.
//! - [`NetNs`]: a private network namespace (bridge, TAP, addresses) removed on drop.
//! - [`Vdfwd`]: the system under test as a managed process (generated config, its policy and
//!   state directories, `counters.json` / `flows.jsonl` readers, reload, stop and restart).
//! - [`Libvirt`]: libvirtd and virtlogd started by hand with vdfw's qemu hook; [`Domain`]: a
//!   libvirt domain booting the test guest, attached to as a [`Guest`] over its serial socket.
//! - [`cargo_bin`]: builds and locates a workspace binary such as `vdfwd`.
//! - [`require`]: turns missing prerequisites (root, QEMU, testpmd) into a clear failure that names
//!   `integration/scripts/install-deps.sh`, instead of a silent pass.
//!
//! Every address a test uses lives inside guests or namespaces the test created; nothing here sends
//! traffic through the machine's own interfaces.

mod console;
mod error;
mod guest;
mod libvirt;
mod netns;
mod paths;
mod prereq;
mod process;
mod testpmd;
mod vdfwd;

pub use error::{Error, Result};
pub use guest::{
    Background, CommandOutput, ConnectOutcome, Guest, GuestSpec, MacAddr, NicSpec, SocketRole,
    TcpSession,
};
pub use libvirt::{Domain, DomainSpec, Libvirt, HOOK, HOOK_ENV};
pub use netns::NetNs;
pub use paths::{cargo_bin, guest_image, workspace_root, GuestImage};
pub use prereq::{require, Prereq};
pub use testpmd::{write_pcap, PortStats, Testpmd, TestpmdSpec, Vdev};
pub use vdfwd::{Vdfwd, VdfwdConfig, VdfwdSpec, VnicDef, VnicInfo, VnicRole};

/// Re-exported so tests can make scratch directories (vhost-user sockets, logs) without another
/// dev-dependency.
pub use tempfile;

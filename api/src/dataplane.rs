//! The hook between the controller and a packet data plane (vdfwd's vswitch implements it).
//!
//! Ownership is one-way: the controller decides, the data plane enforces. The controller
//! calls [`DataPlane::publish`] with every newly realized state and only then adds the vNICs
//! that state covers, so a vNIC never forwards a packet before the policy for it is in place
//! (including at start-up: the controller realizes everything from the store before it
//! attaches the data plane). Flow verdicts travel back through the [`FlowSink`] handed over
//! at attach time.
//!
//! The controller also runs without any data plane (offline tools, tests): then nothing is
//! enforced, but every control operation, dry-run and trace still works.

use std::collections::BTreeMap;
use std::sync::Arc;

use dfw::model::{EndpointKey, PolicyKey, RuleId};
use serde::{Deserialize, Serialize};

use crate::flows::FlowSink;
use crate::realized::RealizedState;
use crate::types::EndpointSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataPlaneError {
    #[error("vNIC {endpoint}: {reason}")]
    Vnic {
        endpoint: EndpointKey,
        reason: String,
    },
    #[error("vNIC {0} is not attached to the data plane")]
    UnknownVnic(EndpointKey),
    #[error("data plane unavailable: {0}")]
    Unavailable(String),
}

/// Traffic counters of one vNIC, from the VM's point of view (`rx`: towards the VM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnicStats {
    pub endpoint: EndpointKey,
    /// Whether a VMM is connected to the vhost-user socket.
    pub connected: bool,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason code (e.g. `POLICY_DENIED`, `SPOOFED`, `INVALID_PACKET`).
    pub drops: BTreeMap<String, u64>,
}

/// Hit counters of one rule (NSX-style: hits, packets, bytes, sessions), keyed by the stable
/// rule id so they survive re-applies that leave the rule unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    pub policy: PolicyKey,
    pub rule_id: RuleId,
    pub rule: String,
    pub hits: u64,
    pub packets: u64,
    pub bytes: u64,
    pub sessions: u64,
}

/// Everything `vdfwctl stats` shows from the data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneStats {
    pub vnics: Vec<VnicStats>,
    pub rules: Vec<RuleStats>,
    pub conntrack_entries: u64,
    /// The store revision of the realized state the data plane enforces right now.
    pub enforced_revision: u64,
}

/// Implemented by the packet data plane. Methods are called from the controller's blocking
/// context, one at a time (the controller serializes changes), and must not block for long:
/// queue work to the data-path threads and return.
pub trait DataPlane: Send + Sync + 'static {
    /// Installs a newly realized state. Must be an atomic pointer swap from the packet path's
    /// point of view: a packet is classified entirely against the old or the new state.
    fn publish(&self, state: Arc<RealizedState>) -> Result<(), DataPlaneError>;

    /// Creates the vNIC port (or reconfigures it: MAC, IPs, labels, socket) for an endpoint
    /// that has a socket. Called only after a state containing the endpoint was published.
    fn add_vnic(&self, endpoint: &EndpointSpec) -> Result<(), DataPlaneError>;

    /// Tears the vNIC port down. The published state still containing the endpoint is
    /// replaced right after.
    fn remove_vnic(&self, endpoint: &EndpointKey) -> Result<(), DataPlaneError>;

    /// Current counters.
    fn stats(&self) -> Result<DataPlaneStats, DataPlaneError>;

    /// Where to push flow records from now on (called once, when attached).
    fn set_flow_sink(&self, sink: FlowSink);
}

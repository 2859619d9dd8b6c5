//! The data plane as a whole: what `vdfwd` (and later the API server) drives.
//!
//! Adding a vNIC creates its [`VnicPort`], publishes it in the port table (a new snapshot,
//! traffic keeps flowing) and starts its socket loop; removing one unpublishes it first, so no
//! new frame is switched to it, then disconnects the frontend. Installing a realized policy is
//! [`Dataplane::set_filter`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::config::{UplinkConfig, VnicConfig};
use crate::counters::CounterSnapshot;
use crate::device::runner::RunnerError;
use crate::device::VnicRunner;
use crate::filter::PacketFilter;
use crate::firewall::VnicFwStatus;
use crate::mac::MacAddr;
use crate::pipeline::Pipeline;
use crate::port::{PortId, UplinkPort, VnicPort};
use crate::switch::TableError;
use crate::uplink::{TapUplink, UplinkError, UplinkReader};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error("cannot create the vNIC inbox: {0}")]
    Inbox(std::io::Error),
    #[error("no vNIC {0}")]
    NoSuchVnic(PortId),
    #[error("an uplink is already attached")]
    UplinkExists,
}

struct Vnic {
    port: Arc<VnicPort>,
    runner: VnicRunner,
    socket: String,
}

/// Counters and state of one port, for `counters.json` and the API.
#[derive(Debug, Clone, Serialize)]
pub struct PortStatus {
    pub id: Option<u32>,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub socket: Option<String>,
    pub connected: bool,
    pub sessions: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: BTreeMap<&'static str, u64>,
    /// The vNIC's firewall state and counters (filled in by the daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<VnicFwStatus>,
}

impl PortStatus {
    fn fill(mut self, c: &CounterSnapshot) -> PortStatus {
        self.tx_packets = c.tx_packets;
        self.tx_bytes = c.tx_bytes;
        self.rx_packets = c.rx_packets;
        self.rx_bytes = c.rx_bytes;
        self.drops = c.nonzero_drops().collect();
        self
    }
}

pub struct Dataplane {
    pipeline: Arc<Pipeline>,
    vnics: Mutex<BTreeMap<PortId, Vnic>>,
    uplink: Mutex<Option<(Arc<TapUplink>, UplinkReader)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dataplane {
    pub fn new(filter: Arc<dyn PacketFilter>) -> Dataplane {
        Dataplane {
            pipeline: Arc::new(Pipeline::new(filter)),
            vnics: Mutex::new(BTreeMap::new()),
            uplink: Mutex::new(None),
        }
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Installs a new firewall (e.g. a freshly realized dfw policy) for all ports.
    pub fn set_filter(&self, filter: Arc<dyn PacketFilter>) {
        self.pipeline.set_filter(filter);
    }

    /// Creates the uplink TAP, attaches it to the bridge and starts its reader.
    pub fn attach_uplink(&self, cfg: &UplinkConfig) -> Result<(), DataplaneError> {
        let mut slot = lock(&self.uplink);
        if slot.is_some() {
            return Err(DataplaneError::UplinkExists);
        }
        let tap = Arc::new(TapUplink::create(&cfg.tap, cfg.bridge.as_deref())?);
        let reader = tap.spawn_reader(self.pipeline.clone())?;
        self.pipeline.set_uplink(Some(tap.clone()));
        *slot = Some((tap, reader));
        Ok(())
    }

    /// Adds a vNIC and starts serving its socket.
    pub fn add_vnic(&self, cfg: &VnicConfig) -> Result<PortId, DataplaneError> {
        let id = self.pipeline.alloc_port_id();
        self.add_vnic_with_id(id, cfg)?;
        Ok(id)
    }

    /// [`Dataplane::add_vnic`] with an id from [`Pipeline::alloc_port_id`], so the firewall
    /// can realize the vNIC's policy under that id before its socket is served.
    pub fn add_vnic_with_id(&self, id: PortId, cfg: &VnicConfig) -> Result<(), DataplaneError> {
        let port = Arc::new(
            VnicPort::new(id, cfg.identity(), cfg.mac, &cfg.ips).map_err(DataplaneError::Inbox)?,
        );
        self.pipeline.add_vnic(port.clone())?;
        let runner =
            match VnicRunner::spawn(port.clone(), self.pipeline.clone(), &cfg.socket, cfg.role) {
                Ok(r) => r,
                Err(e) => {
                    self.pipeline.remove_vnic(id);
                    return Err(e.into());
                }
            };
        lock(&self.vnics).insert(
            id,
            Vnic {
                port,
                runner,
                socket: cfg.socket.display().to_string(),
            },
        );
        Ok(())
    }

    /// Removes a vNIC: unpublish, then disconnect its frontend and stop its socket loop.
    pub fn remove_vnic(&self, id: PortId) -> Result<(), DataplaneError> {
        let v = lock(&self.vnics)
            .remove(&id)
            .ok_or(DataplaneError::NoSuchVnic(id))?;
        self.pipeline.remove_vnic(id);
        v.runner.shutdown();
        Ok(())
    }

    pub fn vnic_ids(&self) -> Vec<PortId> {
        lock(&self.vnics).keys().copied().collect()
    }

    /// State and counters of every port (vNICs, then the uplink).
    pub fn status(&self) -> Vec<PortStatus> {
        let mut out: Vec<PortStatus> = lock(&self.vnics)
            .values()
            .map(|v| {
                PortStatus {
                    id: Some(v.port.id.0),
                    name: v.port.name().to_owned(),
                    mac: Some(v.port.mac()),
                    socket: Some(v.socket.clone()),
                    connected: v.port.is_rx_ready(),
                    sessions: v.runner.sessions(),
                    tx_packets: 0,
                    tx_bytes: 0,
                    rx_packets: 0,
                    rx_bytes: 0,
                    drops: BTreeMap::new(),
                    firewall: None,
                }
                .fill(&v.port.counters.snapshot())
            })
            .collect();
        if let Some((tap, _)) = lock(&self.uplink).as_ref() {
            out.push(
                PortStatus {
                    id: None,
                    name: format!("uplink:{}", UplinkPort::name(tap.as_ref())),
                    mac: None,
                    socket: None,
                    connected: true,
                    sessions: 0,
                    tx_packets: 0,
                    tx_bytes: 0,
                    rx_packets: 0,
                    rx_bytes: 0,
                    drops: BTreeMap::new(),
                    firewall: None,
                }
                .fill(&tap.counters().snapshot()),
            );
        }
        out
    }

    /// Stops every vNIC and the uplink.
    pub fn shutdown(&self) {
        let ids = self.vnic_ids();
        for id in ids {
            let _ = self.remove_vnic(id);
        }
        if let Some((tap, reader)) = lock(&self.uplink).take() {
            self.pipeline.set_uplink(None);
            reader.shutdown();
            drop(tap);
        }
        self.pipeline.stop_polling();
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

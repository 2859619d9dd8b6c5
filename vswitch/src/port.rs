//! Ports: the vNICs (one per vhost-user socket) and the uplink.
//!
//! A [`VnicPort`] is the long-lived part of a vNIC: identity, bindings, counters and inbox. It
//! outlives frontend connections (a VM reboot or QEMU reconnect creates a new vhost-user
//! session on the same port) and is shared by the port table snapshots that reference it.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::counters::{DropReason, PortCounters};
use crate::inbox::{Inbox, DEFAULT_INBOX_CAPACITY};
use crate::mac::MacAddr;
use crate::net_hdr::{OffloadSet, VirtioNetHdr};
use crate::offload::FrameMeta;
use crate::spoof::PortBindings;

/// Identifier of a vNIC, unique for the daemon's lifetime (never reused after removal, so a
/// stale id in a firewall table cannot alias a new vNIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vnic#{}", self.0)
    }
}

/// A port as seen by the pipeline and the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortRef {
    Vnic(PortId),
    Uplink,
}

/// A named container port (Kubernetes `containerPort` name), used by policies that name ports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// Who is behind a vNIC: what policies select on. Carried for the firewall integration and
/// the API; the data path itself only uses the bindings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VnicIdentity {
    pub name: String,
    pub vm: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub named_ports: Vec<NamedPort>,
}

/// What a direct write into a guest's RX ring came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectWrite {
    /// In the guest's used ring (counted as received); the guest is signalled at batch end.
    Written,
    /// Refused by the guest's ring (bad chain, buffer too small): counted by the caller.
    Dropped(DropReason),
    /// Cannot be done right now without waiting (the receiver's worker holds the ring,
    /// frames are already waiting in the inbox, no RX buffer is posted, the frame needs
    /// segmenting or a checksum completed): queue it in the inbox instead.
    Unavailable,
}

/// The RX virtqueue of a vNIC's current frontend session, writable from other ports'
/// workers. Writing a frame straight into the receiver's ring saves the inbox copy, its lock
/// and the receiver's wake-up; the receiver's own worker still owns everything that waits
/// (backlog, notification arming, segmentation).
pub trait RxSink: Send + Sync {
    /// Writes `frame` into the guest's RX ring now, or says why not. Never blocks on the
    /// receiver's worker. The guest may not see the frame before [`RxSink::publish`].
    fn try_write(&self, frame: &[u8], meta: &FrameMeta) -> DirectWrite;
    /// Makes the frames written so far visible to the guest, without signalling it: the
    /// used index is a cache line the guest keeps reading, so it is stored once per burst of
    /// frames, not per frame.
    fn publish(&self);
    /// Publishes, then signals the guest for the frames written since the last call (if its
    /// EVENT_IDX settings ask for it).
    fn notify(&self);
}

/// A vNIC's current [`RxSink`] (none while no frontend session runs).
struct SinkSlot(Arc<dyn RxSink>);

/// Receivers written to directly during one batch of frames, signalled once at its end.
///
/// Only a caller that calls [`DirectBatch::finish`] after every batch may enable it (the
/// vNIC TX worker does); a disabled batch makes every delivery go through the inbox.
#[derive(Default)]
pub struct DirectBatch {
    enabled: bool,
    touched: Vec<Arc<dyn RxSink>>,
}

impl fmt::Debug for DirectBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectBatch")
            .field("enabled", &self.enabled)
            .field("touched", &self.touched.len())
            .finish()
    }
}

impl DirectBatch {
    /// A batch that allows direct writes; the owner must call [`DirectBatch::finish`].
    pub fn enabled() -> DirectBatch {
        DirectBatch {
            enabled: true,
            // A batch rarely reaches more than a few receivers; growing is a one-off.
            touched: Vec::with_capacity(8),
        }
    }

    fn touch(&mut self, sink: &Arc<dyn RxSink>) {
        if !self
            .touched
            .iter()
            .any(|s| std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(sink)))
        {
            self.touched.push(sink.clone());
        }
    }

    /// Makes the frames written so far visible to their guests (see [`RxSink::publish`]);
    /// the receivers stay on the list for [`DirectBatch::finish`].
    pub fn publish(&self) {
        for s in &self.touched {
            s.publish();
        }
    }

    /// Signals every receiver written to since the last call, once each. Returns how many.
    pub fn finish(&mut self) -> usize {
        let n = self.touched.len();
        for s in self.touched.drain(..) {
            s.notify();
        }
        n
    }
}

/// The long-lived state of one vNIC.
pub struct VnicPort {
    pub id: PortId,
    pub identity: VnicIdentity,
    pub bindings: PortBindings,
    pub counters: PortCounters,
    pub inbox: Inbox,
    /// Frontend connected and RX virtqueue running: frames may be queued for it.
    rx_ready: AtomicBool,
    /// Virtio features acked by the current frontend (0 when disconnected).
    acked_features: AtomicU64,
    /// The current session's RX ring for direct writes (see [`RxSink`]).
    rx_sink: ArcSwapOption<SinkSlot>,
}

impl fmt::Debug for VnicPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VnicPort")
            .field("id", &self.id)
            .field("name", &self.identity.name)
            .field("mac", &self.bindings.mac)
            .finish()
    }
}

impl VnicPort {
    pub fn new(
        id: PortId,
        identity: VnicIdentity,
        mac: MacAddr,
        ips: &[IpAddr],
    ) -> io::Result<VnicPort> {
        Self::with_inbox_capacity(id, identity, mac, ips, DEFAULT_INBOX_CAPACITY)
    }

    pub fn with_inbox_capacity(
        id: PortId,
        identity: VnicIdentity,
        mac: MacAddr,
        ips: &[IpAddr],
        capacity: usize,
    ) -> io::Result<VnicPort> {
        Ok(VnicPort {
            id,
            identity,
            bindings: PortBindings::new(mac, ips),
            counters: PortCounters::default(),
            inbox: Inbox::new(capacity)?,
            rx_ready: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            rx_sink: ArcSwapOption::empty(),
        })
    }

    pub fn mac(&self) -> MacAddr {
        self.bindings.mac
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Offloads the current guest may use on TX.
    pub fn tx_offloads(&self) -> OffloadSet {
        OffloadSet::guest_tx(self.acked_features.load(Ordering::Acquire))
    }

    /// Offloads the current guest accepts on RX.
    pub fn rx_offloads(&self) -> OffloadSet {
        OffloadSet::guest_rx(self.acked_features.load(Ordering::Acquire))
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Acquire)
    }

    /// Records the features the frontend acked. Driven by the device backend; public for
    /// harnesses (fuzzing, benchmarks) that run the pipeline without a frontend.
    pub fn set_acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Release);
    }

    pub fn is_rx_ready(&self) -> bool {
        self.rx_ready.load(Ordering::Acquire)
    }

    /// Marks the RX ring running (frames may be queued) or not. Driven by the device backend;
    /// public for harnesses like [`VnicPort::set_acked_features`].
    pub fn set_rx_ready(&self, ready: bool) {
        self.rx_ready.store(ready, Ordering::Release);
    }

    /// Installs (or, with `None`, removes) the current session's RX ring for direct writes.
    /// Driven by the device backend; the session removes itself when it closes.
    pub fn set_rx_sink(&self, sink: Option<Arc<dyn RxSink>>) {
        self.rx_sink.store(sink.map(|s| Arc::new(SinkSlot(s))));
    }

    /// Queues a frame for this vNIC's guest. Counts and reports the drop reason on failure.
    pub fn deliver(&self, frame: &[u8], meta: FrameMeta) -> Result<(), DropReason> {
        self.deliver_with(|buf| {
            buf.extend_from_slice(frame);
            Some(meta)
        })
    }

    /// Like [`VnicPort::deliver`], but writes the frame straight into the guest's RX ring
    /// when `batch` allows it and the ring can take it now (the guest sees it at
    /// `batch.publish()` or `batch.finish()`, which also signals it); otherwise queues it in
    /// the inbox.
    pub fn deliver_batched(
        &self,
        frame: &[u8],
        meta: FrameMeta,
        batch: &mut DirectBatch,
    ) -> Result<(), DropReason> {
        if batch.enabled && self.is_rx_ready() {
            if let Some(slot) = &*self.rx_sink.load() {
                match slot.0.try_write(frame, &meta) {
                    DirectWrite::Written => {
                        batch.touch(&slot.0);
                        return Ok(());
                    }
                    DirectWrite::Dropped(reason) => {
                        self.counters.count_drop(reason);
                        return Err(reason);
                    }
                    DirectWrite::Unavailable => {}
                }
            }
        }
        self.deliver(frame, meta)
    }

    /// Like [`VnicPort::deliver`], with the frame written by `fill` straight into the inbox
    /// buffer (reject replies, segments).
    pub fn deliver_with(
        &self,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<FrameMeta>,
    ) -> Result<(), DropReason> {
        let reason = if !self.is_rx_ready() {
            DropReason::PortDown
        } else {
            match self.inbox.push_with(fill) {
                Ok(_) => return Ok(()),
                Err(_) => DropReason::BacklogFull,
            }
        };
        self.counters.count_drop(reason);
        Err(reason)
    }
}

/// The uplink as the pipeline sees it: something that takes a frame with its virtio-net
/// header. Implemented by the TAP uplink ([`crate::uplink::TapUplink`]).
pub trait UplinkPort: Send + Sync {
    /// Sends one frame; `hdr` describes its offload state.
    fn transmit(&self, hdr: &VirtioNetHdr, frame: &[u8]) -> io::Result<()>;
    fn counters(&self) -> &PortCounters;
    fn name(&self) -> &str;
}

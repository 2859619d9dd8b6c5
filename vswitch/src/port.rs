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
    /// Writes `frames` (with their `metas`) into the guest's RX ring now, in order, and says
    /// in `results` what became of each. Never blocks on the receiver's worker. The first
    /// frame that is [`DirectWrite::Unavailable`] makes every later one so too (they queue
    /// behind it in the inbox, in order). The guest may not see the frames before
    /// [`RxSink::publish`].
    fn try_write_burst(&self, frames: &[&[u8]], metas: &[FrameMeta], results: &mut [DirectWrite]);
    /// [`RxSink::try_write_burst`] for one frame.
    fn try_write(&self, frame: &[u8], meta: &FrameMeta) -> DirectWrite {
        let mut result = [DirectWrite::Unavailable];
        self.try_write_burst(&[frame], std::slice::from_ref(meta), &mut result);
        result[0]
    }
    /// Makes the frames written so far visible to the guest, without signalling it: the
    /// used index is a cache line the guest keeps reading, so it is stored once per burst of
    /// frames, not per frame.
    fn publish(&self);
    /// Publishes, then signals the guest for the frames written since the last call (if its
    /// EVENT_IDX settings ask for it).
    fn notify(&self);
}

/// Most frames one [`RxSink::try_write_burst`] call takes from [`VnicPort::deliver_burst`];
/// a longer burst goes through the inbox.
pub const DIRECT_BURST: usize = 32;

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
    /// Frames of the current burst decided for a vNIC and not written yet
    /// (see `Pipeline::flush_deferred`).
    pub(crate) deferred: Vec<Deferred>,
}

/// A frame of a burst, by its slot, decided for vNIC `port`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deferred {
    pub port: PortId,
    pub slot: u16,
    pub meta: FrameMeta,
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
            deferred: Vec::with_capacity(64),
        }
    }

    /// Whether deliveries may write into receivers' rings directly.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn defer(&mut self, port: PortId, slot: u16, meta: FrameMeta) {
        self.deferred.push(Deferred { port, slot, meta });
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
        let mut result = [Err(DropReason::PortDown)];
        self.deliver_each(&[frame], &[meta], batch, |_, r| result[0] = r);
        result[0]
    }

    /// [`VnicPort::deliver_batched`] for several frames, in order: one ring lock and
    /// translation for all of them. Drops are counted here.
    pub fn deliver_burst(&self, frames: &[&[u8]], metas: &[FrameMeta], batch: &mut DirectBatch) {
        self.deliver_each(frames, metas, batch, |_, _| {});
    }

    fn deliver_each(
        &self,
        frames: &[&[u8]],
        metas: &[FrameMeta],
        batch: &mut DirectBatch,
        mut outcome: impl FnMut(usize, Result<(), DropReason>),
    ) {
        let n = frames.len().min(metas.len());
        let mut results = [DirectWrite::Unavailable; DIRECT_BURST];
        if batch.enabled && self.is_rx_ready() && n <= DIRECT_BURST {
            if let Some(slot) = &*self.rx_sink.load() {
                slot.0
                    .try_write_burst(&frames[..n], &metas[..n], &mut results[..n]);
                if results[..n].contains(&DirectWrite::Written) {
                    batch.touch(&slot.0);
                }
            }
        }
        for k in 0..n {
            let r = match results.get(k).copied().unwrap_or(DirectWrite::Unavailable) {
                DirectWrite::Written => Ok(()),
                DirectWrite::Dropped(reason) => {
                    self.counters.count_drop(reason);
                    Err(reason)
                }
                DirectWrite::Unavailable => self.deliver(frames[k], metas[k]),
            };
            outcome(k, r);
        }
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

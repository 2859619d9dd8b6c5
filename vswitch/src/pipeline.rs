//! The packet pipeline: the single place every frame crosses between ports.
//!
//! ```text
//!  vNIC TX / uplink read
//!     -> validate virtio-net header against the sender's offloads
//!     -> parse (etherparse)                       drop: malformed
//!     -> spoof guard (vNIC ingress only)          drop: spoofed_*, dhcp/ra from guest
//!     -> switching decision (PortTable::decide)   drop: no_route, hairpin, ...
//!     -> firewall hook (PacketFilter)             drop / reject (reply to the sender)
//!     -> deliver: egress vNIC inbox | uplink TAP  drop: port_down, backlog_full, ...
//! ```
//!
//! A vNIC's TX burst (up to 32 frames) goes through in stages: the backend copies every chain
//! of the burst out of guest memory, then [`Burst::from_vnic_deferred`] decides on each frame
//! (parse, spoof guard, switching, firewall) and only notes where a frame for another vNIC
//! goes, and [`Burst::flush_deferred`] writes them, one group per receiver: one lock and ring
//! translation per receiver and burst instead of per frame, and the group's descriptors are
//! prefetched together. The port table and the firewall are loaded once per burst ([`Burst`]).
//!
//! [`Pipeline`] holds the port table and the filter behind `ArcSwap`s: the API adds or removes
//! vNICs, and installs a newly realized policy, by publishing a new immutable snapshot; frames
//! in flight finish with the snapshot they loaded. Writers are serialised by a mutex so two
//! concurrent updates cannot lose each other's change.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::counters::{DropReason, PortCounters};
use crate::device::{PollConfig, PollerPool};
use crate::filter::{BurstState, FilterContext, FilterVerdict, PacketFilter};
use crate::net_hdr::{OffloadSet, VirtioNetHdr};
use crate::offload::FrameMeta;
use crate::packet::ParsedPacket;
use crate::port::{DirectBatch, PortId, PortRef, UplinkPort, VnicPort};
use crate::reject::build_reject;
use crate::spoof;
use crate::switch::{Egress, PortTable, TableError};

/// What became of a frame (already counted; returned for tests and tracing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Forwarded(Egress),
    Dropped(DropReason),
    /// Dropped by the firewall; `replied` tells whether a reject reply was queued.
    Rejected {
        replied: bool,
    },
}

/// Most frames [`Pipeline::flush_deferred`] hands a receiver in one call (a TX burst).
const DELIVERY_GROUP: usize = 32;

/// Per-thread reusable buffers, so the pipeline does not allocate per packet.
#[derive(Debug, Default)]
pub struct Scratch {
    reply: Vec<u8>,
    /// Receivers written to directly in the current batch (disabled unless the owner
    /// finishes batches, see [`Scratch::batched`]).
    pub direct: DirectBatch,
}

impl Scratch {
    /// Scratch whose deliveries go through the receivers' inboxes.
    pub fn new() -> Scratch {
        Scratch {
            reply: Vec::with_capacity(1600),
            direct: DirectBatch::default(),
        }
    }

    /// Scratch that may write frames straight into receivers' RX rings. The owner must call
    /// [`Scratch::finish_batch`] after each batch, or receivers are never signalled.
    pub fn batched() -> Scratch {
        Scratch {
            reply: Vec::with_capacity(1600),
            direct: DirectBatch::enabled(),
        }
    }

    /// Makes the frames written directly so far visible to their guests, without signalling
    /// them (once per burst; [`Scratch::finish_batch`] signals once per batch).
    pub fn publish_batch(&self) {
        self.direct.publish();
    }

    /// Signals the receivers written to directly since the last call; returns how many.
    pub fn finish_batch(&mut self) -> usize {
        self.direct.finish()
    }
}

struct FilterSlot(Arc<dyn PacketFilter>);

/// Offloads the uplink TAP is configured for (TUNSETOFFLOAD) — what it may hand us.
pub const UPLINK_OFFLOADS: OffloadSet = OffloadSet::ALL;

/// The switch: port table + firewall, both swappable at run time.
pub struct Pipeline {
    table: ArcSwap<PortTable>,
    filter: ArcSwap<FilterSlot>,
    update: Mutex<()>,
    next_id: AtomicU32,
    epoch: Instant,
    /// The poll threads in poll mode; see [`Pipeline::start_polling`].
    poll: arc_swap::ArcSwapOption<PollerPool>,
}

impl Pipeline {
    pub fn new(filter: Arc<dyn PacketFilter>) -> Pipeline {
        Pipeline {
            table: ArcSwap::from_pointee(PortTable::default()),
            filter: ArcSwap::from_pointee(FilterSlot(filter)),
            update: Mutex::new(()),
            next_id: AtomicU32::new(1),
            epoch: Instant::now(),
            poll: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Monotonic nanoseconds since the pipeline was created: the `now` handed to the filter.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Poll mode: `cfg.threads` shared threads serve the queues of every vNIC connected from
    /// now on, busy-polling while there is traffic (what OVS-DPDK's PMD threads and testpmd
    /// do): no wake-up or guest kick per burst, no lock contention between vNICs on one
    /// thread. Sessions connected before keep their event-driven worker. Call before vNICs
    /// are served; a second call replaces nothing and fails.
    pub fn start_polling(&self, cfg: &PollConfig) -> std::io::Result<()> {
        let pool = Arc::new(PollerPool::start(cfg)?);
        let prev = self
            .poll
            .compare_and_swap(&None::<Arc<PollerPool>>, Some(pool.clone()));
        if prev.is_some() {
            pool.stop();
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "poll threads already started",
            ));
        }
        Ok(())
    }

    /// Stops the poll threads (at shutdown, after the vNICs).
    pub fn stop_polling(&self) {
        if let Some(pool) = self.poll.swap(None) {
            pool.stop();
        }
    }

    /// The poll threads, in poll mode.
    pub fn poll_pool(&self) -> Option<Arc<PollerPool>> {
        self.poll.load_full()
    }

    /// A fresh vNIC id (never reused).
    pub fn alloc_port_id(&self) -> PortId {
        PortId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The current port table.
    pub fn table(&self) -> Arc<PortTable> {
        self.table.load_full()
    }

    /// Installs a new firewall; takes effect for the next frame each thread processes.
    pub fn set_filter(&self, filter: Arc<dyn PacketFilter>) {
        self.filter.store(Arc::new(FilterSlot(filter)));
    }

    fn update_table<T>(
        &self,
        f: impl FnOnce(&PortTable) -> Result<(PortTable, T), TableError>,
    ) -> Result<T, TableError> {
        let _g = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.table.load();
        let (next, out) = f(&cur)?;
        self.table.store(Arc::new(next));
        Ok(out)
    }

    /// Publishes a new vNIC.
    pub fn add_vnic(&self, port: Arc<VnicPort>) -> Result<(), TableError> {
        self.update_table(|t| Ok((t.with_vnic(port)?, ())))
    }

    /// Unpublishes a vNIC; frames already in flight towards it may still be queued to its
    /// inbox, which is dropped with the last reference.
    pub fn remove_vnic(&self, id: PortId) -> Option<Arc<VnicPort>> {
        self.update_table(|t| Ok(t.without_vnic(id))).ok().flatten()
    }

    pub fn set_uplink(&self, uplink: Option<Arc<dyn UplinkPort>>) {
        let _ = self.update_table(|t| Ok((t.with_uplink(uplink), ())));
    }

    /// A frame the guest behind `port` transmitted. `frame` is the backend's private copy
    /// (never guest memory), `hdr` its virtio-net header.
    pub fn from_vnic(
        &self,
        port: &VnicPort,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        now: u64,
        scratch: &mut Scratch,
    ) -> Disposition {
        self.single_frame()
            .take_vnic_frame(port, hdr, frame, None, now, scratch)
    }

    /// A frame read from the uplink TAP.
    pub fn from_uplink(
        &self,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        now: u64,
        scratch: &mut Scratch,
    ) -> Disposition {
        self.single_frame()
            .take_uplink_frame(hdr, frame, now, scratch)
    }

    /// Ends a batch of frames from `ingress` that all used timestamp `now` (bounded firewall
    /// housekeeping, e.g. connection expiry).
    pub fn end_batch(&self, ingress: PortRef, now: u64) {
        self.filter.load().0.end_batch(ingress, now);
    }

    /// The port table and firewall for one burst of frames (see [`Burst`]).
    pub fn burst(&self) -> Burst<'_> {
        Burst {
            table: self.table.load(),
            filter: self.filter.load(),
            filter_state: OnceCell::new(),
            _pipeline: std::marker::PhantomData,
        }
    }

    /// A [`Burst`] for one frame: the filter loads what it needs for that frame alone
    /// (a burst state would cost more to set up than it saves).
    fn single_frame(&self) -> Burst<'_> {
        Burst {
            filter_state: OnceCell::from(BurstState::NONE),
            ..self.burst()
        }
    }
}

/// The port table and the firewall as one burst of frames sees them: loaded once per burst,
/// not once per frame. A burst is short (a TX burst of 32 frames), so an update published
/// meanwhile applies from the next burst on, as it would for frames in flight.
pub struct Burst<'p> {
    table: arc_swap::Guard<Arc<PortTable>>,
    filter: arc_swap::Guard<Arc<FilterSlot>>,
    /// The filter's [`PacketFilter::burst_state`], loaded at the burst's first filtered frame
    /// (a burst that filters nothing does not load it).
    filter_state: OnceCell<BurstState>,
    _pipeline: std::marker::PhantomData<&'p Pipeline>,
}

impl Burst<'_> {
    /// Like [`Pipeline::from_vnic`] for frame `slot` of a burst whose frames all stay readable
    /// until [`Burst::flush_deferred`]: with a batched scratch, a frame for another vNIC is
    /// only decided here, and written at the flush together with the burst's other frames
    /// for that vNIC (one ring lock and translation per receiver and burst, not per frame).
    /// Its disposition is `Forwarded` once decided; a delivery drop is counted on the
    /// receiver at the flush, as always. The caller counts the burst's transmitted frames
    /// (`PortCounters::count_tx_many`, one update per burst).
    pub fn from_vnic_deferred(
        &self,
        port: &VnicPort,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        slot: u16,
        now: u64,
        scratch: &mut Scratch,
    ) -> Disposition {
        self.take_vnic_frame(port, hdr, frame, Some(slot), now, scratch)
    }

    fn take_vnic_frame(
        &self,
        port: &VnicPort,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        slot: Option<u16>,
        now: u64,
        scratch: &mut Scratch,
    ) -> Disposition {
        if slot.is_none() {
            port.counters.count_tx(frame.len());
        }
        let table = &*self.table;
        let ingress = PortRef::Vnic(port.id);
        let drop = |reason: DropReason| {
            port.counters.count_drop(reason);
            Disposition::Dropped(reason)
        };
        let Ok(offload) = hdr.validate(port.tx_offloads(), frame.len()) else {
            return drop(DropReason::BadVnetHeader);
        };
        // The parsed packet (~150 bytes) is borrowed where `parse` returned it, never moved:
        // every move was a memcpy whose wide loads read bytes just written by narrower
        // stores, which the CPU cannot forward, so each load waited for those stores to
        // retire. Three such copies were ~8% of a frame's time in process.
        let parsed = ParsedPacket::parse(frame);
        let Ok(pkt) = &parsed else {
            return drop(DropReason::Malformed);
        };
        if let Err(reason) = spoof::check(&port.bindings, pkt) {
            // The firewall logs these (rate-limited): a guest claiming another identity.
            self.filter.0.observe_drop(ingress, pkt, reason, now);
            return drop(reason);
        }
        let Ok(meta) = FrameMeta::new(offload, pkt) else {
            return drop(DropReason::GsoMismatch);
        };
        self.forward(
            table,
            ingress,
            &port.counters,
            pkt,
            (frame, slot),
            meta,
            now,
            scratch,
        )
    }

    /// Delivers the frames [`Burst::from_vnic_deferred`] decided on, grouped by receiver
    /// (each group in the order its frames were decided, so per-flow order holds). `frame`
    /// gives a slot's bytes; it must be the frame the slot was decided on.
    pub fn flush_deferred<'f>(&self, scratch: &mut Scratch, frame: impl Fn(u16) -> &'f [u8]) {
        if scratch.direct.deferred.is_empty() {
            return;
        }
        let table = &*self.table;
        let mut pending = std::mem::take(&mut scratch.direct.deferred);
        let mut frames: [&[u8]; DELIVERY_GROUP] = [&[]; DELIVERY_GROUP];
        let mut metas = [FrameMeta::default(); DELIVERY_GROUP];
        while let Some(first) = pending.first() {
            // Usually one receiver per burst: take the first frame's receiver and every later
            // frame for it, moving the others up, in order, for the next round.
            let port = first.port;
            let mut n = 0;
            let mut keep = 0;
            for k in 0..pending.len() {
                let d = pending[k];
                if d.port == port && n < DELIVERY_GROUP {
                    frames[n] = frame(d.slot);
                    metas[n] = d.meta;
                    n += 1;
                } else {
                    pending[keep] = d;
                    keep += 1;
                }
            }
            pending.truncate(keep);
            // A receiver removed since the decision has nobody to count the frames on.
            if let Some(p) = table.vnic(port) {
                p.deliver_burst(&frames[..n], &metas[..n], &mut scratch.direct);
            }
        }
        pending.clear();
        scratch.direct.deferred = pending;
    }

    fn take_uplink_frame(
        &self,
        hdr: &VirtioNetHdr,
        frame: &[u8],
        now: u64,
        scratch: &mut Scratch,
    ) -> Disposition {
        let table = &*self.table;
        let Some(uplink) = table.uplink().cloned() else {
            return Disposition::Dropped(DropReason::NoRoute);
        };
        let counters = uplink.counters();
        counters.count_tx(frame.len());
        let drop = |reason: DropReason| {
            counters.count_drop(reason);
            Disposition::Dropped(reason)
        };
        let Ok(offload) = hdr.validate(UPLINK_OFFLOADS, frame.len()) else {
            return drop(DropReason::BadVnetHeader);
        };
        let parsed = ParsedPacket::parse(frame);
        let Ok(pkt) = &parsed else {
            return drop(DropReason::Malformed);
        };
        let Ok(meta) = FrameMeta::new(offload, pkt) else {
            return drop(DropReason::GsoMismatch);
        };
        self.forward(
            table,
            PortRef::Uplink,
            counters,
            pkt,
            (frame, None),
            meta,
            now,
            scratch,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        table: &PortTable,
        ingress: PortRef,
        ingress_counters: &PortCounters,
        pkt: &ParsedPacket,
        (frame, slot): (&[u8], Option<u16>),
        meta: FrameMeta,
        now: u64,
        scratch: &mut Scratch,
    ) -> Disposition {
        let egress = match table.decide(ingress, pkt) {
            Ok(e) => e,
            Err(reason) => {
                ingress_counters.count_drop(reason);
                return Disposition::Dropped(reason);
            }
        };
        let ctx = FilterContext {
            ingress,
            egress: egress.port_ref(),
            now,
            burst: self
                .filter_state
                .get_or_init(|| self.filter.0.burst_state()),
        };
        let verdict = self.filter.0.filter(&ctx, pkt);
        match verdict {
            FilterVerdict::Forward => {
                let direct = &mut scratch.direct;
                let delivered = match (egress, slot) {
                    (Egress::Vnic(port), Some(slot)) if direct.is_enabled() => {
                        direct.defer(port, slot, meta);
                        Ok(())
                    }
                    _ => deliver(table, egress, frame, meta, direct),
                };
                match delivered {
                    Ok(()) => Disposition::Forwarded(egress),
                    // Counted on the egress port by `deliver`.
                    Err(reason) => Disposition::Dropped(reason),
                }
            }
            FilterVerdict::Drop(why) => {
                ingress_counters.count_drop(why.reason());
                Disposition::Dropped(why.reason())
            }
            FilterVerdict::Reject(kind) => {
                ingress_counters.count_drop(DropReason::PolicyRejected);
                let replied = build_reject(pkt, frame, kind, &mut scratch.reply).is_ok()
                    && deliver_back(table, ingress, &scratch.reply, &mut scratch.direct).is_ok();
                Disposition::Rejected { replied }
            }
        }
    }
}

/// Hands a frame to its egress port, counting delivery drops on that port.
fn deliver(
    table: &PortTable,
    egress: Egress,
    frame: &[u8],
    meta: FrameMeta,
    direct: &mut DirectBatch,
) -> Result<(), DropReason> {
    match egress {
        Egress::Vnic(id) => match table.vnic(id) {
            Some(port) => port.deliver_batched(frame, meta, direct),
            None => Err(DropReason::NoRoute),
        },
        Egress::Uplink => {
            let Some(uplink) = table.uplink() else {
                return Err(DropReason::NoRoute);
            };
            let hdr_len = meta
                .gso_layout
                .map(|l| l.l4 + l.tcp_header_len as u16)
                .unwrap_or(0);
            match uplink.transmit(&meta.offload.to_header(hdr_len), frame) {
                Ok(()) => {
                    uplink.counters().count_rx(frame.len());
                    Ok(())
                }
                Err(_) => {
                    uplink.counters().count_drop(DropReason::UplinkWriteFailed);
                    Err(DropReason::UplinkWriteFailed)
                }
            }
        }
    }
}

/// Sends a reject reply (complete checksums, no offloads) back out of the ingress port.
fn deliver_back(
    table: &PortTable,
    ingress: PortRef,
    reply: &[u8],
    direct: &mut DirectBatch,
) -> Result<(), DropReason> {
    let egress = match ingress {
        PortRef::Vnic(id) => Egress::Vnic(id),
        PortRef::Uplink => Egress::Uplink,
    };
    deliver(table, egress, reply, FrameMeta::plain(reply.len()), direct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{FailClosed, InsecureAllowAll, PolicyDrop, RejectKind};
    use crate::mac::MacAddr;
    use crate::port::VnicIdentity;
    use etherparse::PacketBuilder;
    use std::net::IpAddr;

    /// Records what the uplink was asked to send. A recording stand-in is used here because
    /// these tests are about the pipeline's decisions; the real TAP uplink is exercised in
    /// `tests/uplink_tap.rs` inside a private network namespace.
    #[derive(Default)]
    struct RecordingUplink {
        counters: PortCounters,
        sent: Mutex<Vec<(VirtioNetHdr, Vec<u8>)>>,
    }
    impl UplinkPort for RecordingUplink {
        fn transmit(&self, hdr: &VirtioNetHdr, frame: &[u8]) -> std::io::Result<()> {
            self.sent.lock().unwrap().push((*hdr, frame.to_vec()));
            Ok(())
        }
        fn counters(&self) -> &PortCounters {
            &self.counters
        }
        fn name(&self) -> &str {
            "rec"
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn vnic(p: &Pipeline, n: u8) -> Arc<VnicPort> {
        let ips: Vec<IpAddr> = vec![format!("10.0.0.{n}").parse().unwrap()];
        let port = Arc::new(
            VnicPort::new(
                p.alloc_port_id(),
                VnicIdentity {
                    name: format!("vm{n}"),
                    ..Default::default()
                },
                mac(n),
                &ips,
            )
            .unwrap(),
        );
        port.set_rx_ready(true);
        p.add_vnic(port.clone()).unwrap();
        port
    }

    fn tcp(from: u8, to_mac: MacAddr, to_ip: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(mac(from).0, to_mac.0)
            .ipv4([10, 0, 0, from], to_ip, 64)
            .tcp(33000, 80, 1, 1000)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        f
    }

    #[test]
    fn vm_to_vm_and_to_uplink() {
        let p = Pipeline::new(Arc::new(InsecureAllowAll));
        let up = Arc::new(RecordingUplink::default());
        p.set_uplink(Some(up.clone()));
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        let mut s = Scratch::new();
        let hdr = VirtioNetHdr::default();
        let f = tcp(1, mac(2), [10, 0, 0, 2]);
        assert_eq!(
            p.from_vnic(&a, &hdr, &f, 0, &mut s),
            Disposition::Forwarded(Egress::Vnic(b.id))
        );
        assert_eq!(b.inbox.pop().unwrap().data, f);
        let ext = tcp(1, mac(99), [192, 0, 2, 1]);
        assert_eq!(
            p.from_vnic(&a, &hdr, &ext, 0, &mut s),
            Disposition::Forwarded(Egress::Uplink)
        );
        assert_eq!(up.sent.lock().unwrap()[0].1, ext);
        assert_eq!(up.counters.snapshot().rx_packets, 1);
        assert_eq!(a.counters.snapshot().tx_packets, 2);
        // And back from the uplink.
        let back = tcp(99, mac(1), [10, 0, 0, 1]);
        let mut back_spoofed_src = back.clone();
        back_spoofed_src[29] = 99; // from the network any source IP is fine
        assert_eq!(
            p.from_uplink(&hdr, &back_spoofed_src, 0, &mut s),
            Disposition::Forwarded(Egress::Vnic(a.id))
        );
    }

    #[test]
    fn deferred_frames_are_delivered_at_the_flush_in_order_per_receiver() {
        let p = Pipeline::new(Arc::new(InsecureAllowAll));
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        let c = vnic(&p, 3);
        let d = vnic(&p, 4);
        let mut s = Scratch::batched();
        let hdr = VirtioNetHdr::default();
        let mut burst = Vec::new();
        for (k, to) in [2u8, 3, 2, 4, 2].into_iter().enumerate() {
            let mut f = tcp(1, mac(to), [10, 0, 0, to]);
            f[38] = k as u8; // sequence number: tells the frames apart
            burst.push(f);
        }
        let view = p.burst();
        for (slot, f) in burst.iter().enumerate() {
            assert!(matches!(
                view.from_vnic_deferred(&a, &hdr, f, slot as u16, 0, &mut s),
                Disposition::Forwarded(Egress::Vnic(_))
            ));
        }
        // Decided, not delivered yet.
        assert!(b.inbox.is_empty() && c.inbox.is_empty() && d.inbox.is_empty());
        // A receiver removed between decision and flush (a flush under a newer table than the
        // decision's; a burst's own flush uses its table): its frame goes nowhere.
        drop(view);
        p.remove_vnic(d.id);
        p.burst()
            .flush_deferred(&mut s, |slot| &burst[slot as usize]);
        let seqs = |port: &VnicPort| {
            std::iter::from_fn(|| port.inbox.pop())
                .map(|f| f.data[38])
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&b), [0, 2, 4]);
        assert_eq!(seqs(&c), [1]);
        assert!(d.inbox.is_empty());
        // The burst's owner counts what it sent, once per burst.
        assert_eq!(a.counters.snapshot().tx_packets, 0);
        // The scratch is ready for the next burst.
        p.burst()
            .flush_deferred(&mut s, |_| unreachable!("nothing deferred"));
        s.finish_batch();
    }

    /// Counts [`PacketFilter::burst_state`] loads and checks each frame gets its burst's.
    #[derive(Default)]
    struct BurstCounting {
        loads: AtomicU32,
    }
    impl PacketFilter for BurstCounting {
        fn burst_state(&self) -> BurstState {
            let n = self.loads.fetch_add(1, Ordering::Relaxed) + 1;
            BurstState::new(Box::new(n))
        }
        fn filter(&self, ctx: &FilterContext, _pkt: &ParsedPacket) -> FilterVerdict {
            match ctx.burst.get::<u32>() {
                // The state of the burst being filtered: the latest one loaded.
                Some(&n) if n == self.loads.load(Ordering::Relaxed) => FilterVerdict::Forward,
                _ => FilterVerdict::Drop(PolicyDrop::Denied),
            }
        }
    }

    #[test]
    fn a_burst_loads_the_filters_burst_state_once_and_only_if_it_filters() {
        let filter = Arc::new(BurstCounting::default());
        let p = Pipeline::new(filter.clone());
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        let mut s = Scratch::batched();
        let hdr = VirtioNetHdr::default();
        let frame = tcp(1, mac(2), [10, 0, 0, 2]);
        let mut spoofed = frame.clone();
        spoofed[26..30].copy_from_slice(&[10, 0, 0, 3]);
        for burst in 1..=2 {
            let view = p.burst();
            for slot in 0..4 {
                assert_eq!(
                    view.from_vnic_deferred(&a, &hdr, &frame, slot, 0, &mut s),
                    Disposition::Forwarded(Egress::Vnic(b.id))
                );
            }
            view.flush_deferred(&mut s, |_| &frame);
            assert_eq!(filter.loads.load(Ordering::Relaxed), burst);
        }
        // A burst whose frames never reach the filter does not load it.
        let view = p.burst();
        assert_eq!(
            view.from_vnic_deferred(&a, &hdr, &spoofed, 0, 0, &mut s),
            Disposition::Dropped(DropReason::SpoofedSourceIp)
        );
        assert_eq!(filter.loads.load(Ordering::Relaxed), 2);
        drop(view);
        // A lone frame does not load one either: the filter loads its own.
        assert_eq!(
            p.from_vnic(&a, &hdr, &frame, 0, &mut s),
            Disposition::Dropped(DropReason::PolicyDenied)
        );
        assert_eq!(filter.loads.load(Ordering::Relaxed), 2);
        s.finish_batch();
    }

    #[test]
    fn spoofed_frames_are_counted_on_the_sender() {
        let p = Pipeline::new(Arc::new(InsecureAllowAll));
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        let mut s = Scratch::new();
        let mut f = tcp(1, mac(2), [10, 0, 0, 2]);
        f[26..30].copy_from_slice(&[10, 0, 0, 3]); // source IP not bound to vNIC 1
        assert_eq!(
            p.from_vnic(&a, &VirtioNetHdr::default(), &f, 0, &mut s),
            Disposition::Dropped(DropReason::SpoofedSourceIp)
        );
        assert_eq!(a.counters.drops(DropReason::SpoofedSourceIp), 1);
        assert!(b.inbox.is_empty());
    }

    #[test]
    fn fail_closed_forwards_nothing_and_filter_swaps_live() {
        let p = Pipeline::new(Arc::new(FailClosed));
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        let mut s = Scratch::new();
        let f = tcp(1, mac(2), [10, 0, 0, 2]);
        let h = VirtioNetHdr::default();
        assert_eq!(
            p.from_vnic(&a, &h, &f, 0, &mut s),
            Disposition::Dropped(DropReason::PolicyNotRealized)
        );
        assert!(b.inbox.is_empty());
        p.set_filter(Arc::new(InsecureAllowAll));
        assert!(matches!(
            p.from_vnic(&a, &h, &f, 0, &mut s),
            Disposition::Forwarded(_)
        ));
    }

    struct RejectPort80;
    impl PacketFilter for RejectPort80 {
        fn filter(&self, ctx: &FilterContext, pkt: &ParsedPacket) -> FilterVerdict {
            assert_ne!(ctx.ingress, ctx.egress);
            match pkt.tcp() {
                Some(t) if t.dst_port == 80 => FilterVerdict::Reject(RejectKind::TcpRst),
                Some(_) => FilterVerdict::Drop(PolicyDrop::Denied),
                None => FilterVerdict::Forward,
            }
        }
    }

    #[test]
    fn reject_sends_rst_to_the_sender() {
        let p = Pipeline::new(Arc::new(RejectPort80));
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        let mut s = Scratch::new();
        let f = tcp(1, mac(2), [10, 0, 0, 2]);
        assert_eq!(
            p.from_vnic(&a, &VirtioNetHdr::default(), &f, 0, &mut s),
            Disposition::Rejected { replied: true }
        );
        assert!(b.inbox.is_empty());
        let reply = a.inbox.pop().expect("RST queued to the sender");
        let rp = ParsedPacket::parse(&reply.data).unwrap();
        assert!(rp.tcp().unwrap().flags.rst());
        assert_eq!(rp.eth.dst, mac(1));
        assert_eq!(a.counters.drops(DropReason::PolicyRejected), 1);
    }

    #[test]
    fn delivery_to_a_disconnected_vnic_is_counted_there() {
        let p = Pipeline::new(Arc::new(InsecureAllowAll));
        let a = vnic(&p, 1);
        let b = vnic(&p, 2);
        b.set_rx_ready(false);
        let f = tcp(1, mac(2), [10, 0, 0, 2]);
        assert_eq!(
            p.from_vnic(&a, &VirtioNetHdr::default(), &f, 0, &mut Scratch::new()),
            Disposition::Dropped(DropReason::PortDown)
        );
        assert_eq!(b.counters.drops(DropReason::PortDown), 1);
        assert_eq!(a.counters.snapshot().total_drops(), 0);
    }

    #[test]
    fn offloads_the_sender_did_not_negotiate_are_refused() {
        let p = Pipeline::new(Arc::new(InsecureAllowAll));
        let a = vnic(&p, 1);
        let _b = vnic(&p, 2);
        let f = tcp(1, mac(2), [10, 0, 0, 2]);
        let h = VirtioNetHdr {
            flags: crate::net_hdr::FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            p.from_vnic(&a, &h, &f, 0, &mut Scratch::new()),
            Disposition::Dropped(DropReason::BadVnetHeader)
        );
    }
}

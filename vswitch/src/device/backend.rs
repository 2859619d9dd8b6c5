//! `VhostUserBackend` for one vNIC session.
//!
//! One [`VnicBackend`] lives for one frontend connection (a reconnect gets a fresh one: the
//! crate's handler refuses a second SET_OWNER, and fresh vrings/memory avoid stale state). The
//! long-lived port state ([`VnicPort`]) is shared across sessions.
//!
//! Threads and queue ownership: the crate runs one message thread and, as configured by
//! `queues_per_thread`, one worker thread per vNIC that owns both virtqueues. The worker
//! handles TX kicks, RX kicks (guest posted buffers), the inbox doorbell (frames from other
//! ports) and its own TX resume doorbell. Each queue's state sits behind its own lock (the
//! `&self` trait, not the `Mut` wrapper that serialises every event behind one lock), so
//! moving the queues to separate workers is a one-line change.
//!
//! The RX ring has two writers, one at a time under the RX lock: the vNIC's own worker
//! (draining the inbox) and, for the fast path, another vNIC's TX worker writing a frame
//! straight into it ([`RxSink`]) when nothing waits in the inbox and the ring has room. That
//! saves a copy, a lock and a thread wake-up per frame; the sender signals each receiver once
//! per TX batch. Everything that has to wait stays with the owner: the backlog, arming the
//! RX notification, segmentation.
//!
//! Poll mode ([`super::poller`]): the queues are served by shared poll threads instead; the
//! worker above only forwards events to them.
//!
//! Ring access goes through [`super::ring`]: guest memory is mapped once per memory table and
//! each ring's areas once per batch, and the used index, a cache line the guest keeps reading,
//! is stored once per burst of 32 chains (TX) or per sender burst (direct RX writes, published
//! by [`RxSink::publish`]), not per chain.
//!
//! Batching and fairness: a TX kick drains up to [`TX_BUDGET`] chains, returns them to the
//! guest with one used-ring update check and at most one notification (EVENT_IDX decides),
//! then, if the guest has posted more, rings the TX resume doorbell and returns to the event
//! loop. A guest flooding its TX ring therefore cannot keep its worker from draining its
//! inbox into its RX ring.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringMutex, VringT};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::poller::Attached;
use super::queues::{copy_tx_chain, write_rx_frame, Cursor, RxError, RxScratch, TxBuffer, TxSpan};
use super::ring::{GuestMap, Intent, RingError, SplitRing};
use super::{MAX_QUEUE_SIZE, NUM_QUEUES, OFFERED_FEATURES, RX_QUEUE, TX_QUEUE};
use crate::counters::DropReason;
use crate::net_hdr::{vnet_hdr_len, OffloadSet, VirtioNetHdr};
use crate::offload::{plan_rx, plan_rx_unchanged, segment_tcp, FrameMeta, RxAction};
use crate::pipeline::{Pipeline, Scratch};
use crate::port::{DirectWrite, PortRef, RxSink, VnicPort};

/// Guest memory as the crate maps it.
pub type GuestMem = GuestMemoryMmap<()>;
/// Swappable guest memory shared with the crate's handler (SET_MEM_TABLE / ADD_MEM_REG
/// replace its content).
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;
pub type Vring = VringMutex<GuestMemAtomic>;

/// Epoll token of the inbox doorbell (tokens `0..=NUM_QUEUES` belong to the crate).
pub const INBOX_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Epoll token of the TX resume doorbell: a TX batch stopped at [`TX_BUDGET`] with more
/// chains posted.
pub const TX_RESUME_EVENT: u16 = INBOX_EVENT + 1;
/// Most TX chains handled per event before the worker returns to its event loop. Large
/// enough to amortise the per-batch costs (notification check, firewall housekeeping), small
/// enough that the inbox (1024 frames) is drained between two TX batches.
pub const TX_BUDGET: usize = 256;
/// TX chains taken from the avail ring per read of its index.
const TX_BURST: usize = 32;

struct TxState {
    buf: TxBuffer,
    scratch: Scratch,
    /// Whether the guest was last asked to kick (TX notification enabled). A poll thread
    /// turns it off once, not on every empty round: without EVENT_IDX that is a write to
    /// the used ring's flags, a cache line the guest's core reads.
    kicks_on: bool,
    map: GuestMap,
    /// `next_used` when we last decided on notifying the guest.
    used_checked: Wrapping<u16>,
}

struct RxState {
    scratch: RxScratch,
    segment: Vec<u8>,
    map: GuestMap,
    /// Where the last RX batch left the ring, with the guest's avail index as read then.
    cursor: Option<Cursor>,
    used_checked: Wrapping<u16>,
}

pub(crate) struct Session {
    port: Arc<VnicPort>,
    pipeline: Arc<Pipeline>,
    mem: GuestMemAtomic,
    /// Bumped after each memory-table update (`update_memory`), so the queues' [`GuestMap`]s
    /// know when to re-map without loading the shared snapshot every batch.
    mem_generation: AtomicU64,
    tx: Mutex<TxState>,
    rx: Mutex<RxState>,
    /// This session's RX vring, captured from the first event the crate dispatches (the crate
    /// has no accessor); other workers write into it through [`RxSink`].
    rx_vring: OnceLock<Vring>,
    /// Rung by the worker itself when a TX batch ran out of budget (see [`TX_BUDGET`]).
    tx_resume: EventFd,
    /// Set when the connection ended: late events from the old worker do nothing.
    closed: AtomicBool,
    /// Poll mode: the session's vrings were handed to the poll threads.
    attached: AtomicBool,
    exit_notifiers: Mutex<Vec<EventNotifier>>,
    /// Raw fds of the exit-event consumers handed to the crate, which registers them in the
    /// worker's epoll with `into_raw_fd()` and never closes them (one fd leaked per session in
    /// vhost-user-backend 0.24). We close them once the session is over.
    exit_consumer_fds: Mutex<Vec<RawFd>>,
}

impl Session {
    /// `queue`'s ring over `map`, brought up to date with the current memory table first.
    fn ring<'m>(&self, map: &'m mut GuestMap, queue: &Queue) -> Result<SplitRing<'m>, RingError> {
        map.refresh(&self.mem, self.mem_generation.load(Ordering::Acquire));
        SplitRing::new(map, queue)
    }
}

/// The vhost-user backend of one vNIC for one frontend session.
#[derive(Clone)]
pub struct VnicBackend(Arc<Session>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VnicBackend {
    pub fn new(port: Arc<VnicPort>, pipeline: Arc<Pipeline>) -> io::Result<VnicBackend> {
        Ok(VnicBackend(Arc::new(Session {
            port,
            pipeline,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            mem_generation: AtomicU64::new(0),
            tx: Mutex::new(TxState {
                buf: TxBuffer::for_frames(TX_BURST),
                scratch: Scratch::batched(),
                kicks_on: true,
                map: GuestMap::new(),
                used_checked: Wrapping(0),
            }),
            rx: Mutex::new(RxState {
                scratch: RxScratch::default(),
                segment: Vec::with_capacity(2048),
                map: GuestMap::new(),
                cursor: None,
                used_checked: Wrapping(0),
            }),
            rx_vring: OnceLock::new(),
            tx_resume: EventFd::new(EFD_NONBLOCK)?,
            closed: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            exit_notifiers: Mutex::new(Vec::new()),
            exit_consumer_fds: Mutex::new(Vec::new()),
        })))
    }

    /// The TX resume doorbell to register with the worker's epoll as [`TX_RESUME_EVENT`].
    pub fn tx_resume_fd(&self) -> RawFd {
        self.0.tx_resume.as_raw_fd()
    }

    /// The guest memory handle to give `VhostUserDaemon::new`.
    pub fn memory(&self) -> GuestMemAtomic {
        self.0.mem.clone()
    }

    pub fn port(&self) -> &Arc<VnicPort> {
        &self.0.port
    }

    /// Ends the session: waits for any in-progress queue processing, makes later events
    /// no-ops, stops the worker threads, and marks the port disconnected.
    pub fn close(&self) {
        let s = &self.0;
        {
            let _tx = lock(&s.tx);
            let _rx = lock(&s.rx);
            s.closed.store(true, Ordering::Release);
        }
        for n in lock(&s.exit_notifiers).iter() {
            let _ = n.notify();
        }
        // The workers only wait for readiness of the exit eventfd, which the notifier fds keep
        // alive, so closing the consumer fds now cannot make them miss the exit. `take` makes
        // sure each fd number is closed once, never a reused one.
        for fd in std::mem::take(&mut *lock(&s.exit_consumer_fds)) {
            // SAFETY: `fd` is the consumer fd we created in `exit_event`; the crate converted
            // it with `into_raw_fd()` and never closes it, and nobody else knows its number.
            unsafe { libc::close(fd) };
        }
        if let Some(pool) = s.pipeline.poll_pool() {
            // Its poll thread drops the session at its next round.
            pool.wake(s.port.id);
        }
        s.port.inbox.set_polled(false);
        s.port.set_rx_ready(false);
        // Breaks the port -> session reference and stops direct writes into this session.
        s.port.set_rx_sink(None);
        s.port.set_acked_features(0);
        let dropped = s.port.inbox.clear();
        for _ in 0..dropped {
            s.port.counters.count_drop(DropReason::PortDown);
        }
    }

    fn config_space(&self) -> [u8; 10] {
        // struct virtio_net_config { u8 mac[6]; le16 status; le16 max_virtqueue_pairs; }
        let mut c = [0u8; 10];
        c[..6].copy_from_slice(&self.0.port.mac().octets());
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Processes up to [`TX_BUDGET`] available TX chains, then signals the guest and every
    /// receiver written to directly once each (if EVENT_IDX says so). Rings the TX resume
    /// doorbell if chains are left. With `polling`, guest notifications stay off and nothing
    /// is re-queued: the poll thread ([`super::poller`]) comes back by itself. Returns
    /// whether any chain was consumed.
    fn process_tx(&self, vring: &Vring, polling: bool) -> bool {
        let s = &self.0;
        let mut tx = lock(&s.tx);
        if s.closed.load(Ordering::Acquire) {
            return false;
        }
        let hdr_len = vnet_hdr_len(s.port.acked_features());
        // Read the clock only once there is a chain: a poll thread's empty rounds would
        // spend a tenth of their time in clock_gettime.
        let mut batch_now = None;
        let mut vstate = vring.get_mut();
        if !vstate.get_queue().ready() || !vstate.is_enabled() {
            return false;
        }
        let TxState {
            buf,
            scratch,
            kicks_on,
            map,
            used_checked,
        } = &mut *tx;
        // A ring outside guest memory or misaligned cannot carry anything; the guest broke
        // its own queue.
        let Ok(ring) = s.ring(map, vstate.get_queue()) else {
            return false;
        };
        let mut cursor = Cursor::of(vstate.get_queue());
        let used_before = cursor.next_used;
        let mut budget = TX_BUDGET;
        let mut broken = false;
        loop {
            if *kicks_on {
                ring.disable_notification();
                *kicks_on = false;
            }
            while budget > 0 {
                // One read of the guest's avail index per burst, not per chain: that index
                // sits on a cache line the guest's core keeps writing, so each read misses.
                let Some(pending) = ring.pending(cursor.next_avail) else {
                    // More than a ring ahead: a broken driver. Take nothing, and do not spin
                    // on it either; a device reset sets the ring up again.
                    broken = true;
                    break;
                };
                let n = (pending as usize).min(budget).min(TX_BURST);
                if n == 0 {
                    break;
                }
                budget -= n;
                let mut heads = [0u16; TX_BURST];
                for (k, head) in heads[..n].iter_mut().enumerate() {
                    *head = ring.avail_head(cursor.next_avail + Wrapping(k as u16));
                }
                cursor.next_avail += Wrapping(n as u16);
                prefetch_burst(&ring, &heads[..n]);
                // The used elements this burst will write: 8 per cache line.
                for k in (0..n).step_by(8) {
                    ring.prefetch_used(cursor.next_used + Wrapping(k as u16));
                }
                let now = *batch_now.get_or_insert_with(|| s.pipeline.now());
                // Stage 1: copy the burst's chains out of guest memory and give them back
                // (TX buffers are device-readable: the used length is 0 either way; a head
                // beyond the ring cannot be returned, copy_tx_chain counted it).
                buf.clear();
                let mut spans = [None::<TxSpan>; TX_BURST];
                for (span, &head) in spans.iter_mut().zip(&heads[..n]) {
                    match copy_tx_chain(&ring, head, buf) {
                        Ok(c) if c.len() < hdr_len + 14 => {
                            s.port.counters.count_drop(DropReason::ShortFrame)
                        }
                        Ok(c) => *span = Some(c),
                        Err(reason) => s.port.counters.count_drop(reason),
                    }
                    cursor.add_used(&ring, head, 0);
                }
                ring.publish_used(cursor.next_used);
                // Stage 2: decide on every frame; frames for other vNICs wait for stage 3.
                let burst = s.pipeline.burst();
                let (mut sent, mut sent_bytes) = (0, 0);
                for (slot, span) in spans[..n].iter().enumerate() {
                    let Some(span) = span else { continue };
                    let bytes = buf.chain(*span);
                    sent += 1;
                    sent_bytes += bytes.len() - hdr_len;
                    // parse() cannot fail: the chain is at least hdr_len >= 10 bytes.
                    let hdr = VirtioNetHdr::parse(&bytes[..hdr_len]).unwrap_or_default();
                    burst.from_vnic_deferred(
                        &s.port,
                        &hdr,
                        &bytes[hdr_len..],
                        slot as u16,
                        now,
                        scratch,
                    );
                }
                s.port.counters.count_tx_many(sent, sent_bytes);
                // Stage 3: write them, one group per receiver.
                let frame = |slot: u16| match spans.get(slot as usize).copied().flatten() {
                    Some(span) => buf.chain(span).get(hdr_len..).unwrap_or(&[]),
                    None => &[],
                };
                burst.flush_deferred(scratch, frame);
                // Receivers written to directly see their frames now, once per burst; they are
                // signalled once per batch.
                scratch.publish_batch();
            }
            cursor.store(vstate.get_queue_mut());
            if polling || broken {
                break;
            }
            if budget == 0 {
                // Out of budget: notifications stay off, the resume doorbell brings us back
                // after the worker's other events (inbox, RX kick) had their turn.
                if ring.pending(cursor.next_avail).unwrap_or(0) > 0 {
                    let _ = s.tx_resume.write(1);
                    break;
                }
            }
            *kicks_on = true;
            if ring.enable_notification(cursor.next_avail) {
                if budget > 0 {
                    continue; // more arrived while notifications were off
                }
                let _ = s.tx_resume.write(1);
            }
            break;
        }
        let moved = cursor.next_used != used_before;
        scratch.finish_batch();
        if let (true, Some(now)) = (moved, batch_now) {
            s.pipeline.end_batch(PortRef::Vnic(s.port.id), now);
        }
        if moved && ring.needs_notification(cursor.next_used, used_checked) {
            if let Err(e) = vstate.signal_used_queue() {
                debug!(port = %s.port.name(), "TX call notify failed: {e}");
            }
        }
        moved
    }

    /// Whether the frontend connection of this session ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// One poll-thread round over this session: a TX batch with guest notifications left
    /// off, and the backlog if frames wait. Returns whether anything moved.
    pub(crate) fn poll_once(&self, rx: &Vring, tx: &Vring) -> bool {
        let mut worked = self.process_tx(tx, true);
        // A port whose RX ring is not running yet is flushed until it is (that marks it
        // ready, see `flush_rx`). A starved guest is not asked to kick: the next round
        // looks again.
        if !self.0.port.inbox.is_empty() || !self.0.port.is_rx_ready() {
            worked |= self.flush_rx(rx, false);
        }
        worked
    }

    /// Poll mode: whether the awake poll thread consumes the inbox (see
    /// [`crate::inbox::Inbox::set_polled`]).
    pub(crate) fn set_polled(&self, polled: bool) {
        self.0.port.inbox.set_polled(polled && !self.is_closed());
    }

    /// Before its poll thread sleeps: re-arms the guest's TX notification (taking what was
    /// posted meanwhile) and delivers the backlog, which arms the RX notification if the
    /// guest has no buffers. Returns whether anything moved, i.e. whether to keep polling.
    pub(crate) fn arm(&self, rx: &Vring, tx: &Vring) -> bool {
        self.set_polled(false);
        let mut worked = self.process_tx(tx, false);
        if !self.0.port.inbox.is_empty() {
            worked |= self.flush_rx(rx, true);
        }
        worked
    }

    /// Writes waiting inbox frames into the RX ring until it is empty or out of buffers.
    /// Returns whether anything reached the used ring.
    fn flush_rx(&self, vring: &Vring, arm_if_starved: bool) -> bool {
        let s = &self.0;
        let mut rx = lock(&s.rx);
        if s.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut vstate = vring.get_mut();
        if !vstate.get_queue().ready() || !vstate.is_enabled() {
            return false;
        }
        let RxState {
            scratch,
            segment,
            map,
            cursor: saved,
            used_checked,
        } = &mut *rx;
        let Ok(ring) = s.ring(map, vstate.get_queue()) else {
            return false;
        };
        if !s.port.is_rx_ready() {
            s.port.set_rx_ready(true);
            debug!(port = %s.port.name(), "RX ring running");
        }
        let features = s.port.acked_features();
        let hdr_len = vnet_hdr_len(features);
        let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let offloads = OffloadSet::guest_rx(features);
        let mut cursor = Cursor::resume(vstate.get_queue(), *saved);
        // Signal if anything reached the used ring, delivered frames and returned bad chains
        // alike.
        let used_before = cursor.next_used;

        while let Some(mut frame) = s.port.inbox.pop() {
            let action = plan_rx(&mut frame.data, &frame.meta, offloads);
            let result = match action {
                Err(_) => Err(DropReason::SegmentationFailed),
                Ok(RxAction::Deliver(hdr)) => {
                    match write_rx_frame(
                        &ring,
                        &mut cursor,
                        hdr,
                        hdr_len,
                        &frame.data,
                        mergeable,
                        scratch,
                    ) {
                        Ok(_) => {
                            s.port.counters.count_rx(frame.data.len());
                            Ok(())
                        }
                        Err(RxError::NoBuffers) => {
                            s.port.inbox.unpop(frame);
                            if arm_if_starved && ring.enable_notification(cursor.next_avail) {
                                continue; // buffers arrived meanwhile
                            }
                            break;
                        }
                        Err(e) => Err(e.reason()),
                    }
                }
                Ok(RxAction::Segment { mss, layout }) => {
                    // Each segment needs at least one chain: wait until that many are posted,
                    // unless the ring could never hold them all.
                    let payload = (frame.meta.l3_end as usize)
                        .saturating_sub(layout.l4 as usize + layout.tcp_header_len as usize);
                    let needed = payload.div_ceil(mss as usize).max(1);
                    let avail = cursor.available(&ring) as usize;
                    if avail < needed && needed <= ring.size() as usize {
                        s.port.inbox.unpop(frame);
                        if arm_if_starved && ring.enable_notification(cursor.next_avail) {
                            continue;
                        }
                        break;
                    }
                    let mut failure = None;
                    let r = segment_tcp(
                        &frame.data,
                        &layout,
                        frame.meta.l3_end as usize,
                        mss,
                        segment,
                        |seg| match write_rx_frame(
                            &ring,
                            &mut cursor,
                            VirtioNetHdr::default(),
                            hdr_len,
                            seg,
                            mergeable,
                            scratch,
                        ) {
                            Ok(_) => {
                                s.port.counters.count_rx(seg.len());
                                true
                            }
                            Err(e) => {
                                failure = Some(e.reason());
                                false
                            }
                        },
                    );
                    match (r, failure) {
                        (Err(_), _) => Err(DropReason::SegmentationFailed),
                        (Ok(_), Some(reason)) => Err(reason),
                        (Ok(_), None) => Ok(()),
                    }
                }
            };
            if let Err(reason) = result {
                s.port.counters.count_drop(reason);
            }
            s.port.inbox.recycle(frame.data);
        }
        if s.port.inbox.is_empty() {
            // Nothing waits for buffers: the guest need not kick us when it posts some (a
            // kick per refill is a wake-up per burst for nothing; direct writes and the next
            // flush look at the ring anyway). With EVENT_IDX this is a no-op: the guest kicks
            // at most once more after the last time we armed it.
            ring.disable_notification();
        }
        ring.publish_used(cursor.next_used);
        cursor.store(vstate.get_queue_mut());
        *saved = Some(cursor);
        let moved = cursor.next_used != used_before;
        if moved && ring.needs_notification(cursor.next_used, used_checked) {
            if let Err(e) = vstate.signal_used_queue() {
                debug!(port = %s.port.name(), "RX call notify failed: {e}");
            }
        }
        moved
    }
}

/// Starts loading a TX burst's descriptors, then its first buffers, before the frames are
/// copied one by one: the guest's core wrote them last, so each is a cache miss, and issued
/// together the misses overlap instead of queuing behind each other (what DPDK's vhost
/// library does per burst).
fn prefetch_burst(ring: &SplitRing<'_>, heads: &[u16]) {
    for &head in heads {
        ring.prefetch_desc(head);
    }
    for &head in heads {
        ring.prefetch_buffer(head, Intent::Read);
    }
}

impl RxSink for Session {
    fn try_write_burst(&self, frames: &[&[u8]], metas: &[FrameMeta], results: &mut [DirectWrite]) {
        results.fill(DirectWrite::Unavailable);
        // Never wait for the owner: if its worker is draining the inbox, queue behind it.
        let Ok(mut rx) = self.rx.try_lock() else {
            return;
        };
        // Frames already waiting go first (per-sender order), and a closed session takes
        // nothing directly.
        if self.closed.load(Ordering::Acquire) || !self.port.inbox.is_empty() {
            return;
        }
        let Some(vring) = self.rx_vring.get() else {
            return;
        };
        let features = self.port.acked_features();
        let guest_rx = OffloadSet::guest_rx(features);
        let mut vstate = vring.get_mut();
        if !vstate.get_queue().ready() || !vstate.is_enabled() {
            return;
        }
        let RxState {
            scratch,
            map,
            cursor: saved,
            used_checked,
            ..
        } = &mut *rx;
        let Ok(ring) = self.ring(map, vstate.get_queue()) else {
            return;
        };
        let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let hdr_len = vnet_hdr_len(features);
        let mut cursor = Cursor::resume(vstate.get_queue(), *saved);
        let used_before = cursor.next_used;
        if frames.len() > 1 {
            cursor.prefetch_burst(&ring, frames.len());
        }
        let (mut written, mut bytes) = (0, 0);
        for ((frame, meta), result) in frames.iter().zip(metas).zip(results.iter_mut()) {
            // A frame that needs segmenting or a checksum goes through the owner, and the
            // rest of the burst behind it.
            let Some(hdr) = plan_rx_unchanged(meta, guest_rx) else {
                break;
            };
            match write_rx_frame(&ring, &mut cursor, hdr, hdr_len, frame, mergeable, scratch) {
                Ok(_) => {
                    written += 1;
                    bytes += frame.len();
                    *result = DirectWrite::Written;
                }
                // The owner arms the RX notification and keeps the frame in its backlog.
                Err(RxError::NoBuffers) => break,
                Err(e) => *result = DirectWrite::Dropped(e.reason()),
            }
        }
        if written > 0 {
            self.port.counters.count_rx_many(written, bytes);
        }
        // Published once per sender burst (`publish`), the guest signalled once per sender
        // batch (`notify`): the used index is a cache line the guest keeps reading, so each
        // store costs us a cross-core miss. Chains refused while nothing was written are
        // returned (empty) right away, as the sender only publishes receivers it wrote to.
        cursor.store(vstate.get_queue_mut());
        *saved = Some(cursor);
        if written == 0 && cursor.next_used != used_before {
            ring.publish_used(cursor.next_used);
            if ring.needs_notification(cursor.next_used, used_checked) {
                let _ = vstate.signal_used_queue();
            }
        }
    }

    fn publish(&self) {
        let Some(vring) = self.rx_vring.get() else {
            return;
        };
        let rx = lock(&self.rx);
        let vstate = vring.get_mut();
        // The map was refreshed by the write being published.
        if let Ok(ring) = SplitRing::new(&rx.map, vstate.get_queue()) {
            ring.publish_used(Wrapping(vstate.get_queue().next_used()));
        }
    }

    fn notify(&self) {
        let Some(vring) = self.rx_vring.get() else {
            return;
        };
        let mut rx = lock(&self.rx);
        let vstate = vring.get_mut();
        let RxState {
            map, used_checked, ..
        } = &mut *rx;
        let Ok(ring) = self.ring(map, vstate.get_queue()) else {
            return;
        };
        let next_used = Wrapping(vstate.get_queue().next_used());
        ring.publish_used(next_used);
        if ring.needs_notification(next_used, used_checked) {
            if let Err(e) = vstate.signal_used_queue() {
                debug!(port = %self.port.name(), "RX call notify failed: {e}");
            }
        }
    }
}

impl VhostUserBackend for VnicBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        debug!(port = %self.0.port.name(), "acked features {features:#x}");
        self.0.port.set_acked_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        lock(&self.0.rx).cursor = None;
        let p = &self.0.port;
        p.set_rx_ready(false);
        p.set_acked_features(0);
        p.inbox.clear();
    }

    fn set_event_idx(&self, enabled: bool) {
        // The crate already switched the vrings at SET_FEATURES; nothing else depends on it.
        debug!(port = %self.0.port.name(), "event idx {enabled}");
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.config_space();
        let start = (offset as usize).min(cfg.len());
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // The MAC is the port's binding; a guest cannot change it (no CTRL_MAC_ADDR either).
        Ok(())
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // Same GuestMemoryAtomic we handed the daemon: its content was already replaced. The
        // queues re-map at their next batch; until then they use the old table, which their
        // GuestMap keeps mapped.
        self.0.mem_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        let keep = notifier.try_clone().ok()?;
        lock(&self.0.exit_notifiers).push(keep);
        lock(&self.0.exit_consumer_fds).push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index == RX_QUEUE as u32 {
            // GET_VRING_BASE: the frontend stops the ring (guest reset, migration, shutdown).
            let mut rx = lock(&self.0.rx);
            // The ring is set up anew before it restarts: forget what the guest had posted.
            rx.cursor = None;
            self.0.port.set_rx_ready(false);
            let dropped = self.0.port.inbox.clear();
            for _ in 0..dropped {
                self.0.port.counters.count_drop(DropReason::PortDown);
            }
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!(port = %self.0.port.name(), "unexpected event set {evset:?} for {device_event}");
        }
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE as usize), vrings.get(TX_QUEUE as usize))
        else {
            return Ok(());
        };
        if self.0.rx_vring.get().is_none() && self.0.rx_vring.set(rx.clone()).is_ok() {
            // From now on other workers may write into our RX ring (see the module doc).
            let sink: Arc<dyn RxSink> = self.0.clone();
            if !self.0.closed.load(Ordering::Acquire) {
                self.0.port.set_rx_sink(Some(sink));
            }
        }
        if let Some(pool) = self.0.pipeline.poll_pool() {
            // Poll mode: the poll thread does the work; events only wake it.
            match device_event {
                INBOX_EVENT => self.0.port.inbox.consume_wake(),
                TX_RESUME_EVENT => {
                    let _ = self.0.tx_resume.read();
                }
                _ => {}
            }
            if !self.0.attached.swap(true, Ordering::AcqRel) && !self.is_closed() {
                pool.attach(Attached {
                    backend: self.clone(),
                    rx: rx.clone(),
                    tx: tx.clone(),
                });
            }
            pool.wake(self.0.port.id);
            return Ok(());
        }
        match device_event {
            RX_QUEUE => {
                self.flush_rx(rx, true);
            }
            // Reject replies to ourselves arrive through the inbox doorbell like any frame.
            TX_QUEUE => {
                self.process_tx(tx, false);
            }
            INBOX_EVENT => {
                self.0.port.inbox.consume_wake();
                self.flush_rx(rx, true);
            }
            TX_RESUME_EVENT => {
                let _ = self.0.tx_resume.read();
                self.process_tx(tx, false);
            }
            _ => {}
        }
        Ok(())
    }
}

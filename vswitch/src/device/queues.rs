//! Moving frames between descriptor chains and our own buffers.
//!
//! Everything here treats guest memory and the descriptor rings as hostile:
//! * a TX chain is copied into a backend-owned buffer before anything looks at it (a guest
//!   can rewrite its buffers after we validated them — decide on the copy, forward the copy);
//! * descriptors pointing outside guest memory, chains that do not terminate (loops, chains
//!   longer than the ring), zero-length or wrongly-directed descriptors, and oversized frames
//!   are refused by reason;
//! * a refused chain is still returned to the guest (used length 0), so the ring never leaks.

use std::num::Wrapping;

use virtio_queue::{Queue, QueueT};

use super::ring::{Desc, Intent, SplitRing};
use crate::counters::DropReason;
use crate::net_hdr::VirtioNetHdr;

/// Largest Ethernet frame we accept: a 64 KiB IP packet (TSO) plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// Largest TX chain: the frame plus the virtio-net header.
pub const MAX_TX_CHAIN_LEN: usize = MAX_FRAME_LEN + crate::net_hdr::VNET_HDR_LEN;

/// The TX queue's reusable copy area for one burst: the chains of a burst are copied back to
/// back, so a burst of small frames is a few contiguous cache lines, and every frame stays
/// readable until the burst's deliveries are done (see `Pipeline::flush_deferred`).
///
/// Sized once for `frames` chains of the largest size, so the hot path never allocates or
/// zero-fills; the allocation is lazily backed by the kernel, so only the bytes used count.
pub struct TxBuffer {
    buf: Box<[u8]>,
    len: usize,
}

impl Default for TxBuffer {
    fn default() -> Self {
        TxBuffer::for_frames(1)
    }
}

impl TxBuffer {
    /// Room for `frames` chains of up to [`MAX_TX_CHAIN_LEN`] bytes each.
    pub fn for_frames(frames: usize) -> TxBuffer {
        TxBuffer {
            buf: vec![0u8; MAX_TX_CHAIN_LEN * frames.max(1)].into_boxed_slice(),
            len: 0,
        }
    }

    /// Forgets the chains copied so far (start of a burst).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes of a chain copied by [`copy_tx_chain`].
    pub fn chain(&self, span: TxSpan) -> &[u8] {
        self.buf
            .get(span.start as usize..span.end as usize)
            .unwrap_or(&[])
    }
}

/// Where [`copy_tx_chain`] put a chain in its [`TxBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxSpan {
    pub start: u32,
    pub end: u32,
}

impl TxSpan {
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// How many RX chains ahead of the one being written [`Cursor`] asks for the buffer, with
/// write intent.
const RX_PREFETCH_FRAMES: u16 = 4;

/// Where a batch stands in a ring. Taken from the [`Queue`] before the batch and stored
/// back after it, so the queue (and the vhost-user handler behind it) always holds the ring's
/// state between batches.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    pub next_avail: Wrapping<u16>,
    pub next_used: Wrapping<u16>,
    /// The guest's avail index as last read: the chains before it are posted, so they can
    /// be taken without reading the index (a cache line the guest keeps writing) again.
    avail_seen: Wrapping<u16>,
}

impl Cursor {
    /// The queue's position, knowing nothing of what the guest posted.
    pub fn of(queue: &Queue) -> Cursor {
        let next_avail = Wrapping(queue.next_avail());
        Cursor {
            next_avail,
            next_used: Wrapping(queue.next_used()),
            avail_seen: next_avail,
        }
    }

    /// Resumes from `saved` (stored by an earlier batch) if the queue is still where that
    /// batch left it; otherwise (reset, new ring base) starts afresh.
    pub fn resume(queue: &Queue, saved: Option<Cursor>) -> Cursor {
        let fresh = Cursor::of(queue);
        match saved {
            Some(c) if c.next_avail == fresh.next_avail && c.next_used == fresh.next_used => c,
            _ => fresh,
        }
    }

    /// Hands the position back to the queue.
    pub fn store(&self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail.0);
        queue.set_next_used(self.next_used.0);
    }

    /// Takes the next posted chain's head, reading the guest's avail index only when the
    /// chains known to be posted ran out. `None` if none is posted (or the ring is broken).
    #[inline]
    pub fn pop(&mut self, ring: &SplitRing<'_>) -> Option<u16> {
        if self.avail_seen == self.next_avail {
            let idx = ring.avail_idx();
            if (idx - self.next_avail).0 > ring.size() {
                return None;
            }
            self.avail_seen = idx;
            if idx == self.next_avail {
                return None;
            }
        }
        let head = ring.avail_head(self.next_avail);
        self.next_avail += Wrapping(1);
        Some(head)
    }

    /// Starts loading what the next frames will touch, among the chains known to be posted:
    /// the buffer [`RX_PREFETCH_FRAMES`] chains ahead (its descriptor was requested a frame
    /// earlier) and the descriptor after it. The guest wrote them on its own core, so each
    /// is a cache miss; frames of a burst are written back to back in a few tens of
    /// nanoseconds each, so one frame ahead would hide little of it.
    #[inline]
    pub fn prefetch_ahead(&self, ring: &SplitRing<'_>) {
        let ahead = (self.avail_seen - self.next_avail).0;
        ring.prefetch_used(self.next_used);
        let distance = RX_PREFETCH_FRAMES - 1;
        if ahead > distance {
            ring.prefetch_buffer(
                ring.avail_head(self.next_avail + Wrapping(distance)),
                Intent::Write,
            );
        }
        if ahead > distance + 1 {
            ring.prefetch_desc(ring.avail_head(self.next_avail + Wrapping(distance + 1)));
        }
    }

    /// Before writing `frames` frames: starts loading the descriptors of as many of the
    /// chains known to be posted, the used-ring lines they will fill and the buffers of the
    /// first [`RX_PREFETCH_FRAMES`], so their misses overlap instead of being paid one frame
    /// at a time ([`Cursor::prefetch_ahead`] then keeps that distance).
    #[inline]
    pub fn prefetch_burst(&mut self, ring: &SplitRing<'_>, frames: usize) {
        let mut posted = (self.avail_seen - self.next_avail).0 as usize;
        if posted < frames {
            // The first pop would read the guest's avail index anyway.
            posted = self.available(ring) as usize;
        }
        let posted = frames.min(posted);
        for k in 0..posted {
            ring.prefetch_desc(ring.avail_head(self.next_avail + Wrapping(k as u16)));
        }
        for k in (0..frames).step_by(8) {
            ring.prefetch_used(self.next_used + Wrapping(k as u16));
        }
        for k in 0..posted.min(RX_PREFETCH_FRAMES as usize) {
            ring.prefetch_buffer(
                ring.avail_head(self.next_avail + Wrapping(k as u16)),
                Intent::Write,
            );
        }
    }

    /// Chains posted and not taken yet.
    pub fn available(&mut self, ring: &SplitRing<'_>) -> u16 {
        if let Some(n) = ring.pending(self.next_avail) {
            self.avail_seen = self.next_avail + Wrapping(n);
            n
        } else {
            0
        }
    }

    /// Returns chain `head` to the guest with `len` bytes written. A head beyond the ring
    /// cannot be returned (the guest broke its own ring); `false` then.
    #[inline]
    pub fn add_used(&mut self, ring: &SplitRing<'_>, head: u16, len: u32) -> bool {
        if head >= ring.size() {
            return false;
        }
        ring.put_used(self.next_used, head, len);
        self.next_used += Wrapping(1);
        true
    }
}

/// Appends the device-readable chain at `head` to `out`; returns where it went. A chain
/// longer than [`MAX_TX_CHAIN_LEN`], or one that does not fit the rest of `out`, is
/// `Oversized`; a refused chain leaves `out` as it was.
pub fn copy_tx_chain(
    ring: &SplitRing<'_>,
    head: u16,
    out: &mut TxBuffer,
) -> Result<TxSpan, DropReason> {
    let start = out.len;
    let limit = out.buf.len().min(start + MAX_TX_CHAIN_LEN);
    let mut end = start;
    for desc in ring.chain(head) {
        let desc = desc.map_err(|e| e.reason())?;
        if desc.is_write_only() {
            return Err(DropReason::WriteOnlyDescriptor);
        }
        let len = desc.len as usize;
        if len == 0 {
            return Err(DropReason::ZeroLength);
        }
        let next = end
            .checked_add(len)
            .filter(|e| *e <= limit)
            .ok_or(DropReason::Oversized)?;
        ring.memory()
            .read(desc.addr, &mut out.buf[end..next])
            .map_err(|_| DropReason::DescriptorOutOfMemory)?;
        end = next;
    }
    out.len = end;
    Ok(TxSpan {
        start: start as u32,
        end: end as u32,
    })
}

/// Scratch state of the RX queue, reused across frames.
#[derive(Default)]
pub struct RxScratch {
    /// Writable buffers of the chains gathered for the current frame: `(address, length)`.
    descs: Vec<(u64, u32)>,
    /// `(head index, end index into descs)` per gathered chain.
    chains: Vec<(u16, usize)>,
}

/// Why a frame could not be written into the RX ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxError {
    /// Not enough buffers posted; nothing was consumed, retry after the guest's next kick.
    NoBuffers,
    /// Without mergeable buffers the next chain is smaller than the frame; the frame is
    /// dropped, the chain stays available.
    TooSmall,
    /// A posted chain is unusable; it (and the chains gathered with it) were returned empty.
    ChainInvalid,
}

impl RxError {
    pub fn reason(self) -> DropReason {
        match self {
            RxError::NoBuffers => DropReason::BacklogFull,
            RxError::TooSmall => DropReason::RxBufferTooSmall,
            RxError::ChainInvalid => DropReason::RxChainInvalid,
        }
    }
}

/// Collects the device-writable buffers of the chain at `head` into `descs`; `Err` if the
/// chain is unusable (read-only descriptor, outside memory, does not terminate). Returns its
/// capacity.
fn gather_rx_chain(
    ring: &SplitRing<'_>,
    head: u16,
    descs: &mut Vec<(u64, u32)>,
) -> Result<u32, ()> {
    let mut cap = 0u32;
    for desc in ring.chain(head) {
        let desc = desc.map_err(|_| ())?;
        if !desc.is_write_only() {
            return Err(());
        }
        let Desc { addr, len, .. } = desc;
        if len == 0 {
            continue;
        }
        if !ring.memory().contains(addr, len as usize) {
            return Err(());
        }
        cap = cap.checked_add(len).ok_or(())?;
        descs.push((addr, len));
    }
    if cap == 0 {
        return Err(());
    }
    Ok(cap)
}

/// Writes `hdr` (its first `hdr_len` bytes) and `frame` into the RX ring.
///
/// With `mergeable`, as many chains as needed are used and `num_buffers` says how many;
/// otherwise the frame must fit one chain. On success returns the number of chains used.
/// The used elements are written but not published: the caller publishes the cursor's
/// `next_used` (once per batch) and then decides on notifying the guest.
pub fn write_rx_frame(
    ring: &SplitRing<'_>,
    cursor: &mut Cursor,
    mut hdr: VirtioNetHdr,
    hdr_len: usize,
    frame: &[u8],
    mergeable: bool,
    scratch: &mut RxScratch,
) -> Result<u16, RxError> {
    let total = hdr_len + frame.len();
    scratch.descs.clear();
    scratch.chains.clear();
    let start_avail = cursor.next_avail;
    let mut cap_sum: usize = 0;

    while cap_sum < total {
        let Some(head) = cursor.pop(ring) else {
            // Not enough posted: give back what we took, untouched.
            cursor.next_avail = start_avail;
            return Err(RxError::NoBuffers);
        };
        let before = scratch.descs.len();
        match gather_rx_chain(ring, head, &mut scratch.descs) {
            Ok(cap) => {
                scratch.chains.push((head, scratch.descs.len()));
                cap_sum += cap as usize;
            }
            Err(()) => {
                scratch.descs.truncate(before);
                // Return the gathered chains and the bad one empty, in the order they were
                // taken (IN_ORDER): rolling back past a consumed chain is impossible, and
                // leaking them would shrink the ring. A head beyond the ring cannot be
                // returned at all.
                for &(h, _) in &scratch.chains {
                    cursor.add_used(ring, h, 0);
                }
                cursor.add_used(ring, head, 0);
                return Err(RxError::ChainInvalid);
            }
        }
        if !mergeable {
            break;
        }
    }
    if cap_sum < total {
        // Only reachable without mergeable buffers: this chain stays for a smaller frame.
        cursor.next_avail -= Wrapping(1);
        return Err(RxError::TooSmall);
    }

    hdr.num_buffers = scratch.chains.len() as u16;
    let hdr_bytes = hdr.to_bytes();
    let mut src_parts = [&hdr_bytes[..hdr_len], frame];
    let mut part = 0;
    let mut first_desc = 0;
    let mut write_failed = false;
    let mem = ring.memory();
    for &(head, end) in &scratch.chains {
        let mut written = 0u32;
        for &(addr, len) in &scratch.descs[first_desc..end] {
            let mut room = len as usize;
            let mut at = addr;
            while room > 0 && part < src_parts.len() {
                let src = src_parts[part];
                let n = room.min(src.len());
                // gather_rx_chain checked the range against the same map: cannot fail, but
                // if it did, the used length of 0 would report it.
                if n > 0 && mem.write(at, &src[..n]).is_err() {
                    write_failed = true;
                }
                room -= n;
                written += n as u32;
                at = at.wrapping_add(n as u64);
                src_parts[part] = &src[n..];
                if src_parts[part].is_empty() {
                    part += 1;
                }
            }
        }
        first_desc = end;
        let len = if write_failed { 0 } else { written };
        cursor.add_used(ring, head, len);
    }
    if write_failed {
        return Err(RxError::ChainInvalid);
    }
    cursor.prefetch_ahead(ring);
    Ok(scratch.chains.len() as u16)
}

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
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::counters::DropReason;
use crate::net_hdr::VirtioNetHdr;

/// Largest Ethernet frame we accept: a 64 KiB IP packet (TSO) plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// Largest TX chain: the frame plus the virtio-net header.
pub const MAX_TX_CHAIN_LEN: usize = MAX_FRAME_LEN + crate::net_hdr::VNET_HDR_LEN;

/// The TX queue's reusable copy buffer, sized once for the largest chain so the hot path
/// never allocates or zero-fills.
pub struct TxBuffer {
    buf: Box<[u8]>,
    len: usize,
}

impl Default for TxBuffer {
    fn default() -> Self {
        TxBuffer {
            buf: vec![0u8; MAX_TX_CHAIN_LEN].into_boxed_slice(),
            len: 0,
        }
    }
}

impl TxBuffer {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads `dst.len()` bytes of guest memory at `addr` with one region lookup. vm-memory's
/// `read_slice` goes through its general region-spanning iterator, which cost more than the
/// copy itself for small frames (~14 % of the established-flow profile); a range that spans
/// regions still takes that path.
fn read_guest<M>(mem: &M, addr: GuestAddress, dst: &mut [u8]) -> Result<(), ()>
where
    M: GuestMemory + GuestMemoryBackend,
{
    match GuestMemoryBackend::get_slice(mem, addr, dst.len()) {
        Ok(src) => {
            src.copy_to(dst);
            Ok(())
        }
        Err(_) => mem.read_slice(dst, addr).map_err(|_| ()),
    }
}

/// Hints the CPU to start loading up to `len` bytes (at most two cache lines) of guest memory
/// at `addr`, if the range lies in one region; does nothing otherwise. A prefetch never
/// faults and has no architectural effect, so a guest-chosen address is harmless.
pub fn prefetch_guest<M>(mem: &M, addr: GuestAddress, len: usize)
where
    M: GuestMemory + GuestMemoryBackend,
{
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let len = len.clamp(1, 128);
        let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, len) else {
            return;
        };
        let guard = slice.ptr_guard();
        let p = guard.as_ptr().cast::<i8>();
        let mut off = 0;
        while off < len {
            // SAFETY: `_mm_prefetch` is `unsafe` only because it is a `target_feature(sse)`
            // intrinsic, and SSE is part of the x86_64 baseline. The address lies inside a
            // mapped guest-memory region (`get_slice` checked it), and a prefetch neither faults
            // nor writes.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (mem, addr, len);
}

/// Writes `src` into guest memory at `addr`, like [`read_guest`].
fn write_guest<M>(mem: &M, addr: GuestAddress, src: &[u8]) -> Result<(), ()>
where
    M: GuestMemory + GuestMemoryBackend,
{
    match GuestMemoryBackend::get_slice(mem, addr, src.len()) {
        Ok(dst) => {
            dst.copy_from(src);
            Ok(())
        }
        Err(_) => mem.write_slice(src, addr).map_err(|_| ()),
    }
}

/// Copies the device-readable chain `chain` into `out`. Returns the number of bytes copied.
pub fn copy_tx_chain<M>(
    mem: &M,
    chain: DescriptorChain<&M>,
    out: &mut TxBuffer,
) -> Result<usize, DropReason>
where
    M: GuestMemory + GuestMemoryBackend,
{
    out.len = 0;
    let mut count = 0usize;
    let mut last_has_next = false;
    for desc in chain {
        count += 1;
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err(DropReason::WriteOnlyDescriptor);
        }
        let len = desc.len() as usize;
        if len == 0 {
            return Err(DropReason::ZeroLength);
        }
        let end = out
            .len
            .checked_add(len)
            .filter(|e| *e <= out.buf.len())
            .ok_or(DropReason::Oversized)?;
        read_guest(mem, desc.addr(), &mut out.buf[out.len..end])
            .map_err(|_| DropReason::DescriptorOutOfMemory)?;
        out.len = end;
    }
    if count == 0 {
        // The head index or the descriptor table itself is outside guest memory / the ring.
        return Err(DropReason::DescriptorOutOfMemory);
    }
    if last_has_next {
        // The iterator stopped before a descriptor without NEXT: a loop, a chain longer than
        // the ring, or a `next` index out of range.
        return Err(DropReason::DescriptorLoop);
    }
    Ok(out.len)
}

/// Scratch state of the RX queue, reused across frames.
#[derive(Default)]
pub struct RxScratch {
    /// Writable buffers of the chains gathered for the current frame.
    descs: Vec<(GuestAddress, u32)>,
    /// `(head index, capacity, end index into descs)` per gathered chain.
    chains: Vec<(u16, u32, usize)>,
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
    /// Updating the used ring failed (ring addresses outside guest memory).
    UsedRing,
}

impl RxError {
    pub fn reason(self) -> DropReason {
        match self {
            RxError::NoBuffers => DropReason::BacklogFull,
            RxError::TooSmall => DropReason::RxBufferTooSmall,
            RxError::ChainInvalid | RxError::UsedRing => DropReason::RxChainInvalid,
        }
    }
}

/// Number of chains the guest has posted that we have not consumed yet.
pub fn available_chains<M: GuestMemory>(queue: &Queue, mem: &M) -> u16 {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - Wrapping(queue.next_avail())).0,
        Err(_) => 0,
    }
}

/// Collects the device-writable buffers of one chain into `descs`; `Err` if the chain is
/// unusable (read-only descriptor, outside memory, does not terminate). Returns its capacity.
fn gather_rx_chain<M>(
    mem: &M,
    chain: DescriptorChain<&M>,
    descs: &mut Vec<(GuestAddress, u32)>,
) -> Result<u32, ()>
where
    M: GuestMemory + GuestMemoryBackend,
{
    let mut cap = 0u32;
    let mut count = 0;
    let mut last_has_next = false;
    for desc in chain {
        count += 1;
        last_has_next = desc.has_next();
        if !desc.is_write_only() {
            return Err(());
        }
        if desc.len() == 0 {
            continue;
        }
        // One region lookup when the buffer sits in one region (the common case); the
        // general check walks vm-memory's region-spanning iterator.
        if GuestMemoryBackend::get_slice(mem, desc.addr(), desc.len() as usize).is_err()
            && !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize)
        {
            return Err(());
        }
        cap = cap.checked_add(desc.len()).ok_or(())?;
        descs.push((desc.addr(), desc.len()));
    }
    if count == 0 || last_has_next || cap == 0 {
        return Err(());
    }
    Ok(cap)
}

/// Writes `hdr` (its first `hdr_len` bytes) and `frame` into the RX ring.
///
/// With `mergeable`, as many chains as needed are used and `num_buffers` says how many;
/// otherwise the frame must fit one chain. On success returns the number of chains used (the
/// used-ring entries are added; notifying the guest is the caller's, once per batch).
pub fn write_rx_frame<M>(
    mem: &M,
    queue: &mut Queue,
    mut hdr: VirtioNetHdr,
    hdr_len: usize,
    frame: &[u8],
    mergeable: bool,
    scratch: &mut RxScratch,
) -> Result<u16, RxError>
where
    M: GuestMemory + GuestMemoryBackend,
{
    let total = hdr_len + frame.len();
    scratch.descs.clear();
    scratch.chains.clear();
    let start_avail = queue.next_avail();
    let mut cap_sum: usize = 0;

    while cap_sum < total {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Not enough posted: give back what we took, untouched.
            queue.set_next_avail(start_avail);
            return Err(RxError::NoBuffers);
        };
        let head = chain.head_index();
        let before = scratch.descs.len();
        match gather_rx_chain(mem, chain, &mut scratch.descs) {
            Ok(cap) => {
                scratch.chains.push((head, cap, scratch.descs.len()));
                cap_sum += cap as usize;
            }
            Err(()) => {
                scratch.descs.truncate(before);
                // Return the bad chain and any gathered ones empty: rolling back past a
                // consumed chain is impossible, and leaking them would shrink the ring.
                let mut res = queue.add_used(mem, head, 0);
                for &(h, _, _) in &scratch.chains {
                    res = res.and(queue.add_used(mem, h, 0));
                }
                return Err(if res.is_ok() {
                    RxError::ChainInvalid
                } else {
                    RxError::UsedRing
                });
            }
        }
        if !mergeable {
            break;
        }
    }
    if cap_sum < total {
        // Only reachable without mergeable buffers: this chain stays for a smaller frame.
        queue.go_to_previous_position();
        return Err(RxError::TooSmall);
    }

    hdr.num_buffers = scratch.chains.len() as u16;
    let hdr_bytes = hdr.to_bytes();
    let mut src_parts = [&hdr_bytes[..hdr_len], frame];
    let mut part = 0;
    let mut first_desc = 0;
    let mut write_failed = false;
    for ci in 0..scratch.chains.len() {
        let (head, _, end) = scratch.chains[ci];
        let mut written = 0u32;
        for &(addr, len) in &scratch.descs[first_desc..end] {
            let mut room = len as usize;
            let mut at = addr;
            while room > 0 && part < src_parts.len() {
                let src = src_parts[part];
                let n = room.min(src.len());
                if n > 0 && write_guest(mem, at, &src[..n]).is_err() {
                    write_failed = true;
                }
                room -= n;
                written += n as u32;
                at = at.unchecked_add(n as u64);
                src_parts[part] = &src[n..];
                if src_parts[part].is_empty() {
                    part += 1;
                }
            }
        }
        first_desc = end;
        let len = if write_failed { 0 } else { written };
        if queue.add_used(mem, head, len).is_err() {
            return Err(RxError::UsedRing);
        }
    }
    if write_failed {
        return Err(RxError::ChainInvalid);
    }
    Ok(scratch.chains.len() as u16)
}

trait UncheckedAdd {
    fn unchecked_add(self, n: u64) -> Self;
}

impl UncheckedAdd for GuestAddress {
    fn unchecked_add(self, n: u64) -> Self {
        // The range was checked by gather_rx_chain, so this cannot overflow.
        GuestAddress(self.0.wrapping_add(n))
    }
}

//! Split-virtqueue access for the packet path, on guest memory mapped once.
//!
//! virtio-queue and vm-memory validate every access: each descriptor read, buffer copy and
//! used-ring write looks the address up in the region list and checks its bounds, through
//! several layers of generic accessors. Per 64-byte packet that was a quarter of the
//! backend's time. Here, as in DPDK's vhost library:
//! * [`GuestMap`] keeps the host address of every guest-memory region, rebuilt only when the
//!   frontend replaces the memory table;
//! * [`SplitRing`] translates the three ring areas once per batch and checks their size and
//!   alignment then, so reading an avail entry or writing a used element is one load or store;
//! * descriptor indices are checked against the ring (or indirect table) size, and every
//!   buffer against the region it lies in, before anything is read or written.
//!
//! The guest shares this memory and may change it at any time. Ring fields are read with
//! single volatile (or atomic) loads, each once, and a frame is copied before anything looks
//! at it, so a guest racing with us can only corrupt its own traffic.
//!
//! [`Queue`] stays the owner of the ring's state (addresses, `next_avail`, `next_used`, event
//! index, notification flags): callers take the indices from it and hand them back after a
//! batch, so the vhost-user handler (GET_VRING_BASE, reconnect) sees the same state as before.

use std::num::Wrapping;
use std::ptr;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::counters::DropReason;

type Mem = GuestMemoryMmap<()>;

/// Size of a split-ring descriptor.
const DESC_SIZE: usize = 16;

/// One guest-memory region as host memory.
#[derive(Clone, Copy)]
struct HostRegion {
    /// First guest-physical address.
    start: u64,
    /// Length in bytes.
    len: u64,
    /// Host address of `start`.
    host: *mut u8,
}

/// The guest's memory regions as host addresses, for one memory table.
///
/// Holds the memory snapshot it was built from, so the mappings its addresses point into
/// stay mapped while it exists, even after the frontend replaced the table.
pub struct GuestMap {
    mem: Option<Arc<Mem>>,
    /// The memory-table generation `mem` was taken at (see [`refresh`](Self::refresh)).
    generation: u64,
    /// Largest region first: almost every access hits guest RAM's main region.
    regions: Vec<HostRegion>,
}

// SAFETY: the raw pointers point into mmap()ed guest memory owned by `mem`, which lives as
// long as `self` and is valid to access from any thread (vm-memory's `GuestMemoryMmap` is
// `Send + Sync`); `GuestMap` only hands out copies made through them.
unsafe impl Send for GuestMap {}
// SAFETY: as above; no method mutates through `&self`'s pointers except into guest memory,
// which the guest shares anyway (every access is a volatile load/store or a copy).
unsafe impl Sync for GuestMap {}

impl Default for GuestMap {
    fn default() -> Self {
        GuestMap::new()
    }
}

impl GuestMap {
    /// A map of no memory: every translation fails until [`refresh`](Self::refresh).
    pub fn new() -> GuestMap {
        GuestMap {
            mem: None,
            generation: 0,
            regions: Vec::new(),
        }
    }

    /// A map of `mem`.
    pub fn of(mem: Arc<Mem>) -> GuestMap {
        let mut map = GuestMap::new();
        map.rebuild(mem);
        map
    }

    /// Follows the frontend's current memory table. `generation` counts the table's
    /// replacements (the backend's `update_memory` bumps it after each one): when it did not
    /// change, this is one comparison instead of loading the shared snapshot.
    pub fn refresh(&mut self, atomic: &GuestMemoryAtomic<Mem>, generation: u64) {
        if self.mem.is_some() && self.generation == generation {
            return;
        }
        self.rebuild(atomic.memory().into_inner());
        self.generation = generation;
    }

    fn rebuild(&mut self, mem: Arc<Mem>) {
        self.regions.clear();
        for region in mem.iter() {
            // The whole region is one mapping; its host address cannot fail for offset 0 of a
            // non-empty region, and an empty one is useless anyway.
            if let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) {
                if region.len() > 0 {
                    self.regions.push(HostRegion {
                        start: region.start_addr().0,
                        len: region.len(),
                        host,
                    });
                }
            }
        }
        self.regions.sort_by_key(|r| std::cmp::Reverse(r.len));
        self.mem = Some(mem);
    }

    /// The host address of `[gpa, gpa + len)` if the range lies in one region.
    #[inline]
    fn host(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let len = len as u64;
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.start);
            if off < r.len && len <= r.len - off {
                // `off < r.len`, so the result stays inside the region's mapping.
                return Some(r.host.wrapping_add(off as usize));
            }
        }
        None
    }

    /// The region holding `gpa`, and how many bytes of it follow `gpa`.
    #[inline]
    fn region_at(&self, gpa: u64) -> Option<(*mut u8, u64)> {
        self.regions.iter().find_map(|r| {
            let off = gpa.wrapping_sub(r.start);
            (off < r.len).then(|| (r.host.wrapping_add(off as usize), r.len - off))
        })
    }

    /// Whether `[gpa, gpa + len)` is guest memory (possibly spanning regions).
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        self.walk(gpa, len, |_, _, _| ()).is_ok()
    }

    /// Calls `f(host, offset, n)` for each piece of `[gpa, gpa + len)`, in order (`offset`
    /// into the range), after checking the whole range: either every piece is visited or none
    /// is.
    #[inline]
    fn walk(
        &self,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), OutsideGuestMemory> {
        if let Some(host) = self.host(gpa, len) {
            f(host, 0, len);
            return Ok(());
        }
        // Spanning regions (rare: a buffer across two memory slots). Check, then visit.
        let pieces = |visit: &mut dyn FnMut(*mut u8, usize, usize)| -> bool {
            let (mut at, mut done) = (gpa, 0usize);
            while done < len {
                let Some((host, room)) = self.region_at(at) else {
                    return false;
                };
                let n = room.min((len - done) as u64) as usize;
                visit(host, done, n);
                done += n;
                let Some(next) = at.checked_add(n as u64) else {
                    return done == len;
                };
                at = next;
            }
            true
        };
        if !pieces(&mut |_, _, _| ()) {
            return Err(OutsideGuestMemory);
        }
        pieces(&mut f);
        Ok(())
    }

    /// Copies guest memory at `gpa` into `dst`. `Err` (and `dst` unspecified) if any part of
    /// the range is not guest memory.
    #[inline]
    pub fn read(&self, gpa: u64, dst: &mut [u8]) -> Result<(), OutsideGuestMemory> {
        let to = dst.as_mut_ptr();
        self.walk(gpa, dst.len(), |host, at, n| {
            // SAFETY: `walk` checked that `[host, host + n)` lies in a live guest mapping (kept
            // by `self.mem`), and `dst[at..at + n]` is ours; they cannot overlap. The guest may
            // write the source concurrently: we only use the copy, so a torn read can only
            // corrupt the guest's own frame.
            unsafe { ptr::copy_nonoverlapping(host, to.add(at), n) };
        })
    }

    /// Copies `src` into guest memory at `gpa`. `Err` (nothing written) if any part of the
    /// range is not guest memory.
    #[inline]
    pub fn write(&self, gpa: u64, src: &[u8]) -> Result<(), OutsideGuestMemory> {
        self.walk(gpa, src.len(), |host, at, n| {
            // SAFETY: as in `read`, with the roles swapped: the destination lies in a checked,
            // live guest mapping that no Rust reference points into, `src[at..at + n]` is ours.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr().add(at), host, n) };
        })
    }

    /// Hints the CPU to start loading up to two cache lines of guest memory at `gpa`, if
    /// that is guest memory.
    #[inline]
    pub fn prefetch(&self, gpa: u64, len: usize, intent: Intent) {
        let len = len.clamp(1, 128);
        if let Some(host) = self.host(gpa, len) {
            prefetch_lines(host, len, intent);
        }
    }
}

/// What a prefetched line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Read,
    /// We will write it: ask for the line exclusively (`prefetchw`, where the CPU has it;
    /// a read prefetch otherwise), so the write does not have to take it from the guest's
    /// core first. RX buffers and used rings are written by us and last touched by the guest.
    Write,
}

/// Whether the CPU executes `prefetchw` (CPUID 0x8000_0001, ECX bit 8: PRFCHW, AMD's
/// "3DNowPrefetch"). Checked at run time because `_mm_prefetch::<_MM_HINT_ET0>` needs the
/// `prfchw` target feature, which the x86_64 baseline lacks: without it LLVM silently drops
/// the instruction, and every write-intent prefetch compiled to nothing.
#[cfg(target_arch = "x86_64")]
static HAS_PREFETCHW: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    use std::arch::x86_64::__cpuid;
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
});

/// Issues a prefetch for each cache line of `[p, p + len)`.
#[inline]
fn prefetch_lines(p: *const u8, len: usize, intent: Intent) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let exclusive = intent == Intent::Write && *HAS_PREFETCHW;
        let mut off = 0;
        while off < len {
            let line = p.wrapping_add(off);
            if exclusive {
                // SAFETY: executed only where CPUID reports PREFETCHW. A prefetch never
                // faults (any address is fine), writes nothing and touches no register or
                // flag besides reading `line`'s value.
                unsafe {
                    std::arch::asm!(
                        "prefetchw [{0}]",
                        in(reg) line,
                        options(nostack, preserves_flags, readonly)
                    )
                };
            } else {
                // SAFETY: `_mm_prefetch` is `unsafe` only as a `target_feature(sse)` intrinsic,
                // and SSE is part of the x86_64 baseline. A prefetch neither faults nor writes.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.cast::<i8>()) };
            }
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len, intent);
}

/// A guest address range that is not (entirely) guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address range outside guest memory")]
pub struct OutsideGuestMemory;

/// Why a ring cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the queue is not ready")]
    NotReady,
    #[error("a ring area is outside guest memory")]
    OutsideMemory,
    #[error("a ring area is misaligned")]
    Misaligned,
}

/// Why a descriptor chain is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// The head index is beyond the ring.
    HeadOutOfRange,
    /// A `next` index is beyond the table, or the chain is longer than the table (a loop).
    Loop,
    /// An indirect table outside guest memory, empty, not a whole number of descriptors,
    /// nested, or chained.
    BadIndirect,
}

impl ChainError {
    /// The drop reason this is counted under.
    pub fn reason(self) -> DropReason {
        match self {
            ChainError::HeadOutOfRange | ChainError::BadIndirect => {
                DropReason::DescriptorOutOfMemory
            }
            ChainError::Loop => DropReason::DescriptorLoop,
        }
    }
}

/// One buffer descriptor of a chain (never an indirect one: [`Chain`] follows those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    /// Whether the device writes this buffer (RX) rather than reads it (TX).
    pub fn is_write_only(&self) -> bool {
        self.flags & VRING_DESC_F_WRITE as u16 != 0
    }

    fn has_next(&self) -> bool {
        self.flags & VRING_DESC_F_NEXT as u16 != 0
    }

    fn is_indirect(&self) -> bool {
        self.flags & VRING_DESC_F_INDIRECT as u16 != 0
    }

    /// Reads the descriptor at `p`, each field once.
    ///
    /// # Safety
    /// `[p, p + 16)` must be readable (guest memory that stays mapped meanwhile).
    #[inline]
    unsafe fn load(p: *const u8) -> Desc {
        let (w0, w1) = if (p as usize).is_multiple_of(8) {
            // SAFETY: readable per the contract, aligned just above.
            unsafe {
                (
                    ptr::read_volatile(p.cast::<u64>()),
                    ptr::read_volatile(p.add(8).cast::<u64>()),
                )
            }
        } else {
            // An indirect table may be misaligned; the ring's own table never is.
            let mut b = [0u8; DESC_SIZE];
            for (i, byte) in b.iter_mut().enumerate() {
                // SAFETY: readable per the contract; bytes need no alignment.
                *byte = unsafe { ptr::read_volatile(p.add(i)) };
            }
            let (lo, hi) = b.split_at(8);
            let word = |s: &[u8]| u64::from_ne_bytes(s.try_into().unwrap_or_default());
            (word(lo), word(hi))
        };
        let (w0, w1) = (u64::from_le(w0), u64::from_le(w1));
        Desc {
            addr: w0,
            len: w1 as u32,
            flags: (w1 >> 32) as u16,
            next: (w1 >> 48) as u16,
        }
    }
}

/// A split virtqueue's three areas in host memory, valid for one batch (it borrows the
/// [`GuestMap`] that keeps them mapped).
pub struct SplitRing<'m> {
    map: &'m GuestMap,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    size: u16,
    event_idx: bool,
}

impl<'m> SplitRing<'m> {
    /// Translates `queue`'s areas. The virtio spec requires 16-, 2- and 4-byte alignment for
    /// the descriptor table, avail and used ring; we check the host addresses (which keep
    /// the guest's alignment modulo the page size) so that every ring field can be read
    /// with an aligned single load.
    pub fn new(map: &'m GuestMap, queue: &Queue) -> Result<SplitRing<'m>, RingError> {
        let size = queue.size();
        if !queue.ready() || size == 0 {
            return Err(RingError::NotReady);
        }
        let n = size as usize;
        let desc = map
            .host(queue.desc_table(), DESC_SIZE * n)
            .ok_or(RingError::OutsideMemory)?;
        // flags, idx, ring[size], used_event
        let avail = map
            .host(queue.avail_ring(), 4 + 2 * n + 2)
            .ok_or(RingError::OutsideMemory)?;
        // flags, idx, ring[size] of (id: u32, len: u32), avail_event
        let used = map
            .host(queue.used_ring(), 4 + 8 * n + 2)
            .ok_or(RingError::OutsideMemory)?;
        if !(desc as usize).is_multiple_of(16)
            || !(avail as usize).is_multiple_of(2)
            || !(used as usize).is_multiple_of(4)
        {
            return Err(RingError::Misaligned);
        }
        Ok(SplitRing {
            map,
            desc,
            avail,
            used,
            size,
            event_idx: queue.event_idx_enabled(),
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The memory this ring's buffers live in.
    pub fn memory(&self) -> &'m GuestMap {
        self.map
    }

    #[inline]
    fn avail_u16(&self, offset: usize) -> u16 {
        // SAFETY: `new` checked that the avail area (4 + 2 * size + 2 bytes) is mapped and
        // 2-aligned; callers pass offsets inside it.
        u16::from_le(unsafe { ptr::read_volatile(self.avail.add(offset).cast::<u16>()) })
    }

    /// The guest's avail index, with acquire ordering: the entries and descriptors it
    /// published before are visible after this.
    #[inline]
    pub fn avail_idx(&self) -> Wrapping<u16> {
        // SAFETY: the idx field is inside the checked, 2-aligned avail area; `AtomicU16` has
        // the alignment and layout of `u16`, and the guest writes it with single stores.
        let idx = unsafe { AtomicU16::from_ptr(self.avail.add(2).cast::<u16>().cast_mut()) };
        Wrapping(u16::from_le(idx.load(Ordering::Acquire)))
    }

    /// The head index in avail slot `slot` (taken modulo the ring size).
    #[inline]
    pub fn avail_head(&self, slot: Wrapping<u16>) -> u16 {
        self.avail_u16(4 + 2 * (slot.0 % self.size) as usize)
    }

    /// How many chains the guest has posted past `next_avail`, or `None` if its index is
    /// more than a ring ahead (a broken or hostile driver: the ring is unusable).
    #[inline]
    pub fn pending(&self, next_avail: Wrapping<u16>) -> Option<u16> {
        let n = (self.avail_idx() - next_avail).0;
        (n <= self.size).then_some(n)
    }

    /// Hints the CPU to load the head descriptor of `head` and the start of its buffer.
    #[inline]
    pub fn prefetch_desc(&self, head: u16) {
        if head < self.size {
            prefetch_lines(
                self.desc.wrapping_add(DESC_SIZE * head as usize),
                DESC_SIZE,
                Intent::Read,
            );
        }
    }

    /// Hints the CPU to load the start of `head`'s first buffer (after [`prefetch_desc`]).
    ///
    /// [`prefetch_desc`]: Self::prefetch_desc
    #[inline]
    pub fn prefetch_buffer(&self, head: u16, intent: Intent) {
        if head < self.size {
            // SAFETY: `head < size`, so the descriptor lies in the checked table.
            let d = unsafe { Desc::load(self.desc.add(DESC_SIZE * head as usize)) };
            if !d.is_indirect() {
                self.map.prefetch(d.addr, d.len as usize, intent);
            }
        }
    }

    /// Asks for the cache line of used element `slot` for writing (see [`Intent::Write`]).
    #[inline]
    pub fn prefetch_used(&self, slot: Wrapping<u16>) {
        let off = 4 + 8 * (slot.0 % self.size) as usize;
        prefetch_lines(self.used.wrapping_add(off), 8, Intent::Write);
    }

    /// The descriptors of the chain starting at `head`.
    pub fn chain(&self, head: u16) -> Chain<'_, 'm> {
        Chain {
            ring: self,
            table: self.desc,
            table_len: self.size,
            next: Some(head),
            left: self.size,
            indirect: false,
            started: false,
        }
    }

    /// Writes used element `slot` (modulo the ring size). Not visible to the guest before
    /// [`publish_used`](Self::publish_used).
    #[inline]
    pub fn put_used(&self, slot: Wrapping<u16>, head: u16, len: u32) {
        let off = 4 + 8 * (slot.0 % self.size) as usize;
        // SAFETY: the element lies in the checked, 4-aligned used area.
        unsafe {
            ptr::write_volatile(self.used.add(off).cast::<u32>(), u32::from(head).to_le());
            ptr::write_volatile(self.used.add(off + 4).cast::<u32>(), len.to_le());
        }
    }

    /// Makes the used elements before `next_used` visible to the guest (release ordering:
    /// the elements and the buffers' content are written before the index).
    #[inline]
    pub fn publish_used(&self, next_used: Wrapping<u16>) {
        // SAFETY: the idx field is inside the checked used area, 2-aligned (4 in fact).
        let idx = unsafe { AtomicU16::from_ptr(self.used.add(2).cast::<u16>()) };
        idx.store(next_used.0.to_le(), Ordering::Release);
    }

    /// Asks the guest to notify (kick) us when it posts chains past `next_avail`. Returns
    /// whether some were posted already, between our last look and now: then the caller
    /// must take them, as no kick will come for them.
    pub fn enable_notification(&self, next_avail: Wrapping<u16>) -> bool {
        if self.event_idx {
            self.set_used_u16(4 + 8 * self.size as usize, next_avail.0);
        } else {
            self.set_used_u16(0, 0);
        }
        // The guest reads our request after publishing its index; we read its index after
        // publishing our request: with a full fence on both sides one of us sees the other.
        fence(Ordering::SeqCst);
        self.avail_idx() != next_avail
    }

    /// Tells the guest that we do not need kicks. With EVENT_IDX there is nothing to do: the
    /// guest kicks at most once past the `avail_event` we wrote last.
    pub fn disable_notification(&self) {
        if !self.event_idx {
            self.set_used_u16(0, VRING_USED_F_NO_NOTIFY as u16);
        }
    }

    #[inline]
    fn set_used_u16(&self, offset: usize, value: u16) {
        // SAFETY: offsets passed are the flags (0) and avail_event (4 + 8 * size) fields,
        // inside the checked, 4-aligned used area.
        unsafe { ptr::write_volatile(self.used.add(offset).cast::<u16>(), value.to_le()) };
    }

    /// Whether the guest wants a notification for the used entries added since the last
    /// check, which saw `*checked` (updated to `next_used`).
    ///
    /// With EVENT_IDX this is the kernel's `vring_need_event`: notify when `used_event` lies
    /// in `[checked, next_used)`. Without it, the guest's `NO_INTERRUPT` flag decides: the
    /// virtio spec lets a device skip the notification then, and a polling driver (DPDK)
    /// sets it, which saves an eventfd write per batch.
    pub fn needs_notification(
        &self,
        next_used: Wrapping<u16>,
        checked: &mut Wrapping<u16>,
    ) -> bool {
        let old = std::mem::replace(checked, next_used);
        if old == next_used {
            return false;
        }
        // The used index must be visible before we read the guest's suppression state,
        // which it writes before re-checking the used index (both sides use a full fence).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let used_event = Wrapping(self.avail_u16(4 + 2 * self.size as usize));
            (next_used - used_event - Wrapping(1)) < (next_used - old)
        } else {
            self.avail_u16(0) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        }
    }
}

/// Iterator over one chain's buffer descriptors, following an indirect table if the chain
/// has one. Yields at most as many descriptors as the ring (or the indirect table) has, and
/// ends after the first error.
pub struct Chain<'r, 'm> {
    ring: &'r SplitRing<'m>,
    table: *const u8,
    table_len: u16,
    next: Option<u16>,
    left: u16,
    indirect: bool,
    started: bool,
}

impl Iterator for Chain<'_, '_> {
    type Item = Result<Desc, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let index = self.next.take()?;
            if index >= self.table_len {
                return Some(Err(if self.started {
                    ChainError::Loop
                } else {
                    ChainError::HeadOutOfRange
                }));
            }
            if self.left == 0 {
                return Some(Err(ChainError::Loop));
            }
            self.left -= 1;
            self.started = true;
            // SAFETY: `index < table_len`, and the table (the ring's, or an indirect one) was
            // checked to be `table_len` descriptors of live guest memory.
            let d = unsafe { Desc::load(self.table.add(DESC_SIZE * index as usize)) };
            if d.is_indirect() {
                // Only the ring's table may point to an indirect table, and that descriptor
                // ends the chain (virtio 1.x, 2.7.5.3.1).
                let entries = d.len as usize / DESC_SIZE;
                let table = (!self.indirect
                    && !d.has_next()
                    && (d.len as usize).is_multiple_of(DESC_SIZE)
                    && entries > 0
                    && entries <= u16::MAX as usize)
                    .then(|| self.ring.map.host(d.addr, d.len as usize))
                    .flatten();
                let Some(table) = table else {
                    return Some(Err(ChainError::BadIndirect));
                };
                self.table = table;
                self.table_len = entries as u16;
                self.left = entries as u16;
                self.indirect = true;
                self.next = Some(0);
                continue;
            }
            if d.has_next() {
                self.next = Some(d.next);
            }
            return Some(Ok(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const SIZE: u16 = 16;
    const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    /// Two regions with a hole between them: [0, 64K) and [128K, 192K).
    fn memory() -> Arc<Mem> {
        Arc::new(
            Mem::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)])
                .unwrap(),
        )
    }

    fn queue(event_idx: bool) -> Queue {
        let mut q = Queue::new(SIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn write_desc(mem: &Mem, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(table + 16 * index as u64);
        mem.write_obj(addr.to_le(), at).unwrap();
        mem.write_obj(len.to_le(), GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags.to_le(), GuestAddress(at.0 + 12))
            .unwrap();
        mem.write_obj(next.to_le(), GuestAddress(at.0 + 14))
            .unwrap();
    }

    fn collect(ring: &SplitRing<'_>, head: u16) -> Result<Vec<(u64, u32, bool)>, ChainError> {
        ring.chain(head)
            .map(|d| d.map(|d| (d.addr, d.len, d.is_write_only())))
            .collect()
    }

    #[test]
    fn tx_chains_of_a_burst_are_copied_back_to_back() {
        use crate::device::queues::{copy_tx_chain, TxBuffer, MAX_TX_CHAIN_LEN};
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(false);
        let ring = SplitRing::new(&map, &q).unwrap();
        mem.write_slice(&[1; 30], GuestAddress(0x8000)).unwrap();
        mem.write_slice(&[2; 20], GuestAddress(0x9000)).unwrap();
        mem.write_slice(&[3; 50], GuestAddress(0xa000)).unwrap();
        write_desc(&mem, DESC, 0, 0x8000, 30, F_NEXT, 1);
        write_desc(&mem, DESC, 1, 0x9000, 20, 0, 0);
        write_desc(&mem, DESC, 2, 0xa000, 50, 0, 0);
        // A chain whose second buffer lies in the hole between the regions.
        write_desc(&mem, DESC, 3, 0xa000, 50, F_NEXT, 4);
        write_desc(&mem, DESC, 4, 0x18000, 10, 0, 0);
        let mut buf = TxBuffer::for_frames(2);
        let first = copy_tx_chain(&ring, 0, &mut buf).unwrap();
        assert_eq!(
            copy_tx_chain(&ring, 3, &mut buf),
            Err(DropReason::DescriptorOutOfMemory)
        );
        let second = copy_tx_chain(&ring, 2, &mut buf).unwrap();
        // The refused chain left nothing behind: the second follows the first directly.
        assert_eq!((first.start, first.end, second.start), (0, 50, 50));
        assert_eq!(buf.chain(first), [[1u8; 30].as_slice(), &[2; 20]].concat());
        assert_eq!(buf.chain(second), [3u8; 50]);
        // A chain longer than one frame may be is refused even with room left.
        write_desc(&mem, DESC, 5, 0, 0x10000, F_NEXT, 6);
        write_desc(&mem, DESC, 6, 0x20000, 0x10000, 0, 0);
        const { assert!(0x20000 > MAX_TX_CHAIN_LEN) };
        assert_eq!(
            copy_tx_chain(&ring, 5, &mut buf),
            Err(DropReason::Oversized)
        );
        buf.clear();
        assert_eq!(copy_tx_chain(&ring, 2, &mut buf).unwrap().start, 0);
    }

    #[test]
    fn direct_and_indirect_chains_are_followed() {
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(false);
        let ring = SplitRing::new(&map, &q).unwrap();
        write_desc(&mem, DESC, 3, 0x8000, 100, F_NEXT, 7);
        write_desc(&mem, DESC, 7, 0x9000, 200, F_WRITE, 0);
        assert_eq!(
            collect(&ring, 3),
            Ok(vec![(0x8000, 100, false), (0x9000, 200, true)])
        );
        // An indirect table of two, deliberately misaligned (8 bytes off).
        let table = 0x4008;
        write_desc(&mem, table, 0, 0xa000, 10, F_NEXT, 1);
        write_desc(&mem, table, 1, 0xb000, 20, 0, 0);
        write_desc(&mem, DESC, 4, table, 32, F_INDIRECT, 0);
        assert_eq!(
            collect(&ring, 4),
            Ok(vec![(0xa000, 10, false), (0xb000, 20, false)])
        );
    }

    #[test]
    fn hostile_chains_end_with_an_error() {
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(false);
        let ring = SplitRing::new(&map, &q).unwrap();
        let last = |head| ring.chain(head).last().unwrap();
        // Head beyond the ring.
        assert_eq!(last(SIZE), Err(ChainError::HeadOutOfRange));
        // A loop of two.
        write_desc(&mem, DESC, 1, 0x8000, 64, F_NEXT, 2);
        write_desc(&mem, DESC, 2, 0x8000, 64, F_NEXT, 1);
        assert_eq!(last(1), Err(ChainError::Loop));
        assert_eq!(
            ring.chain(1).count(),
            SIZE as usize + 1,
            "bounded by the ring"
        );
        // `next` beyond the ring.
        write_desc(&mem, DESC, 3, 0x8000, 64, F_NEXT, 4000);
        assert_eq!(last(3), Err(ChainError::Loop));
        // Indirect tables: outside memory, in the hole, a partial descriptor, empty, with
        // NEXT, nested.
        let table = 0x5000;
        for (addr, len, flags) in [
            (0x100_0000, 32, F_INDIRECT),
            (0x1fff0, 32, F_INDIRECT),
            (table, 24, F_INDIRECT),
            (table, 0, F_INDIRECT),
            (table, 32, F_INDIRECT | F_NEXT),
        ] {
            write_desc(&mem, DESC, 5, addr, len, flags, 6);
            assert_eq!(
                last(5),
                Err(ChainError::BadIndirect),
                "{addr:#x} {len} {flags}"
            );
        }
        write_desc(&mem, table, 0, table, 16, F_INDIRECT, 0);
        write_desc(&mem, DESC, 5, table, 16, F_INDIRECT, 0);
        assert_eq!(last(5), Err(ChainError::BadIndirect), "nested");
        // A loop inside an indirect table is bounded by the table.
        write_desc(&mem, table, 0, 0x8000, 8, F_NEXT, 1);
        write_desc(&mem, table, 1, 0x8000, 8, F_NEXT, 0);
        write_desc(&mem, DESC, 5, table, 32, F_INDIRECT, 0);
        assert_eq!(last(5), Err(ChainError::Loop));
        assert_eq!(ring.chain(5).count(), 3);
    }

    #[test]
    fn rings_outside_memory_or_misaligned_are_refused() {
        let mem = memory();
        let map = GuestMap::of(mem);
        let mut q = queue(false);
        // Runs off the end of the first region (virtio-queue itself refuses misaligned
        // guest addresses; `Misaligned` guards against a mapping that is not page-aligned).
        q.try_set_used_ring_address(GuestAddress(0xfffc)).unwrap();
        assert_eq!(
            SplitRing::new(&map, &q).err(),
            Some(RingError::OutsideMemory)
        );
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        assert!(SplitRing::new(&map, &q).is_ok());
        q.set_ready(false);
        assert_eq!(SplitRing::new(&map, &q).err(), Some(RingError::NotReady));
        assert_eq!(
            SplitRing::new(&GuestMap::new(), &queue(false)).err(),
            Some(RingError::OutsideMemory)
        );
    }

    #[test]
    fn copies_span_regions_and_fail_whole_outside_memory() {
        let mem = Arc::new(
            Mem::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)]).unwrap(),
        );
        let map = GuestMap::of(mem.clone());
        let data: Vec<u8> = (0..=255).collect();
        map.write(0x1000 - 100, &data).unwrap();
        let mut back = vec![0u8; 256];
        map.read(0x1000 - 100, &mut back).unwrap();
        assert_eq!(back, data);
        let mut direct = vec![0u8; 256];
        mem.read_slice(&mut direct, GuestAddress(0x1000 - 100))
            .unwrap();
        assert_eq!(direct, data, "written where vm-memory reads it");
        // Running off the end: an error, and nothing written.
        assert!(map.write(0x2000 - 10, &[0xff; 20]).is_err());
        let mut tail = [0u8; 10];
        mem.read_slice(&mut tail, GuestAddress(0x2000 - 10))
            .unwrap();
        assert_eq!(tail, [0; 10]);
        assert!(map.read(u64::MAX - 4, &mut back[..8]).is_err());
        assert!(!map.contains(0x2000, 1));
        assert!(map.contains(0, 0x2000));
    }

    /// IN_ORDER: a frame spread over several chains, one of them unusable, returns every
    /// chain it took in the order they were posted.
    #[test]
    fn a_bad_merged_rx_chain_is_returned_in_posting_order() {
        use crate::device::queues::{write_rx_frame, Cursor, RxError, RxScratch};
        use crate::net_hdr::VirtioNetHdr;
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(false);
        let ring = SplitRing::new(&map, &q).unwrap();
        // Heads 4 and 9: a 40-byte buffer, too small for the frame, then a read-only one.
        write_desc(&mem, DESC, 4, 0x8000, 40, F_WRITE, 0);
        write_desc(&mem, DESC, 9, 0x9000, 2048, 0, 0);
        mem.write_obj(4u16, GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(9u16, GuestAddress(AVAIL + 6)).unwrap();
        mem.write_obj(2u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut cursor = Cursor::of(&q);
        let result = write_rx_frame(
            &ring,
            &mut cursor,
            VirtioNetHdr::default(),
            12,
            &[7u8; 60],
            true,
            &mut RxScratch::default(),
        );
        assert_eq!(result, Err(RxError::ChainInvalid));
        assert_eq!(cursor.next_used, Wrapping(2));
        let used: [u32; 4] = mem.read_obj(GuestAddress(USED + 4)).unwrap();
        assert_eq!(used, [4, 0, 9, 0], "(id, len) of used elements 0 and 1");
    }

    /// The write-intent prefetch is in the machine code: the intrinsic used before compiled to
    /// nothing for four rounds of measurements without anyone noticing (see `HAS_PREFETCHW`).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn write_prefetches_are_in_the_binary() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        // Keep the code under test reachable from here, whatever the other tests use.
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(false);
        SplitRing::new(&map, &q).unwrap().prefetch_used(Wrapping(0));
        let exe = std::env::current_exe().unwrap();
        let mut objdump = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&exe)
            .stdout(Stdio::piped())
            .spawn()
            .expect("objdump (binutils, which the linker needs anyway) runs");
        let found = BufReader::new(objdump.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("prefetchw"));
        let _ = objdump.kill();
        let _ = objdump.wait();
        assert!(found, "no prefetchw instruction in {}", exe.display());
    }

    #[test]
    fn avail_and_used_indices() {
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(false);
        let ring = SplitRing::new(&map, &q).unwrap();
        mem.write_obj(5u16, GuestAddress(AVAIL + 2)).unwrap();
        mem.write_obj(9u16, GuestAddress(AVAIL + 4 + 2 * 3))
            .unwrap();
        assert_eq!(ring.pending(Wrapping(0)), Some(5));
        assert_eq!(ring.avail_head(Wrapping(3 + SIZE)), 9, "slots wrap");
        // An index more than a ring ahead.
        mem.write_obj(SIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(ring.pending(Wrapping(0)), None);
        ring.put_used(Wrapping(SIZE + 2), 7, 1234);
        ring.publish_used(Wrapping(3));
        let elem: [u32; 2] = mem.read_obj(GuestAddress(USED + 4 + 8 * 2)).unwrap();
        assert_eq!(elem, [7, 1234]);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 3);
    }

    #[test]
    fn notifications_follow_event_idx_or_the_no_interrupt_flag() {
        let mem = memory();
        let map = GuestMap::of(mem.clone());
        let q = queue(true);
        let ring = SplitRing::new(&map, &q).unwrap();
        let used_event = GuestAddress(AVAIL + 4 + 2 * SIZE as u64);
        let mut checked = Wrapping(0);
        // The guest wants to hear when entry 4 (index 5) is used.
        mem.write_obj(4u16, used_event).unwrap();
        assert!(!ring.needs_notification(Wrapping(3), &mut checked));
        assert!(ring.needs_notification(Wrapping(6), &mut checked));
        assert!(
            !ring.needs_notification(Wrapping(6), &mut checked),
            "nothing new"
        );
        assert!(
            !ring.needs_notification(Wrapping(8), &mut checked),
            "already told"
        );

        let q = queue(false);
        let ring = SplitRing::new(&map, &q).unwrap();
        let mut checked = Wrapping(0);
        assert!(ring.needs_notification(Wrapping(1), &mut checked));
        mem.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, GuestAddress(AVAIL))
            .unwrap();
        assert!(!ring.needs_notification(Wrapping(2), &mut checked));

        // Kicks: flags without EVENT_IDX, avail_event with it.
        ring.disable_notification();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 1);
        mem.write_obj(2u16, GuestAddress(AVAIL + 2)).unwrap();
        assert!(ring.enable_notification(Wrapping(1)), "one more was posted");
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 0);
        let ring = SplitRing::new(&map, &queue(true)).unwrap();
        assert!(!ring.enable_notification(Wrapping(2)));
        let avail_event = GuestAddress(USED + 4 + 8 * SIZE as u64);
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    }
}

//! The daemon's allocator: the system allocator, with large allocations backed by transparent
//! huge pages where the kernel leaves that to the program (THP mode `madvise`, Debian's
//! default).
//!
//! Why: the connection-tracking tables are tens of MiB per vNIC and every lookup lands on a
//! random line of them. With 4 KiB pages, each lookup also misses the TLB and walks the page
//! table; with 2 MiB pages the walk mostly stays cached (in-process, 1M established lookups
//! took 0.77–0.83× the time with huge pages; end to end, 1M concurrent flows 1.12× the packet
//! rate). Small allocations are left alone: a huge page for a few KiB would only inflate the
//! resident size. Off by default (config `huge_pages`): a table growing under a flood of new
//! connections faults in huge pages, which may mean direct memory compaction on the packet
//! path (new connections/s measured 0.82×).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations from this size up are advised to use huge pages. Large enough that the
/// per-burst frame arenas (~2 MiB) and per-vNIC buffers are not; the connection tables are.
pub const HUGE_FROM: usize = 8 << 20;

const HUGE_PAGE: usize = 2 << 20;

/// Whether [`HugeTableAlloc`] advises huge pages (config `huge_pages`, off by default).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the huge-page advice on or off for the allocations made from now on.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// [`System`], with `madvise(MADV_HUGEPAGE)` on allocations of [`HUGE_FROM`] bytes or more.
pub struct HugeTableAlloc;

impl HugeTableAlloc {
    fn advise(ptr: *mut u8, size: usize) {
        if ptr.is_null() || size < HUGE_FROM || !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        // Only the whole huge pages inside the block: advice is per page range.
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize + size) & !(HUGE_PAGE - 1);
        if end > start {
            // SAFETY: `[start, end)` lies inside the block just allocated for our caller;
            // MADV_HUGEPAGE only changes how the kernel backs it, never its contents, and a
            // failure (e.g. THP disabled) leaves it as it was.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// advice afterwards does not touch the memory's contents or ownership.
unsafe impl GlobalAlloc for HugeTableAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        Self::advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        Self::advise(p, new_size);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the AnonHugePages of the mapping holding `addr` from /proc/self/smaps.
    fn anon_huge_kib(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    return v.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    fn thp_mode() -> String {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
    }

    #[test]
    fn large_blocks_get_huge_pages_small_ones_do_not() {
        if !thp_mode().contains("[madvise]") {
            eprintln!("THP mode is not `madvise` here; the advice is moot, nothing to check");
            return;
        }
        set_enabled(true);
        let a = HugeTableAlloc;
        let big = Layout::from_size_align(32 << 20, 64).unwrap();
        let small = Layout::from_size_align(4 << 20, 64).unwrap();
        // SAFETY: non-zero layouts; each block is touched within its size and freed with
        // the layout it was allocated with.
        unsafe {
            let b = a.alloc(big);
            let s = a.alloc(small);
            assert!(!b.is_null() && !s.is_null());
            std::ptr::write_bytes(b, 1, big.size());
            std::ptr::write_bytes(s, 1, small.size());
            let huge_big = anon_huge_kib(b as usize + (16 << 20)).unwrap_or(0);
            let huge_small = anon_huge_kib(s as usize + (2 << 20)).unwrap_or(0);
            a.dealloc(b, big);
            a.dealloc(s, small);
            assert!(
                huge_big >= 2048,
                "32 MiB block: {huge_big} kB in huge pages"
            );
            assert_eq!(huge_small, 0, "4 MiB block got huge pages");
        }
    }
}

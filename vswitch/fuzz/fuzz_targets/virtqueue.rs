//! Hostile virtqueues: the fuzz input is written over a small guest memory holding the
//! descriptor table and rings, then the TX copy path and the RX write path walk whatever
//! chains it describes. Must never panic, hang or touch memory outside the guest region.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vswitch::device::queues::{copy_tx_chain, write_rx_frame, Cursor, RxScratch, TxBuffer};
use vswitch::device::ring::{GuestMap, SplitRing};
use vswitch::net_hdr::VirtioNetHdr;

const MEM: usize = 0x4000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size = 1u16 << (data[0] % 7); // 1..64
    let mergeable = data[1] & 1 != 0;
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let body = &data[2..];
    mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0))
        .unwrap();
    let map = GuestMap::of(Arc::new(mem));

    let queue = || {
        let mut q = Queue::new(size).unwrap();
        q.set_size(size);
        // Descriptor table at 0, avail ring at 0x1000, used ring at 0x2000 (all inside
        // memory, their content is fuzz data).
        q.try_set_desc_table_address(GuestAddress(0)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(0x1000)).ok()?;
        q.try_set_used_ring_address(GuestAddress(0x2000)).ok()?;
        q.set_ready(true);
        q.set_event_idx(data[1] & 2 != 0);
        Some(q)
    };
    let Some(mut q) = queue() else { return };
    let Ok(ring) = SplitRing::new(&map, &q) else { return };

    // Bursts of 4 chains, as the TX path copies them.
    let mut tx = TxBuffer::for_frames(4);
    let mut cursor = Cursor::of(&q);
    for k in 0..4 * size as usize {
        let Some(head) = cursor.pop(&ring) else { break };
        if k % 4 == 0 {
            tx.clear();
        }
        if let Ok(span) = copy_tx_chain(&ring, head, &mut tx) {
            assert_eq!(tx.chain(span).len(), span.len());
        }
        cursor.add_used(&ring, head, 0);
    }
    ring.publish_used(cursor.next_used);
    cursor.store(&mut q);
    let mut checked = std::num::Wrapping(0);
    let _ = ring.needs_notification(cursor.next_used, &mut checked);

    // Same rings as an RX queue.
    let Some(q) = queue() else { return };
    let mut cursor = Cursor::of(&q);
    let frame = vec![0xa5u8; 3000];
    let mut scratch = RxScratch::default();
    for _ in 0..size {
        if write_rx_frame(
            &ring,
            &mut cursor,
            VirtioNetHdr::default(),
            12,
            &frame,
            mergeable,
            &mut scratch,
        )
        .is_err()
        {
            break;
        }
    }
    ring.publish_used(cursor.next_used);
});

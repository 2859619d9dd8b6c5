//! Hostile virtqueues: the fuzz input is written over a small guest memory holding the
//! descriptor table and rings, then the TX copy path and the RX write path walk whatever
//! chains it describes. Must never panic, hang or touch memory outside the guest region.

#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vswitch::device::queues::{copy_tx_chain, write_rx_frame, RxScratch, TxBuffer};
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

    let mut q = Queue::new(size).unwrap();
    q.set_size(size);
    // Descriptor table at 0, avail ring at 0x1000, used ring at 0x2000 (all inside memory,
    // their content is fuzz data).
    if q.try_set_desc_table_address(GuestAddress(0)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(0x1000)).is_err()
        || q.try_set_used_ring_address(GuestAddress(0x2000)).is_err()
    {
        return;
    }
    q.set_ready(true);
    q.set_event_idx(data[1] & 2 != 0);

    let mut tx = TxBuffer::default();
    let mut budget = 4 * size as usize;
    while let Some(chain) = q.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let _ = copy_tx_chain(&mem, chain, &mut tx);
        let _ = q.add_used(&mem, head, 0);
        budget -= 1;
        if budget == 0 {
            break;
        }
    }
    let _ = q.needs_notification(&mem);

    // Same rings as an RX queue.
    let mut q = Queue::new(size).unwrap();
    q.set_size(size);
    let _ = q.try_set_desc_table_address(GuestAddress(0));
    let _ = q.try_set_avail_ring_address(GuestAddress(0x1000));
    let _ = q.try_set_used_ring_address(GuestAddress(0x2000));
    q.set_ready(true);
    let frame = vec![0xa5u8; 3000];
    let mut scratch = RxScratch::default();
    for _ in 0..size {
        if write_rx_frame(
            &mem,
            &mut q,
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
});

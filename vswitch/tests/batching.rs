//! Batching and overload behaviour of the vNIC data path, driven over real vhost-user sockets
//! by the test VMM in `common`. In its own test binary because these tests hold several
//! sessions open for a while, which would disturb `vhost_user.rs`'s process-wide fd count.

mod common;

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use common::*;
use vswitch::counters::DropReason;
use vswitch::device::PollConfig;
use vswitch::net_hdr::VirtioNetHdr;

/// Without EVENT_IDX every batch is signalled, so the call counts show the batches: a kick
/// with 500 chains is handled as two TX batches (TX_BUDGET = 256 chains, the rest through the
/// resume doorbell without another kick), each signalling the sender once and, through direct
/// writes into the receiver's RX ring, the receiver once.
#[test]
fn one_kick_is_drained_in_budgeted_batches_signalled_once_each() {
    let mut net = Net::new();
    let cfg = GuestConfig {
        queue_size: 1024,
        ..GuestConfig::plain()
    };
    let (_pa, mut a) = net.vnic_with_inbox(1, 1024, cfg);
    let (pb, mut b) = net.vnic_with_inbox(2, 1024, cfg);
    assert_eq!(a.features & F_EVENT_IDX, 0);
    b.post_rx(1000, 2048);
    // Let B's worker finish handling that RX kick: the direct path never waits for it.
    std::thread::sleep(Duration::from_millis(100));
    let _ = (a.tx.calls(), b.rx.calls());
    for i in 0..500u32 {
        a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 2, &i.to_be_bytes()));
    }
    a.tx.kick();
    a.wait_tx_used(500);
    for i in 0..500u32 {
        assert_eq!(b.recv().1, tcp_frame(1, 2, &i.to_be_bytes()), "in order");
    }
    assert_eq!(a.tx.calls(), 2, "TX: one notification per budgeted batch");
    assert_eq!(b.rx.calls(), 2, "RX: one notification per sender batch");
    assert_eq!(pb.counters.snapshot().rx_packets, 500);
    assert!(pb.inbox.is_empty());
}

/// A receiver whose guest posts no RX buffers does not cost the sender its other traffic:
/// frames for it wait in its backlog (then are dropped there, counted on it), while frames to
/// a third vNIC keep flowing.
#[test]
fn a_stalled_receiver_only_loses_its_own_frames() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic_with_inbox(1, 1024, GuestConfig::full());
    let (pb, _b) = net.vnic_with_inbox(2, 8, GuestConfig::full());
    let (pc, mut c) = net.vnic_with_inbox(3, 1024, GuestConfig::full());
    c.post_rx(64, 2048);
    for i in 0..40u8 {
        a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i; 64]));
        a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 3, &[i; 64]));
    }
    a.tx.kick();
    a.wait_tx_used(80);
    for i in 0..40u8 {
        assert_eq!(c.recv().1, tcp_frame(1, 3, &[i; 64]));
    }
    wait_for("B's backlog to fill", || pb.inbox.len() == 8);
    assert_eq!(pb.counters.drops(DropReason::BacklogFull), 32);
    assert_eq!(pc.counters.snapshot().total_drops(), 0);
}

/// `used.flags` of a ring: bit 0 is VRING_USED_F_NO_NOTIFY ("do not kick me").
fn used_flags(vm: &TestVm, ring: &Ring) -> u16 {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    u16::from_le(vm.mem.read_obj(GuestAddress(ring.used)).unwrap())
}

/// Busy-poll mode: after a kick the worker keeps polling for the poll window, so chains the
/// guest posts without kicking are still forwarded (and the guest is told not to kick); once
/// the window passes without traffic it re-arms the notification and sleeps, so a chain
/// posted without a kick waits for the kick.
#[test]
fn poll_mode_forwards_unkicked_chains_and_sleeps_when_idle() {
    let mut net = Net::new();
    let window = Duration::from_millis(300);
    net.pipeline
        .start_polling(&PollConfig {
            threads: 1,
            cpus: vec![],
            idle: window,
        })
        .unwrap();
    let (_pa, mut a) = net.vnic_with_inbox(1, 1024, GuestConfig::plain());
    let (_pb, mut b) = net.vnic_with_inbox(2, 1024, GuestConfig::plain());
    b.post_rx(64, 2048);
    // Both workers idle for longer than the window: asleep, notifications armed.
    std::thread::sleep(window * 2);
    // (On a loaded machine the thread may take a little longer to go to sleep.)
    wait_for("idle: the guest must kick", || {
        used_flags(&a, &a.tx) & 1 == 0
    });

    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"kick"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"kick"));
    for i in 0..5u8 {
        // No kick: only a polling worker sees these. Each one restarts the window.
        a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i; 32]));
        assert_eq!(
            b.recv().1,
            tcp_frame(1, 2, &[i; 32]),
            "polled without a kick"
        );
        assert_eq!(
            used_flags(&a, &a.tx) & 1,
            1,
            "polling: the guest need not kick"
        );
    }

    std::thread::sleep(window * 2);
    assert_eq!(
        used_flags(&a, &a.tx) & 1,
        0,
        "idle again: notifications re-armed"
    );
    a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"late"));
    assert!(
        b.try_recv(Duration::from_millis(200)).is_none(),
        "an idle worker sleeps: nothing polls the ring"
    );
    a.tx.kick();
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"late"));
}

/// RX kicks only when needed: a guest without EVENT_IDX is told not to kick on RX refills
/// while nothing waits for its buffers, and asked to once frames wait in the backlog.
#[test]
fn rx_refills_kick_only_while_frames_wait() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic_with_inbox(1, 1024, GuestConfig::plain());
    let (pb, mut b) = net.vnic_with_inbox(2, 1024, GuestConfig::plain());
    b.post_rx(2, 2048);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"one"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"one"));
    wait_for("RX kicks off while the backlog is empty", || {
        used_flags(&b, &b.rx) & 1 == 1
    });

    // One buffer left: the second frame waits, and the guest must kick when it refills.
    for i in 0..2u8 {
        a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i]));
    }
    assert_eq!(b.recv().1, tcp_frame(1, 2, &[0]));
    wait_for("the second frame waits", || pb.inbox.len() == 1);
    // The frame is in the backlog before the worker has armed the notification: wait for it.
    wait_for("frames wait: the guest must kick", || {
        used_flags(&b, &b.rx) & 1 == 0
    });
    b.post_rx(2, 2048);
    assert_eq!(b.recv().1, tcp_frame(1, 2, &[1]));
    wait_for("RX kicks off again", || used_flags(&b, &b.rx) & 1 == 1);
}

//! Poll mode (`vswitch::device::poller`): shared poll threads serve the queues of every vNIC,
//! driven over real vhost-user sockets by the test VMM in `common`. Covers what changes with
//! the threads: sessions handed over and dropped on reconnect, wake-ups from a sleeping
//! thread (RX kick, TX kick), and vNICs split over several threads.

mod common;

use std::time::Duration;

use common::*;
use vswitch::device::PollConfig;
use vswitch::net_hdr::VirtioNetHdr;

fn polling(net: &Net, threads: usize, idle: Duration) {
    net.pipeline
        .start_polling(&PollConfig {
            threads,
            cpus: vec![],
            idle,
        })
        .unwrap();
}

fn attached(net: &Net) -> usize {
    net.pipeline.poll_pool().map_or(0, |p| p.sessions())
}

/// A reconnecting frontend gets a fresh session on the poll thread and the old one is
/// dropped (its guest memory released), while traffic flows on the new one.
#[test]
fn reconnect_hands_the_new_session_over_and_drops_the_old() {
    let mut net = Net::new();
    polling(&net, 1, Duration::from_millis(20));
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (pb, mut b) = net.vnic(2, GuestConfig::full());
    b.post_rx(4, 2048);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"first"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"first"));
    wait_for("both sessions attached", || attached(&net) == 2);

    drop(b);
    wait_for("disconnect", || !pb.is_rx_ready());
    wait_for("old session dropped", || attached(&net) == 1);

    let mut b = TestVm::connect(&net.sock(2), GuestConfig::full());
    wait_rx_ready(&pb);
    b.post_rx(4, 2048);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"second"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"second"));
    assert_eq!(attached(&net), 2);
    assert_eq!(net.runners[1].sessions(), 2);
}

/// A sleeping poll thread is woken by the guest's kicks: a frame sent after an idle period
/// arrives, and a backlog waiting for RX buffers is delivered when the guest posts some.
#[test]
fn a_sleeping_thread_wakes_on_tx_and_rx_kicks() {
    let mut net = Net::new();
    let idle = Duration::from_millis(20);
    polling(&net, 1, idle);
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (_pb, mut b) = net.vnic(2, GuestConfig::full());
    for round in 0..3u8 {
        std::thread::sleep(idle * 5); // asleep now
                                      // No RX buffers yet: the frames wait in B's backlog.
        for i in 0..3u8 {
            a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[round, i]));
        }
        a.wait_tx_used(3);
        std::thread::sleep(idle * 5);
        b.post_rx(3, 2048);
        for i in 0..3u8 {
            assert_eq!(b.recv().1, tcp_frame(1, 2, &[round, i]), "round {round}");
        }
    }
}

/// With two threads and four vNICs (ids 1..=4: two per thread), frames between every
/// pair arrive, including between vNICs on different threads.
#[test]
fn vnics_on_several_threads_reach_each_other() {
    let mut net = Net::new();
    polling(&net, 2, Duration::ZERO);
    let mut vms: Vec<_> = (1..=4u8)
        .map(|n| net.vnic(n, GuestConfig::full()))
        .collect();
    for (_, vm) in vms.iter_mut() {
        vm.post_rx(16, 2048);
    }
    wait_for("four sessions attached", || attached(&net) == 4);
    for from in 1..=4u8 {
        for to in (1..=4u8).filter(|t| *t != from) {
            let frame = tcp_frame(from, to, &[from, to]);
            vms[usize::from(from - 1)]
                .1
                .send(&VirtioNetHdr::default(), &frame);
            assert_eq!(vms[usize::from(to - 1)].1.recv().1, frame);
        }
    }
    net.pipeline.stop_polling();
    assert!(net.pipeline.poll_pool().is_none());
}

/// An awake poll thread (never sleeps) delivers a starved receiver's backlog as soon as
/// the guest posts buffers, without relying on an RX notification.
#[test]
fn an_awake_thread_delivers_the_backlog_when_buffers_appear() {
    let mut net = Net::new();
    polling(&net, 1, Duration::ZERO);
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (pb, mut b) = net.vnic(2, GuestConfig::full());
    wait_rx_ready(&pb);
    for i in 0..5u8 {
        a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i]));
    }
    wait_for("the backlog", || pb.inbox.len() == 5);
    b.post_rx(5, 2048);
    for i in 0..5u8 {
        assert_eq!(b.recv().1, tcp_frame(1, 2, &[i]));
    }
}

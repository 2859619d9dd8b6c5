//! The backend driven over real vhost-user sockets by a test VMM (see `common`): two (or
//! three) vNIC backends in one process, frames between them, hostile descriptors, reconnects
//! and both socket roles.

mod common;

use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use common::*;
use vswitch::checksum::{fold, pseudo_header_sum};
use vswitch::counters::DropReason;
use vswitch::device::{SocketRole, VnicRunner};
use vswitch::net_hdr::{VirtioNetHdr, FLAG_NEEDS_CSUM, GSO_TCPV4};

#[test]
fn frame_from_a_arrives_on_b_with_the_right_header() {
    let mut net = Net::new();
    let (pa, mut a) = net.vnic(1, GuestConfig::full());
    let (pb, mut b) = net.vnic(2, GuestConfig::full());
    b.post_rx(16, 2048);

    let f = tcp_frame(1, 2, b"hello from a");
    a.send(&VirtioNetHdr::default(), &f);
    let (hdr, got) = b.recv();
    assert_eq!(got, f);
    assert_eq!(hdr.num_buffers, 1);
    assert_eq!(hdr.flags, 0);
    assert_eq!(hdr.gso_type, 0);
    // The TX chain came back (used len 0) and the counters moved.
    let used = a.wait_tx_used(1);
    assert_eq!(used[0].1, 0);
    assert_eq!(pa.counters.snapshot().tx_packets, 1);
    assert_eq!(pb.counters.snapshot().rx_packets, 1);
    assert_eq!(pb.counters.snapshot().rx_bytes, f.len() as u64);

    // And the other way round.
    a.post_rx(4, 2048);
    let back = tcp_frame(2, 1, b"reply");
    b.send(&VirtioNetHdr::default(), &back);
    assert_eq!(a.recv().1, back);
}

#[test]
fn batch_is_signalled_once_with_event_idx() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (_pb, mut b) = net.vnic(2, GuestConfig::full());
    assert_ne!(a.features & F_EVENT_IDX, 0);
    b.post_rx(64, 2048);
    let _ = a.tx.calls();
    for i in 0..32u8 {
        a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i; 100]));
    }
    a.tx.kick();
    a.wait_tx_used(32);
    for i in 0..32u8 {
        assert_eq!(
            b.recv().1,
            tcp_frame(1, 2, &[i; 100]),
            "frames keep their order"
        );
    }
    let calls = a.tx.calls();
    assert!(
        (1..=2).contains(&calls),
        "32 chains in one kick signalled {calls} times"
    );
}

#[test]
fn spoofed_source_does_not_arrive_and_is_counted() {
    let mut net = Net::new();
    let (pa, mut a) = net.vnic(1, GuestConfig::full());
    let (_pb, mut b) = net.vnic(2, GuestConfig::full());
    b.post_rx(8, 2048);

    let mut spoofed = Vec::new();
    PacketBuilder::ethernet2(mac(1).0, mac(2).0)
        .ipv4(ip4(3), ip4(2), 64) // 10.0.0.3 is not vNIC 1's address
        .udp(1000, 2000)
        .write(&mut spoofed, b"spoof")
        .unwrap();
    let mut wrong_mac = tcp_frame(1, 2, b"x");
    wrong_mac[6..12].copy_from_slice(&mac(9).0);
    a.send(&VirtioNetHdr::default(), &spoofed);
    a.send(&VirtioNetHdr::default(), &wrong_mac);
    let good = tcp_frame(1, 2, b"good");
    a.send(&VirtioNetHdr::default(), &good);
    // Delivery is FIFO: if a spoofed frame had got through it would arrive first.
    assert_eq!(b.recv().1, good);
    assert!(b.try_recv(Duration::from_millis(100)).is_none());
    assert_eq!(pa.counters.drops(DropReason::SpoofedSourceIp), 1);
    assert_eq!(pa.counters.drops(DropReason::SpoofedSourceMac), 1);
}

#[test]
fn tso_passes_through_unsegmented_and_is_segmented_for_a_plain_guest() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (_pb, mut b) = net.vnic(2, GuestConfig::full());
    let (_pc, mut c) = net.vnic(3, GuestConfig::plain());
    assert_eq!(c.features & (F_GUEST_CSUM | F_GUEST_TSO4 | F_MRG_RXBUF), 0);
    b.post_rx(64, 2048);
    c.post_rx(64, 2048);

    let payload: Vec<u8> = (0..20000u32).map(|i| (i * 7) as u8).collect();
    for to in [2u8, 3] {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(mac(1).0, mac(to).0)
            .ipv4(ip4(1), ip4(to), 64)
            .tcp(40001, 80, 1000, 64000)
            .ack(5)
            .psh()
            .write(&mut f, &payload)
            .unwrap();
        // Like a guest with TSO+CSUM offload: checksum field seeded with the pseudo-header sum.
        let l4_len = (f.len() - 34) as u32;
        let seed = fold(pseudo_header_sum(
            IpAddr::from(ip4(1)),
            IpAddr::from(ip4(to)),
            6,
            l4_len,
        ));
        f[50..52].copy_from_slice(&seed.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        a.send(&hdr, &f);
        if to == 2 {
            let (h, got) = b.recv();
            assert_eq!(got.len(), f.len(), "one unsegmented super-segment");
            assert_eq!(got, f);
            assert_eq!(h.gso_type, GSO_TCPV4);
            assert_eq!(h.gso_size, 1448);
            assert_eq!(h.flags, FLAG_NEEDS_CSUM);
            assert_eq!((h.csum_start, h.csum_offset, h.hdr_len), (34, 16, 54));
            assert_eq!(h.num_buffers as usize, (12 + f.len()).div_ceil(2048));
        } else {
            let mut rebuilt = Vec::new();
            while rebuilt.len() < payload.len() {
                let (h, seg) = c.recv();
                assert_eq!((h.flags, h.gso_type), (0, 0));
                let s = SlicedPacket::from_ethernet(&seg).unwrap();
                let Some(TransportSlice::Tcp(t)) = &s.transport else {
                    panic!("not tcp")
                };
                assert_eq!(t.checksum(), t.calc_checksum_ipv4(ip4(1), ip4(3)).unwrap());
                assert!(t.payload().len() <= 1448);
                rebuilt.extend_from_slice(t.payload());
            }
            assert_eq!(rebuilt, payload);
        }
    }
}

#[test]
fn backlog_waits_for_rx_buffers_and_is_bounded() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let pb = net.port(2, 8);
    let path = net.sock(2);
    net.runners.push(
        VnicRunner::spawn(pb.clone(), net.pipeline.clone(), &path, SocketRole::Listen).unwrap(),
    );
    let mut b = TestVm::connect(&path, GuestConfig::full());
    wait_rx_ready(&pb);

    // No RX buffers posted: frames wait in the backlog (capacity 8), the rest are dropped.
    for i in 0..12u8 {
        a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i; 64]));
    }
    a.wait_tx_used(12);
    wait_for("backlog drops", || {
        pb.counters.drops(DropReason::BacklogFull) == 4
    });
    assert_eq!(pb.inbox.len(), 8);
    // Posting buffers (RX kick) flushes the backlog, in order.
    b.post_rx(16, 2048);
    for i in 0..8u8 {
        assert_eq!(b.recv().1, tcp_frame(1, 2, &[i; 64]));
    }
    assert!(pb.inbox.is_empty());
}

/// `(index, addr, len, flags, next)` of one descriptor.
type RawDesc = (u16, u64, u32, u16, u16);

/// Publishes a raw descriptor chain on vNIC `vm`'s TX ring.
fn publish_raw(vm: &mut TestVm, descs: &[RawDesc], head: u16) {
    for &(idx, addr, len, flags, next) in descs {
        vm.tx.write_desc(&vm.mem, idx, addr, len, flags, next);
    }
    vm.tx.publish(&vm.mem, head);
}

#[test]
fn hostile_tx_chains_are_consumed_and_counted_while_the_other_vnic_works() {
    let mut net = Net::new();
    let (pa, mut a) = net.vnic(1, GuestConfig::full());
    let (_pb, mut b) = net.vnic(2, GuestConfig::full());
    let (_pc, mut c) = net.vnic(3, GuestConfig::full());
    b.post_rx(16, 2048);
    c.post_rx(16, 2048);
    let buf = a.tx.alloc(70000);
    a.mem
        .write_slice(&vec![0u8; 70000], GuestAddress(buf))
        .unwrap();
    let outside = RAM_SIZE as u64 + 0x1000;
    let (n, w) = (VRING_F_NEXT, VRING_F_WRITE);
    let base = 200u16;
    let chains: Vec<(Vec<RawDesc>, u16, DropReason)> = vec![
        // Buffer outside guest memory.
        (
            vec![(base, outside, 100, 0, 0)],
            base,
            DropReason::DescriptorOutOfMemory,
        ),
        // Two descriptors pointing at each other.
        (
            vec![
                (base + 1, buf, 64, n, base + 2),
                (base + 2, buf, 64, n, base + 1),
            ],
            base + 1,
            DropReason::DescriptorLoop,
        ),
        // Zero-length descriptor.
        (
            vec![(base + 3, buf, 0, 0, 0)],
            base + 3,
            DropReason::ZeroLength,
        ),
        // 2 x 40000 bytes: more than 64 KiB + header.
        (
            vec![
                (base + 4, buf, 40000, n, base + 5),
                (base + 5, buf, 40000, 0, 0),
            ],
            base + 4,
            DropReason::Oversized,
        ),
        // A device-writable descriptor on TX.
        (
            vec![(base + 6, buf, 100, w, 0)],
            base + 6,
            DropReason::WriteOnlyDescriptor,
        ),
        // `next` beyond the ring.
        (
            vec![(base + 7, buf, 100, n, 4000)],
            base + 7,
            DropReason::DescriptorLoop,
        ),
        // Header only, no Ethernet frame.
        (
            vec![(base + 8, buf, 12, 0, 0)],
            base + 8,
            DropReason::ShortFrame,
        ),
    ];
    for (descs, head, _) in &chains {
        publish_raw(&mut a, descs, *head);
    }
    a.tx.kick();
    let used = a.wait_tx_used(chains.len());
    let mut heads: Vec<u32> = used.iter().map(|u| u.0).collect();
    heads.sort();
    let mut expect: Vec<u32> = chains.iter().map(|c| c.1 as u32).collect();
    expect.sort();
    assert_eq!(heads, expect, "every bad chain is returned");
    assert!(used.iter().all(|u| u.1 == 0));
    for (_, _, reason) in &chains {
        assert!(pa.counters.drops(*reason) >= 1, "{reason:?} not counted");
    }
    assert_eq!(pa.counters.drops(DropReason::DescriptorLoop), 2);
    // A head index outside the ring cannot even be returned; it must not break the queue.
    a.tx.publish(&a.mem, 5000);
    a.tx.kick();

    // The other vNICs keep working, and so does the hostile one for valid frames.
    b.send(&VirtioNetHdr::default(), &tcp_frame(2, 3, b"b to c"));
    assert_eq!(c.recv().1, tcp_frame(2, 3, b"b to c"));
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"still alive"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"still alive"));
}

/// The packet path maps guest memory once per memory table: a region the frontend adds
/// later (ADD_MEM_REG, as QEMU sends for hot-plugged memory) must be mapped before the next
/// batch, for TX buffers and RX buffers alike.
#[test]
fn buffers_in_a_memory_region_added_later_are_used() {
    let mut net = Net::new();
    let (pa, mut a) = net.vnic(1, GuestConfig::full());
    let (_pb, mut b) = net.vnic(2, GuestConfig::full());
    b.post_rx(4, 2048);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"before"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"before"));

    let base = 64u64 << 20;
    let frame = tcp_frame(1, 2, b"from hot-plugged memory");
    let mut chain = VirtioNetHdr::default().to_bytes()[..a.hdr_len()].to_vec();
    chain.extend_from_slice(&frame);
    // Not guest memory yet: dropped as such.
    let d = a.tx.take_descs(1);
    a.tx.write_desc(&a.mem, d, base, chain.len() as u32, 0, 0);
    a.tx.publish(&a.mem, d);
    a.tx.kick();
    wait_for("outside memory", || {
        pa.counters.drops(DropReason::DescriptorOutOfMemory) == 1
    });

    let add = |vm: &mut TestVm, ram: &vm_memory::GuestMemoryMmap<()>| {
        let region = ram.iter().next().unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        vm.fe.add_mem_region(&info).unwrap();
    };
    let a_extra = guest_ram_at(GuestAddress(base), 1 << 20);
    a_extra.write_slice(&chain, GuestAddress(base)).unwrap();
    add(&mut a, &a_extra);
    // B's next RX buffer lies in its own new region.
    let b_extra = guest_ram_at(GuestAddress(base), 1 << 20);
    add(&mut b, &b_extra);
    let rd = b.rx.take_descs(1);
    b.rx.write_desc(&b.mem, rd, base + 0x1000, 2048, VRING_F_WRITE, 0);
    // The three chains posted earlier are taken first: use them up.
    for i in 0..3u8 {
        a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, &[i]));
        assert_eq!(b.recv().1, tcp_frame(1, 2, &[i]));
    }
    b.rx.publish(&b.mem, rd);
    b.rx.kick();

    let d = a.tx.take_descs(1);
    a.tx.write_desc(&a.mem, d, base, chain.len() as u32, 0, 0);
    a.tx.publish(&a.mem, d);
    a.tx.kick();
    assert_eq!(b.rx.wait_used(&b.mem), (rd as u32, chain.len() as u32));
    let mut got = vec![0u8; frame.len()];
    b_extra
        .read_slice(&mut got, GuestAddress(base + 0x1000 + a.hdr_len() as u64))
        .unwrap();
    assert_eq!(got, frame);
    assert_eq!(pa.counters.drops(DropReason::DescriptorOutOfMemory), 1);
}

#[test]
fn hostile_rx_chain_is_returned_empty_and_counted() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (pb, mut b) = net.vnic(2, GuestConfig::full());
    // A read-only "RX" buffer, then a good one.
    let d = b.rx.take_descs(1);
    let addr = b.rx.alloc(2048);
    b.rx.write_desc(&b.mem, d, addr, 2048, 0, 0);
    b.rx.publish(&b.mem, d);
    b.post_rx(4, 2048);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"first"));
    let bad = b.rx.wait_used(&b.mem);
    assert_eq!(bad, (d as u32, 0));
    assert_eq!(pb.counters.drops(DropReason::RxChainInvalid), 1);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"second"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"second"));
}

#[test]
fn frontend_can_reconnect_to_a_listening_vnic() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let (pb, b) = net.vnic(2, GuestConfig::full());
    drop(b); // frontend goes away (VM stopped / QEMU restarted)
    wait_for("disconnect", || !pb.is_rx_ready());
    let mut b = TestVm::connect(&net.sock(2), GuestConfig::full());
    wait_rx_ready(&pb);
    b.post_rx(4, 2048);
    a.send(
        &VirtioNetHdr::default(),
        &tcp_frame(1, 2, b"after reconnect"),
    );
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"after reconnect"));
    assert_eq!(net.runners[1].sessions(), 2);
}

#[test]
fn connect_role_reaches_a_listening_frontend_and_reconnects() {
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(1, GuestConfig::full());
    let pb = net.port(2, 64);
    let path = net.sock(2);
    // The frontend listens (QEMU server=on). Start vdfwd first: it must retry until then.
    let runner =
        VnicRunner::spawn(pb.clone(), net.pipeline.clone(), &path, SocketRole::Connect).unwrap();
    std::thread::sleep(Duration::from_millis(250));
    let listener = UnixListener::bind(&path).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut b = TestVm::from_stream(stream, GuestConfig::full());
    wait_rx_ready(&pb);
    b.post_rx(4, 2048);
    a.send(
        &VirtioNetHdr::default(),
        &tcp_frame(1, 2, b"to a connect-role vnic"),
    );
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"to a connect-role vnic"));

    // Frontend restarts: vdfwd reconnects by itself.
    drop(b);
    let (stream, _) = listener.accept().unwrap();
    let mut b = TestVm::from_stream(stream, GuestConfig::full());
    wait_rx_ready(&pb);
    b.post_rx(4, 2048);
    a.send(&VirtioNetHdr::default(), &tcp_frame(1, 2, b"again"));
    assert_eq!(b.recv().1, tcp_frame(1, 2, b"again"));
    assert_eq!(runner.sessions(), 2);
    runner.shutdown();
}

#[test]
fn config_space_has_mac_and_link_up() {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::VhostUserFrontend;
    let mut net = Net::new();
    let (_pa, mut a) = net.vnic(7, GuestConfig::full());
    let (_, cfg) =
        a.fe.get_config(0, 10, VhostUserConfigFlags::WRITABLE, &[0u8; 10])
            .unwrap();
    assert_eq!(&cfg[..6], &mac(7).0);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        1,
        "VIRTIO_NET_S_LINK_UP"
    );
}

#[test]
fn ring_of_1024_entries() {
    let mut net = Net::new();
    let cfg = GuestConfig {
        queue_size: 1024,
        ..GuestConfig::full()
    };
    let (_pa, mut a) = net.vnic(1, cfg);
    let (_pb, mut b) = net.vnic(2, cfg);
    b.post_rx(1000, 2048);
    for i in 0..500u32 {
        a.queue_tx(&VirtioNetHdr::default(), &tcp_frame(1, 2, &i.to_be_bytes()));
    }
    a.tx.kick();
    a.wait_tx_used(500); // 2 descriptors each: 1000 of the 1024 in flight
    for i in 0..500u32 {
        assert_eq!(b.recv().1, tcp_frame(1, 2, &i.to_be_bytes()));
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Set in the child process [`reconnects_do_not_leak_fds_or_threads`] runs its body in.
const FD_CHILD: &str = "VSWITCH_FD_LEAK_CHILD";

/// The fd and thread counts are process-wide, so other tests of this binary running in
/// parallel would disturb them: the body runs alone in a child process of this binary.
#[test]
fn reconnects_do_not_leak_fds_or_threads() {
    if std::env::var_os(FD_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "reconnects_do_not_leak_fds_or_threads",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(FD_CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child run failed:\n{text}");
        assert!(text.contains("1 passed"), "child ran no test:\n{text}");
        return;
    }
    let mut net = Net::new();
    let (pb, b) = net.vnic(2, GuestConfig::full());
    drop(b);
    wait_for("disconnect", || !pb.is_rx_ready());
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let (fds0, th0) = (open_fds(), threads());
    for _ in 0..20 {
        let b = TestVm::connect(&net.sock(2), GuestConfig::full());
        wait_rx_ready(&pb);
        drop(b);
        wait_for("disconnect", || !pb.is_rx_ready());
    }
    std::thread::sleep(Duration::from_millis(100));
    let (fds1, th1) = (open_fds(), threads());
    eprintln!("fds {fds0} -> {fds1}, threads {th0} -> {th1}");
    assert!(fds1 <= fds0 + 2, "fd leak: {fds0} -> {fds1}");
    assert!(th1 <= th0 + 1, "thread leak: {th0} -> {th1}");
}

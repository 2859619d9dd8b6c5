//! The TAP uplink against the real kernel, inside a private network namespace created by the
//! test (no traffic leaves it): bridge `br0` with the uplink TAP and a peer TAP the test reads
//! and writes, plus a vNIC driven over vhost-user by the test VMM.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use common::*;
use vswitch::checksum::{fold, pseudo_header_sum};
use vswitch::device::{SocketRole, VnicRunner};
use vswitch::filter::InsecureAllowAll;
use vswitch::mac::MacAddr;
use vswitch::net_hdr::{VirtioNetHdr, FLAG_NEEDS_CSUM, GSO_TCPV4};
use vswitch::pipeline::Pipeline;
use vswitch::port::{PortId, UplinkPort, VnicIdentity, VnicPort};
use vswitch::uplink::{attach_to_bridge, set_link_up, TapUplink};

const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const VM_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x99];

fn create_bridge(name: &str) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: plain socket + SIOCBRADDBR with a NUL-terminated name that outlives the call.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(s >= 0);
        assert_eq!(
            libc::ioctl(s, SIOCBRADDBR as _, c.as_ptr()),
            0,
            "SIOCBRADDBR: {}",
            std::io::Error::last_os_error()
        );
        libc::close(s);
    }
    set_link_up(name).unwrap();
}

/// A plain TAP (no vnet header, no offloads): the "rest of the network" behind the bridge.
fn peer_tap(name: &str) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .unwrap();
    // SAFETY: ifreq is plain data; TUNSETIFF gets a pointer to it for the call only.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        assert_eq!(
            libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr),
            0
        );
    }
    set_link_up(name).unwrap();
    f
}

/// Reads frames from the peer TAP until one satisfies `want` (the kernel may send its own).
fn read_peer(peer: &mut File, mut want: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 70000];
    loop {
        match peer.read(&mut buf) {
            Ok(n) if want(&buf[..n]) => return buf[..n].to_vec(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("peer read: {e}"),
        }
        assert!(Instant::now() < deadline, "timed out reading the peer TAP");
    }
}

fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) affects only this thread (and threads it creates).
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (needs root)",
            std::io::Error::last_os_error()
        );
        // Quiet the namespace: no IPv6 ND/MLD chatter from the new interfaces. /proc/sys/net
        // shows the namespace of the thread that opens it.
        for p in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{p}/disable_ipv6"), "1");
        }
        f()
    })
    .join()
    .unwrap();
}

#[test]
fn uplink_tap_through_a_linux_bridge() {
    in_private_netns(|| {
        create_bridge("br0");
        let mut peer = peer_tap("peer0");
        attach_to_bridge("peer0", "br0").unwrap();

        let pipeline = Arc::new(Pipeline::new(Arc::new(InsecureAllowAll)));
        let uplink = Arc::new(TapUplink::create("vdfwup0", Some("br0")).unwrap());
        let _reader = uplink.spawn_reader(pipeline.clone()).unwrap();
        pipeline.set_uplink(Some(uplink.clone()));

        let port = Arc::new(
            VnicPort::new(
                PortId(1),
                VnicIdentity {
                    name: "vm1".into(),
                    ..Default::default()
                },
                VM_MAC,
                &[IpAddr::from([10, 0, 0, 1])],
            )
            .unwrap(),
        );
        pipeline.add_vnic(port.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vm1.sock");
        let _runner =
            VnicRunner::spawn(port.clone(), pipeline.clone(), &sock, SocketRole::Listen).unwrap();
        let mut vm = TestVm::connect(&sock, GuestConfig::full());
        wait_rx_ready(&port);
        vm.post_rx(64, 2048);

        // Network -> bridge -> uplink TAP -> vNIC.
        let mut f = Vec::new();
        PacketBuilder::ethernet2(PEER_MAC, VM_MAC.0)
            .ipv4([10, 0, 0, 99], [10, 0, 0, 1], 64)
            .udp(5000, 6000)
            .write(&mut f, b"from the network")
            .unwrap();
        peer.write_all(&f).unwrap();
        let (_, got) = vm.recv();
        assert_eq!(got, f);

        // Broadcast ARP for the VM's IP reaches the VM.
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&PEER_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&PEER_MAC);
        arp.extend_from_slice(&[10, 0, 0, 99, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        peer.write_all(&arp).unwrap();
        let (_, got) = vm.recv();
        assert_eq!(&got[..arp.len()], &arp[..]);

        // vNIC -> uplink TAP -> bridge (learned the peer's MAC) -> peer.
        let mut out = Vec::new();
        PacketBuilder::ethernet2(VM_MAC.0, PEER_MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 99], 64)
            .udp(6000, 5000)
            .write(&mut out, b"to the network")
            .unwrap();
        vm.send(&VirtioNetHdr::default(), &out);
        let got = read_peer(&mut peer, |fr| fr == &out[..]);
        assert_eq!(got, out);

        // A TSO super-segment from the VM is handed to the kernel as GSO (vnet header) and
        // the kernel segments it for the peer, which has no offloads.
        let payload: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
        let mut big = Vec::new();
        PacketBuilder::ethernet2(VM_MAC.0, PEER_MAC)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 99], 64)
            .tcp(44444, 80, 7, 64000)
            .ack(1)
            .write(&mut big, &payload)
            .unwrap();
        let seed = fold(pseudo_header_sum(
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 99]),
            6,
            (big.len() - 34) as u32,
        ));
        big[50..52].copy_from_slice(&seed.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1400,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        vm.send(&hdr, &big);
        let mut rebuilt = Vec::new();
        while rebuilt.len() < payload.len() {
            let seg = read_peer(
                &mut peer,
                |fr| matches!(SlicedPacket::from_ethernet(fr), Ok(s) if matches!(s.transport, Some(TransportSlice::Tcp(ref t)) if t.source_port() == 44444)),
            );
            let s = SlicedPacket::from_ethernet(&seg).unwrap();
            let Some(TransportSlice::Tcp(t)) = &s.transport else {
                unreachable!()
            };
            assert!(t.payload().len() <= 1400, "segmented by the kernel");
            assert_eq!(
                t.checksum(),
                t.calc_checksum_ipv4([10, 0, 0, 1], [10, 0, 0, 99]).unwrap()
            );
            rebuilt.extend_from_slice(t.payload());
        }
        assert_eq!(rebuilt, payload);
        let up = uplink.counters().snapshot();
        assert!(up.rx_packets >= 2 && up.tx_packets >= 2, "{up:?}");
    });
}

//! Run-time changes through the `Dataplane` API while frames flow: adding and removing vNICs,
//! and swapping the filter (what the API server will drive).

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etherparse::PacketBuilder;

use common::*;
use vswitch::config::VnicConfig;
use vswitch::counters::DropReason;
use vswitch::dataplane::Dataplane;
use vswitch::device::SocketRole;
use vswitch::filter::{FailClosed, InsecureAllowAll};
use vswitch::mac::MacAddr;
use vswitch::net_hdr::VirtioNetHdr;
use vswitch::port::{PortId, VnicPort};

fn cfg(dir: &std::path::Path, n: u8) -> VnicConfig {
    VnicConfig {
        name: format!("vm{n}-eth0"),
        socket: dir.join(format!("vm{n}.sock")),
        role: SocketRole::Listen,
        vm: format!("vm{n}"),
        namespace: "default".into(),
        labels: [("app".to_owned(), format!("app{n}"))]
            .into_iter()
            .collect(),
        mac: MacAddr([0x52, 0x54, 0, 0, 0, n]),
        ips: vec![IpAddr::from([10, 0, 0, n])],
        ports: vec![],
    }
}

fn frame(from: u8, to: u8, tag: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, from], [0x52, 0x54, 0, 0, 0, to])
        .ipv4([10, 0, 0, from], [10, 0, 0, to], 64)
        .udp(1000, 2000)
        .write(&mut f, tag)
        .unwrap();
    f
}

fn attach(dp: &Dataplane, dir: &std::path::Path, n: u8) -> (PortId, Arc<VnicPort>, TestVm) {
    let c = cfg(dir, n);
    let id = dp.add_vnic(&c).unwrap();
    let port = dp.pipeline().table().vnic(id).unwrap().clone();
    assert_eq!(port.identity.labels["app"], format!("app{n}"));
    let mut vm = TestVm::connect(&c.socket, GuestConfig::full());
    wait_rx_ready(&port);
    vm.post_rx(32, 2048);
    (id, port, vm)
}

#[test]
fn vnics_and_filters_change_while_traffic_flows() {
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::new(Arc::new(InsecureAllowAll));
    let (_ia, pa, mut a) = attach(&dp, dir.path(), 1);
    let (ib, _pb, mut b) = attach(&dp, dir.path(), 2);
    let h = VirtioNetHdr::default();

    a.send(&h, &frame(1, 2, b"1"));
    assert_eq!(b.recv().1, frame(1, 2, b"1"));

    // Add a vNIC at run time; existing ones keep working.
    let (_ic, _pc, mut c) = attach(&dp, dir.path(), 3);
    a.send(&h, &frame(1, 3, b"2"));
    a.send(&h, &frame(1, 2, b"3"));
    assert_eq!(c.recv().1, frame(1, 3, b"2"));
    assert_eq!(b.recv().1, frame(1, 2, b"3"));

    // Remove one: its frontend is disconnected and its socket goes away; frames for it now
    // have no route (no uplink here) and are counted on the sender.
    dp.remove_vnic(ib).unwrap();
    assert!(!cfg(dir.path(), 2).socket.exists());
    a.send(&h, &frame(1, 2, b"4"));
    a.wait_tx_used(4);
    wait_for("no_route drop", || {
        pa.counters.drops(DropReason::NoRoute) == 1
    });
    assert!(b.try_recv(Duration::from_millis(50)).is_none());

    // Swap the filter: fail closed.
    dp.set_filter(Arc::new(FailClosed));
    a.send(&h, &frame(1, 3, b"5"));
    wait_for("policy drop", || {
        pa.counters.drops(DropReason::PolicyNotRealized) == 1
    });
    dp.set_filter(Arc::new(InsecureAllowAll));
    a.send(&h, &frame(1, 3, b"6"));
    assert_eq!(
        c.recv().1,
        frame(1, 3, b"6"),
        "frame 5 was dropped, 6 passes"
    );

    let status = dp.status();
    assert_eq!(status.len(), 2);
    let sa = status.iter().find(|s| s.name == "vm1-eth0").unwrap();
    assert!(sa.connected);
    assert_eq!(sa.tx_packets, 6);
    assert_eq!(sa.drops.get("no_route"), Some(&1));
    dp.shutdown();
    assert!(!cfg(dir.path(), 1).socket.exists());
}

//! A pipeline with vNIC backends served on real vhost-user sockets, and test VMs connected to
//! them: the set-up the backend tests share.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use etherparse::PacketBuilder;
use vswitch::device::{SocketRole, VnicRunner};
use vswitch::filter::InsecureAllowAll;
use vswitch::mac::MacAddr;
use vswitch::pipeline::Pipeline;
use vswitch::port::{PortId, VnicIdentity, VnicPort};

use super::{wait_rx_ready, GuestConfig, TestVm};

pub fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

pub fn ip4(n: u8) -> [u8; 4] {
    [10, 0, 0, n]
}

pub struct Net {
    pub pipeline: Arc<Pipeline>,
    pub dir: tempfile::TempDir,
    pub runners: Vec<VnicRunner>,
}

impl Net {
    pub fn new() -> Net {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        Net {
            pipeline: Arc::new(Pipeline::new(Arc::new(InsecureAllowAll))),
            dir: tempfile::tempdir().unwrap(),
            runners: Vec::new(),
        }
    }

    pub fn sock(&self, n: u8) -> PathBuf {
        self.dir.path().join(format!("vnic{n}.sock"))
    }

    pub fn port(&self, n: u8, inbox: usize) -> Arc<VnicPort> {
        let ips: Vec<IpAddr> = vec![IpAddr::from(ip4(n))];
        let port = Arc::new(
            VnicPort::with_inbox_capacity(
                PortId(n as u32),
                VnicIdentity {
                    name: format!("vm{n}"),
                    ..Default::default()
                },
                mac(n),
                &ips,
                inbox,
            )
            .unwrap(),
        );
        self.pipeline.add_vnic(port.clone()).unwrap();
        port
    }

    /// A vNIC served in listen role, and a connected test VM.
    pub fn vnic(&mut self, n: u8, cfg: GuestConfig) -> (Arc<VnicPort>, TestVm) {
        self.vnic_with_inbox(n, 1024, cfg)
    }

    /// [`Net::vnic`] with an inbox of `inbox` frames.
    pub fn vnic_with_inbox(
        &mut self,
        n: u8,
        inbox: usize,
        cfg: GuestConfig,
    ) -> (Arc<VnicPort>, TestVm) {
        let port = self.port(n, inbox);
        let path = self.sock(n);
        self.runners.push(
            VnicRunner::spawn(
                port.clone(),
                self.pipeline.clone(),
                &path,
                SocketRole::Listen,
            )
            .unwrap(),
        );
        let vm = TestVm::connect(&path, cfg);
        wait_rx_ready(&port);
        (port, vm)
    }
}

pub fn tcp_frame(from: u8, to: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(from).0, mac(to).0)
        .ipv4(ip4(from), ip4(to), 64)
        .tcp(40000 + from as u16, 80, 1, 64000)
        .ack(1)
        .write(&mut f, payload)
        .unwrap();
    f
}

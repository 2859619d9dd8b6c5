//! A minimal VMM + virtio-net driver for driving vdfwd's backend from Rust tests, without QEMU.
//!
//! It plays QEMU's part on the vhost-user socket (memfd guest RAM, SET_MEM_TABLE, vring setup,
//! kick/call eventfds) and the guest driver's part on the split rings (descriptors, avail ring,
//! used ring), with enough control to build hostile descriptor chains.

#![allow(dead_code)]

pub mod net;
#[allow(unused_imports)]
pub use net::*;

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vswitch::net_hdr::{VirtioNetHdr, VNET_HDR_LEN};
use vswitch::port::VnicPort;

pub const RAM_SIZE: usize = 16 << 20;
pub const VRING_F_NEXT: u16 = 1;
pub const VRING_F_WRITE: u16 = 2;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Guest RAM shared with the backend through a memfd, as QEMU's `memory-backend-memfd`.
pub fn guest_ram(size: usize) -> GuestMemoryMmap<()> {
    guest_ram_at(GuestAddress(0), size)
}

/// Like [`guest_ram`], one region at guest address `base` (hot-plugged memory).
pub fn guest_ram_at(base: GuestAddress, size: usize) -> GuestMemoryMmap<()> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the returned fd is owned by File.
    let fd = unsafe { libc::memfd_create(c"vdfw-test-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(base, size, Some(FileOffset::new(file, 0)))]).unwrap()
}

/// Driver side of one split virtqueue.
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    pub used_seen: u16,
    pub kick: EventFd,
    pub call: EventFd,
    /// Guest buffers of this ring: `[buf_base, buf_base + buf_len)`.
    buf_base: u64,
    buf_len: u64,
    buf_next: u64,
}

impl Ring {
    fn new(size: u16, base: u64, buf_base: u64, buf_len: u64) -> Ring {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64 + 3) & !3;
        Ring {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
            buf_base,
            buf_len,
            buf_next: buf_base,
        }
    }

    /// Reserves `len` bytes of this ring's buffer area (wrapping; tests keep few in flight).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = (len + 63) & !63;
        if self.buf_next + len > self.buf_base + self.buf_len {
            self.buf_next = self.buf_base;
        }
        let a = self.buf_next;
        self.buf_next += len;
        a
    }

    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap<()>,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * idx as u64))
            .unwrap();
    }

    /// Takes `n` consecutive descriptor slots, returning the first.
    pub fn take_descs(&mut self, n: u16) -> u16 {
        if self.next_desc + n > self.size {
            self.next_desc = 0;
        }
        let first = self.next_desc;
        self.next_desc += n;
        first
    }

    /// Publishes `head` on the avail ring (does not kick). Also asks for a notification on
    /// the next used entry (EVENT_IDX `used_event`).
    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, head: u16) {
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
        let used_event = self.avail + 4 + 2 * self.size as u64;
        mem.write_obj(self.used_seen.to_le(), GuestAddress(used_event))
            .unwrap();
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> u16 {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    /// Next unseen used element `(id, len)`, if any.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap<()>) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let at = self.used + 4 + 8 * (self.used_seen % self.size) as u64;
        let id: u32 = u32::from_le(mem.read_obj(GuestAddress(at)).unwrap());
        let len: u32 = u32::from_le(mem.read_obj(GuestAddress(at + 4)).unwrap());
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// Waits for the next used element.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap<()>) -> (u32, u32) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(u) = self.pop_used(mem) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a used entry"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Number of call notifications since the last read.
    pub fn calls(&self) -> u64 {
        self.call.read().unwrap_or(0)
    }
}

/// Feature set a test guest negotiates.
#[derive(Clone, Copy)]
pub struct GuestConfig {
    /// Virtio feature bits acked (masked by what the device offers).
    pub features: u64,
    pub queue_size: u16,
}

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

impl GuestConfig {
    /// Everything, like a modern Linux guest.
    pub fn full() -> GuestConfig {
        GuestConfig {
            features: u64::MAX,
            queue_size: 256,
        }
    }

    /// VERSION_1 only: no offloads, no mergeable buffers, no EVENT_IDX.
    pub fn plain() -> GuestConfig {
        GuestConfig {
            features: F_VERSION_1,
            queue_size: 256,
        }
    }
}

/// One test VM with one virtio-net device on a vhost-user socket.
pub struct TestVm {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap<()>,
    pub rx: Ring,
    pub tx: Ring,
    pub features: u64,
    rx_buf_len: u32,
}

impl TestVm {
    /// Connects to a backend listening on `path` (vdfwd listen role).
    pub fn connect(path: &Path, cfg: GuestConfig) -> TestVm {
        let stream = UnixStream::connect(path).unwrap();
        Self::from_stream(stream, cfg)
    }

    /// Uses an accepted connection (vdfwd connect role).
    pub fn from_stream(stream: UnixStream, cfg: GuestConfig) -> TestVm {
        let raw = stream.try_clone().unwrap();
        Self::setup(Frontend::from_stream(stream, 2), raw, cfg)
    }

    /// Negotiates like QEMU 7.2's vhost-user net: including the `SET_VRING_ENABLE` it sends
    /// when the device is realized, before `SET_FEATURES` (written raw on `raw`, since the
    /// vhost crate's frontend refuses to send it that early).
    fn setup(mut fe: Frontend, raw: UnixStream, cfg: GuestConfig) -> TestVm {
        let mem = guest_ram(RAM_SIZE);
        let q = cfg.queue_size;
        let rx = Ring::new(q, 0x0, 1 << 20, 6 << 20);
        let tx = Ring::new(q, 0x8_0000, 8 << 20, 7 << 20);

        let offered = fe.get_features().unwrap();
        assert_ne!(
            offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        let pf = fe.get_protocol_features().unwrap();
        assert!(pf.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
        assert!(pf.contains(VhostUserProtocolFeatures::CONFIG));
        fe.set_protocol_features(
            pf & (VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS),
        )
        .unwrap();
        fe.set_owner().unwrap();
        for q in 0..2u32 {
            // VHOST_USER_SET_VRING_ENABLE (18), flags VERSION, 8-byte payload {index, enable}.
            let mut m = Vec::new();
            for w in [18u32, 1, 8, q, 1] {
                m.extend_from_slice(&w.to_le_bytes());
            }
            std::io::Write::write_all(&mut &raw, &m).unwrap();
        }
        // Every message below waits for the backend's ack, so setup is synchronous.
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let features = (offered & cfg.features) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        fe.set_features(features).unwrap();

        let region = mem.iter().next().unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        fe.set_mem_table(&[info]).unwrap();

        for (i, r) in [&rx, &tx].into_iter().enumerate() {
            let va = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
            fe.set_vring_num(i, r.size).unwrap();
            fe.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: r.size,
                    queue_size: r.size,
                    flags: 0,
                    desc_table_addr: va(r.desc),
                    used_ring_addr: va(r.used),
                    avail_ring_addr: va(r.avail),
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(i, 0).unwrap();
            fe.set_vring_call(i, &r.call).unwrap();
            fe.set_vring_kick(i, &r.kick).unwrap();
            fe.set_vring_enable(i, true).unwrap();
        }
        TestVm {
            fe,
            mem,
            rx,
            tx,
            features,
            rx_buf_len: 2048,
        }
    }

    pub fn hdr_len(&self) -> usize {
        if self.features & (F_VERSION_1 | F_MRG_RXBUF) != 0 {
            VNET_HDR_LEN
        } else {
            10
        }
    }

    pub fn mergeable(&self) -> bool {
        self.features & F_MRG_RXBUF != 0
    }

    /// Posts `n` RX chains of one `len`-byte writable buffer each and kicks.
    pub fn post_rx(&mut self, n: u16, len: u32) {
        self.rx_buf_len = len;
        for _ in 0..n {
            let d = self.rx.take_descs(1);
            let a = self.rx.alloc(len as u64);
            self.rx.write_desc(&self.mem, d, a, len, VRING_F_WRITE, 0);
            self.rx.publish(&self.mem, d);
        }
        self.rx.kick();
    }

    /// Transmits one frame as a two-descriptor chain (header, frame), like Linux does, and
    /// kicks. Returns the head index.
    pub fn send(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> u16 {
        let h = self.queue_tx(hdr, frame);
        self.tx.kick();
        h
    }

    /// Like `send` without the kick (for batches).
    pub fn queue_tx(&mut self, hdr: &VirtioNetHdr, frame: &[u8]) -> u16 {
        let hl = self.hdr_len();
        let d = self.tx.take_descs(2);
        let ha = self.tx.alloc(hl as u64);
        let fa = self.tx.alloc(frame.len() as u64);
        self.mem
            .write_slice(&hdr.to_bytes()[..hl], GuestAddress(ha))
            .unwrap();
        self.mem.write_slice(frame, GuestAddress(fa)).unwrap();
        self.tx
            .write_desc(&self.mem, d, ha, hl as u32, VRING_F_NEXT, d + 1);
        self.tx
            .write_desc(&self.mem, d + 1, fa, frame.len() as u32, 0, 0);
        self.tx.publish(&self.mem, d);
        d
    }

    /// Receives one frame: follows `num_buffers` across chains with mergeable buffers.
    pub fn recv(&mut self) -> (VirtioNetHdr, Vec<u8>) {
        self.try_recv(TIMEOUT)
            .expect("timed out waiting for a frame")
    }

    pub fn try_recv(&mut self, timeout: Duration) -> Option<(VirtioNetHdr, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let first = loop {
            if let Some(u) = self.rx.pop_used(&self.mem) {
                break u;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let hl = self.hdr_len();
        let mut bytes = self.read_rx_buf(first);
        assert!(
            bytes.len() >= hl,
            "used entry shorter than the header: {first:?}"
        );
        let hdr = VirtioNetHdr::parse(&bytes[..hl]).unwrap();
        if self.mergeable() {
            for _ in 1..hdr.num_buffers {
                let u = self.rx.wait_used(&self.mem);
                bytes.extend_from_slice(&self.read_rx_buf(u));
            }
        }
        Some((hdr, bytes[hl..].to_vec()))
    }

    fn read_rx_buf(&self, (id, len): (u32, u32)) -> Vec<u8> {
        let d = self.rx.desc + 16 * id as u64;
        let addr: u64 = self.mem.read_obj(GuestAddress(d)).unwrap();
        let mut v = vec![0u8; len as usize];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Waits until the backend returned `n` more TX chains; returns their used entries.
    pub fn wait_tx_used(&mut self, n: usize) -> Vec<(u32, u32)> {
        (0..n).map(|_| self.tx.wait_used(&self.mem)).collect()
    }
}

/// Waits until `cond` holds (the backend runs on its own threads).
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn wait_rx_ready(port: &Arc<VnicPort>) {
    wait_for(&format!("{} RX ring", port.name()), || port.is_rx_ready());
}

//! The uplink: a TAP device created by the daemon and attached to a Linux bridge.
//!
//! The TAP is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio-net
//! header (`TUNSETVNETHDRSZ`), so frames cross it in the same format as on the virtqueues and
//! TSO/checksum offloads pass between guests and the host stack without being resolved twice.
//! `TUNSETOFFLOAD` enables `CSUM | TSO4 | TSO6` — exactly the offloads
//! [`crate::pipeline::UPLINK_OFFLOADS`] accepts from it; a vNIC whose guest did not negotiate
//! them gets segments / completed checksums from its RX path.
//!
//! Setup uses ioctls only (no shelling out): TUNSETIFF, SIOCSIFFLAGS (link up) and
//! SIOCBRADDIF (enslave to the bridge). The bridge itself is provisioned by the host (or the
//! integration scripts); vdfwd only attaches to it.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::counters::{DropReason, PortCounters};
use crate::device::queues::MAX_FRAME_LEN;
use crate::net_hdr::{VirtioNetHdr, VNET_HDR_LEN};
use crate::pipeline::{Pipeline, Scratch};
use crate::port::{PortRef, UplinkPort};

const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// Frames read per wake-up before checking the stop flag again.
const READ_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("{op} on {ifname} failed: {source}")]
    Ioctl {
        op: &'static str,
        ifname: String,
        source: io::Error,
    },
    #[error("cannot create the reader thread: {0}")]
    Thread(io::Error),
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, UplinkError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(UplinkError::BadName(name.to_owned()));
    }
    // SAFETY: ifreq is a plain C struct/union for which all-zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(ifr)
}

fn ioctl_err(op: &'static str, ifname: &str) -> UplinkError {
    UplinkError::Ioctl {
        op,
        ifname: ifname.to_owned(),
        source: io::Error::last_os_error(),
    }
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and owned by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets IFF_UP on interface `name`.
pub fn set_link_up(name: &str) -> Result<(), UplinkError> {
    let sock = control_socket().map_err(|source| UplinkError::Ioctl {
        op: "socket",
        ifname: name.to_owned(),
        source,
    })?;
    let mut ifr = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write an ifreq we own, for its lifetime.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(ioctl_err("SIOCGIFFLAGS", name));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(ioctl_err("SIOCSIFFLAGS", name));
        }
    }
    Ok(())
}

/// Enslaves interface `port` to bridge `bridge` (`ip link set PORT master BRIDGE`).
pub fn attach_to_bridge(port: &str, bridge: &str) -> Result<(), UplinkError> {
    let cname = CString::new(port).map_err(|_| UplinkError::BadName(port.to_owned()))?;
    // SAFETY: if_nametoindex reads a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(ioctl_err("if_nametoindex", port));
    }
    let sock = control_socket().map_err(|source| UplinkError::Ioctl {
        op: "socket",
        ifname: bridge.to_owned(),
        source,
    })?;
    let mut ifr = ifreq_for(bridge)?;
    ifr.ifr_ifru.ifru_ifindex = index as libc::c_int;
    // SAFETY: SIOCBRADDIF reads an ifreq we own for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF as _, &ifr) } < 0 {
        return Err(ioctl_err("SIOCBRADDIF", bridge));
    }
    Ok(())
}

/// The uplink TAP.
pub struct TapUplink {
    tap: File,
    name: String,
    counters: PortCounters,
}

impl TapUplink {
    /// Creates (or attaches to a persistent) TAP `name`, configures the vnet header and
    /// offloads, brings it up and, if given, enslaves it to `bridge`.
    pub fn create(name: &str, bridge: Option<&str>) -> Result<TapUplink, UplinkError> {
        let tap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(UplinkError::OpenTun)?;
        let fd = tap.as_raw_fd();
        let mut ifr = ifreq_for(name)?;
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        let hdr_sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
        let offloads: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: each ioctl gets a pointer to a live value of the type the kernel expects
        // (ifreq, int, and unsigned int by value for TUNSETOFFLOAD).
        unsafe {
            if libc::ioctl(fd, libc::TUNSETIFF as _, &mut ifr) < 0 {
                return Err(ioctl_err("TUNSETIFF", name));
            }
            if libc::ioctl(fd, libc::TUNSETVNETHDRSZ as _, &hdr_sz) < 0 {
                return Err(ioctl_err("TUNSETVNETHDRSZ", name));
            }
            if libc::ioctl(fd, libc::TUNSETOFFLOAD as _, offloads as libc::c_ulong) < 0 {
                return Err(ioctl_err("TUNSETOFFLOAD", name));
            }
        }
        set_link_up(name)?;
        if let Some(br) = bridge {
            attach_to_bridge(name, br)?;
        }
        info!(
            tap = name,
            bridge = bridge.unwrap_or("-"),
            "uplink TAP ready"
        );
        Ok(TapUplink {
            tap,
            name: name.to_owned(),
            counters: PortCounters::default(),
        })
    }

    /// Starts the reader thread that feeds frames from the TAP into the pipeline.
    pub fn spawn_reader(
        self: &Arc<Self>,
        pipeline: Arc<Pipeline>,
    ) -> Result<UplinkReader, UplinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(UplinkError::Thread)?;
        let evt = stop_evt.try_clone().map_err(UplinkError::Thread)?;
        let me = self.clone();
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("uplink-{}", self.name))
            .spawn(move || me.read_loop(&pipeline, &st, &evt))
            .map_err(UplinkError::Thread)?;
        Ok(UplinkReader {
            stop,
            stop_evt,
            thread: Some(thread),
        })
    }

    fn read_loop(&self, pipeline: &Pipeline, stop: &AtomicBool, stop_evt: &EventFd) {
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN];
        let mut scratch = Scratch::new();
        let fd = self.tap.as_raw_fd();
        while !stop.load(Ordering::Acquire) {
            if !poll_in(fd, stop_evt.as_raw_fd()) {
                continue;
            }
            let now = pipeline.now();
            for _ in 0..READ_BATCH {
                // SAFETY: reading into a buffer we own, bounded by its length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                        _ => warn!(tap = %self.name, "read failed: {e}"),
                    }
                    break;
                }
                let n = n as usize;
                if n < VNET_HDR_LEN + 14 {
                    self.counters.count_drop(DropReason::ShortFrame);
                    continue;
                }
                let hdr = VirtioNetHdr::parse(&buf[..VNET_HDR_LEN]).unwrap_or_default();
                pipeline.from_uplink(&hdr, &buf[VNET_HDR_LEN..n], now, &mut scratch);
            }
            pipeline.end_batch(PortRef::Uplink, now);
        }
        debug!(tap = %self.name, "uplink reader stopped");
    }
}

/// Waits for the TAP to be readable; false if woken by the stop event.
fn poll_in(fd: RawFd, stop_fd: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of two pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    n > 0 && fds[1].revents == 0 && fds[0].revents & libc::POLLIN != 0
}

impl UplinkPort for TapUplink {
    fn transmit(&self, hdr: &VirtioNetHdr, frame: &[u8]) -> io::Result<()> {
        let h = hdr.to_bytes();
        let iov = [IoSlice::new(&h), IoSlice::new(frame)];
        // One write per frame: a TAP write is one packet.
        let n = (&self.tap).write_vectored(&iov)?;
        if n != h.len() + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ));
        }
        Ok(())
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The running reader thread; stops on drop.
pub struct UplinkReader {
    stop: Arc<AtomicBool>,
    stop_evt: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl UplinkReader {
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.stop_evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UplinkReader {
    fn drop(&mut self) {
        self.stop_now();
    }
}

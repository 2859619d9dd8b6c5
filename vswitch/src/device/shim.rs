//! A vhost-user message relay between the frontend and the crate's request handler.
//!
//! Why it exists: QEMU's virtio-net (7.2 and others) sends `SET_VRING_ENABLE` when the device
//! is realized or reset — before `SET_FEATURES` — whenever the backend offers
//! `VHOST_USER_F_PROTOCOL_FEATURES`. vhost 0.18 treats that as a fatal protocol error and drops
//! the connection, so QEMU could never attach. The vhost-user spec only says the message
//! "should" come after negotiation, and other backends (DPDK, libvhost-user) accept it.
//!
//! The relay passes every message through unchanged, except `SET_VRING_ENABLE` received before
//! a `SET_FEATURES` that acked `PROTOCOL_FEATURES`: it is acknowledged to the frontend (when a
//! reply was requested and `REPLY_ACK` negotiated), remembered, and replayed to the handler
//! right after that `SET_FEATURES`. File descriptors attached to messages are forwarded.
//!
//! It also gives the runner one place to observe and cut a session (stop request, peer gone)
//! without reaching into the crate's connection.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use tracing::debug;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR_LEN: usize = 12;
/// Larger than any vhost-user message the crate accepts (its limit is 4 KiB of payload).
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;

const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_PROTOCOL_FEATURES: u32 = 16;
const REQ_SET_VRING_ENABLE: u32 = 18;

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const PF_REPLY_ACK: u64 = 1 << 3;

/// One vhost-user message with the fds that came with its header.
struct Message {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }
    fn flags(&self) -> u32 {
        u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]])
    }
    fn u64_payload(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.payload.get(..8)?.try_into().ok()?))
    }
    fn new(request: u32, flags: u32, payload: &[u8]) -> Message {
        let mut hdr = [0u8; HDR_LEN];
        hdr[..4].copy_from_slice(&request.to_le_bytes());
        hdr[4..8].copy_from_slice(&flags.to_le_bytes());
        hdr[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Message {
            hdr,
            payload: payload.to_vec(),
            fds: Vec::new(),
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads one message; `Ok(None)` on a clean EOF before a header.
fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    }];
    // SAFETY: the iovec points at `hdr`, which we own and which may receive arbitrary bytes.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let fds: Vec<OwnedFd> = raw_fds[..nfds]
        .iter()
        // SAFETY: recvmsg returned these descriptors to us; nothing else owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    if n < HDR_LEN {
        (&*sock).read_exact(&mut hdr[n..])?;
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(bad("vhost-user message too large"));
    }
    let mut payload = vec![0u8; size];
    (&*sock).read_exact(&mut payload)?;
    Ok(Some(Message { hdr, payload, fds }))
}

fn write_message(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let bufs: [&[u8]; 2] = [&m.hdr, &m.payload];
    let total = HDR_LEN + m.payload.len();
    let sent = sock
        .send_with_fds(&bufs, &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < total {
        // The fds went with the first bytes; send the rest plainly.
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&m.hdr);
        all.extend_from_slice(&m.payload);
        io::Write::write_all(&mut &*sock, &all[sent..])?;
    }
    Ok(())
}

/// Protocol state the relay tracks.
#[derive(Default)]
struct State {
    protocol_features: u64,
    features_negotiated: bool,
    /// `SET_VRING_ENABLE` payloads held back until `SET_FEATURES`.
    pending_enable: Vec<Vec<u8>>,
}

/// Why the relay stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    FrontendClosed,
    BackendClosed,
    Stopped,
}

/// Relays messages until either side closes or `stop_fd` becomes readable.
pub fn relay(
    frontend: &UnixStream,
    backend: &UnixStream,
    stop_fd: RawFd,
    name: &str,
) -> io::Result<RelayEnd> {
    let mut st = State::default();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: frontend.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: backend.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of three pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[2].revents != 0 {
            return Ok(RelayEnd::Stopped);
        }
        if fds[0].revents != 0 {
            let Some(m) = read_message(frontend)? else {
                return Ok(RelayEnd::FrontendClosed);
            };
            from_frontend(&mut st, m, frontend, backend, name)?;
        }
        if fds[1].revents != 0 {
            let Some(m) = read_message(backend)? else {
                return Ok(RelayEnd::BackendClosed);
            };
            write_message(frontend, &m)?;
        }
    }
}

fn from_frontend(
    st: &mut State,
    m: Message,
    frontend: &UnixStream,
    backend: &UnixStream,
    name: &str,
) -> io::Result<()> {
    match m.request() {
        REQ_SET_PROTOCOL_FEATURES => {
            st.protocol_features = m.u64_payload().unwrap_or(0);
            write_message(backend, &m)
        }
        REQ_SET_VRING_ENABLE if !st.features_negotiated => {
            debug!(
                port = name,
                "holding back SET_VRING_ENABLE received before SET_FEATURES"
            );
            if m.flags() & FLAG_NEED_REPLY != 0 && st.protocol_features & PF_REPLY_ACK != 0 {
                write_message(
                    frontend,
                    &Message::new(
                        REQ_SET_VRING_ENABLE,
                        FLAG_VERSION | FLAG_REPLY,
                        &0u64.to_le_bytes(),
                    ),
                )?;
            }
            st.pending_enable.push(m.payload);
            Ok(())
        }
        REQ_SET_FEATURES => {
            let acked = m.u64_payload().unwrap_or(0);
            write_message(backend, &m)?;
            if acked & F_PROTOCOL_FEATURES != 0 {
                st.features_negotiated = true;
                // Replayed without NEED_REPLY: the handler sends no ack, so nothing reaches
                // the frontend that it did not ask for.
                for payload in std::mem::take(&mut st.pending_enable) {
                    write_message(
                        backend,
                        &Message::new(REQ_SET_VRING_ENABLE, FLAG_VERSION, &payload),
                    )?;
                }
            }
            Ok(())
        }
        _ => write_message(backend, &m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn read(sock: &UnixStream) -> Message {
        read_message(sock).unwrap().unwrap()
    }

    #[test]
    fn early_vring_enable_is_acked_held_and_replayed() {
        let (fe_vmm, fe_relay) = UnixStream::pair().unwrap();
        let (be_relay, be_crate) = UnixStream::pair().unwrap();
        let (stop_r, stop_w) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            relay(&fe_relay, &be_relay, stop_r.as_raw_fd(), "t").unwrap()
        });

        // Protocol features with REPLY_ACK, then an early enable that wants a reply.
        write_message(
            &fe_vmm,
            &Message::new(
                REQ_SET_PROTOCOL_FEATURES,
                FLAG_VERSION,
                &PF_REPLY_ACK.to_le_bytes(),
            ),
        )
        .unwrap();
        assert_eq!(read(&be_crate).request(), REQ_SET_PROTOCOL_FEATURES);
        let enable = [0u8, 0, 0, 0, 1, 0, 0, 0];
        write_message(
            &fe_vmm,
            &Message::new(
                REQ_SET_VRING_ENABLE,
                FLAG_VERSION | FLAG_NEED_REPLY,
                &enable,
            ),
        )
        .unwrap();
        let ack = read(&fe_vmm);
        assert_eq!(
            (ack.request(), ack.flags() & FLAG_REPLY, ack.u64_payload()),
            (REQ_SET_VRING_ENABLE, FLAG_REPLY, Some(0))
        );

        // A message with an fd passes through with its fd.
        let (probe, _keep) = UnixStream::pair().unwrap();
        let mut with_fd = Message::new(13, FLAG_VERSION, &0u64.to_le_bytes());
        with_fd
            .fds
            .push(probe.as_fd().try_clone_to_owned().unwrap());
        write_message(&fe_vmm, &with_fd).unwrap();
        let got = read(&be_crate);
        assert_eq!((got.request(), got.fds.len()), (13, 1));

        // SET_FEATURES with PROTOCOL_FEATURES: forwarded, then the held enable is replayed.
        write_message(
            &fe_vmm,
            &Message::new(
                REQ_SET_FEATURES,
                FLAG_VERSION,
                &(F_PROTOCOL_FEATURES | 1).to_le_bytes(),
            ),
        )
        .unwrap();
        assert_eq!(read(&be_crate).request(), REQ_SET_FEATURES);
        let replay = read(&be_crate);
        assert_eq!(replay.request(), REQ_SET_VRING_ENABLE);
        assert_eq!(replay.payload, enable);
        assert_eq!(replay.flags() & FLAG_NEED_REPLY, 0);

        // Later enables pass straight through; replies from the backend reach the frontend.
        write_message(
            &fe_vmm,
            &Message::new(REQ_SET_VRING_ENABLE, FLAG_VERSION, &enable),
        )
        .unwrap();
        assert_eq!(read(&be_crate).request(), REQ_SET_VRING_ENABLE);
        write_message(
            &be_crate,
            &Message::new(1, FLAG_VERSION | FLAG_REPLY, &7u64.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(read(&fe_vmm).u64_payload(), Some(7));

        drop(stop_w);
        assert_eq!(t.join().unwrap(), RelayEnd::Stopped);
    }

    #[test]
    fn oversized_messages_end_the_session() {
        let (fe_vmm, fe_relay) = UnixStream::pair().unwrap();
        let (be_relay, _be_crate) = UnixStream::pair().unwrap();
        let (stop_r, _stop_w) = UnixStream::pair().unwrap();
        let mut hdr = [0u8; 12];
        hdr[8..].copy_from_slice(&(1u32 << 30).to_le_bytes());
        io::Write::write_all(&mut &fe_vmm, &hdr).unwrap();
        assert!(relay(&fe_relay, &be_relay, stop_r.as_raw_fd(), "t").is_err());
        drop(fe_vmm);
        let (fe_vmm, fe_relay) = UnixStream::pair().unwrap();
        drop(fe_vmm);
        assert_eq!(
            relay(&fe_relay, &be_relay, stop_r.as_raw_fd(), "t").unwrap(),
            RelayEnd::FrontendClosed
        );
    }
}

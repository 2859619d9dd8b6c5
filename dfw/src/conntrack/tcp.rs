//! TCP connection state: per-peer progress plus sequence/window tracking.
//!
//! Two well-tried designs are combined:
//! - Per-peer states in the style of pf (`src`/`dst` peers each move CLOSED -> SYN_SENT ->
//!   ESTABLISHED -> FIN sent -> FIN acked), because the NSX DFW timers we default to are pf's
//!   timers and are defined in terms of those peer states.
//! - The window check of Linux `nf_conntrack_proto_tcp.c` `tcp_in_window` (itself after Guido
//!   van Rooij, "Real Stateful TCP Packet Filtering in IP Filter"): each side's highest sequence
//!   end sent (`end`), highest sequence end the other side allowed (`maxend`) and largest window
//!   (`maxwin`), with RFC 7323 window scaling. SACK blocks are not considered (the metadata does
//!   not carry them), which only makes the acknowledgement bound stricter for D-SACK-free flows.
//!
//! A segment passes when (wrapping 32-bit sequence arithmetic):
//! I.   `seq <= sender.maxend`                           (starts inside what the receiver allowed)
//! II.  `end >= sender.end - receiver.maxwin`            (not older than a window back)
//! III. `ack <= receiver.end`                            (does not acknowledge unsent data)
//! IV.  `ack >= receiver.end - max(sender.maxwin, 66000)` (does not acknowledge ancient data)

use super::config::TimeoutClass;
use super::packet::{PacketMeta, TcpFlags};
use super::stats::InvalidReason;

/// RFC 7323 §2.3: shift counts above 14 are treated as 14.
const MAX_WSCALE: u8 = 14;
/// Linux `MAXACKWINCONST`: lower bound of the acknowledgement window (check IV).
const MAX_ACK_WINDOW_MIN: u32 = 66_000;
/// Windows are capped so that `end - maxwin` style bounds stay far from the 2^31 ambiguity
/// of wrapping comparisons.
const MAX_WINDOW: u32 = 1 << 30;

/// `a` comes before `b` in sequence space.
#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// Progress of one side of a TCP connection, ordered: later states compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum TcpPeerState {
    /// Nothing sent yet.
    Closed,
    /// Sent a SYN not yet acknowledged.
    SynSent,
    Established,
    /// Sent a FIN not yet acknowledged.
    FinSent,
    /// Its FIN was acknowledged.
    FinAcked,
    /// The connection was reset (set on both peers).
    Reset,
}

/// What conntrack knows about one direction's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpPeer {
    /// Highest sequence end (seq + len + SYN + FIN) sent.
    end: u32,
    /// Highest sequence end the other side allowed (its ack + scaled window).
    maxend: u32,
    /// Largest (scaled) window this side advertised. Zero: this side has not sent yet.
    maxwin: u32,
    /// Window shift for this side's advertised windows (0 unless both SYNs carried the option).
    scale: u8,
    /// This side's SYN carried the window-scale option.
    wscale_seen: bool,
    state: TcpPeerState,
}

impl TcpPeer {
    const UNSEEN: Self = Self {
        end: 0,
        maxend: 0,
        maxwin: 0,
        scale: 0,
        wscale_seen: false,
        state: TcpPeerState::Closed,
    };

    fn init_from_syn(&mut self, pkt: &PacketMeta) {
        let end = pkt.tcp_seg_end();
        self.end = end;
        self.maxend = end;
        // RFC 7323: the window field of a SYN is never scaled.
        self.maxwin = u32::from(pkt.window).max(1);
        match pkt.wscale {
            Some(shift) => {
                self.scale = shift.min(MAX_WSCALE);
                self.wscale_seen = true;
            }
            None => {
                self.scale = 0;
                self.wscale_seen = false;
            }
        }
    }

    fn scaled(&self, window: u16) -> u32 {
        (u32::from(window) << self.scale).min(MAX_WINDOW)
    }

    pub(crate) fn state(&self) -> TcpPeerState {
        self.state
    }
}

/// Both peers of a connection, indexed by direction (0 = original, 1 = reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpConn {
    peers: [TcpPeer; 2],
}

impl TcpConn {
    /// State after the initiator's SYN.
    pub(crate) fn from_syn(pkt: &PacketMeta) -> Self {
        let mut orig = TcpPeer::UNSEEN;
        orig.init_from_syn(pkt);
        orig.state = TcpPeerState::SynSent;
        Self {
            peers: [orig, TcpPeer::UNSEEN],
        }
    }

    /// State after picking a flow up mid-stream from a plain ACK.
    ///
    /// The window scale negotiated in the handshake is unknown. Linux marks such flows
    /// "be liberal" and stops checking windows; we instead assume the largest shift (14), so
    /// legitimate traffic is never cut while segments far outside a (generous) window are still
    /// rejected. Both peers are taken as established.
    pub(crate) fn picked_up(pkt: &PacketMeta) -> Self {
        let end = pkt.tcp_seg_end();
        let mut orig = TcpPeer {
            scale: MAX_WSCALE,
            wscale_seen: true,
            state: TcpPeerState::Established,
            ..TcpPeer::UNSEEN
        };
        orig.end = end;
        orig.maxwin = orig.scaled(pkt.window).max(1);
        orig.maxend = end.wrapping_add(orig.maxwin);
        // The reply side has not been seen: it has acknowledged up to `ack` at least.
        let reply = TcpPeer {
            end: pkt.ack,
            maxend: pkt.ack,
            maxwin: 0,
            ..orig
        };
        Self {
            peers: [orig, reply],
        }
    }

    pub(crate) fn peer(&self, dir: usize) -> &TcpPeer {
        &self.peers[dir & 1]
    }

    /// Whether the reply direction has sent anything.
    pub(crate) fn reply_seen(&self) -> bool {
        self.peers[1].maxwin != 0
    }

    /// Both sides done (FINs acknowledged) or reset: a new SYN on this tuple is a new connection.
    pub(crate) fn is_closed(&self) -> bool {
        self.peers[0].state >= TcpPeerState::FinAcked
            && self.peers[1].state >= TcpPeerState::FinAcked
    }

    /// pf's timer selection (`pf_tcp_track_full`), plus "first" until the reply side speaks.
    #[inline]
    pub(crate) fn timeout_class(&self) -> TimeoutClass {
        use TcpPeerState as S;
        let (a, b) = (self.peers[0].state, self.peers[1].state);
        if a >= S::FinAcked && b >= S::FinAcked {
            TimeoutClass::TcpClosed
        } else if !self.reply_seen() {
            TimeoutClass::TcpFirst
        } else if a >= S::FinSent && b >= S::FinSent {
            TimeoutClass::TcpFinWait
        } else if a < S::Established || b < S::Established {
            TimeoutClass::TcpOpening
        } else if a >= S::FinSent || b >= S::FinSent {
            TimeoutClass::TcpClosing
        } else {
            TimeoutClass::TcpEstablished
        }
    }

    /// Check a segment of an existing connection against the window and advance the state.
    /// On error nothing is changed. `dir` is 0 for the original direction, 1 for the reply.
    pub(crate) fn track(&mut self, dir: usize, pkt: &PacketMeta) -> Result<(), InvalidReason> {
        let flags = pkt.tcp_flags;
        let syn = flags.contains(TcpFlags::SYN);
        let has_ack = flags.contains(TcpFlags::ACK);
        let rst = flags.contains(TcpFlags::RST);

        // Work on a copy so a rejected segment leaves the state untouched.
        let mut next = *self;
        let [p0, p1] = &mut next.peers;
        let (sender, receiver) = if dir & 1 == 0 { (p0, p1) } else { (p1, p0) };

        let seq = pkt.seq;
        let end = pkt.tcp_seg_end();
        let mut ack = pkt.ack;
        let raw_win = pkt.window;

        if sender.maxwin == 0 {
            // First segment from this side.
            if syn {
                // SYN-ACK answering the SYN, or the reply side's SYN in a simultaneous open.
                sender.init_from_syn(pkt);
                // RFC 7323: scaling is on only if both SYNs carried the option.
                if !(sender.wscale_seen && receiver.wscale_seen) {
                    sender.scale = 0;
                    receiver.scale = 0;
                }
                if !has_ack {
                    // Simultaneous open: nothing to acknowledge yet.
                    advance_states(sender, receiver, flags, ack);
                    *self = next;
                    return Ok(());
                }
            } else {
                sender.end = end;
                sender.maxwin = sender.scaled(raw_win).max(1);
                sender.maxend = end.wrapping_add(sender.maxwin);
                if receiver.maxwin == 0 {
                    receiver.end = ack;
                    receiver.maxend = ack;
                } else if ack == receiver.end.wrapping_add(1) {
                    // Likely the answer to a keepalive probe below our `end`.
                    receiver.end = receiver.end.wrapping_add(1);
                }
            }
        } else if syn && !has_ack && sender.state == TcpPeerState::SynSent && after(end, sender.end)
        {
            // The initiator retries with a fresh ISN (RFC 9293 §3.4.3: a reinitialized TCP
            // only has to use larger sequence numbers). Restart its tracking.
            sender.init_from_syn(pkt);
        }

        if !has_ack || (rst && ack == 0) {
            // No ACK (or a broken stack's RST|ACK with ack 0): nothing to check on that side.
            ack = receiver.end;
        }

        let max_ack_window = sender.maxwin.max(MAX_ACK_WINDOW_MIN);
        let in_window = !after(seq, sender.maxend)
            && !before(end, sender.end.wrapping_sub(receiver.maxwin))
            && !after(ack, receiver.end)
            && !before(ack, receiver.end.wrapping_sub(max_ack_window));
        if !in_window {
            return Err(InvalidReason::OutOfWindow);
        }

        let win = if syn {
            u32::from(raw_win)
        } else {
            sender.scaled(raw_win)
        };
        if sender.maxwin < win {
            sender.maxwin = win;
        }
        if after(end, sender.end) {
            sender.end = end;
        }
        if receiver.maxwin != 0 && after(end, sender.maxend) {
            let grow = end.wrapping_sub(sender.maxend);
            receiver.maxwin = receiver.maxwin.saturating_add(grow).min(MAX_WINDOW);
        }
        let allowed_end = ack.wrapping_add(win);
        if after(allowed_end, receiver.maxend.wrapping_sub(1)) {
            receiver.maxend = allowed_end;
            if win == 0 {
                // Room for a zero-window probe.
                receiver.maxend = receiver.maxend.wrapping_add(1);
            }
        }

        advance_states(sender, receiver, flags, ack);
        *self = next;
        Ok(())
    }
}

/// pf's peer state updates, with acknowledgements checked against the peer's sequence end so
/// that only an ACK covering the SYN / FIN moves it on.
fn advance_states(sender: &mut TcpPeer, receiver: &mut TcpPeer, flags: TcpFlags, ack: u32) {
    use TcpPeerState as S;
    if flags.contains(TcpFlags::RST) {
        sender.state = S::Reset;
        receiver.state = S::Reset;
        return;
    }
    if flags.contains(TcpFlags::SYN) && sender.state < S::SynSent {
        sender.state = S::SynSent;
    }
    if flags.contains(TcpFlags::FIN) && sender.state < S::FinSent {
        sender.state = S::FinSent;
    }
    if flags.contains(TcpFlags::ACK) && !before(ack, receiver.end) {
        match receiver.state {
            S::SynSent => receiver.state = S::Established,
            S::FinSent => receiver.state = S::FinAcked,
            _ => {}
        }
    }
}

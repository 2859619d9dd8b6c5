//! State machine tests with a fake clock (`now` is just a number we advance).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::flow::IpProtocol;

const SEC: u64 = 1_000_000_000;
const Z: Zone = Zone(7);

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, d))
}

fn tuple(protocol: IpProtocol, src: IpAddr, sp: u16, dst: IpAddr, dp: u16) -> FiveTuple {
    FiveTuple {
        src,
        dst,
        protocol,
        src_port: sp,
        dst_port: dp,
    }
}

fn cfg() -> CtConfig {
    CtConfig {
        hash_seed: Some(42),
        ..CtConfig::default()
    }
}

fn ct() -> ConnTrack {
    ConnTrack::new(cfg()).unwrap()
}

fn allow(mark: u64) -> impl FnOnce(&PacketMeta) -> Decision {
    move |_| Decision::Allow { mark }
}

/// For packets that must not reach the policy.
fn no_policy(p: &PacketMeta) -> Decision {
    panic!("policy consulted for {p:?}")
}

fn state(ct: &ConnTrack, t: &FiveTuple, now: u64) -> ConnState {
    ct.lookup(Z, t, now).expect("tracked").1.state
}

fn tcp_state(ct: &ConnTrack, t: &FiveTuple, now: u64) -> (TcpPeerState, TcpPeerState) {
    match state(ct, t, now) {
        ConnState::Tcp { original, reply } => (original, reply),
        other => panic!("not tcp: {other:?}"),
    }
}

fn expires_in(ct: &ConnTrack, t: &FiveTuple, now: u64) -> u64 {
    (ct.lookup(Z, t, now).expect("tracked").1.expires - now) / SEC
}

/// A TCP conversation that keeps both sides' sequence numbers, like two real stacks.
struct Tcp {
    t: FiveTuple,
    /// Next sequence number of the client (original direction) and of the server.
    seq: [u32; 2],
    win: [u16; 2],
    wscale: [Option<u8>; 2],
}

impl Tcp {
    fn new(t: FiveTuple) -> Self {
        Self {
            t,
            seq: [1_000_000, 3_000_000_000],
            win: [64_000, 64_000],
            wscale: [None, None],
        }
    }

    /// Segment from `side` (0 client, 1 server) acknowledging everything the peer sent.
    fn seg(&mut self, side: usize, flags: TcpFlags, len: u32) -> PacketMeta {
        let t = if side == 0 { self.t } else { self.t.reversed() };
        let ack = if flags.contains(TcpFlags::ACK) {
            self.seq[1 - side]
        } else {
            0
        };
        let mut p =
            PacketMeta::tcp(t, flags, self.seq[side], ack, self.win[side], len).with_len(40 + len);
        if flags.contains(TcpFlags::SYN) {
            p.wscale = self.wscale[side];
        }
        let mut adv = len;
        adv += u32::from(flags.contains(TcpFlags::SYN));
        adv += u32::from(flags.contains(TcpFlags::FIN));
        self.seq[side] = self.seq[side].wrapping_add(adv);
        p
    }

    fn c(&mut self, flags: TcpFlags, len: u32) -> PacketMeta {
        self.seg(0, flags, len)
    }

    fn s(&mut self, flags: TcpFlags, len: u32) -> PacketMeta {
        self.seg(1, flags, len)
    }

    /// Run the three-way handshake through `ct`.
    fn handshake(&mut self, ct: &mut ConnTrack, now: u64) {
        let syn = self.c(TcpFlags::SYN, 0);
        assert!(matches!(
            ct.process(Z, &syn, now, allow(1)),
            CtVerdict::New { .. }
        ));
        let sa = self.s(TcpFlags::SYN | TcpFlags::ACK, 0);
        assert!(ct.process(Z, &sa, now, no_policy).passes());
        let a = self.c(TcpFlags::ACK, 0);
        assert!(ct.process(Z, &a, now, no_policy).passes());
    }
}

fn web() -> FiveTuple {
    tuple(IpProtocol::Tcp, v4(1), 40000, v4(2), 80)
}

use TcpPeerState as P;

#[test]
fn tcp_three_way_handshake_transitions_and_timers() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let syn = c.c(TcpFlags::SYN, 0);
    assert_eq!(
        ct.process(Z, &syn, 0, allow(9)),
        CtVerdict::New {
            mark: 9,
            picked_up: false
        }
    );
    assert_eq!(tcp_state(&ct, &web(), 0), (P::SynSent, P::Closed));
    assert_eq!(expires_in(&ct, &web(), 0), 120, "tcp first");

    // A retransmitted SYN is a packet of the same connection: no policy lookup.
    let mut again = syn;
    again.len = 60;
    assert_eq!(
        ct.process(Z, &again, SEC, no_policy),
        CtVerdict::Established {
            dir: Direction::Original,
            mark: 9
        }
    );
    assert_eq!(
        expires_in(&ct, &web(), SEC),
        120,
        "still first: reply unseen"
    );

    let sa = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    assert_eq!(
        ct.process(Z, &sa, 2 * SEC, no_policy),
        CtVerdict::Established {
            dir: Direction::Reply,
            mark: 9
        }
    );
    assert_eq!(
        tcp_state(&ct, &web(), 2 * SEC),
        (P::Established, P::SynSent)
    );
    assert_eq!(expires_in(&ct, &web(), 2 * SEC), 30, "tcp opening");

    let ack = c.c(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &ack, 3 * SEC, no_policy).passes());
    assert_eq!(
        tcp_state(&ct, &web(), 3 * SEC),
        (P::Established, P::Established)
    );
    assert_eq!(expires_in(&ct, &web(), 3 * SEC), 43_200, "tcp established");

    let data = c.c(TcpFlags::ACK | TcpFlags::PSH, 100);
    assert!(ct.process(Z, &data, 4 * SEC, no_policy).passes());
    let data = c.s(TcpFlags::ACK | TcpFlags::PSH, 1000);
    assert!(ct.process(Z, &data, 4 * SEC, no_policy).passes());

    let info = ct.lookup(Z, &web(), 4 * SEC).unwrap().1;
    assert_eq!(info.packets, [4, 2]);
    assert_eq!(info.bytes, [60 + 40 + 40 + 140, 40 + 1040]);
    assert_eq!(ct.stats().new, 1);
    assert_eq!(ct.stats().established, 5);
}

#[test]
fn tcp_active_close_passes_through_closing_fin_wait_closed() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);

    let fin = c.c(TcpFlags::FIN | TcpFlags::ACK, 0);
    assert!(ct.process(Z, &fin, SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::FinSent, P::Established));
    assert_eq!(expires_in(&ct, &web(), SEC), 120, "tcp closing");

    let ack = c.s(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &ack, SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::FinAcked, P::Established));
    assert_eq!(
        expires_in(&ct, &web(), SEC),
        120,
        "half closed is still closing"
    );

    // The server may still send data in its half.
    let data = c.s(TcpFlags::ACK | TcpFlags::PSH, 500);
    assert!(ct.process(Z, &data, SEC, no_policy).passes());

    let fin = c.s(TcpFlags::FIN | TcpFlags::ACK, 0);
    assert!(ct.process(Z, &fin, 2 * SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), 2 * SEC), (P::FinAcked, P::FinSent));
    assert_eq!(expires_in(&ct, &web(), 2 * SEC), 45, "tcp fin-wait");

    let ack = c.c(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &ack, 3 * SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), 3 * SEC), (P::FinAcked, P::FinAcked));
    assert_eq!(expires_in(&ct, &web(), 3 * SEC), 20, "tcp closed");

    // Gone after the closed timer; the next packet is a new connection again.
    assert!(ct.lookup(Z, &web(), 23 * SEC).is_none());
    let late = c.c(TcpFlags::ACK, 0);
    let mut asked = false;
    let v = ct.process(Z, &late, 23 * SEC, |_| {
        asked = true;
        Decision::Deny { mark: 3 }
    });
    assert!(asked);
    assert_eq!(v, CtVerdict::Denied { mark: 3 });
    assert_eq!(ct.stats().expired, 1);
    assert!(ct.is_empty());
}

#[test]
fn fin_not_acknowledged_does_not_advance() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    let fin = c.c(TcpFlags::FIN | TcpFlags::ACK, 0);
    assert!(ct.process(Z, &fin, 0, no_policy).passes());
    // The server acknowledges only up to before the FIN.
    let mut partial = c.s(TcpFlags::ACK, 0);
    partial.ack = partial.ack.wrapping_sub(1);
    assert!(ct.process(Z, &partial, 0, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), 0), (P::FinSent, P::Established));
}

#[test]
fn tcp_simultaneous_close() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    // Both FINs cross on the wire: each acknowledges only what it had seen before.
    let cfin = c.c(TcpFlags::FIN | TcpFlags::ACK, 0);
    let mut sfin = c.s(TcpFlags::FIN | TcpFlags::ACK, 0);
    sfin.ack = cfin.seq;
    assert!(ct.process(Z, &cfin, SEC, no_policy).passes());
    assert!(ct.process(Z, &sfin, SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::FinSent, P::FinSent));
    assert_eq!(expires_in(&ct, &web(), SEC), 45);
    let cack = c.c(TcpFlags::ACK, 0);
    let sack = c.s(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &cack, SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::FinSent, P::FinAcked));
    assert!(ct.process(Z, &sack, SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::FinAcked, P::FinAcked));
    assert_eq!(expires_in(&ct, &web(), SEC), 20);
}

#[test]
fn tcp_simultaneous_open() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let syn_a = c.c(TcpFlags::SYN, 0);
    let syn_b = c.s(TcpFlags::SYN, 0);
    assert!(matches!(
        ct.process(Z, &syn_a, 0, allow(1)),
        CtVerdict::New { .. }
    ));
    assert!(ct.process(Z, &syn_b, 0, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), 0), (P::SynSent, P::SynSent));
    assert_eq!(expires_in(&ct, &web(), 0), 30, "both sent: opening");
    // Each side answers with SYN-ACK carrying its original ISN.
    let mut sa_a = c.c(TcpFlags::SYN | TcpFlags::ACK, 0);
    sa_a.seq = sa_a.seq.wrapping_sub(1);
    let mut sa_b = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    sa_b.seq = sa_b.seq.wrapping_sub(1);
    sa_b.ack = sa_a.seq.wrapping_add(1);
    c.seq[0] = c.seq[0].wrapping_sub(1);
    c.seq[1] = c.seq[1].wrapping_sub(1);
    assert!(ct.process(Z, &sa_a, 0, no_policy).passes());
    assert!(ct.process(Z, &sa_b, 0, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), 0), (P::Established, P::Established));
    let d = c.c(TcpFlags::ACK, 10);
    assert!(ct.process(Z, &d, 0, no_policy).passes());
    assert_eq!(expires_in(&ct, &web(), 0), 43_200);
}

#[test]
fn rst_in_window_closes_rst_outside_is_rejected() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);

    // Blind RST with a sequence number far away: rejected, connection untouched.
    let mut blind = c.s(TcpFlags::RST, 0);
    blind.seq = blind.seq.wrapping_add(0x4000_0000);
    assert_eq!(
        ct.process(Z, &blind, SEC, no_policy),
        CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::OutOfWindow))
    );
    assert_eq!(
        tcp_state(&ct, &web(), SEC),
        (P::Established, P::Established)
    );
    assert_eq!(
        ct.stats()
            .drops(CtDropReason::Invalid(InvalidReason::OutOfWindow)),
        1
    );

    let rst = c.s(TcpFlags::RST | TcpFlags::ACK, 0);
    assert!(ct.process(Z, &rst, SEC, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::Reset, P::Reset));
    assert_eq!(expires_in(&ct, &web(), SEC), 20, "closed timer");
}

#[test]
fn rst_answering_syn_closes() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let syn = c.c(TcpFlags::SYN, 0);
    assert!(ct.process(Z, &syn, 0, allow(1)).passes());
    // RFC 9293: RST for a SYN to a closed port has seq 0 and acknowledges the SYN.
    let mut rst = c.s(TcpFlags::RST | TcpFlags::ACK, 0);
    rst.seq = 0;
    rst.window = 0;
    assert!(ct.process(Z, &rst, 0, no_policy).passes());
    assert_eq!(tcp_state(&ct, &web(), 0), (P::Reset, P::Reset));
}

#[test]
fn out_of_window_segments_are_rejected_retransmissions_pass() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    let oow = CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::OutOfWindow));

    // Data far beyond the receiver's window (I).
    let mut ahead = c.c(TcpFlags::ACK, 100);
    c.seq[0] = c.seq[0].wrapping_sub(100);
    ahead.seq = ahead.seq.wrapping_add(10_000_000);
    assert_eq!(ct.process(Z, &ahead, 0, no_policy), oow);

    // Acknowledging data the server never sent (III).
    let mut bogus_ack = c.c(TcpFlags::ACK, 0);
    bogus_ack.ack = bogus_ack.ack.wrapping_add(5_000);
    assert_eq!(ct.process(Z, &bogus_ack, 0, no_policy), oow);

    // Acknowledging data from long ago (IV).
    let mut stale_ack = c.c(TcpFlags::ACK, 0);
    stale_ack.ack = stale_ack.ack.wrapping_sub(1_000_000);
    assert_eq!(ct.process(Z, &stale_ack, 0, no_policy), oow);

    // Send two segments, the server acks them, then a retransmission of the first: passes (II).
    let first = c.c(TcpFlags::ACK | TcpFlags::PSH, 1000);
    let second = c.c(TcpFlags::ACK | TcpFlags::PSH, 1000);
    assert!(ct.process(Z, &first, 0, no_policy).passes());
    assert!(ct.process(Z, &second, 0, no_policy).passes());
    let ack = c.s(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &ack, 0, no_policy).passes());
    assert!(ct.process(Z, &first, 0, no_policy).passes());

    // Data older than a whole window back (II).
    let mut ancient = c.c(TcpFlags::ACK, 100);
    c.seq[0] = c.seq[0].wrapping_sub(100);
    ancient.seq = ancient.seq.wrapping_sub(5_000_000);
    assert_eq!(ct.process(Z, &ancient, 0, no_policy), oow);

    // None of this damaged the connection.
    let ok = c.c(TcpFlags::ACK | TcpFlags::PSH, 10);
    assert!(ct.process(Z, &ok, 0, no_policy).passes());
    assert_eq!(
        ct.stats()
            .drops(CtDropReason::Invalid(InvalidReason::OutOfWindow)),
        4
    );
}

#[test]
fn syn_ack_with_wrong_ack_is_out_of_window() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let syn = c.c(TcpFlags::SYN, 0);
    assert!(ct.process(Z, &syn, 0, allow(1)).passes());
    let mut sa = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    sa.ack = sa.ack.wrapping_add(77_777);
    assert_eq!(
        ct.process(Z, &sa, 0, no_policy),
        CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::OutOfWindow))
    );
    assert_eq!(tcp_state(&ct, &web(), 0), (P::SynSent, P::Closed));
}

/// Client sends ahead of the server's acknowledgements, as with a large window; whether that
/// fits depends on the window scale negotiated in the handshake.
fn send_far_ahead(wscale: [Option<u8>; 2]) -> CtVerdict {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.win = [512, 512];
    c.wscale = wscale;
    c.handshake(&mut ct, 0);
    // The server re-advertises its window (now scaled if negotiated).
    let upd = c.s(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &upd, 0, no_policy).passes());
    // 60 KB in flight: segments the server has not acknowledged yet.
    let mut v = CtVerdict::Dropped(CtDropReason::TableFull);
    for _ in 0..60 {
        let seg = c.c(TcpFlags::ACK, 1000);
        v = ct.process(Z, &seg, 0, no_policy);
    }
    v
}

#[test]
fn window_scaling_from_syn_options() {
    // 512 << 7 = 64 KiB window: the last of the 60 segments is inside it.
    assert!(send_far_ahead([Some(7), Some(7)]).passes());
    // Without scaling (or when only one side offered it) the window is 512 bytes.
    let oow = CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::OutOfWindow));
    assert_eq!(send_far_ahead([None, None]), oow);
    assert_eq!(send_far_ahead([Some(7), None]), oow);
    assert_eq!(send_far_ahead([None, Some(7)]), oow);
}

#[test]
fn bad_flag_combinations_are_invalid_and_never_reach_policy() {
    let mut ct = ct();
    for flags in [
        TcpFlags::SYN | TcpFlags::FIN,
        TcpFlags::SYN | TcpFlags::RST,
        TcpFlags::NONE,
        TcpFlags::FIN,
        TcpFlags::SYN | TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG,
    ] {
        let p = PacketMeta::tcp(web(), flags, 1, 0, 100, 0);
        assert_eq!(
            ct.process(Z, &p, 0, no_policy),
            CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::BadFlags))
        );
    }
    // Also on an established connection.
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    let p = c.c(TcpFlags::SYN | TcpFlags::FIN, 0);
    assert!(!ct.process(Z, &p, 0, no_policy).passes());
    assert_eq!(
        ct.stats()
            .drops(CtDropReason::Invalid(InvalidReason::BadFlags)),
        6
    );
    assert_eq!(tcp_state(&ct, &web(), 0), (P::Established, P::Established));
}

#[test]
fn mid_stream_pickup_goes_through_policy() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.seq = [5_000, 9_000];
    let ack = c.c(TcpFlags::ACK | TcpFlags::PSH, 200);
    let mut asked = 0;
    let v = ct.process(Z, &ack, 0, |p| {
        asked += 1;
        assert_eq!(p.tuple, web());
        Decision::Allow { mark: 4 }
    });
    assert_eq!(asked, 1);
    assert_eq!(
        v,
        CtVerdict::New {
            mark: 4,
            picked_up: true
        }
    );
    assert_eq!(ct.stats().picked_up, 1);
    assert_eq!(tcp_state(&ct, &web(), 0), (P::Established, P::Established));
    assert_eq!(
        expires_in(&ct, &web(), 0),
        120,
        "unanswered pickup runs on the first timer"
    );
    let reply = c.s(TcpFlags::ACK, 3000);
    assert!(ct.process(Z, &reply, 0, no_policy).passes());
    assert_eq!(expires_in(&ct, &web(), 0), 43_200);
    let more = c.c(TcpFlags::ACK, 100);
    assert!(ct.process(Z, &more, 0, no_policy).passes());

    // Even picked up, a segment a gigabyte away is rejected.
    let mut far = c.c(TcpFlags::ACK, 10);
    far.seq = far.seq.wrapping_add(0x7000_0000);
    assert!(!ct.process(Z, &far, 0, no_policy).passes());
}

#[test]
fn pickup_denied_is_not_tracked() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let ack = c.c(TcpFlags::ACK, 10);
    assert_eq!(
        ct.process(Z, &ack, 0, |_| Decision::Deny { mark: 8 }),
        CtVerdict::Denied { mark: 8 }
    );
    assert!(ct.is_empty());
    assert_eq!(ct.stats().denied, 1);
}

#[test]
fn pickup_disabled_and_non_pickable_first_packets() {
    let mut ct = ConnTrack::new(CtConfig {
        pickup_established: false,
        ..cfg()
    })
    .unwrap();
    let not_syn = CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::NotSyn));
    let mut c = Tcp::new(web());
    let ack = c.c(TcpFlags::ACK, 10);
    assert_eq!(ct.process(Z, &ack, 0, no_policy), not_syn);

    // Never picked up, even with pickup on: SYN-ACK, FIN, RST.
    let mut ct = self::ct();
    for flags in [
        TcpFlags::SYN | TcpFlags::ACK,
        TcpFlags::FIN | TcpFlags::ACK,
        TcpFlags::RST,
        TcpFlags::RST | TcpFlags::ACK,
    ] {
        let p = PacketMeta::tcp(web(), flags, 1, 1, 100, 0);
        assert_eq!(ct.process(Z, &p, 0, no_policy), not_syn, "{flags:?}");
    }
    assert!(ct.is_empty());
    assert_eq!(
        ct.stats()
            .drops(CtDropReason::Invalid(InvalidReason::NotSyn)),
        4
    );
}

#[test]
fn denied_syn_leaves_nothing_for_the_reply() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let syn = c.c(TcpFlags::SYN, 0);
    assert_eq!(
        ct.process(Z, &syn, 0, |_| Decision::Deny { mark: 2 }),
        CtVerdict::Denied { mark: 2 }
    );
    let sa = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    assert_eq!(
        ct.process(Z, &sa, 0, no_policy),
        CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::NotSyn))
    );
    assert!(ct.is_empty());
}

#[test]
fn closed_connection_is_reopened_through_policy() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    let rst = c.c(TcpFlags::RST, 0);
    assert!(ct.process(Z, &rst, 0, no_policy).passes());
    // Same 4-tuple, new SYN within the closed timer.
    let mut c2 = Tcp::new(web());
    c2.seq = [7_000_000, 1];
    let syn = c2.c(TcpFlags::SYN, 0);
    assert_eq!(
        ct.process(Z, &syn, SEC, allow(77)),
        CtVerdict::New {
            mark: 77,
            picked_up: false
        }
    );
    assert_eq!(ct.stats().reopened, 1);
    assert_eq!(ct.len(), 1);
    assert_eq!(tcp_state(&ct, &web(), SEC), (P::SynSent, P::Closed));
}

#[test]
fn syn_retry_with_new_isn_restarts_tracking() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    let syn = c.c(TcpFlags::SYN, 0);
    assert!(ct.process(Z, &syn, 0, allow(1)).passes());
    let mut retry = syn;
    retry.seq = syn.seq.wrapping_add(100_000);
    assert!(ct.process(Z, &retry, SEC, no_policy).passes());
    c.seq[0] = retry.seq.wrapping_add(1);
    let sa = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    assert_eq!(sa.ack, retry.seq.wrapping_add(1));
    assert!(ct.process(Z, &sa, SEC, no_policy).passes());
}

#[test]
fn timeouts_are_configurable_and_enforced_per_state() {
    let timeouts = Timeouts {
        tcp_first: std::time::Duration::from_secs(3),
        tcp_opening: std::time::Duration::from_secs(2),
        ..Timeouts::default()
    };
    let mut ct = ConnTrack::new(CtConfig { timeouts, ..cfg() }).unwrap();
    let mut c = Tcp::new(web());
    let syn = c.c(TcpFlags::SYN, 0);
    assert!(ct.process(Z, &syn, 0, allow(1)).passes());
    assert!(ct.lookup(Z, &web(), 3 * SEC - 1).is_some());
    assert!(ct.lookup(Z, &web(), 3 * SEC).is_none());
    let sa = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    assert!(ct.process(Z, &sa, 2 * SEC, no_policy).passes());
    // Now on the 2 s opening timer from t = 2 s.
    assert!(ct.lookup(Z, &web(), 4 * SEC - 1).is_some());
    let a = c.c(TcpFlags::ACK, 0);
    // Too late: the SYN-ACK's timer ran out; the ACK is picked up as a new flow.
    let v = ct.process(Z, &a, 4 * SEC, allow(5));
    assert_eq!(
        v,
        CtVerdict::New {
            mark: 5,
            picked_up: true
        }
    );
    assert_eq!(ct.stats().expired, 1);
}

fn udp() -> FiveTuple {
    tuple(IpProtocol::Udp, v4(1), 5353, v4(2), 53)
}

#[test]
fn udp_first_single_multiple() {
    let mut ct = ct();
    let q = PacketMeta::datagram(udp(), 60);
    assert!(matches!(
        ct.process(Z, &q, 0, allow(3)),
        CtVerdict::New { mark: 3, .. }
    ));
    assert_eq!(state(&ct, &udp(), 0), ConnState::Datagram(UdpState::First));
    assert_eq!(expires_in(&ct, &udp(), 0), 60);

    assert!(ct.process(Z, &q, SEC, no_policy).passes());
    assert_eq!(
        state(&ct, &udp(), SEC),
        ConnState::Datagram(UdpState::Single)
    );
    assert_eq!(expires_in(&ct, &udp(), SEC), 30);

    let r = PacketMeta::datagram(udp().reversed(), 200);
    assert_eq!(
        ct.process(Z, &r, 2 * SEC, no_policy),
        CtVerdict::Established {
            dir: Direction::Reply,
            mark: 3
        }
    );
    assert_eq!(
        state(&ct, &udp(), 2 * SEC),
        ConnState::Datagram(UdpState::Multiple)
    );
    assert_eq!(expires_in(&ct, &udp(), 2 * SEC), 60);
    // Stays multiple whoever sends next.
    assert!(ct.process(Z, &q, 3 * SEC, no_policy).passes());
    assert_eq!(
        state(&ct, &udp(), 3 * SEC),
        ConnState::Datagram(UdpState::Multiple)
    );

    let info = ct.lookup(Z, &udp().reversed(), 3 * SEC).unwrap();
    assert_eq!(info.0, Direction::Reply);
    assert_eq!(info.1.packets, [3, 1]);
    assert_eq!(info.1.bytes, [180, 200]);

    // Single timer: 30 s without a reply and it is gone.
    let other = tuple(IpProtocol::Udp, v4(1), 1111, v4(3), 53);
    let p = PacketMeta::datagram(other, 60);
    assert!(ct.process(Z, &p, 0, allow(1)).passes());
    assert!(ct.process(Z, &p, SEC, no_policy).passes());
    assert!(ct.lookup(Z, &other, 31 * SEC).is_none());
}

#[test]
fn sctp_and_other_protocols_track_like_udp() {
    let mut ct = ct();
    let gre = tuple(IpProtocol::Other(47), v4(1), 0, v4(2), 0);
    let p = PacketMeta::datagram(gre, 100);
    assert!(ct.process(Z, &p, 0, allow(1)).passes());
    let r = PacketMeta::datagram(gre.reversed(), 100);
    assert!(ct.process(Z, &r, 0, no_policy).passes());
    let sctp = tuple(IpProtocol::Sctp, v4(1), 9, v4(2), 9);
    let p = PacketMeta::datagram(sctp, 100);
    assert!(ct.process(Z, &p, 0, allow(1)).passes());
    assert_eq!(ct.len(), 2);
}

/// An echo request's tuple as `PacketMeta::icmp` orients it: the id as the source port.
fn ping(id: u16) -> FiveTuple {
    tuple(IpProtocol::Icmp, v4(1), id, v4(2), 0)
}

#[test]
fn icmp_echo_pseudo_connection() {
    let mut ct = ct();
    let req = PacketMeta::icmp(ping(77), 8, 0).with_len(84);
    assert!(matches!(
        ct.process(Z, &req, 0, allow(6)),
        CtVerdict::New { mark: 6, .. }
    ));
    assert_eq!(expires_in(&ct, &ping(77), 0), 20, "icmp first");
    let rep = PacketMeta::icmp(ping(77).reversed(), 0, 0).with_len(84);
    assert_eq!(
        ct.process(Z, &rep, SEC, no_policy),
        CtVerdict::Established {
            dir: Direction::Reply,
            mark: 6
        }
    );
    assert_eq!(expires_in(&ct, &ping(77), SEC), 10, "icmp error-reply");
    // Next ping of the same session refreshes it.
    assert!(ct.process(Z, &req, 2 * SEC, no_policy).passes());
    assert_eq!(ct.lookup(Z, &ping(77), 2 * SEC).unwrap().1.packets, [2, 1]);

    // A reply with no request is invalid.
    let unexpected = CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::UnexpectedIcmp));
    let stray = PacketMeta::icmp(ping(5).reversed(), 0, 0);
    assert_eq!(ct.process(Z, &stray, 0, no_policy), unexpected);
    // A request the other way with the same id (as a packet carries it: the id in both
    // ports) is a separate exchange that goes through policy, not a collision.
    let backwards_tuple = tuple(IpProtocol::Icmp, v4(2), 77, v4(1), 77);
    let backwards = PacketMeta::icmp(backwards_tuple, 8, 0);
    assert!(matches!(
        ct.process(Z, &backwards, 2 * SEC, allow(9)),
        CtVerdict::New { mark: 9, .. }
    ));
    let backwards_reply = PacketMeta::icmp(backwards_tuple.reversed(), 0, 0);
    assert!(ct.process(Z, &backwards_reply, 2 * SEC, no_policy).passes());
    // Different ids are different sessions.
    let req2 = PacketMeta::icmp(ping(78), 8, 0);
    assert!(matches!(
        ct.process(Z, &req2, 0, allow(1)),
        CtVerdict::New { .. }
    ));
}

#[test]
fn icmpv6_echo_and_untracked_neighbour_discovery() {
    let mut ct = ct();
    let a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let b = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
    let t = tuple(IpProtocol::Icmpv6, a, 9, b, 9);
    assert!(ct
        .process(Z, &PacketMeta::icmp(t, 128, 0), 0, allow(1))
        .passes());
    assert!(ct
        .process(Z, &PacketMeta::icmp(t.reversed(), 129, 0), 0, no_policy)
        .passes());
    // Neighbour solicitation: policy decides per packet, nothing is tracked.
    let ns = tuple(IpProtocol::Icmpv6, a, 0, b, 0);
    let mut calls = 0;
    for _ in 0..3 {
        let v = ct.process(Z, &PacketMeta::icmp(ns, 135, 0), 0, |_| {
            calls += 1;
            Decision::Allow { mark: 2 }
        });
        assert_eq!(v, CtVerdict::Untracked { mark: 2 });
    }
    assert_eq!(calls, 3);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.stats().untracked, 3);
}

#[test]
fn icmp_errors_related_to_tracked_connections_pass() {
    let mut ct = ct();
    let router = v4(254);
    let q = PacketMeta::datagram(udp(), 60);
    assert!(ct.process(Z, &q, 0, allow(11)).passes());

    // Port unreachable from the server itself, quoting the query.
    let icmp_t = tuple(IpProtocol::Icmp, v4(2), 0, v4(1), 0);
    let unreach = PacketMeta::icmp_error(icmp_t, 3, 3, udp());
    assert_eq!(
        ct.process(Z, &unreach, SEC, no_policy),
        CtVerdict::Related {
            dir: Direction::Original,
            mark: 11
        }
    );
    // Time exceeded from a router on the path.
    let ttl = PacketMeta::icmp_error(tuple(IpProtocol::Icmp, router, 0, v4(1), 0), 11, 0, udp());
    assert!(ct.process(Z, &ttl, SEC, no_policy).passes());

    // An error about the reply direction, sent back to the server.
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    let to_server = tuple(IpProtocol::Icmp, router, 0, v4(2), 0);
    let frag = PacketMeta::icmp_error(to_server, 3, 4, web().reversed());
    assert_eq!(
        ct.process(Z, &frag, SEC, no_policy),
        CtVerdict::Related {
            dir: Direction::Reply,
            mark: 1
        }
    );
    // ICMPv6 packet too big about an IPv6 flow.
    let a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let b = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
    let t6 = tuple(IpProtocol::Udp, a, 4000, b, 443);
    assert!(ct
        .process(Z, &PacketMeta::datagram(t6, 1400), 0, allow(12))
        .passes());
    let ptb = PacketMeta::icmp_error(tuple(IpProtocol::Icmpv6, b, 0, a, 0), 2, 0, t6);
    assert_eq!(
        ct.process(Z, &ptb, 0, no_policy),
        CtVerdict::Related {
            dir: Direction::Original,
            mark: 12
        }
    );
    assert_eq!(ct.stats().related, 4);
    // Errors neither create nor refresh connections.
    assert_eq!(ct.len(), 3);
}

#[test]
fn unrelated_icmp_errors_are_invalid() {
    let mut ct = ct();
    let q = PacketMeta::datagram(udp(), 60);
    assert!(ct.process(Z, &q, 0, allow(1)).passes());
    let unrelated = CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::UnrelatedIcmpError));
    let icmp_t = tuple(IpProtocol::Icmp, v4(2), 0, v4(1), 0);
    // Quotes a flow nobody tracks.
    let other = tuple(IpProtocol::Udp, v4(1), 1, v4(2), 2);
    let e = PacketMeta::icmp_error(icmp_t, 3, 3, other);
    assert_eq!(ct.process(Z, &e, 0, no_policy), unrelated);
    // Quotes the tracked flow but is addressed to someone else than its sender.
    let e = PacketMeta::icmp_error(tuple(IpProtocol::Icmp, v4(2), 0, v4(9), 0), 3, 3, udp());
    assert_eq!(ct.process(Z, &e, 0, no_policy), unrelated);
    // Unparsable quote.
    let mut e = PacketMeta::icmp(icmp_t, 3, 3);
    e.icmp_inner = None;
    assert_eq!(ct.process(Z, &e, 0, no_policy), unrelated);
    // Right flow, wrong zone.
    let e = PacketMeta::icmp_error(icmp_t, 3, 3, udp());
    assert_eq!(ct.process(Zone(99), &e, 0, no_policy), unrelated);
    // Expired flow.
    assert_eq!(ct.process(Z, &e, 61 * SEC, no_policy), unrelated);
    assert_eq!(
        ct.stats()
            .drops(CtDropReason::Invalid(InvalidReason::UnrelatedIcmpError)),
        5
    );
}

#[test]
fn zones_are_separate_tables() {
    let mut ct = ct();
    let q = PacketMeta::datagram(udp(), 60);
    assert!(ct.process(Zone(1), &q, 0, allow(1)).passes());
    let r = PacketMeta::datagram(udp().reversed(), 60);
    // The reply seen on another vNIC is not part of zone 1's connection.
    assert_eq!(
        ct.process(Zone(2), &r, 0, |_| Decision::Deny { mark: 0 }),
        CtVerdict::Denied { mark: 0 }
    );
    assert!(ct.process(Zone(1), &r, 0, no_policy).passes());
}

#[test]
fn self_addressed_packets_are_invalid() {
    let mut ct = ct();
    let land = tuple(IpProtocol::Tcp, v4(1), 80, v4(1), 80);
    let p = PacketMeta::tcp(land, TcpFlags::SYN, 1, 0, 100, 0);
    assert_eq!(
        ct.process(Z, &p, 0, no_policy),
        CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::SelfAddressed))
    );
    // Same address, different ports is a normal flow.
    let lo = tuple(IpProtocol::Udp, v4(1), 1000, v4(1), 2000);
    assert!(ct
        .process(Z, &PacketMeta::datagram(lo, 1), 0, allow(1))
        .passes());
    assert!(ct
        .process(Z, &PacketMeta::datagram(lo.reversed(), 1), 0, no_policy)
        .passes());
}

fn udp_n(n: u16) -> FiveTuple {
    tuple(IpProtocol::Udp, v4(1), 10_000 + n, v4(2), 53)
}

#[test]
fn global_limit_drops_new_connections_existing_keep_flowing() {
    let mut ct = ConnTrack::new(CtConfig {
        max_entries: 3,
        ..cfg()
    })
    .unwrap();
    for i in 0..3 {
        assert!(ct
            .process(Z, &PacketMeta::datagram(udp_n(i), 1), 0, allow(1))
            .passes());
    }
    let v = ct.process(Z, &PacketMeta::datagram(udp_n(3), 1), 0, no_policy);
    assert_eq!(v, CtVerdict::Dropped(CtDropReason::TableFull));
    assert_eq!(ct.stats().drops(CtDropReason::TableFull), 1);
    assert_eq!(ct.len(), 3);
    for i in 0..3 {
        let r = PacketMeta::datagram(udp_n(i).reversed(), 1);
        assert!(ct.process(Z, &r, SEC, no_policy).passes());
    }
    // Once entries expire, the full-table reclaim makes room without an explicit expire().
    let v = ct.process(Z, &PacketMeta::datagram(udp_n(3), 1), 100 * SEC, allow(2));
    assert!(matches!(v, CtVerdict::New { mark: 2, .. }));
    assert_eq!(ct.len(), 1);
}

#[test]
fn a_full_table_of_live_entries_is_not_swept_again_for_every_refused_packet() {
    let mut ct = ConnTrack::new(CtConfig {
        max_entries: 2,
        ..cfg()
    })
    .unwrap();
    for i in 0..2 {
        assert!(ct
            .process(Z, &PacketMeta::datagram(udp_n(i), 1), 0, allow(1))
            .passes());
    }
    let expiry = (0..2)
        .filter_map(|i| ct.lookup(Z, &udp_n(i), 0))
        .map(|(_, info)| info.expires)
        .max()
        .unwrap();
    let new_flow = |ct: &mut ConnTrack, n: u16, now: u64| {
        ct.process(Z, &PacketMeta::datagram(udp_n(n), 1), now, allow(2))
    };
    // Just before the entries expire: the reclaim finds nothing and backs off.
    let before = expiry - FULL_TABLE_RECLAIM_BACKOFF_NS / 2;
    assert_eq!(
        new_flow(&mut ct, 2, before),
        CtVerdict::Dropped(CtDropReason::TableFull)
    );
    // Expired now, but within the back-off: still refused, nothing swept.
    let expired = ct.stats().expired;
    assert_eq!(
        new_flow(&mut ct, 3, expiry + 1),
        CtVerdict::Dropped(CtDropReason::TableFull)
    );
    assert_eq!(ct.stats().expired, expired);
    // After it, the next new connection reclaims the expired entries and is admitted.
    let after = before + FULL_TABLE_RECLAIM_BACKOFF_NS;
    assert!(matches!(new_flow(&mut ct, 4, after), CtVerdict::New { .. }));
    assert_eq!(ct.stats().expired, expired + 2);
}

#[test]
fn zone_limit_drops_only_that_zone() {
    let mut ct = ConnTrack::new(CtConfig {
        max_entries_per_zone: 2,
        ..cfg()
    })
    .unwrap();
    for i in 0..2 {
        assert!(ct
            .process(Zone(1), &PacketMeta::datagram(udp_n(i), 1), 0, allow(1))
            .passes());
    }
    assert_eq!(
        ct.process(Zone(1), &PacketMeta::datagram(udp_n(2), 1), 0, no_policy),
        CtVerdict::Dropped(CtDropReason::ZoneFull)
    );
    assert!(ct
        .process(Zone(2), &PacketMeta::datagram(udp_n(2), 1), 0, allow(1))
        .passes());
    // Existing ones in the full zone still pass.
    assert!(ct
        .process(
            Zone(1),
            &PacketMeta::datagram(udp_n(0).reversed(), 1),
            0,
            no_policy
        )
        .passes());
    // Raise zone 1's limit.
    ct.set_zone_limit(Zone(1), Some(3));
    assert_eq!(ct.zone_limit(Zone(1)), 3);
    assert!(ct
        .process(Zone(1), &PacketMeta::datagram(udp_n(2), 1), 0, allow(1))
        .passes());
    assert_eq!(ct.zone_len(Zone(1)), 3);
    assert_eq!(ct.zone_len(Zone(2)), 1);
    assert_eq!(ct.stats().drops(CtDropReason::ZoneFull), 1);
    assert_eq!(ct.flush_zone(Zone(1)), 3);
    assert_eq!(ct.len(), 1);
    ct.check_consistency().unwrap();
}

#[test]
fn incremental_expiry_is_bounded() {
    let mut ct = ct();
    for i in 0..100 {
        // Even ones get a reply (60 s timer), odd ones stay "first" (also 60 s) but are sent
        // twice, moving to "single" (30 s).
        let p = PacketMeta::datagram(udp_n(i), 1);
        assert!(ct.process(Z, &p, 0, allow(1)).passes());
        if i % 2 == 1 {
            assert!(ct.process(Z, &p, 0, no_policy).passes());
        }
    }
    let now = 45 * SEC;
    let mut removed = 0;
    let mut calls = 0;
    loop {
        let r = ct.expire(now, 16);
        assert!(r <= 16);
        removed += r;
        calls += 1;
        if calls == 7 {
            break;
        }
    }
    // 7 x 16 = 112 slots examined: one full pass over 100 slots.
    assert_eq!(removed, 50);
    assert_eq!(ct.len(), 50);
    assert!(ct
        .iter()
        .all(|c| c.state == ConnState::Datagram(UdpState::First)));
    assert_eq!(ct.expire(now, 1000), 0);
    assert_eq!(ct.expire(60 * SEC, 1000), 50);
    assert!(ct.is_empty());
    assert_eq!(ct.stats().expired, 100);
    ct.check_consistency().unwrap();
    // Slots are reused.
    assert!(ct
        .process(Z, &PacketMeta::datagram(udp_n(0), 1), 60 * SEC, allow(1))
        .passes());
    ct.check_consistency().unwrap();
}

#[test]
fn recheck_cuts_denied_and_preserves_the_rest() {
    let mut ct = ct();
    let mut c = Tcp::new(web());
    c.handshake(&mut ct, 0);
    let data = c.c(TcpFlags::ACK, 500);
    assert!(ct.process(Z, &data, 0, no_policy).passes());
    for i in 0..4 {
        assert!(ct
            .process(
                Z,
                &PacketMeta::datagram(udp_n(i), 1),
                0,
                allow(100 + u64::from(i))
            )
            .passes());
    }
    let before = ct.lookup(Z, &web(), 0).unwrap().1;

    // New policy: UDP to odd source ports is no longer allowed; the rest move to rule 500.
    let mut reported = Vec::new();
    let cut = ct.recheck_with_cut(
        |zone, t, mark| {
            assert_eq!(zone, Z);
            if t.protocol == IpProtocol::Udp && t.src_port % 2 == 1 {
                Decision::Deny { mark }
            } else {
                Decision::Allow { mark: 500 }
            }
        },
        |zone, t| reported.push((zone, *t)),
    );
    assert_eq!(cut, 2);
    reported.sort_by_key(|(_, t)| t.src_port);
    assert_eq!(reported, [(Z, udp_n(1)), (Z, udp_n(3))]);
    assert_eq!(ct.len(), 3);
    assert_eq!(ct.stats().recheck_cut, 2);
    ct.check_consistency().unwrap();

    let after = ct.lookup(Z, &web(), 0).unwrap().1;
    assert_eq!(after.state, before.state);
    assert_eq!(after.packets, before.packets);
    assert_eq!(after.mark, 500);
    // The TCP window state survived: the next segment is checked against it and passes.
    let more = c.s(TcpFlags::ACK, 100);
    assert_eq!(
        ct.process(Z, &more, 0, no_policy),
        CtVerdict::Established {
            dir: Direction::Reply,
            mark: 500
        }
    );
    // A cut connection's next packet is a new connection again (and is denied now).
    let r = PacketMeta::datagram(udp_n(1), 1);
    assert_eq!(
        ct.process(Z, &r, 0, |_| Decision::Deny { mark: 9 }),
        CtVerdict::Denied { mark: 9 }
    );
}

#[test]
fn ipv6_tcp_connection() {
    let mut ct = ct();
    let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
    let t = tuple(IpProtocol::Tcp, a, 50000, b, 443);
    let mut c = Tcp::new(t);
    c.wscale = [Some(7), Some(9)];
    let syn = c.c(TcpFlags::SYN, 0);
    assert!(ct.process(Z, &syn, 0, allow(1)).passes());
    let sa = c.s(TcpFlags::SYN | TcpFlags::ACK, 0);
    assert!(ct.process(Z, &sa, 0, no_policy).passes());
    let ack = c.c(TcpFlags::ACK, 0);
    assert!(ct.process(Z, &ack, 0, no_policy).passes());
    assert_eq!(tcp_state(&ct, &t, 0), (P::Established, P::Established));
}

#[test]
fn lookup_and_iter_report_connections() {
    let mut ct = ct();
    assert!(ct
        .process(Z, &PacketMeta::datagram(udp(), 10), 5, allow(3))
        .passes());
    let all: Vec<ConnInfo> = ct.iter().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].tuple, udp());
    assert_eq!(all[0].zone, Z);
    assert_eq!(all[0].mark, 3);
    assert_eq!(all[0].expires, 5 + 60 * SEC);
    assert_eq!(
        ct.lookup(Z, &udp().reversed(), 5).unwrap().0,
        Direction::Reply
    );
    assert!(ct.memory_bytes() > 0);
}

#[test]
fn config_validation() {
    assert!(ConnTrack::new(CtConfig {
        max_entries: u32::MAX,
        ..cfg()
    })
    .is_err());
    // Initial capacity above the limit is clamped, not an error.
    let ct = ConnTrack::new(CtConfig {
        max_entries: 4,
        initial_capacity: 1000,
        ..cfg()
    })
    .unwrap();
    assert!(ct.is_empty());
}

#[test]
fn entry_stays_compact() {
    // The memory target (<= 256 B per connection including the index) relies on this.
    assert!(std::mem::size_of::<Option<entry::Entry>>() <= 128);
}

#[test]
fn burst_gives_the_same_verdicts_as_single_packets() {
    // Two identical tables fed the same packets, one packet at a time and in bursts of
    // uneven size (more than BURST, so several chunks), including new, reply, invalid and
    // denied packets, and a packet whose connection is created earlier in the same burst.
    let mut single = ct();
    let mut burst = ct();
    let mut pkts = Vec::new();
    for i in 0..50u16 {
        let t = udp_n(i);
        pkts.push(PacketMeta::datagram(t, 10));
        pkts.push(PacketMeta::datagram(t.reversed(), 20));
    }
    let mut c = Tcp::new(web());
    pkts.push(c.c(TcpFlags::SYN, 0));
    pkts.push(c.s(TcpFlags::SYN | TcpFlags::ACK, 0));
    pkts.push(c.c(TcpFlags::SYN | TcpFlags::FIN, 0));
    pkts.push(PacketMeta::icmp(ping(3).reversed(), 0, 0));
    let decide = |p: &PacketMeta| {
        if p.tuple.src_port.is_multiple_of(3) {
            Decision::Deny { mark: 1 }
        } else {
            Decision::Allow {
                mark: u64::from(p.tuple.src_port),
            }
        }
    };
    let expected: Vec<CtVerdict> = pkts
        .iter()
        .map(|p| single.process(Z, p, 0, decide))
        .collect();
    let mut out = Vec::new();
    let mut got = Vec::new();
    for part in pkts.chunks(37) {
        burst.process_burst(Z, part, 0, decide, &mut out);
        assert_eq!(out.len(), part.len());
        got.extend_from_slice(&out);
    }
    assert_eq!(got, expected);
    assert_eq!(burst.stats(), single.stats());
    assert!(got
        .iter()
        .any(|v| matches!(v, CtVerdict::Established { .. })));
    assert!(got.iter().any(|v| matches!(v, CtVerdict::Denied { .. })));
    burst.check_consistency().unwrap();
}

/// Two zones' tables sharing a hasher take one packet hash for both, and give the same
/// verdicts as `process`; a hash by a foreign hasher (another seed, or random) is not used
/// but recomputed, so the result is the same again.
#[test]
fn a_packet_hashed_once_is_tracked_in_every_table_sharing_the_hasher() {
    let shared = FlowHasher::new(None);
    let mut a = ConnTrack::with_hasher(cfg(), shared.clone()).unwrap();
    let mut b = ConnTrack::with_hasher(cfg(), shared.clone()).unwrap();
    let mut plain = ct();
    let foreign = [FlowHasher::new(Some(1)), FlowHasher::new(None)];
    let (za, zb) = (Zone(1), Zone(2));
    let mut now = SEC;
    for i in 0..2000u16 {
        let t = tuple(IpProtocol::Udp, v4(1), 1000 + i, v4(2), 53);
        let fwd = PacketMeta::datagram(t, 100);
        let rev = PacketMeta::datagram(t.reversed(), 100);
        now += 1000;
        let h = shared.packet(&fwd);
        assert_eq!(h.meta(), &fwd);
        let mark = u64::from(i);
        for (ct, z) in [(&mut a, za), (&mut b, zb)] {
            assert_eq!(
                ct.process_hashed_packet(z, &h, now, allow(mark)),
                CtVerdict::New {
                    mark,
                    picked_up: false
                }
            );
            // The reply, hashed by the shared hasher, and again by foreign ones.
            let hr = shared.packet(&rev);
            let expected = CtVerdict::Established {
                dir: Direction::Reply,
                mark,
            };
            assert_eq!(ct.process_hashed_packet(z, &hr, now, no_policy), expected);
            for f in &foreign {
                assert_eq!(
                    ct.process_hashed_packet(z, &f.packet(&rev), now, no_policy),
                    expected
                );
            }
        }
        // A table with its own hasher recomputes the hash.
        assert_eq!(
            plain.process_hashed_packet(Z, &h, now, allow(mark)),
            CtVerdict::New {
                mark,
                picked_up: false
            }
        );
        assert_eq!(
            plain.process(Z, &rev, now, no_policy),
            CtVerdict::Established {
                dir: Direction::Reply,
                mark
            }
        );
    }
    for ct in [&a, &b, &plain] {
        assert_eq!(ct.len(), 2000);
        ct.check_consistency().unwrap();
    }
    // Expiry finds every entry under the hash it was stored with.
    for ct in [&mut a, &mut b, &mut plain] {
        assert_eq!(ct.expire(now + 3600 * SEC, usize::MAX), 2000);
        ct.check_consistency().unwrap();
    }
}

/// The table tries the slot it matched last before hashing (`Table::find_hinted`). A slot
/// freed and reused by another connection, or the same tuple in another zone, must not be
/// taken for the remembered connection.
#[test]
fn the_last_matched_slot_is_never_taken_for_another_connection() {
    let mut ct = ct();
    let a = udp();
    let b = tuple(IpProtocol::Udp, v4(1), 5354, v4(2), 53);
    let pa = PacketMeta::datagram(a, 60);
    let pb = PacketMeta::datagram(b, 60);
    assert!(matches!(
        ct.process(Z, &pa, 0, allow(1)),
        CtVerdict::New { mark: 1, .. }
    ));
    // Same tuple, other zone: its own connection, through policy.
    assert!(matches!(
        ct.process(Zone(8), &pa, 0, allow(9)),
        CtVerdict::New { mark: 9, .. }
    ));
    assert!(matches!(
        ct.process(Z, &pa, SEC, no_policy),
        CtVerdict::Established { mark: 1, .. }
    ));
    // `a` expires (UDP first: 60 s); `b` takes its freed slot.
    assert_eq!(ct.expire(100 * SEC, usize::MAX), 2);
    assert!(matches!(
        ct.process(Z, &pb, 100 * SEC, allow(2)),
        CtVerdict::New { mark: 2, .. }
    ));
    // `a` again: a new connection (its old slot holds `b` now), then tracked on its own.
    assert!(matches!(
        ct.process(Z, &pa, 101 * SEC, allow(3)),
        CtVerdict::New { mark: 3, .. }
    ));
    for (p, mark) in [(&pb, 2), (&pa, 3), (&pb, 2)] {
        assert!(matches!(
            ct.process(Z, p, 102 * SEC, no_policy),
            CtVerdict::Established { mark: m, .. } if m == mark
        ));
    }
    // The reply direction of the remembered connection is found through the hint too.
    let ra = PacketMeta::datagram(a.reversed(), 60);
    assert_eq!(
        ct.process(Z, &ra, 103 * SEC, no_policy),
        CtVerdict::Established {
            dir: Direction::Reply,
            mark: 3
        }
    );
    assert_eq!(ct.len(), 2);
}

/// A run counted on its first packet's verdict leaves the table as processing every packet
/// would: counters, state, timer and statistics.
#[test]
fn a_counted_datagram_run_equals_processing_each_packet() {
    // (what came before the run, the run's direction, its length)
    let cases: [(&[bool], bool, u64); 4] = [
        (&[true], true, 5),        // after the first packet: original, UDP single
        (&[true, true], true, 9),  // single, more originals
        (&[true], false, 7),       // the first reply makes it multiple; more replies
        (&[true, false], true, 3), // multiple, originals again
    ];
    for (k, (before, forward, run)) in cases.into_iter().enumerate() {
        let (mut each, mut batched) = (ct(), ct());
        let pkt =
            |fwd: bool, len| PacketMeta::datagram(if fwd { udp() } else { udp().reversed() }, len);
        let mut now = SEC;
        for (i, fwd) in before.iter().enumerate() {
            for t in [&mut each, &mut batched] {
                assert!(t.process(Z, &pkt(*fwd, 60), now, allow(4)).passes());
            }
            now += (i as u64 + 1) * SEC;
        }
        for i in 0..run {
            let v = each.process(Z, &pkt(forward, 100 + i as u32), now, no_policy);
            assert!(
                matches!(v, CtVerdict::Established { mark: 4, .. }),
                "case {k}"
            );
        }
        let first = batched.process(Z, &pkt(forward, 100), now, no_policy);
        assert!(matches!(first, CtVerdict::Established { mark: 4, .. }));
        let rest_bytes = (1..run).map(|i| 100 + i).sum::<u64>();
        let wire = if forward { udp() } else { udp().reversed() };
        assert_eq!(
            batched.count_datagram_run(Z, &wire, run - 1, rest_bytes, now),
            Some(4)
        );
        let info = |t: &ConnTrack| t.lookup(Z, &udp(), now).unwrap().1;
        assert_eq!(info(&batched), info(&each), "case {k}");
        assert_eq!(batched.stats(), each.stats(), "case {k}");
    }
}

#[test]
fn a_datagram_run_of_a_connection_not_tracked_counts_only_statistics() {
    let mut ct = ct();
    // Gone (cut since the run began): only the statistics count the packets let through.
    assert_eq!(ct.count_datagram_run(Z, &udp(), 3, 300, SEC), None);
    assert_eq!(ct.stats().established, 3);
    assert!(ct.is_empty());
    // Expired: not revived.
    assert!(ct
        .process(Z, &PacketMeta::datagram(udp(), 60), 0, allow(1))
        .passes());
    assert_eq!(ct.count_datagram_run(Z, &udp(), 3, 300, 3600 * SEC), None);
    assert!(ct.lookup(Z, &udp(), 3600 * SEC).is_none());
    // A TCP connection is not a datagram one: its segments need tracking each.
    Tcp::new(web()).handshake(&mut ct, SEC);
    let established = ct.stats().established;
    assert_eq!(ct.count_datagram_run(Z, &web(), 1, 40, SEC), None);
    assert_eq!(ct.stats().established, established);
}

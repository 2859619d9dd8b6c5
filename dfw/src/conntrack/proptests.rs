//! Property tests over random packet sequences drawn from a small universe of hosts, ports
//! and zones, so that directions, collisions, limits and expiry all get exercised.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::flow::IpProtocol;

const SEC: u64 = 1_000_000_000;
const MAX: u32 = 6;
const MAX_ZONE: u32 = 4;

#[derive(Debug, Clone)]
enum Op {
    Packet {
        zone: u32,
        kind: u8,
        src: u8,
        dst: u8,
        sp: u16,
        dp: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        inner_rev: bool,
        dt: u64,
    },
    Expire {
        budget: usize,
        dt: u64,
    },
    /// Switch to another policy and re-check existing connections against it.
    Recheck {
        policy: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let seqs = prop_oneof![
        Just(1000u32),
        Just(1001),
        Just(1101),
        Just(5000),
        any::<u32>()
    ];
    let acks = prop_oneof![Just(0u32), Just(1000), Just(1001), Just(5001), any::<u32>()];
    let flags = prop_oneof![
        Just(TcpFlags::SYN.0),
        Just((TcpFlags::SYN | TcpFlags::ACK).0),
        Just(TcpFlags::ACK.0),
        Just((TcpFlags::ACK | TcpFlags::PSH).0),
        Just((TcpFlags::FIN | TcpFlags::ACK).0),
        Just(TcpFlags::RST.0),
        any::<u8>(),
    ];
    prop_oneof![
        8 => (
            0u32..2,
            0u8..6,
            1u8..4,
            1u8..4,
            1u16..3,
            1u16..3,
            flags,
            seqs,
            acks,
            any::<bool>(),
            prop_oneof![Just(0u64), 0..5 * SEC, 0..100 * SEC],
        )
            .prop_map(
                |(zone, kind, src, dst, sp, dp, flags, seq, ack, inner_rev, dt)| Op::Packet {
                    zone,
                    kind,
                    src,
                    dst,
                    sp,
                    dp,
                    flags,
                    seq,
                    ack,
                    inner_rev,
                    dt,
                }
            ),
        1 => (0usize..8, 0..50 * SEC).prop_map(|(budget, dt)| Op::Expire { budget, dt }),
        1 => (0u8..4).prop_map(|policy| Op::Recheck { policy }),
    ]
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

/// Deterministic policies over the original tuple; policy 0..4 differ in what they deny.
fn policy(p: u8, t: &FiveTuple) -> bool {
    let ip_last = |a: IpAddr| match a {
        IpAddr::V4(v) => u32::from(v.octets()[3]),
        IpAddr::V6(_) => 0,
    };
    let h = ip_last(t.src) * 7
        + ip_last(t.dst) * 13
        + u32::from(t.src_port) * 3
        + u32::from(t.dst_port) * 5
        + u32::from(t.protocol.number());
    (h + u32::from(p)) % 3 != 0
}

fn decision(p: u8, t: &FiveTuple) -> Decision {
    if policy(p, t) {
        Decision::Allow { mark: u64::from(p) }
    } else {
        Decision::Deny { mark: 0 }
    }
}

fn build(op: &Op) -> Option<(Zone, PacketMeta, u64)> {
    let Op::Packet {
        zone,
        kind,
        src,
        dst,
        sp,
        dp,
        flags,
        seq,
        ack,
        inner_rev,
        dt,
    } = *op
    else {
        return None;
    };
    let t = |protocol, sp, dp| FiveTuple {
        src: ip(src),
        dst: ip(dst),
        protocol,
        src_port: sp,
        dst_port: dp,
    };
    let pkt = match kind {
        0 | 1 => PacketMeta::tcp(
            t(IpProtocol::Tcp, sp, dp),
            TcpFlags(flags),
            seq,
            ack,
            1000,
            100 * u32::from(kind),
        ),
        2 => PacketMeta::datagram(t(IpProtocol::Udp, sp, dp), 100),
        3 => PacketMeta::icmp(t(IpProtocol::Icmp, sp, sp), 8, 0),
        4 => PacketMeta::icmp(t(IpProtocol::Icmp, sp, sp), 0, 0),
        _ => {
            // An ICMP error to `dst` quoting a UDP or TCP packet `dst` sent.
            let proto = if flags & 1 == 0 {
                IpProtocol::Udp
            } else {
                IpProtocol::Tcp
            };
            let mut inner = FiveTuple {
                src: ip(dst),
                dst: ip(src),
                protocol: proto,
                src_port: sp,
                dst_port: dp,
            };
            if inner_rev {
                inner.src_port = dp;
                inner.dst_port = sp;
            }
            PacketMeta::icmp_error(t(IpProtocol::Icmp, 0, 0), 3, 3, inner)
        }
    };
    Some((Zone(zone), pkt, dt))
}

fn keys(ct: &ConnTrack) -> BTreeSet<(u32, FiveTuple)> {
    ct.iter().map(|c| (c.zone.0, c.tuple)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) A packet passes only if the current policy allows the connection it belongs to, and
    /// the policy is consulted only for packets that are not part of a tracked connection.
    /// (b) Entry counts never exceed the limits. (c) Index and slab stay consistent.
    #[test]
    fn denied_connections_never_pass_and_table_stays_consistent(
        ops in proptest::collection::vec(op(), 1..120),
        pickup in any::<bool>(),
    ) {
        let mut ct = ConnTrack::new(CtConfig {
            max_entries: MAX,
            max_entries_per_zone: MAX_ZONE,
            pickup_established: pickup,
            hash_seed: Some(7),
            full_table_reclaim: 2,
            ..CtConfig::default()
        }).unwrap();
        let mut now = 0u64;
        let mut current = 0u8;
        for op in &ops {
            match op {
                Op::Packet { .. } => {
                    let Some((zone, pkt, dt)) = build(op) else { unreachable!() };
                    now += dt;
                    let tracked_before = ct.lookup(zone, &pkt.tuple, now).is_some();
                    let mut consulted = false;
                    let v = ct.process(zone, &pkt, now, |p| {
                        consulted = true;
                        decision(current, &p.tuple)
                    });
                    match v {
                        CtVerdict::New { .. } | CtVerdict::Untracked { .. } => {
                            prop_assert!(consulted);
                            prop_assert!(policy(current, &pkt.tuple), "{v:?} {pkt:?}");
                        }
                        CtVerdict::Established { dir, mark } => {
                            prop_assert!(!consulted, "policy consulted for {v:?}");
                            let orig = match dir {
                                Direction::Original => pkt.tuple,
                                Direction::Reply => pkt.tuple.reversed(),
                            };
                            prop_assert!(policy(current, &orig), "{v:?} {pkt:?}");
                            prop_assert_eq!(mark, u64::from(current));
                            prop_assert!(tracked_before);
                        }
                        CtVerdict::Related { dir, .. } => {
                            prop_assert!(!consulted);
                            let inner = pkt.icmp_inner.unwrap();
                            let orig = match dir {
                                Direction::Original => inner,
                                Direction::Reply => inner.reversed(),
                            };
                            prop_assert!(policy(current, &orig));
                        }
                        CtVerdict::Denied { .. } => {
                            prop_assert!(consulted);
                            prop_assert!(!policy(current, &pkt.tuple));
                        }
                        CtVerdict::Dropped(_) => {}
                    }
                }
                Op::Expire { budget, dt } => {
                    now += dt;
                    let before = keys(&ct);
                    let removed = ct.expire(now, *budget);
                    prop_assert!(removed <= *budget);
                    let after = keys(&ct);
                    prop_assert_eq!(before.len() - after.len(), removed);
                    for (zone, t) in before.difference(&after) {
                        prop_assert!(ct.table.find(*zone, t).is_none());
                        prop_assert!(ct.table.find(*zone, &t.reversed()).is_none());
                    }
                }
                Op::Recheck { policy: p } => {
                    current = *p;
                    let before = keys(&ct);
                    let cut = ct.recheck(|_, t, _| decision(current, t));
                    let after = keys(&ct);
                    prop_assert_eq!(before.len() - after.len(), cut);
                    for (zone, t) in &before {
                        let kept = after.contains(&(*zone, *t));
                        prop_assert_eq!(kept, policy(current, t));
                        if !kept {
                            prop_assert!(ct.table.find(*zone, t).is_none());
                            prop_assert!(ct.table.find(*zone, &t.reversed()).is_none());
                        }
                    }
                }
            }
            prop_assert!(ct.len() <= MAX as usize);
            for z in 0..2 {
                prop_assert!(ct.zone_len(Zone(z)) <= MAX_ZONE as usize);
            }
            if let Err(e) = ct.check_consistency() {
                return Err(TestCaseError::fail(e));
            }
        }
    }

    /// Every live entry is found from both directions with the right direction and mark, and
    /// the table's view agrees with a simple model of what was admitted.
    #[test]
    fn entries_findable_from_both_directions(
        flows in proptest::collection::vec((0u32..3, 1u8..5, 1u8..5, 1u16..4, 1u16..4), 1..40),
    ) {
        let mut ct = ConnTrack::new(CtConfig { hash_seed: None, ..CtConfig::default() }).unwrap();
        let mut admitted: BTreeSet<(u32, FiveTuple)> = BTreeSet::new();
        for (i, (zone, a, b, sp, dp)) in flows.iter().enumerate() {
            let t = FiveTuple {
                src: ip(*a),
                dst: ip(*b),
                protocol: IpProtocol::Udp,
                src_port: *sp,
                dst_port: *dp,
            };
            let v = ct.process(Zone(*zone), &PacketMeta::datagram(t, 1), 0, |_| Decision::Allow { mark: i as u64 });
            let known = admitted.contains(&(*zone, t)) || admitted.contains(&(*zone, t.reversed()));
            match v {
                CtVerdict::New { .. } => {
                    prop_assert!(!known);
                    admitted.insert((*zone, t));
                }
                CtVerdict::Established { .. } => prop_assert!(known),
                CtVerdict::Dropped(CtDropReason::Invalid(InvalidReason::SelfAddressed)) => {
                    prop_assert!(t == t.reversed());
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(keys(&ct), admitted.clone());
        for (zone, t) in &admitted {
            let (d, info) = ct.lookup(Zone(*zone), t, 0).unwrap();
            prop_assert_eq!(d, Direction::Original);
            let (d2, info2) = ct.lookup(Zone(*zone), &t.reversed(), 0).unwrap();
            prop_assert_eq!(d2, Direction::Reply);
            prop_assert_eq!(info, info2);
        }
        if let Err(e) = ct.check_consistency() {
            return Err(TestCaseError::fail(e));
        }
    }
}

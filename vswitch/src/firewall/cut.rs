//! Connections a policy change cut, remembered so their next segments get a reset.
//!
//! A re-check removes a connection the new policy refuses; both TCP stacks still hold it and
//! would retransmit into silence until they time out (minutes). So the next segment of a cut
//! connection that the policy refuses is answered with an RST (built from that segment, so
//! its sequence number is one the sender accepts), as a host answers a segment for a
//! connection it does not have (RFC 9293 3.10.7.1). Only cut connections are answered: a
//! Drop rule stays silent for every other segment, SYNs included.

use std::collections::{HashSet, VecDeque};

use dfw::conntrack::{PacketMeta, TcpFlags};
use dfw::flow::{FiveTuple, IpProtocol};

/// Cut connections remembered per vNIC; the oldest are forgotten first.
pub const CUT_CAPACITY: usize = 4096;

/// A bounded FIFO set of cut TCP connections, both orientations of each.
#[derive(Debug, Default)]
pub struct CutSet {
    set: HashSet<FiveTuple>,
    order: VecDeque<FiveTuple>,
}

impl CutSet {
    /// Remembers a cut connection (its original tuple); non-TCP connections are ignored.
    pub fn insert(&mut self, orig: &FiveTuple) {
        if orig.protocol != IpProtocol::Tcp || self.set.contains(orig) {
            return;
        }
        while self.order.len() >= CUT_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old.reversed());
                self.set.remove(&old);
            }
        }
        self.set.insert(*orig);
        self.set.insert(orig.reversed());
        self.order.push_back(*orig);
    }

    /// Whether a refused packet is a segment of a cut connection that deserves an RST: TCP,
    /// neither SYN (a new connection attempt meets the policy as usual) nor RST.
    pub fn answers(&self, meta: &PacketMeta) -> bool {
        let f = meta.tcp_flags;
        meta.tuple.protocol == IpProtocol::Tcp
            && !f.contains(TcpFlags::SYN)
            && !f.contains(TcpFlags::RST)
            && self.set.contains(&meta.tuple)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn tcp(sport: u16) -> FiveTuple {
        FiveTuple {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            protocol: IpProtocol::Tcp,
            src_port: sport,
            dst_port: 8080,
        }
    }

    fn seg(tuple: FiveTuple, flags: TcpFlags) -> PacketMeta {
        let mut m = PacketMeta::datagram(tuple, 40);
        m.tcp_flags = flags;
        m
    }

    #[test]
    fn answers_segments_of_cut_connections_both_ways_but_not_syns_or_resets() {
        let mut cut = CutSet::default();
        cut.insert(&tcp(40000));
        assert!(cut.answers(&seg(tcp(40000), TcpFlags::ACK)));
        assert!(cut.answers(&seg(tcp(40000).reversed(), TcpFlags::ACK)));
        assert!(!cut.answers(&seg(tcp(40000), TcpFlags::SYN)));
        assert!(!cut.answers(&seg(tcp(40000), TcpFlags::RST)));
        assert!(!cut.answers(&seg(tcp(40001), TcpFlags::ACK)));
        let mut udp = tcp(5000);
        udp.protocol = IpProtocol::Udp;
        cut.insert(&udp);
        assert_eq!(cut.len(), 1);
    }

    #[test]
    fn stays_bounded_forgetting_the_oldest() {
        let mut cut = CutSet::default();
        for p in 0..(CUT_CAPACITY as u16 + 10) {
            cut.insert(&tcp(p));
        }
        assert_eq!(cut.len(), CUT_CAPACITY);
        assert!(!cut.answers(&seg(tcp(0), TcpFlags::ACK)));
        assert!(!cut.answers(&seg(tcp(9).reversed(), TcpFlags::ACK)));
        assert!(cut.answers(&seg(tcp(10), TcpFlags::ACK)));
        assert_eq!(cut.set.len(), 2 * CUT_CAPACITY);
    }
}

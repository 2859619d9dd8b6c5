//! Internet checksum (RFC 1071) helpers.
//!
//! Small and allocation-free: used to complete partial checksums for receivers that did not
//! negotiate `GUEST_CSUM`, to checksum software-made TSO segments, and by the reject builders.

use std::net::IpAddr;

/// Adds the bytes of `data` as big-endian 16-bit words to `sum` (an odd trailing byte is padded
/// with zero). Returns the unfolded sum; fold it with [`fold`].
pub fn add_bytes(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four 16-bit words at once; u64 headroom avoids carries for any frame we handle.
        sum += u16::from_be_bytes([c[0], c[1]]) as u64
            + u16::from_be_bytes([c[2], c[3]]) as u64
            + u16::from_be_bytes([c[4], c[5]]) as u64
            + u16::from_be_bytes([c[6], c[7]]) as u64;
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        sum += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// Folds a sum into 16 bits (ones' complement addition of the carries).
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum value to store: ones' complement of the folded sum.
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// Sum of the TCP/UDP pseudo-header for `l4_len` bytes of upper-layer data.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, l4_len: u32) -> u64 {
    let mut sum = 0u64;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = add_bytes(sum, &s.octets());
            sum = add_bytes(sum, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = add_bytes(sum, &s.octets());
            sum = add_bytes(sum, &d.octets());
        }
        // Mixed families cannot occur for a parsed packet; sum what we have.
        (s, d) => {
            sum = add_ip(sum, s);
            sum = add_ip(sum, d);
        }
    }
    sum + protocol as u64 + (l4_len >> 16) as u64 + (l4_len & 0xffff) as u64
}

fn add_ip(sum: u64, ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => add_bytes(sum, &a.octets()),
        IpAddr::V6(a) => add_bytes(sum, &a.octets()),
    }
}

/// IPv4 header checksum of `hdr` (the checksum field must be zero or will be included).
pub fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    finish(add_bytes(0, hdr))
}

/// Error completing a partial checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("checksum field at {start}+{offset} outside a frame of {len} bytes")]
pub struct CsumRangeError {
    pub start: usize,
    pub offset: usize,
    pub len: usize,
}

/// Completes a `NEEDS_CSUM` checksum in place, as a device would: the guest seeded the field
/// with the pseudo-header sum, so the checksum over `frame[start..end]` (field included) is the
/// final value. `end` is the end of the L3 packet, so Ethernet padding is not summed.
pub fn complete_partial(
    frame: &mut [u8],
    start: usize,
    offset: usize,
    end: usize,
) -> Result<(), CsumRangeError> {
    let err = CsumRangeError {
        start,
        offset,
        len: frame.len(),
    };
    let field = start.checked_add(offset).ok_or(err)?;
    if field + 2 > end || end > frame.len() {
        return Err(err);
    }
    let mut c = finish(add_bytes(0, &frame[start..end]));
    // A zero UDP checksum means "none"; any L4 checksum of 0 is sent as 0xffff instead.
    if c == 0 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 sums to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_bytes(0, &data)), 0xddf2);
        // Odd lengths pad with zero.
        assert_eq!(fold(add_bytes(0, &[0x12])), 0x1200);
        assert_eq!(fold(add_bytes(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn ipv4_header_checksum_matches_etherparse() {
        let mut h = etherparse::Ipv4Header::new(
            100,
            64,
            etherparse::IpNumber::UDP,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        )
        .unwrap();
        h.header_checksum = h.calc_header_checksum();
        let expected = h.header_checksum;
        assert_ne!(expected, 0);
        let mut b = h.to_bytes().to_vec();
        b[10] = 0;
        b[11] = 0;
        assert_eq!(ipv4_header_checksum(&b), expected);
    }

    #[test]
    fn completing_a_seeded_udp_checksum_gives_the_full_checksum() {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut f, b"some payload bytes")
            .unwrap();
        let good = u16::from_be_bytes([f[40], f[41]]);
        // What a guest with CSUM offload hands over: pseudo-header sum in the field.
        let l4_len = (f.len() - 34) as u32;
        let seed = fold(pseudo_header_sum(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            17,
            l4_len,
        ));
        f[40..42].copy_from_slice(&seed.to_be_bytes());
        let end = f.len();
        complete_partial(&mut f, 34, 6, end).unwrap();
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), good);
        assert!(complete_partial(&mut f, 34, 100, end).is_err());
        assert!(complete_partial(&mut f, usize::MAX, 6, end).is_err());
    }
}

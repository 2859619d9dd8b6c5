//! The virtio-net header and offload negotiation.
//!
//! Every frame on a virtqueue (and on our `IFF_VNET_HDR` TAP) is preceded by a
//! `virtio_net_hdr_v1`. On TX it tells us whether the guest left a partial checksum for us
//! (`NEEDS_CSUM`) and whether the frame is a TSO super-segment (`gso_type`); on RX we tell the
//! guest the same about what we deliver. Between two local vNICs we pass those offloads through
//! untouched when the receiver negotiated them, and resolve them in software when it did not
//! (see [`crate::offload`]).
//!
//! The header is 12 bytes once `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF` is negotiated,
//! otherwise the legacy 10 bytes (no `num_buffers`). Fields are little-endian: VERSION_1 says so,
//! and legacy guests are guest-endian, which on the x86-64 hosts we run on is little-endian too.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Size of `virtio_net_hdr_v1` / `virtio_net_hdr_mrg_rxbuf`.
pub const VNET_HDR_LEN: usize = 12;
/// Size of the legacy `virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN_LEGACY: usize = 10;

pub const FLAG_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
pub const FLAG_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

/// Smallest MSS we accept in a TSO header. Linux never goes below 88 (`TCP_MIN_MSS`); a tiny
/// value would let a guest make us cut one 64 KiB frame into tens of thousands of segments.
pub const MIN_GSO_SIZE: u16 = 64;

/// Header length for a set of negotiated virtio features.
pub const fn vnet_hdr_len(acked_features: u64) -> usize {
    if acked_features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)) != 0 {
        VNET_HDR_LEN
    } else {
        VNET_HDR_LEN_LEGACY
    }
}

/// The wire layout of the header, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// Only meaningful on RX with mergeable buffers; zero otherwise.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Decodes the first 10 or 12 bytes. `None` if `b` is shorter than 10 bytes.
    pub fn parse(b: &[u8]) -> Option<VirtioNetHdr> {
        let h = b.get(..VNET_HDR_LEN_LEGACY)?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let num_buffers = match b.get(10..12) {
            Some(n) => u16::from_le_bytes([n[0], n[1]]),
            None => 0,
        };
        Some(VirtioNetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers,
        })
    }

    /// Encodes the 12-byte form; callers with a legacy header use the first 10 bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// One direction's checksum/TSO capabilities.
///
/// For a vNIC's TX side this is what the guest may hand us (`CSUM`, `HOST_TSO4/6`); for its RX
/// side what it accepts (`GUEST_CSUM`, `GUEST_TSO4/6`). UFO/USO and ECN-GSO are never offered
/// (see [`crate::device`] for why), so they have no fields here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadSet {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
}

impl OffloadSet {
    pub const NONE: OffloadSet = OffloadSet {
        csum: false,
        tso4: false,
        tso6: false,
    };
    pub const ALL: OffloadSet = OffloadSet {
        csum: true,
        tso4: true,
        tso6: true,
    };

    /// What a guest that acked `features` may send us.
    pub const fn guest_tx(features: u64) -> OffloadSet {
        OffloadSet {
            csum: features & (1 << VIRTIO_NET_F_CSUM) != 0,
            tso4: features & (1 << VIRTIO_NET_F_HOST_TSO4) != 0,
            tso6: features & (1 << VIRTIO_NET_F_HOST_TSO6) != 0,
        }
    }

    /// What a guest that acked `features` accepts from us.
    pub const fn guest_rx(features: u64) -> OffloadSet {
        OffloadSet {
            csum: features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0,
            tso4: features & (1 << VIRTIO_NET_F_GUEST_TSO4) != 0,
            tso6: features & (1 << VIRTIO_NET_F_GUEST_TSO6) != 0,
        }
    }

    pub const fn allows_gso(&self, kind: GsoKind) -> bool {
        match kind {
            GsoKind::TcpV4 => self.tso4,
            GsoKind::TcpV6 => self.tso6,
        }
    }
}

/// TCP segmentation offload flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    TcpV4,
    TcpV6,
}

/// A validated, normalised view of a frame's offload state, independent of which port it came
/// from. This is what travels with a frame between ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketOffload {
    /// Partial checksum left to the device: `(csum_start, csum_offset)` from the frame start.
    pub partial_csum: Option<(u16, u16)>,
    /// TSO super-segment: kind and MSS.
    pub gso: Option<(GsoKind, u16)>,
    /// The sender vouches the checksums are correct (TAP `DATA_VALID`).
    pub data_valid: bool,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    #[error("NEEDS_CSUM without a negotiated checksum offload")]
    CsumNotNegotiated,
    #[error("checksum start/offset outside the frame")]
    CsumOutOfRange,
    #[error("GSO type {0:#x} not negotiated or not supported")]
    GsoNotAllowed(u8),
    #[error("GSO without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("GSO segment size {0} below {MIN_GSO_SIZE}")]
    GsoSizeTooSmall(u16),
}

impl VirtioNetHdr {
    /// Checks the header of a frame of `frame_len` bytes (excluding the header) against what the
    /// sender negotiated, and normalises it.
    pub fn validate(
        &self,
        allowed: OffloadSet,
        frame_len: usize,
    ) -> Result<PacketOffload, HdrError> {
        let mut out = PacketOffload {
            data_valid: self.flags & FLAG_DATA_VALID != 0,
            ..Default::default()
        };
        if self.flags & FLAG_NEEDS_CSUM != 0 {
            if !allowed.csum {
                return Err(HdrError::CsumNotNegotiated);
            }
            // The 16-bit checksum field itself must lie inside the frame.
            let end = self.csum_start as usize + self.csum_offset as usize + 2;
            if end > frame_len {
                return Err(HdrError::CsumOutOfRange);
            }
            out.partial_csum = Some((self.csum_start, self.csum_offset));
        }
        let kind = match self.gso_type {
            GSO_NONE => None,
            GSO_TCPV4 if allowed.tso4 => Some(GsoKind::TcpV4),
            GSO_TCPV6 if allowed.tso6 => Some(GsoKind::TcpV6),
            other => return Err(HdrError::GsoNotAllowed(other)),
        };
        if let Some(kind) = kind {
            if out.partial_csum.is_none() {
                return Err(HdrError::GsoWithoutCsum);
            }
            if self.gso_size < MIN_GSO_SIZE {
                return Err(HdrError::GsoSizeTooSmall(self.gso_size));
            }
            out.gso = Some((kind, self.gso_size));
        }
        Ok(out)
    }
}

impl PacketOffload {
    /// Header that describes this frame to a receiver that supports all of its offloads.
    /// `hdr_len` is the length of the Ethernet+IP+TCP headers, needed for GSO frames.
    pub fn to_header(&self, hdr_len: u16) -> VirtioNetHdr {
        let mut h = VirtioNetHdr::default();
        if let Some((start, off)) = self.partial_csum {
            h.flags |= FLAG_NEEDS_CSUM;
            h.csum_start = start;
            h.csum_offset = off;
        } else if self.data_valid {
            h.flags |= FLAG_DATA_VALID;
        }
        if let Some((kind, mss)) = self.gso {
            h.gso_type = match kind {
                GsoKind::TcpV4 => GSO_TCPV4,
                GsoKind::TcpV6 => GSO_TCPV6,
            };
            h.gso_size = mss;
            h.hdr_len = hdr_len;
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(VirtioNetHdr::parse(&b), Some(h));
        let legacy = VirtioNetHdr::parse(&b[..10]).unwrap();
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy.gso_size, 1440);
        assert!(VirtioNetHdr::parse(&b[..9]).is_none());
    }

    #[test]
    fn header_len_follows_features() {
        assert_eq!(vnet_hdr_len(0), 10);
        assert_eq!(vnet_hdr_len(1 << VIRTIO_F_VERSION_1), 12);
        assert_eq!(vnet_hdr_len(1 << VIRTIO_NET_F_MRG_RXBUF), 12);
    }

    #[test]
    fn validate_refuses_unnegotiated_offloads() {
        let csum = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        assert_eq!(
            csum.validate(OffloadSet::NONE, 100),
            Err(HdrError::CsumNotNegotiated)
        );
        assert_eq!(
            csum.validate(OffloadSet::ALL, 100).unwrap().partial_csum,
            Some((34, 16))
        );
        assert_eq!(
            csum.validate(OffloadSet::ALL, 51),
            Err(HdrError::CsumOutOfRange)
        );

        let tso = VirtioNetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            ..csum
        };
        let only_csum = OffloadSet {
            csum: true,
            ..OffloadSet::NONE
        };
        assert_eq!(
            tso.validate(only_csum, 100),
            Err(HdrError::GsoNotAllowed(GSO_TCPV4))
        );
        assert_eq!(
            tso.validate(OffloadSet::ALL, 100).unwrap().gso,
            Some((GsoKind::TcpV4, 1448))
        );
        let ecn = VirtioNetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..tso
        };
        assert!(ecn.validate(OffloadSet::ALL, 100).is_err());
        let no_csum = VirtioNetHdr { flags: 0, ..tso };
        assert_eq!(
            no_csum.validate(OffloadSet::ALL, 100),
            Err(HdrError::GsoWithoutCsum)
        );
        let zero = VirtioNetHdr { gso_size: 0, ..tso };
        assert_eq!(
            zero.validate(OffloadSet::ALL, 100),
            Err(HdrError::GsoSizeTooSmall(0))
        );
        let tiny = VirtioNetHdr { gso_size: 8, ..tso };
        assert_eq!(
            tiny.validate(OffloadSet::ALL, 100),
            Err(HdrError::GsoSizeTooSmall(8))
        );
    }

    #[test]
    fn feature_bits_map_to_offload_sets() {
        let f = (1u64 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_CSUM);
        assert_eq!(
            OffloadSet::guest_tx(f),
            OffloadSet {
                csum: true,
                tso4: true,
                tso6: false
            }
        );
        assert_eq!(
            OffloadSet::guest_rx(f),
            OffloadSet {
                csum: true,
                tso4: false,
                tso6: false
            }
        );
    }
}

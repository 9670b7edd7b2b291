//! The TAP's offloads (`--offload`). With `IFF_VNET_HDR` every frame read from or written to
//! the TAP carries a `virtio_net_hdr` in front; told by `TUNSETOFFLOAD` that the relay
//! completes checksums and segments TCP (TSO4, TSO6, with ECN), the kernel hands over a TCP
//! flow's data as super-frames of up to 64 KiB with one partial checksum, instead of paying
//! its per-packet cost for every MTU-sized frame. Guests cannot take those: this module reads
//! the header, completes a partial checksum in place, and cuts a super-frame into the frames
//! the host's TCP would have sent (each at most the headers plus `gso_size` bytes, which the
//! host's TCP takes from the TAP's MTU; the relay also checks them against `--max-frame`),
//! with their IP lengths, IPv4 ids, sequence numbers, flags and checksums fixed. Untagged
//! frames only: a VLAN-tagged super-frame (a VLAN device on the TAP) is refused, and dropped.
//! Pure; fuzzed (`fuzz/fuzz_targets/offload.rs`).

/// Bytes of the `virtio_net_hdr` in front of every frame (the kernel's default size).
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum from `csum_start` to the end is partial and must be completed.
pub const NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` flag: the flow uses ECN (CWR goes on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// How many bytes a super-frame may carry at most: the TAP is told to hand over at most
/// [`max_segments`] segments at once (`gso_max_segs`, which the kernel applies to its own TCP
/// and to the packets it forwards), so that a super-frame always fits a 64 KiB TAP buffer.
/// (Super-frames of 16 KiB were tried: with them the relay used more CPU per Gbit than
/// without offloads, see bench/README.md.)
pub const SUPER_FRAME_BUDGET: usize = 64 * 1024;

/// The TAP's `gso_max_segs` for frames up to `max_frame` bytes: at least 1.
pub fn max_segments(max_frame: usize) -> u32 {
    // Lossless: at most 64 Ki.
    (SUPER_FRAME_BUDGET / max_frame.max(1)).max(1) as u32
}

/// The largest frame a TAP read with offloads must take: the largest any TAP frame can be
/// (a 65 535-byte IP packet, its Ethernet header and a VLAN tag), whatever `gso_max_segs`
/// says ([`max_segments`] segments of at most `max_frame` bytes each stay below it). A read
/// that fills all of it is taken as cut short.
pub fn largest_super_frame(max_frame: usize) -> usize {
    (max_segments(max_frame) as usize * max_frame).max(LARGEST_FRAME)
}

/// The largest frame a TAP hands over: a 65 535-byte IP packet, Ethernet header, VLAN tag.
pub const LARGEST_FRAME: usize = 65_535 + 14 + 4;

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A `virtio_net_hdr`, in the host's byte order (the kernel's for a TAP without
/// `TUNSETVNETLE`/`BE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header in its first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// A super-frame to cut into segments (not merely a frame with a partial checksum).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Why a frame from the TAP could not be made whole (dropped as `offload_malformed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("partial checksum outside the frame, or not on a 16-bit word of its range")]
    ChecksumPlace,
    #[error("a segmentation type the relay did not offer ({0:#x})")]
    GsoType(u8),
    #[error("a super-frame whose headers are not untagged Ethernet, IPv4 or IPv6 (without extension headers), and TCP")]
    Headers,
    #[error("a super-frame with segment size 0, or segments too long for IP")]
    SegmentSize,
}

/// The one's complement sum of `bytes` as big-endian 16-bit words (an odd last byte padded
/// with zero), added to `acc`; not folded. Sums of up to 2^40 bytes do not overflow.
pub fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        // Two big-endian 32-bit halves: each is two 16-bit words, and 2^16 ≡ 1 when folded.
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xFFFF_FFFF);
    }
    let mut pairs = chunks.remainder().chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// `acc` folded to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    // Lossless: folded below 2^16.
    acc as u16
}

/// Completes the checksum the kernel left partial: the one's complement of the sum from
/// `start` to the end of `frame` (the field at `start + offset` holds the pseudo-header's
/// sum) goes into that field; a result of 0 is sent as 0xFFFF, as the kernel does.
pub fn complete_checksum(
    frame: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), OffloadError> {
    // A checksum field is a 16-bit word of the range it covers: at an even offset.
    let at = start
        .checked_add(offset)
        .filter(|at| offset % 2 == 0 && at.checked_add(2).is_some_and(|end| end <= frame.len()))
        .ok_or(OffloadError::ChecksumPlace)?;
    let check = !fold(sum(&frame[start..], 0));
    let check = if check == 0 { 0xFFFF } else { check };
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// A TCP super-frame's layout, checked once; [`Gso::write_segment`] then cuts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    v4: bool,
    tcp_at: usize,
    /// Ethernet, IP and TCP headers.
    hdr_len: usize,
    mss: usize,
    payload: usize,
}

impl Gso {
    /// The layout of the super-frame `frame` that `hdr` describes.
    pub fn parse(frame: &[u8], hdr: &VnetHdr) -> Result<Gso, OffloadError> {
        let kind = hdr.gso_type & !GSO_ECN;
        let ethertype = frame
            .get(12..14)
            .map(|t| u16::from_be_bytes([t[0], t[1]]))
            .ok_or(OffloadError::Headers)?;
        let ip = frame.get(ETH_LEN..).ok_or(OffloadError::Headers)?;
        let (v4, tcp_at) = match (kind, ethertype) {
            (GSO_TCPV4, ETHERTYPE_IPV4) => {
                let (&vihl, proto) = (ip.first().ok_or(OffloadError::Headers)?, ip.get(9));
                let ihl = usize::from(vihl & 0x0F) * 4;
                if vihl >> 4 != 4 || ihl < 20 || proto != Some(&IPPROTO_TCP) {
                    return Err(OffloadError::Headers);
                }
                (true, ETH_LEN + ihl)
            }
            (GSO_TCPV6, ETHERTYPE_IPV6) => {
                let (&v, next) = (ip.first().ok_or(OffloadError::Headers)?, ip.get(6));
                if v >> 4 != 6 || next != Some(&IPPROTO_TCP) {
                    return Err(OffloadError::Headers);
                }
                (false, ETH_LEN + 40)
            }
            (GSO_TCPV4 | GSO_TCPV6, _) => return Err(OffloadError::Headers),
            _ => return Err(OffloadError::GsoType(hdr.gso_type)),
        };
        let doff = frame.get(tcp_at + 12).ok_or(OffloadError::Headers)? >> 4;
        let hdr_len = tcp_at + usize::from(doff) * 4;
        if doff < 5 || hdr_len > frame.len() {
            return Err(OffloadError::Headers);
        }
        // Every segment's IP length must fit 16 bits.
        if hdr.gso_size == 0 || hdr_len - ETH_LEN + usize::from(hdr.gso_size) > 65_535 {
            return Err(OffloadError::SegmentSize);
        }
        Ok(Gso {
            v4,
            tcp_at,
            hdr_len,
            mss: usize::from(hdr.gso_size),
            payload: frame.len() - hdr_len,
        })
    }

    /// How many frames it makes (one at least, even without payload).
    pub fn segments(&self) -> usize {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// The length of segment `i`.
    pub fn segment_len(&self, i: usize) -> usize {
        self.hdr_len
            + self
                .mss
                .min(self.payload - (i * self.mss).min(self.payload))
    }

    /// Bytes of Ethernet, IP and TCP headers in front of every segment's payload.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// The longest segment.
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    /// Writes segment `i` (below [`Gso::segments`]) of `frame`, the super-frame
    /// [`Gso::parse`] read, into the start of `out` (at least [`Gso::segment_len`] bytes);
    /// its length.
    pub fn write_segment(&self, frame: &[u8], i: usize, out: &mut [u8]) -> usize {
        let (h, t) = (self.hdr_len, self.tcp_at);
        let data_at = (h + i * self.mss).min(frame.len());
        let len = self.segment_len(i);
        out[..h].copy_from_slice(&frame[..h]);
        out[h..len].copy_from_slice(&frame[data_at..data_at + len - h]);
        let last = i + 1 >= self.segments();
        let tcp_len = len - t;
        let pseudo = if self.v4 {
            let total = (len - ETH_LEN) as u16;
            out[16..18].copy_from_slice(&total.to_be_bytes());
            // The kernel numbers a super-frame's segments from its IPv4 id.
            let id = u16::from_be_bytes([out[18], out[19]]).wrapping_add(i as u16);
            out[18..20].copy_from_slice(&id.to_be_bytes());
            out[24..26].fill(0);
            let check = !fold(sum(&out[ETH_LEN..t], 0));
            out[24..26].copy_from_slice(&check.to_be_bytes());
            sum(&out[26..34], u64::from(IPPROTO_TCP) + tcp_len as u64)
        } else {
            out[18..20].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            sum(&out[22..54], u64::from(IPPROTO_TCP) + tcp_len as u64)
        };
        let seq = u32::from_be_bytes([out[t + 4], out[t + 5], out[t + 6], out[t + 7]])
            .wrapping_add((i * self.mss) as u32);
        out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        if !last {
            out[t + 13] &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            out[t + 13] &= !TCP_CWR;
        }
        out[t + 16..t + 18].fill(0);
        let check = !fold(sum(&out[t..len], pseudo));
        out[t + 16..t + 18].copy_from_slice(&check.to_be_bytes());
        len
    }
}

#[cfg(test)]
mod tests;

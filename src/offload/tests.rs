use proptest::prelude::*;

use super::*;

/// The one's complement sum the slow way: 16-bit words, folded as it goes.
fn naive_sum(bytes: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for (i, b) in bytes.iter().enumerate() {
        acc += if i % 2 == 0 {
            u32::from(*b) << 8
        } else {
            u32::from(*b)
        };
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// A TCP super-frame: Ethernet, IPv4 (id 0x1234, DF) or IPv6, TCP (seq 1000, ACK|PSH|FIN and
/// CWR, one 12-byte option block), `payload`; its TCP checksum left partial (the
/// pseudo-header's sum, as the kernel leaves it) and the IPv4 length the whole super-frame's.
fn super_frame(v4: bool, payload: &[u8]) -> (Vec<u8>, VnetHdr) {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let tcp_len = 32 + payload.len();
    if v4 {
        f.extend([0x08, 0x00, 0x45, 0]);
        f.extend(((20 + tcp_len) as u16).to_be_bytes());
        f.extend([0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 86, 0, 1, 10, 86, 1, 1]);
    } else {
        f.extend([0x86, 0xDD, 0x60, 0, 0, 0]);
        f.extend((tcp_len as u16).to_be_bytes());
        f.extend([6, 64]);
        f.extend([0xFD; 16]);
        f.extend([0xFE; 16]);
    }
    if v4 {
        let check = !fold(sum(&f[14..34], 0));
        f[24..26].copy_from_slice(&check.to_be_bytes());
    }
    let tcp_at = f.len();
    f.extend([0x14, 0x51, 0xC0, 0x01]);
    f.extend(1000u32.to_be_bytes());
    f.extend(77u32.to_be_bytes());
    f.extend([
        0x80,
        TCP_CWR | 0x10 | TCP_PSH | TCP_FIN,
        0xFF,
        0xFF,
        0,
        0,
        0,
        0,
    ]);
    f.extend([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f.extend(payload);
    let pseudo = pseudo_sum(&f, v4, tcp_len);
    f[tcp_at + 16..tcp_at + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    let hdr = VnetHdr {
        flags: NEEDS_CSUM,
        gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 } | GSO_ECN,
        hdr_len: (tcp_at + 32) as u16,
        gso_size: 0,
        csum_start: tcp_at as u16,
        csum_offset: 16,
    };
    (f, hdr)
}

fn pseudo_sum(f: &[u8], v4: bool, tcp_len: usize) -> u64 {
    let addrs = if v4 { &f[26..34] } else { &f[22..54] };
    sum(addrs, 6 + tcp_len as u64)
}

/// Checks one segment as a receiver would: lengths, checksums; its TCP payload and header.
fn check_segment(seg: &[u8], v4: bool) -> (Vec<u8>, u32, u8) {
    let tcp_at = if v4 { 34 } else { 54 };
    if v4 {
        assert_eq!(naive_sum(&seg[14..34]), 0xFFFF, "IPv4 header checksum");
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[16], seg[17]])),
            seg.len() - 14
        );
    } else {
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[18], seg[19]])),
            seg.len() - 54
        );
    }
    let tcp_len = seg.len() - tcp_at;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(if v4 { &seg[26..34] } else { &seg[22..54] });
    pseudo.extend([0, 6]);
    pseudo.extend((tcp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&seg[tcp_at..]);
    assert_eq!(naive_sum(&pseudo), 0xFFFF, "TCP checksum");
    let seq = u32::from_be_bytes(seg[tcp_at + 4..tcp_at + 8].try_into().unwrap());
    (seg[tcp_at + 32..].to_vec(), seq, seg[tcp_at + 13])
}

#[test]
fn the_header_reads_back_what_was_written() {
    let h = VnetHdr {
        flags: NEEDS_CSUM,
        gso_type: GSO_TCPV6 | GSO_ECN,
        hdr_len: 86,
        gso_size: 1440,
        csum_start: 54,
        csum_offset: 16,
    };
    assert_eq!(VnetHdr::parse(&h.encode()), h);
    assert!(h.is_gso());
    assert!(!VnetHdr {
        gso_type: GSO_ECN,
        ..h
    }
    .is_gso());
}

#[test]
fn a_partial_checksum_is_completed_and_zero_goes_out_as_ffff() {
    // A frame whose TCP checksum field holds the pseudo-header's sum.
    let (mut f, _) = super_frame(true, b"hello");
    let tcp_at = 34;
    complete_checksum(&mut f, tcp_at, 16).unwrap();
    check_segment(&f, true);
    // Bytes that sum to 0xFFFF with a zero field: the complement 0 is sent as 0xFFFF.
    let mut g = [0xFF, 0xFF, 0, 0];
    complete_checksum(&mut g, 0, 2).unwrap();
    assert_eq!(g[2..], [0xFF, 0xFF]);
    assert_eq!(
        complete_checksum(&mut g, 2, 1),
        Err(OffloadError::ChecksumPlace)
    );
    assert_eq!(
        complete_checksum(&mut g, 0, 1),
        Err(OffloadError::ChecksumPlace),
        "an odd offset is no checksum field"
    );
    assert_eq!(
        complete_checksum(&mut g, usize::MAX, 2),
        Err(OffloadError::ChecksumPlace)
    );
}

#[test]
fn headers_the_relay_did_not_offer_are_refused() {
    let (f, hdr) = super_frame(true, &[7; 3000]);
    let hdr = VnetHdr {
        gso_size: 1448,
        ..hdr
    };
    assert_eq!(
        Gso::parse(&f, &VnetHdr { gso_type: 3, ..hdr }),
        Err(OffloadError::GsoType(3))
    );
    assert_eq!(
        Gso::parse(
            &f,
            &VnetHdr {
                gso_type: GSO_TCPV6,
                ..hdr
            }
        ),
        Err(OffloadError::Headers)
    );
    assert_eq!(
        Gso::parse(&f, &VnetHdr { gso_size: 0, ..hdr }),
        Err(OffloadError::SegmentSize)
    );
    assert_eq!(Gso::parse(&f[..40], &hdr), Err(OffloadError::Headers));
    let mut udp = f.clone();
    udp[23] = 17;
    assert_eq!(Gso::parse(&udp, &hdr), Err(OffloadError::Headers));
}

proptest! {
    #[test]
    fn the_sum_is_the_word_by_word_sum(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        prop_assert_eq!(fold(sum(&bytes, 0)), naive_sum(&bytes));
    }

    /// Cutting a super-frame gives what the host's TCP would have sent: segments of at most
    /// the headers and `mss` bytes, valid checksums, consecutive sequence numbers, payloads
    /// that join into the original, FIN and PSH only on the last, CWR only on the first,
    /// IPv4 ids counting up.
    #[test]
    fn segments_are_what_the_host_would_have_sent(
        v4 in any::<bool>(),
        len in 0usize..20_000,
        mss in 1u16..9000,
        seed in any::<u8>(),
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let (f, hdr) = super_frame(v4, &payload);
        let hdr = VnetHdr { gso_size: mss, ..hdr };
        let gso = Gso::parse(&f, &hdr).unwrap();
        let n = gso.segments();
        prop_assert_eq!(n, len.div_ceil(usize::from(mss)).max(1));
        let mut joined = Vec::new();
        let mut out = vec![0u8; gso.max_segment_len()];
        for i in 0..n {
            let l = gso.write_segment(&f, i, &mut out);
            prop_assert_eq!(l, gso.segment_len(i));
            prop_assert!(l <= usize::from(hdr.hdr_len) + usize::from(mss));
            let (data, seq, flags) = check_segment(&out[..l], v4);
            prop_assert_eq!(seq, 1000 + joined.len() as u32);
            prop_assert_eq!(flags & (TCP_FIN | TCP_PSH) != 0, i + 1 == n);
            prop_assert_eq!(flags & TCP_CWR != 0, i == 0);
            prop_assert_eq!(flags & 0x10, 0x10, "ACK stays");
            if v4 {
                prop_assert_eq!(u16::from_be_bytes([out[18], out[19]]), 0x1234 + i as u16);
            }
            joined.extend(data);
        }
        prop_assert_eq!(joined, payload);
    }

    #[test]
    fn any_bytes_and_any_header_never_panic(
        frame in proptest::collection::vec(any::<u8>(), 0..300),
        raw in any::<[u8; VNET_HDR_LEN]>(),
    ) {
        let hdr = VnetHdr::parse(&raw);
        let mut f = frame.clone();
        let _ = complete_checksum(&mut f, usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
        if let Ok(gso) = Gso::parse(&frame, &hdr) {
            let mut out = vec![0u8; gso.max_segment_len()];
            for i in 0..gso.segments() {
                prop_assert!(gso.write_segment(&frame, i, &mut out) <= out.len());
            }
        }
    }
}

#[test]
fn a_super_frame_of_the_most_segments_fits_the_tap_buffer() {
    for max_frame in [594, 1514, 1518, 9018, 65_553] {
        let segments = max_segments(max_frame) as usize;
        let buffer = largest_super_frame(max_frame);
        assert!(
            segments >= 1 && buffer == LARGEST_FRAME,
            "{max_frame}: {segments}, {buffer}"
        );
        // The headers once and every segment's payload: each segment is at most max_frame
        // with its headers.
        assert!(buffer >= segments * max_frame, "{max_frame}");
    }
    assert_eq!(max_segments(1518), 43);
}

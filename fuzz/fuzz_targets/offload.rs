//! `--offload` on arbitrary TAP reads: a `virtio_net_hdr` and a frame. Never panics; a
//! completed checksum makes the range sum to the pseudo-header's part the field held; a
//! super-frame's segments fit the length they announce, carry its headers' length in front
//! of their payload, and their payloads join into the super-frame's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::offload::{complete_checksum, fold, sum, Gso, VnetHdr, VNET_HDR_LEN};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: &[u8]| {
    let Some((head, frame)) = data.split_first_chunk::<VNET_HDR_LEN>() else {
        return;
    };
    let hdr = VnetHdr::parse(head);
    assert_eq!(VnetHdr::parse(&hdr.encode()), hdr);
    let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
    let mut f = frame.to_vec();
    if complete_checksum(&mut f, start, offset).is_ok() {
        let at = start + offset;
        let held = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let total = fold(sum(&f[start..], u64::from(held)));
        assert_eq!(total, 0xFFFF, "the completed range with the field's old sum");
        assert_eq!(f[..at], frame[..at]);
        assert_eq!(f[at + 2..], frame[at + 2..]);
    }
    if let Ok(gso) = Gso::parse(frame, &hdr) {
        let h = gso.header_len();
        let mut out = vec![0u8; gso.max_segment_len()];
        let mut joined = Vec::new();
        for i in 0..gso.segments() {
            let len = gso.write_segment(frame, i, &mut out);
            assert_eq!(len, gso.segment_len(i));
            assert!(len >= h && len <= out.len());
            joined.extend_from_slice(&out[h..len]);
        }
        assert_eq!(joined, frame[h..]);
    }
});

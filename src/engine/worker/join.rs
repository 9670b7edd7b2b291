//! With `--offload`: a guest's consecutive TCP segments to the host, from one receive, joined
//! into one super-frame per TAP write, as the kernel's GRO would join them on a NIC. The
//! host's TCP then takes (and acknowledges) one packet where it took up to 43, and that work
//! runs inside the relay's TAP write.
//!
//! A segment that may join ([`Segment::of`]: plain data, checksums right) starts a super-frame
//! or carries on the one waiting, if it is from the same buffer (so the same client and
//! receive), continues its flow and sequence, and the super-frame has room. Anything else
//! first writes what waits, so nothing is reordered; what waits is written at the latest
//! when the receive's frames are done ([`Worker::on_frames`] ends with
//! [`Worker::write_joined`]). A waiting super-frame holds a reference on its buffer.

use crate::counters::DropReason;
use crate::offload::{Segment, VNET_HDR_LEN};

use super::super::bufpool::BufId;
use super::super::tapq::MOST_SEGMENTS;
use super::input::ClientFrame;
use super::Worker;

/// A super-frame being joined.
pub(super) struct Joining {
    net: u16,
    buf: BufId,
    /// The first segment's bytes, in `buf`.
    first: (*const u8, usize),
    seg: Segment,
    /// Every segment's payload, the first's included.
    payloads: [(*const u8, usize); MOST_SEGMENTS],
    count: usize,
    /// Payload bytes in all.
    sent: usize,
    /// Bytes of the guest's frames in all (for the counters).
    frame_bytes: usize,
    psh: bool,
    /// The last segment was shorter than the first: it ends the super-frame.
    ended: bool,
}

impl Worker {
    /// Takes a guest's frame to the TAP of network slot `net` into a super-frame (true), or
    /// leaves it to be written alone (false), having written whatever super-frame it cannot
    /// join.
    pub(super) fn join(&mut self, net: u16, frame: ClientFrame<'_>) -> bool {
        let Some(seg) = Segment::of(frame.bytes) else {
            self.write_joined();
            return false;
        };
        if let Some(j) = self.joining.as_mut() {
            // SAFETY: the first segment's bytes lie in `j.buf`, on which the super-frame holds
            // a reference, and nothing writes a frame's bytes once decoded.
            let first = unsafe { std::slice::from_raw_parts(j.first.0, j.first.1) };
            if j.net == net
                && j.buf == frame.buf
                && !j.ended
                && j.count < MOST_SEGMENTS
                && j.seg.continued_by(first, j.sent, frame.bytes, &seg)
            {
                j.payloads[j.count] = (frame.bytes[seg.hdr_len..].as_ptr(), seg.payload);
                j.count += 1;
                j.sent += seg.payload;
                j.frame_bytes += frame.bytes.len();
                j.psh |= seg.psh;
                j.ended = seg.payload < j.seg.payload;
                self.counters.tap_tx_joined.inc();
                return true;
            }
        }
        self.write_joined();
        self.pool.retain(frame.buf);
        let mut payloads = [(std::ptr::null(), 0); MOST_SEGMENTS];
        payloads[0] = (frame.bytes[seg.hdr_len..].as_ptr(), seg.payload);
        self.joining = Some(Joining {
            net,
            buf: frame.buf,
            first: (frame.bytes.as_ptr(), frame.bytes.len()),
            seg,
            payloads,
            count: 1,
            sent: seg.payload,
            frame_bytes: frame.bytes.len(),
            psh: seg.psh,
            ended: false,
        });
        true
    }

    /// Writes the super-frame waiting, if any: alone, a segment goes as the frame it was.
    pub(super) fn write_joined(&mut self) {
        let Some(j) = self.joining.take() else {
            return;
        };
        // SAFETY: as in `join`: the bytes lie in `j.buf`, referenced until the release below.
        let first = unsafe { std::slice::from_raw_parts(j.first.0, j.first.1) };
        if j.count == 1 {
            self.tap_write_now(
                j.net,
                ClientFrame {
                    bytes: first,
                    buf: j.buf,
                },
            );
        } else if self.taps_full() {
            for _ in 0..j.count {
                self.counters.dropped(DropReason::TapBacklog);
                self.net_dropped(j.net);
            }
        } else if let (Some(local), Some(v)) = (
            self.nets
                .get_mut(usize::from(j.net))
                .and_then(Option::as_mut),
            self.vnet_writes.as_mut(),
        ) {
            let iov = v.super_frame(
                |head| {
                    let (vnet, headers) = head.split_at_mut(VNET_HDR_LEN);
                    let hdr = j.seg.super_frame(first, j.sent, j.psh, headers);
                    vnet.copy_from_slice(&hdr.encode());
                    VNET_HDR_LEN + j.seg.hdr_len
                },
                &j.payloads[..j.count],
            );
            // SAFETY: every byte the iovecs name lies in `j.buf` (or in the entry's own
            // header), on which the reference taken below is held until the write completes.
            unsafe { local.tap.write_vectored(&mut self.ring, iov, j.buf.0) };
            self.tap_writes += 1;
            self.pool.retain(j.buf);
            self.counters.tap_tx_frames.add(j.count as u64);
            self.counters.tap_tx_bytes.add(j.frame_bytes as u64);
        }
        self.pool.release(j.buf);
    }
}

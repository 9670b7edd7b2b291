//! A client's send queue: what is waiting to go out on its stream, in order.
//!
//! Contract: entries are byte runs (a pool buffer's server header and frame, or a small frame
//! or HTTP response owned by the queue). [`OutQueue::pending`] names the bytes still to send,
//! starting inside the first entry when a previous send was short; [`OutQueue::advance`]
//! accounts a completed send and hands back every pool buffer that went out whole, so its
//! reference can be dropped. Bytes are never reordered or sent twice. The queue also keeps
//! the stall clock: since when output has waited without the socket taking any of it.
//! Pure: no I/O; the caller turns [`OutQueue::pending`] into iovecs.

use std::collections::VecDeque;

use super::bufpool::BufId;

/// Bytes queued to a client.
#[derive(Debug)]
pub enum OutData {
    /// A run inside a pool buffer (server header and frame, contiguous), kept alive by a
    /// reference on `buf` that the queue owns.
    Pool {
        buf: BufId,
        ptr: *const u8,
        len: u32,
    },
    /// A small frame or HTTP response built for this client (control frames, handshake).
    Owned(Box<[u8]>),
}

impl OutData {
    /// Pointer and length of the bytes.
    fn bytes(&self) -> (*const u8, usize) {
        match self {
            OutData::Pool { ptr, len, .. } => (*ptr, *len as usize),
            OutData::Owned(b) => (b.as_ptr(), b.len()),
        }
    }
}

/// Capacity an emptied queue keeps; a burst's larger allocation is given back.
const KEEP_CAPACITY: usize = 64;

/// A client's frame bound while a pool of its core runs low.
pub const PRESSED_FRAMES: usize = 128;

/// How much one client's queue may hold on a core. Frames: `--send-queue`, at most a quarter of
/// the core's TAP buffers (one non-reading client must not pin most of them), and
/// [`PRESSED_FRAMES`] while fewer than a quarter of the frame slots are free or fewer than a
/// quarter of the TAP buffers are lent to the kernel (slow receivers together must not pin a
/// pool; bursts to readers fit while the pools are healthy). Bytes: `--send-queue-bytes`.
#[derive(Debug, Clone, Copy)]
pub struct QueueBound {
    frames: usize,
    bytes: usize,
    slots_reserve: usize,
    tap_reserve: usize,
}

impl QueueBound {
    /// The bound for a core with `tap_buffers` TAP buffers and `frame_slots` frame slots.
    pub fn new(
        send_queue: usize,
        send_queue_bytes: usize,
        tap_buffers: usize,
        frame_slots: usize,
    ) -> Self {
        QueueBound {
            frames: send_queue.min(tap_buffers / 4).max(2),
            bytes: send_queue_bytes,
            slots_reserve: frame_slots / 4,
            tap_reserve: tap_buffers / 4,
        }
    }

    /// Whether `queue` takes `len` more bytes, given the core's free frame slots and the TAP
    /// buffers lent to the kernel.
    #[inline]
    pub fn admits(&self, queue: &OutQueue, len: usize, slots_free: usize, tap_lent: usize) -> bool {
        let pressed = slots_free < self.slots_reserve || tap_lent < self.tap_reserve;
        let frames = if pressed {
            self.frames.min(PRESSED_FRAMES)
        } else {
            self.frames
        };
        queue.len() < frames && queue.bytes() + len <= self.bytes
    }
}

/// A client's pending output.
#[derive(Debug, Default)]
pub struct OutQueue {
    entries: VecDeque<OutData>,
    /// Bytes of the first entry already sent.
    front_sent: usize,
    /// Bytes queued, counting all of a partly sent first entry.
    bytes: usize,
    /// Entries ever popped from the front: with it, an entry keeps an absolute number.
    popped: u64,
    /// The absolute number of a queued pong none of which is sent yet, which a newer pong
    /// replaces (RFC 6455 §5.5.3: answering only the latest ping is enough).
    pong: Option<u64>,
    /// Entries named by the send in flight (the kernel may be reading them): never replaced.
    sending: usize,
    /// Since when output has been waiting without the socket taking any of it (`None`: empty).
    stalled_since_ms: Option<u64>,
}

impl OutQueue {
    /// Entries waiting (a partly sent one included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes waiting (all of a partly sent first entry included).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues the pong `data` at `now_ms`, in place of a queued pong that has not started to
    /// go out, so a client pinging faster than it reads holds at most two pongs here (one
    /// being sent, one waiting). Returns whether it replaced one.
    pub fn push_pong(&mut self, data: Box<[u8]>, now_ms: u64) -> bool {
        if let Some(at) = self.pong {
            // Lossless: the index is within the queue, which fits in memory.
            let i = (at - self.popped) as usize;
            if i >= self.sending && (i > 0 || self.front_sent == 0) {
                if let Some(OutData::Owned(old)) = self.entries.get_mut(i) {
                    self.bytes = self.bytes - old.len() + data.len();
                    *old = data;
                    return true;
                }
            }
        }
        self.pong = Some(self.popped + self.entries.len() as u64);
        self.push(OutData::Owned(data), now_ms);
        false
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Since when output has waited without progress; `None` when the queue is empty.
    pub fn stalled_since_ms(&self) -> Option<u64> {
        self.stalled_since_ms
    }

    /// Appends `data`, queued at `now_ms` (starts the stall clock if the queue was idle).
    pub fn push(&mut self, data: OutData, now_ms: u64) {
        self.bytes += data.bytes().1;
        self.entries.push_back(data);
        self.stalled_since_ms.get_or_insert(now_ms);
    }

    /// A send naming the first `entries` entries was submitted; they stay untouched until
    /// [`OutQueue::advance`] accounts its completion.
    pub fn sending(&mut self, entries: usize) {
        self.sending = entries;
    }

    /// The bytes still to send, at most `max` runs, as (pointer, length).
    pub fn pending(&self, max: usize) -> impl Iterator<Item = (*const u8, usize)> + '_ {
        self.entries.iter().take(max).enumerate().map(|(i, out)| {
            let (ptr, len) = out.bytes();
            let skip = if i == 0 { self.front_sent } else { 0 };
            (ptr.wrapping_add(skip), len - skip)
        })
    }

    /// Accounts `sent` bytes of a completed send at `now_ms`; every pool buffer sent whole is
    /// passed to `done` (its reference is the caller's to drop).
    pub fn advance(&mut self, mut sent: usize, now_ms: u64, mut done: impl FnMut(BufId)) {
        self.sending = 0;
        if sent > 0 {
            self.stalled_since_ms = Some(now_ms);
        }
        while sent > 0 {
            let Some(front) = self.entries.front() else {
                break;
            };
            let remaining = front.bytes().1 - self.front_sent;
            if sent < remaining {
                self.front_sent += sent;
                self.forget_started_pong();
                return;
            }
            sent -= remaining;
            self.front_sent = 0;
            let front = self.entries.pop_front();
            self.popped += 1;
            if let Some(front) = front {
                self.bytes -= front.bytes().1;
                if let OutData::Pool { buf, .. } = front {
                    done(buf);
                }
            }
        }
        self.forget_started_pong();
        if self.entries.is_empty() {
            self.stalled_since_ms = None;
            if self.entries.capacity() > KEEP_CAPACITY {
                self.entries.shrink_to(KEEP_CAPACITY);
            }
        }
    }

    /// A pong that went out (even in part) can no longer be replaced.
    fn forget_started_pong(&mut self) {
        if self
            .pong
            .is_some_and(|at| at < self.popped || (at == self.popped && self.front_sent > 0))
        {
            self.pong = None;
        }
    }

    /// Empties the queue (the client is gone), passing every pool buffer to `done`.
    pub fn clear(&mut self, mut done: impl FnMut(BufId)) {
        for out in self.entries.drain(..) {
            if let OutData::Pool { buf, .. } = out {
                done(buf);
            }
        }
        self.popped = 0;
        self.pong = None;
        self.sending = 0;
        self.bytes = 0;
        self.front_sent = 0;
        self.stalled_since_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(bytes: &[u8]) -> OutData {
        OutData::Owned(bytes.to_vec().into_boxed_slice())
    }

    /// Everything `pending` names, concatenated.
    fn pending_bytes(q: &OutQueue) -> Vec<u8> {
        q.pending(usize::MAX)
            // SAFETY: test-only: every run points into memory the test keeps alive.
            .flat_map(|(p, n)| unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
            .collect()
    }

    #[test]
    fn partial_sends_resume_where_they_stopped() {
        let pool_bytes = [7u8; 10];
        let mut q = OutQueue::default();
        q.push(owned(b"abcdef"), 100);
        q.push(
            OutData::Pool {
                buf: BufId(3),
                ptr: pool_bytes.as_ptr(),
                len: 10,
            },
            101,
        );
        q.push(owned(b"xyz"), 102);
        assert_eq!(q.stalled_since_ms(), Some(100));
        let mut released = Vec::new();
        q.advance(4, 200, |b| released.push(b));
        assert_eq!(
            pending_bytes(&q),
            b"ef\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07xyz"
        );
        assert_eq!(q.stalled_since_ms(), Some(200));
        // Into the pool entry, not past it: its buffer stays referenced.
        q.advance(5, 300, |b| released.push(b));
        assert!(released.is_empty());
        assert_eq!(pending_bytes(&q).len(), 7 + 3);
        q.advance(7, 400, |b| released.push(b));
        assert_eq!(released, vec![BufId(3)]);
        assert_eq!(pending_bytes(&q), b"xyz");
        q.advance(3, 500, |b| released.push(b));
        assert!(q.is_empty());
        assert_eq!(q.stalled_since_ms(), None);
    }

    #[test]
    fn a_send_of_nothing_keeps_the_stall_clock() {
        let mut q = OutQueue::default();
        q.push(owned(b"abc"), 10);
        q.advance(0, 50, |_| {});
        assert_eq!(q.stalled_since_ms(), Some(10));
    }

    #[test]
    fn pending_takes_at_most_max_runs() {
        let mut q = OutQueue::default();
        for _ in 0..5 {
            q.push(owned(b"ab"), 0);
        }
        assert_eq!(q.pending(3).count(), 3);
        assert_eq!(q.len(), 5);
    }

    #[test]
    fn clear_returns_every_pool_buffer() {
        let bytes = [0u8; 4];
        let mut q = OutQueue::default();
        for id in [1, 2] {
            q.push(
                OutData::Pool {
                    buf: BufId(id),
                    ptr: bytes.as_ptr(),
                    len: 4,
                },
                0,
            );
        }
        q.push(owned(b"z"), 0);
        q.advance(2, 1, |_| panic!("nothing sent whole"));
        let mut released = Vec::new();
        q.clear(|b| released.push(b));
        assert_eq!(released, vec![BufId(1), BufId(2)]);
        assert!(q.is_empty() && q.stalled_since_ms().is_none());
    }

    #[test]
    fn pongs_coalesce_but_never_under_a_send_in_flight() {
        let pong = |n: u8| vec![0x8A, 1, n].into_boxed_slice();
        let mut q = OutQueue::default();
        q.push(owned(b"frame"), 0);
        assert!(!q.push_pong(pong(1), 0));
        // A flood of pings while nothing is sent: one pong waits, the latest.
        for n in 2..=200 {
            assert!(q.push_pong(pong(n), 0));
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.bytes(), 5 + 3);
        assert_eq!(pending_bytes(&q), b"frame\x8a\x01\xc8");
        // A send names both entries: the next pong queues behind instead of replacing.
        q.sending(2);
        assert!(!q.push_pong(pong(201), 0));
        assert!(q.push_pong(pong(202), 0));
        assert_eq!(q.len(), 3);
        // Part of the first pong went out: it is never rewritten, the second still is.
        q.advance(6, 1, |_| {});
        assert!(q.push_pong(pong(203), 1));
        assert_eq!(pending_bytes(&q), b"\x01\xc8\x8a\x01\xcb");
        assert_eq!(q.bytes(), 3 + 3);
        q.advance(5, 2, |_| {});
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert!(!q.push_pong(pong(1), 3), "a sent pong is not replaced");
    }

    #[test]
    fn bytes_count_whole_entries_until_they_are_sent() {
        let mut q = OutQueue::default();
        for _ in 0..300 {
            q.push(owned(&[0; 100]), 0);
        }
        assert_eq!(q.bytes(), 30_000);
        q.advance(150, 1, |_| {});
        assert_eq!(q.bytes(), 29_900, "a partly sent entry counts whole");
        q.advance(29_850, 2, |_| {});
        assert!(q.is_empty() && q.bytes() == 0);
        assert!(
            q.entries.capacity() <= KEEP_CAPACITY,
            "a burst's allocation is given back"
        );
    }

    #[test]
    fn the_bound_counts_frames_and_bytes_and_tightens_while_pools_run_low() {
        let bound = QueueBound::new(1024, 4 << 20, 4096, 8192);
        let mut q = OutQueue::default();
        for _ in 0..1023 {
            q.push(owned(&[0; 20]), 0);
        }
        assert!(
            bound.admits(&q, 20, 8192, 4096),
            "a burst of one receive of minimal frames fits"
        );
        q.push(owned(&[0; 20]), 0);
        assert!(!bound.admits(&q, 20, 8192, 4096), "1024 frames");
        assert!(
            !bound.admits(&OutQueue::default(), (4 << 20) + 1, 8192, 4096),
            "bytes"
        );
        let mut short = OutQueue::default();
        for _ in 0..PRESSED_FRAMES {
            short.push(owned(&[0; 20]), 0);
        }
        assert!(bound.admits(&short, 20, 8192, 4096));
        assert!(!bound.admits(&short, 20, 2047, 4096), "slots low");
        assert!(!bound.admits(&short, 20, 8192, 1023), "TAP buffers low");
        // Jumbo frames: 1024 TAP buffers, so at most 256 frames per client.
        let jumbo = QueueBound::new(1024, 4 << 20, 1024, 2048);
        let mut q = OutQueue::default();
        for _ in 0..255 {
            q.push(owned(&[0; 20]), 0);
        }
        assert!(jumbo.admits(&q, 20, 2048, 1024));
        q.push(owned(&[0; 20]), 0);
        assert!(!jumbo.admits(&q, 20, 2048, 1024));
    }
}

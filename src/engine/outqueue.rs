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

/// A client's pending output.
#[derive(Debug, Default)]
pub struct OutQueue {
    entries: VecDeque<OutData>,
    /// Bytes of the first entry already sent.
    front_sent: usize,
    /// Since when output has been waiting without the socket taking any of it (`None`: empty).
    stalled_since_ms: Option<u64>,
}

impl OutQueue {
    /// Entries waiting (a partly sent one included).
    pub fn len(&self) -> usize {
        self.entries.len()
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
        self.entries.push_back(data);
        self.stalled_since_ms.get_or_insert(now_ms);
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
                return;
            }
            sent -= remaining;
            self.front_sent = 0;
            if let Some(OutData::Pool { buf, .. }) = self.entries.pop_front() {
                done(buf);
            }
        }
        if self.entries.is_empty() {
            self.stalled_since_ms = None;
        }
    }

    /// Empties the queue (the client is gone), passing every pool buffer to `done`.
    pub fn clear(&mut self, mut done: impl FnMut(BufId)) {
        for out in self.entries.drain(..) {
            if let OutData::Pool { buf, .. } = out {
                done(buf);
            }
        }
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
}

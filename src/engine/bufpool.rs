//! Per-core buffer accounting over one [`Arena`]: three pools and their reference counts.
//!
//! - **recv**: client receive buffers, lent to the kernel through provided-buffer ring
//!   [`RECV_GROUP`]; several WebSocket frames land in one, unmasked in place and written to
//!   the TAP from there.
//! - **tap**: TAP read buffers, lent through ring [`TAP_GROUP`] with [`HEADROOM`] bytes kept
//!   free in front, so the server WebSocket header is written in place before sending.
//! - **slot**: frame slots (same shape as TAP buffers) on a free list, for frames that must
//!   outlive their receive buffer: reassembled messages, frames to other clients, frames
//!   copied from another core.
//!
//! Every buffer has a reference count ([`Refs`]); when it drops to zero the buffer goes back
//! to its ring (published once per loop iteration) or to the free list.

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use super::arena::{Arena, BufClass, Ids, Mapping};
pub use super::arena::{BufId, HEADROOM};
use crate::ws::frame;

/// Provided-buffer group of client receive buffers.
pub const RECV_GROUP: u16 = 0;
/// Provided-buffer group of TAP read buffers.
pub const TAP_GROUP: u16 = 1;

/// Sizes of the four pools.
#[derive(Debug, Clone, Copy)]
pub struct PoolSizes {
    /// Number and size of receive buffers (power-of-two count ≤ 32768).
    pub recv_count: u16,
    pub recv_size: usize,
    /// Number of plaintext buffers (receive-buffer sized; decrypted TLS input).
    pub plain_count: u16,
    /// Number of TAP buffers (power of two); each holds HEADROOM + tap_frame.
    pub tap_count: u16,
    /// Largest frame a TAP read returns (max_frame, or a super-frame with `--offload`).
    pub tap_frame: usize,
    /// Bytes the TAP puts in front of every frame it returns (its `virtio_net_hdr` with
    /// `--offload`, else 0): they land at the end of the headroom, the frame at HEADROOM.
    pub tap_prefix: usize,
    /// Number of frame slots.
    pub slot_count: u32,
    /// Largest frame.
    pub max_frame: usize,
}

/// Reference counts of every buffer. Pure.
#[derive(Debug)]
pub struct Refs(Vec<u32>);

impl Refs {
    /// `n` buffers, all free.
    pub fn new(n: u32) -> Self {
        Refs(vec![0; n as usize])
    }

    /// The buffer became ours (from the kernel or the free list): one reference.
    pub fn take(&mut self, id: BufId) {
        debug_assert_eq!(self.0[id.0 as usize], 0, "{id:?} taken twice");
        self.0[id.0 as usize] = 1;
    }

    /// Adds a reference.
    pub fn retain(&mut self, id: BufId) {
        self.0[id.0 as usize] += 1;
    }

    /// Drops a reference; true when it was the last.
    #[must_use]
    pub fn release(&mut self, id: BufId) -> bool {
        let r = &mut self.0[id.0 as usize];
        assert!(*r > 0, "release of a free buffer {id:?}");
        *r -= 1;
        *r == 0
    }

    /// References held on `id`.
    #[cfg(test)]
    pub fn count(&self, id: BufId) -> u32 {
        self.0[id.0 as usize]
    }
}

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19).
struct ProvidedRing {
    entries: Mapping,
    mask: u16,
    /// Our copy of the tail; published to the kernel by [`ProvidedRing::publish`].
    tail: u16,
    published: u16,
}

impl ProvidedRing {
    fn new(submitter: &Submitter<'_>, count: u16, group: u16) -> io::Result<Self> {
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        // SAFETY: the mapping is page aligned, sized for `count` entries and lives as long as
        // this ring; the io_uring (dropped first, see the worker) is the only other user.
        unsafe {
            submitter.register_buf_ring_with_flags(entries.as_ptr() as u64, count, group, 0)?
        };
        Ok(ProvidedRing {
            entries,
            mask: count - 1,
            tail: 0,
            published: 0,
        })
    }

    fn push(&mut self, addr: *mut u8, len: usize, bid: u16) {
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the index is masked into the ring; the entry is ours to write until the
        // tail is published past it.
        let entry = unsafe { &mut *base.add(usize::from(self.tail & self.mask)) };
        entry.set_addr(addr as u64);
        // Buffers are at most HEADROOM + 65553 bytes or recv_size; checked in BufferPool::new.
        entry.set_len(len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `base` is the first entry of a registered ring; the tail field lives in it and
        // is shared with the kernel, so it is written atomically with release ordering.
        let tail = unsafe { &*(BufRingEntry::tail(base) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }
}

/// One core's buffers.
pub struct BufferPool {
    arena: Rc<Arena>,
    ids: Ids,
    max_frame: usize,
    /// Where a TAP read starts (HEADROOM − tap_prefix) and how much it may fill.
    tap_read_at: usize,
    tap_read_len: usize,
    recv_ring: ProvidedRing,
    tap_ring: ProvidedRing,
    free_slots: Vec<u32>,
    free_plain: Vec<u16>,
    refs: Refs,
    /// Buffers lent to the kernel right now, per ring (to know when a dry ring refilled).
    recv_lent: usize,
    tap_lent: usize,
}

impl BufferPool {
    /// Maps the memory and lends the recv and tap buffers to the kernel.
    pub fn new(submitter: &Submitter<'_>, sizes: PoolSizes) -> io::Result<Self> {
        assert!(sizes.recv_count.is_power_of_two() && sizes.tap_count.is_power_of_two());
        assert!(sizes.recv_size <= u32::MAX as usize && sizes.max_frame <= 65_553);
        assert!(sizes.tap_prefix <= HEADROOM);
        assert!(sizes.tap_frame >= sizes.max_frame && sizes.tap_frame <= 65_553);
        let ids = Ids {
            recv_count: sizes.recv_count,
            plain_count: sizes.plain_count,
            tap_count: sizes.tap_count,
            slot_count: sizes.slot_count,
        };
        let arena = Rc::new(Arena::new(
            ids,
            sizes.recv_size,
            sizes.tap_frame,
            sizes.max_frame,
        )?);
        let mut pool = BufferPool {
            arena,
            ids,
            max_frame: sizes.max_frame,
            tap_read_at: HEADROOM - sizes.tap_prefix,
            tap_read_len: sizes.tap_prefix + sizes.tap_frame,
            recv_ring: ProvidedRing::new(submitter, sizes.recv_count, RECV_GROUP)?,
            tap_ring: ProvidedRing::new(submitter, sizes.tap_count, TAP_GROUP)?,
            free_slots: (0..sizes.slot_count).rev().collect(),
            free_plain: (0..sizes.plain_count).rev().collect(),
            refs: Refs::new(ids.total()),
            recv_lent: 0,
            tap_lent: 0,
        };
        for bid in 0..sizes.recv_count {
            pool.give_back(ids.recv(bid));
        }
        for bid in 0..sizes.tap_count {
            pool.give_back(ids.tap(bid));
        }
        pool.publish();
        Ok(pool)
    }

    /// The memory, for views and pointers (clone it to hold views while using the pool).
    pub fn arena(&self) -> Rc<Arena> {
        self.arena.clone()
    }

    /// The pool buffer of a receive completion's buffer id.
    pub fn recv_buf(&self, bid: u16) -> BufId {
        self.ids.recv(bid)
    }

    /// The pool buffer of a TAP read completion's buffer id.
    pub fn tap_buf(&self, bid: u16) -> BufId {
        self.ids.tap(bid)
    }

    /// TAP buffers and slots keep [`HEADROOM`] in front of their frame.
    pub fn has_headroom(&self, id: BufId) -> bool {
        self.ids.has_headroom(id)
    }

    /// The most a TAP read may fill (the TAP's prefix and a frame).
    pub fn tap_read_len(&self) -> usize {
        self.tap_read_len
    }

    /// Size of a receive buffer.
    pub fn recv_size(&self) -> usize {
        self.arena.recv_size()
    }

    /// Pointer to byte `offset` of buffer `id`.
    pub fn ptr(&self, id: BufId, offset: usize) -> *mut u8 {
        self.arena.ptr(id, offset)
    }

    /// Read-only view of `len` bytes at `offset` of buffer `id`, borrowing the pool (for a
    /// look that ends before the pool is used again; hold views longer through [`arena`]).
    ///
    /// # Safety
    /// As [`Arena::bytes`]: the caller holds a reference and nobody writes these bytes.
    ///
    /// [`arena`]: BufferPool::arena
    pub unsafe fn bytes(&self, id: BufId, offset: usize, len: usize) -> &[u8] {
        // SAFETY: the caller's promise.
        unsafe { self.arena.bytes(id, offset, len) }
    }

    /// Writes the server WebSocket header of the `len`-byte frame at [`HEADROOM`] of `id`
    /// into the headroom in front of it; returns the header's length.
    ///
    /// # Safety
    /// `id` has headroom, the caller holds a reference on it, and no send of it is queued yet
    /// (nothing reads the headroom meanwhile; a TAP write of the frame reads only the bytes
    /// after it).
    pub unsafe fn write_server_header(&mut self, id: BufId, len: usize) -> usize {
        debug_assert!(self.ids.has_headroom(id));
        let header_len = frame::header_len(len, false);
        // SAFETY: the caller's promise; the header fits the headroom (checked at compile time).
        let head = unsafe { self.arena.bytes_mut(id, HEADROOM - header_len, header_len) };
        frame::encode_header(head, true, frame::OP_BINARY, len, None);
        header_len
    }

    /// Takes a frame slot (reference count 1), or `None` when all are in use.
    pub fn alloc_slot(&mut self) -> Option<BufId> {
        let id = self.ids.slot(self.free_slots.pop()?);
        self.refs.take(id);
        Some(id)
    }

    /// Takes a plaintext buffer (reference count 1, receive-buffer sized, no headroom), or
    /// `None` when all are in use.
    pub fn alloc_plain(&mut self) -> Option<BufId> {
        let id = self.ids.plain(self.free_plain.pop()?);
        self.refs.take(id);
        Some(id)
    }

    /// Plaintext buffers on the free list.
    pub fn plain_free(&self) -> usize {
        self.free_plain.len()
    }

    /// A new slot holding a copy of `frame` at [`HEADROOM`] (reference count 1), or `None`
    /// when all slots are in use.
    pub fn copy_to_slot(&mut self, frame: &[u8]) -> Option<BufId> {
        let slot = self.alloc_slot()?;
        // SAFETY: a slot just taken from the free list is ours alone, and `frame` (≤ max_frame,
        // which the slot holds after its headroom) cannot lie in it.
        unsafe { self.arena.bytes_mut(slot, HEADROOM, frame.len()) }.copy_from_slice(frame);
        Some(slot)
    }

    /// Appends `piece` at byte `at` of the frame in slot `id` (reassembly).
    ///
    /// # Safety
    /// The slot is the caller's reassembly slot: referenced once, by the caller, and not yet
    /// queued anywhere, so nobody else reads or writes it.
    pub unsafe fn append_to_slot(&mut self, id: BufId, at: usize, piece: &[u8]) {
        assert!(at + piece.len() <= self.max_frame);
        // SAFETY: the caller's promise; in bounds (asserted against max_frame).
        unsafe { self.arena.bytes_mut(id, HEADROOM + at, piece.len()) }.copy_from_slice(piece);
    }

    /// Takes a reference to a buffer the kernel just handed over (count becomes 1).
    pub fn received(&mut self, id: BufId) {
        self.refs.take(id);
        match self.ids.class(id) {
            BufClass::Recv(_) => self.recv_lent -= 1,
            BufClass::Tap(_) => self.tap_lent -= 1,
            BufClass::Slot(_) | BufClass::Plain(_) => {
                debug_assert!(false, "the kernel never holds slots or plaintext buffers")
            }
        }
    }

    /// Adds a reference.
    pub fn retain(&mut self, id: BufId) {
        self.refs.retain(id);
    }

    /// Drops a reference; the last one returns the buffer.
    pub fn release(&mut self, id: BufId) {
        if self.refs.release(id) {
            self.give_back(id);
        }
    }

    fn give_back(&mut self, id: BufId) {
        match self.ids.class(id) {
            BufClass::Recv(bid) => {
                self.recv_ring
                    .push(self.arena.ptr(id, 0), self.arena.recv_size(), bid);
                self.recv_lent += 1;
            }
            BufClass::Tap(bid) => {
                self.tap_ring
                    .push(self.arena.ptr(id, self.tap_read_at), self.tap_read_len, bid);
                self.tap_lent += 1;
            }
            BufClass::Slot(index) => self.free_slots.push(index),
            BufClass::Plain(index) => self.free_plain.push(index),
        }
    }

    /// Makes buffers given back since the last call visible to the kernel.
    pub fn publish(&mut self) {
        self.recv_ring.publish();
        self.tap_ring.publish();
    }

    /// Receive buffers currently lent to the kernel.
    pub fn recv_available(&self) -> usize {
        self.recv_lent
    }

    /// Frame slots free.
    pub fn slots_free(&self) -> usize {
        self.free_slots.len()
    }

    /// TAP buffers currently lent to the kernel.
    pub fn tap_available(&self) -> usize {
        self.tap_lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_release_frees() {
        let mut refs = Refs::new(3);
        let id = BufId(1);
        refs.take(id);
        refs.retain(id);
        refs.retain(id);
        assert_eq!(refs.count(id), 3);
        assert!(!refs.release(id));
        assert!(!refs.release(id));
        assert!(refs.release(id));
        assert_eq!(refs.count(id), 0);
        refs.take(id);
        assert_eq!(refs.count(id), 1);
    }

    #[test]
    #[should_panic(expected = "release of a free buffer")]
    fn releasing_a_free_buffer_is_caught() {
        let mut refs = Refs::new(1);
        let _ = refs.release(BufId(0));
    }

    /// The pool against a real ring: buffers lent, taken, copied into, and given back.
    /// Needs io_uring with provided-buffer rings (not root); says so when it is missing.
    #[test]
    fn slots_and_lent_buffers_balance() {
        let ring = match io_uring::IoUring::new(8) {
            Ok(ring) => ring,
            Err(e) => {
                tapwire_testkit::skip::skip(
                    "slots_and_lent_buffers_balance",
                    &format!("io_uring unavailable here: {e}"),
                );
                return;
            }
        };
        let sizes = PoolSizes {
            recv_count: 4,
            recv_size: 256,
            plain_count: 1,
            tap_count: 2,
            tap_frame: 1514,
            tap_prefix: 0,
            slot_count: 2,
            max_frame: 1514,
        };
        let mut pool = match BufferPool::new(&ring.submitter(), sizes) {
            Ok(pool) => pool,
            Err(e) => {
                tapwire_testkit::skip::skip(
                    "slots_and_lent_buffers_balance",
                    &format!("provided-buffer rings unavailable here: {e}"),
                );
                return;
            }
        };
        assert_eq!((pool.recv_available(), pool.tap_available()), (4, 2));
        let a = pool.copy_to_slot(&[1, 2, 3]).unwrap();
        let b = pool.alloc_slot().unwrap();
        assert!(pool.alloc_slot().is_none(), "two slots only");
        // SAFETY: `b` was just taken and is used by nobody else.
        unsafe { pool.append_to_slot(b, 0, &[9; 10]) };
        let arena = pool.arena();
        // SAFETY: both slots are referenced and nobody writes them.
        assert_eq!(unsafe { arena.bytes(a, HEADROOM, 3) }, &[1, 2, 3]);
        // SAFETY: as above.
        assert_eq!(unsafe { arena.bytes(b, HEADROOM, 10) }, &[9; 10]);
        // The server header goes right in front of the frame, in the headroom.
        // SAFETY: `a` is ours and no send of it is queued.
        let header_len = unsafe { pool.write_server_header(a, 3) };
        // SAFETY: as above; nothing writes `a` now.
        let framed = unsafe { pool.bytes(a, HEADROOM - header_len, header_len + 3) };
        assert_eq!(framed, &[0x82, 3, 1, 2, 3]);
        pool.retain(a);
        pool.release(a);
        assert!(pool.alloc_slot().is_none(), "still referenced");
        pool.release(a);
        assert_eq!(pool.alloc_slot(), Some(a));
        // A receive buffer handed over and given back returns to the ring.
        let r = pool.recv_buf(3);
        pool.received(r);
        assert_eq!(pool.recv_available(), 3);
        pool.release(r);
        assert_eq!(pool.recv_available(), 4);
        assert!(pool.has_headroom(pool.tap_buf(0)) && !pool.has_headroom(r));
        // A plaintext buffer comes from its own free list and goes back to it.
        let p = pool.alloc_plain().unwrap();
        assert!(!pool.has_headroom(p) && pool.alloc_plain().is_none());
        assert_eq!(pool.plain_free(), 0);
        pool.release(p);
        assert_eq!((pool.plain_free(), pool.recv_available()), (1, 4));
    }
}

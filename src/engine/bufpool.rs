//! Per-core buffer memory: one anonymous mapping split into three pools.
//!
//! - **recv**: client receive buffers, lent to the kernel through provided-buffer ring
//!   [`RECV_GROUP`]; several WebSocket frames land in one, unmasked in place and written to
//!   the TAP from there.
//! - **tap**: TAP read buffers, lent through ring [`TAP_GROUP`] with [`HEADROOM`] bytes kept
//!   free in front, so the server WebSocket header is written in place before sending.
//! - **slot**: frame slots (same shape as tap buffers) on a free list, for frames that must
//!   outlive their receive buffer: reassembled messages, frames to other clients, frames
//!   copied from another core.
//!
//! Every buffer has a reference count; when it drops to zero the buffer goes back to its
//! ring (published once per loop iteration) or free list. Buffers are addressed by [`BufId`].

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use crate::ws::frame::MAX_SERVER_HEADER_LEN;

/// Provided-buffer group of client receive buffers.
pub const RECV_GROUP: u16 = 0;
/// Provided-buffer group of TAP read buffers.
pub const TAP_GROUP: u16 = 1;
/// Free bytes in front of TAP buffers and slots for the server header (≥ 10, kept aligned).
pub const HEADROOM: usize = 16;
const _: () = assert!(HEADROOM >= MAX_SERVER_HEADER_LEN);

/// A buffer of one core's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufId(pub u32);

/// Sizes of the three pools.
#[derive(Debug, Clone, Copy)]
pub struct PoolSizes {
    /// Number and size of receive buffers (power-of-two count ≤ 32768).
    pub recv_count: u16,
    pub recv_size: usize,
    /// Number of TAP buffers (power of two); each holds HEADROOM + max_frame.
    pub tap_count: u16,
    /// Number of frame slots.
    pub slot_count: u32,
    /// Largest frame.
    pub max_frame: usize,
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast())
            .map(|ptr| Mapping { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping we made and nobody uses after drop (the ring
        // that lent buffers to the kernel is dropped before the pool: see Core's field order).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
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
        // this ring; the io_uring (dropped first, see Core) is the only other user.
        unsafe {
            submitter.register_buf_ring_with_flags(entries.ptr.as_ptr() as u64, count, group, 0)?
        };
        Ok(ProvidedRing {
            entries,
            mask: count - 1,
            tail: 0,
            published: 0,
        })
    }

    fn push(&mut self, addr: *mut u8, len: usize, bid: u16) {
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
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
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `base` is the first entry of a registered ring; the tail field lives in it and
        // is shared with the kernel, so it is written atomically with release ordering.
        let tail = unsafe { &*(BufRingEntry::tail(base) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }
}

/// One core's buffers.
pub struct BufferPool {
    memory: Mapping,
    sizes: PoolSizes,
    /// Bytes per tap buffer or slot: HEADROOM + max_frame rounded up to 64.
    frame_stride: usize,
    recv_ring: ProvidedRing,
    tap_ring: ProvidedRing,
    free_slots: Vec<u32>,
    refs: Vec<u32>,
    /// Buffers lent to the kernel right now, per ring (to know when a dry ring refilled).
    recv_free: usize,
    tap_free: usize,
}

impl BufferPool {
    /// Maps the memory and lends the recv and tap buffers to the kernel.
    pub fn new(submitter: &Submitter<'_>, sizes: PoolSizes) -> io::Result<Self> {
        assert!(sizes.recv_count.is_power_of_two() && sizes.tap_count.is_power_of_two());
        assert!(sizes.recv_size <= u32::MAX as usize && sizes.max_frame <= 65_553);
        let frame_stride = (HEADROOM + sizes.max_frame).div_ceil(64) * 64;
        let total_frames = usize::from(sizes.tap_count) + sizes.slot_count as usize;
        let len = usize::from(sizes.recv_count) * sizes.recv_size + total_frames * frame_stride;
        let memory = Mapping::new(len)?;
        let recv_ring = ProvidedRing::new(submitter, sizes.recv_count, RECV_GROUP)?;
        let tap_ring = ProvidedRing::new(submitter, sizes.tap_count, TAP_GROUP)?;
        let ids = u32::from(sizes.recv_count) + u32::from(sizes.tap_count) + sizes.slot_count;
        let mut pool = BufferPool {
            memory,
            sizes,
            frame_stride,
            recv_ring,
            tap_ring,
            free_slots: (0..sizes.slot_count).rev().collect(),
            refs: vec![0; ids as usize],
            recv_free: 0,
            tap_free: 0,
        };
        for bid in 0..sizes.recv_count {
            pool.give_back(BufId(u32::from(bid)));
        }
        for bid in 0..sizes.tap_count {
            pool.give_back(BufId(u32::from(sizes.recv_count) + u32::from(bid)));
        }
        pool.publish();
        Ok(pool)
    }

    fn tap_base(&self) -> u32 {
        u32::from(self.sizes.recv_count)
    }

    fn slot_base(&self) -> u32 {
        self.tap_base() + u32::from(self.sizes.tap_count)
    }

    /// The pool buffer of a receive completion's buffer id.
    pub fn recv_buf(&self, bid: u16) -> BufId {
        BufId(u32::from(bid))
    }

    /// The pool buffer of a TAP read completion's buffer id.
    pub fn tap_buf(&self, bid: u16) -> BufId {
        BufId(self.tap_base() + u32::from(bid))
    }

    /// Size of a receive buffer.
    pub fn recv_size(&self) -> usize {
        self.sizes.recv_size
    }

    /// Start of a buffer's memory (for tap buffers and slots: the start of the headroom).
    pub fn base(&self, id: BufId) -> *mut u8 {
        let recv_bytes = usize::from(self.sizes.recv_count) * self.sizes.recv_size;
        let offset = if id.0 < self.tap_base() {
            id.0 as usize * self.sizes.recv_size
        } else {
            recv_bytes + (id.0 - self.tap_base()) as usize * self.frame_stride
        };
        debug_assert!(offset < self.memory.len);
        // SAFETY: the offset is inside the mapping (ids are bounded by construction).
        unsafe { self.memory.ptr.as_ptr().add(offset) }
    }

    /// Mutable view of `len` bytes at `offset` of buffer `id`.
    ///
    /// # Safety
    /// The caller must own the buffer's contents now (received from the kernel or taken from
    /// the free list, not yet given back), must not hold another view of the same bytes, and
    /// must not use the slice after giving the buffer back (its lifetime is not tied to the pool).
    pub unsafe fn bytes_mut<'a>(&self, id: BufId, offset: usize, len: usize) -> &'a mut [u8] {
        // SAFETY: forwarded to the caller's contract; the range lies inside one buffer.
        unsafe { std::slice::from_raw_parts_mut(self.base(id).add(offset), len) }
    }

    /// Takes a frame slot (reference count 1), or `None` when all are in use.
    pub fn alloc_slot(&mut self) -> Option<BufId> {
        let index = self.free_slots.pop()?;
        let id = BufId(self.slot_base() + index);
        self.refs[id.0 as usize] = 1;
        Some(id)
    }

    /// Takes a reference to a buffer the kernel just handed over (count becomes 1).
    pub fn received(&mut self, id: BufId) {
        self.refs[id.0 as usize] = 1;
        if id.0 < self.tap_base() {
            self.recv_free -= 1;
        } else {
            self.tap_free -= 1;
        }
    }

    /// Adds a reference.
    pub fn retain(&mut self, id: BufId) {
        self.refs[id.0 as usize] += 1;
    }

    /// Drops a reference; the last one returns the buffer.
    pub fn release(&mut self, id: BufId) {
        let r = &mut self.refs[id.0 as usize];
        debug_assert!(*r > 0, "release of a free buffer {id:?}");
        *r -= 1;
        if *r == 0 {
            self.give_back(id);
        }
    }

    fn give_back(&mut self, id: BufId) {
        let base = self.base(id);
        if id.0 < self.tap_base() {
            // Lossless: bid < recv_count ≤ u16::MAX.
            self.recv_ring.push(base, self.sizes.recv_size, id.0 as u16);
            self.recv_free += 1;
        } else if id.0 < self.slot_base() {
            // SAFETY: HEADROOM < frame_stride, inside this buffer.
            let data = unsafe { base.add(HEADROOM) };
            self.tap_ring
                .push(data, self.sizes.max_frame, (id.0 - self.tap_base()) as u16);
            self.tap_free += 1;
        } else {
            self.free_slots.push(id.0 - self.slot_base());
        }
    }

    /// Makes buffers given back since the last call visible to the kernel.
    pub fn publish(&mut self) {
        self.recv_ring.publish();
        self.tap_ring.publish();
    }

    /// Receive buffers currently lent to the kernel.
    pub fn recv_available(&self) -> usize {
        self.recv_free
    }

    /// TAP buffers currently lent to the kernel.
    pub fn tap_available(&self) -> usize {
        self.tap_free
    }
}

//! The memory of one core's buffers: one anonymous mapping, and the id space that names the
//! buffers in it.
//!
//! Contract: [`Ids`] maps a [`BufId`] to its pool (receive buffer, TAP buffer or frame slot)
//! and back; it is pure. [`Arena`] turns an id into pointers and byte views. A view's lifetime
//! is bound to the borrow of the arena, which callers keep alive with an `Rc` while they also
//! change reference counts in the pool. Whether a view may exist at all is the caller's
//! promise (the `unsafe` contracts below): the kernel and other cores read and write these
//! bytes too, and only the reference counts say when they are ours.

use std::io;
use std::ptr::NonNull;

/// A buffer of one core's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufId(pub u32);

/// Free bytes in front of TAP buffers and slots for the server header (≥ 10, kept aligned).
pub const HEADROOM: usize = 16;
const _: () = assert!(HEADROOM >= crate::ws::frame::MAX_SERVER_HEADER_LEN);

/// Which pool a buffer belongs to, and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufClass {
    /// A client receive buffer: its id in the receive ring.
    Recv(u16),
    /// A TAP read buffer: its id in the TAP ring.
    Tap(u16),
    /// A frame slot: its index on the free list.
    Slot(u32),
    /// A plaintext buffer (receive-buffer sized, never lent to the kernel): decrypted TLS
    /// input, handled like a receive buffer.
    Plain(u16),
}

/// The id space: receive buffers first, then plaintext buffers (both receive-buffer sized),
/// then TAP buffers, then frame slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub recv_count: u16,
    pub plain_count: u16,
    pub tap_count: u16,
    pub slot_count: u32,
}

impl Ids {
    /// Buffers in all four pools.
    pub fn total(&self) -> u32 {
        self.flat() + u32::from(self.tap_count) + self.slot_count
    }

    /// Receive-buffer-sized buffers (receive and plaintext), which come first.
    fn flat(&self) -> u32 {
        u32::from(self.recv_count) + u32::from(self.plain_count)
    }

    /// The buffer of plaintext buffer `index`.
    pub fn plain(&self, index: u16) -> BufId {
        debug_assert!(index < self.plain_count);
        BufId(u32::from(self.recv_count) + u32::from(index))
    }

    /// The buffer of a receive completion's buffer id.
    pub fn recv(&self, bid: u16) -> BufId {
        debug_assert!(bid < self.recv_count);
        BufId(u32::from(bid))
    }

    /// The buffer of a TAP read completion's buffer id.
    pub fn tap(&self, bid: u16) -> BufId {
        debug_assert!(bid < self.tap_count);
        BufId(self.flat() + u32::from(bid))
    }

    /// The buffer of frame slot `index`.
    pub fn slot(&self, index: u32) -> BufId {
        debug_assert!(index < self.slot_count);
        BufId(self.flat() + u32::from(self.tap_count) + index)
    }

    /// Which pool `id` belongs to.
    pub fn class(&self, id: BufId) -> BufClass {
        let plain_base = u32::from(self.recv_count);
        let tap_base = self.flat();
        let slot_base = tap_base + u32::from(self.tap_count);
        // Lossless: each branch is below a u16 count.
        if id.0 < plain_base {
            BufClass::Recv(id.0 as u16)
        } else if id.0 < tap_base {
            BufClass::Plain((id.0 - plain_base) as u16)
        } else if id.0 < slot_base {
            BufClass::Tap((id.0 - tap_base) as u16)
        } else {
            BufClass::Slot(id.0 - slot_base)
        }
    }

    /// TAP buffers and slots have [`HEADROOM`] in front of their frame; receive and plaintext
    /// buffers not.
    pub fn has_headroom(&self, id: BufId) -> bool {
        id.0 >= self.flat()
    }
}

/// An anonymous private mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `len` bytes of zeroed memory.
    pub fn new(len: usize) -> io::Result<Self> {
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

    /// The first byte (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping we made and nobody uses after drop (the ring
        // that lent buffers to the kernel is dropped before the pool: see the worker's field
        // order, and other cores stop before any pool is dropped).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One core's buffer memory.
pub struct Arena {
    memory: Mapping,
    ids: Ids,
    recv_size: usize,
    /// Bytes per TAP buffer: HEADROOM + the largest TAP read rounded up to 64.
    tap_stride: usize,
    /// Bytes per slot: HEADROOM + max_frame rounded up to 64.
    slot_stride: usize,
}

impl Arena {
    /// Maps memory for `ids` with receive buffers of `recv_size` bytes, TAP buffers for reads
    /// up to `tap_frame` bytes and slots for frames up to `max_frame` bytes.
    pub fn new(ids: Ids, recv_size: usize, tap_frame: usize, max_frame: usize) -> io::Result<Self> {
        let stride = |frame: usize| (HEADROOM + frame).div_ceil(64) * 64;
        let (tap_stride, slot_stride) = (stride(tap_frame), stride(max_frame));
        let len = ids.flat() as usize * recv_size
            + usize::from(ids.tap_count) * tap_stride
            + ids.slot_count as usize * slot_stride;
        Ok(Arena {
            memory: Mapping::new(len)?,
            ids,
            recv_size,
            tap_stride,
            slot_stride,
        })
    }

    /// Size of a receive buffer.
    pub fn recv_size(&self) -> usize {
        self.recv_size
    }

    /// Bytes a buffer spans (for TAP buffers and slots: headroom included).
    pub fn capacity(&self, id: BufId) -> usize {
        match self.ids.class(id) {
            BufClass::Tap(_) => self.tap_stride,
            BufClass::Slot(_) => self.slot_stride,
            BufClass::Recv(_) | BufClass::Plain(_) => self.recv_size,
        }
    }

    /// Pointer to byte `offset` of buffer `id` (for submissions and cross-core messages).
    pub fn ptr(&self, id: BufId, offset: usize) -> *mut u8 {
        assert!(id.0 < self.ids.total() && offset <= self.capacity(id));
        let flat_bytes = self.ids.flat() as usize * self.recv_size;
        let start = match self.ids.class(id) {
            BufClass::Tap(bid) => flat_bytes + usize::from(bid) * self.tap_stride,
            BufClass::Slot(index) => {
                flat_bytes
                    + usize::from(self.ids.tap_count) * self.tap_stride
                    + index as usize * self.slot_stride
            }
            BufClass::Recv(_) | BufClass::Plain(_) => id.0 as usize * self.recv_size,
        };
        // SAFETY: `start + offset` lies inside the mapping: the id is in range (asserted) and
        // the offset is within its buffer.
        unsafe { self.memory.as_ptr().add(start + offset) }
    }

    /// Read-only view of `len` bytes at `offset` of buffer `id`.
    ///
    /// # Safety
    /// The caller holds a reference on the buffer, and nobody writes these bytes while the
    /// view lives: no mutable view of them exists and the kernel is not filling them.
    pub unsafe fn bytes(&self, id: BufId, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.capacity(id));
        // SAFETY: in bounds (asserted); nobody writes them meanwhile (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr(id, offset), len) }
    }

    /// Mutable view of `len` bytes at `offset` of buffer `id`.
    ///
    /// # Safety
    /// The caller owns these bytes outright while the view lives: the buffer was just handed
    /// over by the kernel or taken from the free list, no other view of these bytes exists,
    /// and no submission or other core reads them meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, id: BufId, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.capacity(id));
        // SAFETY: in bounds (asserted); exclusive (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr(id, offset), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: Ids = Ids {
        recv_count: 4,
        plain_count: 2,
        tap_count: 2,
        slot_count: 3,
    };

    #[test]
    fn ids_map_to_their_pool_and_back() {
        assert_eq!(IDS.total(), 11);
        for bid in 0..4 {
            assert_eq!(IDS.class(IDS.recv(bid)), BufClass::Recv(bid));
            assert!(!IDS.has_headroom(IDS.recv(bid)));
        }
        for i in 0..2 {
            assert_eq!(IDS.class(IDS.plain(i)), BufClass::Plain(i));
            assert!(!IDS.has_headroom(IDS.plain(i)));
        }
        for bid in 0..2 {
            assert_eq!(IDS.class(IDS.tap(bid)), BufClass::Tap(bid));
            assert!(IDS.has_headroom(IDS.tap(bid)));
        }
        for i in 0..3 {
            assert_eq!(IDS.class(IDS.slot(i)), BufClass::Slot(i));
        }
        assert_eq!(IDS.plain(0), BufId(4));
        assert_eq!(IDS.tap(0), BufId(6));
        assert_eq!(IDS.slot(0), BufId(8));
    }

    #[test]
    fn buffers_do_not_overlap() {
        let arena = Arena::new(IDS, 100, 65_600, 1514).unwrap();
        let mut spans: Vec<(usize, usize)> = (0..IDS.total())
            .map(|i| {
                let id = BufId(i);
                let start = arena.ptr(id, 0) as usize;
                (start, start + arena.capacity(id))
            })
            .collect();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{pair:?}");
        }
        assert_eq!(
            arena.capacity(IDS.slot(0)),
            (HEADROOM + 1514).div_ceil(64) * 64
        );
        assert_eq!(
            arena.capacity(IDS.tap(1)),
            (HEADROOM + 65_600).div_ceil(64) * 64
        );
    }

    #[test]
    #[should_panic]
    fn views_stay_inside_their_buffer() {
        let arena = Arena::new(IDS, 100, 1514, 1514).unwrap();
        // SAFETY: nothing else uses the arena; the call must panic before making a view.
        let _ = unsafe { arena.bytes(IDS.recv(0), 90, 11) };
    }
}

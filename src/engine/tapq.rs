//! One core's queue of a network's multi-queue TAP: reads armed on it and writes in flight.
//!
//! Contract: reads use provided buffers from the TAP group, multishot where the kernel has
//! it (one armed read) or up to [`FALLBACK_READS`] single-shot reads. A read that stops is
//! re-armed at once, after the ring refilled (it ran dry), or from the next tick (an
//! unexpected error, so a persistent one cannot spin the loop). Writes are counted in flight
//! until they complete. The bounds on writes apply to a core's writes over all its queues:
//! above [`HIGH_WATER`] the engine holds client input, and at [`MAX_WRITES`] it refuses a
//! write (and counts the drop).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{cqueue, opcode, squeue, types};

use super::bufpool::{BufferPool, TAP_GROUP};
use super::ops::{self, Kind};
use super::ring::Ring;

/// Single-shot TAP reads kept armed when multishot read is unavailable.
pub const FALLBACK_READS: usize = 64;
/// TAP writes in flight on a core above which client input is held until they complete.
pub const HIGH_WATER: usize = 512;
/// TAP writes in flight on a core before further frames to the host are dropped.
pub const MAX_WRITES: usize = 1024;

/// What a TAP read completion means for the reader.
#[derive(Debug)]
pub enum ReadEnd {
    /// The read stays armed: more completions follow.
    Armed,
    /// The read ended normally: re-arm it (unless the core is draining).
    Stopped,
    /// The ring ran dry: re-arm once buffers come back.
    Starved,
    /// An unexpected error: re-arm from the next tick.
    RetryLater(io::Error),
}

/// A core's queue of one network's TAP.
pub struct TapQueue {
    fd: OwnedFd,
    /// The network slot (named in the operations' user data).
    net: u16,
    /// Being closed: no read is armed again.
    closing: bool,
    /// Multishot read is in use (turned off if the kernel refuses it).
    multishot: bool,
    /// Length of a single-shot read (the largest frame).
    read_len: u32,
    reads_armed: usize,
    /// Reads stopped because the ring ran dry.
    starved: bool,
    /// A read failed unexpectedly: re-arm from the next tick.
    retry_on_tick: bool,
    writes_in_flight: usize,
}

impl TapQueue {
    /// The queue `fd` of network slot `net`, whose reads fill up to `read_len` bytes.
    pub fn new(fd: OwnedFd, net: u16, multishot: bool, read_len: usize) -> Self {
        TapQueue {
            fd,
            net,
            closing: false,
            multishot,
            // Lossless: TAP reads are at most a 10-byte header and 65 553 bytes.
            read_len: read_len as u32,
            reads_armed: 0,
            starved: false,
            retry_on_tick: false,
            writes_in_flight: 0,
        }
    }

    /// Arms reads up to the target (one multishot read, or single-shot ones while buffers
    /// are lent to the kernel).
    pub fn arm_reads(&mut self, ring: &mut Ring, pool: &BufferPool) {
        if self.closing {
            return;
        }
        let fd = types::Fd(self.fd.as_raw_fd());
        let ud = ops::for_tap(Kind::TapRead, self.net, 0);
        if self.multishot {
            if self.reads_armed == 0 {
                // The kernel takes the length from the provided buffer: len must be 0.
                let entry = opcode::ReadMulti::new(fd, 0, TAP_GROUP)
                    .build()
                    .user_data(ud);
                // SAFETY: the read fills provided buffers of the pool, which outlives the ring.
                unsafe { ring.push(&entry) };
                self.reads_armed = 1;
            }
        } else {
            while self.reads_armed < FALLBACK_READS.min(pool.tap_available()) {
                let entry = opcode::Read::new(fd, std::ptr::null_mut(), self.read_len)
                    .buf_group(TAP_GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
                    .user_data(ud);
                // SAFETY: as above: the kernel picks a provided buffer; no pointer of ours.
                unsafe { ring.push(&entry) };
                self.reads_armed += 1;
            }
        }
    }

    /// Accounts a read completion (its frame, if any, is the caller's to handle first).
    pub fn on_read(&mut self, res: i32, flags: u32) -> ReadEnd {
        let more = self.multishot && cqueue::more(flags);
        if !more {
            self.reads_armed -= 1;
        }
        if res == -libc::ENOBUFS {
            self.starved = true;
            return ReadEnd::Starved;
        }
        if res == -libc::EINVAL && self.multishot {
            log::warn!("multishot TAP read refused (EINVAL); using single-shot reads");
            self.multishot = false;
        } else if res < 0 && res != -libc::EAGAIN && res != -libc::ECANCELED {
            self.retry_on_tick = true;
            return ReadEnd::RetryLater(io::Error::from_raw_os_error(-res));
        }
        if more {
            ReadEnd::Armed
        } else {
            ReadEnd::Stopped
        }
    }

    /// Reads stopped for lack of buffers and buffers are back: re-arm them.
    pub fn rearm_if_refilled(&mut self, ring: &mut Ring, pool: &BufferPool) {
        if self.starved && pool.tap_available() > 0 {
            self.starved = false;
            self.arm_reads(ring, pool);
        }
    }

    /// From the tick: re-arm reads that failed unexpectedly.
    pub fn retry(&mut self, ring: &mut Ring, pool: &BufferPool) {
        if std::mem::take(&mut self.retry_on_tick) {
            self.arm_reads(ring, pool);
        }
    }

    /// Submits a write of `len` bytes at `ptr`, which lie in buffer `buf` (the completion
    /// names it and this queue's network).
    ///
    /// With `vnet` (the TAP takes a `virtio_net_hdr` in front of every frame), the write is
    /// a `writev` of an empty header and the frame, whose iovecs `vnet` holds.
    ///
    /// # Safety
    /// The bytes stay valid and unmodified until the completion (the caller holds a
    /// reference on `buf` for it).
    #[inline]
    pub unsafe fn write(
        &mut self,
        ring: &mut Ring,
        (ptr, len): (*const u8, usize),
        buf: u32,
        vnet: Option<&mut VnetWrites>,
    ) {
        self.writes_in_flight += 1;
        let fd = types::Fd(self.fd.as_raw_fd());
        let entry = match vnet {
            // Lossless: frames are at most 65553 bytes.
            None => opcode::Write::new(fd, ptr, len as u32).build(),
            Some(v) => opcode::Writev::new(fd, v.next(ptr, len), 2).build(),
        };
        let entry = entry.user_data(ops::for_tap(Kind::TapWrite, self.net, buf));
        // SAFETY: the caller's promise about the bytes.
        unsafe { ring.push(&entry) };
    }

    /// Accounts a write completion.
    pub fn on_write(&mut self) {
        self.writes_in_flight -= 1;
    }

    /// Starts closing: cancels the reads armed (their completions still arrive) and arms none
    /// again.
    pub fn close(&mut self, ring: &mut Ring) {
        if std::mem::replace(&mut self.closing, true) {
            return;
        }
        let cancel = opcode::AsyncCancel2::new(
            types::CancelBuilder::fd(types::Fd(self.fd.as_raw_fd())).all(),
        )
        .build()
        .user_data(ops::for_index(Kind::Cancel, 0));
        // SAFETY: a cancel names operations by descriptor; the descriptor stays open until
        // every operation on it has completed (see `TapQueue::idle`).
        unsafe { ring.push(&cancel) };
    }

    /// Nothing is in flight on the queue: it can be dropped (closing its descriptor).
    pub fn idle(&self) -> bool {
        self.reads_armed == 0 && self.writes_in_flight == 0
    }

    /// Being closed.
    pub fn closing(&self) -> bool {
        self.closing
    }
}

/// The iovecs of a core's TAP writes with `--offload`: each write is an empty
/// `virtio_net_hdr` (no offload asked of the kernel: the guest's frame is complete) and the
/// frame. A write's pair is reused only [`VnetWrites::PAIRS`] writes later. By then it has
/// been submitted, and the kernel copies iovecs at submission (`IORING_FEAT_SUBMIT_STABLE`,
/// Linux 5.5; the engine needs 5.19 for its buffer rings): at most [`MAX_WRITES`] of a core's
/// writes are in flight (the worker refuses one beyond), so of the writes pushed after it,
/// most have completed, and the kernel takes submissions in order. (Completions come in any
/// order: the write itself may still be in flight; its frame's buffer is referenced until
/// it completes.)
pub struct VnetWrites {
    pairs: Box<[[libc::iovec; 2]]>,
    next: usize,
}

/// The empty header every write starts with.
static EMPTY_HEADER: [u8; crate::offload::VNET_HDR_LEN] = [0; crate::offload::VNET_HDR_LEN];

impl VnetWrites {
    /// Pairs kept: twice the writes a core may have in flight.
    pub const PAIRS: usize = 2 * MAX_WRITES;

    pub fn new() -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        VnetWrites {
            pairs: vec![[empty; 2]; Self::PAIRS].into_boxed_slice(),
            next: 0,
        }
    }

    /// The next pair, set to the header and the `len` bytes at `ptr`.
    fn next(&mut self, ptr: *const u8, len: usize) -> *const libc::iovec {
        let pair = &mut self.pairs[self.next];
        self.next = (self.next + 1) % Self::PAIRS;
        // The kernel only reads through these pointers (writev); the casts are what iovec wants.
        pair[0] = libc::iovec {
            iov_base: EMPTY_HEADER.as_ptr() as *mut libc::c_void,
            iov_len: EMPTY_HEADER.len(),
        };
        pair[1] = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        pair.as_ptr()
    }
}

impl Default for VnetWrites {
    fn default() -> Self {
        Self::new()
    }
}

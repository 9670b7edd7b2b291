//! One WebSocket client on a core: its socket, decoder, reassembly slot and send queue.
//!
//! The send queue holds references to pool buffers (or small owned control frames) and is
//! sent with one `sendmsg` of up to [`MAX_IOV`] entries at a time, so a burst of frames to one
//! client costs one submission. At most one send is in flight per client: a short send is
//! continued from where it stopped, so frames are never interleaved on the stream.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use crate::switch::limit::TokenBucket;
use crate::switch::PortId;
use crate::ws::Session;

use super::bufpool::BufId;

/// Frames per `sendmsg`.
pub const MAX_IOV: usize = 32;

/// Bytes queued to a client.
pub enum OutData {
    /// A slice of a pool buffer: server header and payload, contiguous.
    Pool {
        buf: BufId,
        ptr: *const u8,
        len: u32,
    },
    /// A small frame or HTTP response built for this client (control frames, handshake).
    Owned(Box<[u8]>),
}

impl OutData {
    /// Pointer and length of the bytes to send.
    pub fn bytes(&self) -> (*const u8, usize) {
        match self {
            OutData::Pool { ptr, len, .. } => (*ptr, *len as usize),
            OutData::Owned(b) => (b.as_ptr(), b.len()),
        }
    }
}

/// Where the connection is in its life.
pub enum Phase {
    /// Reading the HTTP upgrade; bytes gathered here (bounded by the 8 KiB head limit).
    Handshake { head: Vec<u8>, deadline_ms: u64 },
    /// WebSocket open: frames flow.
    Open,
    /// Shutting down: no more reads or new frames; freed once no operation is in flight.
    Closing,
}

/// A client connection.
pub struct Client {
    pub fd: OwnedFd,
    /// The switch port of this client (core, generation, slot).
    pub port: PortId,
    pub phase: Phase,
    pub session: Session,
    /// Frame slot holding a message being reassembled, and its length so far.
    pub assembly: Option<(BufId, usize)>,
    /// The message being reassembled lost its slot (pool empty): discard its pieces.
    pub assembly_lost: bool,
    pub queue: VecDeque<OutData>,
    /// Bytes of the queue's first entry already sent.
    pub front_sent: usize,
    /// iovec array and header of the `sendmsg` in flight (heap: stable while in flight).
    pub iov: Box<[libc::iovec; MAX_IOV]>,
    pub msg: Box<libc::msghdr>,
    pub send_in_flight: bool,
    pub recv_armed: bool,
    /// Waiting in the core's dirty list for a flush.
    pub dirty: bool,
    /// Close the socket once the queue is sent (after a close frame or an HTTP error).
    pub close_after_flush: bool,
    /// Stop decoding input (a close was received or sent).
    pub input_done: bool,
    /// Last time anything arrived, and when an unanswered ping was sent (ms).
    pub last_rx_ms: u64,
    pub ping_sent_ms: Option<u64>,
    /// Since when output has been waiting without the socket taking any of it (None: queue
    /// empty). A client stalled past the slow-client timeout is closed.
    pub stalled_since_ms: Option<u64>,
    /// Drop reasons already logged for this client in the current log interval (bit set).
    pub logged: u64,
    /// Index in the core's list of open ports (for O(1) removal), when open.
    pub open_index: Option<usize>,
    /// Limits on what this client may send, when configured.
    pub byte_limit: Option<TokenBucket>,
    pub broadcast_limit: Option<TokenBucket>,
}

impl Client {
    /// A new connection waiting for its upgrade.
    pub fn new(fd: OwnedFd, port: PortId, max_frame: usize, now_ms: u64, deadline_ms: u64) -> Self {
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Client {
            fd,
            port,
            phase: Phase::Handshake {
                head: Vec::new(),
                deadline_ms,
            },
            session: Session::new(max_frame, true),
            assembly: None,
            assembly_lost: false,
            queue: VecDeque::new(),
            front_sent: 0,
            iov: Box::new([empty_iov; MAX_IOV]),
            msg: Box::new(msg),
            send_in_flight: false,
            recv_armed: false,
            dirty: false,
            close_after_flush: false,
            input_done: false,
            last_rx_ms: now_ms,
            ping_sent_ms: None,
            stalled_since_ms: None,
            logged: 0,
            open_index: None,
            byte_limit: None,
            broadcast_limit: None,
        }
    }

    /// Fills the iovec array from the queue and returns the msghdr to submit, or `None` when
    /// there is nothing to send or a send is already in flight.
    pub fn prepare_send(&mut self) -> Option<*const libc::msghdr> {
        if self.send_in_flight || self.queue.is_empty() {
            return None;
        }
        let mut n = 0;
        for (i, out) in self.queue.iter().take(MAX_IOV).enumerate() {
            let (ptr, len) = out.bytes();
            let skip = if i == 0 { self.front_sent } else { 0 };
            self.iov[i] = libc::iovec {
                // The kernel only reads through this pointer (sendmsg); the cast is what iovec wants.
                iov_base: ptr.wrapping_add(skip) as *mut libc::c_void,
                iov_len: len - skip,
            };
            n += 1;
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n;
        self.send_in_flight = true;
        Some(&*self.msg as *const libc::msghdr)
    }

    /// Accounts `sent` bytes of a completed send at `now_ms`; returns the pool buffers fully
    /// sent (to release) through `done`.
    pub fn advance(&mut self, mut sent: usize, now_ms: u64, mut done: impl FnMut(BufId)) {
        self.send_in_flight = false;
        if sent > 0 {
            self.stalled_since_ms = Some(now_ms);
        }
        while sent > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let remaining = front.bytes().1 - self.front_sent;
            if sent < remaining {
                self.front_sent += sent;
                return;
            }
            sent -= remaining;
            self.front_sent = 0;
            if let Some(OutData::Pool { buf, .. }) = self.queue.pop_front() {
                done(buf);
            }
        }
        if self.queue.is_empty() {
            self.stalled_since_ms = None;
        }
    }

    /// Notes that output was queued at `now_ms` (starts the stall clock if it was idle).
    pub fn output_queued(&mut self, now_ms: u64) {
        self.stalled_since_ms.get_or_insert(now_ms);
    }
}

//! One WebSocket client on a core: its socket and the operations the kernel has in flight on
//! it, its protocol state ([`Conn`]), its send queue ([`OutQueue`]) and its reassembly slot.
//!
//! The send queue goes out with one `sendmsg` of up to [`MAX_IOV`] runs at a time, so a burst
//! of frames to one client costs one submission. At most one send is in flight per client: a
//! short send is continued from where it stopped, so frames never interleave on the stream.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::switch::PortId;

use super::bufpool::BufId;
use super::conn::Conn;
use super::outqueue::OutQueue;
use super::tls_session::TlsSession;

/// Runs per `sendmsg`.
pub const MAX_IOV: usize = 32;

/// A client's socket and the operations in flight on it.
pub struct Socket {
    fd: OwnedFd,
    /// iovec array and header of the `sendmsg` in flight (boxed: the kernel reads them until
    /// the send completes, and the client may move in its table meanwhile).
    iov: Box<[libc::iovec; MAX_IOV]>,
    msg: Box<libc::msghdr>,
    /// A send is in flight; the slot cannot be freed and no second send may start.
    send_in_flight: bool,
    /// A receive is armed; the slot cannot be freed until it completes.
    recv_armed: bool,
}

impl Socket {
    /// Wraps an accepted connection.
    pub fn new(fd: OwnedFd) -> Self {
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        Socket {
            fd,
            iov: Box::new([empty_iov; MAX_IOV]),
            msg: Box::new(msg),
            send_in_flight: false,
            recv_armed: false,
        }
    }

    /// Notes that a receive is being armed; false when one already is.
    pub fn start_recv(&mut self) -> bool {
        !std::mem::replace(&mut self.recv_armed, true)
    }

    /// The armed receive ended (its last completion arrived).
    pub fn recv_ended(&mut self) {
        self.recv_armed = false;
    }

    /// The send in flight completed.
    pub fn send_ended(&mut self) {
        self.send_in_flight = false;
    }

    /// No receive and no send in flight: the kernel holds nothing of this socket's.
    pub fn idle(&self) -> bool {
        !self.recv_armed && !self.send_in_flight
    }

    /// The descriptor, for submissions.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The descriptor, for plain calls.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Fills the iovecs from `out` and returns the msghdr to submit, or `None` when there is
    /// nothing to send or a send is already in flight. The msghdr stays valid until the
    /// next call (it lives in this socket's boxes).
    pub fn prepare_send(&mut self, out: &mut OutQueue) -> Option<*const libc::msghdr> {
        if self.send_in_flight || out.is_empty() {
            return None;
        }
        let mut n = 0;
        for (slot, (ptr, len)) in self.iov.iter_mut().zip(out.pending(MAX_IOV)) {
            *slot = libc::iovec {
                // The kernel only reads through this pointer (sendmsg); the cast is what iovec wants.
                iov_base: ptr as *mut libc::c_void,
                iov_len: len,
            };
            n += 1;
        }
        out.sending(n);
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n;
        self.send_in_flight = true;
        Some(&*self.msg as *const libc::msghdr)
    }
}

impl Socket {
    /// [`Socket::prepare_send`] for `len` bytes at `ptr` (a wss:// client's ciphertext), or
    /// `None` while a send is in flight.
    pub fn prepare_send_bytes(
        &mut self,
        ptr: *const u8,
        len: usize,
    ) -> Option<*const libc::msghdr> {
        if self.send_in_flight || len == 0 {
            return None;
        }
        self.iov[0] = libc::iovec {
            // The kernel only reads through this pointer (sendmsg); the cast is what iovec wants.
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = 1;
        self.send_in_flight = true;
        Some(&*self.msg as *const libc::msghdr)
    }

    /// A send is in flight.
    pub fn sending(&self) -> bool {
        self.send_in_flight
    }
}

/// A client connection.
pub struct Client {
    /// Its switch port (core, generation, slot): also its handle in the client table.
    pub port: PortId,
    pub socket: Socket,
    pub conn: Conn,
    pub out: OutQueue,
    /// Frame slot holding a message being reassembled, and its length so far. `None` also
    /// when the slot could not be had: the message's pieces are then discarded.
    pub assembly: Option<(BufId, usize)>,
    /// TLS of a wss:// client (boxed: most clients of a mixed relay have none).
    pub tls: Option<Box<TlsSession>>,
    /// Upgraded and waiting for its network to be made (see `worker::networks`).
    pub parked: Option<Box<Parked>>,
    /// When it was accepted (engine clock, ms).
    pub since_ms: u64,
    /// Frames and bytes from it, and queued to it (for the admin API).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// The client's address as a `--trusted-proxy` forwarded it (`X-Forwarded-For`), when it
    /// came through one; else its address is the socket's peer.
    pub forwarded: Option<std::net::IpAddr>,
}

/// A connection waiting for its network: the upgrade's answer, and its input since.
pub struct Parked {
    pub response: Vec<u8>,
    /// Buffer, start and end of each piece of input, in order (a reference held on each).
    pub input: Vec<(BufId, usize, usize)>,
    pub deadline_ms: u64,
}

impl Client {
    /// A new connection on `port`.
    pub fn new(fd: OwnedFd, port: PortId, conn: Conn, tls: Option<Box<TlsSession>>) -> Self {
        Client {
            port,
            socket: Socket::new(fd),
            conn,
            out: OutQueue::default(),
            assembly: None,
            tls,
            parked: None,
            since_ms: 0,
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 0,
            tx_bytes: 0,
            forwarded: None,
        }
    }

    /// The client's address: as its trusted proxy forwarded it, else the socket's peer
    /// (one `getpeername`; for logs and the admin API, never per frame).
    pub fn address(&self) -> Option<std::net::IpAddr> {
        self.forwarded
            .or_else(|| self.peer().map(|a| a.ip().to_canonical()))
    }

    /// The socket's peer: the client, or the proxy it came through.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        socket2::SockRef::from(&self.socket.fd())
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
    }

    /// Nothing in flight and closed: the slot can be freed.
    pub fn finished(&self) -> bool {
        self.conn.is_closed() && self.socket.idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outqueue::OutData;

    #[test]
    fn one_receive_at_a_time() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut socket = Socket::new(a.into());
        assert!(socket.start_recv());
        assert!(!socket.start_recv(), "already armed");
        assert!(!socket.idle());
        socket.recv_ended();
        assert!(socket.idle() && socket.start_recv());
    }

    #[test]
    fn one_send_at_a_time_over_at_most_max_iov_runs() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut socket = Socket::new(a.into());
        let mut out = OutQueue::default();
        assert!(socket.prepare_send(&mut out).is_none());
        for _ in 0..MAX_IOV + 5 {
            out.push(OutData::Owned(vec![1, 2, 3].into_boxed_slice()), 0);
        }
        let msg = socket.prepare_send(&mut out).expect("a send");
        // SAFETY: the msghdr lives in the socket, which is alive.
        assert_eq!(unsafe { (*msg).msg_iovlen }, MAX_IOV);
        assert!(
            socket.prepare_send(&mut out).is_none(),
            "a send is in flight"
        );
        assert!(!socket.idle());
        socket.send_ended();
        assert!(socket.idle());
        out.advance(3 * MAX_IOV + 1, 1, |_| {});
        let msg = socket.prepare_send(&mut out).expect("the rest");
        // SAFETY: as above; the first run starts one byte into the partly sent entry.
        let (first, n) = unsafe { (*(*msg).msg_iov, (*msg).msg_iovlen) };
        assert_eq!((n, first.iov_len), (5, 2));
    }
}

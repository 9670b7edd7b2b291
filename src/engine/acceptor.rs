//! One core's listener: accepts armed on it, multishot where the kernel has it.
//!
//! Contract: [`Acceptor::on_completion`] hands over each accepted connection. An accept that
//! fails (out of descriptors, say) is re-armed from the next tick, not at once, so an error
//! that repeats cannot spin the loop; the log line says what to do about it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{cqueue, opcode, types};

use super::ops::{self, Kind};
use super::ring::Ring;

/// A core's listener.
pub struct Acceptor {
    listener: OwnedFd,
    /// Its number on the core (in the accept's user data): 0 for ws://, 1 for wss://.
    index: u32,
    multishot: bool,
    armed: bool,
    /// Accept failed: re-arm from the next tick.
    retry_on_tick: bool,
}

impl Acceptor {
    /// Accepts on `listener`, the core's listener number `index`.
    pub fn new(listener: OwnedFd, index: u32, multishot: bool) -> Self {
        Acceptor {
            listener,
            index,
            multishot,
            armed: false,
            retry_on_tick: false,
        }
    }

    /// Arms an accept.
    pub fn arm(&mut self, ring: &mut Ring) {
        let fd = types::Fd(self.listener.as_raw_fd());
        let entry = if self.multishot {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        // SAFETY: no pointers: the peer address is not asked for.
        unsafe { ring.push(&entry.user_data(ops::for_index(Kind::Accept, self.index))) };
        self.armed = true;
    }

    /// Cancels the armed accept (shutdown).
    pub fn cancel(&mut self, ring: &mut Ring) {
        if self.armed {
            let entry = opcode::AsyncCancel::new(ops::for_index(Kind::Accept, self.index))
                .build()
                .user_data(ops::for_index(Kind::Cancel, 0));
            // SAFETY: a cancel names an operation by user_data; no pointers.
            unsafe { ring.push(&entry) };
        }
    }

    /// Accounts an accept completion: the new connection, if one was accepted. `rearm` says
    /// whether the caller should arm again now.
    pub fn on_completion(
        &mut self,
        res: i32,
        flags: u32,
        core: usize,
        gate: &super::loggate::LogGate,
    ) -> (Option<OwnedFd>, bool) {
        if !cqueue::more(flags) {
            self.armed = false;
        }
        if res >= 0 {
            // SAFETY: a successful accept completion carries a new descriptor that we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            return (Some(fd), !self.armed);
        }
        if res == -libc::ECANCELED {
            return (None, !self.armed);
        }
        let hint = if res == -libc::EMFILE || res == -libc::ENFILE {
            " — out of file descriptors: raise the open-file limit (ulimit -n) or lower --max-clients"
        } else {
            ""
        };
        if let Some(held) = gate.admit(super::loggate::ACCEPT_FAILED) {
            log::warn!(
                "core {core}: accept failed: {}{hint}; retrying on the next tick{}",
                io::Error::from_raw_os_error(-res),
                super::loggate::held_note(held)
            );
        }
        if !self.armed {
            self.retry_on_tick = true;
        }
        (None, false)
    }

    /// From the tick: re-arms an accept that failed.
    pub fn retry(&mut self, ring: &mut Ring) {
        if std::mem::take(&mut self.retry_on_tick) && !self.armed {
            self.arm(ring);
        }
    }
}

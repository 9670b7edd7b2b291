//! The swarm's pacing timer.

use std::io;
use std::time::Duration;

use mio::{Interest, Poll, Token};

/// The poll token of the pacing timer.
pub(super) const PACER: Token = Token(usize::MAX);

/// A periodic timerfd in the swarm's poll: wakes the loop every interval.
pub(super) struct Pacer(std::os::fd::OwnedFd);

impl Pacer {
    pub(super) fn new(poll: &Poll, every: Duration) -> io::Result<Pacer> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is not owned elsewhere.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let ts = libc::timespec {
            tv_sec: every.as_secs() as libc::time_t,
            tv_nsec: every.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            PACER,
            Interest::READABLE,
        )?;
        Ok(Pacer(fd))
    }

    /// Reads the expiry count, so that the next expiry is a new edge.
    pub(super) fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into `n`; a non-blocking read that finds nothing is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

//! The ring driver of one core: submissions, the one `io_uring_enter` per loop iteration, and
//! completions in the order the kernel posted them.
//!
//! Contract: [`Ring::push`] queues a submission, submitting early only when the submission
//! queue is full; if the completion queue is full too, its entries move to a local backlog
//! first, so a push never spins and no completion is lost. [`Ring::submit_and_wait`] submits
//! everything and waits for at least one completion; [`Ring::next_completion`] then yields
//! every completion, including those reaped while handlers pushed more work.

use std::collections::VecDeque;
use std::io;

use io_uring::{squeue, IoUring};

/// One completion: the operation's `user_data`, its result and flags.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

/// A core's io_uring.
pub struct Ring {
    uring: IoUring,
    /// Completions taken from the kernel and not yet handled.
    reaped: VecDeque<Completion>,
    /// For log lines.
    core: usize,
}

impl Ring {
    /// A ring with `entries` submission entries (4× as many completion entries), single
    /// issuer with deferred task work where the kernel has them (Linux 6.1: fewer wakeups).
    pub fn new(entries: u32, core: usize) -> io::Result<Self> {
        let tuned = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries);
        let uring = match tuned {
            Ok(ring) => ring,
            Err(_) => IoUring::builder()
                .setup_cqsize(entries * 4)
                .build(entries)?,
        };
        Ok(Ring {
            uring,
            reaped: VecDeque::with_capacity(1024),
            core,
        })
    }

    /// The io_uring itself (probing, buffer-ring registration).
    pub fn uring(&self) -> &IoUring {
        &self.uring
    }

    /// Queues a submission.
    ///
    /// # Safety
    /// Every buffer, iovec, msghdr or timespec `entry` points at stays valid (and is not
    /// written by us when the kernel reads it, nor read when the kernel writes it) until the
    /// operation's completion has been handled.
    #[inline]
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller's promise about what the entry points at.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return;
            }
            match self.uring.submit() {
                Ok(_) => {}
                // The completion queue is full: move its entries to the backlog being handled,
                // which makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    log::error!("core {}: io_uring submit failed: {e}", self.core);
                    self.reap();
                }
            }
        }
    }

    /// Submits everything queued and waits for at least one completion (or a signal).
    pub fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.uring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        Ok(())
    }

    /// Submits everything queued and waits for at least one completion, at most `limit`.
    pub fn submit_and_wait_at_most(&mut self, limit: std::time::Duration) -> io::Result<()> {
        let ts = io_uring::types::Timespec::from(limit);
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        Ok(())
    }

    /// The next completion to handle.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.reaped.pop_front()
    }

    fn reap(&mut self) {
        for cqe in self.uring.completion() {
            self.reaped.push_back(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }
}

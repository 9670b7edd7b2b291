//! relay-floor's TAP side: writing frames (up) and reading them (down), plainly or through an
//! io_uring.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::{Io, Moved, BATCH, STOP};

/// Writes frames to the TAP: at once, or queued on an io_uring and submitted together by
/// [`TapWriter::finish`] (before the buffer they lie in is used again).
pub(crate) struct TapWriter {
    tap: RawFd,
    ring: Option<io_uring::IoUring>,
    queued: usize,
}

impl TapWriter {
    pub(crate) fn new(tap: RawFd, io: Io) -> Result<Self, String> {
        let ring = match io {
            Io::Plain => None,
            Io::Uring => Some(io_uring::IoUring::new(4096).map_err(|e| format!("io_uring: {e}"))?),
        };
        Ok(TapWriter {
            tap,
            ring,
            queued: 0,
        })
    }

    pub(crate) fn write(&mut self, payload: &[u8], moved: &mut Moved) -> Result<(), String> {
        let Some(ring) = self.ring.as_mut() else {
            // SAFETY: writing a slice we borrow to the TAP descriptor the caller keeps open.
            let n = unsafe { libc::write(self.tap, payload.as_ptr().cast(), payload.len()) };
            count_write(n as i64, moved);
            return Ok(());
        };
        let entry = io_uring::opcode::Write::new(
            io_uring::types::Fd(self.tap),
            payload.as_ptr(),
            payload.len() as u32,
        )
        .build();
        // SAFETY: the payload stays where it is until `finish`, which the caller runs before
        // the buffer is reused, waits for every queued write to complete.
        if unsafe { ring.submission().push(&entry) }.is_err() {
            self.finish(moved)?;
            let ring = self.ring.as_mut().ok_or("no ring")?;
            // SAFETY: as above; the queue was just emptied.
            unsafe { ring.submission().push(&entry) }.map_err(|_| "submission queue full")?;
        }
        self.queued += 1;
        Ok(())
    }

    /// Submits what is queued and waits for all of it.
    pub(crate) fn finish(&mut self, moved: &mut Moved) -> Result<(), String> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        while self.queued > 0 {
            ring.submit_and_wait(self.queued)
                .map_err(|e| format!("io_uring_enter: {e}"))?;
            for cqe in ring.completion() {
                count_write(i64::from(cqe.result()), moved);
                self.queued -= 1;
            }
        }
        Ok(())
    }
}

fn count_write(result: i64, moved: &mut Moved) {
    if result > 0 {
        moved.frames += 1;
        moved.bytes += result as u64;
    } else {
        moved.refused += 1;
    }
}

/// Reads frames from the TAP into slots of `slot` bytes: with `read` until the TAP is empty
/// (`Io::Plain`, woken by epoll), or with a read outstanding on an io_uring for every slot,
/// whose completions come in batches of one `io_uring_enter` (`Io::Uring`).
pub(crate) struct TapReader {
    tap: RawFd,
    epoll: RawFd,
    slot: usize,
    ring: Option<io_uring::IoUring>,
}

impl TapReader {
    pub(crate) fn new(
        epoll: RawFd,
        tap: RawFd,
        io: Io,
        frames: &mut [u8],
        slot: usize,
    ) -> Result<Self, String> {
        let mut reader = TapReader {
            tap,
            epoll,
            slot,
            ring: None,
        };
        match io {
            Io::Plain => {
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: u64::MAX,
                };
                // SAFETY: registering the TAP descriptor, open for the whole loop.
                if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, tap, &mut ev) } != 0 {
                    return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
                }
            }
            Io::Uring => {
                // Blocking, so that a read of an empty TAP waits in the ring (armed on the
                // TAP's poll) rather than completing at once with EAGAIN.
                // SAFETY: fcntl on the TAP descriptor the caller keeps open.
                unsafe { libc::fcntl(tap, libc::F_SETFL, libc::O_RDWR) };
                reader.ring = Some(
                    io_uring::IoUring::new(2 * BATCH as u32)
                        .map_err(|e| format!("io_uring: {e}"))?,
                );
                let all: Vec<u16> = (0..BATCH as u16).collect();
                reader.release(frames, &all)?;
            }
        }
        Ok(reader)
    }

    /// Waits up to 100 ms for frames; puts the slots that hold one in `ready`.
    pub(crate) fn next_batch(
        &mut self,
        frames: &mut [u8],
        lens: &mut [usize; BATCH],
        ready: &mut Vec<u16>,
    ) -> Result<(), String> {
        ready.clear();
        let Some(ring) = self.ring.as_mut() else {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: `events` is a valid array of its length.
            if unsafe { libc::epoll_wait(self.epoll, events.as_mut_ptr(), 4, 100) } <= 0 {
                return Ok(());
            }
            while ready.len() < BATCH {
                let f = ready.len();
                let at = &mut frames[f * self.slot..(f + 1) * self.slot];
                // SAFETY: reading into our own slot of `slot` bytes.
                let r = unsafe { libc::read(self.tap, at.as_mut_ptr().cast(), self.slot) };
                if r <= 0 {
                    break;
                }
                lens[f] = r as usize;
                ready.push(f as u16);
            }
            return Ok(());
        };
        let ts = io_uring::types::Timespec::new().nsec(100_000_000);
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(format!("io_uring_enter: {e}")),
        }
        let mut failed = Vec::new();
        for cqe in ring.completion() {
            let f = cqe.user_data() as u16;
            if cqe.result() > 0 {
                lens[usize::from(f)] = cqe.result() as usize;
                ready.push(f);
            } else {
                failed.push(f);
            }
        }
        // A read that failed (none here but at exit) is simply made again.
        if !failed.is_empty() && !STOP.load(Ordering::Relaxed) {
            self.release(frames, &failed)?;
        }
        Ok(())
    }

    /// The frames in `slots` are sent: read into them again.
    pub(crate) fn release(&mut self, frames: &mut [u8], slots: &[u16]) -> Result<(), String> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        for &f in slots {
            let at = usize::from(f) * self.slot;
            let entry = io_uring::opcode::Read::new(
                io_uring::types::Fd(self.tap),
                frames[at..].as_mut_ptr(),
                self.slot as u32,
            )
            .build()
            .user_data(u64::from(f));
            // SAFETY: the slot is ours and is not touched again until its read completes;
            // `frames` outlives the ring (both live for the whole loop).
            unsafe { ring.submission().push(&entry) }.map_err(|_| "submission queue full")?;
        }
        Ok(())
    }
}

//! One core's mailbox: messages to and from the other cores, over one bounded lock-free
//! queue per ordered pair of cores, and the eventfd wake-ups that go with them.
//!
//! Contract: a frame for another core's clients travels as a pointer into the sending core's
//! pool plus a reference that the receiver gives back with a release once it has copied the
//! frame into its own slot (one copy per frame per receiving core, no allocation). The count
//! of frames sent and not yet released ([`Mailbox::in_flight`]) is what cross-core
//! backpressure looks at. Control messages (release, learn, forget) are never dropped: they
//! wait in a local backlog while a queue is full. A frame that does not fit is refused (the
//! caller counts it). Each core with new messages is woken once per loop iteration.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types};

use crate::switch::{Binding, Mac, PortId};

use super::bufpool::BufId;
use super::network::NetId;
use super::ops::{self, Kind};
use super::ring::Ring;
use super::Shared;

/// Where a cross-core frame goes on the receiving core.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// One port.
    Port(PortId),
    /// Every open port of the network on the receiving core.
    Flood(NetId),
}

/// A switch-table update every other core must apply to its replica of a network (never
/// carries a frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// In the network, `mac` now belongs to `port` (on the sender's core).
    Learn(NetId, Mac, PortId),
    /// In the network, `mac` no longer belongs to `port`.
    Forget(NetId, Mac, PortId),
    /// Another client wants a MAC `port` (on the receiving core) owns: ping it now.
    Challenge(PortId),
    /// In the network, `mac` is now bound to this address (or to none): a DHCP ACK, NAK or
    /// release.
    Bind(NetId, Mac, Option<Binding>),
}

/// A message from one core to another.
#[derive(Debug)]
pub enum CoreMsg {
    /// A frame in the sender's pool: `len` bytes at `data`, kept alive by a reference on `buf`.
    Frame {
        data: *const u8,
        len: u32,
        buf: BufId,
        target: Target,
    },
    /// The receiver copied the frame: drop the reference on `buf`.
    Release(BufId),
    Control(Control),
}

// SAFETY: the only non-Send field is the frame pointer. The bytes it points to live in the
// sending core's pool and stay unmodified and mapped while the reference travels (the pool
// is released only after all cores have stopped), and are only read by the receiver.
unsafe impl Send for CoreMsg {}

/// A message for this core.
#[derive(Debug)]
pub enum Incoming {
    /// A frame from core `from`: `len` bytes at `data` in its pool. Copy them, then give
    /// `buf` back with [`Mailbox::release`].
    Frame {
        from: usize,
        data: *const u8,
        len: usize,
        buf: BufId,
        target: Target,
    },
    /// A frame this core sent was copied: drop the reference on `buf`.
    Released(BufId),
    Control(Control),
}

/// One core's end of the cross-core queues.
pub struct Mailbox {
    id: usize,
    shared: Arc<Shared>,
    /// Control messages per destination core that did not fit its queue yet.
    backlog: Vec<VecDeque<CoreMsg>>,
    /// Cores that got messages this iteration and must be woken.
    wake_pending: Vec<bool>,
    /// Frames sent to other cores whose release has not come back.
    in_flight: usize,
    /// The peer whose queue [`Mailbox::next`] reads.
    cursor: usize,
    /// Where the wake-up eventfd read lands (boxed: the kernel writes it asynchronously).
    wake_buf: Box<u64>,
}

impl Mailbox {
    /// Core `id`'s mailbox.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        Mailbox {
            id,
            backlog: (0..shared.cores).map(|_| VecDeque::new()).collect(),
            wake_pending: vec![false; shared.cores],
            in_flight: 0,
            cursor: 0,
            wake_buf: Box::new(0),
            shared,
        }
    }

    /// Frames sent and not yet copied by their receivers.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Sends a frame to core `to`; false when its queue is full (nothing was sent).
    pub fn send_frame(
        &mut self,
        to: usize,
        data: *const u8,
        len: usize,
        buf: BufId,
        target: Target,
    ) -> bool {
        // Lossless: frames are at most 65553 bytes.
        let len = len as u32;
        let msg = CoreMsg::Frame {
            data,
            len,
            buf,
            target,
        };
        if self.shared.queue(self.id, to).push(msg).is_err() {
            return false;
        }
        self.in_flight += 1;
        self.wake_pending[to] = true;
        true
    }

    /// Sends `control` to every other core.
    pub fn broadcast(&mut self, control: Control) {
        for core in 0..self.shared.cores {
            if core != self.id {
                self.backlog[core].push_back(CoreMsg::Control(control));
            }
        }
    }

    /// Sends `control` to core `to`.
    pub fn send_control(&mut self, to: usize, control: Control) {
        self.backlog[to].push_back(CoreMsg::Control(control));
    }

    /// Gives a frame of core `from` back: this core has copied it.
    pub fn release(&mut self, from: usize, buf: BufId) {
        self.backlog[from].push_back(CoreMsg::Release(buf));
    }

    /// Moves backlogged messages into their queues while there is room, then wakes every
    /// core that got messages (one eventfd write each).
    pub fn flush(&mut self) {
        for core in 0..self.shared.cores {
            while let Some(msg) = self.backlog[core].pop_front() {
                match self.shared.queue(self.id, core).push(msg) {
                    Ok(()) => self.wake_pending[core] = true,
                    Err(msg) => {
                        self.backlog[core].push_front(msg);
                        break;
                    }
                }
            }
        }
        for core in 0..self.shared.cores {
            if std::mem::take(&mut self.wake_pending[core]) {
                self.shared.wake(core);
            }
        }
    }

    /// The next message from another core.
    pub fn next(&mut self) -> Option<Incoming> {
        while self.cursor < self.shared.cores {
            let from = self.cursor;
            if from != self.id {
                if let Some(msg) = self.shared.queue(from, self.id).pop() {
                    return Some(match msg {
                        CoreMsg::Frame {
                            data,
                            len,
                            buf,
                            target,
                        } => Incoming::Frame {
                            from,
                            data,
                            len: len as usize,
                            buf,
                            target,
                        },
                        CoreMsg::Release(buf) => {
                            self.in_flight -= 1;
                            Incoming::Released(buf)
                        }
                        CoreMsg::Control(c) => Incoming::Control(c),
                    });
                }
            }
            self.cursor += 1;
        }
        self.cursor = 0;
        None
    }

    /// Arms the read of this core's wake-up eventfd.
    pub fn arm_wake(&mut self, ring: &mut Ring) {
        let fd = types::Fd(self.shared.wake_fds[self.id].as_raw_fd());
        let ptr = (&mut *self.wake_buf as *mut u64).cast::<u8>();
        let entry = opcode::Read::new(fd, ptr, 8)
            .build()
            .user_data(ops::for_index(Kind::Wake, 0));
        // SAFETY: the kernel writes 8 bytes into `wake_buf`, a box this mailbox owns for as
        // long as the ring lives, and nobody reads it.
        unsafe { ring.push(&entry) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn a_frame_goes_over_and_its_reference_comes_back() {
        let shared = Shared::for_tests(2);
        let (mut a, mut b) = (Mailbox::new(0, shared.clone()), Mailbox::new(1, shared));
        let bytes = [7u8; 60];
        let port = PortId::new(1, 3, 9);
        assert!(a.send_frame(1, bytes.as_ptr(), 60, BufId(42), Target::Port(port)));
        assert_eq!(a.in_flight(), 1);
        a.flush();
        let Some(Incoming::Frame {
            from: 0,
            len: 60,
            buf: BufId(42),
            target: Target::Port(to),
            ..
        }) = b.next()
        else {
            panic!("no frame");
        };
        assert_eq!(to, port);
        assert!(b.next().is_none());
        b.release(0, BufId(42));
        b.flush();
        assert!(matches!(a.next(), Some(Incoming::Released(BufId(42)))));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn control_messages_wait_while_a_queue_is_full() {
        let shared = Shared::for_tests(2);
        let (mut a, mut b) = (Mailbox::new(0, shared.clone()), Mailbox::new(1, shared));
        let byte = 0u8;
        let mut sent = 0;
        while a.send_frame(1, &byte, 1, BufId(0), Target::Flood(NetId::DEFAULT)) {
            sent += 1;
        }
        assert_eq!(
            sent,
            super::super::CROSS_CORE_QUEUE,
            "frames are refused when full"
        );
        a.broadcast(Control::Learn(NetId::DEFAULT, mac(1), PortId::new(0, 0, 1)));
        a.flush();
        let mut frames = 0;
        while let Some(Incoming::Frame { .. }) = b.next() {
            frames += 1;
        }
        assert_eq!(frames, sent);
        // Room again: the waiting control message goes out on the next flush.
        a.flush();
        assert_eq!(
            b.next().map(|m| format!("{m:?}")),
            Some(format!(
                "{:?}",
                Incoming::Control(Control::Learn(NetId::DEFAULT, mac(1), PortId::new(0, 0, 1)))
            ))
        );
    }
}

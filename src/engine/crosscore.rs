//! Messages between cores, over one bounded lock-free queue per ordered pair of cores.
//!
//! A frame for another core's clients travels as a pointer into the sending core's pool
//! plus a reference the receiver must give back with [`CoreMsg::Release`] once it has copied
//! the frame into its own slot (one copy per frame per core, and no allocation). Control
//! messages (release, learn, forget) are never dropped: a sender keeps them in a local
//! backlog while the queue is full.

use crate::switch::{Mac, PortId};

use super::bufpool::BufId;

/// Where a cross-core frame goes on the receiving core.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// One port.
    Port(PortId),
    /// Every open port of the receiving core.
    Flood,
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
    /// `mac` now belongs to `port` (on the sender's core).
    Learn(Mac, PortId),
    /// `mac` no longer belongs to `port`.
    Forget(Mac, PortId),
}

// SAFETY: the only non-Send field is the frame pointer. The bytes it points to live in the
// sending core's pool and stay unmodified and mapped while the reference travels (the pool
// is released only after all cores have stopped), and are only read by the receiver.
unsafe impl Send for CoreMsg {}

//! The userspace MAC-learning switch behind the uplink TAP (ARCHITECTURE.md, decision 4).
//! Pure: no I/O, no clocks, no `unsafe`.

pub mod limit;
mod mac;
mod ownership;
mod table;

pub use mac::Mac;
pub use ownership::{Ownership, Refusal};
pub use table::{ingress, Decision, Forward, OwnershipAccess, Source, Switch, SwitchDrop};

/// A switch port: one client, named by its core, a generation and its slot on that core, so
/// that a reused slot is never confused with the client that had it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u64);

impl PortId {
    /// Packs core (8 bits), generation (24 bits) and slot (32 bits).
    pub fn new(core: usize, generation: u32, slot: u32) -> Self {
        PortId(
            ((core as u64 & 0xFF) << 56)
                | ((u64::from(generation) & 0xFF_FFFF) << 32)
                | u64::from(slot),
        )
    }

    /// The core the port lives on.
    pub fn core(self) -> usize {
        (self.0 >> 56) as usize
    }

    /// The client slot on that core.
    pub fn slot(self) -> u32 {
        // Truncation intended: the low 32 bits are the slot.
        self.0 as u32
    }

    /// The slot's generation when the port was made.
    pub fn generation(self) -> u32 {
        ((self.0 >> 32) & 0xFF_FFFF) as u32
    }
}

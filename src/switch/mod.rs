//! The userspace MAC-learning switch behind the uplink TAP (docs/design.md, "Switch").
//! Pure: no I/O, no clocks, no `unsafe`.

pub mod guard;
pub mod limit;
mod mac;
mod ownership;
mod table;

pub use mac::Mac;
pub use ownership::{Ownership, Refusal, SharedOwnership};
pub use table::{
    ingress, ingress_claiming, Decision, Forward, OwnershipAccess, Roam, Source, Switch, SwitchDrop,
};

/// An IPv4 address bound to a MAC until a time (ms on the engine's clock; `u64::MAX` for
/// static bindings and infinite leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub ip: [u8; 4],
    pub until_ms: u64,
}

impl Binding {
    /// Whether `binding` allows `ip` at `now_ms`.
    pub fn holds(binding: Option<Binding>, ip: [u8; 4], now_ms: u64) -> bool {
        binding.is_some_and(|b| b.ip == ip && b.until_ms > now_ms)
    }

    /// A binding for a lease of `lease_secs` seconds (`u32::MAX`: infinite) from `now_ms`.
    pub fn lease(ip: [u8; 4], lease_secs: u32, now_ms: u64) -> Binding {
        let until_ms = if lease_secs == u32::MAX {
            u64::MAX
        } else {
            now_ms.saturating_add(u64::from(lease_secs) * 1000)
        };
        Binding { ip, until_ms }
    }
}

/// A switch port: one client, named by its core, a generation and its slot on that core, so
/// that a reused slot is never confused with the client that had it before.
///
/// Layout: core (8 bits) | generation (24 bits) | slot (32 bits). The low 56 bits (the port
/// on its core) also name a client's io_uring operations (see `engine::ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u64);

impl PortId {
    /// Bits of a generation.
    pub const GENERATION_MASK: u32 = 0xFF_FFFF;
    /// The bits that name a port on its own core (generation and slot).
    pub const LOCAL_MASK: u64 = (1 << 56) - 1;

    /// Packs core (8 bits), generation (24 bits) and slot (32 bits).
    pub fn new(core: usize, generation: u32, slot: u32) -> Self {
        PortId(
            ((core as u64 & 0xFF) << 56)
                | ((u64::from(generation & Self::GENERATION_MASK)) << 32)
                | u64::from(slot),
        )
    }

    /// The port on core `core` whose local bits are `local` (see [`PortId::local`]).
    pub fn from_local(core: usize, local: u64) -> Self {
        PortId(((core as u64 & 0xFF) << 56) | (local & Self::LOCAL_MASK))
    }

    /// The generation and slot, without the core.
    pub fn local(self) -> u64 {
        self.0 & Self::LOCAL_MASK
    }

    /// The generation that follows `generation` when a slot is reused.
    pub fn next_generation(generation: u32) -> u32 {
        generation.wrapping_add(1) & Self::GENERATION_MASK
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
        // Truncation intended after the shift: 24 bits remain under the mask.
        ((self.0 >> 32) as u32) & Self::GENERATION_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::PortId;

    #[test]
    fn port_fields_round_trip() {
        let p = PortId::new(3, 0xABCDEF, 0xFFFF_FFFE);
        assert_eq!(
            (p.core(), p.generation(), p.slot()),
            (3, 0xABCDEF, 0xFFFF_FFFE)
        );
        assert_eq!(PortId::from_local(3, p.local()), p);
        assert_eq!(PortId::from_local(4, p.local()).core(), 4);
        assert_eq!(PortId::new(0, 0x1_000_001, 0).generation(), 1);
    }
}

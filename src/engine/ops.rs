//! `user_data` encoding of io_uring operations, and kernel feature probing.
//!
//! `user_data` = kind (8 bits) | the low 56 bits of a [`PortId`] (generation and slot). For
//! client operations that names the client, and the generation tells a completion for a
//! client that has since gone (its slot reused) from one for the current client. For TAP
//! reads and writes the generation field carries the network slot of the TAP, and for writes
//! the slot field the buffer written from.

use io_uring::{opcode, IoUring, Probe};

use crate::switch::PortId;

/// Operation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Accept = 1,
    TapRead = 2,
    Wake = 3,
    Timer = 4,
    Recv = 5,
    Send = 6,
    TapWrite = 7,
    Cancel = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Accept,
            2 => Kind::TapRead,
            3 => Kind::Wake,
            4 => Kind::Timer,
            5 => Kind::Recv,
            6 => Kind::Send,
            7 => Kind::TapWrite,
            8 => Kind::Cancel,
            _ => return None,
        })
    }
}

/// An operation on client `port`.
pub fn for_port(kind: Kind, port: PortId) -> u64 {
    (u64::from(kind as u8) << 56) | port.local()
}

/// An operation that names no client (`index`: a buffer for TAP writes, else 0).
pub fn for_index(kind: Kind, index: u32) -> u64 {
    for_port(kind, PortId::new(0, 0, index))
}

/// An operation on the TAP queue of network slot `net` (`index`: a buffer for writes, else 0).
pub fn for_tap(kind: Kind, net: u16, index: u32) -> u64 {
    for_port(kind, PortId::new(0, u32::from(net), index))
}

/// Unpacks [`for_port`]/[`for_index`] on core `core`: the kind and the port (whose slot is
/// the index).
pub fn decode(ud: u64, core: usize) -> Option<(Kind, PortId)> {
    // Truncation intended: the kind is the top byte.
    let kind = Kind::from_u8((ud >> 56) as u8)?;
    Some((kind, PortId::from_local(core, ud)))
}

/// Which io_uring features the engine uses on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Multishot accept (Linux 5.19).
    pub multishot_accept: bool,
    /// Multishot receive with provided buffers (Linux 6.0).
    pub multishot_recv: bool,
    /// Multishot read of the TAP (IORING_OP_READ_MULTISHOT, Linux 6.7).
    pub multishot_tap_read: bool,
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> (u32, u32) {
    let uname = rustix::system::uname();
    parse_release(&uname.release().to_string_lossy())
}

/// Parses "6.1.0-18-amd64" into (6, 1).
pub fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Probes `ring`'s kernel; `force_fallback` turns every multishot operation off.
pub fn probe(ring: &IoUring, force_fallback: bool) -> Features {
    let version = kernel_version();
    let mut probe = Probe::new();
    let has_read_multishot = ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::ReadMulti::CODE);
    Features {
        multishot_accept: !force_fallback && version >= (5, 19),
        multishot_recv: !force_fallback && version >= (6, 0),
        multishot_tap_read: !force_fallback && has_read_multishot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let port = PortId::new(2, 0xABCDEF, 0xFFFF_FFFF);
        assert_eq!(
            decode(for_port(Kind::Send, port), 2),
            Some((Kind::Send, port))
        );
        let (kind, p) = decode(for_index(Kind::TapWrite, 77), 1).unwrap();
        assert_eq!((kind, p.slot(), p.generation()), (Kind::TapWrite, 77, 0));
        assert_eq!(decode(0, 0), None);
    }

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.1.0-18-amd64"), (6, 1));
        assert_eq!(parse_release("6.18.44-fc-v657"), (6, 18));
        assert_eq!(parse_release("garbage"), (0, 0));
    }
}

//! Ethernet II addresses and the two header fields the switch reads (IEEE 802.3 §3.2).

use std::fmt;

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xFF; 6]);
    /// 00:00:00:00:00:00, which no interface may send from.
    pub const ZERO: Mac = Mac([0; 6]);

    /// Group (multicast or broadcast) address: I/G bit, the low bit of the first octet.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Destination address of an Ethernet frame (bytes 0..6); `None` if shorter than a header.
    pub fn destination(frame: &[u8]) -> Option<Mac> {
        frame
            .get(0..6)
            .map(|b| Mac([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }

    /// Source address of an Ethernet frame (bytes 6..12).
    pub fn source(frame: &[u8]) -> Option<Mac> {
        frame
            .get(6..12)
            .map(|b| Mac([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

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

impl Mac {
    /// Parses a guest's address as an option gives it: six hex pairs with colons, unicast and
    /// not all zeros (no guest sends from any other).
    pub fn parse_guest(text: &str) -> Result<Mac, String> {
        let octets: Vec<u8> = text
            .split(':')
            .map(|o| u8::from_str_radix(o, 16).ok().filter(|_| o.len() == 2))
            .collect::<Option<_>>()
            .filter(|v: &Vec<u8>| v.len() == 6)
            .ok_or_else(|| format!("{text:?} is not a MAC address (six hex pairs with colons)"))?;
        let mac = Mac([
            octets[0], octets[1], octets[2], octets[3], octets[4], octets[5],
        ]);
        if mac.is_group() || mac == Mac::ZERO {
            return Err(format!(
                "{mac} is a group or zero address, which no guest sends from"
            ));
        }
        Ok(mac)
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

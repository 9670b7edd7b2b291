//! Anti-spoofing: what a client's frame claims about its IPv4 address, and what the DHCP
//! server's replies bind (docs/design.md, "IP bindings").
//!
//! Contract: [`inspect`] reads a frame a client sent and either refuses it outright (a DHCP
//! server message, a DHCP request for another hardware address, a VLAN tag, an ARP packet
//! whose sender hardware address is not the frame's source, a header too short to check) or
//! names the IPv4 address the frame claims, which the switch then compares with the binding
//! of the frame's source MAC. [`snoop`] reads a frame from the uplink and returns the binding
//! a DHCP ACK makes or the one a NAK ends. Pure: no I/O, no clocks, no allocation; every read
//! is bounds-checked, so any byte string is safe input (fuzzed by `fuzz_targets/guard.rs`).
//!
//! Unchecked on purpose: IPv6 and other ethertypes pass (guests get no IPv6 addresses from
//! tapwire); the host's kernel decides what an IPv4 packet to it may do.

use super::Mac;

/// Why the guard refused a frame. Each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardDrop {
    /// An IPv4 packet whose source address is not bound to the frame's source MAC (or an IPv4
    /// header too short to read).
    IpSpoof,
    /// An ARP packet claiming an address not bound to the sender, a sender hardware address
    /// other than the frame's source, or not Ethernet/IPv4 ARP.
    ArpSpoof,
    /// A DHCP server message (UDP source port 67) from a client.
    RogueDhcp,
    /// A DHCP request whose client hardware address is not the frame's source MAC.
    DhcpChaddr,
    /// An 802.1Q/802.1ad tagged frame (its payload would escape these checks).
    VlanTagged,
}

/// What a frame from a client claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The IPv4 address the frame uses as its own, and the drop if it is not bound to the
    /// frame's source MAC. `None`: nothing to check (not IPv4/ARP, a DHCP message from
    /// 0.0.0.0, an ARP probe).
    pub address: Option<([u8; 4], GuardDrop)>,
    /// A DHCPRELEASE or DHCPDECLINE: the client gives its address up, so its binding ends.
    pub gives_up_lease: bool,
}

impl Claim {
    /// A frame with nothing to check.
    pub const NOTHING: Claim = Claim {
        address: None,
        gives_up_lease: false,
    };
}

/// A binding made or ended by a DHCP reply from the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snoop {
    /// DHCPACK: `mac` holds `ip` for `lease_secs` seconds (`u32::MAX`: infinite).
    Ack {
        mac: Mac,
        ip: [u8; 4],
        lease_secs: u32,
    },
    /// DHCPNAK: `mac` holds no address.
    Nak { mac: Mac },
}

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const TAGGED: [u16; 3] = [0x8100, 0x88A8, 0x9100];
const UDP: u8 = 17;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
/// BOOTP fixed part before the magic cookie (RFC 2131 §2).
const BOOTP_FIXED: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const DHCPDECLINE: u8 = 4;
const DHCPACK: u8 = 5;
const DHCPNAK: u8 = 6;
const DHCPRELEASE: u8 = 7;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn ip_at(b: &[u8], at: usize) -> Option<[u8; 4]> {
    b.get(at..at + 4).map(|s| [s[0], s[1], s[2], s[3]])
}

fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at + 6)
        .map(|s| Mac([s[0], s[1], s[2], s[3], s[4], s[5]]))
}

/// The UDP ports and payload of an IPv4 frame, when it is the first (or only) fragment of a
/// UDP datagram; `Err` when the IPv4 header cannot be read.
struct Ipv4<'a> {
    source: [u8; 4],
    /// (source port, destination port, UDP payload) of a first fragment of UDP.
    udp: Option<(u16, u16, &'a [u8])>,
}

fn parse_ipv4(frame: &[u8]) -> Option<Ipv4<'_>> {
    let ip = frame.get(ETH_HEADER..)?;
    let first = *ip.first()?;
    let header = usize::from(first & 0x0F) * 4;
    if first >> 4 != 4 || header < 20 || ip.len() < header {
        return None;
    }
    let source = ip_at(ip, 12)?;
    let fragment_offset = u16_at(ip, 6)? & 0x1FFF;
    if ip[9] != UDP || fragment_offset != 0 {
        return Some(Ipv4 { source, udp: None });
    }
    // A first fragment too short for its UDP header cannot be checked for its ports.
    let l4 = ip.get(header..)?;
    let (sport, dport) = (u16_at(l4, 0)?, u16_at(l4, 2)?);
    let payload = l4.get(8..)?;
    Some(Ipv4 {
        source,
        udp: Some((sport, dport, payload)),
    })
}

/// The DHCP message type (option 53) of a BOOTP payload with the magic cookie.
fn dhcp_message_type(bootp: &[u8]) -> Option<u8> {
    dhcp_option(bootp, OPT_MESSAGE_TYPE).and_then(|v| v.first().copied())
}

/// The value of option `code` in a BOOTP payload (first occurrence; no overload).
fn dhcp_option(bootp: &[u8], code: u8) -> Option<&[u8]> {
    if bootp.get(BOOTP_FIXED..BOOTP_FIXED + 4)? != MAGIC_COOKIE {
        return None;
    }
    let mut at = BOOTP_FIXED + 4;
    loop {
        match *bootp.get(at)? {
            0 => at += 1,
            255 => return None,
            c => {
                let len = usize::from(*bootp.get(at + 1)?);
                let value = bootp.get(at + 2..at + 2 + len)?;
                if c == code {
                    return Some(value);
                }
                at += 2 + len;
            }
        }
    }
}

/// Checks a frame a client sent from `src`; see the module contract.
pub fn inspect(frame: &[u8], src: Mac) -> Result<Claim, GuardDrop> {
    let Some(ethertype) = u16_at(frame, 12) else {
        return Ok(Claim::NOTHING);
    };
    match ethertype {
        ETHERTYPE_IPV4 => inspect_ipv4(frame, src),
        ETHERTYPE_ARP => inspect_arp(frame, src),
        t if TAGGED.contains(&t) => Err(GuardDrop::VlanTagged),
        _ => Ok(Claim::NOTHING),
    }
}

fn inspect_ipv4(frame: &[u8], src: Mac) -> Result<Claim, GuardDrop> {
    let ip = parse_ipv4(frame).ok_or(GuardDrop::IpSpoof)?;
    let mut gives_up_lease = false;
    if let Some((sport, dport, bootp)) = ip.udp {
        if sport == DHCP_SERVER_PORT {
            return Err(GuardDrop::RogueDhcp);
        }
        if sport == DHCP_CLIENT_PORT && dport == DHCP_SERVER_PORT {
            // htype 1, hlen 6 and chaddr = the frame's source: a lease is one guest's, and
            // the server keys leases by (htype, chaddr).
            let ethernet = bootp.get(1..3) == Some(&[1, 6][..]);
            if !ethernet || mac_at(bootp, 28) != Some(src) {
                return Err(GuardDrop::DhcpChaddr);
            }
            gives_up_lease = matches!(dhcp_message_type(bootp), Some(DHCPRELEASE | DHCPDECLINE));
            if ip.source == [0; 4] {
                return Ok(Claim {
                    address: None,
                    gives_up_lease,
                });
            }
        }
    }
    Ok(Claim {
        address: Some((ip.source, GuardDrop::IpSpoof)),
        gives_up_lease,
    })
}

fn inspect_arp(frame: &[u8], src: Mac) -> Result<Claim, GuardDrop> {
    let arp = frame
        .get(ETH_HEADER..ETH_HEADER + 28)
        .ok_or(GuardDrop::ArpSpoof)?;
    // Ethernet (1), IPv4 (0x0800), hardware length 6, protocol length 4.
    if arp[0..6] != [0, 1, 8, 0, 6, 4] || mac_at(arp, 8) != Some(src) {
        return Err(GuardDrop::ArpSpoof);
    }
    let sender = ip_at(arp, 14).ok_or(GuardDrop::ArpSpoof)?;
    if sender == [0; 4] {
        // An ARP probe (RFC 5227): claims nothing.
        return Ok(Claim::NOTHING);
    }
    Ok(Claim {
        address: Some((sender, GuardDrop::ArpSpoof)),
        gives_up_lease: false,
    })
}

/// Reads a frame from the uplink for a DHCP reply that makes or ends a binding.
pub fn snoop(frame: &[u8]) -> Option<Snoop> {
    if u16_at(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let (sport, _, bootp) = parse_ipv4(frame)?.udp?;
    // BOOTREPLY for an Ethernet address.
    if sport != DHCP_SERVER_PORT || bootp.get(0..3)? != [2, 1, 6] {
        return None;
    }
    let mac = mac_at(bootp, 28)?;
    match dhcp_message_type(bootp)? {
        DHCPACK => {
            let ip = ip_at(bootp, 16)?;
            // An ACK to a DHCPINFORM carries no address.
            if ip == [0; 4] {
                return None;
            }
            let lease_secs = dhcp_option(bootp, OPT_LEASE_TIME)
                .and_then(|v| v.get(0..4))
                .map_or(u32::MAX, |v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            Some(Snoop::Ack {
                mac,
                ip,
                lease_secs,
            })
        }
        DHCPNAK => Some(Snoop::Nak { mac }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

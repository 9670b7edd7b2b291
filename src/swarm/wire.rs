//! Frames a synthetic guest sends and understands: DHCP (RFC 2131) over UDP/IPv4, ARP (RFC
//! 826) and ICMP echo. Pure functions over byte slices.

use std::net::Ipv4Addr;

use crate::testkit::{icmp_echo, udp_frame};

/// DHCP message types (RFC 2132 §9.6).
pub const DHCPDISCOVER: u8 = 1;
pub const DHCPOFFER: u8 = 2;
pub const DHCPREQUEST: u8 = 3;
pub const DHCPACK: u8 = 5;
pub const DHCPNAK: u8 = 6;

const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// A DHCPDISCOVER (no `requested`) or DHCPREQUEST (with requested address and server id),
/// broadcast from 0.0.0.0:68 to 255.255.255.255:67.
pub fn dhcp_message(
    mac: [u8; 6],
    xid: u32,
    kind: u8,
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut bootp = vec![0u8; 236];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    // No broadcast flag: the server answers to our MAC, so the switch sends each reply to this
    // guest alone instead of flooding it to every guest (udhcpc does the same).
    bootp[28..34].copy_from_slice(&mac);
    bootp.extend_from_slice(&MAGIC);
    bootp.extend_from_slice(&[53, 1, kind]);
    if let Some((ip, server)) = requested {
        bootp.extend_from_slice(&[50, 4]);
        bootp.extend_from_slice(&ip.octets());
        bootp.extend_from_slice(&[54, 4]);
        bootp.extend_from_slice(&server.octets());
    }
    bootp.extend_from_slice(&[55, 2, 1, 3, 255]);
    let mut frame = udp_frame(
        [0xFF; 6],
        mac,
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        42 + bootp.len(),
    );
    frame[42..].copy_from_slice(&bootp);
    frame
}

/// A DHCP reply for `xid`: (message type, offered address, server identifier).
pub fn dhcp_reply(frame: &[u8], xid: u32) -> Option<(u8, Ipv4Addr, Ipv4Addr)> {
    if frame.len() < 42 + 240
        || frame[12..14] != [0x08, 0x00]
        || frame[23] != 17
        || frame[36..38] != 68u16.to_be_bytes()
    {
        return None;
    }
    let bootp = &frame[42..];
    if bootp[0] != 2 || bootp[4..8] != xid.to_be_bytes() || bootp[236..240] != MAGIC {
        return None;
    }
    let yiaddr = Ipv4Addr::new(bootp[16], bootp[17], bootp[18], bootp[19]);
    let (mut kind, mut server) = (0, Ipv4Addr::UNSPECIFIED);
    let mut opts = &bootp[240..];
    while let [code, rest @ ..] = opts {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match (code, value) {
                    (53, [k]) => kind = *k,
                    (54, [a, b, c, d]) => server = Ipv4Addr::new(*a, *b, *c, *d),
                    _ => {}
                }
                opts = &rest[usize::from(len)..];
            }
        }
    }
    (kind != 0).then_some((kind, yiaddr, server))
}

/// An ARP request (op 1) or reply (op 2).
pub fn arp(
    op: u16,
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_mac: [u8; 6],
    dst_ip: Ipv4Addr,
) -> Vec<u8> {
    let eth_dst = if op == 1 { [0xFF; 6] } else { dst_mac };
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&dst_ip.octets());
    f
}

/// An ARP packet: (op, sender MAC, sender IP, target IP).
pub fn parse_arp(frame: &[u8]) -> Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x06] {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[22..28]);
    Some((
        u16::from_be_bytes([frame[20], frame[21]]),
        mac,
        Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]),
        Ipv4Addr::new(frame[38], frame[39], frame[40], frame[41]),
    ))
}

/// If `frame` is an ICMP echo request to `ip`, the reply to send.
pub fn echo_reply_to(frame: &[u8], my_mac: [u8; 6], ip: Ipv4Addr) -> Option<Vec<u8>> {
    if frame.len() < 42
        || frame[12..14] != [0x08, 0x00]
        || frame[23] != 1
        || frame[30..34] != ip.octets()
        || frame[34] != 8
    {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0F) * 4;
    let icmp = frame.get(14 + ihl..)?;
    if icmp.len() < 8 {
        return None;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    let src_ip = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    let mut stamp = [0u8; 8];
    if icmp.len() >= 16 {
        stamp.copy_from_slice(&icmp[8..16]);
    }
    let mut reply = icmp_echo(
        src_mac,
        my_mac,
        ip,
        src_ip,
        id,
        seq,
        u64::from_be_bytes(stamp),
    );
    // Turn the request we built into a reply: type 0, checksum adjusted by +8 << 8.
    reply[34] = 0;
    let sum = u16::from_be_bytes([reply[36], reply[37]]);
    let (adjusted, carry) = sum.overflowing_add(0x0800);
    reply[36..38].copy_from_slice(&(adjusted + u16::from(carry)).to_be_bytes());
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_round_trip_through_a_reply() {
        let mac = [2, 0x53, 0, 0, 0, 1];
        let req = dhcp_message(
            mac,
            0xABCD,
            DHCPREQUEST,
            Some(("10.86.0.20".parse().unwrap(), "10.86.0.1".parse().unwrap())),
        );
        // Make it look like a server's reply.
        let mut reply = req.clone();
        reply[36..38].copy_from_slice(&68u16.to_be_bytes());
        reply[42] = 2;
        reply[42 + 16..42 + 20].copy_from_slice(&[10, 86, 0, 20]);
        let opts = 42 + 240;
        reply[opts + 2] = DHCPACK;
        assert_eq!(
            dhcp_reply(&reply, 0xABCD),
            Some((
                DHCPACK,
                "10.86.0.20".parse().unwrap(),
                "10.86.0.1".parse().unwrap()
            ))
        );
        assert_eq!(dhcp_reply(&reply, 0xABCE), None);
    }

    #[test]
    fn arp_and_echo() {
        let me = [2, 0x53, 0, 0, 0, 1];
        let ip: Ipv4Addr = "10.86.0.20".parse().unwrap();
        let req = arp(1, [9; 6], "10.86.0.1".parse().unwrap(), [0; 6], ip);
        assert_eq!(
            parse_arp(&req),
            Some((1, [9; 6], "10.86.0.1".parse().unwrap(), ip))
        );
        let ping = icmp_echo(me, [9; 6], "10.86.0.1".parse().unwrap(), ip, 1, 2, 3);
        let reply = echo_reply_to(&ping, me, ip).expect("reply");
        assert_eq!(crate::testkit::icmp_echo_reply(&reply), Some((1, 2, 3)));
    }
}

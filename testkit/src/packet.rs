//! Frames the test tools send and understand: Ethernet, IPv4, UDP, ICMP echo, ARP (RFC 826)
//! and DHCP (RFC 2131), built and parsed with `smoltcp::wire` (named fields, checked lengths,
//! real checksums) instead of byte offsets.
//!
//! Why smoltcp: it has every protocol the tools need, DHCP included (etherparse has no DHCP,
//! pnet_packet builds with macros the relay would not otherwise compile), its views are
//! zero-copy over `&[u8]`, so the swarm parses millions of frames per second with it.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

pub use smoltcp::wire::DhcpMessageType as DhcpKind;

/// A MAC address.
pub type Mac = [u8; 6];
/// The broadcast address.
pub const BROADCAST: Mac = [0xFF; 6];
/// Ethernet header, IPv4 header without options, UDP header.
const ETHERNET_HEADER: usize = 14;
const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
/// Where the UDP payload starts in the frames [`udp_frame`] builds.
pub const UDP_PAYLOAD_OFFSET: usize = ETHERNET_HEADER + IPV4_HEADER + UDP_HEADER;
/// EtherType of [`eth`] frames: local experimental (IEEE 802).
const ETHERTYPE_EXPERIMENTAL: u16 = 0x88B5;

/// Checksums filled in when building.
fn emit_caps() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// Checksums not verified when parsing (frames from a TAP may carry offloaded ones).
fn parse_caps() -> ChecksumCapabilities {
    ChecksumCapabilities::ignored()
}

/// An Ethernet frame with `payload_len` bytes of payload that `fill` writes.
fn ethernet(
    dst: Mac,
    src: Mac,
    ethertype: EthernetProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET_HEADER + payload_len];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(src),
        dst_addr: EthernetAddress(dst),
        ethertype,
    }
    .emit(&mut frame);
    fill(frame.payload_mut());
    buf
}

/// An Ethernet/IPv4 frame whose IP payload (`payload_len` bytes) `fill` writes.
fn ipv4(
    macs: (Mac, Mac),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    ethernet(
        macs.0,
        macs.1,
        EthernetProtocol::Ipv4,
        IPV4_HEADER + payload_len,
        |ip| {
            let mut packet = Ipv4Packet::new_unchecked(ip);
            Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: protocol,
                payload_len,
                hop_limit: 64,
            }
            .emit(&mut packet, &emit_caps());
            fill(packet.payload_mut());
        },
    )
}

/// A UDP datagram carrying `payload`, with its checksum.
pub fn udp_datagram(
    dst_mac: Mac,
    src_mac: Mac,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    udp_with(
        dst_mac,
        src_mac,
        src,
        dst,
        payload.len(),
        &emit_caps(),
        |p| p.copy_from_slice(payload),
    )
}

fn udp_with(
    dst_mac: Mac,
    src_mac: Mac,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload_len: usize,
    caps: &ChecksumCapabilities,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let udp_len = UDP_HEADER + payload_len;
    ipv4(
        (dst_mac, src_mac),
        src.0,
        dst.0,
        IpProtocol::Udp,
        udp_len,
        |udp| {
            let mut packet = UdpPacket::new_unchecked(udp);
            UdpRepr {
                src_port: src.1,
                dst_port: dst.1,
            }
            .emit(
                &mut packet,
                &IpAddress::Ipv4(src.0),
                &IpAddress::Ipv4(dst.0),
                payload_len,
                fill,
                caps,
            );
        },
    )
}

/// An Ethernet/IPv4/UDP frame of exactly `frame_len` bytes (≥ 42), payload filled with 0x5A.
/// Its UDP checksum is 0 (none, RFC 768), so a payload may be stamped after building.
pub fn udp_frame(
    dst_mac: Mac,
    src_mac: Mac,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    frame_len: usize,
) -> Vec<u8> {
    let payload_len = frame_len.max(UDP_PAYLOAD_OFFSET) - UDP_PAYLOAD_OFFSET;
    udp_with(
        dst_mac,
        src_mac,
        src,
        dst,
        payload_len,
        &ChecksumCapabilities::ignored(),
        |p| p.fill(0x5A),
    )
}

/// The UDP payload of `frame` if it is a UDP datagram to `ip`.
pub fn udp_payload_to(frame: &[u8], ip: Ipv4Addr) -> Option<&[u8]> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if packet.next_header() != IpProtocol::Udp || packet.dst_addr() != ip {
        return None;
    }
    Some(UdpPacket::new_checked(packet.payload()).ok()?.payload())
}

/// An ICMP echo request with identifier `id`, sequence `seq` and 8 bytes of `stamp`.
pub fn icmp_echo(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    stamp: u64,
) -> Vec<u8> {
    icmp_echo_data(
        (dst_mac, src_mac),
        src,
        dst,
        (id, seq),
        &stamp.to_be_bytes(),
    )
}

/// An ICMP echo request with identifier and sequence `(id, seq)` carrying `data`.
pub fn icmp_echo_data(
    macs: (Mac, Mac),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (id, seq): (u16, u16),
    data: &[u8],
) -> Vec<u8> {
    icmp(
        macs,
        src,
        dst,
        Icmpv4Repr::EchoRequest {
            ident: id,
            seq_no: seq,
            data,
        },
    )
}

fn icmp(macs: (Mac, Mac), src: Ipv4Addr, dst: Ipv4Addr, repr: Icmpv4Repr<'_>) -> Vec<u8> {
    ipv4(macs, src, dst, IpProtocol::Icmp, repr.buffer_len(), |p| {
        repr.emit(&mut Icmpv4Packet::new_unchecked(p), &emit_caps())
    })
}

/// The IPv4 packet in `frame`, if it is one.
fn ipv4_of(frame: &[u8]) -> Option<(Ipv4Repr, &[u8])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let repr = Ipv4Repr::parse(&packet, &parse_caps()).ok()?;
    Some((repr, packet.payload()))
}

/// The ICMP message in `frame`, with its IPv4 header.
fn icmp_of(frame: &[u8]) -> Option<(Ipv4Repr, Icmpv4Repr<'_>)> {
    let (ip, payload) = ipv4_of(frame)?;
    if ip.next_header != IpProtocol::Icmp {
        return None;
    }
    let packet = Icmpv4Packet::new_checked(payload).ok()?;
    Some((ip, Icmpv4Repr::parse(&packet, &parse_caps()).ok()?))
}

/// The first 8 data bytes of an echo as a number (0 when shorter).
fn stamp_of(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|d| d.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// If `frame` is an ICMP echo reply, its (identifier, sequence, stamp).
pub fn icmp_echo_reply(frame: &[u8]) -> Option<(u16, u16, u64)> {
    match icmp_of(frame)?.1 {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        } => Some((ident, seq_no, stamp_of(data))),
        _ => None,
    }
}

/// If `frame` is an ICMP echo request to `ip`, the reply to send (same data).
pub fn echo_reply_to(frame: &[u8], my_mac: Mac, ip: Ipv4Addr) -> Option<Vec<u8>> {
    let (
        header,
        Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        },
    ) = icmp_of(frame)?
    else {
        return None;
    };
    if header.dst_addr != ip {
        return None;
    }
    let peer_mac = EthernetFrame::new_checked(frame).ok()?.src_addr().0;
    Some(icmp(
        (peer_mac, my_mac),
        ip,
        header.src_addr,
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        },
    ))
}

/// An ARP request (`op` 1, broadcast) or reply (`op` 2, to `dst_mac`).
pub fn arp(op: u16, src_mac: Mac, src_ip: Ipv4Addr, dst_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
    let operation = ArpOperation::from(op);
    let eth_dst = if operation == ArpOperation::Request {
        BROADCAST
    } else {
        dst_mac
    };
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: EthernetAddress(src_mac),
        source_protocol_addr: src_ip,
        target_hardware_addr: EthernetAddress(dst_mac),
        target_protocol_addr: dst_ip,
    };
    ethernet(
        eth_dst,
        src_mac,
        EthernetProtocol::Arp,
        repr.buffer_len(),
        |p| repr.emit(&mut ArpPacket::new_unchecked(p)),
    )
}

/// An ARP packet: (op, sender MAC, sender IP, target IP).
pub fn parse_arp(frame: &[u8]) -> Option<(u16, Mac, Ipv4Addr, Ipv4Addr)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => Some((
            u16::from(operation),
            source_hardware_addr.0,
            source_protocol_addr,
            target_protocol_addr,
        )),
        _ => None,
    }
}

/// A DHCPDISCOVER (no `requested`) or DHCPREQUEST (with the requested address and the
/// server identifier), broadcast from 0.0.0.0:68 to 255.255.255.255:67. No broadcast flag:
/// the server answers to our MAC, so the relay's switch sends each reply to this guest alone
/// instead of flooding it (udhcpc does the same).
pub fn dhcp_message(
    mac: Mac,
    xid: u32,
    kind: DhcpKind,
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let msg = Dhcp {
        kind,
        xid,
        chaddr: mac,
        requested,
        ..Dhcp::default()
    };
    msg.frame(
        (BROADCAST, mac),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
    )
}

/// Any DHCP message, for tests that forge them: the fields tapwire's guard reads.
#[derive(Debug, Clone, Copy)]
pub struct Dhcp {
    pub kind: DhcpKind,
    pub xid: u32,
    /// Client hardware address.
    pub chaddr: Mac,
    /// Client address (`ciaddr`, for renewals and releases) and offered address (`yiaddr`).
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    /// Requested address and server identifier (DHCPREQUEST).
    pub requested: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: Option<u32>,
}

impl Default for Dhcp {
    fn default() -> Self {
        Dhcp {
            kind: DhcpKind::Discover,
            xid: 1,
            chaddr: [0; 6],
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
            lease_secs: None,
        }
    }
}

impl Dhcp {
    /// The message in a frame between `macs` (dst, src) and `ips` (src, dst): from port 68
    /// to 67 for a client's message, from 67 to 68 for a server's (offer, ack, nak).
    pub fn frame(&self, macs: (Mac, Mac), ips: (Ipv4Addr, Ipv4Addr)) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: self.kind,
            transaction_id: self.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(self.chaddr),
            client_ip: self.ciaddr,
            your_ip: self.yiaddr,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: self.requested.map(|(ip, _)| ip),
            client_identifier: None,
            server_identifier: self.requested.map(|(_, server)| server),
            parameter_request_list: Some(&[1, 3]),
            dns_servers: None,
            max_size: None,
            lease_duration: self.lease_secs,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut bootp = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut bootp[..]))
            .expect("the buffer is sized for the message");
        let server = matches!(self.kind, DhcpKind::Offer | DhcpKind::Ack | DhcpKind::Nak);
        let (sport, dport) = if server { (67, 68) } else { (68, 67) };
        udp_datagram(macs.0, macs.1, (ips.0, sport), (ips.1, dport), &bootp)
    }
}

/// A DHCP reply for `xid`: (message type, offered address, server identifier).
pub fn dhcp_reply(frame: &[u8], xid: u32) -> Option<(DhcpKind, Ipv4Addr, Ipv4Addr)> {
    let (ip, payload) = ipv4_of(frame)?;
    if ip.next_header != IpProtocol::Udp {
        return None;
    }
    let udp = UdpPacket::new_checked(payload).ok()?;
    if udp.dst_port() != 68 {
        return None;
    }
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    let is_reply = matches!(
        repr.message_type,
        DhcpMessageType::Offer | DhcpMessageType::Ack | DhcpMessageType::Nak
    );
    (is_reply && repr.transaction_id == xid).then(|| {
        (
            repr.message_type,
            repr.your_ip,
            repr.server_identifier.unwrap_or(Ipv4Addr::UNSPECIFIED),
        )
    })
}

/// A frame from `src` to `dst` with the local experimental EtherType and `payload`.
pub fn eth(dst: Mac, src: Mac, payload: &[u8]) -> Vec<u8> {
    ethernet(
        dst,
        src,
        EthernetProtocol::from(ETHERTYPE_EXPERIMENTAL),
        payload.len(),
        |p| p.copy_from_slice(payload),
    )
}

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes it.
pub fn format_mac(mac: Mac) -> String {
    tapwire::switch::Mac(mac).to_string()
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [2, 0x53, 0, 0, 0, 1];
    const GW_MAC: Mac = [9; 6];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_frames_have_their_size_valid_headers_and_a_stampable_payload() {
        let f = udp_frame(GW_MAC, ME, (ip("10.0.0.2"), 5), (ip("10.0.0.1"), 9), 1514);
        assert_eq!(f.len(), 1514);
        let (header, _) = ipv4_of(&f).unwrap();
        let packet = Ipv4Packet::new_checked(&f[ETHERNET_HEADER..]).unwrap();
        assert!(packet.verify_checksum(), "IPv4 header checksum");
        assert_eq!(header.dst_addr, ip("10.0.0.1"));
        assert_eq!(
            &f[UDP_PAYLOAD_OFFSET - 2..UDP_PAYLOAD_OFFSET],
            &[0, 0],
            "no UDP checksum"
        );
        let payload = udp_payload_to(&f, ip("10.0.0.1")).unwrap();
        assert_eq!(payload.len(), 1514 - UDP_PAYLOAD_OFFSET);
        assert!(payload.iter().all(|&b| b == 0x5A));
        assert!(udp_payload_to(&f, ip("10.0.0.3")).is_none());
    }

    #[test]
    fn echo_request_reply_round_trip() {
        let ping = icmp_echo(ME, GW_MAC, ip("10.86.0.1"), ip("10.86.0.20"), 7, 9, 42);
        assert_eq!(ping.len(), 50);
        let reply = echo_reply_to(&ping, ME, ip("10.86.0.20")).expect("reply");
        assert_eq!(icmp_echo_reply(&reply), Some((7, 9, 42)));
        assert_eq!(&reply[..6], &GW_MAC, "sent back to the pinger");
        let packet = Ipv4Packet::new_checked(&reply[ETHERNET_HEADER..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(packet.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert!(echo_reply_to(&ping, ME, ip("10.86.0.21")).is_none());
        assert!(icmp_echo_reply(&ping).is_none(), "a request is not a reply");
    }

    #[test]
    fn arp_round_trip() {
        let req = arp(1, GW_MAC, ip("10.86.0.1"), [0; 6], ip("10.86.0.20"));
        assert_eq!(&req[..6], &BROADCAST);
        assert_eq!(
            parse_arp(&req),
            Some((1, GW_MAC, ip("10.86.0.1"), ip("10.86.0.20")))
        );
        let reply = arp(2, ME, ip("10.86.0.20"), GW_MAC, ip("10.86.0.1"));
        assert_eq!(&reply[..6], &GW_MAC);
        assert_eq!(parse_arp(&reply).map(|a| a.0), Some(2));
    }

    #[test]
    fn dhcp_request_parses_and_a_reply_is_recognised() {
        let req = dhcp_message(
            ME,
            0xABCD,
            DhcpKind::Request,
            Some((ip("10.86.0.20"), ip("10.86.0.1"))),
        );
        let (_, payload) = ipv4_of(&req).unwrap();
        let udp = UdpPacket::new_checked(payload).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (68, 67));
        let packet = DhcpPacket::new_checked(udp.payload()).unwrap();
        let parsed = DhcpRepr::parse(&packet).unwrap();
        assert_eq!(parsed.requested_ip, Some(ip("10.86.0.20")));
        assert_eq!(parsed.server_identifier, Some(ip("10.86.0.1")));
        assert!(
            dhcp_reply(&req, 0xABCD).is_none(),
            "a request is not a reply"
        );

        // A server's ACK to our MAC.
        let ack = DhcpRepr {
            message_type: DhcpKind::Ack,
            your_ip: ip("10.86.0.20"),
            server_identifier: Some(ip("10.86.0.1")),
            requested_ip: None,
            parameter_request_list: None,
            ..parsed
        };
        let mut bootp = vec![0u8; ack.buffer_len()];
        ack.emit(&mut DhcpPacket::new_unchecked(&mut bootp[..]))
            .unwrap();
        let frame = udp_datagram(
            ME,
            GW_MAC,
            (ip("10.86.0.1"), 67),
            (ip("10.86.0.20"), 68),
            &bootp,
        );
        assert_eq!(
            dhcp_reply(&frame, 0xABCD),
            Some((DhcpKind::Ack, ip("10.86.0.20"), ip("10.86.0.1")))
        );
        assert_eq!(dhcp_reply(&frame, 0xABCE), None);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(format_mac([2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
        let f = eth(BROADCAST, ME, b"hello");
        assert_eq!(&f[12..14], &[0x88, 0xB5]);
        assert_eq!(&f[14..], b"hello");
    }
}

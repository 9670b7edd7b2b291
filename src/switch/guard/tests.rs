use std::net::Ipv4Addr;

use proptest::prelude::*;
use tapwire_testkit::packet::{self, Dhcp, DhcpKind, BROADCAST};

use super::{inspect, snoop, Claim, GuardDrop, Snoop};
use crate::switch::Mac;

const GUEST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const SERVER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 86, 0, 50);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 86, 0, 1);

fn claims(frame: &[u8]) -> Result<Claim, GuardDrop> {
    inspect(frame, Mac(GUEST))
}

fn address(ip: Ipv4Addr, drop: GuardDrop) -> Result<Claim, GuardDrop> {
    Ok(Claim {
        address: Some((ip.octets(), drop)),
        gives_up_lease: false,
    })
}

#[test]
fn ipv4_claims_its_source_address() {
    let ping = packet::icmp_echo(SERVER, GUEST, GUEST_IP, GATEWAY, 1, 1, 0);
    assert_eq!(claims(&ping), address(GUEST_IP, GuardDrop::IpSpoof));
    let udp = packet::udp_frame(SERVER, GUEST, (GATEWAY, 5000), (GUEST_IP, 53), 100);
    assert_eq!(claims(&udp), address(GATEWAY, GuardDrop::IpSpoof));
}

#[test]
fn truncated_or_odd_ipv4_headers_are_refused() {
    let ping = packet::icmp_echo(SERVER, GUEST, GUEST_IP, GATEWAY, 1, 1, 0);
    assert_eq!(claims(&ping[..30]), Err(GuardDrop::IpSpoof));
    let mut v6_in_v4 = ping.clone();
    v6_in_v4[14] = 0x65;
    assert_eq!(claims(&v6_in_v4), Err(GuardDrop::IpSpoof));
    let mut short_ihl = ping.clone();
    short_ihl[14] = 0x44;
    assert_eq!(claims(&short_ihl), Err(GuardDrop::IpSpoof));
    // A UDP first fragment cut inside its UDP header cannot be checked for port 67.
    let udp = packet::udp_frame(SERVER, GUEST, (GUEST_IP, 67), (GATEWAY, 68), 60);
    assert_eq!(claims(&udp[..38]), Err(GuardDrop::IpSpoof));
}

#[test]
fn later_fragments_claim_their_source_only() {
    let mut udp = packet::udp_frame(SERVER, GUEST, (GUEST_IP, 67), (GATEWAY, 68), 100);
    // Fragment offset 8 (64 bytes): the ports are not in this fragment.
    udp[14 + 6] = 0;
    udp[14 + 7] = 8;
    assert_eq!(claims(&udp), address(GUEST_IP, GuardDrop::IpSpoof));
}

#[test]
fn dhcp_server_messages_from_clients_are_rogue() {
    for kind in [DhcpKind::Offer, DhcpKind::Ack, DhcpKind::Nak] {
        let m = Dhcp {
            kind,
            chaddr: OTHER,
            yiaddr: GUEST_IP,
            ..Dhcp::default()
        };
        let frame = m.frame((OTHER, GUEST), (GUEST_IP, Ipv4Addr::BROADCAST));
        assert_eq!(claims(&frame), Err(GuardDrop::RogueDhcp), "{kind:?}");
    }
    // Any UDP from source port 67, DHCP or not.
    let udp = packet::udp_frame(BROADCAST, GUEST, (GUEST_IP, 67), (GATEWAY, 9), 80);
    assert_eq!(claims(&udp), Err(GuardDrop::RogueDhcp));
}

#[test]
fn dhcp_requests_must_name_the_sender() {
    let discover = packet::dhcp_message(GUEST, 7, DhcpKind::Discover, None);
    assert_eq!(claims(&discover), Ok(Claim::NOTHING));
    let request = packet::dhcp_message(GUEST, 7, DhcpKind::Request, Some((GUEST_IP, GATEWAY)));
    assert_eq!(claims(&request), Ok(Claim::NOTHING));
    let foreign = Dhcp {
        chaddr: OTHER,
        ..Dhcp::default()
    }
    .frame(
        (BROADCAST, GUEST),
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
    );
    assert_eq!(claims(&foreign), Err(GuardDrop::DhcpChaddr));
    // Another hardware type with the same six bytes would be another lease.
    let mut other_htype = discover.clone();
    other_htype[42 + 1] = 6;
    assert_eq!(claims(&other_htype), Err(GuardDrop::DhcpChaddr));
    // Cut before chaddr.
    assert_eq!(claims(&discover[..42 + 30]), Err(GuardDrop::DhcpChaddr));
}

#[test]
fn renewals_claim_their_address_and_releases_give_it_up() {
    let renew = Dhcp {
        kind: DhcpKind::Request,
        chaddr: GUEST,
        ciaddr: GUEST_IP,
        ..Dhcp::default()
    };
    let frame = renew.frame((SERVER, GUEST), (GUEST_IP, GATEWAY));
    assert_eq!(claims(&frame), address(GUEST_IP, GuardDrop::IpSpoof));
    for kind in [DhcpKind::Release, DhcpKind::Decline] {
        let m = Dhcp { kind, ..renew };
        let from_bound = m.frame((SERVER, GUEST), (GUEST_IP, GATEWAY));
        let c = claims(&from_bound).expect("passes");
        assert!(c.gives_up_lease, "{kind:?}");
        assert_eq!(c.address, Some((GUEST_IP.octets(), GuardDrop::IpSpoof)));
        let from_zero = m.frame((SERVER, GUEST), (Ipv4Addr::UNSPECIFIED, GATEWAY));
        assert_eq!(
            claims(&from_zero),
            Ok(Claim {
                address: None,
                gives_up_lease: true
            })
        );
    }
}

#[test]
fn arp_claims_its_sender_address() {
    let request = packet::arp(1, GUEST, GUEST_IP, [0; 6], GATEWAY);
    assert_eq!(claims(&request), address(GUEST_IP, GuardDrop::ArpSpoof));
    let gateway_claim = packet::arp(2, GUEST, GATEWAY, OTHER, GUEST_IP);
    assert_eq!(
        claims(&gateway_claim),
        address(GATEWAY, GuardDrop::ArpSpoof)
    );
    let probe = packet::arp(1, GUEST, Ipv4Addr::UNSPECIFIED, [0; 6], GUEST_IP);
    assert_eq!(claims(&probe), Ok(Claim::NOTHING));
    // The sender hardware address must be the frame's source.
    let mut forged = request.clone();
    forged[22..28].copy_from_slice(&OTHER);
    assert_eq!(claims(&forged), Err(GuardDrop::ArpSpoof));
    assert_eq!(claims(&request[..40]), Err(GuardDrop::ArpSpoof));
    let mut not_ipv4 = request.clone();
    not_ipv4[16] = 0x86;
    assert_eq!(claims(&not_ipv4), Err(GuardDrop::ArpSpoof));
}

#[test]
fn tags_are_refused_and_other_ethertypes_pass() {
    let mut tagged = packet::icmp_echo(SERVER, GUEST, GUEST_IP, GATEWAY, 1, 1, 0);
    for tpid in [[0x81, 0x00], [0x88, 0xA8], [0x91, 0x00]] {
        tagged[12..14].copy_from_slice(&tpid);
        assert_eq!(claims(&tagged), Err(GuardDrop::VlanTagged));
    }
    let mut ipv6 = tagged.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xDD]);
    assert_eq!(claims(&ipv6), Ok(Claim::NOTHING));
    assert_eq!(claims(&packet::eth(OTHER, GUEST, b"x")), Ok(Claim::NOTHING));
    assert_eq!(claims(&[0u8; 12]), Ok(Claim::NOTHING));
}

fn server_reply(kind: DhcpKind, lease_secs: Option<u32>, yiaddr: Ipv4Addr) -> Vec<u8> {
    Dhcp {
        kind,
        chaddr: GUEST,
        yiaddr,
        lease_secs,
        ..Dhcp::default()
    }
    .frame((GUEST, SERVER), (GATEWAY, yiaddr))
}

#[test]
fn acks_bind_and_naks_unbind() {
    assert_eq!(
        snoop(&server_reply(DhcpKind::Ack, Some(3600), GUEST_IP)),
        Some(Snoop::Ack {
            mac: Mac(GUEST),
            ip: GUEST_IP.octets(),
            lease_secs: 3600
        })
    );
    assert_eq!(
        snoop(&server_reply(DhcpKind::Ack, None, GUEST_IP)),
        Some(Snoop::Ack {
            mac: Mac(GUEST),
            ip: GUEST_IP.octets(),
            lease_secs: u32::MAX
        })
    );
    assert_eq!(
        snoop(&server_reply(DhcpKind::Nak, None, Ipv4Addr::UNSPECIFIED)),
        Some(Snoop::Nak { mac: Mac(GUEST) })
    );
    // Offers bind nothing, nor does an ACK to DHCPINFORM (no address).
    assert_eq!(
        snoop(&server_reply(DhcpKind::Offer, Some(60), GUEST_IP)),
        None
    );
    assert_eq!(
        snoop(&server_reply(
            DhcpKind::Ack,
            Some(60),
            Ipv4Addr::UNSPECIFIED
        )),
        None
    );
    // A client's request is not a reply.
    assert_eq!(
        snoop(&packet::dhcp_message(GUEST, 1, DhcpKind::Request, None)),
        None
    );
    let ack = server_reply(DhcpKind::Ack, Some(3600), GUEST_IP);
    for cut in 0..ack.len() {
        // Cut anywhere before the options end: nothing, or the same binding.
        if let Some(s) = snoop(&ack[..cut]) {
            assert!(matches!(s, Snoop::Ack { .. }), "{cut}");
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..600), src in any::<[u8; 6]>()) {
        let _ = inspect(&bytes, Mac(src));
        let _ = snoop(&bytes);
    }

    #[test]
    fn mutated_dhcp_is_safe(at in 0usize..400, value in any::<u8>()) {
        let mut ack = server_reply(DhcpKind::Ack, Some(3600), GUEST_IP);
        if let Some(b) = ack.get_mut(at) {
            *b = value;
        }
        let _ = snoop(&ack);
        let _ = inspect(&ack, Mac(GUEST));
    }
}

//! Anti-spoofing (on by default): a client may use only the IPv4 address bound to its MAC by
//! the DHCP ACK it received (or by --reserve); rogue DHCP servers, DHCP requests for other
//! hardware addresses, ARP for the gateway's or another guest's address, VLAN tags and group
//! source MACs are dropped and counted, while the victims keep working.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tapwire_testkit::packet::{self, Dhcp, DhcpKind};

use super::harness::*;
use super::GATEWAY;

const GW: Ipv4Addr = Ipv4Addr::new(10, 86, 0, 1);

/// An echo request from `ip` (as `src`) to the gateway, and whether its reply came back.
fn pings_gateway(
    client: &mut WsClient,
    src: [u8; 6],
    ip: Ipv4Addr,
    gw_mac: [u8; 6],
    seq: u16,
) -> bool {
    let stamp = 0x5157_0000 + u64::from(seq);
    client.send_frame(&packet::icmp_echo(gw_mac, src, ip, GW, 0x77, seq, stamp));
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(f) = client.recv_frame(deadline.saturating_duration_since(Instant::now())) {
        if packet::icmp_echo_reply(&f).is_some_and(|(_, s, st)| s == seq && st == stamp) {
            return true;
        }
    }
    false
}

#[test]
fn spoofers_are_dropped_while_their_victims_keep_working() {
    if skip_unless_root("spoofers_are_dropped_while_their_victims_keep_working") {
        return;
    }
    let relay = Relay::start(&[]);
    let gw_mac = relay.tap_mac();
    let mut victim = relay.guest(0);
    let victim_ip: Ipv4Addr = victim.dhcp(&relay.dir.0).parse().expect("lease");
    let attacker_mac = mac(0x66);
    let mut attacker = relay.client(None);
    let own_ip = lease(&mut attacker, attacker_mac);
    assert!(
        pings_gateway(&mut attacker, attacker_mac, own_ip, gw_mac, 1),
        "its own leased address works"
    );

    // Another guest's address, and an address nobody holds.
    for (seq, ip) in [(2, victim_ip), (3, Ipv4Addr::new(10, 86, 0, 250))] {
        assert!(
            !pings_gateway(&mut attacker, attacker_mac, ip, gw_mac, seq),
            "{ip} passed"
        );
    }
    // ARP claiming the gateway (to the victim and gratuitous) and the victim's address.
    let victim_mac = packet::parse_mac(&exec_ok(
        &victim.ns,
        &["cat", "/sys/class/net/eth0/address"],
    ))
    .expect("victim MAC");
    attacker.send_frame(&packet::arp(2, attacker_mac, GW, victim_mac, victim_ip));
    attacker.send_frame(&packet::arp(1, attacker_mac, GW, [0; 6], GW));
    attacker.send_frame(&packet::arp(2, attacker_mac, victim_ip, gw_mac, GW));
    // A rogue DHCP server answering a booting guest, a DHCP request for a hardware address
    // the sender does not have (pool exhaustion), a VLAN-tagged frame, a group source MAC.
    let booting_mac = mac(0x67);
    let rogue = Dhcp {
        kind: DhcpKind::Offer,
        chaddr: booting_mac,
        yiaddr: Ipv4Addr::new(10, 86, 0, 99),
        ..Dhcp::default()
    };
    for kind in [DhcpKind::Offer, DhcpKind::Ack] {
        attacker.send_frame(
            &Dhcp { kind, ..rogue }.frame((BROADCAST, attacker_mac), (own_ip, Ipv4Addr::BROADCAST)),
        );
    }
    for n in 0..50u8 {
        let foreign = Dhcp {
            chaddr: [0x02, 0, 0, 0, 0x55, n],
            xid: u32::from(n),
            ..Dhcp::default()
        };
        attacker.send_frame(&foreign.frame(
            (BROADCAST, attacker_mac),
            (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
        ));
    }
    let mut tagged = packet::icmp_echo(gw_mac, attacker_mac, victim_ip, GW, 1, 1, 1);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    attacker.send_frame(&tagged);
    attacker.send_frame(&packet::icmp_echo(
        gw_mac,
        [0x01, 0, 0x5e, 0, 0, 1],
        victim_ip,
        GW,
        1,
        1,
        1,
    ));

    // A guest booting now still gets its lease from dnsmasq, with the real gateway.
    let mut booting = relay.client(None);
    let booted = lease(&mut booting, booting_mac);
    assert_ne!(booted, Ipv4Addr::new(10, 86, 0, 99));
    assert!(pings_gateway(&mut booting, booting_mac, booted, gw_mac, 9));
    // The victim still reaches the gateway, whose neighbour entry for it is its own MAC, and
    // its own entry for the gateway is the TAP's.
    assert_eq!(victim.ping(GATEWAY, 3), 3);
    let neigh = exec_ok(&victim.ns, &["ip", "neigh", "show", GATEWAY]);
    assert!(
        neigh.contains(&packet::format_mac(gw_mac)),
        "victim's gateway entry: {neigh}"
    );
    let host_neigh = exec_ok(&relay.ns, &["ip", "neigh", "show", &victim_ip.to_string()]);
    assert!(
        host_neigh.contains(&packet::format_mac(victim_mac)),
        "host's entry: {host_neigh}"
    );
    let leases =
        std::fs::read_to_string(relay.instance_dir().join("dnsmasq.leases")).unwrap_or_default();
    assert!(
        !leases.contains("02:00:00:00:55"),
        "a lease for a forged chaddr: {leases}"
    );

    let c = relay.counters();
    for (reason, exactly) in [
        ("ip_spoof", 2),
        ("arp_spoof", 3),
        ("rogue_dhcp", 2),
        ("dhcp_chaddr", 50),
        ("vlan_tagged", 1),
        ("bad_source_mac", 1),
    ] {
        assert_eq!(c.drops(reason), exactly, "{reason}");
    }
    // The victim's, the attacker's and the booting guest's leases.
    assert_eq!(c.get("tapwire_dhcp_bindings_total"), 3);
}

#[test]
fn a_guest_that_reconnects_keeps_its_address_and_releases_end_it() {
    if skip_unless_root("a_guest_that_reconnects_keeps_its_address_and_releases_end_it") {
        return;
    }
    let relay = Relay::start(&[]);
    let gw_mac = relay.tap_mac();
    let m = mac(0x70);
    let ip = {
        let mut first = relay.client(None);
        let ip = lease(&mut first, m);
        assert!(pings_gateway(&mut first, m, ip, gw_mac, 1));
        ip
    };
    // v86 keeps its MAC and lease across a reconnect: no new DHCP exchange. The relay may not
    // have seen the old connection close when the first frame of the new one arrives (the MAC
    // is then still the old port's, and the frame is dropped as a conflict), so the guest
    // retries, as its stack would.
    let mut again = relay.client(None);
    let answered = (2..7).any(|seq| pings_gateway(&mut again, m, ip, gw_mac, seq));
    assert!(answered, "reconnected guest lost its address");
    assert_eq!(relay.counters().drops("ip_spoof"), 0, "dropped as unbound");
    let release = Dhcp {
        kind: DhcpKind::Release,
        chaddr: m,
        ciaddr: ip,
        ..Dhcp::default()
    };
    again.send_frame(&release.frame((gw_mac, m), (ip, GW)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.counters().get("tapwire_dhcp_unbindings_total") == 0 {
        assert!(Instant::now() < deadline, "release not seen");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !pings_gateway(&mut again, m, ip, gw_mac, 9),
        "released address still usable"
    );
    assert_eq!(
        relay.counters().drops("ip_spoof"),
        1,
        "the ping after the release"
    );
}

#[test]
fn reservations_bind_without_dhcp_and_allow_spoofing_turns_the_checks_off() {
    if skip_unless_root("reservations_bind_without_dhcp_and_allow_spoofing_turns_the_checks_off") {
        return;
    }
    let reserved = mac(0x71);
    let relay = Relay::start(&["--reserve", "00:22:15:00:00:71=10.86.0.7"]);
    let gw_mac = relay.tap_mac();
    let ip = Ipv4Addr::new(10, 86, 0, 7);
    relay.static_neighbour("10.86.0.7", reserved);
    let mut c = relay.client(None);
    assert!(
        pings_gateway(&mut c, reserved, ip, gw_mac, 1),
        "reserved address without DHCP"
    );
    // dnsmasq leases the reservation to that MAC.
    assert_eq!(lease(&mut c, reserved), ip);
    drop(relay);

    let open = Relay::start(&["--allow-spoofing"]);
    let gw_mac = open.tap_mac();
    let m = mac(0x72);
    open.static_neighbour("10.86.0.240", m);
    let mut c = open.client(None);
    assert!(pings_gateway(
        &mut c,
        m,
        Ipv4Addr::new(10, 86, 0, 240),
        gw_mac,
        1
    ));
    assert_eq!(open.counters().drops("ip_spoof"), 0);
}

//! Who may send from a MAC: not from the gateway's, and a reconnecting guest gets its own back
//! from a silent old connection.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// A client sending from the TAP's own MAC (the gateway's) or from 00:00:00:00:00:00 is
/// dropped and counted; the gateway stays reachable for every other guest.
#[test]
fn a_client_cannot_claim_the_gateway_mac() {
    if skip_unless_root("a_client_cannot_claim_the_gateway_mac") {
        return;
    }
    let relay = Relay::start(&[]);
    let guest = relay.leased_guest(0);
    let gw = relay.tap_mac();
    // Flush the guest's neighbour entry so it must ask for the gateway again.
    exec_ok(&guest.ns, &["ip", "neigh", "flush", "dev", "eth0"]);
    let mut attacker = relay.client(None);
    for _ in 0..3 {
        attacker.send_frame(&eth(BROADCAST, gw, b"I am the gateway now"));
        attacker.send_frame(&eth(BROADCAST, [0; 6], b"from nowhere"));
    }
    assert_eq!(
        guest.ping(GATEWAY, 3),
        3,
        "the gateway is still the gateway"
    );
    let c = relay.counters();
    assert_eq!(c.drops("uplink_mac"), 3, "{c:?}");
    assert_eq!(c.drops("bad_source_mac"), 3, "{c:?}");
    let got = attacker.recv(Duration::from_millis(200));
    assert!(
        !matches!(got, Got::Close(_) | Got::Eof),
        "the client is kept: {got:?}"
    );
}

/// A guest reconnecting with its MAC while its old connection is silent (half-open) gets the
/// MAC within the challenge bound; an owner that answers the challenge ping keeps it.
#[test]
fn a_reconnecting_guest_takes_its_mac_from_a_silent_old_connection() {
    if skip_unless_root("a_reconnecting_guest_takes_its_mac_from_a_silent_old_connection") {
        return;
    }
    let relay = Relay::start(&[]);
    let mut rx = relay.client(None);
    let rx_mac = mac(0x81);
    rx.send_frame(&eth(BROADCAST, rx_mac, b"learn me"));
    let guest_mac = mac(0x82);
    // On both cores: the old and new connections of one guest may land on different cores.
    for (round, (old_core, new_core)) in [(0, 1), (1, 1)].into_iter().enumerate() {
        let guest_mac = [
            guest_mac[0],
            guest_mac[1],
            guest_mac[2],
            guest_mac[3],
            guest_mac[4],
            round as u8,
        ];
        let mut old = relay.client(Some(source_port_for_core(old_core)));
        old.send_frame(&eth(BROADCAST, guest_mac, b"old connection"));
        std::thread::sleep(Duration::from_millis(100));
        let mut new = relay.client(Some(source_port_for_core(new_core)));
        let started = Instant::now();
        let mut got_through = None;
        while started.elapsed() < Duration::from_secs(8) {
            new.send_frame(&eth(rx_mac, guest_mac, b"new connection"));
            if let Some(f) = rx.recv_frame(Duration::from_millis(200)) {
                if f[6..12] == guest_mac && &f[14..] == b"new connection" {
                    got_through = Some(started.elapsed());
                    break;
                }
            }
        }
        let took = got_through.unwrap_or_else(|| panic!("round {round}: the MAC never moved"));
        assert!(
            took < Duration::from_secs(5),
            "round {round}: took {took:?}"
        );
        // The silent old connection was shut down.
        let got = std::iter::from_fn(|| Some(old.recv(Duration::from_secs(2))))
            .find(|g| !matches!(g, Got::Ping(_) | Got::Frame(_)))
            .unwrap();
        assert!(
            matches!(got, Got::Eof | Got::Close(_)),
            "round {round}: {got:?}"
        );
    }
    let c = relay.counters();
    assert_eq!(c.drops("mac_takeover"), 2, "{c:?}");

    // A live owner answers the ping and keeps its MAC.
    let owner_mac = mac(0x83);
    let mut owner = relay.client(None);
    owner.send_frame(&eth(BROADCAST, owner_mac, b"owner"));
    std::thread::sleep(Duration::from_millis(100));
    let mut other = relay.client(None);
    other.send_frame(&eth(rx_mac, owner_mac, b"impostor"));
    // Past the 3 s bound, answering every ping.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        if let Got::Ping(payload) = owner.recv(Duration::from_millis(200)) {
            owner.send_raw(&tapwire_testkit::ws::client_frame(0xA, &payload));
        }
    }
    other.send_frame(&eth(rx_mac, owner_mac, b"impostor"));
    owner.send_frame(&eth(rx_mac, owner_mac, b"still mine"));
    let f = std::iter::from_fn(|| rx.recv_frame(Duration::from_secs(2)))
        .find(|f| f[6..12] == owner_mac && &f[14..] != b"owner")
        .expect("the owner's frame");
    assert_eq!(&f[14..], b"still mine");
    let c = relay.counters();
    assert_eq!(c.drops("mac_takeover"), 2, "the live owner was kept: {c:?}");
}

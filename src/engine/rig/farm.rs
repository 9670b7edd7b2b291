//! A host of a farm in the engine: the client's address behind a trusted proxy, refusals
//! while draining, and a guest that moved here from another host keeping its address.

use std::net::Ipv4Addr;

use super::*;
use crate::counters::DropReason;

/// The clients of the default network as the admin API asks for them.
fn reports(rig: &mut Rig) -> Vec<super::super::network::ClientReport> {
    let (reply, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for core in 0..rig.workers.len() {
        rig.shared.command(
            core,
            CoreCmd::Report {
                net: NetId::DEFAULT,
                reply: reply.clone(),
            },
        );
    }
    drop(reply);
    rig.step();
    let mut all = Vec::new();
    while let Ok(list) = answers.try_recv() {
        all.extend(list);
    }
    all
}

/// An upgrade request for `/` carrying `X-Forwarded-For: list`.
fn forwarded_request(list: &str) -> Vec<u8> {
    let plain = String::from_utf8(upgrade_request("/")).expect("ASCII");
    plain
        .replacen("\r\n", &format!("\r\nX-Forwarded-For: {list}\r\n"), 1)
        .into_bytes()
}

#[test]
fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let mut rig = Rig::new(1, &["--trusted-proxy", "127.0.0.0/8"]);
    let mut c = rig.connect(0);
    c.send_raw(&forwarded_request("203.0.113.1, 198.51.100.7"));
    rig.until("the upgrade is answered", |_| c.upgraded());
    let listed = reports(&mut rig);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(
        listed[0].remote.map(|a| a.ip()),
        Some("127.0.0.1".parse().unwrap())
    );
    drop(rig);
    // The control: no trusted proxy, the same header: the peer is the client.
    let mut rig = Rig::new(1, &[]);
    let mut c = rig.connect(0);
    c.send_raw(&forwarded_request("198.51.100.7"));
    rig.until("the upgrade is answered", |_| c.upgraded());
    let listed = reports(&mut rig);
    assert_eq!(listed[0].address, Some("127.0.0.1".parse().unwrap()));
}

#[test]
fn a_draining_host_refuses_upgrades_with_503_until_the_drain_ends() {
    let mut rig = Rig::new(2, &[]);
    let mut before = rig.client(0);
    rig.shared
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = rig.connect(1);
    refused.send_raw(&upgrade_request("/"));
    rig.until("the upgrade is refused", |_| refused.refusal().is_some());
    let text = refused.refusal().unwrap();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert_eq!(rig.drops(DropReason::Draining), 1);
    // A client from before stays until it is closed.
    before.send_frame(&eth([0xff; 6], mac(1), &[1; 20]));
    rig.host_expect(0, "a frame of a client from before the drain");
    rig.shared
        .draining
        .store(false, std::sync::atomic::Ordering::Relaxed);
    rig.client(1);
}

/// An IPv4 frame (UDP to the gateway's port 9) from `ip` at `src`.
fn from_address(src: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    tapwire_testkit::packet::udp_frame(
        [0x02, 0, 0, 0, 0, 0xfe],
        src,
        (ip, 4000),
        (Ipv4Addr::new(10, 86, 0, 1), 9),
        60,
    )
}

#[test]
fn a_guest_from_another_hosts_slice_keeps_its_address_and_one_from_ours_does_not() {
    // Host 0 of 3 leases 10.86.0.10-10.86.85.91 of 10.86.0.10-10.86.255.254.
    let mut rig = Rig::new(1, &["--hosts", "3", "--host-index", "0"]);
    let mut moved = rig.client(0);
    moved.send_frame(&from_address(mac(1), Ipv4Addr::new(10, 86, 170, 200)));
    rig.host_expect(0, "the moved guest's frame");
    assert_eq!(rig.count(|c| c.roam_bindings.get()), 1);
    // Its next frames pass as an ordinary binding's; another address of it does not.
    moved.send_frame(&from_address(mac(1), Ipv4Addr::new(10, 86, 170, 200)));
    rig.host_expect(0, "its next frame");
    moved.send_frame(&from_address(mac(1), Ipv4Addr::new(10, 86, 170, 201)));
    rig.until("a second address is dropped", |rig| {
        rig.drops(DropReason::IpSpoof) == 1
    });
    // An address of this host's own slice is only DHCP's to give.
    let mut other = rig.client(0);
    other.send_frame(&from_address(mac(2), Ipv4Addr::new(10, 86, 0, 50)));
    rig.until("an address of our slice is dropped", |rig| {
        rig.drops(DropReason::IpSpoof) == 2
    });
    // Nor does one MAC take an address another MAC holds.
    other.send_frame(&from_address(mac(3), Ipv4Addr::new(10, 86, 170, 200)));
    rig.until("a held address is dropped", |rig| {
        rig.drops(DropReason::IpSpoof) == 3
    });
    assert_eq!(rig.count(|c| c.roam_bindings.get()), 1);
    assert!(rig.host_recv(0).is_none(), "nothing else reached the host");
}

//! Host protection (on by default): from the TAP, the host answers only DHCP, DNS and ping at
//! the gateway and the ports `--allow-host-port` opens, whichever of its addresses a guest
//! aims at (IPv4 or IPv6 link-local); rules in the instance's own nftables table.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use super::harness::*;
use super::GATEWAY;

const TCP_PORT: u16 = 7001;
const UDP_PORT: u16 = 7002;

/// A TCP service on every address of the relay's namespace (IPv4 and IPv6) that greets each
/// connection, and a UDP socket on 0.0.0.0; both live until the namespace goes.
fn services(relay: &Relay) -> UdpSocket {
    let tcp = relay
        .ns
        .enter(|| TcpListener::bind(("::", TCP_PORT)).expect("tcp"));
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let _ = s.write_all(b"hello\n");
        }
    });
    let udp = relay
        .ns
        .enter(|| UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("udp"));
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    udp
}

/// Whether the guest gets the greeting from `addr` (IPv4, or IPv6 with its `%eth0` scope).
fn greeted(guest: &Guest, addr: &str) -> bool {
    probe(&guest.ns, addr, TCP_PORT, false).contains("hello")
}

/// How many of 3 datagrams from the guest reach the UDP socket.
fn datagrams(guest: &Guest, udp: &UdpSocket) -> usize {
    let script = format!("for i in 1 2 3; do echo x > /dev/udp/{GATEWAY}/{UDP_PORT}; done");
    exec_ok(&guest.ns, &["bash", "-c", &script]);
    let mut buf = [0u8; 64];
    let mut n = 0;
    while udp.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Gives the guest a link-local IPv6 address (the DHCP script flushes eth0's addresses).
fn guest_link_local(guest: &Guest) {
    exec_ok(
        &guest.ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fe80::86/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
}

/// The host's IPv6 link-local address on the TAP, once duplicate address detection is done
/// (up to 10 s), with the guest's interface: `fe80::…%eth0`.
fn link_local(relay: &Relay) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = exec_ok(
            &relay.ns,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", &relay.tap, "scope", "link",
            ],
        );
        if let Some(addr) = out.split_whitespace().nth(3) {
            if !out.contains("tentative") {
                return format!("{}%eth0", addr.split('/').next().unwrap_or(addr));
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no IPv6 link-local address on the TAP: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_services_are_closed_to_guests_unless_allowed() {
    if skip_unless_root("host_services_are_closed_to_guests_unless_allowed") {
        return;
    }
    let relay = Relay::start(&[]);
    let tables = exec_ok(&relay.ns, &["nft", "list", "tables"]);
    assert!(
        tables.contains(&format!("inet tapwire_{}", relay.tap)),
        "{tables}"
    );
    exec_ok(
        &relay.ns,
        &["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"],
    );
    let udp = services(&relay);
    let guest = relay.leased_guest(0);
    // What the host does answer: DHCP (the lease above), ping and DNS at the gateway.
    assert_eq!(guest.ping(GATEWAY, 2), 2);
    let dns = guest
        .ns
        .cmd(&["timeout", "5", "busybox", "nslookup", "localhost", GATEWAY])
        .output()
        .expect("nslookup");
    let dns =
        String::from_utf8_lossy(&dns.stdout).into_owned() + &String::from_utf8_lossy(&dns.stderr);
    assert!(dns.contains("127.0.0.1"), "dnsmasq did not answer: {dns}");
    // A service on 0.0.0.0/[::], at the gateway address, at another local address reached
    // through the gateway, and at the TAP's IPv6 link-local address: all closed.
    assert!(!greeted(&guest, GATEWAY), "TCP at the gateway");
    exec_ok(
        &guest.ns,
        &["ip", "route", "add", "192.0.2.1", "via", GATEWAY],
    );
    assert!(!greeted(&guest, "192.0.2.1"), "TCP at another host address");
    guest_link_local(&guest);
    let ll = link_local(&relay);
    assert!(!greeted(&guest, &ll), "TCP at {ll}");
    assert_eq!(datagrams(&guest, &udp), 0, "UDP at the gateway");
    // The host still reaches the guest, and the guest's replies come back.
    let ip = guest.ip.clone().expect("lease");
    let out = exec_ok(&relay.ns, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &ip]);
    assert!(out.contains(" 2 received"), "{out}");
    drop(guest);
    drop(relay);

    let relay = Relay::start(&[
        "--allow-host-port",
        &format!("tcp:{TCP_PORT},udp:{UDP_PORT}"),
    ]);
    assert!(relay
        .proc()
        .log_text()
        .contains(&format!("tcp:{TCP_PORT}, udp:{UDP_PORT}")));
    exec_ok(
        &relay.ns,
        &["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"],
    );
    let udp = services(&relay);
    let guest = relay.leased_guest(1);
    assert!(greeted(&guest, GATEWAY), "allowed TCP port");
    // The positive control of the closed case above: the same route to the same address
    // greets once the port is allowed.
    exec_ok(
        &guest.ns,
        &["ip", "route", "add", "192.0.2.1", "via", GATEWAY],
    );
    assert!(
        greeted(&guest, "192.0.2.1"),
        "allowed TCP port at another host address"
    );
    guest_link_local(&guest);
    let ll = link_local(&relay);
    assert!(greeted(&guest, &ll), "allowed TCP port at {ll}");
    assert_eq!(datagrams(&guest, &udp), 3, "allowed UDP port");
    drop(guest);
    drop(relay);

    // `all`: no host protection, and (without --nat, and without networks, whose separation
    // is the table's) no table at all.
    let relay = Relay::start(&["--allow-host-port", "all", "--max-networks", "0"]);
    let _udp = services(&relay);
    let tables = exec_ok(&relay.ns, &["nft", "list", "tables"]);
    assert!(!tables.contains("tapwire_"), "{tables}");
    let guest = relay.leased_guest(0);
    assert!(greeted(&guest, GATEWAY));
}

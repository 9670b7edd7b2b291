//! A farm of three tapwire hosts behind HAProxy (Debian's `haproxy`, with the shipped
//! `examples/haproxy.cfg`): each host in a namespace of its own on an underlay bridge, the load
//! balancer in another. A network's clients reach one host (consistent hashing of `/n/NAME`);
//! a killed or drained host's guests come back through the balancer on the other hosts with
//! their addresses, their gateway's MAC and their peers; `X-Forwarded-For` is believed from
//! the balancer only.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tapwire_testkit::packet;

use super::farm_rig::*;
use super::harness::*;

/// 30 networks of two guests each through the balancer: where each network is.
fn thirty_networks(farm: &Farm) -> (Vec<String>, Vec<[FarmGuest; 2]>, Vec<usize>) {
    let names = network_names(30);
    let mut guests = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let a = join(farm, name, guest_mac(k, 1));
        let b = join(farm, name, guest_mac(k, 2));
        guests.push([a, b]);
    }
    let homes: Vec<usize> = names.iter().map(|n| farm.host_of(n)).collect();
    for (i, name) in HOST_NAMES.iter().enumerate() {
        assert!(
            homes.contains(&i),
            "no network on {name}: {homes:?} (the hash spreads 30 networks over all three)"
        );
    }
    for (k, name) in names.iter().enumerate() {
        let held = farm.held(homes[k]);
        let (_, clients, _) = held.iter().find(|(n, _, _)| n == name).expect("held");
        assert_eq!(*clients, 2, "network {name}");
    }
    (names, guests, homes)
}

/// Guest `a` pings guest `b` of its network: the request reaches `b` (which answers it, as
/// every guest here answers echo requests to its address) and the reply reaches `a`.
fn peers_ping(pair: &mut [FarmGuest; 2], seq: u16) -> bool {
    let [a, b] = pair;
    let stamp = 0xfa24_0000 + u64::from(seq);
    a.client.send_frame(&packet::icmp_echo(
        b.mac, a.mac, a.ip, b.ip, 0x47, seq, stamp,
    ));
    let request = std::cell::RefCell::new(None);
    let (b_mac, b_ip) = (b.mac, b.ip);
    if !b.await_frame(Duration::from_secs(2), |f| {
        let reply = packet::echo_reply_to(f, b_mac, b_ip);
        let found = reply.is_some();
        *request.borrow_mut() = reply;
        found
    }) {
        return false;
    }
    if let Some(reply) = request.into_inner() {
        b.client.send_frame(&reply);
    }
    a.await_frame(Duration::from_secs(2), |f| {
        packet::icmp_echo_reply(f).is_some_and(|(_, s, st)| s == seq && st == stamp)
    })
}

#[test]
fn a_networks_guests_meet_on_one_host_and_x_forwarded_for_is_believed_from_the_balancer_only() {
    let test =
        "a_networks_guests_meet_on_one_host_and_x_forwarded_for_is_believed_from_the_balancer_only";
    if skip_unless_haproxy(test) {
        return;
    }
    let farm = Farm::start();
    let (names, mut guests, homes) = thirty_networks(&farm);
    for (k, pair) in guests.iter_mut().enumerate() {
        assert!(
            peers_ping(pair, k as u16),
            "network {} ({:?})",
            names[k],
            homes[k]
        );
    }
    // Through the balancer, the client's own address (the balancer's X-Forwarded-For).
    let (_, v) = farm.api(
        homes[0],
        "GET",
        &format!("/api/networks/{}/clients", names[0]),
    );
    let first = &v["clients"][0];
    assert_eq!(
        first["address"], "127.0.0.1",
        "the client's own address: {v}"
    );
    assert!(
        first["remote"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{LB_IP}:")),
        "the balancer is the peer: {v}"
    );
    // The header from anyone else is not believed: host B's namespace connects to host A.
    let forged = format!(
        "GET /n/forged HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
        tapwire_testkit::ws::new_key()
    );
    let target = format!("{}:8086", HOST_IPS[0]);
    let _held = farm.hosts[1]
        .ns
        .enter(move || -> std::io::Result<std::net::TcpStream> {
            let mut s = std::net::TcpStream::connect(target)?;
            s.write_all(forged.as_bytes())?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte)? == 1 {
                head.push(byte[0]);
            }
            Ok(s)
        })
        .expect("direct connection");
    let deadline = Instant::now() + Duration::from_secs(5);
    let address = loop {
        let (_, v) = farm.api(0, "GET", "/api/networks/forged/clients");
        if let Some(a) = v["clients"][0]["address"].as_str() {
            break a.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the direct client is not listed: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        address, HOST_IPS[1],
        "a forged X-Forwarded-For was believed"
    );
}

/// Kills or drains host `victim`, then moves its guests: each connects again through the
/// balancer, lands on another host, keeps its address (its renewal is ACKed there) and pings
/// its gateway and its peer. Networks of the other hosts stay where they were.
fn guests_move_off(
    farm: &Farm,
    names: &[String],
    guests: &mut [[FarmGuest; 2]],
    homes: &[usize],
    victim: usize,
) {
    let moved: Vec<usize> = (0..names.len()).filter(|k| homes[*k] == victim).collect();
    assert!(!moved.is_empty());
    for &k in &moved {
        for g in guests[k].iter_mut() {
            g.client = farm.connect_within(&names[k], Duration::from_secs(20));
        }
        for g in guests[k].iter_mut() {
            assert_eq!(
                g.renew(),
                Some(g.ip),
                "network {}: the renewal on the new host",
                names[k]
            );
            assert!(
                (1..=5).any(|seq| g.ping(g.gateway_mac, g.gateway, seq)),
                "network {}: the gateway, at the MAC it had",
                names[k]
            );
        }
        assert!(
            peers_ping(&mut guests[k], 100),
            "network {}: the peer",
            names[k]
        );
        let now = farm.host_of(&names[k]);
        assert_ne!(now, victim);
        let tap = farm
            .held(now)
            .into_iter()
            .find(|(n, _, _)| *n == names[k])
            .map(|(_, _, tap)| tap)
            .expect("tap");
        assert_eq!(
            farm.gateway_mac(now, &tap),
            guests[k][0].gateway_mac,
            "network {}: the gateway's MAC on the new host",
            names[k]
        );
    }
    for (k, name) in names.iter().enumerate() {
        if homes[k] != victim {
            assert_eq!(
                farm.host_of(name),
                homes[k],
                "network {name} moved though its host stayed"
            );
        }
    }
    let roamed: u64 = (0..3)
        .filter(|i| *i != victim && !farm.killed(*i))
        .map(|i| farm.hosts[i].counters().get("tapwire_roam_bindings_total"))
        .sum();
    assert_eq!(
        roamed,
        2 * moved.len() as u64,
        "each moved guest bound once"
    );
}

#[test]
fn a_killed_hosts_guests_come_back_on_the_others_with_their_addresses() {
    let test = "a_killed_hosts_guests_come_back_on_the_others_with_their_addresses";
    if skip_unless_haproxy(test) {
        return;
    }
    let mut farm = Farm::start();
    let (names, mut guests, homes) = thirty_networks(&farm);
    let victim = 1;
    farm.hosts[victim].relay.expect_exit();
    farm.hosts[victim].proc().signal(libc::SIGKILL);
    farm.hosts[victim]
        .proc_mut()
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    farm.wait_for_servers(&["UP", "DOWN", "UP"], Duration::from_secs(10));
    guests_move_off(&farm, &names, &mut guests, &homes, victim);
    // Nothing of tapwire is left in the killed host's namespace after cleanup.
    let (ok, report) = farm.hosts[victim].cleanup();
    assert!(ok, "{report}");
    let links = exec_ok(&farm.hosts[victim].ns, &["ip", "-o", "link", "show"]);
    assert!(
        links
            .lines()
            .all(|l| l.contains(" lo:") || l.contains(" ul0@")),
        "left: {links}"
    );
    let tables = exec_ok(&farm.hosts[victim].ns, &["nft", "list", "tables"]);
    assert!(!tables.contains("tapwire"), "left: {tables}");
}

#[test]
fn a_drained_hosts_guests_move_the_same_way() {
    let test = "a_drained_hosts_guests_move_the_same_way";
    if skip_unless_haproxy(test) {
        return;
    }
    let farm = Farm::start();
    let (names, mut guests, homes) = thirty_networks(&farm);
    let victim = 0;
    let (status, v) = farm.api(victim, "POST", "/api/drain?over=2s");
    assert!(status.contains("200"), "{status} {v}");
    let on_victim = homes.iter().filter(|h| **h == victim).count() as u64;
    assert_eq!(v["clients"], 2 * on_victim, "{v}");
    farm.wait_for_servers(&["DOWN", "UP", "UP"], Duration::from_secs(10));
    // Every client of the drained host is closed with 1001 within the period (and a margin).
    let moved: Vec<usize> = (0..names.len()).filter(|k| homes[*k] == victim).collect();
    for &k in &moved {
        for g in guests[k].iter_mut() {
            assert_eq!(g.client.expect_close(Duration::from_secs(10)), Some(1001));
        }
    }
    guests_move_off(&farm, &names, &mut guests, &homes, victim);
    let c = farm.hosts[victim].counters();
    assert_eq!(c.get("tapwire_clients_open"), 0);
    // Ending the drain takes upgrades again.
    let (status, _) = farm.api(victim, "DELETE", "/api/drain");
    assert!(status.contains("200"));
    farm.wait_for_servers(&["UP", "UP", "UP"], Duration::from_secs(10));
}

#[test]
fn one_host_of_three_leases_from_its_slice_and_renews_any_address_of_the_range() {
    let test = "one_host_of_three_leases_from_its_slice_and_renews_any_address_of_the_range";
    if skip_unless_root(test) {
        return;
    }
    let relay = Relay::start(&["--hosts", "3", "--host-index", "0"]);
    assert!(
        relay.proc().log_text().contains(
            "farm: index 0 of 3 hosts; the default network leases 10.86.0.10-10.86.85.91 of 10.86.0.10-10.86.255.254"
        ),
        "the start line: {}",
        relay.proc().log_text()
    );
    let gateway: std::net::Ipv4Addr = "10.86.0.1".parse().unwrap();
    let gateway_mac = relay.tap_mac();
    // A new lease comes from this host's slice.
    let mut first = relay.client(None);
    let leased = lease(&mut first, mac(0x31));
    let slice: (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
        "10.86.0.10".parse().unwrap(),
        "10.86.85.91".parse().unwrap(),
    );
    assert!(
        (slice.0..=slice.1).contains(&leased),
        "{leased} outside {slice:?}"
    );
    // A guest that another host leased 10.86.170.200 to renews it here: bound on its first
    // frame, ACKed by dnsmasq, and it reaches the gateway.
    let mut moved = FarmGuest {
        client: relay.client(None),
        mac: mac(0x32),
        ip: "10.86.170.200".parse().unwrap(),
        gateway,
        gateway_mac,
    };
    assert_eq!(moved.renew(), Some(moved.ip), "the renewal is ACKed");
    assert!((1..=3).any(|seq| moved.ping(gateway_mac, gateway, seq)));
    // An address of this host's own slice that nobody leased is not anyone's to take.
    let mut stray = FarmGuest {
        client: relay.client(None),
        mac: mac(0x33),
        ip: "10.86.0.77".parse().unwrap(),
        gateway,
        gateway_mac,
    };
    assert!(!stray.ping(gateway_mac, gateway, 1));
    let c = relay.counters();
    assert_eq!(c.get("tapwire_roam_bindings_total"), 1);
    // The first guest's lease and the moved guest's renewal.
    assert_eq!(c.get("tapwire_dhcp_bindings_total"), 2);
    assert_eq!(c.drops("ip_spoof"), 1, "the stray ping");
}

//! Bad input and exhaustion: every bad-input row, `--max-clients`, pings and pong timeouts,
//! running out of file descriptors.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

fn http_status(relay: &Relay, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = relay.raw();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = tapwire_testkit::ws::client_frame(first & 0x0F, payload);
    f[0] = first;
    f
}

#[test]
fn every_bad_input_gets_its_reaction_while_another_guest_pings() {
    if skip_unless_root("every_bad_input_gets_its_reaction_while_another_guest_pings") {
        return;
    }
    let relay = Relay::start(&["--handshake-timeout", "1s"]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let mut pinger = guest.ping_background(GATEWAY, 50, relay.dir.0.join("ping.log"));

    // HTTP rows.
    assert!(http_status(&relay, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 426"));
    assert!(http_status(
        &relay,
        b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    .starts_with("HTTP/1.1 400"));
    assert!(http_status(&relay, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(http_status(&relay, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").starts_with("HTTP/1.1 426"));
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    assert!(http_status(&relay, &big).starts_with("HTTP/1.1 431"));
    {
        use std::io::{Read, Write};
        let mut s = relay.raw();
        s.write_all(b"GET / HTTP/1.1\r\n").expect("send");
        let started = Instant::now();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "unfinished handshake closed after the deadline"
        );
    }

    // Frame rows that close the connection.
    let close_cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked",
            vec![0x82, 0x0E, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            1002,
        ),
        ("rsv bits", masked(0xC2, &[0u8; 20]), 1002),
        ("reserved opcode", masked(0x83, &[0u8; 20]), 1002),
        (
            "non-minimal length",
            vec![0x82, 0xFE, 0x00, 0x14, 1, 2, 3, 4],
            1002,
        ),
        ("text", masked(0x81, b"hello"), 1003),
        (
            "too large",
            vec![0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0x86, 0xA0, 1, 2, 3, 4],
            1009,
        ),
        (
            "control too long",
            vec![0x89, 0xFE, 0x00, 0x7E, 1, 2, 3, 4],
            1002,
        ),
        ("fragmented control", masked(0x09, b"x"), 1002),
    ];
    for (name, bytes, code) in close_cases {
        let mut c = relay.client(None);
        c.send_raw(&bytes);
        assert_eq!(c.expect_close(Duration::from_secs(5)), Some(code), "{name}");
    }
    {
        let mut c = relay.client(None);
        c.send_raw(&masked(0x02, &[0u8; 1000]));
        c.send_raw(&masked(0x80, &[0u8; 1000]));
        assert_eq!(
            c.expect_close(Duration::from_secs(5)),
            Some(1009),
            "fragmented over the maximum"
        );
    }

    // Rows that keep the connection.
    let mut a = relay.client(Some(source_port_for_core(0)));
    let mut b = relay.client(Some(source_port_for_core(1)));
    a.send_frame(&[1, 2, 3, 4, 5]);
    a.send_raw(&masked(0x89, b"still-there?"));
    assert_eq!(
        a.recv(Duration::from_secs(5)),
        Got::Pong(b"still-there?".to_vec()),
        "runt dropped, client kept, ping answered"
    );
    let whole = eth(BROADCAST, mac(20), b"reassembled-fragments");
    a.send_raw(&masked(0x02, &whole[..10]));
    a.send_raw(&masked(0x89, b"between"));
    a.send_raw(&masked(0x00, &whole[10..20]));
    a.send_raw(&masked(0x80, &whole[20..]));
    assert_eq!(
        wait_for_tag(&mut b, b"reassembled-fragments", Duration::from_secs(5)),
        Some(whole),
        "fragmented message reassembled"
    );
    // MAC conflict: b claims a's MAC; its frame is dropped.
    b.send_frame(&eth(BROADCAST, mac(20), b"stolen-mac"));
    assert_eq!(
        wait_for_tag(&mut a, b"stolen-mac", Duration::from_secs(1)),
        None,
        "conflicting source MAC dropped"
    );
    // Close: echoed, then the socket closes.
    a.send_raw(&masked(0x88, &1000u16.to_be_bytes()));
    assert_eq!(a.expect_close(Duration::from_secs(5)), Some(1000));

    pinger
        .wait_exit(Duration::from_secs(40))
        .expect("ping finished");
    let (sent, got) = ping_result(&pinger.log_text());
    assert_eq!(
        (sent, got),
        (50, 50),
        "the other guest kept pinging:\n{}",
        pinger.log_text()
    );
    let c = relay.counters();
    for (reason, at_least) in [
        ("not_websocket", 4),
        ("head_too_large", 1),
        ("handshake_timeout", 1),
        ("protocol_violation", 4),
        ("text_message", 1),
        ("frame_too_large", 1),
        ("fragmented_too_large", 1),
        ("control_frame_invalid", 2),
        ("runt_frame", 1),
        ("mac_conflict", 1),
    ] {
        assert!(
            c.drops(reason) >= at_least,
            "{reason}: {} < {at_least}",
            c.drops(reason)
        );
    }
    assert!(c.get("tapwire_pings_answered_total") >= 2);
}

#[test]
fn connections_beyond_max_clients_get_503() {
    if skip_unless_root("connections_beyond_max_clients_get_503") {
        return;
    }
    let relay = Relay::start(&["--max-clients", "2"]);
    let _a = relay.client(None);
    let _b = relay.client(None);
    let status = http_status(&relay, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(relay.counters().drops("too_many_clients"), 1);
}

#[test]
fn idle_clients_are_pinged_and_silent_ones_closed() {
    if skip_unless_root("idle_clients_are_pinged_and_silent_ones_closed") {
        return;
    }
    let relay = Relay::start(&["--ping-interval", "1s"]);
    let mut silent = relay.client(None);
    let deadline = Instant::now() + Duration::from_secs(5);
    let pinged = loop {
        match silent.recv(deadline.saturating_duration_since(Instant::now())) {
            Got::Frame(_) => continue, // the host's own multicast (IPv6 neighbour discovery)
            other => break other,
        }
    };
    assert!(
        matches!(pinged, Got::Ping(_)),
        "idle client pinged, got {pinged:?}"
    );
    assert_eq!(
        silent.expect_close(Duration::from_secs(5)),
        Some(1001),
        "no pong: closed with 1001"
    );
    // A client that answers stays open for several intervals.
    let mut alive = relay.client(None);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match alive.recv(until.saturating_duration_since(Instant::now())) {
            Got::Ping(p) => alive.send_raw(&masked(0x8A, &p)),
            Got::Close(code) => panic!("answering client closed with {code:?}"),
            Got::Eof => panic!("answering client disconnected"),
            _ => {}
        }
    }
    alive.send_raw(&masked(0x89, b"are-you-there"));
    let answer = loop {
        match alive.recv(Duration::from_secs(5)) {
            Got::Frame(_) | Got::Ping(_) => continue,
            other => break other,
        }
    };
    assert_eq!(
        answer,
        Got::Pong(b"are-you-there".to_vec()),
        "the answering client is still open"
    );
    assert!(relay.counters().drops("pong_timeout") >= 1);
}

#[test]
fn running_out_of_descriptors_does_not_stop_the_relay() {
    if skip_unless_root("running_out_of_descriptors_does_not_stop_the_relay") {
        return;
    }
    let relay = Relay::start_wrapped(&["prlimit", "--nofile=64:64"], &["--no-dhcp"]);
    // Far more connections than descriptors: accept fails with EMFILE for the rest.
    let port = relay.port;
    let flood: Vec<std::net::TcpStream> = relay.ns.enter(move || {
        (0..120)
            .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
            .collect()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        relay.proc().log_text().contains("out of file descriptors"),
        "EMFILE logged with its fix"
    );
    drop(flood);
    // Once descriptors are free again, new clients are served.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        let url = relay.url();
        if let Ok(s) = relay
            .ns
            .enter(move || tapwire_testkit::ws::connect(&url, None))
        {
            break WsClient::new(s);
        }
        assert!(Instant::now() < deadline, "relay never accepted again");
        std::thread::sleep(Duration::from_millis(200));
    };
    client.send_raw(&masked(0x89, b"after-emfile"));
    let answer = loop {
        match client.recv(Duration::from_secs(5)) {
            Got::Frame(_) | Got::Ping(_) => continue,
            other => break other,
        }
    };
    assert_eq!(answer, Got::Pong(b"after-emfile".to_vec()));
}

/// A client sending from the TAP's own MAC (the gateway's) or from 00:00:00:00:00:00 is
/// dropped and counted; the gateway stays reachable for every other guest.
#[test]
fn a_client_cannot_claim_the_gateway_mac() {
    if skip_unless_root("a_client_cannot_claim_the_gateway_mac") {
        return;
    }
    let relay = Relay::start(&[]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let gw = tapwire_testkit::packet::parse_mac(
        exec_ok(
            &relay.ns,
            &["cat", &format!("/sys/class/net/{}/address", relay.tap)],
        )
        .trim(),
    )
    .expect("TAP MAC");
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

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The bound the README gives for a ping flood: the relay's memory grows by less than this.
const PING_FLOOD_RSS_BOUND_KIB: u64 = 64 * 1024;

/// A client that sends pings as fast as it can and never reads: its pongs coalesce, so the
/// relay's memory stays flat (0820cc5 grew by 1.5 GiB in 3 s) and the other guests are served.
#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    if skip_unless_root("a_ping_flood_from_a_client_that_never_reads_is_bounded") {
        return;
    }
    use std::io::Write;
    let relay = Relay::start(&[]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let before = rss_kib(relay.relay.pid());
    let flooder = relay.client_with(None, Some(4096));
    let burst: Vec<u8> = (0..1_000)
        .flat_map(|_| tapwire_testkit::ws::client_frame(0x9, &[0x70; 51]))
        .collect();
    let mut stream = flooder.stream.try_clone().expect("clone");
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(3) && sent < 2_000_000 {
        if stream.write_all(&burst).is_err() {
            break;
        }
        sent += 1_000;
    }
    let after = rss_kib(relay.relay.pid());
    assert!(sent >= 100_000, "only {sent} pings went out");
    assert!(
        after < before + PING_FLOOD_RSS_BOUND_KIB,
        "relay grew from {before} KiB to {after} KiB under {sent} pings"
    );
    assert_eq!(guest.ping(GATEWAY, 3), 3, "others are served");
    let c = relay.counters();
    assert!(c.get("tapwire_pongs_coalesced_total") > 0, "{c:?}");
    drop(flooder);
}

/// Bursts that fit in one receive reach a reader whole: 400 tiny frames in one TCP send to
/// another client, and 300 ICMP echo requests in one send answered by the host.
#[test]
fn bursts_of_small_frames_reach_a_reading_client_whole() {
    if skip_unless_root("bursts_of_small_frames_reach_a_reading_client_whole") {
        return;
    }
    use std::io::Write;
    use tapwire_testkit::packet;
    let relay = Relay::start(&[]);
    let mut receiver = relay.client(None);
    let rx = mac(0x61);
    receiver.send_frame(&eth(BROADCAST, rx, b"learn me"));
    let mut sender = relay.client(None);
    let tx = mac(0x62);
    let burst: Vec<u8> = (0..400u16)
        .flat_map(|i| tapwire_testkit::ws::client_frame(2, &eth(rx, tx, &i.to_be_bytes())))
        .collect();
    sender.stream.write_all(&burst).expect("send");
    let mut got = 0u16;
    while let Some(f) = receiver.recv_frame(Duration::from_secs(3)) {
        if f[6..12] == tx {
            assert_eq!(&f[14..16], &got.to_be_bytes(), "in order");
            got += 1;
            if got == 400 {
                break;
            }
        }
    }
    assert_eq!(got, 400, "tiny frames lost");

    let me = mac(0x63);
    let ip: std::net::Ipv4Addr = "10.86.0.201".parse().unwrap();
    exec_ok(
        &relay.ns,
        &[
            "ip",
            "neigh",
            "replace",
            "10.86.0.201",
            "lladdr",
            &packet::format_mac(me),
            "dev",
            &relay.tap,
        ],
    );
    let gw = packet::parse_mac(
        exec_ok(
            &relay.ns,
            &["cat", &format!("/sys/class/net/{}/address", relay.tap)],
        )
        .trim(),
    )
    .expect("TAP MAC");
    let mut pinger = relay.client(None);
    let burst: Vec<u8> = (0..300u16)
        .flat_map(|seq| {
            let echo = packet::icmp_echo(gw, me, ip, GATEWAY.parse().unwrap(), 9, seq, 0);
            tapwire_testkit::ws::client_frame(2, &echo)
        })
        .collect();
    pinger.stream.write_all(&burst).expect("send");
    let mut replies = std::collections::BTreeSet::new();
    while replies.len() < 300 {
        let Some(f) = pinger.recv_frame(Duration::from_secs(3)) else {
            break;
        };
        if let Some((9, seq, _)) = packet::icmp_echo_reply(&f) {
            replies.insert(seq);
        }
    }
    assert_eq!(replies.len(), 300, "echo replies lost");
    let c = relay.counters();
    assert_eq!(c.drops("send_queue_full"), 0, "{c:?}");
}

/// Floods of bad requests and of stalled handshakes make one log line per reason for the
/// whole relay (per interval), not one per connection; the counters still count every one.
#[test]
fn floods_of_bad_connections_log_one_line_per_reason() {
    if skip_unless_root("floods_of_bad_connections_log_one_line_per_reason") {
        return;
    }
    use std::io::Write;
    let relay = Relay::start(&["--handshake-timeout", "1s"]);
    for _ in 0..500 {
        let _ = http_status(&relay, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    let stalled: Vec<_> = (0..300)
        .map(|_| {
            let mut s = relay.raw();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").expect("send");
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.counters().drops("handshake_timeout") < 300 {
        assert!(
            Instant::now() < deadline,
            "stalled handshakes not timed out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stalled);
    let log = relay.proc().log_text();
    let refused = log.matches("refused a connection").count();
    let timed_out = log.matches("handshake_timeout: closing").count();
    assert_eq!(refused, 1, "{refused} lines for 500 bad requests");
    assert_eq!(timed_out, 1, "{timed_out} lines for 300 stalled handshakes");
    let c = relay.counters();
    assert_eq!(c.drops("not_websocket"), 500);
    assert_eq!(c.drops("handshake_timeout"), 300);
}

/// Clients that announce a frame and send one byte of it hold at most a quarter of a core's
/// frame slots (the rest serve whole frames: a guest keeps pinging), are closed with 1008 when
/// the frame timeout passes, and then split frames are reassembled again.
#[test]
fn partial_frames_cannot_pin_a_cores_slots() {
    if skip_unless_root("partial_frames_cannot_pin_a_cores_slots") {
        return;
    }
    use std::io::Write;
    // Jumbo frames make it 2 048 slots per core, so 512 may hold partial frames. Every
    // client, and the guest, is placed on core 0.
    let relay = Relay::start(&[
        "--max-frame",
        "9100",
        "--frame-timeout",
        "3s",
        "--ping-interval",
        "0",
    ]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let before = rss_kib(relay.relay.pid());
    let started = Instant::now();
    let mut partial: Vec<WsClient> = (0..600)
        .map(|_| {
            let mut c = relay.client(Some(source_port_for_core(0)));
            let f = tapwire_testkit::ws::client_frame(2, &[0x33; 1514]);
            c.stream.write_all(&f[..9]).expect("send");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let c = relay.counters();
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "too slow to test the deadline"
    );
    assert_eq!(c.drops("partial_frames_full"), 600 - 512, "{c:?}");
    assert_eq!(c.drops("frame_timeout"), 0);
    assert_eq!(guest.ping(GATEWAY, 3), 3, "whole frames still get through");
    assert_eq!(relay.counters().drops("no_frame_buffer"), 0);
    assert!(
        rss_kib(relay.relay.pid()) < before + 32 * 1024,
        "partial frames grew the relay by more than 32 MiB"
    );
    // The deadline closes every one of them with 1008.
    for (i, p) in partial.iter_mut().enumerate() {
        let code = std::iter::from_fn(|| match p.recv(Duration::from_secs(10)) {
            Got::Frame(_) => Some(None),
            Got::Close(code) => Some(Some(code)),
            _ => None,
        })
        .flatten()
        .next();
        assert_eq!(code, Some(Some(1008)), "client {i}");
    }
    assert_eq!(relay.counters().drops("frame_timeout"), 600);
    drop(partial);
    // Split frames are reassembled again.
    let mut rx = relay.client(None);
    rx.send_frame(&eth(BROADCAST, mac(0x71), b"learn me"));
    let mut tx = relay.client(None);
    let f = tapwire_testkit::ws::client_frame(2, &eth(mac(0x71), mac(0x72), &[0x44; 1400]));
    tx.stream.write_all(&f[..700]).expect("send");
    std::thread::sleep(Duration::from_millis(50));
    tx.stream.write_all(&f[700..]).expect("send");
    let got = std::iter::from_fn(|| rx.recv_frame(Duration::from_secs(3)))
        .find(|f| f[6..12] == mac(0x72));
    assert_eq!(got.map(|f| f.len()), Some(1414));
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

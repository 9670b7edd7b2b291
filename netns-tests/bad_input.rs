//! Bad input: every bad-input row, `--max-clients`, pings and pong timeouts, running out of
//! file descriptors.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;
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
    let guest = relay.leased_guest(0);
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

    let (sent, got) = ping_outcome(&mut pinger, Duration::from_secs(40));
    assert_eq!(
        (sent, got),
        (50, 50),
        "the other guest kept pinging:\n{}",
        pinger.log_text()
    );
    let c = relay.counters();
    for (reason, exactly) in [
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
        assert_eq!(c.drops(reason), exactly, "{reason}");
    }
    // "still-there?" and "between".
    assert_eq!(c.get("tapwire_pings_answered_total"), 2);
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
    assert_eq!(
        relay.counters().drops("pong_timeout"),
        1,
        "the silent client only"
    );
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

//! A client exhausting the relay: a ping flood's memory, bursts against the send queue, partial
//! frames against a core's frame slots, floods of bad connections against the log.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

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
    let guest = relay.leased_guest(0);
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
    let relay = Relay::start(&["--reserve", "00:22:15:00:00:63=10.86.0.201"]);
    let mut receiver = relay.client(None);
    let rx = mac(0x61);
    receiver.send_frame(&eth(BROADCAST, rx, b"learn me"));
    let mut sender = relay.client(None);
    let tx = mac(0x62);
    until_delivered(&mut sender, &mut receiver, rx, tx);
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
    if got != 400 {
        panic!("{got} of 400 tiny frames arrived; {:?}", relay.counters());
    }

    let me = mac(0x63);
    let ip: std::net::Ipv4Addr = "10.86.0.201".parse().unwrap();
    relay.static_neighbour("10.86.0.201", me);
    let gw = relay.tap_mac();
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
        "5s",
        "--ping-interval",
        "0",
    ]);
    let guest = relay.leased_guest(0);
    let before = rss_kib(relay.relay.pid());
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
    assert_eq!(c.drops("partial_frames_full"), 600 - 512, "{c:?}");
    // None timed out yet: the budget, not the deadline, turned the last 88 away.
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

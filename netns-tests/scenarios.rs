//! Root-only scenarios: a tapwire relay with 2 cores in its own namespace, kernel-stack guests
//! in theirs (real DHCP, ARP, ICMP), synthetic WebSocket guests for exact frames and bad input.
//! When not root each test prints `skipped: needs root` and passes.

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;

const GATEWAY: &str = "10.86.0.1";

fn three_guests_lease_and_ping(extra: &[&str]) {
    let relay = Relay::start(extra);
    let mut guests = [relay.guest(0), relay.guest(1), relay.guest(0)];
    let ips: Vec<String> = guests.iter_mut().map(|g| g.dhcp(&relay.dir.0)).collect();
    assert_eq!(ips.len(), 3);
    assert!(ips.iter().all(|ip| ip.starts_with("10.86.")), "{ips:?}");
    for (i, g) in guests.iter().enumerate() {
        assert_eq!(g.ping(GATEWAY, 3), 3, "guest {i} → gateway");
    }
    // 0 → 1 and 1 → 2 cross cores; 0 → 2 stays on core 0.
    assert_eq!(
        guests[0].ping(&ips[1], 3),
        3,
        "guest 0 → guest 1 (across cores)"
    );
    assert_eq!(
        guests[1].ping(&ips[2], 3),
        3,
        "guest 1 → guest 2 (across cores)"
    );
    assert_eq!(
        guests[0].ping(&ips[2], 3),
        3,
        "guest 0 → guest 2 (same core)"
    );
    let c = relay.counters();
    assert_eq!(c.get("tapwire_clients_open{core=\"0\"}"), 2, "{c:?}");
    assert_eq!(c.get("tapwire_clients_open{core=\"1\"}"), 1);
    assert!(c.get("tapwire_cross_core_frames_total") > 0);
}

#[test]
fn guests_lease_and_ping_across_cores_multishot() {
    if skip_unless_root("guests_lease_and_ping_across_cores_multishot") {
        return;
    }
    three_guests_lease_and_ping(&[]);
}

#[test]
fn guests_lease_and_ping_across_cores_fallback() {
    if skip_unless_root("guests_lease_and_ping_across_cores_fallback") {
        return;
    }
    three_guests_lease_and_ping(&["--io-fallback"]);
}

/// Waits for a frame whose payload ends with `tag` (other traffic, e.g. the host's IPv6
/// neighbour discovery, may come first).
fn wait_for_tag(client: &mut WsClient, tag: &[u8], limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match client.recv_frame(deadline.saturating_duration_since(Instant::now())) {
            Some(f) if f.ends_with(tag) => return Some(f),
            Some(_) => {}
            None => return None,
        }
    }
    None
}

#[test]
fn broadcast_reaches_every_other_guest_and_not_its_sender() {
    if skip_unless_root("broadcast_reaches_every_other_guest_and_not_its_sender") {
        return;
    }
    let relay = Relay::start(&[]);
    let mut a = relay.client(Some(source_port_for_core(0)));
    let mut b = relay.client(Some(source_port_for_core(1)));
    let mut c = relay.client(Some(source_port_for_core(0)));
    let frame = eth(BROADCAST, mac(1), b"broadcast-from-a");
    a.send_frame(&frame);
    assert_eq!(
        wait_for_tag(&mut b, b"broadcast-from-a", Duration::from_secs(5)).as_deref(),
        Some(&frame[..]),
        "other core"
    );
    assert_eq!(
        wait_for_tag(&mut c, b"broadcast-from-a", Duration::from_secs(5)).as_deref(),
        Some(&frame[..]),
        "same core"
    );
    assert_eq!(
        wait_for_tag(&mut a, b"broadcast-from-a", Duration::from_secs(1)),
        None,
        "a frame never returns to its sender"
    );
    // Known unicast goes only to its owner: b learns mac(2), a sends to it.
    b.send_frame(&eth(BROADCAST, mac(2), b"hello-from-b"));
    wait_for_tag(&mut a, b"hello-from-b", Duration::from_secs(5)).expect("b's broadcast");
    a.send_frame(&eth(mac(2), mac(1), b"unicast-to-b"));
    assert!(wait_for_tag(&mut b, b"unicast-to-b", Duration::from_secs(5)).is_some());
    assert_eq!(
        wait_for_tag(&mut c, b"unicast-to-b", Duration::from_secs(1)),
        None,
        "unicast is not flooded"
    );
}

#[test]
fn slow_guest_does_not_delay_others() {
    if skip_unless_root("slow_guest_does_not_delay_others") {
        return;
    }
    let relay = Relay::start(&["--slow-client-timeout", "2s", "--send-queue", "64"]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let mut slow = relay.client_with(Some(source_port_for_core(1)), Some(4096));
    slow.send_frame(&eth(BROADCAST, mac(7), b"claim"));
    let pinger = guest.ping_background(GATEWAY, 25, relay.dir.0.join("ping.log"));
    let mut flooder = relay.client(Some(source_port_for_core(0)));
    let payload = vec![0x5Au8; 1400];
    // Unicast to the stuck guest only: the pinging guest must not be flooded itself.
    let frame = tapwire_testkit::ws::client_frame(2, &eth(mac(7), mac(8), &payload));
    let mut burst = Vec::with_capacity(frame.len() * 500);
    for _ in 0..500 {
        burst.extend_from_slice(&frame);
    }
    // 40 × 500 frames of 1.4 KB over about 2 s, bounded in count.
    for _ in 0..40 {
        flooder.send_raw(&burst);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pinger = pinger;
    pinger
        .wait_exit(Duration::from_secs(30))
        .expect("ping finished");
    let (sent, got) = ping_result(&pinger.log_text());
    assert_eq!(
        (sent, got),
        (25, 25),
        "pings from the other guest must all be answered:\n{}",
        pinger.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut c = relay.counters();
    while c.drops("slow_client") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        c = relay.counters();
    }
    assert!(
        c.drops("send_queue_full") > 0,
        "copies to the stuck guest are dropped and counted: {c:?}"
    );
    assert_eq!(
        c.drops("slow_client"),
        1,
        "the stuck guest is closed after the timeout"
    );
    drop(slow);
}

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
fn sigterm_closes_clients_with_1001_and_leaves_nothing() {
    if skip_unless_root("sigterm_closes_clients_with_1001_and_leaves_nothing") {
        return;
    }
    let mut relay = Relay::start(&[]);
    let mut guest = relay.guest(1);
    guest.dhcp(&relay.dir.0);
    let mut client = relay.client(None);
    let dnsmasq = dnsmasq_pids(&relay.proc().log_text());
    assert!(
        !dnsmasq.is_empty() && dnsmasq.iter().all(|p| pid_alive(*p)),
        "dnsmasq runs"
    );
    assert!(links(&relay.ns).contains(&relay.tap));
    relay.proc().signal(libc::SIGTERM);
    assert_eq!(client.expect_close(Duration::from_secs(10)), Some(1001));
    let status = relay
        .proc_mut()
        .wait_exit(Duration::from_secs(15))
        .expect("relay exits");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        relay.proc().log_text()
    );
    assert!(
        guest.proc.wait_exit(Duration::from_secs(5)).is_some(),
        "guest saw the close"
    );
    assert_eq!(links(&relay.ns), Vec::<String>::new(), "no link left");
    assert!(
        exec_ok(&relay.ns, &["ip", "-4", "-o", "addr", "show"])
            .lines()
            .all(|l| l.contains(" lo ")),
        "no address left"
    );
    assert!(dnsmasq.iter().all(|p| !pid_alive(*p)), "dnsmasq stopped");
    assert!(!relay.runtime_dir.join(&relay.tap).exists(), "no file left");
    assert!(
        relay
            .proc()
            .log_text()
            .contains("tapwire_connections_closed_total"),
        "summary printed at exit"
    );
}

#[test]
fn sigkill_then_cleanup_leaves_nothing() {
    if skip_unless_root("sigkill_then_cleanup_leaves_nothing") {
        return;
    }
    let mut relay = Relay::start(&[]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let dnsmasq = dnsmasq_pids(&relay.proc().log_text());
    relay.proc().signal(libc::SIGKILL);
    relay
        .proc_mut()
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    let ledger = relay.runtime_dir.join(&relay.tap).join("ledger");
    assert!(ledger.exists(), "a killed run leaves its ledger");
    // dnsmasq dies with tapwire even on SIGKILL (its guard holds the parent-death signal).
    let deadline = Instant::now() + Duration::from_secs(5);
    while dnsmasq.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        dnsmasq.iter().all(|p| !pid_alive(*p)),
        "dnsmasq outlived a SIGKILLed tapwire"
    );
    let out = relay
        .ns
        .cmd(&[tapwire_bin(), "cleanup"])
        .arg("--runtime-dir")
        .arg(&relay.runtime_dir)
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("undid"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !relay.runtime_dir.join(&relay.tap).exists(),
        "ledger and files removed"
    );
    assert_eq!(links(&relay.ns), Vec::<String>::new(), "no link left");
    let deadline = Instant::now() + Duration::from_secs(5);
    while dnsmasq.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dnsmasq.iter().all(|p| !pid_alive(*p)), "dnsmasq gone");
    // A second cleanup finds nothing to do.
    let again = relay
        .ns
        .cmd(&[tapwire_bin(), "cleanup"])
        .arg("--runtime-dir")
        .arg(&relay.runtime_dir)
        .output()
        .expect("cleanup");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to clean up"));
}

#[test]
fn flood_over_the_client_limit_is_dropped_and_counted() {
    if skip_unless_root("flood_over_the_client_limit_is_dropped_and_counted") {
        return;
    }
    let relay = Relay::start(&["--client-broadcast-pps", "20"]);
    let mut flooder = relay.client(Some(source_port_for_core(0)));
    let mut other = relay.client(Some(source_port_for_core(1)));
    for i in 0..200u32 {
        flooder.send_frame(&eth(BROADCAST, mac(30), format!("storm-{i:04}").as_bytes()));
    }
    flooder.send_frame(&eth(mac(31), mac(30), b"storm-unicast-still-passes"));
    let mut storm = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut unicast_seen = false;
    while let Some(f) = other.recv_frame(deadline.saturating_duration_since(Instant::now())) {
        if f.windows(6).any(|w| w == b"storm-") && !f.ends_with(b"storm-unicast-still-passes") {
            storm += 1;
        }
        unicast_seen |= f.ends_with(b"storm-unicast-still-passes");
    }
    // One second of burst (20) plus what refills while the 200 frames arrive.
    assert!(
        (20..=40).contains(&storm),
        "{storm} broadcasts passed a 20/s limit"
    );
    assert!(
        !unicast_seen,
        "unknown unicast goes to the uplink, not to other clients"
    );
    let c = relay.counters();
    assert!(c.drops("rate_limited") >= 160, "{c:?}");
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
fn kernel_guest_runs_iperf3_tcp_and_udp_against_the_host() {
    if skip_unless_root("kernel_guest_runs_iperf3_tcp_and_udp_against_the_host") {
        return;
    }
    let relay = Relay::start(&[]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let server = Proc::spawn(
        relay.ns.cmd(&["iperf3", "-s", "-B", GATEWAY, "-p", "5201"]),
        relay.dir.0.join("iperf3-server.log"),
    )
    .expect("iperf3 server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exec_ok(&relay.ns, &["ss", "-ltn"]).contains(":5201") {
        assert!(
            Instant::now() < deadline,
            "iperf3 server did not start: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (label, extra) in [("tcp", vec![]), ("udp", vec!["-u", "-b", "50M"])] {
        let mut args = vec![
            "timeout", "30", "iperf3", "-c", GATEWAY, "-p", "5201", "-t", "2", "-J",
        ];
        args.extend(extra);
        let out = guest.ns.cmd(&args).output().expect("iperf3");
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "iperf3 {label} failed: {json}");
        let bits = json
            .split("\"sum_received\"")
            .nth(1)
            .or_else(|| json.split("\"sum\"").last())
            .and_then(|s| s.split("\"bits_per_second\":").nth(1))
            .and_then(|s| s.split([',', '}']).next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        println!("iperf3 {label}: {:.1} Mbit/s through tapwire", bits / 1e6);
        assert!(bits > 1e6, "iperf3 {label} moved {bits} bit/s");
    }
}

/// Runs `tapwire-swarm` against `relay` with `args` (after --url) and returns what it printed;
/// fails the test if the swarm fails.
fn run_swarm(relay: &Relay, args: &[&str]) -> String {
    let url = relay.url();
    let swarm = tool_bin("tapwire-swarm");
    let mut all = vec![swarm.as_str(), "--url", &url];
    all.extend_from_slice(args);
    let out = relay.ns.cmd(&all).output().expect("swarm");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn swarm_of_synthetic_guests_each_lease_and_ping() {
    if skip_unless_root("swarm_of_synthetic_guests_each_lease_and_ping") {
        return;
    }
    let relay = Relay::start(&[]);
    let text = run_swarm(&relay, &["--guests", "300", "--timeout", "90"]);
    assert!(
        text.contains("300 guests, 300 upgraded, 300 leased, 300 pinged the gateway"),
        "{text}"
    );
    let leases = std::fs::read_to_string(relay.runtime_dir.join(&relay.tap).join("dnsmasq.leases"))
        .unwrap_or_default();
    assert_eq!(
        leases.lines().filter(|l| l.contains(" 02:53:")).count(),
        300,
        "dnsmasq recorded a lease per guest"
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

#[test]
fn cross_core_overload_is_held_back_not_dropped_for_want_of_buffers() {
    if skip_unless_root("cross_core_overload_is_held_back_not_dropped_for_want_of_buffers") {
        return;
    }
    let relay = Relay::start(&[]);
    // 8 pairs each way: senders on one core, their receivers on the other.
    let pairs = 8u8;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..pairs * 2 {
        let (send_core, recv_core) = if i < pairs { (0, 1) } else { (1, 0) };
        let mut r = relay.client(Some(source_port_for_core(recv_core)));
        r.send_frame(&eth(BROADCAST, mac(100 + i), b"claim"));
        receivers.push(r);
        senders.push((i, relay.client(Some(source_port_for_core(send_core)))));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = receivers
        .into_iter()
        .map(|mut r| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = 0u64;
                r.stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = std::io::Read::read(&mut r.stream, &mut buf) {
                        got += n as u64;
                    }
                }
                got
            })
        })
        .collect();
    // Each sender: 64-byte frames in bursts of 512, for at most 3 s or 400 bursts.
    let writers: Vec<_> = senders
        .into_iter()
        .map(|(i, mut s)| {
            let frame =
                tapwire_testkit::ws::client_frame(2, &eth(mac(100 + i), mac(150 + i), &[0; 50]));
            let burst = frame.repeat(512);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(3);
                for _ in 0..400 {
                    if Instant::now() > deadline
                        || std::io::Write::write_all(&mut s.stream, &burst).is_err()
                    {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let _senders: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got: Vec<u64> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    let c = relay.counters();
    println!("bytes per receiver {got:?}; counters {c:?}");
    assert!(
        got.iter().all(|&b| b > 0),
        "every receiver got frames: {got:?}"
    );
    assert!(
        c.get("tapwire_cross_core_frames_total") > 100_000,
        "the load crossed cores: {c:?}"
    );
    assert_eq!(
        c.drops("no_frame_buffer"),
        0,
        "an overloaded core must hold its clients back, not run out of frame buffers: {c:?}"
    );
    assert_eq!(c.drops("cross_core_full"), 0, "{c:?}");
    assert!(
        c.get("tapwire_input_held_total") > 0,
        "the overloaded cores held their clients' input back: {c:?}"
    );
}

/// The number before `label` in `text` ("... 123 sent ..." → 123 for " sent").
fn number_before(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in {text}"))
}

#[test]
fn swarm_guests_send_timestamped_udp_and_every_echo_comes_back() {
    if skip_unless_root("swarm_guests_send_timestamped_udp_and_every_echo_comes_back") {
        return;
    }
    let relay = Relay::start(&["--no-dhcp"]);
    let echo = tapwire_testkit::udp_echo::UdpEcho::start(
        &relay.ns,
        "10.86.0.1:7777".parse().unwrap(),
        None,
    );
    let text = run_swarm(
        &relay,
        &[
            "--guests",
            "200",
            "--static-from",
            "10.86.1.1",
            "--udp-to",
            "10.86.0.1:7777",
            "--udp-pps",
            "20",
            "--udp-seconds",
            "3",
            "--timeout",
            "60",
        ],
    );
    let echoed = echo.stop();
    assert!(
        text.contains("200 guests, 200 upgraded, 200 leased, 200 pinged the gateway"),
        "{text}"
    );
    let sent = number_before(&text, " sent in");
    let echoes = number_before(&text, " of them echoes");
    // 200 guests × 20/s × 3 s = 12 000, plus at most one per guest at the window's start. A
    // stalled machine may end the window between two rounds: only bound it loosely below.
    assert!(
        (6_000..=12_200).contains(&sent),
        "paced guests send on schedule: {text}"
    );
    assert_eq!(echoed, sent, "the echo server saw every datagram: {text}");
    assert_eq!(echoes, sent, "every echo came back to its guest: {text}");
    assert!(
        text.contains("rtt p50 ") && !text.contains("rtt p50 –"),
        "{text}"
    );
}

#[test]
fn host_frames_reach_each_guest_on_its_own_core() {
    if skip_unless_root("host_frames_reach_each_guest_on_its_own_core") {
        return;
    }
    // A deep send queue: the 400-frame bursts below must not meet the per-client limit.
    let relay = Relay::start(&["--no-dhcp", "--send-queue", "2048"]);
    assert!(
        !relay.proc().log_text().contains("cannot steer TAP queues"),
        "{}",
        relay.proc().log_text()
    );
    // One guest per core; each announces its MAC, and the host knows its address statically.
    let mut guests = Vec::new();
    for core in 0..2u8 {
        let mut g = relay.client(Some(source_port_for_core(usize::from(core))));
        g.send_frame(&eth(BROADCAST, mac(60 + core), b"hello"));
        exec_ok(
            &relay.ns,
            &[
                "ip",
                "neigh",
                "replace",
                &format!("10.86.3.{}", core + 1),
                "lladdr",
                &tapwire_testkit::packet::format_mac(mac(60 + core)),
                "dev",
                &relay.tap,
            ],
        );
        guests.push(g);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = relay.counters();
    // 8 flows per guest (different source ports), 50 datagrams each: a flow hash alone would
    // put some of them on the other core's queue.
    relay.ns.enter(|| {
        for port in 0..8u16 {
            let s = std::net::UdpSocket::bind(("10.86.0.1", 41_000 + port)).expect("udp");
            for core in 0..2 {
                for _ in 0..50 {
                    s.send_to(b"steered", (format!("10.86.3.{}", core + 1).as_str(), 9))
                        .expect("send");
                }
            }
        }
    });
    for (core, g) in guests.iter_mut().enumerate() {
        let mut got = 0;
        while let Some(f) = g.recv_frame(Duration::from_secs(2)) {
            if f.ends_with(b"steered") && f[..6] == mac(60 + core as u8) {
                got += 1;
                if got == 400 {
                    break;
                }
            }
        }
        assert_eq!(
            got,
            400,
            "guest on core {core} got every datagram: {:?}",
            relay.counters()
        );
    }
    let after = relay.counters();
    let delta = |name: &str| after.get(name) - before.get(name);
    let crossed = delta("tapwire_cross_core_frames_total");
    let read0 = delta("tapwire_tap_rx_frames_total{core=\"0\"}");
    let read1 = delta("tapwire_tap_rx_frames_total{core=\"1\"}");
    println!("TAP reads per core {read0}/{read1}, cross-core frames {crossed}");
    assert!(
        read0 >= 400 && read1 >= 400,
        "each core read its own guest's frames from the TAP: {read0}/{read1}"
    );
    assert!(
        crossed < 40,
        "host → guest frames do not cross cores ({crossed} did)"
    );
}

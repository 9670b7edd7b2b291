//! wss:// (`--listen-tls`): kernel-stack guests over TLS lease, ping and download beside a
//! ws:// guest; every kind of bad TLS input is counted and closed while a wss:// guest keeps
//! pinging; SIGHUP reloads the certificate under traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// A raw TCP connection to the relay's wss:// port from inside its namespace.
fn raw_tls(relay: &Relay) -> TcpStream {
    let s = relay
        .ns
        .enter(|| TcpStream::connect(("127.0.0.1", TLS_PORT)))
        .expect("connect to the wss:// port");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads until the relay closes `s`; true when it did within the read timeout.
fn closed_by_relay(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// Serves a 1 MiB file on the gateway's port 8000; returns the server and the file's SHA-256.
fn serve_file(relay: &Relay) -> (Proc, String) {
    let root = relay.dir.0.join("www");
    std::fs::create_dir_all(&root).expect("www");
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("file"), &data).expect("file");
    let sum = exec_ok(
        &relay.ns,
        &["sha256sum", &root.join("file").display().to_string()],
    );
    let mut cmd = relay
        .ns
        .cmd(&["busybox", "httpd", "-f", "-p", "10.86.0.1:8000", "-h"]);
    cmd.arg(&root);
    let server = Proc::spawn(cmd, relay.dir.0.join("httpd.log")).expect("httpd");
    (
        server,
        sum.split_whitespace().next().unwrap_or("").to_string(),
    )
}

#[test]
fn a_wss_guest_leases_pings_and_downloads_beside_a_ws_guest() {
    if skip_unless_root("a_wss_guest_leases_pings_and_downloads_beside_a_ws_guest") {
        return;
    }
    let certs = TempDir::new();
    let (pem, mut args) = tls_args(&certs.0, "relay");
    args.extend(["--allow-host-port".into(), "tcp:8000".into()]);
    let relay = Relay::start(&str_refs(&args));
    assert!(relay
        .proc()
        .log_text()
        .contains(&format!("and wss://127.0.0.1:{TLS_PORT}/")));
    let (_server, sum) = serve_file(&relay);

    let mut secure = relay.tls_guest(0, &pem.cert);
    let secure_ip = secure.dhcp(&relay.dir.0);
    let mut plain = relay.guest(1);
    let plain_ip = plain.dhcp(&relay.dir.0);
    assert_eq!(secure.ping(GATEWAY, 3), 3, "wss:// guest → gateway");
    assert_eq!(secure.ping(&plain_ip, 3), 3, "wss:// guest → ws:// guest");
    assert_eq!(plain.ping(&secure_ip, 3), 3, "ws:// guest → wss:// guest");
    let got = exec_ok(
        &secure.ns,
        &[
            "sh",
            "-c",
            "timeout 120 busybox wget -q -O - http://10.86.0.1:8000/file | sha256sum",
        ],
    );
    assert_eq!(
        got.split_whitespace().next(),
        Some(sum.as_str()),
        "1 MiB over wss://, hash checked"
    );

    let counters = relay.counters();
    assert_eq!(counters.get("tapwire_tls_handshakes_total"), 1);
    assert_eq!(counters.get("tapwire_tls_handshake_failures_total"), 0);
    assert_eq!(counters.nonzero_drops(), Vec::<(String, u64)>::new());
}

#[test]
fn bad_tls_input_is_counted_and_closed_while_a_wss_guest_pings() {
    if skip_unless_root("bad_tls_input_is_counted_and_closed_while_a_wss_guest_pings") {
        return;
    }
    let certs = TempDir::new();
    let (pem, mut args) = tls_args(&certs.0, "relay");
    args.extend(["--handshake-timeout".into(), "2s".into()]);
    let relay = Relay::start(&str_refs(&args));
    let mut guest = relay.tls_guest(0, &pem.cert);
    guest.dhcp(&relay.dir.0);
    let mut pinger = guest.ping_background(GATEWAY, 40, relay.dir.0.join("ping.log"));

    // Not TLS at all: garbage, and plain HTTP on the TLS port.
    for i in 0..25 {
        let mut s = raw_tls(&relay);
        if i < 20 {
            s.write_all(&[0xff; 64]).expect("send");
        } else {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
                .expect("send");
        }
        assert!(closed_by_relay(&mut s), "garbage {i} closed");
    }
    // A handshake record whose body is garbage.
    for _ in 0..5 {
        let mut s = raw_tls(&relay);
        let mut record = vec![0x16, 3, 1, 0, 60];
        record.extend([0xee; 60]);
        s.write_all(&record).expect("send");
        assert!(closed_by_relay(&mut s), "malformed hello closed");
    }
    // Handshakes that stall: a record header, then nothing.
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = raw_tls(&relay);
            s.write_all(&[0x16, 3, 1]).expect("send");
            s
        })
        .collect();
    for s in &mut stalled {
        assert!(closed_by_relay(s), "stalled handshake closed");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed at the deadline, not before"
    );
    // After a good handshake: an oversized record header.
    let tcp = raw_tls(&relay);
    let mut tls = tapwire_testkit::tls::connect(tcp, "127.0.0.1", &pem.cert).expect("handshake");
    tls.sock.write_all(&[0x17, 3, 3, 0xff, 0xff]).expect("send");
    assert!(closed_by_relay(&mut tls.sock), "oversized record closed");
    // After a good handshake: a fatal alert (the client's answer to a corrupted record).
    fatal_alert_mid_stream(&relay, &pem.cert);

    let (sent, got) = ping_outcome(&mut pinger, Duration::from_secs(40));
    assert_eq!(
        (sent, got),
        (40, 40),
        "the wss:// guest kept pinging:\n{}",
        pinger.log_text()
    );
    // The listener still serves.
    let mut again = relay.tls_guest(1, &pem.cert);
    again.dhcp(&relay.dir.0);

    let c = relay.counters();
    let drops = [
        ("tls_not_tls", 25),
        ("tls_handshake_failed", 5),
        ("handshake_timeout", 10),
        ("tls_bad_record", 1),
        ("tls_alert", 1),
    ];
    for (reason, n) in drops {
        assert_eq!(c.drops(reason), n, "{reason}: {:?}", c.nonzero_drops());
    }
    assert_eq!(c.get("tapwire_tls_handshake_failures_total"), 40);
    // The two guests and the two clients that misbehaved after their handshake.
    assert_eq!(c.get("tapwire_tls_handshakes_total"), 4);
    let log = relay.proc().log_text();
    assert!(log.contains("TLS: "), "failures are logged:\n{log}");
}

/// A client that completes the handshake and sends the upgrade request, then receives the
/// relay's answer with one byte flipped: rustls answers with a fatal bad_record_mac alert,
/// which the relay must count as `tls_alert` and close.
fn fatal_alert_mid_stream(relay: &Relay, ca: &Path) {
    let tcp = raw_tls(relay);
    let mut tls = tapwire_testkit::tls::connect(tcp, "127.0.0.1", ca).expect("handshake");
    tls.conn
        .writer()
        .write_all(
            tapwire_testkit::ws::upgrade_request("/", "x", &tapwire_testkit::ws::new_key())
                .as_bytes(),
        )
        .expect("request");
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).expect("send");
    }
    let mut record = vec![0u8; 5];
    tls.sock.read_exact(&mut record).expect("record header");
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record.resize(5 + len, 0);
    tls.sock.read_exact(&mut record[5..]).expect("record");
    let last = record.len() - 1;
    record[last] ^= 1;
    tls.conn.read_tls(&mut &record[..]).expect("read_tls");
    assert!(
        tls.conn.process_new_packets().is_err(),
        "the corrupted record fails"
    );
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).expect("send the alert");
    }
    assert!(closed_by_relay(&mut tls.sock), "closed after the alert");
}

#[test]
fn sighup_reloads_the_certificate_and_clients_keep_their_connections() {
    if skip_unless_root("sighup_reloads_the_certificate_and_clients_keep_their_connections") {
        return;
    }
    let certs = TempDir::new();
    let (old, args) = tls_args(&certs.0, "relay");
    let relay = Relay::start(&str_refs(&args));
    // Trust roots kept apart from the files the relay reads.
    let old_ca = certs.0.join("old-ca.crt");
    std::fs::copy(&old.cert, &old_ca).expect("copy");
    let mut guest = relay.tls_guest(0, &old_ca);
    guest.dhcp(&relay.dir.0);
    let mut pinger = guest.ping_background(GATEWAY, 30, relay.dir.0.join("ping.log"));

    // A new certificate in place of the old one, then SIGHUP.
    let new = tapwire_testkit::tls::self_signed(&certs.0, "new", &["127.0.0.1"]).expect("cert");
    std::fs::copy(&new.cert, &old.cert).expect("cert");
    std::fs::copy(&new.key, &old.key).expect("key");
    relay.proc().signal(libc::SIGHUP);
    wait_for_log(&relay, "SIGHUP: reloaded the certificate");
    let err = relay
        .tls_client(&old_ca)
        .err()
        .expect("the old certificate is gone");
    assert!(err.to_string().contains("certificate"), "{err}");
    let mut fresh = relay
        .tls_client(&new.cert)
        .expect("the new certificate is served");
    let mac = mac(0x51);
    assert!(
        lease(&mut fresh, mac).octets()[0] == 10,
        "a new client leases"
    );

    // A broken key: the reload fails and the certificate in use stays.
    std::fs::write(&old.key, "not a key").expect("key");
    relay.proc().signal(libc::SIGHUP);
    wait_for_log(&relay, "still using the certificate loaded before");
    relay.tls_client(&new.cert).expect("still served");

    assert_eq!(
        ping_outcome(&mut pinger, Duration::from_secs(30)),
        (30, 30),
        "the connected guest kept its connection"
    );
    assert_eq!(guest.ping(GATEWAY, 2), 2);
    assert_eq!(
        relay.counters().get("tapwire_tls_handshake_failures_total"),
        1,
        "the client that trusted the old certificate"
    );
}

fn wait_for_log(relay: &Relay, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !relay.proc().log_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in:\n{}",
            relay.proc().log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

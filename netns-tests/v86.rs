//! Real v86 guests end to end (root): boot the test guest under Node with its ne2k or virtio
//! NIC on tapwire; it must take a DHCP lease from tapwire's dnsmasq, ping the gateway, download
//! 1 MiB over HTTP from the host side with the right checksum, and two guests must ping each
//! other. With `--nat`, a guest pings and downloads from an "internet" namespace behind the
//! relay's default route. A negative control runs the same check against a WebSocket server that drops every
//! frame, and that check must fail.
//!
//! Needs `e2e/v86/setup.sh` (npm packages and the guest image). Without them the tests skip
//! (counted by `scripts/test.sh`; a failure under `TAPWIRE_NO_SKIP`, as in CI).

#[path = "farm_rig.rs"]
mod farm_rig;
#[path = "harness.rs"]
mod harness;
#[path = "internet.rs"]
mod internet;
#[path = "v86_guest.rs"]
mod v86_guest;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use harness::*;
use v86_guest::*;

/// The full check on one guest: lease, three of three gateway pings, a download with the right
/// checksum during which the relay drops nothing, for any reason (no drop is expected of a
/// guest that only downloads). A virtio guest must not retry its download;
/// an ne2k guest may (its emulated card loses frames the relay delivered), and each retry is
/// reported. Returns the guest's address.
fn check_guest(relay: &Relay, guest: &mut V86Guest, sha256: &str) -> Result<String, String> {
    check_guest_in(relay, guest, sha256, "10.86.")
}

/// [`check_guest`] for a guest whose lease must start with `subnet_prefix`.
fn check_guest_in(
    relay: &Relay,
    guest: &mut V86Guest,
    sha256: &str,
    subnet_prefix: &str,
) -> Result<String, String> {
    let lease = guest.wait_for("TW-LEASE ", BOOT_LIMIT)?;
    let ip = lease.trim_start_matches("TW-LEASE ").trim().to_string();
    if !ip.starts_with(subnet_prefix) {
        return Err(format!(
            "lease {ip} is not from the subnet it should be ({subnet_prefix}…)"
        ));
    }
    guest.wait_for("TW-PING-OK", Duration::from_secs(30))?;
    let before = relay.try_counters()?;
    let download = guest.wait_for("TW-DOWNLOAD ", Duration::from_secs(400))?;
    let after = relay.try_counters()?;
    let got = download.trim_start_matches("TW-DOWNLOAD ").trim();
    if got != sha256 {
        return Err(format!(
            "downloaded blob has SHA-256 {got}, expected {sha256}"
        ));
    }
    let retries: Vec<String> = guest
        .seen
        .iter()
        .filter(|l| l.starts_with("TW-RETRY"))
        .cloned()
        .collect();
    let test = std::thread::current().name().unwrap_or("v86").to_string();
    for retry in &retries {
        tapwire_testkit::skip::notice(&test, &format!("{} guest: {retry}", guest.label));
    }
    if guest.nic != "ne2k" && !retries.is_empty() {
        return Err(format!(
            "{} guest retried its download ({retries:?}): only ne2k may",
            guest.label
        ));
    }
    let dropped: Vec<(String, u64)> = after
        .nonzero_drops()
        .into_iter()
        .map(|(reason, n)| {
            let was = before.drops(&reason);
            (reason, n - was)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    if !dropped.is_empty() {
        return Err(format!(
            "the relay dropped frames while the {} guest downloaded: {dropped:?}",
            guest.label
        ));
    }
    guest.wait_for("TW-READY", Duration::from_secs(10))?;
    Ok(ip)
}

/// Fails the test with `what`, the relay's log and its drop counters so far.
fn failed(relay: &Relay, what: &str) -> ! {
    panic!(
        "{what}\nrelay drops: {:?}\nrelay log:\n{}",
        relay.counters().nonzero_drops(),
        relay.proc().log_text()
    )
}

/// The relay for guests that download from the host's HTTP server (port 8000).
fn relay_serving_http() -> Relay {
    Relay::start(&["--allow-host-port", "tcp:8000"])
}

fn one_guest(nic: &str) {
    let relay = relay_serving_http();
    let blob = serve_blob(&relay);
    let mut guest = V86Guest::boot(&relay, &relay.url(), nic);
    check_guest(&relay, &mut guest, &blob.sha256).unwrap_or_else(|e| failed(&relay, &e));
    drop(blob.server);
}

#[test]
fn v86_ne2k_guest_leases_pings_and_downloads() {
    if ready("v86_ne2k_guest_leases_pings_and_downloads") {
        one_guest("ne2k");
    }
}

/// A guest of network `lab` (`/n/lab`): the network takes the block of the pool its name
/// hashes to, whose gateway is where the guest pings and downloads.
#[test]
fn v86_guest_in_a_named_network_leases_pings_and_downloads() {
    if !ready("v86_guest_in_a_named_network_leases_pings_and_downloads") {
        return;
    }
    let relay = relay_serving_http();
    let blob = serve_blob_at(&relay, "0.0.0.0:8000");
    let url = format!("{}n/lab", relay.url());
    let subnet = network_subnet("lab");
    let gateway = subnet.gateway().to_string();
    let prefix = gateway.trim_end_matches('1').to_string();
    let mut guest = V86Guest::boot_against(&relay, &url, "virtio", &gateway);
    check_guest_in(&relay, &mut guest, &blob.sha256, &prefix)
        .unwrap_or_else(|e| failed(&relay, &e));
    let c = relay.counters();
    assert_eq!(
        c.get("tapwire_network_clients{network=\"lab\"}"),
        1,
        "{c:?}"
    );
    drop(blob.server);
}

#[test]
fn v86_virtio_guest_leases_pings_and_downloads() {
    if ready("v86_virtio_guest_leases_pings_and_downloads") {
        one_guest("virtio");
    }
}

#[test]
fn v86_guest_downloads_from_the_internet_through_nat() {
    if !ready("v86_guest_downloads_from_the_internet_through_nat") {
        return;
    }
    let ns = netns("twr");
    let net = internet::internet(&ns);
    let relay = Relay::launch_in(ns, &[], None, None, &["--nat"]);
    let mut guest = V86Guest::boot_against(&relay, &relay.url(), "virtio", internet::SERVER);
    check_guest(&relay, &mut guest, &net.sha).unwrap_or_else(|e| failed(&relay, &e));
}

/// The page's origin and the relay's token decide whether a browser connects: from the allowed
/// origin with a valid token the guest leases, pings and downloads; from another origin, or
/// with an expired token, the page's WebSocket fails and the relay counts why.
#[test]
fn v86_guest_in_chromium_with_token_and_origin() {
    if !ready("v86_guest_in_chromium_with_token_and_origin") {
        return;
    }
    if !chromium_present("v86_guest_in_chromium_with_token_and_origin") {
        return;
    }
    let dir = TempDir::new();
    let page_port = 8001u16;
    let (secret, args) = browser_relay_args(&dir, page_port);
    let relay = Relay::start(&str_refs(&args));
    let blob = serve_blob(&relay);
    let token = |ttl: &str| tapwire_token(&["--token-secret", &secret, "--ttl", ttl]).1;
    let mut guest = V86Guest::boot_in_browser(&relay, &token("1h"), "127.0.0.1", page_port, None);
    guest
        .wait_for("TW-WS-OPEN", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    check_guest(&relay, &mut guest, &blob.sha256).unwrap_or_else(|e| failed(&relay, &e));
    drop(guest);

    // Another origin (the same page at localhost), then an expired token.
    let mut other = V86Guest::boot_in_browser(&relay, &token("1h"), "localhost", page_port, None);
    let refused = other.wait_for("TW-WS-OPEN", Duration::from_secs(60));
    assert!(refused.is_err(), "a page from another origin connected");
    drop(other);
    let mut late = V86Guest::boot_in_browser(&relay, &token("0s"), "127.0.0.1", page_port, None);
    assert!(late
        .wait_for("TW-WS-OPEN", Duration::from_secs(60))
        .is_err());
    drop(late);
    let c = relay.counters();
    assert!(c.drops("origin_refused") >= 1);
    assert!(c.drops("token_expired") >= 1);
}

/// The relay options of a browser test: the guest's HTTP port open, a token secret written to
/// `dir`, and the page's origin on `page_port` allowed; returns the secret's path too.
fn browser_relay_args(dir: &TempDir, page_port: u16) -> (String, Vec<String>) {
    let secret = dir.0.join("secret");
    std::fs::write(&secret, "YnJvd3NlciB0ZXN0IHNlY3JldCwgdGhpcnR5LXR3byBi\n").unwrap();
    let secret = secret.display().to_string();
    let args = [
        "--allow-host-port",
        "tcp:8000",
        "--token-secret",
        &secret,
        "--allow-origin",
        &format!("http://127.0.0.1:{page_port}"),
    ]
    .map(str::to_string)
    .to_vec();
    (secret, args)
}

/// Debian's chromium is installed (else `test` skips).
fn chromium_present(test: &str) -> bool {
    if Path::new("/usr/bin/chromium").exists() {
        return true;
    }
    tapwire_testkit::skip::skip(test, "chromium is not installed (apt-get install chromium)");
    false
}

/// A v86 guest under Node (the `ws` package) over wss:// with a self-signed certificate it
/// trusts: it leases, pings and downloads with its hash checked.
#[test]
fn v86_guest_over_wss_in_node() {
    if !ready("v86_guest_over_wss_in_node") {
        return;
    }
    let dir = TempDir::new();
    let (pem, mut args) = tls_args(&dir.0, "relay");
    args.extend(["--allow-host-port".into(), "tcp:8000".into()]);
    let relay = Relay::start(&str_refs(&args));
    let blob = serve_blob(&relay);
    let mut guest = V86Guest::boot_tls(&relay, &relay.tls_url(), "virtio", &pem.cert);
    check_guest(&relay, &mut guest, &blob.sha256).unwrap_or_else(|e| failed(&relay, &e));
    assert!(relay.counters().get("tapwire_tls_handshakes_total") >= 1);
}

/// The browser test over wss://: headless Chromium trusts only the relay's self-signed
/// certificate; with a token and the allowed origin the guest leases, pings and downloads; the
/// same page from another origin cannot open its WebSocket.
#[test]
fn v86_guest_in_chromium_over_wss() {
    if !ready("v86_guest_in_chromium_over_wss")
        || !chromium_present("v86_guest_in_chromium_over_wss")
    {
        return;
    }
    let dir = TempDir::new();
    let page_port = 8002u16;
    let (secret, mut args) = browser_relay_args(&dir, page_port);
    let (pem, tls) = tls_args(&dir.0, "relay");
    args.extend(tls);
    let args = str_refs(&args);
    let relay = Relay::start(&args);
    let blob = serve_blob(&relay);
    let url = tapwire_token(&[
        "--token-secret",
        &secret,
        "--ttl",
        "1h",
        "--url",
        &relay.tls_url(),
    ])
    .1;
    assert!(url.starts_with("wss://127.0.0.1:8443/?token="), "{url}");
    let spki = Some(pem.spki_sha256.as_str());
    let mut guest = V86Guest::boot_in_browser(&relay, &url, "127.0.0.1", page_port, spki);
    guest
        .wait_for("TW-WS-OPEN", Duration::from_secs(60))
        .unwrap_or_else(|e| failed(&relay, &e));
    check_guest(&relay, &mut guest, &blob.sha256).unwrap_or_else(|e| failed(&relay, &e));
    drop(guest);
    let mut other = V86Guest::boot_in_browser(&relay, &url, "localhost", page_port, spki);
    assert!(other
        .wait_for("TW-WS-OPEN", Duration::from_secs(60))
        .is_err());
    drop(other);
    let c = relay.counters();
    assert!(c.get("tapwire_tls_handshakes_total") >= 2);
    assert!(c.drops("origin_refused") >= 1);
}

#[test]
fn two_v86_guests_ping_each_other() {
    if !ready("two_v86_guests_ping_each_other") {
        return;
    }
    let relay = relay_serving_http();
    let blob = serve_blob(&relay);
    let mut a = V86Guest::boot(&relay, &relay.url(), "ne2k");
    let mut b = V86Guest::boot(&relay, &relay.url(), "virtio");
    let ip_a = check_guest(&relay, &mut a, &blob.sha256).unwrap_or_else(|e| failed(&relay, &e));
    let ip_b = check_guest(&relay, &mut b, &blob.sha256).unwrap_or_else(|e| failed(&relay, &e));
    a.send(&format!("PEER {ip_b}"));
    b.send(&format!("PEER {ip_a}"));
    a.wait_for("TW-PEER-OK", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    b.wait_for("TW-PEER-OK", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A WebSocket server that completes the handshake and then drops every frame.
fn blackhole(relay: &Relay) -> String {
    let listener = relay
        .ns
        .enter(|| TcpListener::bind("127.0.0.1:0").expect("bind"));
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if let tapwire::ws::Upgrade::Accept { response, .. } =
                        tapwire::ws::parse_upgrade(&head)
                    {
                        let _ = stream.write_all(response.as_bytes());
                        break;
                    }
                }
                while std::io::Read::read(&mut stream, &mut buf).unwrap_or(0) > 0 {}
            });
        }
    });
    format!("ws://127.0.0.1:{port}/")
}

#[test]
fn negative_control_a_relay_that_drops_every_frame_fails_the_check() {
    if !ready("negative_control_a_relay_that_drops_every_frame_fails_the_check") {
        return;
    }
    let relay = Relay::start(&[]);
    let blob = serve_blob(&relay);
    let url = blackhole(&relay);
    let mut guest = V86Guest::boot(&relay, &url, "ne2k");
    let result = check_guest(&relay, &mut guest, &blob.sha256);
    assert!(
        result.is_err(),
        "the check passed against a relay that drops every frame: {result:?}"
    );
    println!(
        "negative control failed as it must: {}",
        result.unwrap_err()
    );
}

/// A v86 guest of a network behind the farm's balancer leases, pings and downloads; its host
/// is killed; v86 connects again on its own, the balancer sends it to another host, and it
/// downloads again there with the address and gateway it had (no new lease).
#[test]
fn v86_guest_moves_to_another_host_of_the_farm_and_downloads_again() {
    let test = "v86_guest_moves_to_another_host_of_the_farm_and_downloads_again";
    if !ready(test) || farm_rig::skip_unless_haproxy(test) {
        return;
    }
    let mut farm = farm_rig::Farm::start_with(&["--allow-host-port", "tcp:8000"]);
    let name = "v86farm";
    let gateway = network_subnet(name).gateway().to_string();
    let prefix = gateway.strip_suffix('1').unwrap_or(&gateway).to_string();
    // The blob on every host, at the network's gateway once the network is up there.
    let blobs: Vec<Blob> = farm
        .hosts
        .iter()
        .map(|h| serve_blob_at(h, "0.0.0.0:8000"))
        .collect();
    let url = format!("ws://127.0.0.1:{}/n/{name}", farm_rig::LB_PORT);
    let mut guest = V86Guest::run_in(
        &farm.lb,
        "boot.mjs",
        &["--relay", &url, "--nic", "virtio", "--host", &gateway],
        &[],
        "virtio",
    );
    let lease = guest
        .wait_for("TW-LEASE ", BOOT_LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let ip = lease.trim_start_matches("TW-LEASE ").trim().to_string();
    assert!(ip.starts_with(&prefix), "{ip} is not in {prefix}0/24");
    let first = farm.host_of(name);
    guest
        .wait_for("TW-PING-OK", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let download = guest
        .wait_for("TW-DOWNLOAD ", Duration::from_secs(200))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(download.ends_with(&blobs[first].sha256), "{download}");
    guest
        .wait_for("TW-READY", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    farm.hosts[first].relay.expect_exit();
    farm.hosts[first].proc().signal(libc::SIGKILL);
    farm.hosts[first]
        .proc_mut()
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    let mut want = ["UP"; 3];
    want[first] = "DOWN";
    farm.wait_for_servers(&want, Duration::from_secs(10));
    // v86 connects again within about 10 s; the next host serves the network once it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let second = loop {
        let holders: Vec<usize> = (0..3)
            .filter(|i| *i != first && farm.held(*i).iter().any(|(n, _, _)| n == name))
            .collect();
        if let [h] = holders[..] {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not come back through the balancer"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    guest.send(&format!("GET {gateway}"));
    let again = guest
        .wait_for("TW-DOWNLOAD ", Duration::from_secs(150))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.ends_with(&blobs[second].sha256), "{again}");
    let c = farm.hosts[second].counters();
    assert_eq!(
        c.get("tapwire_roam_bindings_total"),
        1,
        "bound as a guest that moved"
    );
    assert!(
        !guest
            .seen
            .iter()
            .any(|l| l.starts_with("TW-LEASE ") && !l.ends_with(&ip)),
        "no new lease: {:?}",
        guest.seen
    );
}

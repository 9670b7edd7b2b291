//! NAT egress: guests reach an "internet" (a namespace of our own behind the relay's default
//! route, serving HTTP) with `--nat` and not without; the instance's nftables table and IPv4
//! forwarding are undone at exit and by `tapwire cleanup`; a forward chain with policy drop in
//! another table is reported with the fix.

use std::time::Duration;

use super::harness::*;
use super::internet::{internet, HTTP_PORT, SERVER};
use super::GATEWAY;

// (busybox 1.35's `wget -T` crashes; `timeout` bounds the wait instead.)

/// Fetches `path` from the server in the guest's namespace (default route via the gateway).
fn fetch(guest: &Guest, path: &str, pipe: &str) -> String {
    let out = guest
        .ns
        .cmd(&[
            "sh",
            "-c",
            &format!("ip route replace default via {GATEWAY} dev eth0; timeout 5 busybox wget -q -O - http://{SERVER}:{HTTP_PORT}/{path} {pipe}"),
        ])
        .output()
        .expect("wget");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Downloads the blob in the guest's namespace; its SHA-256, or `None` when it fails.
fn download(guest: &Guest) -> Option<String> {
    let out = fetch(guest, "blob", "| sha256sum");
    let sha = out.split_whitespace().next()?.to_string();
    // sha256sum of nothing: the download failed.
    (sha != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").then_some(sha)
}

fn nft_tables(ns: &Netns) -> String {
    exec_ok(ns, &["nft", "list", "tables"])
}

fn ip_forward(ns: &Netns) -> String {
    exec_ok(ns, &["cat", "/proc/sys/net/ipv4/ip_forward"])
        .trim()
        .to_string()
}

#[test]
fn guests_reach_the_internet_with_nat_and_not_without() {
    if skip_unless_root("guests_reach_the_internet_with_nat_and_not_without") {
        return;
    }
    // Without --nat: the internet has no route back to the guests, and nothing forwards.
    let ns = netns("twr");
    let net = internet(&ns);
    let relay = Relay::launch_in(ns, &[], None, None, &[]);
    let guest = relay.leased_guest(0);
    assert_eq!(download(&guest), None, "reached the internet without --nat");
    drop(guest);
    drop(relay);
    drop(net);

    let ns = netns("twr");
    let net = internet(&ns);
    let mut relay = Relay::launch_in(ns, &[], None, None, &["--nat"]);
    assert!(relay.proc().log_text().contains("masqueraded out of twu0"));
    assert_eq!(ip_forward(&relay.ns), "1");
    let table = format!("tapwire_{}", relay.tap);
    assert!(nft_tables(&relay.ns).contains(&table));
    let mut guest = relay.guest(1);
    let guest_ip = guest.dhcp(&relay.dir.0);
    assert_eq!(
        download(&guest).as_deref(),
        Some(net.sha.as_str()),
        "download through NAT"
    );
    // The server sees the relay's uplink address, not the guest's.
    let seen = fetch(&guest, "cgi-bin/addr", "");
    assert!(
        seen.trim()
            .trim_start_matches("[::ffff:")
            .trim_end_matches(']')
            == "198.51.100.1",
        "the server saw {seen:?}"
    );
    // Connections from the uplink into guests are dropped, even with a route to them.
    exec_ok(
        &net.ns,
        &["ip", "route", "add", "10.86.0.0/16", "via", "198.51.100.1"],
    );
    let out = net
        .ns
        .cmd(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &guest_ip])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0 received"),
        "the internet reached a guest: {text}"
    );
    assert!(guest.ping(GATEWAY, 1) == 1, "the guest itself is fine");

    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{}", relay.proc().log_text());
    assert!(!nft_tables(&relay.ns).contains(&table), "table left behind");
    assert_eq!(ip_forward(&relay.ns), "0", "ip_forward not restored");
    drop(net);
}

#[test]
fn sigkill_then_cleanup_or_restart_removes_the_nat_table() {
    if skip_unless_root("sigkill_then_cleanup_or_restart_removes_the_nat_table") {
        return;
    }
    let ns = netns("twr");
    let _net = internet(&ns);
    let tap = unique("twt");
    let mut relay = Relay::launch_in(ns, &[], Some(&tap), None, &["--nat", "--no-dhcp"]);
    let table = format!("tapwire_{tap}");
    relay.signal_and_wait(libc::SIGKILL);
    assert!(
        nft_tables(&relay.ns).contains(&table),
        "a killed run leaves its table"
    );
    let (ok, text) = relay.cleanup();
    assert!(ok, "{text}");
    assert!(
        !nft_tables(&relay.ns).contains(&table),
        "cleanup left the table"
    );
    assert_eq!(
        ip_forward(&relay.ns),
        "0",
        "cleanup did not restore ip_forward"
    );

    // Killed again, then the same instance restarts: it undoes the dead run and starts clean.
    let restart = |name: &str| same_instance(&relay, &tap, name);
    let mut again = restart("again");
    again.proc.signal(libc::SIGKILL);
    again
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    assert!(nft_tables(&relay.ns).contains(&table));
    let mut third = restart("third");
    assert!(third.proc.log_text().contains("did not clean up"));
    assert!(nft_tables(&relay.ns).contains(&table));
    assert_eq!(ip_forward(&relay.ns), "1");
    assert!(third.stop().is_some_and(|s| s.success()));
    assert!(!nft_tables(&relay.ns).contains(&table));
    assert_eq!(
        ip_forward(&relay.ns),
        "0",
        "the original value, not the dead run's 1"
    );
}

/// Another `--nat --no-dhcp` run of `relay`'s instance (its namespace, TAP `tap` and runtime
/// directory) on port 8087, logging as `name`.
fn same_instance(relay: &Relay, tap: &str, name: &str) -> RelayProcess {
    let runtime_dir = relay.runtime_dir.display().to_string();
    let args = [
        "--tap",
        tap,
        "--nat",
        "--no-dhcp",
        "--listen",
        "127.0.0.1:8087",
        "--runtime-dir",
        &runtime_dir,
    ];
    relay
        .another(name, &args)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `--nat` turns IPv4 forwarding on and gives back what it found: a host that already
/// forwarded (a router) still forwards after SIGTERM, and after SIGKILL and `tapwire cleanup`.
#[test]
fn ip_forward_that_was_on_stays_on_after_sigterm_and_after_sigkill_and_cleanup() {
    if skip_unless_root(
        "ip_forward_that_was_on_stays_on_after_sigterm_and_after_sigkill_and_cleanup",
    ) {
        return;
    }
    let ns = netns("twr");
    let _net = internet(&ns);
    exec_ok(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let tap = unique("twt");
    let mut relay = Relay::launch_in(ns, &[], Some(&tap), None, &["--nat", "--no-dhcp"]);
    assert_eq!(ip_forward(&relay.ns), "1");
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{}", relay.proc().log_text());
    assert_eq!(ip_forward(&relay.ns), "1", "SIGTERM turned forwarding off");

    let mut killed = same_instance(&relay, &tap, "killed");
    killed.proc.signal(libc::SIGKILL);
    killed
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    let (ok, text) = relay.cleanup();
    assert!(ok, "{text}");
    assert!(
        !nft_tables(&relay.ns).contains(&format!("tapwire_{tap}")),
        "cleanup left the table"
    );
    assert_eq!(ip_forward(&relay.ns), "1", "cleanup turned forwarding off");
}

#[test]
fn a_forward_chain_with_policy_drop_is_reported_with_the_fix() {
    if skip_unless_root("a_forward_chain_with_policy_drop_is_reported_with_the_fix") {
        return;
    }
    let ns = netns("twr");
    let _net = internet(&ns);
    exec_ok(&ns, &["nft", "add", "table", "ip", "filter"]);
    exec_ok(
        &ns,
        &[
            "nft",
            "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }",
        ],
    );
    let relay = Relay::launch_in(ns, &[], None, None, &["--nat"]);
    let log = relay.proc().log_text();
    assert!(
        log.contains("forward chain \"FORWARD\" with policy drop"),
        "{log}"
    );
    assert!(log.contains(&format!(
        "nft insert rule ip filter FORWARD iifname \"{}\" accept",
        relay.tap
    )));
    let check = relay
        .ns
        .cmd(&[tapwire_bin(), "check"])
        .output()
        .expect("check");
    assert!(String::from_utf8_lossy(&check.stdout).contains("with policy drop"));
    // The other table is left as it was.
    let listing = exec_ok(&relay.ns, &["nft", "list", "table", "ip", "filter"]);
    assert!(listing.contains("policy drop"), "{listing}");
}

//! What production does to a relay: its dnsmasq killed, its nftables table deleted or flushed
//! by someone else, its TAP set down or deleted, its runtime directory full or read-only, the
//! relay stopped and continued under load, and a burst of connections.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// Waits up to `limit` for `cond`; whether it held.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `nft list table inet TABLE` in the relay's namespace, or None when there is no such table.
fn table_listing(relay: &Relay) -> Option<String> {
    let out = relay
        .ns
        .cmd(&[
            "nft",
            "list",
            "table",
            "inet",
            &format!("tapwire_{}", relay.tap),
        ])
        .output()
        .expect("nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How many log lines contain `text`.
fn log_count(relay: &Relay, text: &str) -> usize {
    relay.proc().log_text().matches(text).count()
}

#[test]
fn a_table_deleted_or_flushed_by_someone_else_is_made_again_and_logged() {
    if skip_unless_root("a_table_deleted_or_flushed_by_someone_else_is_made_again_and_logged") {
        return;
    }
    let relay = Relay::start(&[]);
    let table = format!("tapwire_{}", relay.tap);
    let made = table_listing(&relay).expect("the relay made its table");
    assert!(made.contains("chain input"), "{made}");
    // A service of the host that host protection keeps from guests.
    let listener = relay
        .ns
        .enter(|| std::net::TcpListener::bind(("0.0.0.0", 7003)).expect("listen"));
    std::thread::spawn(move || {
        use std::io::Write;
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"hello\n");
        }
    });
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    let closed = || !probe(&guest.ns, GATEWAY, 7003, false).contains("hello");
    assert!(closed(), "host protection is on at the start");

    let cases: [(&[&str], &str); 3] = [
        (
            &["nft", "delete", "table", "inet", &table],
            "was deleted by someone else",
        ),
        (
            &["nft", "flush", "table", "inet", &table],
            "was changed by someone else",
        ),
        (&["nft", "flush", "ruleset"], "was deleted by someone else"),
    ];
    for (n, (command, logged)) in cases.iter().enumerate() {
        let before = log_count(&relay, logged);
        exec_ok(&relay.ns, command);
        assert!(
            eventually(Duration::from_secs(5), || table_listing(&relay).as_ref()
                == Some(&made)),
            "{command:?}: the table was not made again within 5 s: {:?}",
            table_listing(&relay)
        );
        assert!(
            eventually(Duration::from_secs(5), || log_count(&relay, logged)
                == before + 1),
            "{command:?}: no log line \"{logged}\": {}",
            relay.proc().log_text()
        );
        assert_eq!(
            relay.counters().get("tapwire_firewall_restores_total"),
            n as u64 + 1,
            "{command:?}"
        );
        assert!(closed(), "{command:?}: host protection is back");
    }
    // Changes to other tables are looked at and left alone.
    exec_ok(&relay.ns, &["nft", "add", "table", "inet", "someone_elses"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.counters().get("tapwire_firewall_restores_total"), 3);
    assert_eq!(guest.ping(GATEWAY, 3), 3, "guests were served throughout");
}

#[test]
fn a_tap_set_down_is_set_up_again_and_a_deleted_tap_stops_the_relay_cleanly() {
    if skip_unless_root("a_tap_set_down_is_set_up_again_and_a_deleted_tap_stops_the_relay_cleanly")
    {
        return;
    }
    let mut relay = Relay::start(&[]);
    let mut guest = relay.guest(0);
    guest.dhcp(&relay.dir.0);
    assert_eq!(guest.ping(GATEWAY, 3), 3);
    let is_up = |relay: &Relay| {
        let out = exec_ok(&relay.ns, &["ip", "-o", "link", "show", "dev", &relay.tap]);
        let flags = out.split('<').nth(1).and_then(|f| f.split('>').next());
        flags.is_some_and(|f| f.split(',').any(|x| x == "UP"))
    };
    exec_ok(&relay.ns, &["ip", "link", "set", "dev", &relay.tap, "down"]);
    assert!(
        eventually(Duration::from_secs(5), || is_up(&relay)),
        "the TAP was not set up again"
    );
    assert!(
        relay
            .proc()
            .log_text()
            .contains("was set down by someone else: set up again"),
        "{}",
        relay.proc().log_text()
    );
    assert_eq!(relay.counters().get("tapwire_tap_set_up_again_total"), 1);
    assert_eq!(guest.ping(GATEWAY, 3), 3, "guests are served again");

    let dnsmasq = dnsmasq_pids(&relay.proc().log_text());
    assert!(!dnsmasq.is_empty(), "{}", relay.proc().log_text());
    relay.relay.expect_exit();
    exec_ok(&relay.ns, &["ip", "link", "delete", "dev", &relay.tap]);
    let status = relay
        .proc_mut()
        .wait_exit(Duration::from_secs(15))
        .expect("the relay stops when its TAP is deleted");
    let log = relay.proc().log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("was deleted by someone else, and with it the guests' network"),
        "{log}"
    );
    // It undid the rest: its table, its dnsmasq and its ledger are gone; the exit summary
    // is there.
    assert_eq!(table_listing(&relay), None);
    assert!(
        all_gone(&dnsmasq, Duration::from_secs(5)),
        "dnsmasq {dnsmasq:?}"
    );
    assert!(!relay.instance_dir().join("ledger").exists());
    assert!(relay.counters().get("tapwire_connections_accepted_total") >= 1);
    assert!(!links(&relay.ns).contains(&relay.tap));
}

#[test]
fn a_killed_dnsmasq_is_started_again_and_guests_renew() {
    if skip_unless_root("a_killed_dnsmasq_is_started_again_and_guests_renew") {
        return;
    }
    let relay = Relay::start(&[]);
    let mut guest = relay.guest(0);
    let first = guest.dhcp(&relay.dir.0);
    let old = dnsmasq_pids(&relay.proc().log_text());
    let pid = *old.first().expect("dnsmasq logged its pid");
    // SAFETY: signalling the dnsmasq this test's relay started, by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(10), || relay
            .proc()
            .log_text()
            .contains("dnsmasq started again")),
        "{}",
        relay.proc().log_text()
    );
    let log = relay.proc().log_text();
    assert!(log.contains("dnsmasq exited ("), "{log}");
    assert_eq!(relay.counters().get("tapwire_dnsmasq_restarts_total"), 1);
    // The new dnsmasq serves: the guest asks again and gets its address back (the lease file
    // survived), and DNS answers.
    let again = guest.dhcp(&relay.dir.0);
    assert_eq!(again, first);
    assert_eq!(guest.ping(GATEWAY, 3), 3);
}

#[test]
fn a_runtime_directory_read_only_or_full_stops_the_start_with_what_to_do() {
    if skip_unless_root("a_runtime_directory_read_only_or_full_stops_the_start_with_what_to_do") {
        return;
    }
    let ns = netns("twf");
    let dir = TempDir::new();
    let run = dir.0.join("run");
    std::fs::create_dir_all(&run).expect("dir");
    let run = run.display().to_string();
    let tap = tapwire_testkit::netns::unique("twf");
    // Each in a private mount namespace, so the mount goes with the process.
    let cases = [
        (
            format!("mount -t tmpfs -o ro,size=64k tmpfs {run}"),
            "--runtime-dir is on a read-only file system",
        ),
        (
            format!("mount -t tmpfs -o size=8k tmpfs {run} && head -c 65536 /dev/zero > {run}/fill; true"),
            "the file system of --runtime-dir is full",
        ),
    ];
    for (mount, advice) in cases {
        let script = format!(
            "{mount} && exec {} run --listen 127.0.0.1:8086 --cores 1 --tap {tap} --runtime-dir {run}",
            tapwire_bin()
        );
        let out = ns
            .cmd(&[
                "timeout",
                "30",
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .expect("unshare");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mount}: {err}");
        assert!(err.contains(advice), "{mount}: {err}");
        assert!(links(&ns).is_empty(), "{mount}: it left {:?}", links(&ns));
        let tables = exec_ok(&ns, &["nft", "list", "tables"]);
        assert!(tables.trim().is_empty(), "{mount}: it left {tables}");
    }
}

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
    // The control: the service answers where no rule stands in the way (from the host).
    assert!(
        probe(&relay.ns, "127.0.0.1", 7003, false).contains("hello"),
        "the host service does not answer at all"
    );
    let guest = relay.leased_guest(0);
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
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(relay.counters().get("tapwire_firewall_restores_total"), 3);
    let tables = exec_ok(&relay.ns, &["nft", "list", "tables"]);
    assert!(tables.contains("inet someone_elses"), "{tables}");
    assert_eq!(table_listing(&relay).as_ref(), Some(&made));
    assert_eq!(guest.ping(GATEWAY, 3), 3, "guests were served throughout");
}

#[test]
fn a_tap_set_down_is_set_up_again_and_a_deleted_tap_stops_the_relay_cleanly() {
    if skip_unless_root("a_tap_set_down_is_set_up_again_and_a_deleted_tap_stops_the_relay_cleanly")
    {
        return;
    }
    let mut relay = Relay::start(&[]);
    let guest = relay.leased_guest(0);
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

/// Open descriptors and core threads of `pid` (other threads come and go: tokio's blocking
/// pool keeps an idle thread for 10 s).
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |r| r.count());
    let cores = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("tapwire-core"))
        })
        .count();
    (fds, cores)
}

#[test]
fn a_relay_stopped_for_5_s_under_load_goes_on_with_every_client() {
    if skip_unless_root("a_relay_stopped_for_5_s_under_load_goes_on_with_every_client") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let relay = Relay::start(&[]);
    let guest = relay.leased_guest(0);
    let (rx, tx) = (mac(0x71), mac(0x72));
    let mut receiver = relay.client(None);
    receiver.send_frame(&eth(BROADCAST, rx, b"learn me"));
    let mut sender = relay.client(None);
    until_delivered(&mut sender, &mut receiver, rx, tx);
    let pid = relay.relay.pid();
    let before = fds_and_threads(pid);

    // The sender writes numbered frames with blocking writes (a write timeout could cut a
    // frame in two) until told to stop; the receiver counts them and checks their order.
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU32::new(0));
    let sending = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u32;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(40)
                && sent < 5_000_000
            {
                sender.send_frame(&eth(rx, tx, &sent.to_be_bytes()));
                sent += 1;
            }
            (sender, sent)
        })
    };
    let receiving = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut last = None;
            loop {
                match receiver.recv_frame(Duration::from_secs(2)) {
                    Some(f) if f[6..12] == tx && f.len() == 18 => {
                        let n = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
                        assert!(last < Some(n), "frame {n} after {last:?}");
                        last = Some(n);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None if stop.load(Ordering::Relaxed) => return receiver,
                    None => {}
                }
            }
        })
    };
    let flowing = |d| {
        let at = received.load(Ordering::Relaxed);
        eventually(d, || received.load(Ordering::Relaxed) > at + 1_000)
    };
    assert!(flowing(Duration::from_secs(10)), "no load before the stop");
    relay.proc().signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    relay.proc().signal(libc::SIGCONT);
    assert!(flowing(Duration::from_secs(10)), "the load did not resume");
    stop.store(true, Ordering::Relaxed);
    let (mut sender, sent) = sending.join().expect("sender");
    let mut receiver = receiving.join().expect("receiver");
    eprintln!(
        "{sent} frames sent, {} received across a 5 s SIGSTOP",
        received.load(Ordering::Relaxed)
    );
    // Every client is still there and served: both ways between the two, and the guest.
    until_delivered(&mut sender, &mut receiver, rx, tx);
    until_delivered(&mut receiver, &mut sender, tx, rx);
    assert_eq!(guest.ping(GATEWAY, 3), 3);
    let c = relay.counters();
    assert_eq!(c.get("tapwire_connections_closed_total"), 0, "{c:?}");
    assert_eq!(
        c.get("tapwire_clients_open"),
        3,
        "the two and the guest: {c:?}"
    );
    assert_eq!(before.1, 2, "two core threads");
    // The scrape's own connection to the metrics listener closes on its own time.
    assert!(
        eventually(Duration::from_secs(5), || fds_and_threads(pid) == before),
        "descriptors and core threads: {:?} before, {:?} after",
        before,
        fds_and_threads(pid)
    );
}

#[test]
fn ten_thousand_connections_in_one_burst_are_all_served_and_freed() {
    if skip_unless_root("ten_thousand_connections_in_one_burst_are_all_served_and_freed") {
        return;
    }
    const BURST: usize = 10_000;
    // Room for the burst in this process (the relay raises its own limit to the hard one).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert!(
        limit.rlim_max >= BURST as u64 + 1_000,
        "this test needs {} open files; the hard limit is {} (raise it: ulimit -Hn)",
        BURST + 1_000,
        limit.rlim_max
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let relay = Relay::start(&[]);
    let port = relay.port;
    let opened = relay.ns.enter(move || {
        // Four threads connect at once, then each sends its upgrades.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let streams: Vec<std::net::TcpStream> = (0..BURST / 4)
                        .map(|_| {
                            std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect")
                        })
                        .collect();
                    streams
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("connector"))
            .collect::<Vec<_>>()
    });
    assert_eq!(opened.len(), BURST);
    // None waits in the kernel's accept queue: the relay took every one.
    assert!(
        eventually(Duration::from_secs(20), || relay
            .counters()
            .get("tapwire_connections_accepted_total")
            == BURST as u64),
        "accepted {} of {BURST}",
        relay.counters().get("tapwire_connections_accepted_total")
    );
    let queued = exec_ok(&relay.ns, &["ss", "-Hltn", "sport", "=", ":8086"]);
    for line in queued.lines() {
        let recv_q = line.split_whitespace().nth(1).unwrap_or("?");
        assert_eq!(recv_q, "0", "accept queue not empty: {queued}");
    }
    // Every one upgrades and is a client; then all leave and every slot is freed.
    let clients = upgrade_all(opened);
    assert_eq!(relay.counters().get("tapwire_clients_open"), BURST as u64);
    drop(clients);
    assert!(
        eventually(Duration::from_secs(20), || relay
            .counters()
            .get("tapwire_clients_open")
            == 0),
        "clients left open: {}",
        relay.counters().get("tapwire_clients_open")
    );
    let c = relay.counters();
    assert_eq!(
        c.get("tapwire_connections_closed_total"),
        BURST as u64,
        "{c:?}"
    );
    // And the relay still serves a newcomer.
    let guest = relay.leased_guest(0);
    assert_eq!(guest.ping(GATEWAY, 3), 3);
}

/// Sends a WebSocket upgrade on every stream and reads each 101.
fn upgrade_all(streams: Vec<std::net::TcpStream>) -> Vec<std::net::TcpStream> {
    use std::io::{Read, Write};
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut streams = streams;
    for s in &mut streams {
        s.write_all(request).expect("upgrade request");
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!("connection {i}: no answer to its upgrade ({other:?})"),
            }
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "connection {i}: {}",
            String::from_utf8_lossy(&head)
        );
    }
    streams
}

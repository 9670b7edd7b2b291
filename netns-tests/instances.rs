//! Many relays on one host: an instance is (network namespace, TAP name), and no instance's
//! start, stop or cleanup touches another's TAP, address, dnsmasq or files.

use std::path::Path;
use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// The pids of the dnsmasq processes (the guard and dnsmasq itself) running in `ns`.
fn dnsmasq_in(ns: &Netns) -> Vec<u32> {
    let script = r#"me=$(readlink /proc/self/ns/net); for p in /proc/[0-9]*; do [ "$(readlink $p/ns/net 2>/dev/null)" = "$me" ] && grep -qx dnsmasq $p/comm 2>/dev/null && echo ${p#/proc/}; done; true"#;
    let out = exec_ok(ns, &["sh", "-c", script]);
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn still_alive_for(pids: &[u32], d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if !pids.iter().all(|p| pid_alive(*p)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Items: default state keyed by namespace, and stopping or cleaning up one relay leaves
/// another relay's dnsmasq alone, even with the same TAP name and runtime directory.
#[test]
fn relays_in_two_namespaces_with_default_names_run_and_stop_alone() {
    if skip_unless_root("relays_in_two_namespaces_with_default_names_run_and_stop_alone") {
        return;
    }
    // One shared runtime directory, as /run/tapwire is shared by every namespace.
    let shared = TempDir::new();
    let run = shared.0.join("run");
    let mut a = Relay::launch(&[], Some("tapwire0"), Some(&run), &[]);
    let b = Relay::launch(&[], Some("tapwire0"), Some(&run), &[]);
    assert_ne!(a.instance_dir(), b.instance_dir());
    let b_dnsmasq = dnsmasq_in(&b.ns);
    assert!(!b_dnsmasq.is_empty(), "b runs a dnsmasq");
    let guest = b.leased_guest(0);

    let status = a.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{}", a.proc().log_text());
    assert!(
        still_alive_for(&b_dnsmasq, Duration::from_secs(2)),
        "stopping a killed b's dnsmasq:\n{}",
        b.proc().log_text()
    );
    assert!(!b.proc().log_text().contains("dnsmasq exited"));
    assert!(!a.instance_dir().exists(), "a removed its own state");
    assert!(
        b.instance_dir().join("ledger").exists(),
        "b's ledger untouched"
    );

    // A SIGKILLed run in a third namespace, cleaned up from inside it: b is skipped.
    let mut c = Relay::launch(&[], Some("tapwire0"), Some(&run), &[]);
    c.signal_and_wait(libc::SIGKILL);
    let (ok, text) = c.cleanup();
    assert!(ok, "{text}");
    assert!(text.contains("undid"), "{text}");
    assert!(
        text.contains(&format!("tapwire (pid {}) is still running", b.relay.pid())),
        "{text}"
    );
    assert!(!c.instance_dir().exists(), "{text}");
    assert!(
        still_alive_for(&b_dnsmasq, Duration::from_secs(1)),
        "cleanup killed b's dnsmasq"
    );
    assert!(b.tap_addresses().contains(GATEWAY));
    assert_eq!(guest.ping(GATEWAY, 2), 2, "b still relays");

    // A SIGKILLed run whose namespace is then deleted (a CI job's): a cleanup from another
    // namespace removes its files and touches nothing else.
    let mut d = Relay::launch(&[], Some("tapwire0"), Some(&run), &[]);
    let d_dir = d.instance_dir();
    d.signal_and_wait(libc::SIGKILL);
    drop(d);
    assert!(d_dir.join("ledger").exists());
    let (ok, text) = b.cleanup();
    assert!(ok, "{text}");
    assert!(text.contains("its network namespace is gone"), "{text}");
    assert!(!d_dir.exists(), "{text}");
    assert!(
        b.instance_dir().join("ledger").exists(),
        "b's ledger untouched"
    );
    assert_eq!(guest.ping(GATEWAY, 2), 2, "b still relays");
}

/// A run on a TAP that exists (another relay's, whatever its runtime directory or subnet) is
/// refused before it changes anything, and names the holder.
#[test]
fn a_second_run_on_an_existing_tap_is_refused_and_harms_nothing() {
    if skip_unless_root("a_second_run_on_an_existing_tap_is_refused_and_harms_nothing") {
        return;
    }
    let a = Relay::start(&[]);
    let dnsmasq = dnsmasq_in(&a.ns);
    let other = TempDir::new();
    let other_run = other.0.join("run").display().to_string();
    for (name, subnet) in [
        ("same-subnet", "10.86.0.0/16"),
        ("other-subnet", "10.87.0.0/16"),
    ] {
        let err = a
            .another(
                name,
                &[
                    "--tap",
                    &a.tap,
                    "--runtime-dir",
                    &other_run,
                    "--listen",
                    "127.0.0.1:8087",
                    "--subnet",
                    subnet,
                ],
            )
            .err()
            .unwrap_or_else(|| panic!("{name}: a second run on {} started", a.tap))
            .to_string();
        assert!(err.contains("already exists"), "{name}: {err}");
        assert!(
            err.contains(&format!("pid {}", a.relay.pid())),
            "{name}: {err}"
        );
        assert!(
            a.tap_addresses().contains(GATEWAY),
            "{name}: a lost its address"
        );
        assert!(
            still_alive_for(&dnsmasq, Duration::from_millis(500)),
            "{name}: a lost its dnsmasq"
        );
    }
    assert!(
        std::fs::read_dir(other.0.join("run"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "the refused runs left no state"
    );
    let guest = a.leased_guest(1);
    assert_eq!(guest.ping(GATEWAY, 2), 2);
}

/// Two runs on one TAP and one runtime directory started at the same instant: one wins, the
/// other is refused and the winner keeps its address and dnsmasq (the ledger lock decides).
#[test]
fn runs_started_at_the_same_instant_leave_the_winner_intact() {
    if skip_unless_root("runs_started_at_the_same_instant_leave_the_winner_intact") {
        return;
    }
    let ns = netns("twx");
    let dir = TempDir::new();
    let run = dir.0.join("run").display().to_string();
    let tap = unique("twt");
    for round in 0..10 {
        let procs: Vec<Proc> = (0..2)
            .map(|i| {
                let mut cmd = ns.cmd(&[
                    tapwire_bin(),
                    "run",
                    "--tap",
                    &tap,
                    "--runtime-dir",
                    &run,
                    "--cores",
                    "1",
                ]);
                cmd.args(["--listen", &format!("127.0.0.1:{}", 8090 + i)]);
                Proc::spawn(cmd, dir.0.join(format!("r{round}-{i}.log"))).expect("spawn")
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let settled = |p: &Proc| {
            let t = p.log_text();
            t.contains("relaying ws://") || t.contains("tapwire: ")
        };
        while !procs.iter().all(settled) {
            assert!(
                Instant::now() < deadline,
                "round {round}: runs did not settle"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mut winners, losers): (Vec<Proc>, Vec<Proc>) = procs
            .into_iter()
            .partition(|p| p.log_text().contains("relaying ws://"));
        assert_eq!(winners.len(), 1, "round {round}: one run wins");
        let loser = losers[0].log_text();
        assert!(
            loser.contains("already running") || loser.contains("already exists"),
            "round {round}: {loser}"
        );
        assert!(
            !loser.contains("did not clean up"),
            "round {round}: took a live ledger: {loser}"
        );
        let addrs = exec_ok(&ns, &["ip", "-4", "-o", "addr", "show", "dev", &tap]);
        assert!(
            addrs.contains(GATEWAY),
            "round {round}: the winner lost its address"
        );
        let dnsmasq = dnsmasq_in(&ns);
        assert!(
            !dnsmasq.is_empty(),
            "round {round}: the winner's dnsmasq is gone"
        );
        let winner = &mut winners[0];
        winner.signal(libc::SIGTERM);
        let status = winner.wait_exit(Duration::from_secs(15)).expect("exits");
        assert!(status.success(), "{}", winner.log_text());
        assert!(links(&ns).is_empty(), "round {round}: a link is left");
    }
    assert!(
        std::fs::read_dir(Path::new(&run))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "no state left"
    );
}

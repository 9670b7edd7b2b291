//! Host state: SIGTERM and SIGKILL + `tapwire cleanup` leave nothing behind.

use std::time::Duration;

use super::harness::*;

#[test]
fn sigterm_closes_clients_with_1001_and_leaves_nothing() {
    if skip_unless_root("sigterm_closes_clients_with_1001_and_leaves_nothing") {
        return;
    }
    let mut relay = Relay::start(&[]);
    let mut guest = relay.leased_guest(1);
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
    assert!(!relay.instance_dir().exists(), "no file left");
    assert!(
        relay
            .proc()
            .log_text()
            .contains("tapwire_connections_closed_total"),
        "every counter printed at exit with --log-level debug"
    );
    assert!(
        relay.proc().log_text().contains(" clients served, "),
        "and the paragraph"
    );
}

#[test]
fn a_relay_at_the_default_log_level_ends_with_one_paragraph_and_prints_every_counter_on_sigusr1() {
    if skip_unless_root(
        "a_relay_at_the_default_log_level_ends_with_one_paragraph_and_prints_every_counter_on_sigusr1",
    ) {
        return;
    }
    let ns = netns("twr");
    let dir = TempDir::new();
    let args: Vec<String> = [
        "--tap",
        &unique("twt"),
        "--runtime-dir",
        &dir.0.join("run").display().to_string(),
        "--log-level",
        "info",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut relay = RelayProcess::start(
        &ns,
        &[],
        std::path::Path::new(tapwire_bin()),
        &args,
        dir.0.join("relay.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut client = WsClient::new(
        ns.enter(|| tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", None))
            .expect("connect"),
    );
    client.send_frame(&eth(BROADCAST, mac(1), b"hello"));
    // SIGUSR1: every counter, in Prometheus text (what try_counters reads without --metrics).
    let c = relay.try_counters().expect("counters on SIGUSR1");
    assert_eq!(c.get("tapwire_connections_upgraded_total"), 1);
    relay.stop().expect("it stops");
    let log = relay.proc.log_text();
    assert_eq!(
        log.matches("# HELP tapwire_clients_open").count(),
        1,
        "the full counters only on SIGUSR1, not at exit: {log}"
    );
    let last = log.lines().last().unwrap_or("");
    assert!(
        last.contains("ran ")
            && last.contains(": 1 client served, 1 at most at once; from guests 1 frame (")
            && last.contains("kill -USR1"),
        "{last}"
    );
}

#[test]
fn sigkill_then_cleanup_leaves_nothing() {
    if skip_unless_root("sigkill_then_cleanup_leaves_nothing") {
        return;
    }
    let mut relay = Relay::start(&[]);
    let _guest = relay.leased_guest(0);
    let dnsmasq = dnsmasq_pids(&relay.proc().log_text());
    relay.signal_and_wait(libc::SIGKILL);
    let ledger = relay.instance_dir().join("ledger");
    assert!(ledger.exists(), "a killed run leaves its ledger");
    // dnsmasq dies with tapwire even on SIGKILL (its guard holds the parent-death signal).
    assert!(
        all_gone(&dnsmasq, Duration::from_secs(5)),
        "dnsmasq outlived a SIGKILLed tapwire"
    );
    let (ok, text) = relay.cleanup();
    assert!(ok, "cleanup failed: {text}");
    assert!(text.contains("undid"), "{text}");
    assert!(!relay.instance_dir().exists(), "ledger and files removed");
    assert_eq!(links(&relay.ns), Vec::<String>::new(), "no link left");
    assert!(all_gone(&dnsmasq, Duration::from_secs(5)), "dnsmasq gone");
    // A second cleanup finds nothing to do.
    let (_, again) = relay.cleanup();
    assert!(again.contains("nothing to clean up"), "{again}");
}

#[test]
fn check_reports_every_requirement_and_leaves_nothing() {
    if skip_unless_root("check_reports_every_requirement_and_leaves_nothing") {
        return;
    }
    let ns = netns("twc");
    let out = ns.cmd(&[tapwire_bin(), "check"]).output().expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "ok   kernel ",
        "kernel.io_uring_disabled",
        "ok   io_uring_setup works",
        "ok   io_uring op recv: supported",
        "ok   io_uring op sendmsg: supported",
        "client receive: ",
        "TAP read (Linux 6.7): ",
        "ok   provided-buffer rings: supported",
        "ok   /dev/net/tun opens",
        "ok   CAP_NET_ADMIN held",
        "ok   dnsmasq found",
        "ok   dhcp_release found",
        "open-file limit ",
        "ok   --network-pool 10.96.0.0/12: 4096 of 4096 /24 blocks free",
        "TAP queue steering by destination MAC (eBPF) attaches",
        "tapwire can run here",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // The throwaway TAP of the steering check is gone with its descriptor.
    assert_eq!(links(&ns), Vec::<String>::new(), "no link left");
}

/// Under a seccomp filter that answers ENOSYS for io_uring_setup (as podman's default profile
/// does), `tapwire check` blames the filter, not the kernel. (The filter below is written for
/// x86-64 system call numbers.)
#[cfg(target_arch = "x86_64")]
#[test]
fn check_blames_a_seccomp_filter_that_answers_enosys() {
    if skip_unless_root("check_blames_a_seccomp_filter_that_answers_enosys") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(tapwire_bin());
    cmd.arg("check");
    // SAFETY: runs in the forked child before exec and only calls prctl with a filter program
    // that lives on this (the child's) stack until the call returns; prctl is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
            const RET_ALLOW: u32 = 0x7fff_0000;
            const RET_ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
            let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
            // ld [4] (arch); jeq x86_64 ? next : allow; ld [0] (nr); jeq io_uring_setup ? enosys : allow
            let program = [
                op(0x20, 0, 0, 4),
                op(0x15, 0, 3, AUDIT_ARCH_X86_64),
                op(0x20, 0, 0, 0),
                op(0x15, 0, 1, libc::SYS_io_uring_setup as u32),
                op(0x06, 0, 0, RET_ENOSYS),
                op(0x06, 0, 0, RET_ALLOW),
            ];
            let prog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("check under seccomp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL io_uring_setup failed")
            && text.contains(
                "a seccomp filter blocks io_uring (podman's default profile answers ENOSYS"
            ),
        "{text}"
    );
    assert!(!text.contains("built without io_uring"), "{text}");
}

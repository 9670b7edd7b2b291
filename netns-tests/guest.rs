//! Kernel-stack guests for the scenarios: `tapwire-guest` in a namespace of its own, placed
//! on a relay core by its source port, and what its tools print.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{netns, tool_bin, Netns, Proc};

/// Starts `tapwire-guest` in `relay_ns` on the relay at `url`, with its TAP in a new namespace,
/// optionally from `source_port`; returns once the guest's `eth0` exists. Logs go to `log_dir`.
pub fn spawn_guest(relay_ns: &Netns, url: &str, log_dir: &Path, source_port: Option<u16>) -> Guest {
    spawn_guest_with(relay_ns, url, log_dir, source_port, None, &[])
}

/// [`spawn_guest`] that trusts the PEM file `ca` for a wss:// `url`, with `extra` arguments
/// for `tapwire-guest`.
pub fn spawn_guest_with(
    relay_ns: &Netns,
    url: &str,
    log_dir: &Path,
    source_port: Option<u16>,
    ca: Option<&Path>,
    extra: &[&str],
) -> Guest {
    let ns = netns("twg");
    let ca = ca.map(|p| p.display().to_string());
    let guest_bin = tool_bin("tapwire-guest");
    let port = source_port.map(|p| p.to_string());
    let mut args = vec![
        guest_bin.as_str(),
        "--url",
        url,
        "--netns",
        &ns.name,
        "--tap",
        "eth0",
    ];
    if let Some(p) = &port {
        args.extend(["--source-port", p.as_str()]);
    }
    if let Some(ca) = &ca {
        args.extend(["--ca", ca.as_str()]);
    }
    args.extend(extra);
    let proc = Proc::spawn(
        relay_ns.cmd(&args),
        log_dir.join(format!("{}.log", ns.name)),
    )
    .expect("guest");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns
        .cmd(&["ip", "link", "show", "eth0"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "guest TAP did not appear: {}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Guest { proc, ns, ip: None }
}

static PORT: AtomicUsize = AtomicUsize::new(0);

/// A free-looking source port that [`tapwire::control::listen::steer`] puts on `core` of 2.
pub fn source_port_for_core(core: usize) -> u16 {
    let base = 20_000 + (std::process::id() as usize % 5_000) * 4;
    loop {
        let p = (base + PORT.fetch_add(1, Ordering::Relaxed)) as u16;
        if tapwire::control::listen::steer(p, 2) == core {
            return p;
        }
    }
}

/// A guest whose network stack is the kernel's, in its own namespace.
pub struct Guest {
    pub proc: Proc,
    pub ip: Option<String>,
    pub ns: Netns,
}

const UDHCPC_SCRIPT: &str = "#!/bin/sh\ncase \"$1\" in\n  bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/${mask:-16}\" dev \"$interface\"; echo \"LEASE $ip\" ;;\nesac\n";

impl Guest {
    /// Takes a DHCP lease with busybox udhcpc; returns the address.
    pub fn dhcp(&mut self, dir: &Path) -> String {
        let script = dir.join("udhcpc.sh");
        if !script.exists() {
            std::fs::write(&script, UDHCPC_SCRIPT).expect("script");
            std::process::Command::new("chmod")
                .arg("+x")
                .arg(&script)
                .status()
                .expect("chmod");
        }
        let out = self
            .ns
            .cmd(&[
                "timeout", "60", "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "10", "-T",
                "2", "-s",
            ])
            .arg(&script)
            .output()
            .expect("udhcpc");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let ip = text
            .lines()
            .find_map(|l| l.strip_prefix("LEASE "))
            .unwrap_or_else(|| panic!("no DHCP lease: {text}"))
            .trim()
            .to_string();
        self.ip = Some(ip.clone());
        ip
    }

    /// Pings `target` `count` times; returns how many answers came back.
    pub fn ping(&self, target: &str, count: u32) -> u32 {
        let out = self
            .ns
            .cmd(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "3",
                target,
            ])
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                l.split(", ")
                    .find_map(|p| p.strip_suffix(" received"))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Starts a ping in the background (bounded by `count`).
    pub fn ping_background(&self, target: &str, count: u32, log: PathBuf) -> Proc {
        Proc::spawn(
            self.ns.cmd(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "3",
                target,
            ]),
            log,
        )
        .expect("ping")
    }
}

/// Result of a background ping: (transmitted, received).
pub fn ping_result(log: &str) -> (u32, u32) {
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("");
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

/// The round-trip times (ms) of the replies in a ping's output (`time=0.123 ms`).
pub fn ping_rtts(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Waits (at most `limit`) for the background ping `pinger` to finish; (transmitted, received).
pub fn ping_outcome(pinger: &mut Proc, limit: Duration) -> (u32, u32) {
    pinger.wait_exit(limit).expect("ping finished");
    ping_result(&pinger.log_text())
}

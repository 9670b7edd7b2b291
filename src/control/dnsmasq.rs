//! The managed dnsmasq: DHCP (and DNS) for the guest subnet on the TAP, and for every
//! network's subnet on its TAP.
//!
//! Started with `--no-ping` (no 3 s probe per lease), its own lease file in tapwire's runtime
//! directory, no configuration file, bound to the TAP only, and with networks to their TAPs
//! as they come and go (`--bind-dynamic` and a wildcard interface, with one DHCP range per
//! block of the network pool that may be handed out, declared up front: a network made or
//! removed never restarts dnsmasq or interrupts another network's DHCP). It dies with tapwire even on
//! SIGKILL (parent-death signal), is restarted with back-off if it exits on its own, and is
//! stopped (SIGTERM, then SIGKILL) on shutdown.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::{Dhcp, Slice, Subnet};

/// Finds the dnsmasq binary.
pub fn find() -> Option<PathBuf> {
    super::find_program("dnsmasq")
}

/// The error when it is missing.
pub const MISSING: &str = "dnsmasq not found: install it with `apt-get install dnsmasq-base`, or run with --no-dhcp (guests then need static addresses)";

/// Everything needed to start (and restart) the dnsmasq of one run: built once from the
/// configuration.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub args: Vec<String>,
    /// The lease file (in tapwire's runtime directory; ledgered so cleanup removes it).
    pub lease_file: PathBuf,
}

impl Launch {
    /// The dnsmasq of `cfg`, if it runs one (a routed TAP with DHCP); an error when dnsmasq
    /// is needed and missing.
    /// `dir` is the instance's state directory (see [`super::instance`]).
    pub fn for_config(
        cfg: &crate::config::Config,
        dir: &Path,
    ) -> Result<Option<Launch>, &'static str> {
        let crate::config::HostSide::Routed {
            subnet,
            dhcp: Some(dhcp),
        } = &cfg.host
        else {
            return Ok(None);
        };
        let binary = find().ok_or(MISSING)?;
        let lease_file = dir.join("dnsmasq.leases");
        // Declared networks' ranges as declared, then every block networks made on demand
        // may take.
        let mut ranges: Vec<(Subnet, (std::net::Ipv4Addr, std::net::Ipv4Addr))> = cfg
            .networks
            .declared
            .iter()
            .map(|d| (d.subnet, d.dhcp_range))
            .collect();
        if cfg.networks.max_networks > 0 {
            for block in cfg.networks.pool.reachable() {
                if !ranges.iter().any(|(s, _)| *s == block) {
                    ranges.push((block, crate::config::default_range(&block)));
                }
            }
        }
        let mut args = arguments(
            &cfg.tap,
            subnet,
            dhcp,
            &ranges,
            &lease_file,
            cfg.log_level >= log::LevelFilter::Debug,
            cfg.farm.slice,
        );
        args.extend(
            cfg.reservations
                .iter()
                .chain(cfg.networks.declared.iter().flat_map(|d| &d.reservations))
                .map(|r| format!("--dhcp-host={},{}", r.mac, r.ip)),
        );
        Ok(Some(Launch {
            binary,
            args,
            lease_file,
        }))
    }

    /// Starts it (see [`spawn`]).
    pub fn spawn(&self) -> std::io::Result<Child> {
        spawn(&self.binary, &self.args)
    }
}

/// The tag dnsmasq sets on a DHCPREQUEST (option 53, type 3), which alone may use the whole
/// of a range cut for a farm.
const REQUEST_TAG: &str = "tw-request";

/// `--dhcp-range` arguments for `first..=last` (`tags`: `set:NAME,` or nothing). In a farm
/// (`slice`), new leases come from this host's slice only, and a DHCPREQUEST may have any
/// address of the range: a guest that moved here from another host of the farm renews the
/// lease that host gave (dnsmasq NAKs a request for an address outside every range it may
/// use, and `--dhcp-authoritative` lets it ACK a lease it has no record of).
fn range_args(
    tags: &str,
    (first, last): (std::net::Ipv4Addr, std::net::Ipv4Addr),
    mask: std::net::Ipv4Addr,
    lease_secs: u64,
    slice: Option<Slice>,
) -> Vec<String> {
    match slice.and_then(|s| s.of((first, last))) {
        None => vec![format!(
            "--dhcp-range={tags}{first},{last},{mask},{lease_secs}"
        )],
        Some((own_first, own_last)) => vec![
            format!("--dhcp-range={tags}{own_first},{own_last},{mask},{lease_secs}"),
            format!("--dhcp-range=tag:{REQUEST_TAG},{tags}{first},{last},{mask},{lease_secs}"),
        ],
    }
}

/// Command-line arguments for serving `subnet` on `ifname`, and each of `ranges` (a subnet and
/// its DHCP range) on the networks' TAPs (named `ifname`n<slot>); every range cut for the
/// farm when this host is one of several (`slice`).
fn arguments(
    ifname: &str,
    subnet: &Subnet,
    dhcp: &Dhcp,
    ranges: &[(Subnet, (std::net::Ipv4Addr, std::net::Ipv4Addr))],
    lease_file: &Path,
    debug: bool,
    slice: Option<Slice>,
) -> Vec<String> {
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--log-facility=-".to_string(),
        "--conf-file=/dev/null".to_string(),
        "--pid-file=".to_string(),
        format!("--interface={ifname}"),
    ];
    if ranges.is_empty() {
        args.push("--bind-interfaces".to_string());
    } else {
        // The networks' TAPs come and go: listen on each as it appears.
        args.push(format!("--interface={ifname}n*"));
        args.push("--bind-dynamic".to_string());
    }
    let range_size = |first: std::net::Ipv4Addr, last: std::net::Ipv4Addr| {
        u32::from(last) - u32::from(first) + 1
    };
    let mut lease_max = range_size(dhcp.range.0, dhcp.range.1);
    args.extend([
        "--except-interface=lo".to_string(),
        "--no-ping".to_string(),
        "--dhcp-authoritative".to_string(),
        // A lease is a MAC's: a client-identifier option (which a guest chooses freely) must
        // not get one guest a second lease (anti-spoofing binds addresses to MACs).
        "--dhcp-ignore-clid".to_string(),
        format!("--dhcp-leasefile={}", lease_file.display()),
        // A network's router is dnsmasq's own address on its TAP, the network's gateway.
        format!(
            "--dhcp-option=tag:default,option:router,{}",
            subnet.gateway()
        ),
    ]);
    let lease_secs = dhcp.lease_time.as_secs();
    if slice.is_some() {
        // Option 53 (message type) is 3, one byte: dnsmasq 2.90 takes a bare `3` for this
        // option as too long ("dhcp-option too long"), `3b` is its one-byte form.
        args.push(format!("--dhcp-match=set:{REQUEST_TAG},53,3b"));
    }
    args.extend(range_args(
        "set:default,",
        dhcp.range,
        subnet.netmask(),
        lease_secs,
        slice,
    ));
    for (block, range) in ranges {
        lease_max += range_size(range.0, range.1);
        args.extend(range_args("", *range, block.netmask(), lease_secs, slice));
    }
    // dnsmasq stops at 1000 leases by default; a farm has as many guests as addresses.
    args.push(format!("--dhcp-lease-max={lease_max}"));
    if !dhcp.dns.is_empty() {
        let list: Vec<String> = dhcp.dns.iter().map(|ip| ip.to_string()).collect();
        // Networks get their own gateway (dnsmasq's default): host protection lets a
        // network's guests reach DNS there only.
        args.push(format!(
            "--dhcp-option=tag:default,option:dns-server,{}",
            list.join(",")
        ));
    }
    if debug {
        args.push("--log-dhcp".to_string());
    }
    args
}

/// The guard around dnsmasq. dnsmasq drops to its own user, and a change of credentials
/// clears the parent-death signal (prctl(2)), so it would outlive a SIGKILLed tapwire. This
/// `sh` keeps root and the parent-death signal, and its trap takes dnsmasq down with it; if
/// dnsmasq exits by itself, the guard exits with its status.
const GUARD: &str = r#"trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT HUP
"$0" "$@" &
child=$!
wait "$child""#;

/// Starts dnsmasq under its guard; its output goes to tapwire's log. The returned child is
/// the guard: stopping it stops dnsmasq.
pub fn spawn(binary: &Path, args: &[String]) -> std::io::Result<Child> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(GUARD)
        .arg(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl
    // system call, which is async-signal-safe. The guard never changes credentials, so the
    // setting holds.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("FAILED") || line.contains("failed") || line.contains("error") {
                    log::warn!("dnsmasq: {line}");
                } else {
                    log::debug!("dnsmasq: {line}");
                }
            }
        });
    }
    Ok(child)
}

/// Stops the guard (and with it dnsmasq): SIGTERM, then SIGKILL after `grace`.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        crate::processes::signal(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Back-off before restart number `n` (1 s doubling, at most 30 s).
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(5)).min(Duration::from_secs(30))
}

/// A dnsmasq that ran this long was healthy: its exit starts the back-off afresh.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Exits of dnsmasq in a row, each within [`HEALTHY_RUN`] of its start.
#[derive(Debug, Default)]
pub struct Restarts(u32);

impl Restarts {
    /// The wait before starting again a dnsmasq that exited after running for `ran`.
    pub fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.0 = 0;
        }
        let delay = backoff(self.0);
        self.0 = self.0.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_cover_the_policy() {
        let subnet: Subnet = "10.86.0.0/16".parse().unwrap();
        let dhcp = Dhcp {
            range: (
                "10.86.0.10".parse().unwrap(),
                "10.86.255.254".parse().unwrap(),
            ),
            lease_time: Duration::from_secs(3600),
            dns: vec!["10.86.0.1".parse().unwrap()],
        };
        // The instance's TAP, subnet, DHCP and lease file, with networks' `ranges` and a
        // farm's `slice`.
        let args_with = |ranges: &[(Subnet, (std::net::Ipv4Addr, std::net::Ipv4Addr))],
                         slice: Option<Slice>| {
            arguments(
                "tapwire0",
                &subnet,
                &dhcp,
                ranges,
                Path::new("/run/tapwire/tapwire0/leases"),
                false,
                slice,
            )
        };
        let args = args_with(&[], None);
        assert!(args.contains(&"--no-ping".to_string()));
        assert!(args.contains(&"--bind-interfaces".to_string()));
        assert!(args.contains(
            &"--dhcp-range=set:default,10.86.0.10,10.86.255.254,255.255.0.0,3600".to_string()
        ));
        assert!(args.contains(&"--dhcp-option=tag:default,option:router,10.86.0.1".to_string()));
        assert!(args.contains(&"--dhcp-leasefile=/run/tapwire/tapwire0/leases".to_string()));
        assert!(args.contains(&"--dhcp-option=tag:default,option:dns-server,10.86.0.1".to_string()));
        assert!(args.contains(&"--dhcp-lease-max=65525".to_string()));
        // With networks: every block's range up front, and the networks' TAPs as they come.
        let blocks: Vec<Subnet> = vec![
            "10.96.0.0/24".parse().unwrap(),
            "10.96.1.0/24".parse().unwrap(),
        ];
        let ranges: Vec<_> = blocks
            .iter()
            .map(|b| (*b, crate::config::default_range(b)))
            .collect();
        let with = args_with(&ranges, None);
        assert!(with.contains(&"--interface=tapwire0n*".to_string()));
        assert!(with.contains(&"--bind-dynamic".to_string()));
        assert!(!with.contains(&"--bind-interfaces".to_string()));
        assert!(
            with.contains(&"--dhcp-range=10.96.1.10,10.96.1.254,255.255.255.0,3600".to_string())
        );
        assert!(with.contains(&format!("--dhcp-lease-max={}", 65525 + 2 * 245)));
        assert!(!with.iter().any(|a| a.starts_with("--dhcp-match")));
        // Host 1 of 3: new leases from its slice, requests from the whole range.
        let farm = args_with(&ranges, Some(Slice { index: 1, count: 3 }));
        assert!(farm.contains(&"--dhcp-match=set:tw-request,53,3b".to_string()));
        assert!(farm.contains(
            &"--dhcp-range=set:default,10.86.85.92,10.86.170.173,255.255.0.0,3600".to_string()
        ));
        assert!(farm.contains(
            &"--dhcp-range=tag:tw-request,set:default,10.86.0.10,10.86.255.254,255.255.0.0,3600"
                .to_string()
        ));
        assert!(
            farm.contains(&"--dhcp-range=10.96.1.92,10.96.1.173,255.255.255.0,3600".to_string())
        );
        assert!(farm.contains(
            &"--dhcp-range=tag:tw-request,10.96.1.10,10.96.1.254,255.255.255.0,3600".to_string()
        ));
        assert!(farm.contains(&format!("--dhcp-lease-max={}", 65525 + 2 * 245)));
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(10), Duration::from_secs(30));
        let mut r = Restarts::default();
        let quick = Duration::from_secs(1);
        let waits: Vec<u64> = (0..7).map(|_| r.after_exit(quick).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            r.after_exit(HEALTHY_RUN).as_secs(),
            1,
            "a healthy run resets"
        );
        assert_eq!(r.after_exit(quick).as_secs(), 2);
    }
}

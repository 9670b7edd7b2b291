//! `tapwire check`: can this machine run tapwire, and if not, the exact fix for each problem.

use std::fs;

use io_uring::{opcode, IoUring, Probe};

use crate::engine::ops;

/// One line of the report.
pub struct Finding {
    /// Passed, or only a note (a fallback will be used).
    pub ok: bool,
    /// Fatal for `tapwire run` when not ok.
    pub fatal: bool,
    pub what: String,
}

fn finding(ok: bool, fatal: bool, what: impl Into<String>) -> Finding {
    Finding {
        ok,
        fatal,
        what: what.into(),
    }
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Runs every check.
pub fn run_checks() -> Vec<Finding> {
    let mut out = Vec::new();
    let (major, minor) = ops::kernel_version();
    out.push(finding(
        (major, minor) >= (5, 19),
        true,
        if (major, minor) >= (5, 19) {
            format!("kernel {major}.{minor}: provided-buffer rings and multishot accept available")
        } else {
            format!("kernel {major}.{minor} is older than 5.19: tapwire needs provided-buffer rings — upgrade the kernel (Debian 12 ships 6.1)")
        },
    ));
    match read_trim("/proc/sys/kernel/io_uring_disabled").as_deref() {
        Some("0") | None => out.push(finding(true, true, "kernel.io_uring_disabled = 0: io_uring allowed")),
        Some("1") => out.push(finding(false, true, "kernel.io_uring_disabled = 1: io_uring only for members of kernel.io_uring_group — run as root, or `sysctl -w kernel.io_uring_disabled=0`")),
        Some(v) => out.push(finding(false, true, format!("kernel.io_uring_disabled = {v}: io_uring is switched off — `sysctl -w kernel.io_uring_disabled=0`"))),
    }
    let seccomp = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(|l| l[8..].trim().to_string())
    });
    match IoUring::new(8) {
        Ok(ring) => {
            out.push(finding(true, true, "io_uring_setup works"));
            check_ops(&ring, &mut out);
        }
        Err(e) => {
            let hint = io_uring_setup_hint(e.raw_os_error(), seccomp.as_deref());
            out.push(finding(
                false,
                true,
                format!("io_uring_setup failed: {e}{hint}"),
            ));
        }
    }
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => out.push(finding(true, true, "/dev/net/tun opens")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(finding(
            false,
            true,
            "/dev/net/tun missing — `modprobe tun`; in a container pass --device /dev/net/tun",
        )),
        Err(e) => out.push(finding(
            false,
            true,
            format!("/dev/net/tun: {e} — run as root or grant CAP_NET_ADMIN"),
        )),
    }
    let cap_eff = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("CapEff:"))
            .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
    });
    let net_admin = cap_eff.is_some_and(|c| c & (1 << 12) != 0);
    out.push(finding(
        net_admin,
        true,
        if net_admin {
            "CAP_NET_ADMIN held".to_string()
        } else {
            "CAP_NET_ADMIN missing — run as root, or `setcap cap_net_admin+ep $(which tapwire)`"
                .to_string()
        },
    ));
    match super::dnsmasq::find() {
        Some(path) => out.push(finding(
            true,
            false,
            format!("dnsmasq found at {}", path.display()),
        )),
        None => out.push(finding(
            false,
            false,
            format!(
                "{} (needed unless --no-dhcp or --attach-bridge)",
                super::dnsmasq::MISSING
            ),
        )),
    }
    out.push(match super::find_program("dhcp_release") {
        Some(_) => finding(true, false, "dhcp_release found (leases of removed networks are released)"),
        None => finding(false, false, "dhcp_release not found: leases of networks removed while tapwire runs stay until they expire — install it with `apt-get install dnsmasq-utils`"),
    });
    out.push(check_fd_limit());
    out.push(check_network_pool());
    if net_admin {
        out.push(check_steering());
    }
    if let Some(v) = neighbour_table_size() {
        out.push(match neighbour_table_advice(4096, v) {
            None => finding(
                true,
                false,
                format!("net.ipv4.neigh.default.gc_thresh3 = {v}: room for thousands of guests"),
            ),
            Some(advice) => finding(false, false, advice),
        });
    }
    out.extend(check_nat());
    out
}

/// The open-file limit against what a relay with the default options on every core may hold:
/// `--max-clients` clients and `--max-networks` networks' TAP queues (one per core each).
fn check_fd_limit() -> Finding {
    use rustix::process::{getrlimit, Resource};
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (clients, networks) = (16_384u64, 256u64);
    let needed = clients + networks * cores as u64 + 256;
    // None: unlimited; tapwire raises its soft limit to the hard one.
    let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    if hard >= needed {
        finding(
            true,
            false,
            format!("open-file limit {hard}: room for --max-clients {clients} and --max-networks {networks} on {cores} core(s)"),
        )
    } else {
        finding(
            false,
            false,
            format!("open-file limit {hard} is below {needed} (--max-clients {clients}, and --max-networks {networks} TAPs of {cores} queue(s)): raise it (ulimit -Hn {needed}, LimitNOFILE={needed} in a systemd unit) or lower --max-clients/--max-networks"),
        )
    }
}

/// The default `--network-pool` against the addresses this namespace's routes use.
fn check_network_pool() -> Finding {
    let Ok(mut pool) =
        crate::networks::Pool::new("10.96.0.0/12".parse().expect("the default pool"), 24)
    else {
        return finding(false, false, "the default network pool does not parse");
    };
    let used = super::networks::routed_subnets();
    for s in &used {
        pool.exclude(s);
    }
    let free = pool.usable();
    finding(
        free >= 256,
        false,
        if free >= 256 {
            format!("--network-pool 10.96.0.0/12: {free} of 4096 /24 blocks free of this host's routes (--max-networks 256 fits)")
        } else {
            format!("--network-pool 10.96.0.0/12: only {free} /24 blocks are free of this host's routes: choose another --network-pool, or lower --max-networks to {free}")
        },
    )
}

/// What host protection and `--nat` need: nft; for `--nat` also a switchable IPv4 forwarding
/// and no other table's forward chain with policy drop (which would drop guest traffic
/// whatever tapwire's table accepts).
fn check_nat() -> Vec<Finding> {
    use super::firewall;
    let mut out = Vec::new();
    if firewall::find().is_none() {
        out.push(finding(false, false, firewall::MISSING));
        return out;
    }
    out.push(finding(
        true,
        false,
        "nft found (for host protection and --nat)",
    ));
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .open(firewall::IP_FORWARD)
        .is_ok();
    out.push(finding(
        writable,
        false,
        if writable {
            format!("{} can be switched on (for --nat)", firewall::IP_FORWARD)
        } else {
            format!(
                "{} cannot be written: --nat needs root in this namespace",
                firewall::IP_FORWARD
            )
        },
    ));
    match firewall::blocking_forward_chains(&firewall::table_name("tapwire0")) {
        Ok(chains) if chains.is_empty() => out.push(finding(
            true,
            false,
            "no other nftables table drops forwarded traffic by policy",
        )),
        Ok(chains) => {
            for chain in chains {
                out.push(finding(
                    false,
                    false,
                    format!("{} (shown for --tap tapwire0)", chain.advice("tapwire0")),
                ));
            }
        }
        Err(e) => out.push(finding(
            false,
            false,
            format!("cannot list nftables chains: {e}"),
        )),
    }
    out
}

const EPERM: i32 = rustix::io::Errno::PERM.raw_os_error();
const ENOSYS: i32 = rustix::io::Errno::NOSYS.raw_os_error();

/// What to do when `io_uring_setup` fails with `errno`, given this process's seccomp mode (the
/// `Seccomp:` field of /proc/self/status; 2 means a filter is installed). Container runtimes'
/// default seccomp profiles refuse io_uring: Docker's with EPERM, podman's with ENOSYS, which
/// is also what a kernel without io_uring answers; the mode tells them apart.
fn io_uring_setup_hint(errno: Option<i32>, seccomp: Option<&str>) -> String {
    const FILTER: &str = "run the container with a seccomp profile that also allows io_uring_setup, io_uring_enter and io_uring_register (--security-opt seccomp=PROFILE), or with --security-opt seccomp=unconfined";
    match (errno, seccomp) {
        (Some(EPERM), Some("2")) => format!(" — a seccomp filter blocks io_uring (Docker's default profile answers EPERM): {FILTER}"),
        (Some(ENOSYS), Some("2")) => format!(" — a seccomp filter blocks io_uring (podman's default profile answers ENOSYS, as if the kernel had none): {FILTER}"),
        (Some(EPERM), _) => " — io_uring is restricted: check kernel.io_uring_disabled and any LSM policy".into(),
        (Some(ENOSYS), _) => " — this kernel is built without io_uring (CONFIG_IO_URING)".into(),
        _ => String::new(),
    }
}

/// The neighbour (ARP) table's hard limit, `net.ipv4.neigh.default.gc_thresh3`, where this
/// namespace can read it (the table is shared by every namespace of the machine).
pub fn neighbour_table_size() -> Option<u64> {
    read_trim("/proc/sys/net/ipv4/neigh/default/gc_thresh3").and_then(|v| v.parse().ok())
}

/// What to do when `guests` may exceed the neighbour table's hard limit `gc_thresh3`: past
/// it the gateway forgets guests and answers them late or not at all. tapwire does not raise
/// the value itself: it is one setting for the whole machine, shared by every relay on it,
/// so no single run can raise it and put it back without breaking another.
pub fn neighbour_table_advice(guests: usize, gc_thresh3: u64) -> Option<String> {
    let guests = guests as u64;
    (guests > gc_thresh3).then(|| {
        let wanted = guests.next_power_of_two().max(4096);
        format!(
            "net.ipv4.neigh.default.gc_thresh3 = {gc_thresh3}: past about {gc_thresh3} guests the gateway forgets neighbours — for {guests} guests run `sysctl -w net.ipv4.neigh.default.gc_thresh3={wanted} net.ipv4.neigh.default.gc_thresh2={}` (in the initial namespace; it is machine-wide)",
            wanted / 2
        )
    })
}

/// Whether TAP queue steering attaches: on a throwaway single-queue TAP, which vanishes when
/// its descriptor closes (it is not made persistent).
fn check_steering() -> Finding {
    let name = format!("twchk{}", std::process::id() % 100_000);
    let tap = match crate::tap::open_single(&name, true) {
        Ok(t) => t,
        Err(e) => {
            return finding(
                false,
                false,
                format!("TAP queue steering not tested: cannot make a test TAP ({e})"),
            )
        }
    };
    match crate::steering::Steering::attach(&tap, 16) {
        Ok(_) => finding(
            true,
            false,
            "TAP queue steering by destination MAC (eBPF) attaches: host frames reach a guest's own core",
        ),
        Err(e) => finding(
            false,
            false,
            format!("TAP queue steering unavailable ({e}): with --cores > 1, host frames for a guest on another core are handed over between cores (slower, nothing lost)"),
        ),
    }
}

fn check_ops(ring: &IoUring, out: &mut Vec<Finding>) {
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        out.push(finding(
            false,
            true,
            "cannot probe io_uring operations (IORING_REGISTER_PROBE, Linux 5.6)",
        ));
        return;
    }
    let required = [
        ("accept", opcode::Accept::CODE),
        ("recv", opcode::Recv::CODE),
        ("read", opcode::Read::CODE),
        ("write", opcode::Write::CODE),
        ("sendmsg", opcode::SendMsg::CODE),
        ("timeout", opcode::Timeout::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
    ];
    for (name, code) in required {
        let ok = probe.is_supported(code);
        out.push(finding(
            ok,
            true,
            format!(
                "io_uring op {name}: {}",
                if ok {
                    "supported"
                } else {
                    "missing — upgrade the kernel"
                }
            ),
        ));
    }
    let features = ops::probe(ring, false);
    let note = |ok: bool, what: &str, fallback: &str| {
        finding(
            true,
            false,
            format!(
                "{what}: {}",
                if ok {
                    "multishot".to_string()
                } else {
                    format!("not available, using {fallback}")
                }
            ),
        )
    };
    out.push(note(
        features.multishot_accept,
        "accept",
        "single-shot accept",
    ));
    out.push(note(
        features.multishot_recv,
        "client receive",
        "single-shot receive with provided buffers",
    ));
    out.push(note(
        features.multishot_tap_read,
        "TAP read (Linux 6.7)",
        "several single-shot reads with provided buffers",
    ));
    // A page from mmap, aligned as the kernel requires (the engine maps its rings the same way).
    // SAFETY: anonymous private mapping; checked below and unmapped before returning.
    let page = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            4096,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )
    };
    let Ok(page) = page else {
        out.push(finding(
            false,
            true,
            "cannot map a page to probe provided-buffer rings",
        ));
        return;
    };
    // SAFETY: registering a 1-entry ring over the page mapped above, which stays mapped until
    // after the ring is unregistered; the ring is not used for I/O.
    let registered = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(page as u64, 1, 7, 0)
    };
    match registered {
        Ok(()) => {
            let _ = ring.submitter().unregister_buf_ring(7);
            out.push(finding(true, true, "provided-buffer rings: supported"));
        }
        Err(e) => out.push(finding(
            false,
            true,
            format!("provided-buffer rings: {e} — needs Linux 5.19"),
        )),
    }
    // SAFETY: unmapping the page mapped above, no longer registered. Nothing to do if it fails.
    let _ = unsafe { rustix::mm::munmap(page, 4096) };
}

/// Raises the open-file limit to its hard maximum: every client is a descriptor, and so is
/// each network's queue on each core (`network_queues`). Warns when even that is short.
pub(super) fn raise_fd_limit(max_clients: usize, network_queues: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    // None is unlimited.
    let below_hard = match (lim.current, lim.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        lim.current = lim.maximum;
        if setrlimit(Resource::Nofile, lim).is_err() {
            lim = getrlimit(Resource::Nofile);
        }
    }
    // None: unlimited.
    let current = lim.current.unwrap_or(u64::MAX);
    let needed = (max_clients + network_queues) as u64 + 256;
    if current < needed {
        log::warn!(
            "the open-file limit is {current}: fewer than --max-clients {max_clients} clients (with {network_queues} descriptors for the queues of --max-networks networks) can connect — raise it (ulimit -n {needed}, or LimitNOFILE={needed} in a systemd unit)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{io_uring_setup_hint, neighbour_table_advice, ENOSYS, EPERM};

    #[test]
    fn neighbour_table_advice_only_past_the_limit() {
        assert_eq!(neighbour_table_advice(1000, 1024), None);
        let a = neighbour_table_advice(16_384, 1024).unwrap();
        assert!(
            a.contains("gc_thresh3=16384") && a.contains("gc_thresh2=8192"),
            "{a}"
        );
        assert!(neighbour_table_advice(5000, 1024)
            .unwrap()
            .contains("gc_thresh3=8192"));
    }

    #[test]
    fn a_seccomp_enosys_is_not_taken_for_a_kernel_without_io_uring() {
        let podman = io_uring_setup_hint(Some(ENOSYS), Some("2"));
        assert!(
            podman.contains("seccomp filter") && podman.contains("ENOSYS"),
            "{podman}"
        );
        assert!(!podman.contains("built without"));
        let bare = io_uring_setup_hint(Some(ENOSYS), Some("0"));
        assert!(bare.contains("built without io_uring"), "{bare}");
        let docker = io_uring_setup_hint(Some(EPERM), Some("2"));
        assert!(docker.contains("seccomp filter") && docker.contains("io_uring_register"));
        assert!(io_uring_setup_hint(Some(EPERM), None).contains("restricted"));
    }
}

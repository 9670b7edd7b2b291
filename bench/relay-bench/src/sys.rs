//! Pinning, scheduling and the kernel's own counters (`/proc`) the scenarios read.

use std::net::UdpSocket;

use tapwire_testkit::netns::{enter_path, Netns};

pub(crate) fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Gives the calling thread SCHED_FIFO priority 10 (best effort: a warning if refused).
pub(crate) fn realtime_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread with a valid parameter block.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        eprintln!(
            "cannot make the pinger SCHED_FIFO ({}); RTT tails include load-CPU scheduling",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `f` on a thread inside `ns`, pinned to `cpu`.
pub(crate) fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        enter_path(&path).expect("setns");
        pin(cpu);
        f()
    })
}

/// /proc/net/snmp Udp counters of the namespace: datagrams that reached a socket
/// (InDatagrams + InErrors, the latter counting full receive buffers).
pub(crate) fn udp_arrivals(ns: &Netns) -> u64 {
    ns.enter(|| {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let values: Vec<u64> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let get = |n: &str| {
            names
                .iter()
                .skip(1)
                .position(|x| *x == n)
                .and_then(|i| values.get(i))
                .copied()
                .unwrap_or(0)
        };
        get("InDatagrams") + get("InErrors")
    })
}

/// Reads and counts every datagram queued on `sock`.
pub(crate) fn drain_socket(sock: &UdpSocket) -> u64 {
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 65_536];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// /proc/net/dev counters of an interface: (rx_packets, tx_packets, tx_dropped).
pub(crate) fn dev_counters(ns: &Netns, ifname: &str) -> (u64, u64, u64) {
    let ifname = ifname.to_string();
    ns.enter(move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
        for line in text.lines() {
            if let Some((name, rest)) = line.split_once(':') {
                if name.trim() == ifname {
                    let v: Vec<u64> = rest
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    return (v[1], v[9], v[11]);
                }
            }
        }
        (0, 0, 0)
    })
}

pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    // After the command name: field 3 (state) is at index 0, utime (14) and stime (15) at 11, 12.
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Tells the kernel in `ns` that `ip` is at `mac` on `dev` (no ARP needed).
pub(crate) fn neighbour(ns: &Netns, dev: &str, ip: &str, mac: &str) {
    ns.run(&["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev])
        .expect("ip neigh replace");
}

/// Nanoseconds the thread of `pid` named `comm` has spent on a CPU (`schedstat`'s first
/// field: user and kernel time, softirqs run in its context included), or `None` if there is
/// no such thread.
pub(crate) fn thread_runtime_ns(pid: u32, comm: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// Nanoseconds all live threads of `pid` have spent on a CPU (`schedstat`, as
/// [`thread_runtime_ns`]).
pub(crate) fn process_runtime_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Jiffies CPU `cpu` has been busy (everything but idle and iowait) and in all, from
/// /proc/stat.
pub(crate) fn cpu_busy_jiffies(cpu: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))
    else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

//! relay-bench: end-to-end numbers for tapwire, each next to the kernel's own limit measured
//! in the same run on the same cores. Needs root (namespaces, TAPs). Everything runs inside a
//! namespace made here and deleted at the end; every loop is bounded in time.
//!
//! Placement: the relay (`--cores 1`) and the kernel-limit loops on CPU 0; load generators,
//! sinks and receivers on CPU 1.
//!
//! Usage: relay-bench [--seconds S] [--reps N] [--sizes 64,512,1514,9000] [--clients 1,64,1000]
//!                    [--pairs 1,32] [--idle 100,1000,10000]
//!                    [--only up,down,scale,g2g,swarm,rtt,conn]
//!                    [--out DIR]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapwire::ws::{frame, Event, Session};
use tapwire_testkit::netns::{enter_path, unique, Netns};
use tapwire_testkit::packet::{format_mac, icmp_echo, icmp_echo_reply, parse_mac, udp_frame};

const RELAY_CPU: usize = 0;
const LOAD_CPU: usize = 1;
const SINK_PORT: u16 = 9999;
const GUEST_MAC_BASE: [u8; 6] = [0x02, 0x00, 0x0a, 0x56, 0, 0];

/// Scenario groups, in the order they run.
const GROUPS: [&str; 7] = ["up", "down", "scale", "g2g", "swarm", "rtt", "conn"];

struct Opts {
    seconds: f64,
    reps: usize,
    sizes: Vec<usize>,
    clients: Vec<usize>,
    idle: Vec<usize>,
    pairs: Vec<usize>,
    /// Scenario groups to run (default: all).
    only: Vec<String>,
    out: PathBuf,
}

impl Opts {
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        seconds: 3.0,
        reps: 3,
        sizes: vec![64, 512, 1514, 9000],
        clients: vec![1, 64, 1000],
        idle: vec![100, 1000, 10_000],
        pairs: vec![1, 32],
        only: Vec::new(),
        out: PathBuf::from("bench/results"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = |s: &str| {
        s.split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect::<Vec<usize>>()
    };
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => o.seconds = v.parse().expect("--seconds"),
            "--reps" => o.reps = v.parse().expect("--reps"),
            "--sizes" => o.sizes = list(&v),
            "--clients" => o.clients = list(&v),
            "--idle" => o.idle = list(&v),
            "--pairs" => o.pairs = list(&v),
            "--only" => {
                o.only = v.split(',').map(|x| x.trim().to_string()).collect();
                for g in &o.only {
                    assert!(
                        GROUPS.contains(&g.as_str()),
                        "--only takes {}; not {g}",
                        GROUPS.join(", ")
                    );
                }
            }
            "--out" => o.out = PathBuf::from(v),
            other => panic!("unknown option {other}; see the usage in bench/relay_bench.rs"),
        }
        i += 2;
    }
    o
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Gives the calling thread SCHED_FIFO priority 10 (best effort: a warning if refused).
fn realtime_priority() {
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
fn spawn_in<T: Send + 'static>(
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
fn udp_arrivals(ns: &Netns) -> u64 {
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
fn drain_socket(sock: &UdpSocket) -> u64 {
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 65_536];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// /proc/net/dev counters of an interface: (rx_packets, tx_packets, tx_dropped).
fn dev_counters(ns: &Netns, ifname: &str) -> (u64, u64, u64) {
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

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    // After the command name: field 3 (state) is at index 0, utime (14) and stime (15) at 11, 12.
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// The relay under test.
struct Relay {
    child: Child,
    log: PathBuf,
    tap: String,
    tap_mac: [u8; 6],
}

impl Relay {
    fn start(ns: &Netns, dir: &std::path::Path, extra: &[&str]) -> Relay {
        Self::start_on(ns, dir, &RELAY_CPU.to_string(), "1", extra)
    }

    /// The relay with 1 core on `RELAY_CPU`, or with 2 on both CPUs.
    fn start_cores(ns: &Netns, dir: &std::path::Path, cores: usize, extra: &[&str]) -> Relay {
        match cores {
            1 => Self::start(ns, dir, extra),
            _ => Self::start_on(ns, dir, "0,1", "2", extra),
        }
    }

    /// The relay with `cores` cores, allowed on CPUs `cpus` (a taskset list).
    fn start_on(
        ns: &Netns,
        dir: &std::path::Path,
        cpus: &str,
        cores: &str,
        extra: &[&str],
    ) -> Relay {
        let tap = unique("twb");
        let log = dir.join(format!("{tap}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let bin = std::env::var("TAPWIRE_BIN").unwrap_or_else(|_| sibling_binary("tapwire"));
        let run_dir = dir.join("run");
        let mut cmd = ns.cmd(&[
            "taskset",
            "-c",
            cpus,
            &bin,
            "run",
            "--cores",
            cores,
            "--no-dhcp",
            "--tap",
            &tap,
            "--send-queue",
            "1024",
            "--max-clients",
            "16000",
            "--ping-interval",
            "0",
        ]);
        cmd.arg("--runtime-dir").arg(&run_dir).args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start tapwire");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("relaying ws://")
        {
            assert!(
                Instant::now() < deadline,
                "tapwire did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mac = ns
            .run(&["cat", &format!("/sys/class/net/{tap}/address")])
            .expect("tap mac");
        let tap_mac = parse_mac(&mac).expect("mac");
        Relay {
            child,
            log,
            tap,
            tap_mac,
        }
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs its command, and taskset execs tapwire: same pid.
        self.child.id()
    }

    /// Stops the relay; returns its drop counters.
    fn stop(self) -> HashMap<String, u64> {
        self.stop_with_log().0
    }

    /// Stops the relay; returns its drop counters and its log (with the counter summary).
    fn stop_with_log(mut self) -> (HashMap<String, u64>, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let drops = text
            .lines()
            .filter(|l| l.starts_with("tapwire_drops_total{reason=") && !l.contains("core="))
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                let reason = name.split('"').nth(1)?.to_string();
                let v: u64 = v.parse().ok()?;
                (v > 0).then_some((reason, v))
            })
            .collect();
        (drops, text)
    }
}

/// A total from a relay's counter summary (0 when absent).
fn summary_value(log: &str, name: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn sibling_binary(name: &str) -> String {
    let me = std::env::current_exe().expect("current exe");
    me.with_file_name(name).display().to_string()
}

fn guest_mac(i: usize) -> [u8; 6] {
    let mut m = GUEST_MAC_BASE;
    m[4] = (i >> 8) as u8;
    m[5] = i as u8;
    m
}

fn guest_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 86, 1 + (i >> 8) as u8, (i & 0xFF) as u8 + 1)
}

/// Tells the host guest `i`'s MAC, so the gateway answers it without ARP.
fn static_neighbour(ns: &Netns, tap: &str, i: usize) {
    let mac = format_mac(guest_mac(i));
    ns.run(&[
        "ip",
        "neigh",
        "replace",
        &guest_ip(i).to_string(),
        "lladdr",
        &mac,
        "dev",
        tap,
    ])
    .expect("neigh");
}

/// Connects `n` WebSocket clients from CPU `LOAD_CPU` inside `ns`.
fn connect_clients(ns: &Netns, n: usize) -> Vec<TcpStream> {
    spawn_in(ns, LOAD_CPU, move || {
        (0..n)
            .map(|_| tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", None).expect("connect"))
            .collect()
    })
    .join()
    .expect("connect thread")
}

/// Relay options for frames of `size` bytes: jumbo sizes need a larger MTU.
fn mtu_args(size: usize) -> Vec<String> {
    if size > 1514 {
        vec!["--mtu".into(), (size - 14).to_string()]
    } else {
        Vec::new()
    }
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// One measurement: frames/s and the numbers around it.
#[derive(Clone, Debug, Default)]
struct Sample {
    fps: f64,
    /// up: frames queued ahead of the relay at the end of the window; down: frames/s the
    /// kernel queued to the TAP.
    offered_fps: f64,
    loss: f64,
    cpu_ns_per_frame: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Median and spread (min, max) of repeated samples.
#[derive(Clone, Debug, Default)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: &[f64]) -> Stat {
    let mut v = values.to_vec();
    let m = median(&mut v);
    Stat {
        median: m,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

// ---------------------------------------------------------------- kernel limits

/// A single-queue TAP with the gateway address and a UDP sink, for the kernel-limit loops.
fn kernel_tap(ns: &Netns, size: usize) -> (std::os::fd::OwnedFd, [u8; 6], String) {
    let name = unique("twk");
    let n2 = name.clone();
    let fd = ns.enter(move || tapwire::tap::open_single(&n2, false).expect("tap"));
    ns.run(&["ip", "addr", "add", "10.87.0.1/24", "dev", &name])
        .expect("addr");
    let mtu = (size.max(1514) - 14).to_string();
    ns.run(&["ip", "link", "set", &name, "mtu", &mtu, "up"])
        .expect("up");
    ns.run(&[
        "ip",
        "neigh",
        "replace",
        "10.87.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        &name,
    ])
    .expect("neigh");
    let mac = parse_mac(
        &ns.run(&["cat", &format!("/sys/class/net/{name}/address")])
            .expect("mac"),
    )
    .expect("mac");
    (fd, mac, name)
}

/// The kernel's TAP write limit: one thread writing pre-built UDP frames to the sink.
fn kernel_tap_write(ns: &Netns, size: usize, seconds: f64) -> f64 {
    let (fd, mac, _name) = kernel_tap(ns, size);
    let sink = ns.enter(|| UdpSocket::bind(("10.87.0.1", SINK_PORT)).expect("sink"));
    let frame = udp_frame(
        mac,
        [2, 0, 0, 0, 0, 2],
        ("10.87.0.2".parse().unwrap(), 1000),
        ("10.87.0.1".parse().unwrap(), SINK_PORT),
        size,
    );
    let fd_raw = fd.as_raw_fd();
    let writes = spawn_in(ns, RELAY_CPU, move || {
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..64 {
                // SAFETY: writing our frame buffer to the TAP descriptor kept open by `fd`.
                if unsafe { libc::write(fd_raw, frame.as_ptr().cast(), frame.len()) } > 0 {
                    n += 1;
                }
            }
        }
        n
    })
    .join()
    .expect("writer");
    drop(sink);
    drop(fd);
    // Every write the TAP accepted went through the kernel's receive path on this CPU.
    writes as f64 / seconds
}

/// The kernel's TAP read limit: a UDP sender on the load CPU, one thread reading the TAP.
fn kernel_tap_read(ns: &Netns, size: usize, seconds: f64) -> f64 {
    let (fd, _mac, _name) = kernel_tap(ns, size);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let payload = vec![0x5Au8; size.max(42) - 42];
    let sender = spawn_in(ns, LOAD_CPU, move || {
        let s = UdpSocket::bind("10.87.0.1:0").expect("udp");
        s.connect("10.87.0.2:9").expect("connect");
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..64 {
                let _ = s.send(&payload);
            }
        }
    });
    let fd_raw = fd.as_raw_fd();
    // Non-blocking reads so the loop ends on time even if the sender stalls.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd_raw, libc::F_SETFL, libc::O_RDWR | libc::O_NONBLOCK) };
    let reads = spawn_in(ns, RELAY_CPU, move || {
        let mut buf = vec![0u8; 65_600];
        std::thread::sleep(Duration::from_millis(200));
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut n = 0u64;
        while Instant::now() < end {
            // SAFETY: reading into our buffer from the TAP descriptor kept open by `fd`.
            if unsafe { libc::read(fd_raw, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
                n += 1;
            }
        }
        n
    })
    .join()
    .expect("reader");
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    drop(fd);
    reads as f64 / seconds
}

/// Loopback TCP with the same message sizes (plus a 2–4 byte WebSocket header).
fn kernel_loopback_tcp(ns: &Netns, size: usize, seconds: f64) -> f64 {
    let msg = frame::header_len(size, false) + size;
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").expect("listen"));
    let addr = listener.local_addr().expect("addr");
    let writer = spawn_in(ns, LOAD_CPU, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let chunk = vec![0u8; msg * 64];
        let end = Instant::now() + Duration::from_secs_f64(seconds + 0.5);
        while Instant::now() < end {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (mut conn, _) = listener.accept().expect("accept");
    let bytes = spawn_in(ns, RELAY_CPU, move || {
        let mut buf = vec![0u8; 256 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut total = 0u64;
        while Instant::now() < end {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    })
    .join()
    .expect("reader");
    let _ = writer.join();
    bytes as f64 / msg as f64 / seconds
}

// ---------------------------------------------------------------- relay scenarios

/// Pre-built masked WebSocket messages: `batch` UDP frames from guest `i` to the sink.
fn up_batch(i: usize, relay_mac: [u8; 6], size: usize, batch: usize) -> Vec<u8> {
    let f = udp_frame(
        relay_mac,
        guest_mac(i),
        (guest_ip(i), 1000),
        (Ipv4Addr::new(10, 86, 0, 1), SINK_PORT),
        size,
    );
    let one = tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f);
    one.repeat(batch)
}

/// up: guests → a UDP sink on the host side, as fast as the generator can write.
fn scenario_up(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    clients: usize,
    seconds: f64,
    cores: usize,
) -> (Sample, HashMap<String, u64>) {
    let mtu = mtu_args(size);
    let relay = Relay::start_cores(ns, dir, cores, &str_refs(&mtu));
    let sink = ns.enter(|| UdpSocket::bind(("10.86.0.1", SINK_PORT)).expect("sink"));
    let streams = connect_clients(ns, clients);
    let arrivals_at_start = udp_arrivals(ns);
    let batches: Vec<Vec<u8>> = (0..clients)
        .map(|i| up_batch(i, relay.tap_mac, size, 64))
        .collect();
    let wire_frame = batches[0].len() / 64;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent2, stop2) = (sent.clone(), stop.clone());
    let generator = spawn_in(ns, LOAD_CPU, move || {
        let mut streams = streams;
        while !stop2.load(Ordering::Relaxed) {
            for (s, b) in streams.iter_mut().zip(&batches) {
                if s.write_all(b).is_ok() {
                    sent2.fetch_add(64, Ordering::Relaxed);
                }
            }
        }
        streams
    });
    std::thread::sleep(Duration::from_millis(300));
    let (a0, c0, t0) = (udp_arrivals(ns), cpu_ticks(relay.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (a1, c1, s1, dt) = (
        udp_arrivals(ns),
        cpu_ticks(relay.pid()),
        sent.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    let streams = generator.join().expect("generator");
    // Let the relay drain what is still queued in the sockets (bounded): arrivals stop growing.
    let total_sent = sent.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let mut total_arrived = udp_arrivals(ns);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now_arrived = udp_arrivals(ns);
        if now_arrived == total_arrived || Instant::now() > drain_deadline {
            break;
        }
        total_arrived = now_arrived;
    }
    // Linux counts UDP InDatagrams only when a datagram is read: count what the (never read)
    // sink still holds.
    let mut total_arrived = total_arrived - arrivals_at_start + drain_socket(&sink);
    drop(streams);
    drop(sink);
    let drops = relay.stop();
    total_arrived = total_arrived.min(total_sent);
    let frames = (a1 - a0) as f64;
    let _ = wire_frame;
    let loss = if total_sent > 0 {
        1.0 - (total_arrived.min(total_sent) as f64 / total_sent as f64)
    } else {
        0.0
    };
    (
        Sample {
            fps: frames / dt,
            // Frames the generator had written but the relay had not yet passed on when the
            // window closed: positive means the relay, not the generator, set the pace.
            offered_fps: s1 as f64 - (a1 - arrivals_at_start) as f64,
            loss,
            cpu_ns_per_frame: (c1 - c0) as f64 / ticks_per_second() * 1e9 / frames.max(1.0),
        },
        drops,
    )
}

/// Counts binary messages arriving on `streams` (non-blocking, round robin) until `stop`.
fn receive_loop(streams: &mut [TcpStream], stop: &AtomicBool, received: &AtomicU64) {
    let mut sessions: Vec<Session> = streams
        .iter()
        .map(|_| Session::new(70_000, false))
        .collect();
    for s in streams.iter() {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for (s, session) in streams.iter_mut().zip(sessions.iter_mut()) {
            if let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    continue;
                }
                idle = false;
                let mut pos = 0;
                let chunk = &mut buf[..n];
                let mut count = 0;
                while let Ok(Some(ev)) = session.next(chunk, &mut pos) {
                    if matches!(ev, Event::Message(_) | Event::Assembled) {
                        count += 1;
                    }
                }
                received.fetch_add(count, Ordering::Relaxed);
            }
        }
        if idle {
            std::thread::yield_now();
        }
    }
}

/// down: a UDP sender on the host side → guests.
fn scenario_down(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    clients: usize,
    seconds: f64,
    cores: usize,
) -> (Sample, HashMap<String, u64>) {
    let mtu = mtu_args(size);
    let relay = Relay::start_cores(ns, dir, cores, &str_refs(&mtu));
    let mut streams = connect_clients(ns, clients);
    // Each guest announces its MAC (one frame), and the host learns it statically.
    for (i, s) in streams.iter_mut().enumerate() {
        let hello = udp_frame(
            [0xFF; 6],
            guest_mac(i),
            (guest_ip(i), 1),
            (Ipv4Addr::new(10, 86, 0, 1), 7),
            64,
        );
        s.write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &hello))
            .expect("hello");
        static_neighbour(ns, &relay.tap, i);
    }
    std::thread::sleep(Duration::from_millis(200));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, st2) = (received.clone(), stop.clone());
    let receiver = spawn_in(ns, LOAD_CPU, move || {
        receive_loop(&mut streams, &st2, &r2);
        streams
    });
    let st3 = stop.clone();
    let payload = vec![0x5Au8; size.max(42) - 42];
    let targets: Vec<Ipv4Addr> = (0..clients).map(guest_ip).collect();
    let sender = spawn_in(ns, LOAD_CPU, move || {
        let s = UdpSocket::bind("10.86.0.1:0").expect("udp");
        let mut n = 0u64;
        while !st3.load(Ordering::Relaxed) {
            for t in &targets {
                for _ in 0..8 {
                    if s.send_to(&payload, (*t, 9)).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    });
    std::thread::sleep(Duration::from_millis(300));
    let (d0, r0, c0, t0) = (
        dev_counters(ns, &relay.tap),
        received.load(Ordering::Relaxed),
        cpu_ticks(relay.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (d1, r1, c1, dt) = (
        dev_counters(ns, &relay.tap),
        received.load(Ordering::Relaxed),
        cpu_ticks(relay.pid()),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let streams = receiver.join().expect("receiver");
    drop(streams);
    let drops = relay.stop();
    let delivered = (r1 - r0) as f64;
    // Offered: what the kernel queued to the TAP (read by the relay, or dropped at its queue).
    let offered = ((d1.1 - d0.1) + (d1.2 - d0.2)) as f64;
    let loss = if offered > 0.0 {
        (1.0 - delivered / offered).max(0.0)
    } else {
        0.0
    };
    (
        Sample {
            fps: delivered / dt,
            offered_fps: offered / dt,
            loss,
            cpu_ns_per_frame: (c1 - c0) as f64 / ticks_per_second() * 1e9 / delivered.max(1.0),
        },
        drops,
    )
}

/// g2g: guest pairs across cores (A on core 0 sends to B on core 1), relay on both CPUs with
/// `--cores 2`; load shares the CPUs with it.
fn scenario_g2g(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    pairs: usize,
    seconds: f64,
) -> (Sample, HashMap<String, u64>) {
    let mtu = mtu_args(size);
    let relay = Relay::start_on(ns, dir, "0,1", "2", &str_refs(&mtu));
    let base = 30_000 + (std::process::id() as usize % 1000) * 16;
    let ports_on = |core: usize, n: usize| -> Vec<u16> {
        (base..)
            .map(|p| p as u16)
            .filter(|p| tapwire::control::listen::steer(*p, 2) == core)
            .take(n)
            .collect()
    };
    let (senders_ports, receivers_ports) = (ports_on(0, pairs), ports_on(1, pairs + pairs));
    let receivers_ports: Vec<u16> = receivers_ports
        .into_iter()
        .filter(|p| !senders_ports.contains(p))
        .take(pairs)
        .collect();
    let (sp, rp) = (senders_ports.clone(), receivers_ports.clone());
    let (mut senders, mut receivers) = spawn_in(ns, LOAD_CPU, move || {
        let c = |p: &u16| {
            tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", Some(*p)).expect("connect")
        };
        (
            sp.iter().map(c).collect::<Vec<_>>(),
            rp.iter().map(c).collect::<Vec<_>>(),
        )
    })
    .join()
    .expect("connect");
    // Receivers announce their MACs (guest numbers 1000+i), then senders target them.
    for (i, r) in receivers.iter_mut().enumerate() {
        let hello = udp_frame(
            [0xFF; 6],
            guest_mac(1000 + i),
            (guest_ip(1000 + i), 1),
            (Ipv4Addr::new(10, 86, 0, 1), 7),
            64,
        );
        r.write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &hello))
            .expect("hello");
    }
    std::thread::sleep(Duration::from_millis(300));
    let batches: Vec<Vec<u8>> = (0..pairs)
        .map(|i| {
            let f = udp_frame(
                guest_mac(1000 + i),
                guest_mac(i),
                (guest_ip(i), 1000),
                (guest_ip(1000 + i), 9),
                size,
            );
            tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f).repeat(64)
        })
        .collect();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, st2) = (received.clone(), stop.clone());
    let receiver = spawn_in(ns, LOAD_CPU, move || {
        receive_loop(&mut receivers, &st2, &r2);
        receivers
    });
    let st3 = stop.clone();
    let generator = spawn_in(ns, RELAY_CPU, move || {
        while !st3.load(Ordering::Relaxed) {
            for (s, b) in senders.iter_mut().zip(&batches) {
                let _ = s.write_all(b);
            }
        }
        senders
    });
    std::thread::sleep(Duration::from_millis(300));
    let (r0, c0, t0) = (
        received.load(Ordering::Relaxed),
        cpu_ticks(relay.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (r1, c1, dt) = (
        received.load(Ordering::Relaxed),
        cpu_ticks(relay.pid()),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    drop(generator.join());
    drop(receiver.join());
    let drops = relay.stop();
    let frames = (r1 - r0) as f64;
    (
        Sample {
            fps: frames / dt,
            offered_fps: 0.0,
            loss: 0.0,
            cpu_ns_per_frame: (c1 - c0) as f64 / ticks_per_second() * 1e9 / frames.max(1.0),
        },
        drops,
    )
}

/// `count` ICMP echoes to the gateway from guest 0 over one client, 0.5 ms apart, from
/// `LOAD_CPU`: their round-trip times in µs. The pinger runs SCHED_FIFO, so that a load
/// generator sharing its CPU does not delay its own wakeups (that would measure the load
/// CPU's scheduler, not the relay).
fn ping_through_relay(ns: &Netns, relay: &Relay, count: usize) -> Vec<f64> {
    static_neighbour(ns, &relay.tap, 0);
    let tap_mac = relay.tap_mac;
    let mut stream = connect_clients(ns, 1).pop().expect("client");
    spawn_in(ns, LOAD_CPU, move || {
        realtime_priority();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut session = Session::new(70_000, false);
        let mut buf = vec![0u8; 65_536];
        let mut rtts = Vec::with_capacity(count);
        let start = Instant::now();
        for seq in 0..count {
            let sent = start.elapsed().as_nanos() as u64;
            let ping = icmp_echo(
                tap_mac,
                guest_mac(0),
                guest_ip(0),
                Ipv4Addr::new(10, 86, 0, 1),
                0x7777,
                seq as u16,
                sent,
            );
            stream
                .write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &ping))
                .expect("ping");
            'wait: while let Ok(n) = stream.read(&mut buf) {
                let mut pos = 0;
                let chunk = &mut buf[..n];
                while let Ok(Some(ev)) = session.next(chunk, &mut pos) {
                    if let Event::Message(r) = ev {
                        if let Some((0x7777, s, stamp)) = icmp_echo_reply(&chunk[r]) {
                            if usize::from(s) == seq {
                                rtts.push(
                                    (start.elapsed().as_nanos() as u64 - stamp) as f64 / 1000.0,
                                );
                                break 'wait;
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        rtts
    })
    .join()
    .expect("rtt")
}

// ---------------------------------------------------------------- synthetic guests (swarm)

/// How often the swarm's writes would have blocked, from its `udp:` report line.
fn swarm_writes_blocked(text: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with("udp: ")).unwrap_or("");
    line.find(" writes blocked")
        .and_then(|at| line[..at].rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts `tapwire swarm` on `LOAD_CPU`: `guests` guests with static addresses from
/// 10.86.`subnet`.1 send UDP frames of `size` bytes to the sink (`pps` each, 0 = as fast as
/// the relay takes them) for `seconds`. Its output goes to `out`.
fn start_swarm(
    ns: &Netns,
    out: &std::path::Path,
    guests: usize,
    subnet: u8,
    size: usize,
    pps: u64,
    seconds: f64,
) -> Child {
    let bin = std::env::var("TAPWIRE_BIN").unwrap_or_else(|_| sibling_binary("tapwire"));
    ns.cmd(&[
        "taskset",
        "-c",
        &LOAD_CPU.to_string(),
        &bin,
        "swarm",
        "--guests",
        &guests.to_string(),
        "--static-from",
        &format!("10.86.{subnet}.1"),
        "--udp-to",
        &format!("10.86.0.1:{SINK_PORT}"),
        "--udp-pps",
        &pps.to_string(),
        "--udp-size",
        &size.to_string(),
        "--udp-seconds",
        &seconds.to_string(),
        "--concurrency",
        "1000",
        "--timeout",
        "120",
    ])
    .stdout(std::fs::File::create(out).expect("swarm out"))
    .stderr(Stdio::null())
    .spawn()
    .expect("start swarm")
}

/// Waits (bounded) until frames pour into the TAP: the swarm's UDP phase has begun.
fn wait_for_udp_phase(ns: &Netns, tap: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = dev_counters(ns, tap).0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = dev_counters(ns, tap).0;
        if now - last > 500 {
            return;
        }
        last = now;
    }
    panic!("the swarm's UDP phase did not start within 60 s");
}

/// One flood by the swarm: relay frames/s into the TAP, what the swarm offered, how often the
/// relay pushed back on the swarm and held input itself.
struct SwarmFlood {
    sample: Sample,
    blocked: u64,
    input_held: u64,
}

/// swarm: `guests` synthetic guests (one process on `LOAD_CPU`) flood UDP to the sink as fast
/// as the relay (one core on `RELAY_CPU`) takes it. Shows whether the swarm can load the relay.
fn scenario_swarm_flood(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    guests: usize,
    seconds: f64,
) -> (SwarmFlood, HashMap<String, u64>) {
    let mtu = mtu_args(size);
    let relay = Relay::start(ns, dir, &str_refs(&mtu));
    let sink = ns.enter(|| UdpSocket::bind(("10.86.0.1", SINK_PORT)).expect("sink"));
    let out = dir.join("swarm-flood.out");
    let mut swarm = start_swarm(ns, &out, guests, 2, size, 0, seconds + 1.0);
    wait_for_udp_phase(ns, &relay.tap);
    std::thread::sleep(Duration::from_millis(300));
    let (d0, c0, t0) = (
        dev_counters(ns, &relay.tap),
        cpu_ticks(relay.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (d1, c1, dt) = (
        dev_counters(ns, &relay.tap),
        cpu_ticks(relay.pid()),
        t0.elapsed().as_secs_f64(),
    );
    let _ = swarm.wait();
    drop(sink);
    let (drops, log) = relay.stop_with_log();
    let blocked = swarm_writes_blocked(&std::fs::read_to_string(&out).unwrap_or_default());
    let frames = (d1.0 - d0.0) as f64;
    (
        SwarmFlood {
            sample: Sample {
                fps: frames / dt,
                offered_fps: 0.0,
                loss: 0.0,
                cpu_ns_per_frame: (c1 - c0) as f64 / ticks_per_second() * 1e9 / frames.max(1.0),
            },
            blocked,
            input_held: summary_value(&log, "tapwire_input_held_total"),
        },
        drops,
    )
}

/// rtt under load: ICMP echoes to the gateway while 64 swarm guests send `size`-byte UDP
/// frames at `load_fps` in all. Returns the RTTs and the load measured at the TAP.
fn scenario_rtt_loaded(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    load_fps: f64,
    count: usize,
) -> (Vec<f64>, f64) {
    let mtu = mtu_args(size);
    let relay = Relay::start(ns, dir, &str_refs(&mtu));
    let sink = ns.enter(|| UdpSocket::bind(("10.86.0.1", SINK_PORT)).expect("sink"));
    let out = dir.join("swarm-paced.out");
    let guests = 64;
    let pps = (load_fps / guests as f64).max(1.0) as u64;
    // Long enough for the echoes (count × ≥ 0.5 ms) with a margin; bounded.
    let phase = count as f64 * 0.002 + 3.0;
    let mut swarm = start_swarm(ns, &out, guests, 2, size, pps, phase);
    wait_for_udp_phase(ns, &relay.tap);
    std::thread::sleep(Duration::from_millis(300));
    let (d0, t0) = (dev_counters(ns, &relay.tap), Instant::now());
    let rtts = ping_through_relay(ns, &relay, count);
    let (d1, dt) = (dev_counters(ns, &relay.tap), t0.elapsed().as_secs_f64());
    let _ = swarm.wait();
    drop(sink);
    relay.stop();
    (rtts, (d1.0 - d0.0) as f64 / dt)
}

/// rtt: ICMP echo to the gateway through the relay, and the same echo through a bare TAP.
fn scenario_rtt(ns: &Netns, dir: &std::path::Path, count: usize) -> (Vec<f64>, Vec<f64>) {
    // Through the relay.
    let relay = Relay::start(ns, dir, &[]);
    let relay_rtts = ping_through_relay(ns, &relay, count);
    relay.stop();
    // The same echo written to and read from a bare TAP by one thread.
    let (fd, tmac, name) = kernel_tap(ns, 64);
    ns.run(&[
        "ip",
        "neigh",
        "replace",
        "10.87.0.2",
        "lladdr",
        "02:00:0a:56:00:00",
        "dev",
        &name,
    ])
    .expect("neigh");
    let fd_raw = fd.as_raw_fd();
    let tap_rtts = spawn_in(ns, LOAD_CPU, move || {
        let mut buf = vec![0u8; 65_600];
        let mut rtts = Vec::with_capacity(count);
        let start = Instant::now();
        for seq in 0..count {
            let sent = start.elapsed().as_nanos() as u64;
            let ping = icmp_echo(
                tmac,
                guest_mac(0),
                "10.87.0.2".parse().unwrap(),
                "10.87.0.1".parse().unwrap(),
                0x7777,
                seq as u16,
                sent,
            );
            // SAFETY: writing/reading our buffers on the TAP descriptor kept open by `fd`.
            unsafe { libc::write(fd_raw, ping.as_ptr().cast(), ping.len()) };
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                // SAFETY: as above.
                let n = unsafe { libc::read(fd_raw, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    if let Some((0x7777, s, stamp)) = icmp_echo_reply(&buf[..n as usize]) {
                        if usize::from(s) == seq {
                            rtts.push((start.elapsed().as_nanos() as u64 - stamp) as f64 / 1000.0);
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        rtts
    })
    .join()
    .expect("tap rtt");
    drop(fd);
    (relay_rtts, tap_rtts)
}

/// A 64-byte TCP echo between the load CPU and the relay CPU: the same two cross-core wakeups
/// a ping through the relay pays, without the relay.
fn tcp_echo_rtt(ns: &Netns, count: usize) -> Vec<f64> {
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").expect("listen"));
    let addr = listener.local_addr().expect("addr");
    let server = spawn_in(ns, RELAY_CPU, move || {
        let (mut c, _) = listener.accept().expect("accept");
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 64];
        while c.read_exact(&mut buf).is_ok() {
            if c.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let rtts = spawn_in(ns, LOAD_CPU, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 64];
        let mut rtts = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            s.write_all(&buf).expect("echo write");
            s.read_exact(&mut buf).expect("echo read");
            rtts.push(t.elapsed().as_nanos() as f64 / 1000.0);
            std::thread::sleep(Duration::from_micros(500));
        }
        rtts
    })
    .join()
    .expect("echo client");
    let _ = server.join();
    rtts
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// conn: connections per second (upgrade, then an ICMP echo answered through the gateway), and
/// relay RSS per idle client.
fn scenario_conn(
    ns: &Netns,
    dir: &std::path::Path,
    idle: &[usize],
) -> (f64, f64, Vec<(usize, f64)>) {
    let relay = Relay::start(ns, dir, &[]);
    let tap_mac = relay.tap_mac;
    // Static neighbours for the guests that ping, so the gateway answers without ARP.
    let pingers = 200usize;
    for i in 0..pingers {
        static_neighbour(ns, &relay.tap, i);
    }
    let (upgraded_per_s, pinged_per_s) = spawn_in(ns, LOAD_CPU, move || {
        let t0 = Instant::now();
        // Eight connectors at once, each opening its share one after another.
        let workers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..pingers / 8)
                        .map(|_| {
                            tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", None)
                                .expect("connect")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut streams: Vec<TcpStream> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("connector"))
            .collect();
        let upgraded = pingers as f64 / t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for (i, s) in streams.iter_mut().enumerate() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut session = Session::new(70_000, false);
            let ping = icmp_echo(
                tap_mac,
                guest_mac(i),
                guest_ip(i),
                Ipv4Addr::new(10, 86, 0, 1),
                i as u16,
                1,
                0,
            );
            s.write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &ping))
                .expect("ping");
            let mut buf = vec![0u8; 65_536];
            'wait: while let Ok(n) = s.read(&mut buf) {
                let mut pos = 0;
                let chunk = &mut buf[..n];
                while let Ok(Some(ev)) = session.next(chunk, &mut pos) {
                    if let Event::Message(r) = ev {
                        if icmp_echo_reply(&chunk[r]).is_some_and(|(id, _, _)| usize::from(id) == i)
                        {
                            break 'wait;
                        }
                    }
                }
            }
        }
        let with_ping = pingers as f64 / (t0.elapsed().as_secs_f64());
        let _ = t1;
        (upgraded, with_ping)
    })
    .join()
    .expect("conn");
    let mut rss = Vec::new();
    for &n in idle {
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(relay.pid());
        let streams = connect_clients(ns, n);
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(relay.pid());
        rss.push((n, (after.saturating_sub(before)) as f64 / n as f64));
        drop(streams);
    }
    relay.stop();
    (upgraded_per_s, pinged_per_s, rss)
}

// ---------------------------------------------------------------- report

/// Runs a scenario `reps` times: its samples, and its drop counters summed over the runs.
fn repeat(
    reps: usize,
    mut run: impl FnMut() -> (Sample, HashMap<String, u64>),
) -> (Vec<Sample>, HashMap<String, u64>) {
    let mut samples = Vec::with_capacity(reps);
    let mut drops: HashMap<String, u64> = HashMap::new();
    for _ in 0..reps {
        let (sample, d) = run();
        for (k, v) in d {
            *drops.entry(k).or_default() += v;
        }
        samples.push(sample);
    }
    (samples, drops)
}

/// `field` of every sample: median, min and max.
fn stat_of(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> Stat {
    stat(&samples.iter().map(field).collect::<Vec<_>>())
}

/// Drop counters as "reason=n, …", or "–".
fn drop_list(drops: &HashMap<String, u64>) -> String {
    let mut v: Vec<String> = drops.iter().map(|(k, n)| format!("{k}={n}")).collect();
    v.sort();
    if v.is_empty() {
        "–".to_string()
    } else {
        v.join(", ")
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn main() {
    let o = parse_opts();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("relay-bench needs root (network namespaces and TAPs)");
        std::process::exit(2);
    }
    let ns = Netns::new("twbench").expect("netns");
    let dir = std::env::temp_dir().join(unique("relay-bench-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut md = String::new();
    let mut json = Vec::new();
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    md.push_str(&format!(
        "Machine: {host}, {} CPUs, kernel {kernel}. Relay and kernel loops on CPU {RELAY_CPU}, load on CPU {LOAD_CPU}. {} s windows, {} repetitions: median (min–max).\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.seconds,
        o.reps
    ));
    // Medians of the one-core up/down rows, for the scaling and swarm comparisons.
    let mut one_core: HashMap<(&str, usize, usize), f64> = HashMap::new();
    md.push_str("| scenario | frame | clients | relay frames/s | Mbit/s | kernel limit frames/s | relay / kernel | load (see below) | loss | relay CPU ns/frame | drops |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for &size in &o.sizes {
        if !o.runs("up") && !o.runs("down") {
            break;
        }
        let kw: Vec<f64> = (0..o.reps)
            .map(|_| kernel_tap_write(&ns, size, o.seconds))
            .collect();
        let kr: Vec<f64> = (0..o.reps)
            .map(|_| kernel_tap_read(&ns, size, o.seconds))
            .collect();
        let kt: Vec<f64> = (0..o.reps)
            .map(|_| kernel_loopback_tcp(&ns, size, o.seconds))
            .collect();
        let (kw, kr, kt) = (stat(&kw), stat(&kr), stat(&kt));
        md.push_str(&format!(
            "| kernel TAP write | {size} | – | {} ({}–{}) | {:.0} | – | – | – | – | – | – |\n| kernel TAP read | {size} | – | {} ({}–{}) | {:.0} | – | – | – | – | – | – |\n| kernel loopback TCP | {size} | – | {} ({}–{}) | {:.0} | – | – | – | – | – | – |\n",
            fmt_rate(kw.median), fmt_rate(kw.min), fmt_rate(kw.max), kw.median * size as f64 * 8.0 / 1e6,
            fmt_rate(kr.median), fmt_rate(kr.min), fmt_rate(kr.max), kr.median * size as f64 * 8.0 / 1e6,
            fmt_rate(kt.median), fmt_rate(kt.min), fmt_rate(kt.max), kt.median * size as f64 * 8.0 / 1e6,
        ));
        json.push(format!("{{\"scenario\":\"kernel_tap_write\",\"size\":{size},\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0}}}", kw.median, kw.min, kw.max));
        json.push(format!("{{\"scenario\":\"kernel_tap_read\",\"size\":{size},\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0}}}", kr.median, kr.min, kr.max));
        json.push(format!("{{\"scenario\":\"kernel_loopback_tcp\",\"size\":{size},\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0}}}", kt.median, kt.min, kt.max));
        for &clients in &o.clients {
            for (name, limit) in [("up", kw.median), ("down", kr.median)] {
                if !o.runs(name) {
                    continue;
                }
                let (samples, all_drops) = repeat(o.reps, || {
                    if name == "up" {
                        scenario_up(&ns, &dir, size, clients, o.seconds, 1)
                    } else {
                        scenario_down(&ns, &dir, size, clients, o.seconds, 1)
                    }
                });
                let fps = stat_of(&samples, |s| s.fps);
                one_core.insert((name, size, clients), fps.median);
                let offered = stat_of(&samples, |s| s.offered_fps);
                let loss = stat_of(&samples, |s| s.loss);
                let cpu = stat_of(&samples, |s| s.cpu_ns_per_frame);
                md.push_str(&format!(
                    "| {name} | {size} | {clients} | {} ({}–{}) | {:.0} | {} | {:.2} | {} | {:.2} % | {:.0} | {} |\n",
                    fmt_rate(fps.median), fmt_rate(fps.min), fmt_rate(fps.max), fps.median * size as f64 * 8.0 / 1e6, fmt_rate(limit), fps.median / limit.max(1.0), fmt_rate(offered.median), loss.median * 100.0, cpu.median, drop_list(&all_drops)
                ));
                json.push(format!(
                    "{{\"scenario\":\"{name}\",\"size\":{size},\"clients\":{clients},\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0},\"kernel_limit_fps\":{limit:.0},\"ratio\":{:.3},\"offered_fps\":{:.0},\"loss\":{:.5},\"cpu_ns_per_frame\":{:.0},\"drops\":{{{}}}}}",
                    fps.median, fps.min, fps.max, fps.median / limit.max(1.0), offered.median, loss.median, cpu.median,
                    all_drops.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
                ));
                eprintln!(
                    "{name} {size} B × {clients}: {} frames/s ({:.2} of the kernel limit)",
                    fmt_rate(fps.median),
                    fps.median / limit.max(1.0)
                );
            }
        }
    }
    if o.runs("scale") {
        md.push_str("\n**Second core** (`--cores 2` on CPUs 0 and 1, 64 clients spread over both cores; the load shares CPU 1 with the second relay core, so this is a lower bound on what a second free core gives):\n\n| scenario | frame | clients | relay frames/s, 2 cores | 1 core (above) | gain | relay CPU ns/frame | drops |\n|---|---|---|---|---|---|---|---|\n");
        for &size in o.sizes.iter().filter(|s| **s <= 1514) {
            for name in ["up", "down"] {
                let (samples, all_drops) = repeat(o.reps, || {
                    if name == "up" {
                        scenario_up(&ns, &dir, size, 64, o.seconds, 2)
                    } else {
                        scenario_down(&ns, &dir, size, 64, o.seconds, 2)
                    }
                });
                let fps = stat_of(&samples, |x| x.fps);
                let cpu = stat_of(&samples, |x| x.cpu_ns_per_frame);
                let base = one_core.get(&(name, size, 64)).copied();
                md.push_str(&format!(
                    "| {name} | {size} | 64 | {} ({}–{}) | {} | {} | {:.0} | {} |\n",
                    fmt_rate(fps.median),
                    fmt_rate(fps.min),
                    fmt_rate(fps.max),
                    base.map_or("not run".into(), fmt_rate),
                    base.map_or("–".into(), |b| format!("{:.2}×", fps.median / b.max(1.0))),
                    cpu.median,
                    drop_list(&all_drops)
                ));
                json.push(format!(
                    "{{\"scenario\":\"{name}_2cores\",\"size\":{size},\"clients\":64,\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0},\"one_core_fps\":{:.0},\"cpu_ns_per_frame\":{:.0}}}",
                    fps.median, fps.min, fps.max, base.unwrap_or(0.0), cpu.median
                ));
                eprintln!(
                    "{name} {size} B × 64 on 2 cores: {} frames/s",
                    fmt_rate(fps.median)
                );
            }
        }
    }
    md.push_str("\n| g2g (relay on both CPUs, `--cores 2`) | frame | pairs | frames/s delivered | Mbit/s | loopback TCP messages/s | relay / TCP | relay CPU ns/frame | drops |\n|---|---|---|---|---|---|---|---|---|\n");
    for &size in &o.sizes {
        if !o.runs("g2g") {
            break;
        }
        let tcp = stat(
            &(0..o.reps)
                .map(|_| kernel_loopback_tcp(&ns, size, o.seconds))
                .collect::<Vec<_>>(),
        )
        .median;
        for &pairs in &o.pairs {
            let (samples, all_drops) =
                repeat(o.reps, || scenario_g2g(&ns, &dir, size, pairs, o.seconds));
            let fps = stat_of(&samples, |x| x.fps);
            let cpu = stat_of(&samples, |x| x.cpu_ns_per_frame);
            md.push_str(&format!(
                "| g2g | {size} | {pairs} | {} ({}–{}) | {:.0} | {} | {:.3} | {:.0} | {} |\n",
                fmt_rate(fps.median),
                fmt_rate(fps.min),
                fmt_rate(fps.max),
                fps.median * size as f64 * 8.0 / 1e6,
                fmt_rate(tcp),
                fps.median / tcp.max(1.0),
                cpu.median,
                drop_list(&all_drops)
            ));
            json.push(format!("{{\"scenario\":\"g2g\",\"size\":{size},\"pairs\":{pairs},\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0},\"loopback_tcp_msgs\":{tcp:.0},\"cpu_ns_per_frame\":{:.0}}}", fps.median, fps.min, fps.max, cpu.median));
            eprintln!(
                "g2g {size} B × {pairs} pairs: {} frames/s",
                fmt_rate(fps.median)
            );
        }
    }
    // Relay frames/s with the swarm flooding, by frame size (64 guests), for the loaded RTT.
    let mut swarm_capacity: HashMap<usize, f64> = HashMap::new();
    if o.runs("swarm") {
        md.push_str("\n**Synthetic guests** (`tapwire swarm`, one process on CPU 1, each guest flooding UDP to the sink as fast as the relay takes it; relay on CPU 0):\n\n| frame | guests | relay frames/s | same with the plain generator (above) | swarm writes that would block | relay input held | relay CPU ns/frame | drops |\n|---|---|---|---|---|---|---|---|\n");
        for &size in o.sizes.iter().filter(|s| **s <= 1514) {
            for guests in [64usize, 1000] {
                let mut runs = Vec::new();
                let mut all_drops: HashMap<String, u64> = HashMap::new();
                for _ in 0..o.reps {
                    let (r, d) = scenario_swarm_flood(&ns, &dir, size, guests, o.seconds);
                    for (k, v) in d {
                        *all_drops.entry(k).or_default() += v;
                    }
                    runs.push(r);
                }
                let fps = stat(&runs.iter().map(|r| r.sample.fps).collect::<Vec<_>>());
                let cpu = stat(
                    &runs
                        .iter()
                        .map(|r| r.sample.cpu_ns_per_frame)
                        .collect::<Vec<_>>(),
                );
                let blocked: u64 = runs.iter().map(|r| r.blocked).sum();
                let held: u64 = runs.iter().map(|r| r.input_held).sum();
                if guests == 64 {
                    swarm_capacity.insert(size, fps.median);
                }
                let plain = one_core.get(&("up", size, guests)).copied();
                md.push_str(&format!(
                    "| {size} | {guests} | {} ({}–{}) | {} | {blocked} | {held} | {:.0} | {} |\n",
                    fmt_rate(fps.median),
                    fmt_rate(fps.min),
                    fmt_rate(fps.max),
                    plain.map_or("not run".into(), fmt_rate),
                    cpu.median,
                    drop_list(&all_drops)
                ));
                json.push(format!(
                    "{{\"scenario\":\"swarm_flood\",\"size\":{size},\"guests\":{guests},\"fps_median\":{:.0},\"fps_min\":{:.0},\"fps_max\":{:.0},\"swarm_writes_blocked\":{blocked},\"relay_input_held\":{held},\"cpu_ns_per_frame\":{:.0}}}",
                    fps.median, fps.min, fps.max, cpu.median
                ));
                eprintln!(
                    "swarm {size} B × {guests}: {} frames/s, {blocked} blocked writes",
                    fmt_rate(fps.median)
                );
            }
        }
        md.push_str("\nThe swarm is not the bottleneck when its writes would block (the relay's TCP windows are full) and the relay holds input back: then the relay, not the swarm, sets the pace.\n");
    }
    if o.runs("rtt") {
        let (mut relay_rtt, mut tap_rtt) = scenario_rtt(&ns, &dir, 2000);
        let mut echo_rtt = tcp_echo_rtt(&ns, 2000);
        let (r50, r99) = (
            percentile(&mut relay_rtt, 0.5),
            percentile(&mut relay_rtt, 0.99),
        );
        let (t50, t99) = (
            percentile(&mut tap_rtt, 0.5),
            percentile(&mut tap_rtt, 0.99),
        );
        let (e50, e99) = (
            percentile(&mut echo_rtt, 0.5),
            percentile(&mut echo_rtt, 0.99),
        );
        md.push_str("\n**Load column**: for *up*, frames the generator had queued ahead of the relay when the window closed (positive: the relay set the pace); for *down*, frames/s the kernel queued to the TAP (relay reads plus drops at the TAP queue).\n");
        md.push_str(&format!(
            "\nIdle RTT of an ICMP echo from a guest to the gateway (2000 echoes, 0.5 ms apart): through tapwire p50 {r50:.0} µs, p99 {r99:.0} µs. The same echo written to and read from a bare TAP by one thread: p50 {t50:.0} µs, p99 {t99:.0} µs. A 64-byte TCP echo between the same two CPUs (the two cross-core wakeups a ping through the relay also pays): p50 {e50:.0} µs, p99 {e99:.0} µs. Added by tapwire beyond the bare TAP and that echo, at the median: {:.0} µs. (Tails do not subtract: at p99 compare the raw figures.)\n",
            r50 - t50 - e50
        ));
        json.push(format!(
            "{{\"scenario\":\"rtt_idle\",\"relay_p50_us\":{r50:.1},\"relay_p99_us\":{r99:.1},\"tap_p50_us\":{t50:.1},\"tap_p99_us\":{t99:.1},\"tcp_echo_p50_us\":{e50:.1},\"tcp_echo_p99_us\":{e99:.1}}}"
        ));
        for &size in o.sizes.iter().filter(|s| [64, 1514].contains(*s)) {
            let capacity = match swarm_capacity.get(&size) {
                Some(c) => *c,
                None => {
                    scenario_swarm_flood(&ns, &dir, size, 64, o.seconds)
                        .0
                        .sample
                        .fps
                }
            };
            let (mut rtts, load) = scenario_rtt_loaded(&ns, &dir, size, capacity * 0.5, 2000);
            let (l50, l90, l99) = (
                percentile(&mut rtts, 0.5),
                percentile(&mut rtts, 0.9),
                percentile(&mut rtts, 0.99),
            );
            md.push_str(&format!(
                "\nRTT under load, {size} B frames: 64 swarm guests paced to half the relay's measured capacity ({} of {} frames/s; {} measured at the TAP during the echoes): p50 {l50:.0} µs, p90 {l90:.0} µs, p99 {l99:.0} µs ({} echoes answered of 2000).\n",
                fmt_rate(capacity * 0.5),
                fmt_rate(capacity),
                fmt_rate(load),
                rtts.len()
            ));
            json.push(format!(
                "{{\"scenario\":\"rtt_loaded\",\"size\":{size},\"target_load_fps\":{:.0},\"measured_load_fps\":{load:.0},\"relay_p50_us\":{l50:.1},\"relay_p90_us\":{l90:.1},\"relay_p99_us\":{l99:.1},\"answered\":{}}}",
                capacity * 0.5,
                rtts.len()
            ));
            eprintln!(
                "rtt under {} frames/s of {size} B: p50 {l50:.0} µs, p99 {l99:.0} µs",
                fmt_rate(load)
            );
        }
    }
    if o.runs("conn") {
        let (upgraded, pinged, rss) = scenario_conn(&ns, &dir, &o.idle);
        md.push_str(&format!("\nConnections: {upgraded:.0}/s upgraded (200 guests, 8 connecting at once); {pinged:.0}/s counting until each of them got an answer to an ICMP echo to the gateway.\n\nRelay RSS per idle client: "));
        md.push_str(
            &rss.iter()
                .map(|(n, kib)| format!("{kib:.1} KiB at {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        md.push_str(".\n");
        json.push(format!(
            "{{\"scenario\":\"conn\",\"upgrades_per_s\":{upgraded:.0},\"upgrade_and_ping_per_s\":{pinged:.0},\"rss_kib_per_idle_client\":{{{}}}}}",
            rss.iter().map(|(n, k)| format!("\"{n}\":{k:.2}")).collect::<Vec<_>>().join(",")
        ));
    }
    std::fs::create_dir_all(&o.out).expect("out dir");
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let stem = o.out.join(format!("relay-bench-{date}"));
    std::fs::write(stem.with_extension("md"), &md).expect("write md");
    std::fs::write(
        stem.with_extension("json"),
        format!("[\n{}\n]\n", json.join(",\n")),
    )
    .expect("write json");
    println!("{md}");
    eprintln!("written to {}.{{md,json}}", stem.display());
    let _ = std::fs::remove_dir_all(&dir);
}

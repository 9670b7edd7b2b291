//! The relay under test and the guests' addresses: placement, MACs, static neighbours, clients.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;

use tapwire_testkit::counters::Counters;
use tapwire_testkit::netns::{unique, Netns};
use tapwire_testkit::packet::{format_mac, parse_mac};
use tapwire_testkit::process::RelayProcess;
use tapwire_testkit::sibling_binary;

use crate::sys::*;

pub(crate) const RELAY_CPU: usize = 0;

pub(crate) const LOAD_CPU: usize = 1;

pub(crate) const SINK_PORT: u16 = 9999;
/// Guests 0..this have their address reserved (up/down with up to 1 000 clients, g2g's
/// 1000 + pair). Scenarios with more guests pass `--allow-spoofing`.
pub(crate) const RESERVED_GUESTS: usize = 1100;

pub(crate) const GUEST_MAC_BASE: [u8; 6] = [0x02, 0x00, 0x0a, 0x56, 0, 0];

/// The relay under test: `tapwire run` in the bench namespace, pinned with taskset, no DHCP,
/// deep send queues (1024) and no pings, so that the numbers measure forwarding; or, for the
/// floor rows, `relay-floor` in its place ([`Relay::floor`]).
pub(crate) struct Relay {
    process: RelayProcess,
    /// Whether `process` is `relay-floor` (its own binary, `src/bin/relay-floor/`).
    floor: bool,
    pub tap: String,
    pub tap_mac: [u8; 6],
}

/// Which way `relay-floor` moves frames.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FloorWay {
    Up,
    Down,
}

/// How long a relay may take to start or to stop: with 1 000 networks, 15–25 s here (the
/// kernel makes and unregisters their TAPs one by one).
const LIMIT: std::time::Duration = std::time::Duration::from_secs(90);

impl Relay {
    /// The relay with 1 core on `RELAY_CPU`.
    pub(crate) fn start(ns: &Netns, dir: &Path, extra: &[&str]) -> Relay {
        Self::start_on(ns, dir, &RELAY_CPU.to_string(), "1", extra)
    }

    /// The relay with 1 core on `RELAY_CPU`, or with 2 on both CPUs.
    pub(crate) fn start_cores(ns: &Netns, dir: &Path, cores: usize, extra: &[&str]) -> Relay {
        match cores {
            1 => Self::start(ns, dir, extra),
            _ => Self::start_on(ns, dir, "0,1", "2", extra),
        }
    }

    /// The relay with `cores` cores, allowed on CPUs `cpus` (a taskset list).
    pub(crate) fn start_on(
        ns: &Netns,
        dir: &Path,
        cpus: &str,
        cores: &str,
        extra: &[&str],
    ) -> Relay {
        Self::launch(ns, dir, (cpus, cores), false, extra)
    }

    /// [`Relay::start`] with its DHCP server (dnsmasq) running.
    pub(crate) fn start_dhcp(ns: &Netns, dir: &Path, extra: &[&str]) -> Relay {
        Self::launch(ns, dir, (&RELAY_CPU.to_string(), "1"), true, extra)
    }

    /// The relay with `cores` cores allowed on CPUs `cpus` (a taskset list), with or without
    /// DHCP.
    fn launch(
        ns: &Netns,
        dir: &Path,
        (cpus, cores): (&str, &str),
        dhcp: bool,
        extra: &[&str],
    ) -> Relay {
        wait_for_port(ns);
        let tap = unique("twb");
        let run_dir = dir.join("run").display().to_string();
        let mut args: Vec<String> = [
            "--cores",
            cores,
            "--tap",
            &tap,
            "--send-queue",
            "1024",
            "--max-clients",
            "16000",
            "--ping-interval",
            "0",
            "--runtime-dir",
            &run_dir,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if !dhcp {
            args.push("--no-dhcp".into());
        }
        // The defaults stay on: host protection (the sink's port is opened) and anti-spoofing
        // (the bench's guests have static addresses, reserved here) unless `extra` turns it
        // off.
        args.extend(["--allow-host-port".to_string(), format!("udp:{SINK_PORT}")]);
        if !extra.contains(&"--allow-spoofing") {
            let pairs: Vec<String> = (0..RESERVED_GUESTS)
                .map(|i| format!("{}={}", format_mac(guest_mac(i)), guest_ip(i)))
                .collect();
            args.extend(["--reserve".to_string(), pairs.join(",")]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let process = RelayProcess::start_within(
            ns,
            &["taskset", "-c", cpus],
            &sibling_binary("tapwire", "TAPWIRE_BIN"),
            &args,
            dir.join(format!("{tap}.log")),
            LIMIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Self::attach(ns, (process, false), tap)
    }

    /// `relay-floor` in the relay's place, pinned to `RELAY_CPU`, moving `way` on a TAP for
    /// frames of `size` bytes, at the address tapwire's TAP has; with `firewall`, behind the
    /// relay's own nftables table ([`Firewall`]).
    pub(crate) fn floor(
        ns: &Netns,
        dir: &Path,
        way: FloorWay,
        size: usize,
        firewall: Option<&Firewall>,
    ) -> Relay {
        wait_for_port(ns);
        let tap = unique("twb");
        let mtu = (size.max(1514) - 14).to_string();
        let way = match way {
            FloorWay::Up => "up",
            FloorWay::Down => "down",
        };
        let mut args: Vec<String> = ["--tap", &tap, "--mtu", &mtu, "--direction", way]
            .iter()
            .map(|a| a.to_string())
            .collect();
        if let Some(fw) = firewall {
            let file = dir.join(format!("{tap}.nft"));
            std::fs::write(&file, fw.table.replace(&fw.tap, &tap)).expect("write the ruleset");
            args.extend(["--nft".to_string(), file.display().to_string()]);
        }
        let process = RelayProcess::start_within(
            ns,
            &["taskset", "-c", &RELAY_CPU.to_string()],
            &sibling_binary("relay-floor", "RELAY_FLOOR_BIN"),
            &args,
            dir.join(format!("{tap}.log")),
            LIMIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Self::attach(ns, (process, true), tap)
    }

    fn attach(ns: &Netns, (process, floor): (RelayProcess, bool), tap: String) -> Relay {
        let mac = ns
            .run(&["cat", &format!("/sys/class/net/{tap}/address")])
            .expect("tap mac");
        let tap_mac = parse_mac(&mac).expect("mac");
        Relay {
            process,
            floor,
            tap,
            tap_mac,
        }
    }

    /// Its pid (`ip netns exec` and taskset exec tapwire: the same pid).
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Nanoseconds its first core's thread (`tapwire-core0`) has spent on a CPU.
    pub(crate) fn core_runtime_ns(&self) -> u64 {
        thread_runtime_ns(self.pid(), "tapwire-core0")
            .unwrap_or_else(|| panic!("relay {} has no thread tapwire-core0", self.pid()))
    }

    /// Its drop counters now, while it runs.
    pub(crate) fn live_drops(&self) -> Drops {
        drops_of(&self.live_counters())
    }

    /// Its counters now, while it runs (SIGUSR1, or `--metrics` if it has it).
    pub(crate) fn live_counters(&self) -> Counters {
        self.process
            .try_counters()
            .unwrap_or_else(|e| panic!("the relay's counters: {e}"))
    }

    /// Stops the relay (SIGTERM); its counters just before (on SIGUSR1: at its default log
    /// level a relay ends with a paragraph, not every counter). For the floor, what it says
    /// it could not move, as drops `floor_refused` and `floor_unroutable`.
    pub(crate) fn stop(mut self) -> Counters {
        let p = &mut self.process;
        if !self.floor {
            let counters = p
                .try_counters()
                .unwrap_or_else(|e| panic!("the relay's counters: {e}"));
            p.stop_within(LIMIT);
            return counters;
        }
        p.stop_within(LIMIT);
        let log = p.proc.log_text();
        let moved = floor_moved(&log)
            .unwrap_or_else(|| panic!("relay-floor ended without its line:\n{log}"));
        Counters::parse(&format!(
            "tapwire_drops_total{{reason=\"floor_refused\"}} {}\ntapwire_drops_total{{reason=\"floor_unroutable\"}} {}\n",
            moved[2], moved[3]
        ))
    }
}

/// The nftables table a relay with the bench's options makes (its host protection), and the
/// name of its TAP, which the table names.
pub(crate) struct Firewall {
    pub table: String,
    pub tap: String,
}

impl Firewall {
    /// Starts a relay with the bench's options and reads its table.
    pub(crate) fn of_relay(ns: &Netns, dir: &Path) -> Firewall {
        let relay = Relay::start(ns, dir, &[]);
        let table = ns
            .run(&[
                "nft",
                "list",
                "table",
                "inet",
                &format!("tapwire_{}", relay.tap),
            ])
            .expect("the relay's nftables table");
        let tap = relay.tap.clone();
        relay.stop();
        Firewall { table, tap }
    }
}

/// The numbers of `relay-floor`'s last line: frames, bytes, refused, unroutable.
pub(crate) fn floor_moved(log: &str) -> Option<[u64; 4]> {
    let line = log.lines().rev().find(|l| l.starts_with("relay-floor: "))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    numbers.try_into().ok()
}

/// A relay just stopped may still hold the port a moment after it exited (one start in the
/// networks group, after a relay with 1 000 networks, was refused with "Address already in
/// use"): waits for it, bounded.
fn wait_for_port(ns: &Netns) {
    let free_by = std::time::Instant::now() + LIMIT;
    while ns
        .run(&["ss", "-ltnH", "sport = :8086"])
        .is_ok_and(|out| !out.trim().is_empty())
    {
        if std::time::Instant::now() > free_by {
            panic!("port 8086 still taken in the bench namespace after {LIMIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Drop counters by reason, summed over repetitions.
pub(crate) type Drops = BTreeMap<String, u64>;

/// The non-zero drop counters of a stopped relay.
pub(crate) fn drops_of(counters: &Counters) -> Drops {
    counters.nonzero_drops().into_iter().collect()
}

pub(crate) fn guest_mac(i: usize) -> [u8; 6] {
    let mut m = GUEST_MAC_BASE;
    m[4] = (i >> 8) as u8;
    m[5] = i as u8;
    m
}

pub(crate) fn guest_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 86, 1 + (i >> 8) as u8, (i & 0xFF) as u8 + 1)
}

/// Tells the host guest `i`'s MAC, so the gateway answers it without ARP.
pub(crate) fn static_neighbour(ns: &Netns, tap: &str, i: usize) {
    neighbour(ns, tap, &guest_ip(i).to_string(), &format_mac(guest_mac(i)));
}

/// Connects `n` WebSocket clients from CPU `LOAD_CPU` inside `ns`.
pub(crate) fn connect_clients(ns: &Netns, n: usize) -> Vec<TcpStream> {
    spawn_in(ns, LOAD_CPU, move || {
        (0..n)
            .map(|_| tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", None).expect("connect"))
            .collect()
    })
    .join()
    .expect("connect thread")
}

/// How the clients reach the relay: ws://, or wss:// with the relay's certificate.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    Ws,
    Wss(tapwire_testkit::tls::Pem),
}

/// A client stream of either kind.
pub(crate) type Stream = Box<dyn tapwire_testkit::tls::Transport + Send>;

impl Link {
    /// The relay options this link needs.
    pub(crate) fn relay_args(&self) -> Vec<String> {
        match self {
            Link::Ws => Vec::new(),
            Link::Wss(pem) => vec![
                "--listen-tls".into(),
                "127.0.0.1:8443".into(),
                "--tls-cert".into(),
                pem.cert.display().to_string(),
                "--tls-key".into(),
                pem.key.display().to_string(),
            ],
        }
    }

    /// Connects `n` clients from CPU `LOAD_CPU` inside `ns`.
    pub(crate) fn connect(&self, ns: &Netns, n: usize) -> Vec<Stream> {
        self.connect_messages(ns, n, None)
    }

    /// [`Link::connect`] for clients that write messages of `message` bytes: over wss://,
    /// each goes out in a TLS record of its own, as a browser's WebSocket sends them.
    pub(crate) fn connect_messages(
        &self,
        ns: &Netns,
        n: usize,
        message: Option<usize>,
    ) -> Vec<Stream> {
        let link = self.clone();
        spawn_in(ns, LOAD_CPU, move || {
            (0..n)
                .map(|_| match (&link, message) {
                    (Link::Wss(pem), Some(message)) => Box::new(RecordPerMessage {
                        inner: tapwire_testkit::ws::connect_tls(
                            "wss://127.0.0.1:8443/",
                            &pem.cert,
                            None,
                        )
                        .expect("connect over TLS"),
                        message,
                    }) as Stream,
                    _ => link.connect_one(),
                })
                .collect::<Vec<Stream>>()
        })
        .join()
        .expect("connect thread")
    }

    /// One client (the caller is in the relay's namespace).
    pub(crate) fn connect_one(&self) -> Stream {
        match self {
            Link::Ws => Box::new(
                tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", None).expect("connect"),
            ),
            Link::Wss(pem) => Box::new(
                tapwire_testkit::ws::connect_tls("wss://127.0.0.1:8443/", &pem.cert, None)
                    .expect("connect over TLS"),
            ),
        }
    }
}

/// A TLS client stream that puts every `message` bytes it writes into a record of its own.
pub(crate) struct RecordPerMessage {
    inner: tapwire_testkit::tls::TlsStream,
    message: usize,
}

impl std::io::Read for RecordPerMessage {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl std::io::Write for RecordPerMessage {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One writer call, one record (rustls splits only above 16 KiB); records go out
        // together, up to 32 KiB at a time (rustls buffers at most 64 KiB), as a browser's
        // queued messages do.
        let mut pending = 0;
        for m in buf.chunks(self.message) {
            self.inner.conn.writer().write_all(m)?;
            pending += m.len();
            if pending >= 32 * 1024 {
                self.inner.conn.complete_io(&mut self.inner.sock)?;
                pending = 0;
            }
        }
        while self.inner.conn.wants_write() {
            self.inner.conn.write_tls(&mut self.inner.sock)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl tapwire_testkit::tls::Transport for RecordPerMessage {
    fn set_read_timeout(&self, limit: Option<std::time::Duration>) -> std::io::Result<()> {
        self.inner.sock.set_read_timeout(limit)
    }
    fn tcp(&self) -> &TcpStream {
        &self.inner.sock
    }
}

/// Relay options for frames of `size` bytes: jumbo sizes need a larger MTU.
pub(crate) fn mtu_args(size: usize) -> Vec<String> {
    if size > 1514 {
        vec!["--mtu".into(), (size - 14).to_string()]
    } else {
        Vec::new()
    }
}

pub(crate) fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

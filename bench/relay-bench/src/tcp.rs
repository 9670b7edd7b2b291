//! Group `tcp`: bulk TCP between kernel-stack guests and the host, the traffic real guests
//! mostly carry. Each guest is `tapwire-guest` (a TAP in a namespace of its own, pumped over
//! a WebSocket) running `iperf3` against a server of its own in the bench namespace, all at
//! once; the same guests run once through tapwire and once through `relay-bridge` (a Linux
//! bridge and a TAP per client: the kernel path wsnic and websockproxy use), in the same run.
//!
//! Placement as everywhere: the relay (or relay-bridge) on `RELAY_CPU`; the guests, their
//! pumps and the iperf3 processes on `LOAD_CPU`. So the load CPU carries two TCP stacks'
//! worth of work per byte and usually sets the pace: the figure that compares the relays is
//! the relay CPU's time per Gbit moved, next to the throughput.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tapwire_testkit::netns::{unique, Netns};
use tapwire_testkit::packet::format_mac;
use tapwire_testkit::process::{Proc, RelayProcess};
use tapwire_testkit::sibling_binary;

use crate::relay::*;
use crate::stats::{median, stat, Stat};
use crate::sys::*;
use crate::Ctx;

/// The first guest's iperf3 port; guest `i` uses `IPERF_BASE + i`.
const IPERF_BASE: u16 = 5201;
/// Guest counts.
const GUESTS: [usize; 2] = [1, 16];

/// One measured cell: a relay path, a direction and a guest count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct TcpCell {
    /// `tapwire`, `tapwire-offload` (with `--offload`) or `bridge` (relay-bridge).
    pub path: String,
    /// `up` (guests send, the host receives) or `down` (iperf3 `-R`).
    pub way: String,
    pub guests: usize,
    /// Goodput summed over the guests, as the receivers counted it (Gbit/s): median, min, max.
    pub gbits: Stat,
    /// Relay process CPU time (all its threads' time on a CPU, softirqs run in their context
    /// included) per Gbit moved, in seconds: median.
    pub relay_cpu_s_per_gbit: f64,
    /// Busy time of the relay's CPU (the relay, and the kernel work it triggers there, such as
    /// softirqs) per Gbit moved, in seconds: median.
    pub relay_cpu_busy_s_per_gbit: f64,
    /// Share of the window the load CPU was busy: median.
    pub load_cpu_busy: f64,
    /// TCP retransmissions the senders counted, summed over the repetitions.
    pub retransmits: u64,
    /// The relay's drop counters, summed (tapwire only).
    pub drops: Drops,
}

/// What one iperf3 round of all guests measured.
struct Round {
    bits: f64,
    seconds: f64,
    retransmits: u64,
}

/// The relay of one path with its guests and their servers; everything goes on drop.
struct Setup {
    relay: Option<Relay>,
    bridge: Option<RelayProcess>,
    guests: Vec<(Proc, Netns)>,
    servers: Vec<Proc>,
}

impl Setup {
    fn start(ns: &Netns, dir: &Path, path: &str, guests: usize) -> Setup {
        let (relay, bridge) = if path.starts_with("tapwire") {
            let ports: Vec<String> = (0..guests)
                .map(|i| format!("tcp:{}", IPERF_BASE + i as u16))
                .collect();
            let ports = ports.join(",");
            let mut args = vec!["--allow-host-port", &ports];
            if path == "tapwire-offload" {
                args.push("--offload");
            }
            (Some(Relay::start(ns, dir, &args)), None)
        } else {
            (None, Some(start_bridge(ns, dir)))
        };
        let mut setup = Setup {
            relay,
            bridge,
            guests: Vec::new(),
            servers: Vec::new(),
        };
        for i in 0..guests {
            setup.guests.push(spawn_guest(ns, dir, i));
            let port = (IPERF_BASE + i as u16).to_string();
            let cpu = LOAD_CPU.to_string();
            let server = Proc::spawn(
                ns.cmd(&[
                    "taskset",
                    "-c",
                    &cpu,
                    "iperf3",
                    "-s",
                    "-B",
                    "10.86.0.1",
                    "-p",
                    &port,
                ]),
                dir.join(format!("iperf3-server-{path}-{i}.log")),
            )
            .expect("iperf3 server");
            setup.servers.push(server);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns
            .run(&["ss", "-ltnH"])
            .map(|s| s.lines().filter(|l| l.contains("10.86.0.1:")).count() < guests)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "iperf3 servers did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        setup
    }

    /// The pid whose CPU time is the relay's.
    fn pid(&self) -> u32 {
        match (&self.relay, &self.bridge) {
            (Some(r), _) => r.pid(),
            (None, Some(b)) => b.pid(),
            (None, None) => unreachable!("a setup has a relay"),
        }
    }

    /// Runs every guest's iperf3 client at once for `seconds` (`-R`: the host sends).
    fn round(&self, dir: &Path, reverse: bool, seconds: u64) -> Round {
        let secs = seconds.to_string();
        let cpu = LOAD_CPU.to_string();
        let clients: Vec<Proc> = self
            .guests
            .iter()
            .enumerate()
            .map(|(i, (_, gns))| {
                let port = (IPERF_BASE + i as u16).to_string();
                let mut args = vec![
                    "taskset",
                    "-c",
                    &cpu,
                    "timeout",
                    "60",
                    "iperf3",
                    "-c",
                    "10.86.0.1",
                    "-p",
                    &port,
                    "-t",
                    &secs,
                    "-J",
                ];
                if reverse {
                    args.push("-R");
                }
                Proc::spawn(gns.cmd(&args), dir.join(format!("iperf3-client-{i}.json")))
                    .expect("iperf3 client")
            })
            .collect();
        let mut round = Round {
            bits: 0.0,
            seconds: 0.0,
            retransmits: 0,
        };
        for mut c in clients {
            let status = c.wait_exit(Duration::from_secs(70));
            let text = c.log_text();
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("iperf3 ({status:?}) printed no JSON ({e}):\n{text}"));
            let end = &json["end"];
            let received = &end["sum_received"];
            round.bits += received["bytes"].as_f64().unwrap_or(0.0) * 8.0;
            round.seconds = round
                .seconds
                .max(received["seconds"].as_f64().unwrap_or(0.0));
            round.retransmits += end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        }
        round
    }

    /// tapwire's drop counters now (none for relay-bridge, which counts none).
    fn drops(&self) -> Drops {
        self.relay
            .as_ref()
            .map(Relay::live_drops)
            .unwrap_or_default()
    }

    fn stop(mut self) {
        self.guests.clear();
        self.servers.clear();
        if let Some(mut b) = self.bridge.take() {
            b.stop_within(Duration::from_secs(10));
        }
        if let Some(r) = self.relay.take() {
            r.stop();
        }
    }
}

/// `relay-bridge` in the bench namespace, on `RELAY_CPU`.
fn start_bridge(ns: &Netns, dir: &Path) -> RelayProcess {
    let bridge = unique("twbr");
    // Room for the client number in the TAP names (15 characters at most).
    let bridge: String = bridge.chars().take(11).collect();
    RelayProcess::start(
        ns,
        &["taskset", "-c", &RELAY_CPU.to_string()],
        &sibling_binary("relay-bridge", "RELAY_BRIDGE_BIN"),
        &["--bridge".to_string(), bridge.clone()],
        dir.join(format!("{bridge}.log")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Guest `i`: `tapwire-guest` on `LOAD_CPU`, its TAP in a new namespace with IPv6 off (no
/// stray traffic), the bench's MAC and address for guest `i` (reserved in tapwire).
fn spawn_guest(ns: &Netns, dir: &Path, i: usize) -> (Proc, Netns) {
    let gns = Netns::new("twbg").expect("guest netns");
    for key in ["all", "default"] {
        gns.run(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
        ])
        .expect("sysctl");
    }
    let bin: PathBuf = sibling_binary("tapwire-guest", "TAPWIRE_GUEST_BIN");
    let bin = bin.display().to_string();
    let proc = Proc::spawn(
        ns.cmd(&[
            "taskset",
            "-c",
            &LOAD_CPU.to_string(),
            &bin,
            "--url",
            "ws://127.0.0.1:8086/",
            "--netns",
            &gns.name,
            "--tap",
            "eth0",
        ]),
        dir.join(format!("{}.log", gns.name)),
    )
    .expect("tapwire-guest");
    let deadline = Instant::now() + Duration::from_secs(10);
    while gns.run(&["ip", "link", "show", "eth0"]).is_err() {
        assert!(
            Instant::now() < deadline,
            "guest TAP did not appear: {}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mac = format_mac(guest_mac(i));
    let addr = format!("{}/16", guest_ip(i));
    gns.run(&["ip", "link", "set", "eth0", "address", &mac])
        .expect("guest MAC");
    gns.run(&["ip", "addr", "add", &addr, "dev", "eth0"])
        .expect("guest address");
    // The first frame the relay sees from the guest, so that it knows where the guest is.
    let _ = gns.run(&["ping", "-c", "1", "-W", "2", "10.86.0.1"]);
    (proc, gns)
}

/// Measures one path for `guests` guests, both ways, `reps` times each.
fn measure(ctx: &Ctx, path: &str, guests: usize) -> Vec<TcpCell> {
    let o = &ctx.opts;
    let seconds = o.seconds.ceil().max(2.0) as u64;
    let setup = Setup::start(&ctx.ns, &ctx.dir, path, guests);
    let pid = setup.pid();
    let ticks = ticks_per_second();
    let mut cells = Vec::new();
    for (way, reverse) in [("up", false), ("down", true)] {
        let (mut gbits, mut cpu, mut busy, mut load) = (vec![], vec![], vec![], vec![]);
        let mut retransmits = 0;
        let mut drops = Drops::new();
        for _ in 0..o.reps {
            let d0 = setup.drops();
            let (c0, b0, l0) = (
                process_runtime_ns(pid),
                cpu_busy_jiffies(RELAY_CPU),
                cpu_busy_jiffies(LOAD_CPU),
            );
            let r = setup.round(&ctx.dir, reverse, seconds);
            let (c1, b1, l1) = (
                process_runtime_ns(pid),
                cpu_busy_jiffies(RELAY_CPU),
                cpu_busy_jiffies(LOAD_CPU),
            );
            let gbit = r.bits / 1e9;
            gbits.push(gbit / r.seconds.max(1e-9));
            cpu.push((c1 - c0) as f64 / 1e9 / gbit.max(1e-9));
            busy.push((b1.0 - b0.0) as f64 / ticks / gbit.max(1e-9));
            load.push((l1.0 - l0.0) as f64 / (l1.1 - l0.1).max(1) as f64);
            retransmits += r.retransmits;
            for (reason, n) in setup.drops() {
                let before = d0.get(&reason).copied().unwrap_or(0);
                *drops.entry(reason).or_insert(0) += n - before;
            }
        }
        let cell = TcpCell {
            path: path.into(),
            way: way.into(),
            guests,
            gbits: stat(&gbits),
            relay_cpu_s_per_gbit: median(&mut cpu),
            relay_cpu_busy_s_per_gbit: median(&mut busy),
            load_cpu_busy: median(&mut load),
            retransmits,
            drops,
        };
        progress(&cell);
        cells.push(cell);
    }
    setup.stop();
    cells
}

fn progress(c: &TcpCell) {
    eprintln!(
        "tcp: {} {} × {}: {:.2} Gbit/s, relay {:.2} CPU-s per Gbit",
        c.path, c.way, c.guests, c.gbits.median, c.relay_cpu_s_per_gbit
    );
}

/// Group `tcp`: every path, 1 and 16 guests, both ways.
pub(crate) fn run(ctx: &Ctx) -> Vec<TcpCell> {
    let mut cells = Vec::new();
    for guests in GUESTS {
        for path in ["tapwire", "tapwire-offload", "bridge"] {
            cells.extend(measure(ctx, path, guests));
        }
    }
    cells
}

/// The group's table, with tapwire's cells over the bridge's of the same direction and count.
pub(crate) fn markdown(cells: &[TcpCell]) -> String {
    if cells.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\nBulk TCP: kernel-stack guests (`tapwire-guest`, MTU 1500) each running iperf3 against a server of its own on the host, all at once, through tapwire (`tapwire`, and `tapwire-offload` with `--offload`) and through `relay-bridge` (a Linux bridge with a TAP per client, the kernel path of wsnic and websockproxy, pumped by two blocking threads per client). Relay on CPU {RELAY_CPU}; guests, pumps and iperf3 on CPU {LOAD_CPU}. *CPU per Gbit*: the relay process's CPU time per Gbit moved; *CPU busy per Gbit*: all the relay CPU's busy time (the kernel's work there included) per Gbit.\n\n| path | way | guests | Gbit/s | relay CPU-s per Gbit | relay CPU busy s per Gbit | load CPU busy | retransmits | drops |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for c in cells {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} ({:.2}–{:.2}) | {:.2} | {:.2} | {:.0} % | {} | {} |\n",
            c.path,
            c.way,
            c.guests,
            c.gbits.median,
            c.gbits.min,
            c.gbits.max,
            c.relay_cpu_s_per_gbit,
            c.relay_cpu_busy_s_per_gbit,
            c.load_cpu_busy * 100.0,
            c.retransmits,
            crate::report::drop_list(&c.drops)
        ));
    }
    md
}

/// Writes `STEM-tcp.svg`: for each direction, Gbit/s (top) and relay CPU-seconds per Gbit
/// (bottom) against guests, a line per path.
pub(crate) fn chart(cells: &[TcpCell], stem: &Path) -> Option<PathBuf> {
    if cells.is_empty() {
        return None;
    }
    crate::chart::write(stem, "tcp", |path| draw(cells, path))
}

fn draw(cells: &[TcpCell], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (840, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    let mut paths: Vec<&str> = cells.iter().map(|c| c.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let colours = [RED, BLUE, GREEN, MAGENTA];
    let x_max = cells.iter().map(|c| c.guests).max().unwrap_or(1) as f64 * 2.0;
    for (row, (label, value)) in [
        (
            "Gbit/s",
            (|c: &TcpCell| c.gbits.median) as fn(&TcpCell) -> f64,
        ),
        ("relay CPU-s per Gbit", |c: &TcpCell| c.relay_cpu_s_per_gbit),
    ]
    .into_iter()
    .enumerate()
    {
        for (col, way) in ["up", "down"].into_iter().enumerate() {
            let panel = &panels[row * 2 + col];
            let of_way: Vec<&TcpCell> = cells.iter().filter(|c| c.way == way).collect();
            // Room above the lines for the legend in the lower panels.
            let headroom = if row == 0 { 1.2 } else { 1.6 };
            let y_max = of_way.iter().map(|c| value(c)).fold(0.1, f64::max) * headroom;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{way}: {label}"), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(50)
                .build_cartesian_2d((0.5f64..x_max).log_scale(), 0f64..y_max)?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .x_desc("guests")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_desc(label)
                .draw()?;
            for (i, p) in paths.iter().enumerate() {
                let colour = colours[i % colours.len()];
                let points: Vec<(f64, f64)> = of_way
                    .iter()
                    .filter(|c| c.path == *p)
                    .map(|c| (c.guests as f64, value(c)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                    .label(*p)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
                chart.draw_series(points.iter().map(|&pt| Circle::new(pt, 4, colour.filled())))?;
            }
            let position = if row == 0 {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperLeft
            };
            crate::chart::legend(&mut chart, position)?;
        }
    }
    root.present()?;
    Ok(())
}

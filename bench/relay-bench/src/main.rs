//! relay-bench: end-to-end numbers for tapwire, each next to the kernel's own limit measured
//! in the same run on the same cores. Needs root (namespaces, TAPs). Everything runs inside a
//! namespace made here and deleted at the end; every loop is bounded in time.
//!
//! Placement: the relay (`--cores 1`) and the kernel-limit loops on CPU 0; load generators,
//! sinks and receivers on CPU 1. One module per scenario group; every measured line is a
//! [`report::Row`], written as markdown and JSON to `bench/results/`.

mod chart;
mod chart_groups;
mod conn;
mod density;
mod farm;
mod g2g;
mod kernel;
mod nat;
mod networks;
mod relay;
mod report;
mod rtt;
mod stats;
mod swarm;
mod sys;
mod tcp;
mod updown;
mod wss;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use tapwire_testkit::netns::{unique, Netns};

use relay::{LOAD_CPU, RELAY_CPU};
use report::{fmt_rate, Results, Row, Table};

/// Scenario groups, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Group {
    /// Guests → host: frames to a UDP sink, against the kernel's TAP write limit.
    Up,
    /// Host → guests: a UDP sender, against the kernel's TAP read limit.
    Down,
    /// Up and down with a second relay core.
    Scale,
    /// Guest pairs across cores, against loopback TCP.
    G2g,
    /// `tapwire-swarm` as the load.
    Swarm,
    /// ICMP round trips, idle and under 10, 50 and 80 % load.
    Rtt,
    /// Connection rate and memory per idle client.
    Conn,
    /// How many guests one core holds at a fixed load per guest (p99 ≤ 1 ms, no loss).
    Density,
    /// Up with anti-spoofing on (default) and off, alternated.
    Spoofing,
    /// The floor's up behind the relay's host protection and bare, alternated.
    Firewall,
    /// Guests ↔ an "internet" through --nat, against the kernel's forwarding limit.
    Nat,
    /// Up and down over wss:// next to ws://, and connections per second with TLS.
    Wss,
    /// Up and down in the default network, one network, 64 networks and beside 1 000 idle ones; the
    /// time to make a network on demand; the memory of 1 000 networks.
    Networks,
    /// Bulk TCP (iperf3) from kernel-stack guests through tapwire, with and without
    /// `--offload`, and through a Linux bridge with a TAP per guest.
    Tcp,
    /// A farm: up through HAProxy against straight to a host, failover time after `kill -9`,
    /// and a spanning network on one host against across two.
    Farm,
}

/// End-to-end benchmark of tapwire against the kernel's limits, measured in the same run.
#[derive(Debug, Parser)]
#[command(version)]
struct Opts {
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Repetitions of every measurement (the tables show median, min and max).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Ethernet frame sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 512, 1514, 9000])]
    sizes: Vec<usize>,
    /// Client counts for up and down.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 1000])]
    clients: Vec<usize>,
    /// Idle client counts for the memory figure.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 10_000])]
    idle: Vec<usize>,
    /// Guest pair counts for g2g.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 32])]
    pairs: Vec<usize>,
    /// Loads for the rtt group's round trips: the percentage of its time the relay's core
    /// thread is busy (the swarm's rate is adjusted until it is, within 5 points).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50, 80])]
    rtt_loads: Vec<u32>,
    /// Density: UDP datagrams per second each guest sends (and, echoed, receives).
    #[arg(long, default_value_t = 200)]
    density_pps: u64,
    /// Density: every K-th datagram of a guest goes to the broadcast address (0: none).
    #[arg(long, default_value_t = 100)]
    density_broadcast_every: u64,
    /// Scenario groups to run (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Group>,
    /// Where the markdown and JSON results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Measure nothing: draw the charts of the results in this JSON file (a run's), beside it.
    #[arg(long, value_name = "JSON")]
    charts_from: Option<PathBuf>,
}

/// Draws every chart the results have material for, beside `stem`, and names each on stderr.
fn draw_charts(results: &Results, stem: &std::path::Path) {
    let written = chart::updown(&results.rows, stem)
        .into_iter()
        .chain(chart::rtt(
            results.rtt_idle.as_ref(),
            &results.rtt_loaded,
            stem,
        ))
        .chain(chart_groups::groups(&results.rows, stem))
        .chain(chart::density(&results.density, stem))
        .chain(tcp::chart(&results.tcp, stem))
        .chain(results.conn.as_ref().and_then(|c| conn::chart(c, stem)));
    for chart in written {
        eprintln!("chart: {}", chart.display());
    }
}

/// `--charts-from`: the charts of a saved run, beside its JSON.
fn charts_from(json: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let saved: Results =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    draw_charts(&saved, &json.with_extension(""));
    Ok(())
}

impl Opts {
    fn runs(&self, group: Group) -> bool {
        self.only.is_empty() || self.only.contains(&group)
    }
}

/// What every scenario runs in.
struct Ctx {
    opts: Opts,
    ns: Netns,
    /// Logs and scratch files of this run.
    dir: PathBuf,
}

/// When the run started, for the progress lines.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// One line on stderr per measured row, while the run goes on, with the time since the start.
fn progress(row: &Row) {
    let elapsed = STARTED
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    let ratio = row
        .ratio()
        .map_or(String::new(), |r| format!(" ({r:.2} of the reference)"));
    let ratio = match row.floor_ratio() {
        Some(f) => format!("{ratio} ({f:.2} of the floor)"),
        None => ratio,
    };
    eprintln!(
        "[{:02}:{:02}] {} {} B × {}: {} frames/s{ratio}",
        elapsed / 60,
        elapsed % 60,
        row.scenario,
        row.size,
        row.count.unwrap_or(1),
        fmt_rate(row.fps.median)
    );
}

fn machine(opts: &Opts) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cpu}, {} CPUs, kernel {}. Relay and kernel loops on CPU {RELAY_CPU}, load on CPU {LOAD_CPU}. {} s windows, {} repetitions: median (min–max).",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        opts.seconds,
        opts.reps
    )
}

/// The whole report in markdown.
fn markdown(results: &Results, tables: &[Table]) -> String {
    let mut md = format!("{}\n\n", results.machine);
    for t in tables {
        md.push_str(&t.markdown());
    }
    md.push_str("\n**Load column**: for *up*, frames the generator had queued ahead of the relay when the window closed (positive: the relay set the pace); for *down*, frames/s the kernel queued to the TAP (relay reads plus drops at the TAP queue).\n");
    if let Some(r) = &results.rtt_idle {
        md.push_str(&format!(
            "\nIdle RTT of an ICMP echo from a guest to the gateway ({} echoes, 0.5 ms apart): through tapwire p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs. The same echo written to and read from a bare TAP by one thread: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs. A 64-byte TCP echo between the same two CPUs (the two cross-core wakeups a ping through the relay also pays): p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs. Added by tapwire beyond the bare TAP and that echo, at the median: {:.0} µs. (Tails do not subtract: at p99 compare the raw figures.)\n",
            rtt::ECHOES,
            r.relay_p50_us, r.relay_p99_us, r.relay_p999_us, r.tap_p50_us, r.tap_p99_us, r.tap_p999_us,
            r.tcp_echo_p50_us, r.tcp_echo_p99_us, r.tcp_echo_p999_us,
            r.relay_p50_us - r.tap_p50_us - r.tcp_echo_p50_us
        ));
    }
    if !results.rtt_loaded.is_empty() {
        md.push_str("\nRTT of the same echo under load: 64 swarm guests send UDP frames paced evenly (each its own phase, a 100 µs timer) at the rate that keeps the relay's core thread busy for the given share of the echo window (adjusted in up to three runs). *Busy*: the share of the echo window that thread spent on a CPU, measured. *Of capacity*: the rate as a share of what the relay moved with the swarm flooding.\n\n| frame | relay core busy (asked) | frames/s at the TAP | of capacity | p50 | p90 | p99 | p99.9 | answered |\n|---|---|---|---|---|---|---|---|---|\n");
    }
    for r in &results.rtt_loaded {
        md.push_str(&format!(
            "| {} B | {:.0} % ({:.0} %) | {} | {:.0} % of {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {} of {} |\n",
            r.size, r.relay_busy * 100.0, r.busy_target * 100.0, fmt_rate(r.measured_load_fps),
            r.measured_load_fps / r.capacity_fps * 100.0, fmt_rate(r.capacity_fps),
            r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.answered, r.sent
        ));
    }
    md.push_str(&density::markdown(&results.density));
    md.push_str(&tcp::markdown(&results.tcp));
    if let Some(c) = &results.conn {
        let list = |v: &[(usize, f64)]| {
            v.iter()
                .map(|(n, kib)| format!("{kib:.1} KiB at {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let fresh = c
            .rss_kib_per_idle_ws_and_wss
            .iter()
            .map(|(n, ws, wss)| {
                format!(
                    "{n} clients: {ws:.1} KiB over ws://, {wss:.1} KiB over wss:// ({:.1} KiB more)",
                    wss - ws
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        md.push_str(&format!(
            "\nConnections: {:.0}/s upgraded (200 guests, 8 connecting at once); {:.0}/s counting until each of them got an answer to an ICMP echo to the gateway.\n\nRelay RSS per idle client, one relay for all counts in turn: {}. Each count on a relay of its own (wss:// clients with the handshake done): {fresh}.\n",
            c.upgrades_per_s,
            c.upgrade_and_ping_per_s,
            list(&c.rss_kib_per_idle_client),
        ));
    }
    if let Some(f) = &results.farm {
        md.push_str(&f.markdown());
    }
    md
}

fn main() {
    STARTED.get_or_init(std::time::Instant::now);
    let opts = Opts::parse();
    if let Some(json) = &opts.charts_from {
        if let Err(e) = charts_from(json) {
            eprintln!("relay-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    if opts.reps == 0 {
        eprintln!("relay-bench: --reps must be at least 1");
        std::process::exit(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("relay-bench needs root (network namespaces and TAPs)");
        std::process::exit(2);
    }
    let ctx = Ctx {
        ns: Netns::new("twbench").expect("netns"),
        dir: std::env::temp_dir().join(unique("relay-bench-")),
        opts,
    };
    std::fs::create_dir_all(&ctx.dir).expect("scratch dir");
    let mut results = Results {
        machine: machine(&ctx.opts),
        ..Results::default()
    };
    let mut tables = Vec::new();
    let mut one_core = updown::OneCore::new();
    let mut capacity = swarm::SwarmCapacity::new();
    if ctx.opts.runs(Group::Up) || ctx.opts.runs(Group::Down) {
        tables.push(updown::run(&ctx, &mut one_core));
    }
    if ctx.opts.runs(Group::Scale) {
        tables.push(updown::run_scale(&ctx, &one_core));
    }
    if ctx.opts.runs(Group::Spoofing) {
        tables.push(updown::run_spoofing(&ctx));
    }
    if ctx.opts.runs(Group::Firewall) {
        tables.push(updown::run_firewall(&ctx));
    }
    if ctx.opts.runs(Group::Nat) {
        tables.push(nat::run(&ctx));
    }
    if ctx.opts.runs(Group::Wss) {
        tables.push(wss::run(&ctx));
    }
    if ctx.opts.runs(Group::Networks) {
        tables.push(networks::run(&ctx));
    }
    if ctx.opts.runs(Group::G2g) {
        tables.push(g2g::run(&ctx));
    }
    if ctx.opts.runs(Group::Swarm) {
        tables.push(swarm::run(&ctx, &one_core, &mut capacity));
    }
    if ctx.opts.runs(Group::Rtt) {
        let (idle, loaded) = rtt::run(&ctx, &capacity);
        results.rtt_idle = Some(idle);
        results.rtt_loaded = loaded;
    }
    if ctx.opts.runs(Group::Conn) {
        results.conn = Some(conn::run(&ctx));
    }
    if ctx.opts.runs(Group::Density) {
        results.density = density::run(&ctx);
    }
    if ctx.opts.runs(Group::Tcp) {
        results.tcp = tcp::run(&ctx);
    }
    if ctx.opts.runs(Group::Farm) {
        let (farm_tables, farm) = farm::run(&ctx);
        tables.extend(farm_tables);
        results.farm = Some(farm);
    }
    results.rows = tables.iter().flat_map(|t| t.rows.clone()).collect();
    let md = markdown(&results, &tables);
    std::fs::create_dir_all(&ctx.opts.out).expect("out dir");
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let stem = ctx.opts.out.join(format!("relay-bench-{date}"));
    std::fs::write(stem.with_extension("md"), &md).expect("write md");
    let json = serde_json::to_string_pretty(&results).expect("results serialize");
    std::fs::write(stem.with_extension("json"), json + "\n").expect("write json");
    draw_charts(&results, &stem);
    println!("{md}");
    let _ = std::fs::remove_dir_all(&ctx.dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_drawn_again_from_a_saved_run() {
        let dir = std::env::temp_dir().join(format!("relay-bench-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let row = |scenario: &str, count| Row {
            scenario: scenario.into(),
            size: 64,
            count,
            ..Row::default()
        };
        let results = Results {
            rows: vec![
                row("kernel_tap_read", None),
                row("down", Some(1)),
                row("floor_down", Some(1)),
            ],
            rtt_loaded: vec![report::RttLoaded {
                size: 64,
                relay_busy: 0.5,
                cdf_us: stats::CDF_AT.iter().map(|p| 80.0 + 100.0 * p).collect(),
                ..report::RttLoaded::default()
            }],
            density: vec![density::Density {
                size: 64,
                trials: vec![density::Trial {
                    guests: 64,
                    passed: true,
                    p99_us: Some(300.0),
                    ..density::Trial::default()
                }],
                ..density::Density::default()
            }],
            conn: Some(report::ConnResult {
                rss_kib_per_idle_client: vec![(100, 12.0), (1000, 10.0)],
                rss_kib_per_idle_ws_and_wss: vec![(1000, 10.0, 20.0)],
                ..report::ConnResult::default()
            }),
            tcp: vec![tcp::TcpCell {
                path: "tapwire".into(),
                way: "up".into(),
                guests: 1,
                ..tcp::TcpCell::default()
            }],
            ..Results::default()
        };
        let json = dir.join("relay-bench-old.json");
        std::fs::write(&json, serde_json::to_string(&results).expect("json")).expect("write");
        charts_from(&json).expect("charts");
        assert!(dir.join("relay-bench-old-down.svg").exists());
        assert!(dir.join("relay-bench-old-rtt.svg").exists());
        assert!(dir.join("relay-bench-old-density.svg").exists());
        assert!(dir.join("relay-bench-old-tcp.svg").exists());
        assert!(dir.join("relay-bench-old-conn.svg").exists());
        assert!(!dir.join("relay-bench-old-up.svg").exists());
        assert!(charts_from(&dir.join("missing.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

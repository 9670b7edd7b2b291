//! Group `networks`: what networks cost. Up and down with 64 clients in the default network, in one
//! named network, and spread over 64 networks, back to back in each repetition; the default
//! network again with 1 000 idle networks up; the time from connect to `101` of a network made
//! on demand; and the memory 1 000 networks take.

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Instant;

use tapwire::ws::frame;
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::{format_mac, parse_mac, udp_frame};

use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::updown::{measure_down, measure_up};
use crate::{progress, Ctx};

/// Clients of the up rows.
const CLIENTS: usize = 64;
/// Networks made on demand, one after the other, for the creation time.
const CREATED: usize = 200;
/// Idle networks for the memory figure and the "1 000 idle networks" row.
const IDLE: usize = 1000;

/// Where the clients of an up row are.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// All in the default network.
    Default,
    /// Spread over this many declared networks (client i in network i mod n).
    Networks(usize),
    /// In the default network, with this many declared networks up and idle.
    DefaultBeside(usize),
}

/// The gateway of declared network `k` (declared networks without a subnet take the pool's
/// blocks in order: 10.96.0.0/24, 10.96.1.0/24, …).
fn gateway(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0A60_0001 + (k as u32) * 256)
}

/// A config file declaring `n` networks `b0`…, in `dir`.
fn declare(dir: &std::path::Path, n: usize) -> String {
    let path = dir.join(format!("networks-{n}.toml"));
    let text: String = (0..n)
        .map(|k| format!("[[network]]\nname = \"b{k}\"\n"))
        .collect();
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

/// Starts a relay for `CLIENTS` clients laid out as `layout`, `size`-byte frames
/// (anti-spoofing off: the clients' addresses are not the point).
fn start(ctx: &Ctx, size: usize, layout: Layout) -> Relay {
    let declared = match layout {
        Layout::Default => 0,
        Layout::Networks(n) | Layout::DefaultBeside(n) => n,
    };
    let mut args = mtu_args(size);
    args.extend([
        "--allow-spoofing".to_string(),
        "--networks".into(),
        "declared".into(),
    ]);
    if declared > 0 {
        args.extend([
            "--max-networks".to_string(),
            declared.to_string(),
            "--config".into(),
            declare(&ctx.dir, declared),
        ]);
    }
    Relay::start(&ctx.ns, &ctx.dir, &str_refs(&args))
}

/// Where client `i` of a row is: its URL, its network's TAP, that TAP's MAC and gateway
/// address, and the client's own address.
struct Place {
    url: String,
    tap: String,
    gw_mac: [u8; 6],
    gw: Ipv4Addr,
    ip: Ipv4Addr,
}

/// The place of every client of a row laid out as `layout` on `relay`.
fn places(ns: &Netns, relay: &Relay, layout: Layout) -> Vec<Place> {
    (0..CLIENTS)
        .map(|i| match layout {
            Layout::Default | Layout::DefaultBeside(_) => Place {
                url: "ws://127.0.0.1:8086/".to_string(),
                tap: relay.tap.clone(),
                gw_mac: relay.tap_mac,
                gw: Ipv4Addr::new(10, 86, 0, 1),
                ip: guest_ip(i),
            },
            Layout::Networks(n) => {
                let k = i % n;
                let tap = tapwire::config::network_tap_name(&relay.tap, (k + 1) as u16);
                let mac = ns
                    .run(&["cat", &format!("/sys/class/net/{tap}/address")])
                    .expect("a network TAP's MAC");
                let gw = gateway(k);
                Place {
                    url: format!("ws://127.0.0.1:8086/n/b{k}"),
                    tap,
                    gw_mac: parse_mac(&mac).expect("mac"),
                    gw,
                    ip: Ipv4Addr::from(u32::from(gw) + 9 + (i / n) as u32),
                }
            }
        })
        .collect()
}

/// Connects one client to each place's URL from CPU `LOAD_CPU`.
fn connect(ns: &Netns, places: &[Place]) -> Vec<Stream> {
    let urls: Vec<String> = places.iter().map(|p| p.url.clone()).collect();
    spawn_in(ns, LOAD_CPU, move || {
        urls.iter()
            .map(|u| Box::new(tapwire_testkit::ws::connect(u, None).expect("connect")) as Stream)
            .collect()
    })
    .join()
    .expect("connect thread")
}

/// Up with `CLIENTS` clients laid out as `layout`, `size`-byte frames to a UDP sink behind
/// each client's gateway.
fn up(ctx: &Ctx, size: usize, layout: Layout) -> (Sample, Drops) {
    let ns = &ctx.ns;
    let relay = start(ctx, size, layout);
    let sink = ns.enter(|| UdpSocket::bind(("0.0.0.0", SINK_PORT)).expect("sink"));
    let places = places(ns, &relay, layout);
    let batches = places
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = udp_frame(
                p.gw_mac,
                guest_mac(i),
                (p.ip, 1000),
                (p.gw, SINK_PORT),
                size,
            );
            tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f).repeat(64)
        })
        .collect();
    let streams = connect(ns, &places);
    measure_up(ns, relay, sink, streams, batches, ctx.opts.seconds)
}

/// Down to `CLIENTS` clients laid out as `layout`: one UDP sender on the host side sends
/// `size`-byte frames to every client in turn, through each client's network TAP.
fn down(ctx: &Ctx, size: usize, layout: Layout) -> (Sample, Drops) {
    let ns = &ctx.ns;
    let relay = start(ctx, size, layout);
    let places = places(ns, &relay, layout);
    let mut streams = connect(ns, &places);
    // Each guest announces its MAC (one frame), and the host learns it statically.
    for (i, (s, p)) in streams.iter_mut().zip(&places).enumerate() {
        let hello = udp_frame([0xFF; 6], guest_mac(i), (p.ip, 1), (p.gw, 7), 64);
        s.write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &hello))
            .expect("hello");
        neighbour(ns, &p.tap, &p.ip.to_string(), &format_mac(guest_mac(i)));
    }
    let mut taps: Vec<String> = places.iter().map(|p| p.tap.clone()).collect();
    taps.sort();
    taps.dedup();
    let offered = |ns: &Netns| -> u64 {
        taps.iter()
            .map(|t| {
                let (_, tx, dropped) = dev_counters(ns, t);
                tx + dropped
            })
            .sum()
    };
    let targets: Vec<Ipv4Addr> = places.iter().map(|p| p.ip).collect();
    measure_down(ns, relay, streams, targets, size, offered, ctx.opts.seconds)
}

/// Time from connect to `101` of `CREATED` networks made on demand one after the other
/// (p50, p99, in ms).
fn creation_ms(ctx: &Ctx) -> (f64, f64) {
    let relay = Relay::start(&ctx.ns, &ctx.dir, &["--max-networks", "256"]);
    let mut ms = spawn_in(&ctx.ns, LOAD_CPU, || {
        let mut ms = Vec::new();
        let mut keep = Vec::new();
        for k in 0..CREATED {
            let t = Instant::now();
            let s = tapwire_testkit::ws::connect(&format!("ws://127.0.0.1:8086/n/c{k}"), None)
                .expect("a network made on demand");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            keep.push(s);
        }
        ms
    })
    .join()
    .expect("creation");
    relay.stop();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 99 / 100])
}

/// The machine's available memory, in KiB.
fn available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The RSS of `pid`'s descendants (the relay's dnsmasq and its guard), in KiB.
fn descendants_rss_kib(pid: u32) -> u64 {
    tapwire_testkit::process::descendants(pid)
        .into_iter()
        .map(rss_kib)
        .sum()
}

/// Memory per network of `IDLE` declared networks with DHCP on, against a relay with none,
/// in KiB: the relay's RSS, its dnsmasq's RSS, and the machine's available memory (the
/// kernel's TAPs, addresses, routes and rules included). Each figure is read a few seconds
/// after the start, once dnsmasq has bound every network's TAP.
fn memory_kib(ctx: &Ctx) -> Memory {
    let settle = || std::thread::sleep(std::time::Duration::from_secs(3));
    let bare = Relay::start_dhcp(&ctx.ns, &ctx.dir, &["--networks", "declared"]);
    settle();
    let (rss0, dns0, avail1) = (
        rss_kib(bare.pid()),
        descendants_rss_kib(bare.pid()),
        available_kib(),
    );
    bare.stop();
    let config = declare(&ctx.dir, IDLE);
    let n = IDLE.to_string();
    let t = Instant::now();
    let full = Relay::start_dhcp(
        &ctx.ns,
        &ctx.dir,
        &[
            "--networks",
            "declared",
            "--max-networks",
            &n,
            "--config",
            &config,
        ],
    );
    let start_s = t.elapsed().as_secs_f64();
    settle();
    let (rss1, dns1, avail2) = (
        rss_kib(full.pid()),
        descendants_rss_kib(full.pid()),
        available_kib(),
    );
    full.stop();
    let per = |a: u64, b: u64| (a as f64 - b as f64) / IDLE as f64;
    Memory {
        relay: per(rss1, rss0),
        dnsmasq: per(dns1, dns0),
        // Available with the bare relay up, less available with the networks up.
        machine: per(avail1, avail2),
        start_s,
    }
}

/// What [`memory_kib`] found.
struct Memory {
    relay: f64,
    dnsmasq: f64,
    machine: f64,
    /// Seconds from starting the relay with `IDLE` networks to its being ready.
    start_s: f64,
}

pub(crate) fn run(ctx: &Ctx) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("relay frames/s"),
        Col::Reference("default network", "–"),
        Col::Ratio("/ default", RatioStyle::Decimals(2)),
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some(format!("**Networks** (one core, {CLIENTS} clients, `--allow-spoofing`; each repetition runs every layout back to back): up (guests to a UDP sink behind their gateway) and down (one UDP sender on the host side to every guest in turn) with all clients in the default network, all in one network, spread over 64 networks, and in the default network with {IDLE} idle networks up:"));
    let layouts = [
        ("default_network", Layout::Default),
        ("1_network", Layout::Networks(1)),
        ("64_networks", Layout::Networks(64)),
        ("beside_1000_idle_networks", Layout::DefaultBeside(IDLE)),
    ];
    type Scenario = fn(&Ctx, usize, Layout) -> (Sample, Drops);
    let directions: [(&str, Scenario); 2] = [("up", up), ("down", down)];
    for &size in o.sizes.iter().filter(|s| **s == 64 || **s == 1514) {
        for (direction, scenario) in directions {
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); layouts.len()];
            let mut drops: Vec<Drops> = vec![Drops::new(); layouts.len()];
            for _ in 0..o.reps {
                for (i, (_, layout)) in layouts.iter().enumerate() {
                    let (s, d) = scenario(ctx, size, *layout);
                    samples[i].push(s);
                    add_drops(&mut drops[i], d);
                }
            }
            let reference = stat_of(&samples[0], |s| s.fps).median;
            for (i, (name, _)) in layouts.iter().enumerate() {
                let row = Row {
                    reference_fps: (i > 0).then_some(reference),
                    ..Row::measured(
                        format!("{direction}_{name}"),
                        size,
                        CLIENTS,
                        &samples[i],
                        drops[i].clone(),
                    )
                };
                progress(&row);
                table.rows.push(row);
            }
        }
    }
    let (p50, p99) = creation_ms(ctx);
    let m = memory_kib(ctx);
    table.outro = Some(format!(
        "A network made on demand, {CREATED} one after the other: connect to `101` p50 {p50:.1} ms, p99 {p99:.1} ms. {IDLE} declared networks with DHCP (a TAP with one queue each, served by the one dnsmasq), against a relay with none, per network: {:.1} KiB of relay RSS, {:.1} KiB of dnsmasq RSS, {:.1} KiB of the machine's available memory (everything, the kernel's side included); the relay took {:.1} s to start with them.",
        m.relay, m.dnsmasq, m.machine, m.start_s
    ));
    table
}

//! Group `networks`: what networks cost. Up with 64 clients in the default network, in one
//! named network, and spread over 64 networks, back to back in each repetition; the default
//! network again with 1 000 idle networks up; the time from connect to `101` of a network made
//! on demand; and the memory 1 000 networks take.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Instant;

use tapwire::ws::frame;
use tapwire_testkit::packet::{parse_mac, udp_frame};

use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::updown::measure_up;
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

/// Up with `CLIENTS` clients laid out as `layout`, `size`-byte frames (anti-spoofing off: the
/// clients' addresses are not the point).
fn up(ctx: &Ctx, size: usize, layout: Layout) -> (Sample, Drops) {
    let ns = &ctx.ns;
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
    let relay = Relay::start(ns, &ctx.dir, &str_refs(&args));
    let sink = ns.enter(|| UdpSocket::bind(("0.0.0.0", SINK_PORT)).expect("sink"));
    let spread = match layout {
        Layout::Networks(n) => Some(n),
        _ => None,
    };
    let mut urls = Vec::new();
    let mut batches = Vec::new();
    for i in 0..CLIENTS {
        let (url, dst_mac, dst_ip, src_ip) = match spread {
            None => (
                "ws://127.0.0.1:8086/".to_string(),
                relay.tap_mac,
                Ipv4Addr::new(10, 86, 0, 1),
                guest_ip(i),
            ),
            Some(n) => {
                let k = i % n;
                let tap = tapwire::config::network_tap_name(&relay.tap, (k + 1) as u16);
                let mac = ns
                    .run(&["cat", &format!("/sys/class/net/{tap}/address")])
                    .expect("a network TAP's MAC");
                let gw = gateway(k);
                let src = Ipv4Addr::from(u32::from(gw) + 9 + (i / n) as u32);
                (
                    format!("ws://127.0.0.1:8086/n/b{k}"),
                    parse_mac(&mac).expect("mac"),
                    gw,
                    src,
                )
            }
        };
        let f = udp_frame(
            dst_mac,
            guest_mac(i),
            (src_ip, 1000),
            (dst_ip, SINK_PORT),
            size,
        );
        batches.push(tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f).repeat(64));
        urls.push(url);
    }
    let streams: Vec<Stream> = spawn_in(ns, LOAD_CPU, move || {
        urls.iter()
            .map(|u| Box::new(tapwire_testkit::ws::connect(u, None).expect("connect")) as Stream)
            .collect()
    })
    .join()
    .expect("connect thread");
    measure_up(ns, relay, sink, streams, batches, ctx.opts.seconds)
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

/// Memory of `IDLE` declared networks: the relay's RSS and the machine's (`MemAvailable`)
/// against a relay with none, in KiB per network.
fn memory_kib(ctx: &Ctx) -> (f64, f64) {
    let available = || -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemAvailable:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let bare = Relay::start(&ctx.ns, &ctx.dir, &["--networks", "declared"]);
    let (rss0, avail0) = (rss_kib(bare.pid()), available());
    bare.stop();
    let config = declare(&ctx.dir, IDLE);
    let n = IDLE.to_string();
    let full = Relay::start(
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
    let (rss1, avail1) = (rss_kib(full.pid()), available());
    full.stop();
    (
        (rss1 as f64 - rss0 as f64) / IDLE as f64,
        (avail0 as f64 - avail1 as f64) / IDLE as f64,
    )
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
    table.intro = Some(format!("**Networks** (up, one core, {CLIENTS} clients, `--allow-spoofing`; each repetition runs every layout back to back): all in the default network, all in one network, spread over 64 networks, and in the default network with {IDLE} idle networks up:"));
    let layouts = [
        ("up_default_network", Layout::Default),
        ("up_1_network", Layout::Networks(1)),
        ("up_64_networks", Layout::Networks(64)),
        ("up_beside_1000_idle_networks", Layout::DefaultBeside(IDLE)),
    ];
    for &size in o.sizes.iter().filter(|s| **s == 64 || **s == 1514) {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); layouts.len()];
        let mut drops: Vec<Drops> = vec![Drops::new(); layouts.len()];
        for _ in 0..o.reps {
            for (i, (_, layout)) in layouts.iter().enumerate() {
                let (s, d) = up(ctx, size, *layout);
                samples[i].push(s);
                for (k, v) in d {
                    *drops[i].entry(k).or_default() += v;
                }
            }
        }
        let reference = stat_of(&samples[0], |s| s.fps).median;
        for (i, (name, _)) in layouts.iter().enumerate() {
            let row = Row {
                reference_fps: (i > 0).then_some(reference),
                ..Row::measured(*name, size, CLIENTS, &samples[i], drops[i].clone())
            };
            progress(&row);
            table.rows.push(row);
        }
    }
    let (p50, p99) = creation_ms(ctx);
    let (rss, machine) = memory_kib(ctx);
    table.outro = Some(format!(
        "A network made on demand, {CREATED} one after the other: connect to `101` p50 {p50:.1} ms, p99 {p99:.1} ms. {IDLE} declared networks (a TAP with one queue each, no DHCP): {rss:.1} KiB of relay RSS and {machine:.1} KiB of the machine's available memory per network."
    ));
    table
}

//! Group `swarm`: `tapwire-swarm` as the load, flooding UDP through the relay.

use std::net::UdpSocket;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tapwire_testkit::netns::Netns;
use tapwire_testkit::sibling_binary;

use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::updown::OneCore;
use crate::{progress, Ctx};

/// How often the swarm's writes would have blocked, from its `udp:` report line.
pub(crate) fn swarm_writes_blocked(text: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with("udp: ")).unwrap_or("");
    line.find(" writes blocked")
        .and_then(|at| line[..at].rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts `tapwire-swarm` on `LOAD_CPU`: `guests` guests with static addresses from
/// 10.86.`subnet`.1 send UDP frames of `size` bytes to the sink (`pps` each, 0 = as fast as
/// the relay takes them) for `seconds`. Its output goes to `out`.
pub(crate) fn start_swarm(
    ns: &Netns,
    out: &std::path::Path,
    guests: usize,
    subnet: u8,
    size: usize,
    pps: u64,
    seconds: f64,
) -> Child {
    let bin = sibling_binary("tapwire-swarm", "TAPWIRE_SWARM_BIN")
        .display()
        .to_string();
    ns.cmd(&[
        "taskset",
        "-c",
        &LOAD_CPU.to_string(),
        &bin,
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

/// Waits (bounded) until frames pour into the TAP at a quarter of `fps` or more (at most 5 000/s
/// asked): the swarm's UDP phase has begun.
pub(crate) fn wait_for_udp_phase(ns: &Netns, tap: &str, fps: f64) {
    // Frames per 100 ms poll; lossless enough: a count of frames.
    let enough = (fps.min(20_000.0) / 40.0).max(1.0) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = dev_counters(ns, tap).0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = dev_counters(ns, tap).0;
        if now - last >= enough {
            return;
        }
        last = now;
    }
    panic!("the swarm's UDP phase did not start within 60 s");
}

/// One flood by the swarm: relay frames/s into the TAP, what the swarm offered, how often the
/// relay pushed back on the swarm and held input itself.
pub(crate) struct SwarmFlood {
    pub sample: Sample,
    pub blocked: u64,
    pub input_held: u64,
}

/// swarm: `guests` synthetic guests (one process on `LOAD_CPU`) flood UDP to the sink as fast
/// as the relay (one core on `RELAY_CPU`) takes it. Shows whether the swarm can load the relay.
pub(crate) fn scenario_swarm_flood(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    guests: usize,
    seconds: f64,
) -> (SwarmFlood, Drops) {
    // tapwire-swarm's guests use addresses and MACs of their own, not reserved here.
    let mut args = mtu_args(size);
    args.push("--allow-spoofing".into());
    let relay = Relay::start(ns, dir, &str_refs(&args));
    let sink = ns.enter(|| UdpSocket::bind(("10.86.0.1", SINK_PORT)).expect("sink"));
    let out = dir.join("swarm-flood.out");
    let mut swarm = start_swarm(ns, &out, guests, 2, size, 0, seconds + 1.0);
    wait_for_udp_phase(ns, &relay.tap, f64::INFINITY);
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
    let counters = relay.stop();
    let drops = drops_of(&counters);
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
            input_held: counters.get("tapwire_input_held_total"),
        },
        drops,
    )
}

/// Relay frames/s with 64 swarm guests flooding, by frame size (the loaded RTT paces to half).
pub(crate) type SwarmCapacity = std::collections::HashMap<usize, f64>;

/// Group `swarm`: 64 and 1 000 guests flooding, against the plain generator's up rows.
pub(crate) fn run(ctx: &Ctx, one_core: &OneCore, capacity: &mut SwarmCapacity) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Size,
        Col::Count("guests"),
        Col::Fps("relay frames/s"),
        Col::Reference("same with the plain generator (above)", "not run"),
        Col::Blocked,
        Col::Held,
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some("**Synthetic guests** (`tapwire-swarm`, one process on CPU 1, each guest flooding UDP to the sink as fast as the relay takes it; relay on CPU 0):".into());
    table.outro = Some("The swarm is not the bottleneck when its writes would block (the relay's TCP windows are full) and the relay holds input back: then the relay, not the swarm, sets the pace.".into());
    for &size in o.sizes.iter().filter(|s| **s <= 1514) {
        for guests in [64usize, 1000] {
            let mut runs = Vec::new();
            let mut drops = Drops::new();
            for _ in 0..o.reps {
                let (r, d) = scenario_swarm_flood(&ctx.ns, &ctx.dir, size, guests, o.seconds);
                add_drops(&mut drops, d);
                runs.push(r);
            }
            let samples: Vec<Sample> = runs.iter().map(|r| r.sample.clone()).collect();
            let row = Row {
                reference_fps: one_core.get(&("up", size, guests)).copied(),
                swarm_writes_blocked: Some(runs.iter().map(|r| r.blocked).sum()),
                input_held: Some(runs.iter().map(|r| r.input_held).sum()),
                ..Row::measured("swarm_flood", size, guests, &samples, drops)
            };
            if guests == 64 {
                capacity.insert(size, row.fps.median);
            }
            progress(&row);
            table.rows.push(row);
        }
    }
    table
}

//! Groups `up`, `down` and `scale`: guests → host and host → guests through the relay.

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapwire::ws::{frame, Event, Session};
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::udp_frame;
use tapwire_testkit::tls::Transport;

use crate::kernel::*;
use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::{progress, Ctx, Group};

/// Pre-built masked WebSocket messages: `batch` UDP frames from guest `i` to the sink.
pub(crate) fn up_batch(i: usize, relay_mac: [u8; 6], size: usize, batch: usize) -> Vec<u8> {
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
pub(crate) fn scenario_up(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    clients: usize,
    seconds: f64,
    cores: usize,
) -> (Sample, Drops) {
    scenario_up_with(ns, dir, (size, clients, seconds, cores), &[])
}

/// [`scenario_up`] with more relay arguments; `shape` is (size, clients, seconds, cores).
pub(crate) fn scenario_up_with(
    ns: &Netns,
    dir: &std::path::Path,
    shape: (usize, usize, f64, usize),
    extra: &[&str],
) -> (Sample, Drops) {
    scenario_up_over(ns, dir, shape, extra, &Link::Ws)
}

/// [`scenario_up_with`] with clients over `link`.
pub(crate) fn scenario_up_over(
    ns: &Netns,
    dir: &std::path::Path,
    shape: (usize, usize, f64, usize),
    extra: &[&str],
    link: &Link,
) -> (Sample, Drops) {
    let (size, clients, seconds, cores) = shape;
    let mut args = mtu_args(size);
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(link.relay_args());
    let relay = Relay::start_cores(ns, dir, cores, &str_refs(&args));
    up_through(ns, relay, (size, clients, seconds), link)
}

/// up through `relay-floor` in the relay's place (1 client or more, ws://), behind
/// `firewall` if given.
pub(crate) fn scenario_floor_up(
    ns: &Netns,
    dir: &std::path::Path,
    (size, clients, seconds): (usize, usize, f64),
    firewall: Option<&Firewall>,
) -> (Sample, Drops) {
    let relay = Relay::floor(ns, dir, FloorWay::Up, size, firewall);
    up_through(ns, relay, (size, clients, seconds), &Link::Ws)
}

/// Connects `clients` over `link` to `relay` (already started) and measures up.
fn up_through(
    ns: &Netns,
    relay: Relay,
    (size, clients, seconds): (usize, usize, f64),
    link: &Link,
) -> (Sample, Drops) {
    let sink = ns.enter(|| UdpSocket::bind(("10.86.0.1", SINK_PORT)).expect("sink"));
    let batches: Vec<Vec<u8>> = (0..clients)
        .map(|i| up_batch(i, relay.tap_mac, size, 64))
        .collect();
    let wire_frame = batches[0].len() / 64;
    let streams = link.connect_messages(ns, clients, Some(wire_frame));
    measure_up(ns, relay, sink, streams, batches, seconds)
}

/// Writes `batches[i]` (64 frames each) on `streams[i]` as fast as they take them for
/// `seconds`, counting what reaches `sink` (on the host side of `relay`), then lets the relay
/// drain and stops it.
pub(crate) fn measure_up(
    ns: &Netns,
    relay: Relay,
    sink: UdpSocket,
    streams: Vec<Stream>,
    batches: Vec<Vec<u8>>,
    seconds: f64,
) -> (Sample, Drops) {
    let arrivals_at_start = udp_arrivals(ns);
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
    let drops = drops_of(&relay.stop());
    total_arrived = total_arrived.min(total_sent);
    let frames = (a1 - a0) as f64;
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

/// Whether an Ethernet frame (or its first bytes) goes to one station: the group bit of its
/// destination is clear.
fn is_unicast(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// Counts the unicast frames arriving on `streams` (non-blocking, round robin) until `stop`.
/// Multicast and broadcast frames are not counted: the host's own IPv6 neighbour discovery
/// and MLD, flooded to every client, would otherwise count once per client (with 1 000
/// clients, more than the frames sent to the guests).
pub(crate) fn receive_loop<S: Transport>(
    streams: &mut [S],
    stop: &AtomicBool,
    received: &AtomicU64,
) {
    let mut sessions: Vec<(Session, Option<bool>)> = streams
        .iter()
        .map(|_| (Session::new(70_000, false), None))
        .collect();
    for s in streams.iter() {
        s.tcp().set_nonblocking(true).expect("nonblocking");
    }
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for (s, (session, assembling_unicast)) in streams.iter_mut().zip(sessions.iter_mut()) {
            if let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    continue;
                }
                idle = false;
                let mut pos = 0;
                let chunk = &mut buf[..n];
                let mut count = 0;
                while let Ok(Some(ev)) = session.next(chunk, &mut pos) {
                    match ev {
                        Event::Message(r) => count += u64::from(is_unicast(&chunk[r])),
                        // The first byte of a message in pieces decides (None until seen).
                        Event::Piece { range, first } => {
                            if first {
                                *assembling_unicast = None;
                            }
                            if assembling_unicast.is_none() && !range.is_empty() {
                                *assembling_unicast = Some(is_unicast(&chunk[range]));
                            }
                        }
                        Event::Assembled => {
                            count += u64::from(assembling_unicast.unwrap_or(false));
                        }
                        _ => {}
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
pub(crate) fn scenario_down(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    clients: usize,
    seconds: f64,
    cores: usize,
) -> (Sample, Drops) {
    scenario_down_over(ns, dir, (size, clients, seconds, cores), &Link::Ws)
}

/// [`scenario_down`] with clients over `link`; `shape` is (size, clients, seconds, cores).
pub(crate) fn scenario_down_over(
    ns: &Netns,
    dir: &std::path::Path,
    shape: (usize, usize, f64, usize),
    link: &Link,
) -> (Sample, Drops) {
    let (size, clients, seconds, cores) = shape;
    let mut args = mtu_args(size);
    args.extend(link.relay_args());
    let relay = Relay::start_cores(ns, dir, cores, &str_refs(&args));
    down_through(ns, relay, (size, clients, seconds), link)
}

/// down through `relay-floor` in the relay's place (ws://), behind `firewall` if given.
pub(crate) fn scenario_floor_down(
    ns: &Netns,
    dir: &std::path::Path,
    (size, clients, seconds): (usize, usize, f64),
    firewall: Option<&Firewall>,
) -> (Sample, Drops) {
    let relay = Relay::floor(ns, dir, FloorWay::Down, size, firewall);
    down_through(ns, relay, (size, clients, seconds), &Link::Ws)
}

/// Connects `clients` over `link` to `relay` (already started), announces them and
/// measures down.
fn down_through(
    ns: &Netns,
    relay: Relay,
    (size, clients, seconds): (usize, usize, f64),
    link: &Link,
) -> (Sample, Drops) {
    let mut streams = link.connect(ns, clients);
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
    let tap = relay.tap.clone();
    let targets: Vec<Ipv4Addr> = (0..clients).map(guest_ip).collect();
    measure_down(
        ns,
        relay,
        streams,
        targets,
        size,
        |ns| {
            let (_, tx, dropped) = dev_counters(ns, &tap);
            tx + dropped
        },
        seconds,
    )
}

/// Sends `size`-byte UDP frames from the host side of `relay` to every address of `targets`
/// in turn (client i at `targets[i]`, announced already) for `seconds`, counting the
/// messages that arrive on `streams`; `queued` reads how many frames the kernel has queued
/// to the relay's TAPs so far (read by the relay, or dropped at its queue). Stops the relay.
pub(crate) fn measure_down(
    ns: &Netns,
    relay: Relay,
    mut streams: Vec<Stream>,
    targets: Vec<Ipv4Addr>,
    size: usize,
    queued: impl Fn(&Netns) -> u64,
    seconds: f64,
) -> (Sample, Drops) {
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
    let sender = spawn_in(ns, LOAD_CPU, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
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
        queued(ns),
        received.load(Ordering::Relaxed),
        cpu_ticks(relay.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (d1, r1, c1, dt) = (
        queued(ns),
        received.load(Ordering::Relaxed),
        cpu_ticks(relay.pid()),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let streams = receiver.join().expect("receiver");
    drop(streams);
    let drops = drops_of(&relay.stop());
    let delivered = (r1 - r0) as f64;
    // Offered: what the kernel queued to the TAPs (read by the relay, or dropped at a queue).
    let offered = (d1 - d0) as f64;
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

/// Median frames/s of the one-core up/down rows, by (scenario, size, clients), for the rows
/// that compare with them (2 cores, swarm).
pub(crate) type OneCore = std::collections::HashMap<(&'static str, usize, usize), f64>;

/// Groups `up` and `down`: per frame size the kernel's limits, then every client count, the
/// relay and the floor (`relay-floor` behind the relay's own host protection) alternated in
/// each repetition.
pub(crate) fn run(ctx: &Ctx, one_core: &mut OneCore) -> Table {
    let o = &ctx.opts;
    let firewall = Firewall::of_relay(&ctx.ns, &ctx.dir);
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("relay frames/s"),
        Col::Mbits,
        Col::Floor,
        Col::FloorRatio,
        Col::Reference("kernel limit frames/s", "–"),
        Col::Ratio("relay / kernel", RatioStyle::Decimals(2)),
        Col::Load,
        Col::Loss,
        Col::Cpu,
        Col::Drops,
    ]);
    for &size in &o.sizes {
        let kernel = |name: &str, f: KernelLoop| Row {
            scenario: name.to_string(),
            size,
            fps: kernel_limit(ctx, f, size),
            ..Row::default()
        };
        let write = kernel("kernel_tap_write", kernel_tap_write);
        let read = kernel("kernel_tap_read", kernel_tap_read);
        let tcp = kernel("kernel_loopback_tcp", kernel_loopback_tcp);
        let limits = [("up", write.fps.median), ("down", read.fps.median)];
        table.rows.extend([write, read, tcp]);
        for &clients in &o.clients {
            for (name, limit) in limits {
                if !o.runs(if name == "up" { Group::Up } else { Group::Down }) {
                    continue;
                }
                let (mut relay, mut floor) = (Vec::new(), Vec::new());
                let (mut relay_drops, mut floor_drops) = (Drops::new(), Drops::new());
                for _ in 0..o.reps {
                    let (s, d) = if name == "up" {
                        scenario_up(&ctx.ns, &ctx.dir, size, clients, o.seconds, 1)
                    } else {
                        scenario_down(&ctx.ns, &ctx.dir, size, clients, o.seconds, 1)
                    };
                    relay.push(s);
                    add_drops(&mut relay_drops, d);
                    let shape = (size, clients, o.seconds);
                    let (s, d) = if name == "up" {
                        scenario_floor_up(&ctx.ns, &ctx.dir, shape, Some(&firewall))
                    } else {
                        scenario_floor_down(&ctx.ns, &ctx.dir, shape, Some(&firewall))
                    };
                    floor.push(s);
                    add_drops(&mut floor_drops, d);
                }
                let floor_row = Row {
                    reference_fps: Some(limit),
                    load: Some(stat_of(&floor, |s| s.offered_fps).median),
                    loss: Some(stat_of(&floor, |s| s.loss).median),
                    ..Row::measured(format!("floor_{name}"), size, clients, &floor, floor_drops)
                };
                let row = Row {
                    reference_fps: Some(limit),
                    floor_fps: Some(floor_row.fps.median),
                    load: Some(stat_of(&relay, |s| s.offered_fps).median),
                    loss: Some(stat_of(&relay, |s| s.loss).median),
                    ..Row::measured(name, size, clients, &relay, relay_drops)
                };
                one_core.insert((name, size, clients), row.fps.median);
                progress(&row);
                table.rows.push(row);
                table.rows.push(floor_row);
            }
        }
    }
    table
}

/// Group `spoofing`: the cost of the anti-spoofing check, as up with the default (check on)
/// against up with `--allow-spoofing`, 1 client, runs alternated so that both see the same
/// machine.
pub(crate) fn run_spoofing(ctx: &Ctx) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("relay frames/s, checks on (default)"),
        Col::Reference("--allow-spoofing", "–"),
        Col::Ratio("on / off", RatioStyle::Decimals(2)),
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some("**Anti-spoofing cost** (up, one core, 1 client; each repetition runs the default and `--allow-spoofing` back to back):".into());
    for &size in o.sizes.iter().filter(|s| **s <= 1514) {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        let (mut drops_on, mut drops_off) = (Drops::new(), Drops::new());
        for _ in 0..o.reps {
            for (samples, drops, extra) in [
                (&mut on, &mut drops_on, &[][..]),
                (&mut off, &mut drops_off, &["--allow-spoofing"][..]),
            ] {
                let (s, d) = scenario_up_with(&ctx.ns, &ctx.dir, (size, 1, o.seconds, 1), extra);
                samples.push(s);
                add_drops(drops, d);
            }
        }
        let off_fps = stat_of(&off, |s| s.fps);
        let row = Row {
            reference_fps: Some(off_fps.median),
            ..Row::measured("up_antispoof", size, 1, &on, drops_on)
        };
        progress(&row);
        table.rows.push(row);
        let row = Row::measured("up_allow_spoofing", size, 1, &off, drops_off);
        progress(&row);
        table.rows.push(row);
    }
    table
}

/// Group `firewall`: what the relay's host protection costs in the kernel, as the floor's
/// up behind the relay's nftables table against the bare floor, 1 client, back to back in
/// each repetition.
pub(crate) fn run_firewall(ctx: &Ctx) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("floor frames/s behind the relay's table"),
        Col::Reference("bare floor", "–"),
        Col::Ratio("with / without", RatioStyle::Decimals(2)),
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some("**Host protection's kernel cost** (up, `relay-floor` behind the nftables table the relay makes with the bench's options, against the bare floor; 1 client; back to back in each repetition; CPU is the floor's):".into());
    let firewall = Firewall::of_relay(&ctx.ns, &ctx.dir);
    for &size in o.sizes.iter().filter(|s| **s <= 1514) {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut drops_with, mut drops_without) = (Drops::new(), Drops::new());
        for _ in 0..o.reps {
            for (samples, drops, fw) in [
                (&mut with, &mut drops_with, Some(&firewall)),
                (&mut without, &mut drops_without, None),
            ] {
                let (s, d) = scenario_floor_up(&ctx.ns, &ctx.dir, (size, 1, o.seconds), fw);
                samples.push(s);
                add_drops(drops, d);
            }
        }
        let row = Row {
            reference_fps: Some(stat_of(&without, |s| s.fps).median),
            ..Row::measured("floor_up_firewall", size, 1, &with, drops_with)
        };
        progress(&row);
        table.rows.push(row);
        let row = Row::measured("floor_up_bare", size, 1, &without, drops_without);
        progress(&row);
        table.rows.push(row);
    }
    table
}

/// Group `scale`: up and down with `--cores 2` and 64 clients, against the one-core rows.
pub(crate) fn run_scale(ctx: &Ctx, one_core: &OneCore) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("relay frames/s, 2 cores"),
        Col::Reference("1 core (above)", "not run"),
        Col::Ratio("gain", RatioStyle::Gain),
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some("**Second core** (`--cores 2` on CPUs 0 and 1, 64 clients spread over both cores; the load shares CPU 1 with the second relay core, so this is a lower bound on what a second free core gives):".into());
    for &size in o.sizes.iter().filter(|s| **s <= 1514) {
        for name in ["up", "down"] {
            let (samples, drops) = repeat(o.reps, || {
                if name == "up" {
                    scenario_up(&ctx.ns, &ctx.dir, size, 64, o.seconds, 2)
                } else {
                    scenario_down(&ctx.ns, &ctx.dir, size, 64, o.seconds, 2)
                }
            });
            let row = Row {
                reference_fps: one_core.get(&(name, size, 64)).copied(),
                ..Row::measured(format!("{name}_2cores"), size, 64, &samples, drops)
            };
            progress(&row);
            table.rows.push(row);
        }
    }
    table
}

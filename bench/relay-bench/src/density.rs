//! Group `density`: how many guests one relay core holds at a fixed load per guest with the
//! round trip's p99 at most 1 ms and nothing lost, and the relay's memory per guest there.
//!
//! Each trial: a relay (one core on `RELAY_CPU`), and in this process `tapwire-swarm` guests
//! (one swarm on each other CPU) and a UDP echo server on the host side (beside the last
//! swarm). Every guest sends `pps`
//! datagrams a second to the echo server, paced, every `broadcast_every`-th to the broadcast
//! address instead; the echo server sends each unicast one back, so each guest receives about
//! `pps` a second too, plus every other guest's broadcasts. The guest count doubles while
//! trials pass and is then bisected between the last pass and the first failure.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tapwire_testkit::counters::Counters;
use tapwire_testkit::swarm::{static_mac, SwarmArgs, SwarmReport};
use tapwire_testkit::udp_echo::UdpEcho;

use crate::relay::*;
use crate::report::fmt_rate;
use crate::swarm::wait_for_udp_phase;
use crate::sys::*;
use crate::Ctx;

/// The round trip's p99 a trial may reach and pass, in µs.
pub(crate) const P99_LIMIT_US: f64 = 1000.0;
/// A load CPU this busy may itself be what failed a trial.
const LOAD_CPU_SATURATED: f64 = 0.9;
/// The most guests a trial tries (the swarm's start-up ARP for the gateway reaches every guest:
/// its cost grows with the square of the count).
const MOST_GUESTS: usize = 2048;
/// The first guest count tried.
const FIRST_GUESTS: usize = 64;
/// The most trials per frame size.
const MOST_TRIALS: usize = 10;
/// The first guest's address; guest i has this plus i.
const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 86, 2, 1);

/// One trial at a guest count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Trial {
    pub guests: usize,
    pub passed: bool,
    /// Why it failed, or empty.
    pub why: String,
    /// `None`: no round trip came back.
    pub p99_us: Option<f64>,
    /// Share of the measuring window the relay's core thread was on a CPU.
    pub relay_busy: f64,
    /// Share of the window the busiest load CPU (swarms, echo server) was busy.
    pub load_cpu_busy: f64,
    /// Frames a second the relay moved from guests to the TAP and from the TAP and other
    /// guests to guests.
    pub relay_fps: f64,
    /// Relay RSS beyond its RSS before the guests came, in KiB (buffer pools first touched
    /// count here too: the growth from one trial to the next is the cost per guest).
    pub rss_growth_kib: u64,
}

/// The density at one frame size.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Density {
    pub size: usize,
    pub pps_per_guest: u64,
    pub broadcast_every: u64,
    /// The most guests a trial passed with (0: none passed).
    pub guests_held: usize,
    pub trials: Vec<Trial>,
}

/// Group `density` at each of `--sizes` up to 1514 B.
pub(crate) fn run(ctx: &Ctx) -> Vec<Density> {
    let o = &ctx.opts;
    let mut out = Vec::new();
    for &size in o.sizes.iter().filter(|s| [64, 1514].contains(*s)) {
        let mut d = Density {
            size,
            pps_per_guest: o.density_pps,
            broadcast_every: o.density_broadcast_every,
            ..Density::default()
        };
        let (mut passed, mut failed): (usize, Option<usize>) = (0, None);
        let mut guests = FIRST_GUESTS;
        while d.trials.len() < MOST_TRIALS {
            let t = trial(ctx, size, guests);
            eprintln!(
                "density: {guests} guests at {size} B: {} (p99 {}, relay core {:.0} % busy, load CPU {:.0} % busy{})",
                if t.passed { "held" } else { "not held" },
                fmt_p99(t.p99_us),
                t.relay_busy * 100.0,
                t.load_cpu_busy * 100.0,
                if t.why.is_empty() { String::new() } else { format!(": {}", t.why) }
            );
            if t.passed {
                passed = guests;
            } else {
                failed = Some(guests);
            }
            d.trials.push(t);
            guests = match next_guests(passed, failed) {
                Some(n) => n,
                None => break,
            };
        }
        d.guests_held = passed;
        out.push(d);
    }
    out
}

/// The next guest count to try: double the last pass until a failure, then halve the gap;
/// `None` once the gap is within a tenth of the passing count (or 8 guests), or the count
/// would exceed [`MOST_GUESTS`].
fn next_guests(passed: usize, failed: Option<usize>) -> Option<usize> {
    match failed {
        None if passed >= MOST_GUESTS => None,
        None => Some((passed.max(FIRST_GUESTS / 2) * 2).min(MOST_GUESTS)),
        Some(f) if f.saturating_sub(passed) <= (passed / 10).max(8) => None,
        Some(f) => Some(passed + (f - passed) / 2),
    }
}

/// The round trip's p99 in µs, if any round trip came back.
fn p99_us(r: &SwarmReport) -> Option<f64> {
    r.rtt_percentile(0.99).map(f64::from)
}

/// A p99 for the report: "N µs", or "none" with no round trip.
fn fmt_p99(p99_us: Option<f64>) -> String {
    p99_us.map_or("none".into(), |us| format!("{us:.0} µs"))
}

/// Why a trial's report fails the density criteria, or `None` if it passes.
fn failure(r: &SwarmReport, guests: usize, drops: &Drops) -> Option<String> {
    let unicast = r.udp_sent - r.udp_broadcasts_sent;
    let copies = r.udp_broadcasts_sent * (guests as u64 - 1);
    let p99 = p99_us(r);
    let mut why = Vec::new();
    if r.pinged < guests {
        why.push(format!("{} of {guests} guests up", r.pinged));
    }
    if r.udp_behind > 0 {
        why.push(format!("{} datagrams behind schedule", r.udp_behind));
    }
    if r.udp_echoes < unicast {
        why.push(format!(
            "{} of {unicast} echoes lost",
            unicast - r.udp_echoes
        ));
    }
    if r.udp_broadcasts_received < copies {
        why.push(format!(
            "{} of {copies} broadcast copies lost",
            copies - r.udp_broadcasts_received
        ));
    }
    if !drops.is_empty() {
        why.push(format!("relay drops {}", crate::report::drop_list(drops)));
    }
    match p99 {
        Some(us) if us <= P99_LIMIT_US => {}
        _ => why.push(format!("p99 {}", fmt_p99(p99))),
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// One trial: `guests` guests at `size` bytes for `--seconds` of UDP.
fn trial(ctx: &Ctx, size: usize, guests: usize) -> Trial {
    let (ns, o) = (&ctx.ns, &ctx.opts);
    let mut args = mtu_args(size);
    args.push("--allow-spoofing".into());
    let relay = Relay::start(ns, &ctx.dir, &str_refs(&args));
    let rss_before = rss_kib(relay.pid());
    // The host knows every guest's MAC: no ARP storm, and no neighbour table to outgrow.
    let batch: String = (0..guests)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(FIRST_ADDRESS) + i as u32);
            let mac = tapwire_testkit::packet::format_mac(static_mac(i as u32));
            format!(
                "neigh replace {ip} lladdr {mac} dev {} nud permanent\n",
                relay.tap
            )
        })
        .collect();
    let batch_file = ctx.dir.join("density-neighbours");
    std::fs::write(&batch_file, batch).expect("neighbour batch");
    ns.run(&["ip", "-batch", &batch_file.display().to_string()])
        .expect("ip -batch neigh");
    let sink = SocketAddrV4::new(Ipv4Addr::new(10, 86, 0, 1), SINK_PORT);
    // One swarm per CPU the relay is not on (one here, on 2 CPUs), the echo server beside the
    // last of them.
    let cpus = load_cpus();
    let echo = UdpEcho::start(ns, sink, cpus.last().copied());
    let swarms: Vec<_> = split(guests, cpus.len())
        .into_iter()
        .zip(&cpus)
        .map(|((first, count), &cpu)| {
            let swarm_args = SwarmArgs {
                url: "ws://127.0.0.1:8086/".into(),
                guests: count,
                gateway: Ipv4Addr::new(10, 86, 0, 1),
                timeout: 120,
                concurrency: 1000,
                static_from: Some(FIRST_ADDRESS),
                // Lossless: guest counts are at most MOST_GUESTS.
                first_guest: first as u32,
                udp_to: Some(sink),
                udp_pps: o.density_pps,
                // Lossless: sizes here are 64 or 1514.
                udp_size: size as u16,
                udp_seconds: o.seconds + 1.0,
                udp_broadcast_every: o.density_broadcast_every,
            };
            spawn_in(ns, cpu, move || tapwire_testkit::swarm::run(&swarm_args))
        })
        .collect();
    let phase_fps = (guests as u64 * o.density_pps) as f64;
    wait_for_udp_phase(ns, &relay.tap, phase_fps);
    std::thread::sleep(Duration::from_millis(500));
    let core = || relay.core_runtime_ns();
    let load = || -> Vec<(u64, u64)> { cpus.iter().map(|&c| cpu_busy_jiffies(c)).collect() };
    let frames = |c: &Counters| {
        c.get("tapwire_tap_tx_frames_total") + c.get("tapwire_client_tx_frames_total")
    };
    let (c0, l0, f0, t0) = (
        core(),
        load(),
        frames(&relay.live_counters()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64((o.seconds - 0.5).max(0.5)));
    let (c1, l1, f1, dt) = (
        core(),
        load(),
        frames(&relay.live_counters()),
        t0.elapsed().as_secs_f64(),
    );
    let rss = rss_kib(relay.pid());
    let report: std::io::Result<Vec<SwarmReport>> = swarms
        .into_iter()
        .map(|s| s.join().expect("swarm thread"))
        .collect();
    let report = report.map(merge);
    drop(echo);
    let counters = relay.stop();
    let drops = drops_of(&counters);
    let mut t = Trial {
        guests,
        relay_busy: c1.saturating_sub(c0) as f64 / 1e9 / dt,
        // The busiest load CPU: one saturated CPU is enough to fail a trial.
        load_cpu_busy: l0
            .iter()
            .zip(&l1)
            .map(|(a, b)| b.0.saturating_sub(a.0) as f64 / b.1.saturating_sub(a.1).max(1) as f64)
            .fold(0.0, f64::max),
        relay_fps: f1.saturating_sub(f0) as f64 / dt,
        rss_growth_kib: rss.saturating_sub(rss_before),
        ..Trial::default()
    };
    match report {
        Ok(r) => {
            t.p99_us = p99_us(&r);
            match failure(&r, guests, &drops) {
                None => t.passed = true,
                Some(why) if t.load_cpu_busy >= LOAD_CPU_SATURATED => {
                    t.why = format!("{why} (load CPU saturated)")
                }
                Some(why) => t.why = why,
            }
        }
        Err(e) => t.why = format!("swarm: {e}"),
    }
    t
}

/// The CPUs the relay is not on.
fn load_cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpus: Vec<usize> = (0..n).filter(|&c| c != RELAY_CPU).collect();
    if cpus.is_empty() {
        vec![LOAD_CPU]
    } else {
        cpus
    }
}

/// `guests` split over `parts` swarms as (first guest, count), counts within one of each
/// other, none empty.
fn split(guests: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, guests.max(1));
    let mut first = 0;
    (0..parts)
        .map(|i| {
            let count = guests / parts + usize::from(i < guests % parts);
            first += count;
            (first - count, count)
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// The reports of swarms that ran side by side, as one.
fn merge(reports: Vec<SwarmReport>) -> SwarmReport {
    let mut all = SwarmReport::default();
    for r in reports {
        all.guests += r.guests;
        all.upgraded += r.upgraded;
        all.pinged += r.pinged;
        all.udp_sent += r.udp_sent;
        all.udp_broadcasts_sent += r.udp_broadcasts_sent;
        all.udp_echoes += r.udp_echoes;
        all.udp_broadcasts_received += r.udp_broadcasts_received;
        all.udp_behind += r.udp_behind;
        all.write_blocked += r.write_blocked;
        all.rtt_us.extend(r.rtt_us);
    }
    all.rtt_us.sort_unstable();
    all
}

/// The density section of the markdown report.
pub(crate) fn markdown(results: &[Density]) -> String {
    let mut md = String::new();
    for d in results {
        let broadcasts = match d.broadcast_every {
            0 => "no broadcasts".to_string(),
            k => format!("every {k}th of them to the broadcast address"),
        };
        let memory = match kib_per_guest(d) {
            Some(kib) => format!(" Relay memory per guest, from the trials held: {kib:.1} KiB."),
            None => String::new(),
        };
        md.push_str(&format!(
            "\n**Density, {} B**: each guest sends {} UDP datagrams/s to an echo server on the host, paced, {broadcasts}; the echo server returns each unicast one. One relay core held **{} guests** with the round trip's p99 at most {:.0} ms and nothing lost (no echo or broadcast copy missing, no datagram behind schedule, no relay drop).{memory} Trials, in order (*RSS growth*: the relay's RSS over its RSS before the guests came):\n\n| guests | held | p99 | relay core busy | load CPU busy | relay frames/s | relay RSS growth | why not |\n|---|---|---|---|---|---|---|---|\n",
            d.size,
            d.pps_per_guest,
            d.guests_held,
            P99_LIMIT_US / 1000.0
        ));
        for t in &d.trials {
            md.push_str(&format!(
                "| {} | {} | {} | {:.0} % | {:.0} % | {} | {:.1} MiB | {} |\n",
                t.guests,
                if t.passed { "yes" } else { "no" },
                fmt_p99(t.p99_us),
                t.relay_busy * 100.0,
                t.load_cpu_busy * 100.0,
                fmt_rate(t.relay_fps),
                t.rss_growth_kib as f64 / 1024.0,
                if t.why.is_empty() { "–" } else { &t.why }
            ));
        }
    }
    if results.iter().any(|d| {
        d.trials
            .iter()
            .any(|t| t.load_cpu_busy >= LOAD_CPU_SATURATED)
    }) {
        md.push_str("\n*Load CPU saturated*: the swarm and the echo server had 90 % or more of their CPU, so they, not the relay, may have set the limit.\n");
    }
    md
}

/// KiB of relay memory per guest: the RSS growth between the smallest and the largest trial
/// held, over the guests between them (`None` with fewer than two such trials).
pub(crate) fn kib_per_guest(d: &Density) -> Option<f64> {
    let held = || d.trials.iter().filter(|t| t.passed);
    let small = held().min_by_key(|t| t.guests)?;
    let large = held().max_by_key(|t| t.guests)?;
    (large.guests > small.guests).then(|| {
        large.rss_growth_kib.saturating_sub(small.rss_growth_kib) as f64
            / (large.guests - small.guests) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_counts_double_until_a_failure_then_bisect_to_a_tenth() {
        assert_eq!(next_guests(0, None), Some(64), "nothing tried yet");
        assert_eq!(next_guests(64, None), Some(128));
        assert_eq!(next_guests(1024, None), Some(2048));
        assert_eq!(next_guests(2048, None), None, "held at the most tried");
        assert_eq!(next_guests(256, Some(512)), Some(384));
        assert_eq!(next_guests(384, Some(512)), Some(448));
        assert_eq!(next_guests(448, Some(480)), None, "within a tenth");
        assert_eq!(next_guests(0, Some(64)), Some(32), "the first trial failed");
        assert_eq!(next_guests(0, Some(8)), None);
    }

    fn report(sent: u64, broadcasts: u64, echoes: u64, copies: u64, p99: u32) -> SwarmReport {
        SwarmReport {
            guests: 10,
            pinged: 10,
            udp_sent: sent,
            udp_broadcasts_sent: broadcasts,
            udp_echoes: echoes,
            udp_broadcasts_received: copies,
            rtt_us: vec![p99],
            ..SwarmReport::default()
        }
    }

    #[test]
    fn a_trial_passes_only_with_everything_delivered_and_p99_within_the_limit() {
        let none = Drops::new();
        assert_eq!(failure(&report(1000, 10, 990, 90, 800), 10, &none), None);
        let why = failure(&report(1000, 10, 989, 89, 1200), 10, &none).expect("fails");
        assert!(why.contains("1 of 990 echoes lost"), "{why}");
        assert!(why.contains("1 of 90 broadcast copies lost"), "{why}");
        assert!(why.contains("p99 1200 µs"), "{why}");
        let mut drops = Drops::new();
        drops.insert("send_queue_full".into(), 3);
        let why = failure(&report(1000, 10, 990, 90, 800), 10, &drops).expect("fails");
        assert!(why.contains("send_queue_full=3"), "{why}");
        let mut silent = report(1000, 10, 990, 90, 0);
        silent.rtt_us.clear();
        let why = failure(&silent, 10, &none).expect("no round trip fails");
        assert!(why.contains("p99 none"), "{why}");
    }

    #[test]
    fn memory_per_guest_is_the_growth_between_the_smallest_and_largest_trial_held() {
        let t = |guests, passed, rss_growth_kib| Trial {
            guests,
            passed,
            rss_growth_kib,
            ..Trial::default()
        };
        let mut d = Density {
            trials: vec![
                t(64, true, 14_000),
                t(256, false, 99_999),
                t(128, true, 14_640),
            ],
            ..Density::default()
        };
        assert_eq!(kib_per_guest(&d), Some(10.0));
        d.trials.truncate(2);
        assert_eq!(kib_per_guest(&d), None, "one trial held");
        let md = markdown(&[d]);
        assert!(md.contains("| 256 | no |"), "{md}");
    }

    #[test]
    fn guests_split_evenly_over_swarms_and_reports_merge() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 4), vec![(0, 1), (1, 1)], "no empty swarm");
        assert_eq!(split(64, 1), vec![(0, 64)]);
        let merged = merge(vec![report(100, 1, 99, 9, 300), report(50, 1, 49, 9, 200)]);
        assert_eq!(
            (
                merged.guests,
                merged.pinged,
                merged.udp_sent,
                merged.udp_broadcasts_sent
            ),
            (20, 20, 150, 2)
        );
        assert_eq!(merged.rtt_us, vec![200, 300], "round trips sorted together");
    }
}

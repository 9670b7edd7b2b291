//! Group `rtt`: ICMP echo round trips through the relay, idle and under load, next to a bare TAP and a TCP echo.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tapwire::ws::{frame, Event, Session};
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::{format_mac, icmp_echo, icmp_echo_reply};

use crate::kernel::*;
use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::swarm::*;
use crate::sys::*;
use crate::Ctx;

/// `count` ICMP echoes to the gateway from guest 0 over one client, 0.5 ms apart, from
/// `LOAD_CPU`: their round-trip times in µs. The pinger runs SCHED_FIFO, so that a load
/// generator sharing its CPU does not delay its own wakeups (that would measure the load
/// CPU's scheduler, not the relay).
pub(crate) fn ping_through_relay(ns: &Netns, relay: &Relay, count: usize) -> Vec<f64> {
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

/// What one loaded round-trip measurement saw.
pub(crate) struct Loaded {
    /// Round-trip times in µs.
    pub rtts: Vec<f64>,
    /// Frames per second the TAP received during the echoes.
    pub load_fps: f64,
    /// The fraction of the echo window the relay's core thread spent on a CPU.
    pub busy: f64,
}

/// rtt under load: ICMP echoes to the gateway while 64 swarm guests send `size`-byte UDP
/// frames at `load_fps` in all.
pub(crate) fn scenario_rtt_loaded(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    load_fps: f64,
    count: usize,
) -> Loaded {
    // tapwire-swarm's guests use addresses and MACs of their own, not reserved here.
    let mut args = mtu_args(size);
    args.push("--allow-spoofing".into());
    let relay = Relay::start(ns, dir, &str_refs(&args));
    let sink = ns.enter(|| UdpSocket::bind(("10.86.0.1", SINK_PORT)).expect("sink"));
    let out = dir.join("swarm-paced.out");
    let guests = 64;
    let pps = (load_fps / guests as f64).max(1.0) as u64;
    // Long enough for the echoes (count × ≥ 0.5 ms) with a margin; bounded.
    let phase = count as f64 * 0.002 + 3.0;
    let mut swarm = start_swarm(ns, &out, guests, 2, size, pps, phase);
    wait_for_udp_phase(ns, &relay.tap, load_fps);
    std::thread::sleep(Duration::from_millis(300));
    let (d0, c0, t0) = (
        dev_counters(ns, &relay.tap),
        relay.core_runtime_ns(),
        Instant::now(),
    );
    let rtts = ping_through_relay(ns, &relay, count);
    let (d1, c1, dt) = (
        dev_counters(ns, &relay.tap),
        relay.core_runtime_ns(),
        t0.elapsed().as_secs_f64(),
    );
    // The echoes are done: the rest of the load phase is not needed (our own child, by PID).
    let _ = swarm.kill();
    let _ = swarm.wait();
    drop(sink);
    relay.stop();
    Loaded {
        rtts,
        load_fps: (d1.0 - d0.0) as f64 / dt,
        busy: c1.saturating_sub(c0) as f64 / 1e9 / dt,
    }
}

/// rtt: ICMP echo to the gateway through the relay, and the same echo through a bare TAP.
pub(crate) fn scenario_rtt(
    ns: &Netns,
    dir: &std::path::Path,
    count: usize,
) -> (Vec<f64>, Vec<f64>) {
    // Through the relay.
    let relay = Relay::start(ns, dir, &[]);
    let relay_rtts = ping_through_relay(ns, &relay, count);
    relay.stop();
    // The same echo written to and read from a bare TAP by one thread.
    let (fd, tmac, name) = kernel_tap(ns, 64);
    neighbour(ns, &name, "10.87.0.2", &format_mac(guest_mac(0)));
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
pub(crate) fn tcp_echo_rtt(ns: &Netns, count: usize) -> Vec<f64> {
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

/// The rate to try next for a busy share of `target`, from the (rate, busy share) pairs
/// measured so far at this frame size: on the line through the last two, or, with fewer or a
/// line that does not rise, at the last one's cost per frame (at first: four flooded frames'
/// cost). Never below 100 frames/s.
fn next_rate(seen: &[(f64, f64)], target: f64, capacity: f64) -> f64 {
    let rate = match seen {
        [.., (r1, b1), (r2, b2)] if (b2 - b1) / (r2 - r1) > 0.0 => {
            r2 + (target - b2) / ((b2 - b1) / (r2 - r1))
        }
        [.., (r, b)] if *b > 0.0 => r * target / b,
        _ => target * capacity / 4.0,
    };
    rate.max(100.0)
}

/// Runs of a loaded RTT measurement to bring the relay core's busy share near its target.
const CALIBRATION_ATTEMPTS: usize = 3;

/// Echoes per RTT measurement.
pub(crate) const ECHOES: usize = 5000;

/// Group `rtt`: idle round trips, then at each of `--rtt-loads` (the relay core's busy share)
/// at 64 and 1514 B.
pub(crate) fn run(ctx: &Ctx, capacity: &SwarmCapacity) -> (RttIdle, Vec<RttLoaded>) {
    let o = &ctx.opts;
    let (mut relay_rtt, mut tap_rtt) = scenario_rtt(&ctx.ns, &ctx.dir, ECHOES);
    let mut echo_rtt = tcp_echo_rtt(&ctx.ns, ECHOES);
    let idle = RttIdle {
        relay_p50_us: percentile(&mut relay_rtt, 0.5),
        relay_p99_us: percentile(&mut relay_rtt, 0.99),
        relay_p999_us: percentile(&mut relay_rtt, 0.999),
        tap_p50_us: percentile(&mut tap_rtt, 0.5),
        tap_p99_us: percentile(&mut tap_rtt, 0.99),
        tap_p999_us: percentile(&mut tap_rtt, 0.999),
        tcp_echo_p50_us: percentile(&mut echo_rtt, 0.5),
        tcp_echo_p99_us: percentile(&mut echo_rtt, 0.99),
        tcp_echo_p999_us: percentile(&mut echo_rtt, 0.999),
        relay_cdf_us: cdf(&mut relay_rtt),
    };
    let mut loaded = Vec::new();
    for &size in o.sizes.iter().filter(|s| [64, 1514].contains(*s)) {
        let capacity = match capacity.get(&size) {
            Some(c) => *c,
            None => {
                scenario_swarm_flood(&ctx.ns, &ctx.dir, size, 64, o.seconds)
                    .0
                    .sample
                    .fps
            }
        };
        // Paced frames arrive one per receive and cost the relay several times what a flood's
        // batches do, so a share of the flood capacity says little about how busy the relay
        // is. Each load is a share of the relay core's time instead, found by adjusting the
        // rate until the core's measured busy share is within 5 points of it: the next rate
        // comes from the line through the last two measurements (busy share against rate),
        // the first from the guess that a paced frame costs four flooded ones.
        let mut seen: Vec<(f64, f64)> = Vec::new();
        for &percent in &o.rtt_loads {
            let target = f64::from(percent) / 100.0;
            let mut attempts = 0;
            let (mut m, rate) = loop {
                attempts += 1;
                let rate = next_rate(&seen, target, capacity);
                let m = scenario_rtt_loaded(&ctx.ns, &ctx.dir, size, rate, ECHOES);
                // The rate asked for, not the one measured at the TAP (which counts this
                // measurement's own echoes too): the next rate is one to ask for.
                seen.push((rate, m.busy));
                if (m.busy - target).abs() <= 0.05 || attempts == CALIBRATION_ATTEMPTS {
                    break (m, rate);
                }
                eprintln!(
                    "rtt: {} frames/s of {size} B kept the relay core {:.0} % busy, not {percent} %: again",
                    fmt_rate(m.load_fps),
                    m.busy * 100.0
                );
            };
            let r = RttLoaded {
                size,
                busy_target: target,
                capacity_fps: capacity,
                target_load_fps: rate,
                measured_load_fps: m.load_fps,
                relay_busy: m.busy,
                p50_us: percentile(&mut m.rtts, 0.5),
                p90_us: percentile(&mut m.rtts, 0.9),
                p99_us: percentile(&mut m.rtts, 0.99),
                p999_us: percentile(&mut m.rtts, 0.999),
                cdf_us: cdf(&mut m.rtts),
                answered: m.rtts.len(),
                sent: ECHOES,
            };
            eprintln!(
                "rtt under {} frames/s of {size} B (relay core {:.0} % busy, asked {percent} %): \
                 p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
                fmt_rate(m.load_fps),
                m.busy * 100.0,
                r.p50_us,
                r.p99_us,
                r.p999_us
            );
            loaded.push(r);
        }
    }
    (idle, loaded)
}

#[cfg(test)]
mod tests {
    use super::next_rate;

    #[test]
    fn the_next_rate_follows_the_line_through_the_last_two_measurements() {
        // Nothing measured: a paced frame is guessed at four flooded ones.
        assert_eq!(next_rate(&[], 0.5, 400_000.0), 50_000.0);
        // One measurement: its cost per frame.
        assert_eq!(next_rate(&[(10_000.0, 0.2)], 0.5, 400_000.0), 25_000.0);
        // Two: busy = 0.1 + rate / 100 000, so 50 % busy is 40 000 frames/s.
        let r = next_rate(&[(10_000.0, 0.2), (20_000.0, 0.3)], 0.5, 400_000.0);
        assert!((r - 40_000.0).abs() < 1e-6, "{r}");
        // A line that falls (noise) is not followed; nor does a rate go below 100/s.
        assert_eq!(
            next_rate(&[(10_000.0, 0.3), (20_000.0, 0.2)], 0.1, 1.0),
            10_000.0
        );
        assert_eq!(next_rate(&[(1_000.0, 0.5)], 0.01, 1.0), 100.0);
    }
}

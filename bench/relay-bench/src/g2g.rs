//! Group `g2g`: guest pairs across cores.

use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapwire::ws::frame;
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::udp_frame;

use crate::kernel::*;
use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::updown::receive_loop;
use crate::{progress, Ctx};

/// g2g: guest pairs across cores (A on core 0 sends to B on core 1), relay on both CPUs with
/// `--cores 2`; load shares the CPUs with it.
pub(crate) fn scenario_g2g(
    ns: &Netns,
    dir: &std::path::Path,
    size: usize,
    pairs: usize,
    seconds: f64,
) -> (Sample, Drops) {
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
    let drops = drops_of(&relay.stop());
    let frames = (r1 - r0) as f64;
    (Sample::delivered(frames, dt, c1 - c0), drops)
}

/// Group `g2g`: every frame size and pair count, against loopback TCP of the same sizes.
pub(crate) fn run(ctx: &Ctx) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Scenario("g2g (relay on both CPUs, `--cores 2`)"),
        Col::Size,
        Col::Count("pairs"),
        Col::Fps("frames/s delivered"),
        Col::Mbits,
        Col::Reference("loopback TCP messages/s", "–"),
        Col::Ratio("relay / TCP", RatioStyle::Decimals(3)),
        Col::Cpu,
        Col::Drops,
    ]);
    for &size in &o.sizes {
        let tcp = kernel_limit(ctx, kernel_loopback_tcp, size).median;
        for &pairs in &o.pairs {
            let (samples, drops) = repeat(o.reps, || {
                scenario_g2g(&ctx.ns, &ctx.dir, size, pairs, o.seconds)
            });
            let row = Row {
                reference_fps: Some(tcp),
                ..Row::measured("g2g", size, pairs, &samples, drops)
            };
            progress(&row);
            table.rows.push(row);
        }
    }
    table
}

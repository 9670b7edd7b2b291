//! Group `conn`: connection rate and memory per idle client.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use tapwire::ws::{frame, Event, Session};
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::{icmp_echo, icmp_echo_reply};

use crate::relay::*;
use crate::report::*;
use crate::sys::*;
use crate::Ctx;

/// conn: connections per second (upgrade, then an ICMP echo answered through the gateway), and
/// relay RSS per idle client.
pub(crate) fn scenario_conn(
    ns: &Netns,
    dir: &std::path::Path,
    idle: &[usize],
) -> (f64, f64, Vec<(usize, f64)>) {
    let relay = Relay::start(ns, dir, &[]);
    let tap_mac = relay.tap_mac;
    // Static neighbours for the guests that ping, so the gateway answers without ARP.
    let pingers = 200usize;
    for i in 0..pingers {
        static_neighbour(ns, &relay.tap, i);
    }
    let (upgraded_per_s, pinged_per_s) = spawn_in(ns, LOAD_CPU, move || {
        let t0 = Instant::now();
        // Eight connectors at once, each opening its share one after another.
        let workers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..pingers / 8)
                        .map(|_| {
                            tapwire_testkit::ws::connect("ws://127.0.0.1:8086/", None)
                                .expect("connect")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut streams: Vec<TcpStream> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("connector"))
            .collect();
        let upgraded = pingers as f64 / t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for (i, s) in streams.iter_mut().enumerate() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut session = Session::new(70_000, false);
            let ping = icmp_echo(
                tap_mac,
                guest_mac(i),
                guest_ip(i),
                Ipv4Addr::new(10, 86, 0, 1),
                i as u16,
                1,
                0,
            );
            s.write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &ping))
                .expect("ping");
            let mut buf = vec![0u8; 65_536];
            'wait: while let Ok(n) = s.read(&mut buf) {
                let mut pos = 0;
                let chunk = &mut buf[..n];
                while let Ok(Some(ev)) = session.next(chunk, &mut pos) {
                    if let Event::Message(r) = ev {
                        if icmp_echo_reply(&chunk[r]).is_some_and(|(id, _, _)| usize::from(id) == i)
                        {
                            break 'wait;
                        }
                    }
                }
            }
        }
        let with_ping = pingers as f64 / (t0.elapsed().as_secs_f64());
        let _ = t1;
        (upgraded, with_ping)
    })
    .join()
    .expect("conn");
    let rss = idle
        .iter()
        .map(|&n| (n, rss_per_client(ns, &relay, &Link::Ws, n)))
        .collect();
    relay.stop();
    (upgraded_per_s, pinged_per_s, rss)
}

/// Relay RSS per idle client for `n` clients of `link` (upgraded, and over wss:// with the
/// handshake done; nothing sent since), in KiB, on a relay of its own: memory freed by
/// earlier clients does not hide theirs.
fn idle_rss(ns: &Netns, dir: &std::path::Path, link: &Link, n: usize) -> f64 {
    let relay = Relay::start(ns, dir, &str_refs(&link.relay_args()));
    let kib = rss_per_client(ns, &relay, link, n);
    relay.stop();
    kib
}

/// KiB the RSS of `relay` grows by per client while `n` (at least one) idle clients of
/// `link` are connected.
fn rss_per_client(ns: &Netns, relay: &Relay, link: &Link, n: usize) -> f64 {
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(relay.pid());
    let streams = link.connect(ns, n);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(relay.pid());
    drop(streams);
    after.saturating_sub(before) as f64 / n.max(1) as f64
}

/// (clients, KiB per idle ws:// client, KiB per idle wss:// client) at each count of `idle`,
/// each on a fresh relay.
pub(crate) fn idle_ws_and_wss(
    ns: &Netns,
    dir: &std::path::Path,
    idle: &[usize],
) -> Vec<(usize, f64, f64)> {
    let pem = tapwire_testkit::tls::self_signed(dir, "conn", &["127.0.0.1"]).expect("certificate");
    let wss = Link::Wss(pem);
    idle.iter()
        .map(|&n| {
            (
                n,
                idle_rss(ns, dir, &Link::Ws, n),
                idle_rss(ns, dir, &wss, n),
            )
        })
        .collect()
}

/// Group `conn`.
pub(crate) fn run(ctx: &Ctx) -> ConnResult {
    let (upgrades_per_s, upgrade_and_ping_per_s, rss) =
        scenario_conn(&ctx.ns, &ctx.dir, &ctx.opts.idle);
    ConnResult {
        upgrades_per_s,
        upgrade_and_ping_per_s,
        rss_kib_per_idle_client: rss,
        rss_kib_per_idle_ws_and_wss: idle_ws_and_wss(&ctx.ns, &ctx.dir, &ctx.opts.idle),
    }
}

/// Writes `STEM-conn.svg`: relay RSS per idle client against their number, for one relay
/// taking every count in turn and for a fresh relay per count over ws:// and wss://.
pub(crate) fn chart(c: &ConnResult, stem: &std::path::Path) -> Option<std::path::PathBuf> {
    if c.rss_kib_per_idle_client.is_empty() && c.rss_kib_per_idle_ws_and_wss.is_empty() {
        return None;
    }
    crate::chart::write(stem, "conn", |path| draw(c, path))
}

fn draw(c: &ConnResult, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let fresh = &c.rss_kib_per_idle_ws_and_wss;
    type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
    let lines: [Line; 3] = [
        (
            "one relay, counts in turn",
            BLACK,
            c.rss_kib_per_idle_client
                .iter()
                .map(|&(n, k)| (n as f64, k))
                .collect(),
        ),
        (
            "ws://, a relay per count",
            BLUE,
            fresh.iter().map(|&(n, ws, _)| (n as f64, ws)).collect(),
        ),
        (
            "wss://, a relay per count",
            RED,
            fresh.iter().map(|&(n, _, wss)| (n as f64, wss)).collect(),
        ),
    ];
    let points = || lines.iter().flat_map(|l| l.2.iter().copied());
    let x_max = points().map(|p| p.0).fold(10.0, f64::max) * 2.0;
    let y_max = points().map(|p| p.1).fold(1.0, f64::max) * 1.4;
    let root = SVGBackend::new(path, (560, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("relay memory per idle client", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d((50f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("idle clients")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("KiB of RSS per client")
        .draw()?;
    for (label, colour, line) in lines {
        if line.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    crate::chart::legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

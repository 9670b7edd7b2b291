//! Group `wss`: up and down over wss:// next to ws:// (each repetition runs both back to back
//! on a fresh relay), and connections per second with TLS handshakes against without.

use std::time::Instant;

use tapwire_testkit::netns::Netns;

use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::spawn_in;
use crate::updown::{scenario_down_over, scenario_up_over};
use crate::{progress, Ctx};

/// Connections opened in the rate figure, by 8 connectors at once.
const CONNECTIONS: usize = 400;

/// Upgraded connections per second over `link`: CONNECTIONS clients, 8 connecting at once,
/// each until its `101` (with wss://, after its TLS handshake).
fn connection_rate(ns: &Netns, dir: &std::path::Path, link: &Link) -> f64 {
    let relay = Relay::start(ns, dir, &str_refs(&link.relay_args()));
    let link = link.clone();
    let rate = spawn_in(ns, LOAD_CPU, move || {
        let t0 = Instant::now();
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let link = link.clone();
                std::thread::spawn(move || {
                    (0..CONNECTIONS / 8)
                        .map(|_| link.connect_one())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let streams: Vec<Stream> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("connector"))
            .collect();
        let rate = streams.len() as f64 / t0.elapsed().as_secs_f64();
        drop(streams);
        rate
    })
    .join()
    .expect("connection rate");
    relay.stop();
    rate
}

/// Group `wss`.
pub(crate) fn run(ctx: &Ctx) -> Table {
    let o = &ctx.opts;
    let pem =
        tapwire_testkit::tls::self_signed(&ctx.dir, "bench", &["127.0.0.1"]).expect("certificate");
    let wss = Link::Wss(pem);
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("relay frames/s over wss://"),
        Col::Reference("over ws://", "–"),
        Col::Ratio("wss / ws", RatioStyle::Decimals(2)),
        Col::Load,
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some("**wss://** (TLS in the relay's loop, one core; each repetition runs ws:// and wss:// back to back; the CPU column is the wss:// run's, the ws:// run's is in the next row). Up: each WebSocket message goes in a TLS record of its own, as browsers send them; the generator encrypts on the load CPU. Down: the clients decrypt on the load CPU, which the UDP sender shares:".into());
    for &size in o.sizes.iter().filter(|s| **s == 64 || **s == 1514) {
        for &clients in o.clients.iter().filter(|c| **c <= 64) {
            for up in [true, false] {
                let shape = (size, clients, o.seconds, 1);
                let (mut plain, mut tls) = (Vec::new(), Vec::new());
                let (mut drops_plain, mut drops_tls) = (Drops::new(), Drops::new());
                for _ in 0..o.reps {
                    for (samples, drops, link) in [
                        (&mut plain, &mut drops_plain, &Link::Ws),
                        (&mut tls, &mut drops_tls, &wss),
                    ] {
                        let (s, d) = if up {
                            scenario_up_over(&ctx.ns, &ctx.dir, shape, &[], link)
                        } else {
                            scenario_down_over(&ctx.ns, &ctx.dir, shape, link)
                        };
                        samples.push(s);
                        add_drops(drops, d);
                    }
                }
                let dir = if up { "up" } else { "down" };
                let row = Row {
                    reference_fps: Some(stat_of(&plain, |s| s.fps).median),
                    load: Some(stat_of(&tls, |s| s.offered_fps).median),
                    ..Row::measured(format!("{dir}_wss"), size, clients, &tls, drops_tls)
                };
                progress(&row);
                table.rows.push(row);
                let row = Row {
                    load: Some(stat_of(&plain, |s| s.offered_fps).median),
                    ..Row::measured(format!("{dir}_ws"), size, clients, &plain, drops_plain)
                };
                progress(&row);
                table.rows.push(row);
            }
        }
    }
    let mut rates = (Vec::new(), Vec::new());
    for _ in 0..o.reps {
        rates.0.push(connection_rate(&ctx.ns, &ctx.dir, &Link::Ws));
        rates.1.push(connection_rate(&ctx.ns, &ctx.dir, &wss));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ws_rate, wss_rate) = (median(&mut rates.0), median(&mut rates.1));
    eprintln!("connections/s: ws {ws_rate:.0}, wss {wss_rate:.0}");
    table.outro = Some(format!(
        "Connections per second ({CONNECTIONS} clients, 8 connecting at once, each until its `101`; median of {}): ws:// {ws_rate:.0}/s, wss:// with a TLS 1.3 handshake (ECDSA P-256 certificate) {wss_rate:.0}/s.",
        o.reps
    ));
    table
}

//! Group `nat`: guests ↔ an "internet" through `--nat` (the kernel forwards and masquerades
//! what the relay writes to its TAP), against the kernel forwarding and masquerading the same
//! UDP traffic between two plain interfaces without the relay, in the same run.
//!
//! The bench's namespace gets a veth to an "internet" namespace (198.51.100.0/24, the default
//! route) with the UDP sink or sender; for the kernel's figure a bare TAP (10.87.0.0/24, as in
//! `kernel.rs`) is masqueraded by a table of the bench's own. Everything lives in namespaces the
//! bench makes and is deleted with them.

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapwire::ws::frame;
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::udp_frame;

use std::os::fd::AsRawFd;

use crate::kernel::kernel_tap;
use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::{progress, Ctx};

const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const UPLINK_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const UPLINK: &str = "twbnu0";
/// First masqueraded port of the down scenarios (guest i uses this plus i).
const DOWN_PORT: u16 = 40_000;

fn run_ok(ns: &Netns, args: &[&str]) {
    ns.run(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The "internet" namespace behind the bench namespace's default route.
struct Internet<'a> {
    ns: Netns,
    bench: &'a Netns,
}

impl Drop for Internet<'_> {
    fn drop(&mut self) {
        // Deleting the namespace frees its veth end only later (the kernel cleans namespaces
        // up asynchronously): delete the pair now, so the next scenario can make it again.
        let _ = self.bench.run(&["ip", "link", "del", UPLINK]);
    }
}

impl<'a> Internet<'a> {
    fn new(bench: &'a Netns) -> Internet<'a> {
        let ns = Netns::new("twbi").expect("netns");
        run_ok(
            bench,
            &[
                "ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "twbni0",
            ],
        );
        run_ok(bench, &["ip", "link", "set", "twbni0", "netns", &ns.name]);
        run_ok(
            bench,
            &["ip", "addr", "add", "198.51.100.1/24", "dev", UPLINK],
        );
        run_ok(bench, &["ip", "link", "set", UPLINK, "up"]);
        run_ok(
            bench,
            &["ip", "route", "replace", "default", "via", "198.51.100.2"],
        );
        run_ok(
            &ns,
            &["ip", "addr", "add", "198.51.100.2/24", "dev", "twbni0"],
        );
        run_ok(&ns, &["ip", "link", "set", "twbni0", "up"]);
        Internet { ns, bench }
    }
}

/// The bench's own masquerade of the bare TAP's subnet (10.87.0.0/24) out of the uplink, and
/// IPv4 forwarding, for the kernel's figures; the table is deleted on drop.
struct Masquerade<'a> {
    bench: &'a Netns,
}

impl<'a> Masquerade<'a> {
    fn new(bench: &'a Netns) -> Masquerade<'a> {
        run_ok(bench, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let rules = format!("table ip relaybench_nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr 10.87.0.0/24 oifname \"{UPLINK}\" masquerade\n  }}\n}}\n");
        bench
            .enter(move || tapwire::control::firewall::apply(&rules))
            .unwrap_or_else(|e| panic!("the bench's masquerade: {e}"));
        Masquerade { bench }
    }
}

impl Drop for Masquerade<'_> {
    fn drop(&mut self) {
        let _ = self
            .bench
            .run(&["nft", "delete", "table", "ip", "relaybench_nat"]);
    }
}

/// Datagrams per second arriving at a socket in `ns` while `send` runs for `seconds`.
fn arrivals_during(ns: &Netns, seconds: f64, send: impl FnOnce(Instant)) -> f64 {
    let a0 = udp_arrivals(ns);
    let t0 = Instant::now();
    send(t0 + Duration::from_secs_f64(seconds));
    (udp_arrivals(ns) - a0) as f64 / t0.elapsed().as_secs_f64()
}

/// One thread on `cpu` in `ns` sending `size`-byte frames' worth of UDP from `from` to each of
/// `to` in turn until `end`.
fn blast_thread(
    ns: &Netns,
    cpu: usize,
    from: (Ipv4Addr, u16),
    to: Vec<(Ipv4Addr, u16)>,
    size: usize,
    end: Instant,
) -> std::thread::JoinHandle<()> {
    let payload = vec![0x5Au8; size.max(42) - 42];
    spawn_in(ns, cpu, move || {
        let s = UdpSocket::bind(from).expect("udp");
        while Instant::now() < end {
            for t in &to {
                for _ in 0..8 {
                    let _ = s.send_to(&payload, t);
                }
            }
        }
    })
}

/// The kernel forwarding and masquerading between a bare TAP and the internet, as the relay's
/// traffic is but without the relay: one thread writing pre-built frames into the TAP (`up`,
/// like `kernel_tap_write`), or one thread reading the TAP while the internet sends (`down`,
/// like `kernel_tap_read`).
fn kernel_forward(bench: &Netns, size: usize, seconds: f64, up: bool) -> f64 {
    let net = Internet::new(bench);
    let (fd, tap_mac, _name) = kernel_tap(bench, size);
    let _masquerade = Masquerade::new(bench);
    let guest = ("10.87.0.2".parse::<Ipv4Addr>().unwrap(), DOWN_PORT);
    let hello = udp_frame(
        tap_mac,
        [2, 0, 0, 0, 0, 2],
        guest,
        (INTERNET, SINK_PORT),
        size,
    );
    let fd_raw = fd.as_raw_fd();
    // SAFETY: writing our frame to the TAP descriptor kept open by `fd`.
    unsafe { libc::write(fd_raw, hello.as_ptr().cast(), hello.len()) };
    let sink = net
        .ns
        .enter(|| UdpSocket::bind((INTERNET, SINK_PORT)).expect("sink"));
    std::thread::sleep(Duration::from_millis(100));
    let rate = if up {
        arrivals_during(&net.ns, seconds, |end| {
            spawn_in(bench, RELAY_CPU, move || {
                while Instant::now() < end {
                    for _ in 0..64 {
                        // SAFETY: as above.
                        unsafe { libc::write(fd_raw, hello.as_ptr().cast(), hello.len()) };
                    }
                }
            })
            .join()
            .expect("writer");
        })
    } else {
        drop(sink);
        // SAFETY: fcntl on a descriptor we own: non-blocking reads end the loop on time.
        unsafe { libc::fcntl(fd_raw, libc::F_SETFL, libc::O_RDWR | libc::O_NONBLOCK) };
        let end = Instant::now() + Duration::from_secs_f64(seconds + 0.5);
        let sender = blast_thread(
            &net.ns,
            LOAD_CPU,
            (INTERNET, SINK_PORT),
            vec![(UPLINK_ADDRESS, DOWN_PORT)],
            size,
            end,
        );
        let reads = spawn_in(bench, RELAY_CPU, move || {
            let mut buf = vec![0u8; 65_600];
            std::thread::sleep(Duration::from_millis(200));
            let (t0, mut n) = (Instant::now(), 0u64);
            while t0.elapsed().as_secs_f64() < seconds {
                // SAFETY: reading into our buffer from the TAP descriptor kept open by `fd`.
                if unsafe { libc::read(fd_raw, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
                    n += 1;
                }
            }
            n as f64 / t0.elapsed().as_secs_f64()
        })
        .join()
        .expect("reader");
        let _ = sender.join();
        reads
    };
    drop(fd);
    rate
}

/// The relay with `--nat` and `clients` guests: guests → internet sink (`up`), or an internet
/// sender → every guest's masqueraded port (`down`).
fn relay_nat(ctx: &Ctx, size: usize, clients: usize, up: bool) -> (Sample, Drops) {
    let (ns, seconds) = (&ctx.ns, ctx.opts.seconds);
    let net = Internet::new(ns);
    let mut args = mtu_args(size);
    args.extend(["--nat".into(), "--uplink".into(), UPLINK.into()]);
    let relay = Relay::start(ns, &ctx.dir, &str_refs(&args));
    // Up: the sink. Down: the internet answers from the address and port the guests' first
    // datagrams went to (the masquerade mappings' peer).
    let sink = up.then(|| {
        net.ns
            .enter(|| UdpSocket::bind((INTERNET, SINK_PORT)).expect("sink"))
    });
    let mut streams = connect_clients(ns, clients);
    // Guest i's datagram out from port DOWN_PORT + i makes its masquerade mapping.
    for (i, s) in streams.iter_mut().enumerate() {
        let port = DOWN_PORT + i as u16;
        let f = udp_frame(
            relay.tap_mac,
            guest_mac(i),
            (guest_ip(i), port),
            (INTERNET, SINK_PORT),
            size,
        );
        let wire = tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f);
        s.write_all(&wire.repeat(if up { 1 } else { 2 }))
            .expect("hello");
        static_neighbour(ns, &relay.tap, i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    let (c0, t0);
    let (frames, dt, worker);
    if up {
        let batches: Vec<Vec<u8>> = (0..clients)
            .map(|i| {
                let f = udp_frame(
                    relay.tap_mac,
                    guest_mac(i),
                    (guest_ip(i), 1000),
                    (INTERNET, SINK_PORT),
                    size,
                );
                tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f).repeat(64)
            })
            .collect();
        let st = stop.clone();
        worker = spawn_in(ns, LOAD_CPU, move || {
            while !st.load(Ordering::Relaxed) {
                for (s, b) in streams.iter_mut().zip(&batches) {
                    let _ = s.write_all(b);
                }
            }
            streams
        });
        std::thread::sleep(Duration::from_millis(300));
        let a0 = udp_arrivals(&net.ns);
        (c0, t0) = (cpu_ticks(relay.pid()), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(seconds));
        frames = (udp_arrivals(&net.ns) - a0) as f64;
    } else {
        let (st, n) = (stop.clone(), counted.clone());
        worker = spawn_in(ns, LOAD_CPU, move || {
            crate::updown::receive_loop(&mut streams, &st, &n);
            streams
        });
        let targets: Vec<(Ipv4Addr, u16)> = (0..clients)
            .map(|i| (UPLINK_ADDRESS, DOWN_PORT + i as u16))
            .collect();
        let end = Instant::now() + Duration::from_secs_f64(seconds + 0.6);
        let sender = blast_thread(&net.ns, LOAD_CPU, (INTERNET, SINK_PORT), targets, size, end);
        std::thread::sleep(Duration::from_millis(300));
        let r0 = counted.load(Ordering::Relaxed);
        (c0, t0) = (cpu_ticks(relay.pid()), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(seconds));
        frames = (counted.load(Ordering::Relaxed) - r0) as f64;
        let _ = sender.join();
    }
    dt = t0.elapsed().as_secs_f64();
    let c1 = cpu_ticks(relay.pid());
    stop.store(true, Ordering::Relaxed);
    drop(worker.join().expect("load"));
    let drops = drops_of(&relay.stop());
    drop(sink);
    drop(net);
    (Sample::delivered(frames, dt, c1 - c0), drops)
}

/// Group `nat`: per size (≤ 1514 B) the kernel's forwarding limit each way, then the relay
/// through `--nat` with 1 and 64 clients (those of `--clients`).
pub(crate) fn run(ctx: &Ctx) -> Table {
    let o = &ctx.opts;
    let mut table = Table::new(vec![
        Col::Scenario("scenario"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("frames/s"),
        Col::Mbits,
        Col::Reference("kernel forward + masquerade frames/s", "–"),
        Col::Ratio("relay / kernel", RatioStyle::Decimals(2)),
        Col::Cpu,
        Col::Drops,
    ]);
    table.intro = Some("**NAT** (`--nat`: guests ↔ an \"internet\" namespace; the kernel rows forward and masquerade the same UDP between two veths without the relay, one sending thread; compare with the plain up/down rows above):".into());
    for &size in o.sizes.iter().filter(|s| **s <= 1514) {
        for up in [true, false] {
            let limit = stat(
                &(0..o.reps)
                    .map(|_| kernel_forward(&ctx.ns, size, o.seconds, up))
                    .collect::<Vec<_>>(),
            );
            let name = if up {
                "kernel_forward_up"
            } else {
                "kernel_forward_down"
            };
            let row = Row {
                scenario: name.into(),
                size,
                fps: limit.clone(),
                ..Row::default()
            };
            progress(&row);
            table.rows.push(row);
            for &clients in o.clients.iter().filter(|c| **c <= 64) {
                let (samples, drops) = repeat(o.reps, || relay_nat(ctx, size, clients, up));
                let row = Row {
                    reference_fps: Some(limit.median),
                    ..Row::measured(
                        if up { "nat_up" } else { "nat_down" },
                        size,
                        clients,
                        &samples,
                        drops,
                    )
                };
                progress(&row);
                table.rows.push(row);
            }
        }
    }
    table
}

//! Group `farm`: what a farm of hosts costs (docs/scale-out.md), in one run. Up into one
//! network straight to its host against through HAProxy (the shipped
//! `examples/haproxy.cfg`); the time from `kill -9` of a host to the first answered ping of
//! each of its guests, back through HAProxy on another host; guest → guest in a spanning
//! network on one host against across two hosts over VXLAN, frames/s and round trips.
//!
//! Placement (2 CPUs): every relay on `RELAY_CPU` with one core, HAProxy and the load on
//! `LOAD_CPU`. Through HAProxy the load generator therefore shares its CPU with HAProxy: the
//! rows show what a client gets end to end on this machine, and HAProxy's own CPU per frame.
//! Spanning rows give each relay two cores on both CPUs, the sender's on core 0 and the
//! receiver's on core 1 (as g2g does), the sender thread on `RELAY_CPU` and the receiver's on
//! `LOAD_CPU`: one client flooding another of the same relay core starves that core's output
//! (this group found it; its numbers would measure that, not spanning).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tapwire::config::Subnet;
use tapwire::ws::frame;
use tapwire_testkit::netns::Netns;
use tapwire_testkit::packet::{self, udp_frame};
use tapwire_testkit::process::Proc;
use tapwire_testkit::ws::WsClient;

use crate::relay::*;
use crate::report::*;
use crate::stats::*;
use crate::sys::*;
use crate::updown::receive_loop;
use crate::{progress, Ctx};

mod span;

use tapwire_testkit::farm::{HOST_IPS, LB_PORT};
const ADMIN_TOKEN: &str = "relay-bench-farm-admin-token-0123";
/// Failover tries.
const TRIES: usize = 20;
/// Guests of each failover try (one network).
const MOVED: usize = 2;
/// How often a moved guest tries to connect again, and to ping.
const RETRY: Duration = Duration::from_millis(100);
/// Round trips per spanning RTT figure, and their spacing.
const ECHOES: usize = 500;
const ECHO_GAP: Duration = Duration::from_millis(2);
/// Clients of the up rows.
const UP_CLIENTS: [usize; 2] = [1, 16];

/// The figures that are sentences rather than rows.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct FarmResult {
    /// Milliseconds from SIGKILL to the first answered ping of the last guest of each try.
    pub failover_ms: Vec<f64>,
    /// The same for every guest.
    pub failover_guest_ms: Vec<f64>,
    /// Guest → guest round trips in a spanning network: (size, p50 µs, p99 µs) on one host
    /// and across two.
    pub span_rtt_one_host: Vec<(usize, f64, f64)>,
    pub span_rtt_across: Vec<(usize, f64, f64)>,
}

/// A balancer namespace holding the underlay bridge and HAProxy, and host namespaces on it.
struct Rig {
    hosts: Vec<Netns>,
    relays: Vec<Option<Relay>>,
    haproxy: Option<Proc>,
    dir: PathBuf,
    /// Dropped last: the bridge goes with it.
    lb: Netns,
}

fn sh(ns: &Netns, args: &[&str]) {
    ns.run(args)
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
}

impl Rig {
    fn new(dir: &Path) -> Rig {
        let lb = Netns::new("twbl").expect("netns");
        let hosts: Vec<Netns> = HOST_IPS
            .iter()
            .map(|_| Netns::new("twbh").expect("netns"))
            .collect();
        tapwire_testkit::farm::wire(&lb, &hosts.iter().collect::<Vec<_>>()).expect("the underlay");
        Rig {
            relays: (0..hosts.len()).map(|_| None).collect(),
            hosts,
            haproxy: None,
            dir: dir.to_path_buf(),
            lb,
        }
    }

    /// Starts host `i`'s relay (one core on `RELAY_CPU`, or with `two_cores` two on both
    /// CPUs) with the farm options and `extra`.
    fn start_relay(&mut self, i: usize, (dhcp, two_cores): (bool, bool), extra: &[&str]) {
        let index = i.to_string();
        let token = self.dir.join("admin-token");
        std::fs::write(&token, ADMIN_TOKEN).expect("token file");
        let token = token.display().to_string();
        let mut args = vec![
            "--admin-token",
            &token,
            "--listen",
            "0.0.0.0:8086",
            "--metrics",
            "0.0.0.0:9186",
            "--host-name",
            tapwire_testkit::farm::HOST_NAMES[i],
            "--hosts",
            "3",
            "--host-index",
            &index,
        ];
        args.extend_from_slice(extra);
        let relay = match (dhcp, two_cores) {
            (true, _) => Relay::start_dhcp(&self.hosts[i], &self.dir, &args),
            (false, false) => Relay::start(&self.hosts[i], &self.dir, &args),
            (false, true) => Relay::start_cores(&self.hosts[i], &self.dir, 2, &args),
        };
        self.relays[i] = Some(relay);
    }

    fn stop_relays(&mut self) {
        for r in &mut self.relays {
            if let Some(r) = r.take() {
                drop(r.stop());
            }
        }
    }

    /// HAProxy with the shipped configuration on `LOAD_CPU`, with a stats socket.
    fn start_haproxy(&mut self) {
        let socket = self.dir.join("haproxy.sock");
        let cfg = tapwire_testkit::farm::haproxy_config(&socket);
        let file = self.dir.join("haproxy.cfg");
        std::fs::write(&file, cfg).expect("haproxy.cfg");
        let cpu = LOAD_CPU.to_string();
        let cmd = self.lb.cmd(&[
            "taskset",
            "-c",
            &cpu,
            "haproxy",
            "-db",
            "-f",
            &file.display().to_string(),
        ]);
        self.haproxy = Some(
            Proc::spawn(cmd, self.dir.join("haproxy.log"))
                .expect("haproxy (apt-get install haproxy)"),
        );
    }

    /// Waits (at most 20 s) until HAProxy sees host `i` up or down as `up[i]` says.
    fn wait_servers(&self, up: [bool; 3]) {
        let socket = self.dir.join("haproxy.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let states = tapwire_testkit::farm::server_states(&socket);
            let ok = states
                .iter()
                .zip(up)
                .all(|(s, want)| s.starts_with(if want { "UP" } else { "DOWN" }));
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy sees {states:?}, not {up:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A WebSocket to network `name` through the balancer, or `None` (refused or failed).
    fn via_lb(&self, name: &str) -> Option<TcpStream> {
        let url = format!("ws://127.0.0.1:{LB_PORT}/n/{name}");
        self.lb
            .enter(move || tapwire_testkit::ws::connect(&url, None))
            .ok()
    }

    /// A WebSocket to network `name` straight to host `i`.
    fn direct(&self, i: usize, name: &str) -> TcpStream {
        self.direct_from(i, name, None)
    }

    /// [`Rig::direct`] from source port `port` (which places it on a relay core).
    fn direct_from(&self, i: usize, name: &str, port: Option<u16>) -> TcpStream {
        let url = format!("ws://127.0.0.1:8086/n/{name}");
        self.hosts[i]
            .enter(move || tapwire_testkit::ws::connect_with(&url, port, None))
            .expect("connect to the host")
    }

    /// `GET PATH` on host `i`'s metrics listener (the admin API): the body.
    fn api(&self, i: usize, path: &str) -> serde_json::Value {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: tapwire\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let text = self.hosts[i].enter(move || {
            let mut s = TcpStream::connect("127.0.0.1:9186").ok()?;
            s.write_all(request.as_bytes()).ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            Some(text)
        });
        text.and_then(|t| serde_json::from_str(t.split_once("\r\n\r\n")?.1).ok())
            .unwrap_or_default()
    }

    /// Panics unless host `i` has network `name` on `subnet` (what [`subnet_of`] computes
    /// from the relay's default pool).
    fn expect_subnet(&self, i: usize, name: &str, subnet: &Subnet) {
        let nets = self.api(i, "/api/networks");
        let got = nets["networks"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .map(|n| n["subnet"].clone());
        assert_eq!(
            got,
            Some(serde_json::Value::from(subnet.to_string())),
            "network {name} on host {i}: the bench computes the wrong subnet (the pool's defaults changed?)"
        );
    }

    /// The host holding network `name` with clients, if any.
    fn holder(&self, name: &str) -> Option<usize> {
        (0..self.hosts.len()).find(|&i| {
            self.relays[i].is_some()
                && self.api(i, "/api/networks")["networks"]
                    .as_array()
                    .is_some_and(|nets| {
                        nets.iter()
                            .any(|n| n["name"] == name && n["clients"].as_u64() > Some(0))
                    })
        })
    }
}

/// The subnet a network made on demand takes with the default pool (the same on every host).
fn subnet_of(name: &str) -> Subnet {
    let mut pool =
        tapwire::networks::Pool::new("10.96.0.0/12".parse().expect("pool"), 24).expect("pool");
    pool.exclude(&"10.86.0.0/16".parse().expect("subnet"));
    pool.limit(256 + 64);
    pool.take_for(name, &[]).expect("a block")
}

/// The frame sizes of the group: `--sizes` up to 1514 B (the underlay's jumbo frames are for
/// VXLAN, not for guests).
fn sizes(ctx: &Ctx) -> Vec<usize> {
    ctx.opts
        .sizes
        .iter()
        .copied()
        .filter(|s| *s <= 1514)
        .collect()
}

/// Guest `i`'s address in `subnet` (from .20 on).
fn address(subnet: &Subnet, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network) + 20 + i as u32)
}

/// Up into network `name` on `streams` for `seconds`: frames/s at host `i`'s sink, with the
/// relay's and (through the balancer) HAProxy's CPU per frame.
fn measure_up(
    rig: &Rig,
    i: usize,
    streams: Vec<TcpStream>,
    batches: Vec<Vec<u8>>,
    seconds: f64,
) -> (Sample, f64) {
    let ns = &rig.hosts[i];
    let relay = rig.relays[i].as_ref().expect("relay").pid();
    let proxy = rig.haproxy.as_ref().map_or(0, Proc::pid);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let generator = spawn_in(ns, LOAD_CPU, move || {
        let mut streams = streams;
        while !stop2.load(Ordering::Relaxed) {
            for (s, b) in streams.iter_mut().zip(&batches) {
                let _ = s.write_all(b);
            }
        }
        streams
    });
    std::thread::sleep(Duration::from_millis(300));
    let (a0, c0, p0, t0) = (
        udp_arrivals(ns),
        cpu_ticks(relay),
        cpu_ticks(proxy),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (a1, c1, p1, dt) = (
        udp_arrivals(ns),
        cpu_ticks(relay),
        cpu_ticks(proxy),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    drop(generator.join());
    // Let what is queued drain before the next window (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = udp_arrivals(ns);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = udp_arrivals(ns);
        if now == last {
            break;
        }
        last = now;
    }
    let frames = (a1 - a0) as f64;
    let proxy_ns = (p1 - p0) as f64 / ticks_per_second() * 1e9 / frames.max(1.0);
    (Sample::delivered(frames, dt, c1 - c0), proxy_ns)
}

/// Up rows: `clients` clients of one network on host 0, straight and through HAProxy, the
/// two alternating in each repetition.
fn up_rows(ctx: &Ctx, rig: &mut Rig, table: &mut Table) {
    let name = "bench";
    let subnet = subnet_of(name);
    let sink = rig.hosts[0].enter(move || UdpSocket::bind(("0.0.0.0", SINK_PORT)).expect("sink"));
    // The network exists once a client joined (with the subnet the bench computes for it).
    drop(rig.direct(0, name));
    rig.expect_subnet(0, name, &subnet);
    let gw_mac = tapwire::networks::gateway_mac(name, &subnet).0;
    for size in sizes(ctx) {
        for clients in UP_CLIENTS {
            let batches: Vec<Vec<u8>> = (0..clients)
                .map(|c| {
                    let f = udp_frame(
                        gw_mac,
                        guest_mac(c),
                        (address(&subnet, c), 1000 + c as u16),
                        (subnet.gateway(), SINK_PORT),
                        size,
                    );
                    tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f).repeat(64)
                })
                .collect();
            let (mut direct, mut through, mut proxy) = (Vec::new(), Vec::new(), Vec::new());
            for rep in 0..ctx.opts.reps {
                for lb in [rep % 2 == 1, rep % 2 == 0] {
                    let streams: Vec<TcpStream> = (0..clients)
                        .map(|_| {
                            if lb {
                                rig.via_lb(name).expect("through the balancer")
                            } else {
                                rig.direct(0, name)
                            }
                        })
                        .collect();
                    let (sample, proxy_ns) =
                        measure_up(rig, 0, streams, batches.clone(), ctx.opts.seconds);
                    if lb {
                        through.push(sample);
                        proxy.push(proxy_ns);
                    } else {
                        direct.push(sample);
                    }
                }
            }
            let direct_row = Row::measured("farm_direct", size, clients, &direct, Drops::new());
            let lb_row = Row {
                reference_fps: Some(direct_row.fps.median),
                proxy_cpu_ns_per_frame: Some(median(&mut proxy)),
                ..Row::measured("farm_haproxy", size, clients, &through, Drops::new())
            };
            progress(&direct_row);
            progress(&lb_row);
            table.rows.push(direct_row);
            table.rows.push(lb_row);
        }
    }
    drop(sink);
}

/// Sends an echo request from `ip` to the gateway and waits `limit` for its answer, answering
/// ARP for `ip` meanwhile (a host that never saw the guest asks first).
fn ping_gateway(
    c: &mut WsClient,
    (mac, ip): ([u8; 6], Ipv4Addr),
    (gw_mac, gw): ([u8; 6], Ipv4Addr),
    seq: u16,
    limit: Duration,
) -> bool {
    c.send_frame(&packet::icmp_echo(gw_mac, mac, ip, gw, 0x77, seq, 0));
    let deadline = Instant::now() + limit;
    while let Some(f) = c.recv_frame(deadline.saturating_duration_since(Instant::now())) {
        if packet::icmp_echo_reply(&f).is_some_and(|(_, s, _)| s == seq) {
            return true;
        }
        if let Some((1, asker, asker_ip, target)) = packet::parse_arp(&f) {
            if target == ip {
                c.send_frame(&packet::arp(2, mac, ip, asker, asker_ip));
            }
        }
    }
    false
}

/// `TRIES` times: two guests of one network through the balancer, `kill -9` of their host,
/// and the time until each, connecting again every 100 ms, has a ping answered by its
/// gateway on another host. The killed host then starts again.
fn failover(rig: &mut Rig, result: &mut FarmResult) {
    for i in 0..3 {
        rig.start_relay(i, (true, false), &[]);
    }
    rig.wait_servers([true; 3]);
    for t in 0..TRIES {
        let name = format!("fo{t}");
        let subnet = subnet_of(&name);
        let gw = (
            tapwire::networks::gateway_mac(&name, &subnet).0,
            subnet.gateway(),
        );
        let mut guests: Vec<(WsClient, [u8; 6], Ipv4Addr)> = (0..MOVED)
            .map(|k| {
                let mac = guest_mac(2000 + t * MOVED + k);
                let mut c = WsClient::new(rig.via_lb(&name).expect("through the balancer"));
                let ip = c.lease(mac);
                assert!(
                    ping_gateway(&mut c, (mac, ip), gw, 1, Duration::from_secs(2)),
                    "{name}: no ping before the kill"
                );
                (c, mac, ip)
            })
            .collect();
        let victim = rig.holder(&name).expect("a host holds the network");
        let pid = rig.relays[victim].as_ref().expect("relay").pid();
        // SAFETY: signalling the relay this bench started, by pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let killed = Instant::now();
        let mut handles = Vec::new();
        for (old, mac, ip) in guests.drain(..) {
            drop(old);
            let lb = rig.lb.path();
            let name = name.clone();
            handles.push(std::thread::spawn(move || {
                tapwire_testkit::netns::enter_path(&lb).expect("setns");
                let url = format!("ws://127.0.0.1:{LB_PORT}/n/{name}");
                let deadline = killed + Duration::from_secs(60);
                let mut seq = 2;
                while Instant::now() < deadline {
                    let Ok(stream) = tapwire_testkit::ws::connect(&url, None) else {
                        std::thread::sleep(RETRY);
                        continue;
                    };
                    let mut c = WsClient::new(stream);
                    while Instant::now() < deadline {
                        seq += 1;
                        if ping_gateway(&mut c, (mac, ip), gw, seq, RETRY) {
                            return Some(killed.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                }
                None
            }));
        }
        let times: Vec<f64> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("guest")
                    .expect("the guest came back within 60 s")
            })
            .collect();
        eprintln!(
            "farm failover {t}: host {} killed, guests back after {times:.0?} ms",
            tapwire_testkit::farm::HOST_NAMES[victim]
        );
        result
            .failover_ms
            .push(times.iter().copied().fold(0.0, f64::max));
        result.failover_guest_ms.extend(times);
        // Dead already: dropping it reaps it (it has no exit summary to read).
        drop(rig.relays[victim].take());
        rig.start_relay(victim, (true, false), &[]);
        rig.wait_servers([true; 3]);
    }
    rig.stop_relays();
}

/// Guest → guest in a spanning network: frames/s from a sender on host 0 to a receiver on
/// host `to` (0: the same host), and round trips.
/// Group `farm`.
pub(crate) fn run(ctx: &Ctx) -> (Vec<Table>, FarmResult) {
    let dir = ctx.dir.join("farm");
    std::fs::create_dir_all(&dir).expect("farm dir");
    let mut rig = Rig::new(&dir);
    let mut result = FarmResult::default();
    rig.start_haproxy();
    // Up: host 0 alone is up, so HAProxy sends every connection there.
    rig.start_relay(0, (false, false), &["--allow-spoofing"]);
    rig.wait_servers([true, false, false]);
    let mut up = Table::new(vec![
        Col::Scenario("farm: up into one network (relay on CPU 0; load and HAProxy on CPU 1)"),
        Col::Size,
        Col::Count("clients"),
        Col::Fps("frames/s delivered"),
        Col::Mbits,
        Col::Reference("straight to the host", "–"),
        Col::Ratio("through HAProxy / straight", RatioStyle::Decimals(2)),
        Col::Cpu,
        Col::ProxyCpu,
    ]);
    up_rows(ctx, &mut rig, &mut up);
    rig.stop_relays();
    failover(&mut rig, &mut result);
    let mut spanning = Table::new(vec![
        Col::Scenario(
            "farm: guest → guest in a spanning network (each relay `--cores 2` on both CPUs; sender on CPU 0, receiver on CPU 1)",
        ),
        Col::Size,
        Col::Fps("frames/s delivered"),
        Col::Mbits,
        Col::Reference("the kernel alone across (TAP → VXLAN → TAP)", "–"),
        Col::Ratio("across: relays / kernel", RatioStyle::Decimals(2)),
        Col::Cpu,
        Col::Drops,
    ]);
    span::run(ctx, &mut rig, &mut spanning, &mut result);
    (vec![up, spanning], result)
}

impl FarmResult {
    /// The sentences of the report.
    pub(crate) fn markdown(&self) -> String {
        let mut ms = self.failover_ms.clone();
        let mut each = self.failover_guest_ms.clone();
        let mut md = format!(
            "\nFailover: {} tries of `kill -9` of the host of a network with {MOVED} guests behind HAProxy (the shipped configuration: checks every 1 s, down after 2, a failed connection tried once more on the next host of the hash ring); each guest connects again every {} ms and pings its gateway. From the kill to the last guest's first answered ping: p50 {:.0} ms, p99 (the slowest of so few) {:.0} ms, min {:.0} ms (each guest: p50 {:.0} ms, p99 {:.0} ms).\n",
            ms.len(),
            RETRY.as_millis(),
            percentile(&mut ms, 0.5),
            percentile(&mut ms, 0.99),
            ms.iter().copied().fold(f64::MAX, f64::min),
            percentile(&mut each, 0.5),
            percentile(&mut each, 0.99),
        );
        for ((size, p50, p99), (_, a50, a99)) in
            self.span_rtt_one_host.iter().zip(&self.span_rtt_across)
        {
            md.push_str(&format!(
                "\nSpanning, guest → guest ICMP echo of {size} B ({ECHOES} echoes, {} ms apart): on one host p50 {p50:.0} µs, p99 {p99:.0} µs; across two hosts over VXLAN p50 {a50:.0} µs, p99 {a99:.0} µs.\n",
                ECHO_GAP.as_millis()
            ));
        }
        md
    }
}

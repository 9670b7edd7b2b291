//! The engine without root, for `cargo test`: real workers with real io_uring rings, driven
//! step by step by the test on its own thread, each core's TAP queue a `SOCK_SEQPACKET`
//! socketpair (one frame per message, as a TAP reads and writes them), clients real loopback
//! TCP connections, and a manual clock. Time moves only when the test advances it; a step
//! waits for I/O completions (at most a few milliseconds each), never for time, so a timeout
//! happens exactly when the test says.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
pub use tapwire_testkit::packet::eth;
pub use tapwire_testkit::ws::Got;
use tapwire_testkit::ws::{client_frame, Decoder};

use super::clock::Clock;
use super::network::{CoreCmd, NetEvent, NetId, Network, NetworkSpec};
use super::worker::Worker;
use super::{EngineConfig, Shared};
use crate::counters::{CoreCounters, DropReason};

/// How long one worker's step waits for a completion.
const STEP_WAIT: Duration = Duration::from_millis(2);
/// Steps [`Rig::until`] takes before it gives up.
const MAX_STEPS: usize = 2_000;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: crate::config::RunArgs,
}

/// Workers, their TAP stand-ins and their clock.
pub struct Rig {
    workers: Vec<Worker>,
    pub shared: Arc<Shared>,
    now: Arc<AtomicU64>,
    /// Each core's listener: a client connects to the core it wants.
    ports: Vec<SocketAddr>,
    /// Each core's wss:// listener, when the options ask for one (`--listen-tls`).
    pub tls_ports: Vec<SocketAddr>,
    /// The host's end of each core's TAP stand-in, by network slot (0: the default network).
    taps: HashMap<u16, Vec<OwnedFd>>,
    /// What the cores told the control thread, which the test plays.
    events: tokio::sync::mpsc::UnboundedReceiver<NetEvent>,
    /// Networks made by [`Rig::add_network`] so far.
    made: u16,
}

impl Rig {
    /// `cores` workers configured by `tapwire run` options `args`, with every arm made.
    pub fn new(cores: usize, args: &[&str]) -> Rig {
        let mut all = vec!["tapwire", "--cores", "1"];
        all.extend_from_slice(args);
        let config = Cli::try_parse_from(&all)
            .expect("options")
            .run
            .validate(1)
            .expect("valid options");
        // The relay's own sizes: queue bounds and back-pressure thresholds follow from them.
        let cfg = Arc::new(EngineConfig::from_config(&config));
        let (clock, now) = Clock::manual();
        let default_net = NetworkSpec {
            name: crate::networks::DEFAULT.to_string(),
            tap: "rig0".to_string(),
            subnet: None,
            uplink_macs: Vec::new(),
            isolate: config.isolate,
            max_macs_per_client: cfg.clients.max_macs_per_client,
            steering: None,
            limits: Default::default(),
            roam: (config.host.dhcp()).and_then(|d| config.farm.roam(d.range, d.lease_time)),
            span: None,
        };
        let (shared, events) = Shared::with_clock(cores, default_net, clock).expect("shared state");
        let mut workers = Vec::new();
        let mut ports = Vec::new();
        let mut tls_ports = Vec::new();
        let mut taps = Vec::new();
        for id in 0..cores {
            let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
            ports.push(listener.local_addr().expect("address"));
            let tls_listener = cfg.tls.is_some().then(|| {
                let l = TcpListener::bind("127.0.0.1:0").expect("wss:// listener");
                tls_ports.push(l.local_addr().expect("address"));
                OwnedFd::from(l)
            });
            let (host, queue) = tap_stand_in();
            let mut worker = Worker::new(
                id,
                cfg.clone(),
                shared.clone(),
                OwnedFd::from(listener),
                tls_listener,
                queue,
            )
            .expect("worker");
            worker.start();
            workers.push(worker);
            taps.push(host);
        }
        Rig {
            workers,
            shared,
            now,
            ports,
            tls_ports,
            taps: HashMap::from([(0, taps)]),
            events,
            made: 0,
        }
    }

    /// Makes network `name` as the control thread would: a TAP stand-in per core, each core
    /// sent it, then the name published. Its id.
    pub fn add_network(&mut self, name: &str, isolate: bool) -> NetId {
        self.add_network_with(name, isolate, crate::config::NetLimits::default())
    }

    /// [`Rig::add_network`] with limits of its own (a declared network's).
    pub fn add_network_with(
        &mut self,
        name: &str,
        isolate: bool,
        limits: crate::config::NetLimits,
    ) -> NetId {
        self.made += 1;
        let id = NetId {
            slot: self.made,
            generation: 1,
        };
        let spec = NetworkSpec {
            name: name.to_string(),
            tap: format!("rig0n{}", self.made),
            subnet: None,
            uplink_macs: Vec::new(),
            isolate,
            max_macs_per_client: limits.max_macs_per_client.unwrap_or(4),
            steering: None,
            limits,
            roam: None,
            span: None,
        };
        let now = self.now.load(Ordering::Acquire);
        let net = Arc::new(Network::new(id, spec, self.workers.len(), now));
        let mut hosts = Vec::new();
        for core in 0..self.workers.len() {
            let (host, queue) = tap_stand_in();
            hosts.push(host);
            self.shared.command(
                core,
                CoreCmd::Add {
                    net: net.clone(),
                    tap: queue,
                },
            );
        }
        self.taps.insert(id.slot, hosts);
        self.shared.networks.insert(net);
        id
    }

    /// What the cores told the control thread since the last call.
    pub fn events(&mut self) -> Vec<NetEvent> {
        let mut all = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            all.push(e);
        }
        all
    }

    /// One step of every worker.
    pub fn step(&mut self) {
        for core in 0..self.workers.len() {
            self.step_core(core);
        }
    }

    /// One step of core `core` alone (the others wait, their messages unread).
    pub fn step_core(&mut self, core: usize) {
        let drained = self.workers[core]
            .step(Some(STEP_WAIT))
            .expect("worker step");
        assert!(!drained || self.shared.shutdown.load(Ordering::Acquire));
    }

    /// Steps until `done` holds; panics naming `what` if it does not within [`MAX_STEPS`].
    #[track_caller]
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&mut Rig) -> bool) {
        for _ in 0..MAX_STEPS {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("{what}: not after {MAX_STEPS} steps");
    }

    /// Moves the clock on by `ms` and lets every worker see it (and run its tick's jobs).
    pub fn advance(&mut self, ms: u64) {
        self.now.fetch_add(ms, Ordering::AcqRel);
        self.step();
    }

    /// A client on core `core`, upgraded.
    #[track_caller]
    pub fn client(&mut self, core: usize) -> Client {
        self.client_on(core, "/")
    }

    /// A client on core `core` that asked for `path`, upgraded.
    #[track_caller]
    pub fn client_on(&mut self, core: usize, path: &str) -> Client {
        let mut c = self.connect(core);
        c.send_raw(&upgrade_request(path));
        self.until("the upgrade is answered", |_| c.upgraded());
        c
    }

    /// A TCP connection to core `core`, with nothing sent.
    pub fn connect(&mut self, core: usize) -> Client {
        let stream = TcpStream::connect(self.ports[core]).expect("connect");
        stream.set_nonblocking(true).expect("nonblocking");
        Client {
            stream,
            head: Some(Vec::new()),
            refusal: None,
            decoder: Decoder::default(),
            got: VecDeque::new(),
            eof: false,
        }
    }

    /// The sum over cores of a counter.
    pub fn count(&self, field: impl Fn(&CoreCounters) -> u64) -> u64 {
        self.shared.counters.iter().map(|c| field(c)).sum()
    }

    /// Drops counted for `reason` over all cores.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.count(|c| c.drops(reason))
    }

    /// Writes `frame` from the host into core `core`'s queue of the default network's TAP.
    pub fn host_send(&self, core: usize, frame: &[u8]) {
        self.net_send(0, core, frame);
    }

    /// The next frame core `core` wrote to the default network's TAP, if one is waiting.
    pub fn host_recv(&self, core: usize) -> Option<Vec<u8>> {
        self.net_recv(0, core)
    }

    /// Writes `frame` from the host into core `core`'s queue of network slot `slot`'s TAP.
    pub fn net_send(&self, slot: u16, core: usize, frame: &[u8]) {
        rustix::io::write(&self.taps[&slot][core], frame).expect("TAP write");
    }

    /// The next frame core `core` wrote to network slot `slot`'s TAP, if one is waiting.
    pub fn net_recv(&self, slot: u16, core: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        match rustix::io::read(&self.taps[&slot][core], &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(rustix::io::Errno::AGAIN) => None,
            Err(e) => panic!("TAP read: {e}"),
        }
    }

    /// Steps until core `core` wrote a frame to the default network's TAP; the frame.
    #[track_caller]
    pub fn host_expect(&mut self, core: usize, what: &str) -> Vec<u8> {
        self.host_expect_on(0, core, what)
    }

    /// Steps until core `core` wrote a frame to network slot `slot`'s TAP; the frame.
    #[track_caller]
    pub fn host_expect_on(&mut self, slot: u16, core: usize, what: &str) -> Vec<u8> {
        let mut got = None;
        self.until(what, |rig| {
            got = rig.net_recv(slot, core);
            got.is_some()
        });
        got.expect("a frame")
    }
}

/// The upgrade request every rig client sends.
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: rig\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An upgrade request for `path` (and query).
pub fn upgrade_request(path: &str) -> Vec<u8> {
    let rest = std::str::from_utf8(UPGRADE)
        .expect("ASCII")
        .strip_prefix("GET / ")
        .expect("a GET of /");
    format!("GET {path} {rest}").into_bytes()
}

/// A TAP stand-in: the host's end and the core's queue.
fn tap_stand_in() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .expect("socketpair")
}

/// A loopback client, read without blocking.
pub struct Client {
    pub stream: TcpStream,
    /// The response head while it is being read; None once it was.
    head: Option<Vec<u8>>,
    /// A response head other than `101`: the refusal.
    refusal: Option<String>,
    decoder: Decoder,
    /// What arrived and was not taken yet.
    got: VecDeque<Got>,
    eof: bool,
}

impl Client {
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("client send");
    }

    /// Sends `eth` as one binary message.
    pub fn send_frame(&mut self, eth: &[u8]) {
        self.send_raw(&client_frame(2, eth));
    }

    /// Reads whatever has arrived.
    pub fn poll(&mut self) {
        let mut buf = [0u8; 65_536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.take(&mut buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }

    fn take(&mut self, bytes: &mut [u8]) {
        if let Some(refusal) = &mut self.refusal {
            refusal.push_str(&String::from_utf8_lossy(bytes));
            return;
        }
        let mut rest;
        let bytes = match &mut self.head {
            None => bytes,
            Some(head) => {
                head.extend_from_slice(bytes);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return;
                };
                rest = head.split_off(end + 4);
                if !head.starts_with(b"HTTP/1.1 101") {
                    let mut text = String::from_utf8_lossy(head).into_owned();
                    text.push_str(&String::from_utf8_lossy(&rest));
                    self.refusal = Some(text);
                    self.head = None;
                    return;
                }
                self.head = None;
                &mut rest[..]
            }
        };
        let got = &mut self.got;
        self.decoder
            .feed(bytes, |m| got.push_back(Got::from(m)))
            .expect("the relay's stream decodes");
    }

    /// Whether the upgrade response has arrived (a `101`; see [`Client::refusal`]).
    pub fn upgraded(&mut self) -> bool {
        self.poll();
        assert!(self.refusal.is_none(), "refused: {:?}", self.refusal);
        self.head.is_none()
    }

    /// The response, when it was not a `101`.
    pub fn refusal(&mut self) -> Option<String> {
        self.poll();
        self.refusal.clone()
    }

    /// The next thing received, if any has arrived.
    pub fn next(&mut self) -> Option<Got> {
        self.poll();
        self.got.pop_front()
    }

    /// The next Ethernet frame, skipping anything else.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        while let Some(g) = self.next() {
            if let Got::Frame(f) = g {
                return Some(f);
            }
        }
        None
    }

    /// Whether the relay ended the connection.
    pub fn ended(&mut self) -> bool {
        self.poll();
        self.eof
    }
}

/// A unicast MAC ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

#[cfg(test)]
#[path = "rig/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rig/networks.rs"]
mod networks;

#[cfg(test)]
#[path = "rig/farm.rs"]
mod farm;

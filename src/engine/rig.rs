//! The engine without root, for `cargo test`: real workers with real io_uring rings, driven
//! step by step by the test on its own thread, each core's TAP queue a `SOCK_SEQPACKET`
//! socketpair (one frame per message, as a TAP reads and writes them), clients real loopback
//! TCP connections, and a manual clock. Time moves only when the test advances it; a step
//! waits for I/O completions (at most a few milliseconds each), never for time, so a timeout
//! happens exactly when the test says.

use std::collections::VecDeque;
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
    /// The host's end of each core's TAP stand-in.
    taps: Vec<OwnedFd>,
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
        let shared = Shared::with_clock(cores, cfg.clients.max_macs_per_client, None, clock)
            .expect("shared state");
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
            let (host, queue) = rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
                None,
            )
            .expect("socketpair");
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
            taps,
        }
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
        let mut c = self.connect(core);
        c.send_raw(UPGRADE);
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

    /// Writes `frame` from the host into core `core`'s TAP queue.
    pub fn host_send(&self, core: usize, frame: &[u8]) {
        rustix::io::write(&self.taps[core], frame).expect("TAP write");
    }

    /// The next frame core `core` wrote to its TAP queue, if one is waiting.
    pub fn host_recv(&self, core: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        match rustix::io::read(&self.taps[core], &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(rustix::io::Errno::AGAIN) => None,
            Err(e) => panic!("TAP read: {e}"),
        }
    }

    /// Steps until core `core` wrote a frame to its TAP queue; the frame.
    #[track_caller]
    pub fn host_expect(&mut self, core: usize, what: &str) -> Vec<u8> {
        let mut got = None;
        self.until(what, |rig| {
            got = rig.host_recv(core);
            got.is_some()
        });
        got.expect("a frame")
    }
}

/// The upgrade request every rig client sends.
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: rig\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A loopback client, read without blocking.
pub struct Client {
    pub stream: TcpStream,
    /// The response head while it is being read; None once it was.
    head: Option<Vec<u8>>,
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
        let mut rest;
        let bytes = match &mut self.head {
            None => bytes,
            Some(head) => {
                head.extend_from_slice(bytes);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return;
                };
                rest = head.split_off(end + 4);
                assert!(
                    head.starts_with(b"HTTP/1.1 101"),
                    "{}",
                    String::from_utf8_lossy(head)
                );
                self.head = None;
                &mut rest[..]
            }
        };
        let got = &mut self.got;
        self.decoder
            .feed(bytes, |m| got.push_back(Got::from(m)))
            .expect("the relay's stream decodes");
    }

    /// Whether the upgrade response has arrived.
    pub fn upgraded(&mut self) -> bool {
        self.poll();
        self.head.is_none()
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

//! `tapwire swarm`: one process playing many synthetic guests, each on its own WebSocket.
//!
//! Every guest connects, upgrades, takes a DHCP lease (DISCOVER/OFFER/REQUEST/ACK with
//! retransmits), resolves the gateway with ARP, pings it once, and from then on answers ARP
//! requests and ICMP echoes for its address. One thread, one `mio` poll over all sockets:
//! 10 000 guests fit in one process. Test and benchmark tooling.

pub mod wire;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::testkit::{icmp_echo, icmp_echo_reply};
use crate::ws::{frame, handshake, Event, Session};
use wire::{DHCPACK, DHCPDISCOVER, DHCPNAK, DHCPOFFER, DHCPREQUEST};

/// Options of `tapwire swarm`.
#[derive(Debug, Clone, clap::Args)]
pub struct SwarmArgs {
    /// Relay to connect to, ws://HOST:PORT/PATH.
    #[arg(long, default_value = "ws://127.0.0.1:8086/")]
    pub url: String,
    /// Number of guests.
    #[arg(long, default_value_t = 100)]
    pub guests: usize,
    /// Address every guest pings once it has its lease.
    #[arg(long, default_value = "10.86.0.1")]
    pub gateway: Ipv4Addr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Connections opened at once (the rest wait for a free place).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

/// What became of the guests.
#[derive(Debug, Default)]
pub struct SwarmReport {
    pub guests: usize,
    pub upgraded: usize,
    pub leased: usize,
    pub pinged: usize,
    /// Seconds from start until every guest that pinged had done so.
    pub elapsed: f64,
    /// Echo requests from others this swarm answered.
    pub echoes_answered: u64,
    /// Retransmissions (DHCP, ARP or echo sent again after a timeout).
    pub retransmits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Upgrading,
    Discovering,
    Requesting { offered: Ipv4Addr, server: Ipv4Addr },
    Resolving,
    Pinging,
    Done,
}

struct Guest {
    stream: TcpStream,
    stage: Stage,
    mac: [u8; 6],
    xid: u32,
    ip: Option<Ipv4Addr>,
    gateway_mac: Option<[u8; 6]>,
    session: Session,
    /// A message received in pieces.
    assembly: Vec<u8>,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    key: String,
    last_sent: Instant,
    tries: u32,
}

/// A random, locally administered MAC (prefix 02:53). Random, as v86's are: dnsmasq picks a
/// guest's address from a hash of its MAC and does not reserve open offers, so sequential MACs
/// make concurrent guests collide on the same offer ("address in use" NAKs).
fn random_mac(seed: &mut u64, taken: &mut std::collections::HashSet<[u8; 6]>) -> [u8; 6] {
    loop {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_be_bytes();
        let mac = [0x02, 0x53, b[2], b[3], b[4], b[5]];
        if taken.insert(mac) {
            return mac;
        }
    }
}

fn ws_frame(payload: &[u8]) -> Vec<u8> {
    crate::guest::client_frame(frame::OP_BINARY, payload)
}

impl Guest {
    fn send(&mut self, eth: &[u8]) {
        self.outbox.extend_from_slice(&ws_frame(eth));
        self.last_sent = Instant::now();
    }

    /// Advances after a timeout (retransmits) or a stage change.
    fn kick(&mut self, gateway: Ipv4Addr) {
        match self.stage {
            Stage::Discovering => {
                let m = wire::dhcp_message(self.mac, self.xid, DHCPDISCOVER, None);
                self.send(&m);
            }
            Stage::Requesting { offered, server } => {
                let m =
                    wire::dhcp_message(self.mac, self.xid, DHCPREQUEST, Some((offered, server)));
                self.send(&m);
            }
            Stage::Resolving => {
                if let Some(ip) = self.ip {
                    let m = wire::arp(1, self.mac, ip, [0; 6], gateway);
                    self.send(&m);
                }
            }
            Stage::Pinging => {
                if let (Some(ip), Some(gw)) = (self.ip, self.gateway_mac) {
                    let m = icmp_echo(gw, self.mac, ip, gateway, 0x5753, self.tries as u16, 0);
                    self.send(&m);
                }
            }
            _ => {}
        }
        self.tries += 1;
    }

    /// Handles one Ethernet frame; returns whether an echo request was answered.
    fn on_frame(&mut self, f: &[u8], gateway: Ipv4Addr) -> bool {
        if let Some((op, sender_mac, sender_ip, target)) = wire::parse_arp(f) {
            if op == 1 && Some(target) == self.ip {
                let ip = self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                let reply = wire::arp(2, self.mac, ip, sender_mac, sender_ip);
                self.send(&reply);
            } else if op == 2 && sender_ip == gateway && self.stage == Stage::Resolving {
                self.gateway_mac = Some(sender_mac);
                self.stage = Stage::Pinging;
                self.tries = 0;
                self.kick(gateway);
            }
            return false;
        }
        if let Some((kind, yiaddr, server)) = wire::dhcp_reply(f, self.xid) {
            match (self.stage, kind) {
                (Stage::Discovering, DHCPOFFER) => {
                    self.stage = Stage::Requesting {
                        offered: yiaddr,
                        server,
                    };
                    self.tries = 0;
                    self.kick(gateway);
                }
                (Stage::Requesting { .. }, DHCPACK) => {
                    self.ip = Some(yiaddr);
                    self.stage = Stage::Resolving;
                    self.tries = 0;
                    self.kick(gateway);
                }
                (Stage::Requesting { .. }, DHCPNAK) => {
                    self.stage = Stage::Discovering;
                    self.tries = 0;
                    self.kick(gateway);
                }
                _ => {}
            }
            return false;
        }
        if self.stage == Stage::Pinging && icmp_echo_reply(f).is_some_and(|(id, _, _)| id == 0x5753)
        {
            self.stage = Stage::Done;
            return false;
        }
        if let Some(ip) = self.ip {
            if let Some(reply) = wire::echo_reply_to(f, self.mac, ip) {
                self.send(&reply);
                return true;
            }
        }
        false
    }
}

/// Runs the swarm until every guest has pinged the gateway or the timeout passes.
pub fn run(args: &SwarmArgs) -> io::Result<SwarmReport> {
    let (addr, host, path) = crate::guest::parse_ws_url(&args.url)?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut guests: HashMap<usize, Guest> = HashMap::new();
    let mut next = 0usize;
    let mut report = SwarmReport {
        guests: args.guests,
        ..Default::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    let mut buf = vec![0u8; 256 * 1024];
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    let mut macs = std::collections::HashSet::new();
    loop {
        // Open connections up to the concurrency limit (guests past their lease do not count).
        // Every broadcast a guest sends (DHCPDISCOVER, ARP) reaches all others: keep the number
        // of guests between connecting and their answered ping bounded.
        let active = guests.values().filter(|g| g.stage != Stage::Done).count();
        for _ in active..args.concurrency {
            if next >= args.guests {
                break;
            }
            let mut stream = TcpStream::connect(addr)?;
            poll.registry().register(
                &mut stream,
                Token(next),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key =
                base64::engine::general_purpose::STANDARD.encode(seed.to_be_bytes().repeat(2));
            let g = Guest {
                stream,
                stage: Stage::Connecting,
                mac: random_mac(&mut seed, &mut macs),
                xid: (seed >> 32) as u32,
                ip: None,
                gateway_mac: None,
                session: Session::new(70_000, false),
                assembly: Vec::new(),
                inbox: Vec::new(),
                outbox: Vec::new(),
                key,
                last_sent: Instant::now(),
                tries: 0,
            };
            guests.insert(next, g);
            next += 1;
        }
        let done = guests.values().filter(|g| g.stage == Stage::Done).count();
        if (done == args.guests) || Instant::now() >= deadline {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let Some(g) = guests.get_mut(&ev.token().0) else {
                continue;
            };
            if g.stage == Stage::Connecting && ev.is_writable() {
                if g.stream.peer_addr().is_err() {
                    continue;
                }
                let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n", g.key);
                g.outbox.extend_from_slice(request.as_bytes());
                g.stage = Stage::Upgrading;
            }
            if ev.is_readable() {
                loop {
                    match g.stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => g.inbox.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
        }
        // Process input and timers for every guest with something to do.
        for g in guests.values_mut() {
            if g.stage == Stage::Upgrading {
                if let Some(end) = g.inbox.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&g.inbox[..end]).into_owned();
                    if !head.starts_with("HTTP/1.1 101")
                        || !head.contains(&handshake::accept_key(g.key.as_bytes()))
                    {
                        return Err(io::Error::other(format!(
                            "relay refused an upgrade: {}",
                            head.lines().next().unwrap_or("")
                        )));
                    }
                    g.inbox.drain(..end + 4);
                    report.upgraded += 1;
                    g.stage = Stage::Discovering;
                    g.kick(args.gateway);
                }
            }
            if !matches!(g.stage, Stage::Connecting | Stage::Upgrading) && !g.inbox.is_empty() {
                let mut data = std::mem::take(&mut g.inbox);
                let mut pos = 0;
                loop {
                    let frame_range = match g.session.next(&mut data, &mut pos) {
                        Ok(Some(Event::Message(r))) => Some(r),
                        Ok(Some(Event::Piece { range, first })) => {
                            if first {
                                g.assembly.clear();
                            }
                            g.assembly.extend_from_slice(&data[range]);
                            None
                        }
                        Ok(Some(Event::Assembled)) => {
                            let whole = std::mem::take(&mut g.assembly);
                            if g.on_frame(&whole, args.gateway) {
                                report.echoes_answered += 1;
                            }
                            None
                        }
                        Ok(Some(Event::Ping)) => {
                            let pong = crate::guest::client_frame(
                                frame::OP_PONG,
                                g.session.control_payload(),
                            );
                            g.outbox.extend_from_slice(&pong);
                            None
                        }
                        Ok(Some(_)) => None,
                        Ok(None) | Err(_) => break,
                    };
                    // Frames are handled where they lie: a swarm reads millions of broadcasts.
                    if let Some(r) = frame_range {
                        if g.on_frame(&data[r], args.gateway) {
                            report.echoes_answered += 1;
                        }
                    }
                }
                data.clear();
                g.inbox = data;
            }
            let waiting = matches!(
                g.stage,
                Stage::Discovering | Stage::Requesting { .. } | Stage::Resolving | Stage::Pinging
            );
            // Retransmit with exponential back-off (2, 4, 8, 16 s), as DHCP clients do (RFC 2131 §4.1).
            let backoff = Duration::from_secs(2u64 << g.tries.saturating_sub(1).min(3));
            if waiting && g.last_sent.elapsed() >= backoff {
                report.retransmits += 1;
                g.kick(args.gateway);
            }
            if !g.outbox.is_empty() {
                match g.stream.write(&g.outbox) {
                    Ok(n) => {
                        g.outbox.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {}
                }
            }
        }
    }
    report.leased = guests.values().filter(|g| g.ip.is_some()).count();
    report.pinged = guests.values().filter(|g| g.stage == Stage::Done).count();
    report.elapsed = start.elapsed().as_secs_f64();
    Ok(report)
}

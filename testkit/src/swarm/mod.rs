//! `tapwire-swarm`: one process playing many synthetic guests, each on its own WebSocket.
//!
//! Every guest connects, upgrades, takes a DHCP lease (DISCOVER/OFFER/REQUEST/ACK with
//! retransmits) or a static address, resolves the gateway with ARP, pings it once, and from
//! then on answers ARP requests and ICMP echoes for its address. With `--udp-to`, once every
//! guest has pinged, each sends UDP at a given rate (or as fast as the relay takes it) for a
//! bounded time; every datagram carries a timestamp, and replies from a UDP echo server give
//! round-trip times. One thread, one `mio` poll over all sockets: 10 000 guests fit in one
//! process. Test and benchmark tooling.

mod guest;
mod pacer;

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::ws::{check_upgrade_response, parse_ws_url, upgrade_request, Decoder};
use guest::{process_input, Guest, Stage, UdpStats};
use pacer::{Pacer, PACER};

/// Options of `tapwire-swarm`.
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
    /// Skip DHCP: guest i takes this address plus i (it must be on the gateway's subnet) and
    /// the MAC [`static_mac`]`(i)`; [`reservations`] gives the relay's `--reserve` list.
    #[arg(long)]
    pub static_from: Option<Ipv4Addr>,
    /// With --static-from, this swarm's guests are guests N, N+1, … (their MACs and
    /// addresses), so that several swarms can share one segment.
    #[arg(long, default_value_t = 0)]
    pub first_guest: u32,
    /// Once every guest has pinged, each sends UDP datagrams to this IP:PORT (via the gateway's
    /// MAC) for --udp-seconds. Payload: "TWSW", guest number, sequence, send time in ns.
    #[arg(long)]
    pub udp_to: Option<std::net::SocketAddrV4>,
    /// UDP frames per second per guest; 0 sends as fast as the relay takes them.
    #[arg(long, default_value_t = 10)]
    pub udp_pps: u64,
    /// Ethernet frame size of each UDP frame, 62 to 1514 bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(62..=1514))]
    pub udp_size: u16,
    /// How long the UDP phase lasts (replies are collected for one more second).
    #[arg(long, default_value_t = 5.0)]
    pub udp_seconds: f64,
    /// Every K-th datagram of a guest goes to the broadcast address (MAC ff:ff:ff:ff:ff:ff,
    /// IP 255.255.255.255, the same port) instead, for the relay to flood to every other
    /// guest; 0: none.
    #[arg(long, default_value_t = 0)]
    pub udp_broadcast_every: u64,
}

/// What became of the guests.
#[derive(Debug, Default)]
pub struct SwarmReport {
    pub guests: usize,
    pub upgraded: usize,
    /// Guests that took a DHCP lease (none with `--static-from`).
    pub leased: usize,
    pub pinged: usize,
    /// Seconds from start until every guest that pinged had done so.
    pub elapsed: f64,
    /// Echo requests from others this swarm answered.
    pub echoes_answered: u64,
    /// Retransmissions (DHCP, ARP or echo sent again after a timeout).
    pub retransmits: u64,
    /// UDP phase: datagrams written to the relay, and how long the phase took.
    pub udp_sent: u64,
    pub udp_seconds: f64,
    /// UDP datagrams that reached a guest (any source), and those that were our own
    /// datagrams echoed back.
    pub udp_received: u64,
    pub udp_echoes: u64,
    /// Of `udp_sent`, the broadcasts (`--udp-broadcast-every`), and the copies of other
    /// guests' broadcasts that reached a guest (each broadcast should reach every other).
    pub udp_broadcasts_sent: u64,
    pub udp_broadcasts_received: u64,
    /// Round-trip times of echoed datagrams in µs, sorted (at most [`MAX_RTT_SAMPLES`]).
    pub rtt_us: Vec<u32>,
    /// Datagrams a paced guest fell behind its schedule (its unsent data had reached
    /// [`OUTBOX_CAP`]): the relay did not take them as fast as asked.
    pub udp_behind: u64,
    /// Times a guest's socket write would have blocked: the relay was pushing back.
    pub write_blocked: u64,
}

impl SwarmReport {
    /// The `p`-quantile (0..=1) of the round-trip times, in µs.
    pub fn rtt_percentile(&self, p: f64) -> Option<u32> {
        let i = ((self.rtt_us.len().checked_sub(1)?) as f64 * p).round() as usize;
        self.rtt_us.get(i).copied()
    }
}

/// Unsent bytes a guest may hold before it stops generating datagrams.
pub const OUTBOX_CAP: usize = 64 * 1024;
/// Round-trip samples kept.
pub const MAX_RTT_SAMPLES: usize = 4_000_000;
/// Marks the swarm's own UDP payloads.
const UDP_MAGIC: [u8; 4] = *b"TWSW";
/// Source port of the swarm's datagrams.
const UDP_SOURCE_PORT: u16 = 40_000;

/// A random, locally administered MAC (prefix 02:53). Random, as v86's are: dnsmasq picks a
/// guest's address from a hash of its MAC and does not reserve open offers, so sequential MACs
/// The MAC of guest `i` with --static-from: 02:53:5f and `i` in the low 24 bits.
pub fn static_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0x53, 0x5F, b[1], b[2], b[3]]
}

/// `--reserve` pairs for `guests` guests with --static-from `base` (comma-separated).
pub fn reservations(base: Ipv4Addr, guests: u32) -> String {
    (0..guests)
        .map(|i| {
            let m = static_mac(i);
            let ip = Ipv4Addr::from(u32::from(base) + i);
            format!("{}={ip}", crate::packet::format_mac(m))
        })
        .collect::<Vec<_>>()
        .join(",")
}

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

/// Runs the swarm until every guest has pinged the gateway (and the UDP phase, if asked for,
/// is over) or the timeout passes.
pub fn run(args: &SwarmArgs) -> io::Result<SwarmReport> {
    let (addr, host, path) = parse_ws_url(&args.url)?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut guests: Vec<Guest> = Vec::with_capacity(args.guests);
    let mut report = SwarmReport {
        guests: args.guests,
        ..Default::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    let mut buf = vec![0u8; 256 * 1024];
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    let mut macs = std::collections::HashSet::new();
    let mut udp = UdpStats {
        epoch: start,
        rtt_us: Vec::new(),
        echoes: 0,
    };
    // The UDP phase: when it started, and when every guest had pinged.
    let mut udp_start: Option<Instant> = None;
    let mut all_pinged_at: Option<f64> = None;
    // Datagrams per paced guest owed at the last generation (before phases).
    let mut last_owed = 0f64;
    let udp_len = Duration::from_secs_f64(args.udp_seconds.max(0.0));
    // Done guests are not revisited until the UDP phase: `active` holds the others.
    let mut active: Vec<usize> = Vec::new();
    // Paced UDP is generated on a 100 µs timer, running only while guests send: epoll's
    // millisecond timeout alone would send each millisecond's datagrams in one clump, a
    // burstier load than guests make.
    let mut pacer: Option<Pacer> = None;
    let mut done = 0usize;
    loop {
        // Open connections up to the concurrency limit (guests past their ping do not count).
        // Every broadcast a guest sends (DHCPDISCOVER, ARP) reaches all others: keep the number
        // of guests between connecting and their answered ping bounded.
        while active.len() < args.concurrency && guests.len() < args.guests {
            let index = guests.len();
            let mut stream = TcpStream::connect(addr)?;
            // Without Nagle, as browsers and Node's `ws` open WebSockets: with it, a guest's
            // small frames wait for the relay's delayed ACK and reach it in bursts.
            stream.set_nodelay(true)?;
            poll.registry().register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key =
                base64::engine::general_purpose::STANDARD.encode(seed.to_be_bytes().repeat(2));
            guests.push(Guest {
                // Lossless: --guests is far below 2^32.
                index: index as u32,
                stream,
                stage: Stage::Connecting,
                mac: match args.static_from {
                    Some(_) => static_mac(args.first_guest + index as u32),
                    None => random_mac(&mut seed, &mut macs),
                },
                xid: (seed >> 32) as u32,
                ip: None,
                gateway_mac: None,
                decoder: Decoder::default(),
                inbox: Vec::new(),
                outbox: Vec::new(),
                out_pos: 0,
                blocked: false,
                key,
                last_sent: Instant::now(),
                tries: 0,
                udp_template: Vec::new(),
                udp_broadcast_template: Vec::new(),
                udp_size: 0,
                udp_generated: 0,
                udp_received: 0,
                udp_broadcasts_received: 0,
            });
            active.push(index);
        }
        let now = Instant::now();
        if done == args.guests && all_pinged_at.is_none() {
            all_pinged_at = Some(start.elapsed().as_secs_f64());
            if let Some(to) = args.udp_to {
                for g in guests.iter_mut() {
                    g.start_udp(to, usize::from(args.udp_size), args.udp_broadcast_every > 0);
                }
                active = (0..guests.len()).collect();
                udp_start = Some(now);
                if args.udp_pps > 0 {
                    pacer = Some(Pacer::new(&poll, Duration::from_micros(100))?);
                }
            }
        }
        let finished = match (args.udp_to, udp_start) {
            (None, _) => done == args.guests,
            (Some(_), Some(t)) => now >= t + udp_len + Duration::from_secs(1),
            (Some(_), None) => false,
        };
        if finished || now >= deadline {
            break;
        }
        let sending = udp_start.is_some_and(|t| now < t + udp_len);
        if !sending {
            // Closing the timer takes it out of the poll.
            pacer = None;
        }
        let timeout = if udp_start.is_some() { 1 } else { 100 };
        poll.poll(&mut events, Some(Duration::from_millis(timeout)))?;
        for ev in events.iter() {
            if ev.token() == PACER {
                if let Some(p) = &pacer {
                    p.clear();
                }
                continue;
            }
            let Some(g) = guests.get_mut(ev.token().0) else {
                continue;
            };
            if ev.is_writable() {
                g.blocked = false;
            }
            if g.stage == Stage::Connecting && ev.is_writable() {
                if g.stream.peer_addr().is_err() {
                    continue;
                }
                let request = upgrade_request(&path, &host, &g.key);
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
            // Done guests are not in `active` before the UDP phase: answer them here.
            if g.stage == Stage::Done && udp_start.is_none() {
                process_input(g, args.gateway, &mut udp, &mut report.echoes_answered);
                g.flush(&mut report.write_blocked);
            }
        }
        // Every paced guest owes floor(elapsed × pps + its phase) datagrams, phases spread
        // evenly over one interval so the guests do not send in bursts; flooding guests fill up.
        let udp_elapsed = match udp_start {
            Some(t) if sending => Some(t.elapsed().as_secs_f64() * args.udp_pps as f64),
            _ => None,
        };
        let guest_count = guests.len().max(1) as f64;
        if let Some(owed) = udp_elapsed {
            last_owed = owed;
        }
        // Process input and timers for every guest with something to do.
        let mut i = 0;
        while i < active.len() {
            let g = &mut guests[active[i]];
            if g.stage == Stage::Upgrading {
                if let Some(end) = g.inbox.windows(4).position(|w| w == b"\r\n\r\n") {
                    check_upgrade_response(&g.inbox[..end + 4], &g.key)?;
                    g.inbox.drain(..end + 4);
                    report.upgraded += 1;
                    if let Some(base) = args.static_from {
                        // Lossless: --guests is far below 2^32.
                        g.ip = Some(Ipv4Addr::from(u32::from(base) + args.first_guest + g.index));
                        g.stage = Stage::Resolving;
                    } else {
                        g.stage = Stage::Discovering;
                    }
                    g.kick(args.gateway);
                }
            }
            if !matches!(g.stage, Stage::Connecting | Stage::Upgrading) && !g.inbox.is_empty() {
                process_input(g, args.gateway, &mut udp, &mut report.echoes_answered);
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
            if let Some(owed) = udp_elapsed {
                let target = if args.udp_pps == 0 {
                    u64::MAX
                } else {
                    (owed + f64::from(g.index) / guest_count) as u64
                };
                if target > g.udp_generated {
                    g.generate_udp(
                        target,
                        start.elapsed().as_nanos() as u64,
                        args.udp_broadcast_every,
                    );
                }
            }
            g.flush(&mut report.write_blocked);
            if g.stage == Stage::Done && udp_start.is_none() {
                done += 1;
                active.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    // Only a DHCP ACK is a lease: with --static-from no guest leases.
    report.leased = match args.static_from {
        Some(_) => 0,
        None => guests.iter().filter(|g| g.ip.is_some()).count(),
    };
    report.pinged = guests.iter().filter(|g| g.stage == Stage::Done).count();
    report.elapsed = all_pinged_at.unwrap_or_else(|| start.elapsed().as_secs_f64());
    if let Some(t) = udp_start {
        report.udp_seconds = t.elapsed().as_secs_f64().min(udp_len.as_secs_f64());
        for g in &guests {
            // Generated minus what is still unwritten.
            let frame = g.udp_template.len().max(1) as u64;
            let unsent = ((g.outbox.len() - g.out_pos) as u64).div_ceil(frame);
            let written = g.udp_generated.saturating_sub(unsent);
            report.udp_sent += written;
            report.udp_broadcasts_sent +=
                written.checked_div(args.udp_broadcast_every).unwrap_or(0);
            report.udp_received += g.udp_received;
            report.udp_broadcasts_received += g.udp_broadcasts_received;
            if args.udp_pps > 0 {
                let phase = f64::from(g.index) / guests.len().max(1) as f64;
                let owed = (last_owed + phase) as u64;
                report.udp_behind += owed.saturating_sub(g.udp_generated);
            }
        }
    }
    report.udp_echoes = udp.echoes;
    report.rtt_us = udp.rtt_us;
    report.rtt_us.sort_unstable();
    Ok(report)
}

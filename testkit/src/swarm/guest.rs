//! One synthetic guest: its stages, its WebSocket stream, and the frames it answers.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::time::Instant;

use mio::net::TcpStream;
use tapwire::ws::frame;

use super::{MAX_RTT_SAMPLES, OUTBOX_CAP, UDP_MAGIC, UDP_SOURCE_PORT};
use crate::packet::{
    self, icmp_echo, icmp_echo_reply, udp_frame, DhcpKind, Mac, UDP_PAYLOAD_OFFSET,
};
use crate::ws::{client_frame, client_frame_zero_key, Decoder, Message};

/// Where a guest is on its way from connecting to its answered ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Connecting,
    Upgrading,
    Discovering,
    Requesting { offered: Ipv4Addr, server: Ipv4Addr },
    Resolving,
    Pinging,
    Done,
}

/// One guest of the swarm and the state of its stream.
pub(super) struct Guest {
    pub(super) index: u32,
    pub(super) stream: TcpStream,
    pub(super) stage: Stage,
    pub(super) mac: Mac,
    pub(super) xid: u32,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) gateway_mac: Option<Mac>,
    pub(super) decoder: Decoder,
    pub(super) inbox: Vec<u8>,
    pub(super) outbox: Vec<u8>,
    /// Bytes of `outbox` already written.
    pub(super) out_pos: usize,
    /// The last write would have blocked; cleared by the next writable event.
    pub(super) blocked: bool,
    pub(super) key: String,
    pub(super) last_sent: Instant,
    pub(super) tries: u32,
    /// UDP phase: one WebSocket frame (zero masking key, so the payload is plain and can be
    /// stamped in place) holding the guest's datagram, and how many were generated.
    pub(super) udp_template: Vec<u8>,
    /// The same datagram to the broadcast address, if the guest sends broadcasts.
    pub(super) udp_broadcast_template: Vec<u8>,
    /// Ethernet frame size in the template.
    pub(super) udp_size: usize,
    pub(super) udp_generated: u64,
    pub(super) udp_received: u64,
    pub(super) udp_broadcasts_received: u64,
}

impl Guest {
    pub(super) fn send(&mut self, eth: &[u8]) {
        self.outbox
            .extend_from_slice(&client_frame(frame::OP_BINARY, eth));
        self.last_sent = Instant::now();
    }

    /// Prepares the UDP phase (the guest has its address and the gateway's MAC).
    pub(super) fn start_udp(&mut self, to: std::net::SocketAddrV4, size: usize, broadcasts: bool) {
        let (Some(ip), Some(gw)) = (self.ip, self.gateway_mac) else {
            return;
        };
        let template = |dst_mac, dst_ip| {
            let mut f = udp_frame(
                dst_mac,
                self.mac,
                (ip, UDP_SOURCE_PORT),
                (dst_ip, to.port()),
                size,
            );
            f[UDP_PAYLOAD_OFFSET..UDP_PAYLOAD_OFFSET + 4].copy_from_slice(&UDP_MAGIC);
            f[UDP_PAYLOAD_OFFSET + 4..UDP_PAYLOAD_OFFSET + 8]
                .copy_from_slice(&self.index.to_be_bytes());
            client_frame_zero_key(frame::OP_BINARY, &f)
        };
        self.udp_template = template(gw, *to.ip());
        if broadcasts {
            // Same length as the unicast one: the outbox arithmetic relies on it.
            self.udp_broadcast_template = template([0xff; 6], Ipv4Addr::BROADCAST);
        }
        self.udp_size = size;
    }

    /// Appends UDP frames until `target` were generated or the outbox is full; each carries
    /// its sequence number and `stamp_ns`. Datagram number n (from 1) is a broadcast when
    /// `broadcast_every` divides n.
    pub(super) fn generate_udp(&mut self, target: u64, stamp_ns: u64, broadcast_every: u64) {
        if self.udp_template.is_empty() {
            return;
        }
        // Where the payload starts in the template: after the WebSocket and UDP headers.
        let header = self.udp_template.len() - self.udp_size;
        let payload = header + UDP_PAYLOAD_OFFSET;
        while self.udp_generated < target && self.outbox.len() - self.out_pos < OUTBOX_CAP {
            let at = self.outbox.len() + payload;
            let n = self.udp_generated + 1;
            if is_broadcast(n, broadcast_every) && !self.udp_broadcast_template.is_empty() {
                self.outbox.extend_from_slice(&self.udp_broadcast_template);
            } else {
                self.outbox.extend_from_slice(&self.udp_template);
            }
            // Lossless: a phase of more than 2^32 datagrams per guest would wrap, harmlessly.
            self.outbox[at + 8..at + 12]
                .copy_from_slice(&(self.udp_generated as u32).to_be_bytes());
            self.outbox[at + 12..at + 20].copy_from_slice(&stamp_ns.to_be_bytes());
            self.udp_generated += 1;
        }
    }

    /// Writes what the outbox holds until it is empty or the socket would block.
    pub(super) fn flush(&mut self, blocked_count: &mut u64) {
        while !self.blocked && self.out_pos < self.outbox.len() {
            match self.stream.write(&self.outbox[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    *blocked_count += 1;
                }
                Err(_) => break,
            }
        }
        if self.out_pos == self.outbox.len() {
            self.outbox.clear();
            self.out_pos = 0;
        } else if self.out_pos >= OUTBOX_CAP {
            self.outbox.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Advances after a timeout (retransmits) or a stage change.
    pub(super) fn kick(&mut self, gateway: Ipv4Addr) {
        match self.stage {
            Stage::Discovering => {
                let m = packet::dhcp_message(self.mac, self.xid, DhcpKind::Discover, None);
                self.send(&m);
            }
            Stage::Requesting { offered, server } => {
                let m = packet::dhcp_message(
                    self.mac,
                    self.xid,
                    DhcpKind::Request,
                    Some((offered, server)),
                );
                self.send(&m);
            }
            Stage::Resolving => {
                if let Some(ip) = self.ip {
                    let m = packet::arp(1, self.mac, ip, [0; 6], gateway);
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
    pub(super) fn on_frame(&mut self, f: &[u8], gateway: Ipv4Addr, udp: &mut UdpStats) -> bool {
        // Another guest's broadcast datagram (DHCP answers to the broadcast address go on).
        if let Some(payload) = packet::udp_payload_to(f, Ipv4Addr::BROADCAST) {
            if payload.len() >= 8 && payload[..4] == UDP_MAGIC {
                self.udp_broadcasts_received += 1;
                return false;
            }
        }
        if let Some(payload) = self.ip.and_then(|ip| packet::udp_payload_to(f, ip)) {
            self.udp_received += 1;
            if payload.len() >= 20
                && payload[..4] == UDP_MAGIC
                && payload[4..8] == self.index.to_be_bytes()
            {
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&payload[12..20]);
                let now = udp.epoch.elapsed().as_nanos() as u64;
                udp.echoes += 1;
                if udp.rtt_us.len() < MAX_RTT_SAMPLES {
                    // Lossless enough: an RTT above 71 minutes saturates.
                    let us = now.saturating_sub(u64::from_be_bytes(stamp)) / 1000;
                    udp.rtt_us.push(us.min(u64::from(u32::MAX)) as u32);
                }
            }
            return false;
        }
        if let Some((op, sender_mac, sender_ip, target)) = packet::parse_arp(f) {
            if op == 1 && Some(target) == self.ip {
                let ip = self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                let reply = packet::arp(2, self.mac, ip, sender_mac, sender_ip);
                self.send(&reply);
            } else if op == 2 && sender_ip == gateway && self.stage == Stage::Resolving {
                self.gateway_mac = Some(sender_mac);
                self.stage = Stage::Pinging;
                self.tries = 0;
                self.kick(gateway);
            }
            return false;
        }
        if let Some((kind, yiaddr, server)) = packet::dhcp_reply(f, self.xid) {
            match (self.stage, kind) {
                (Stage::Discovering, DhcpKind::Offer) => {
                    self.stage = Stage::Requesting {
                        offered: yiaddr,
                        server,
                    };
                    self.tries = 0;
                    self.kick(gateway);
                }
                (Stage::Requesting { .. }, DhcpKind::Ack) => {
                    self.ip = Some(yiaddr);
                    self.stage = Stage::Resolving;
                    self.tries = 0;
                    self.kick(gateway);
                }
                (Stage::Requesting { .. }, DhcpKind::Nak) => {
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
            if let Some(reply) = packet::echo_reply_to(f, self.mac, ip) {
                self.send(&reply);
                return true;
            }
        }
        false
    }
}

/// Round-trip bookkeeping of the UDP phase.
pub(super) struct UdpStats {
    pub(super) epoch: Instant,
    pub(super) rtt_us: Vec<u32>,
    pub(super) echoes: u64,
}

/// Handles the bytes a guest received since last time. Frames are handled where they lie:
/// a swarm reads millions of broadcasts.
pub(super) fn process_input(
    g: &mut Guest,
    gateway: Ipv4Addr,
    udp: &mut UdpStats,
    answered: &mut u64,
) {
    let mut data = std::mem::take(&mut g.inbox);
    let mut decoder = std::mem::take(&mut g.decoder);
    // A stream that breaks the protocol ends this guest's input here; it then never finishes
    // its stage, and the report shows it.
    let _ = decoder.feed(&mut data, |m| match m {
        Message::Frame(f) => {
            if g.on_frame(f, gateway, udp) {
                *answered += 1;
            }
        }
        Message::Ping(p) => g.outbox.extend_from_slice(&client_frame(frame::OP_PONG, p)),
        Message::Pong(_) | Message::Close(_) => {}
    });
    g.decoder = decoder;
    data.clear();
    g.inbox = data;
}

/// Whether datagram number `n` (from 1) of a guest is a broadcast.
pub(super) fn is_broadcast(n: u64, every: u64) -> bool {
    every > 0 && n % every == 0
}

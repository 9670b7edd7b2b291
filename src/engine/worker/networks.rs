//! Networks on a core: the network a client joins at its upgrade, the connections that wait
//! while the control thread makes their network, and the commands that add and remove
//! networks.
//!
//! A connection for a named network that is not up is parked: its upgrade is not answered
//! and whatever it sends meanwhile is kept (at most [`MAX_PARKED`] buffers), and the core
//! asks the control thread for the network once. When the network arrives (an `Add` command,
//! sent to every core before the name is published) the parked connections join it, get
//! their `101`, and their kept input is switched in order; when it cannot be made (a `Refuse`
//! command) or takes longer than [`NETWORK_WAIT_MS`], they get a `503`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::counters::DropReason;
use crate::networks::{self, Requested};
use crate::switch::{PortId, Switch};
use crate::ws::access;

use super::super::bufpool::BufId;
use super::super::client::Parked;
use super::super::loggate::{self, held_note};
use super::super::network::{ClientReport, CoreCmd, Mode, NetEvent, NetId, Network};
use super::super::tapq::TapQueue;
use super::{Worker, REFUSAL_FLUSH_MS};

/// Receive buffers a parked connection may fill before it is refused.
pub(super) const MAX_PARKED: usize = 16;
/// How long a connection waits for its network to be made.
pub(super) const NETWORK_WAIT_MS: u64 = 10_000;

/// One network on this core: its replica of the network's MAC table and this core's queue of
/// its TAP.
pub(super) struct NetLocal {
    pub net: Arc<Network>,
    pub switch: Switch,
    pub tap: TapQueue,
}

impl NetLocal {
    /// Whether this is network `id` (its slot may since hold another).
    pub fn is(&self, id: NetId) -> bool {
        self.net.id == id
    }
}

/// The connections this core parked, by the network they wait for.
#[derive(Default)]
pub(super) struct Waiting {
    by_name: HashMap<String, Vec<PortId>>,
}

impl Worker {
    /// The network slot `slot` on this core, if it serves one there.
    #[inline]
    pub(super) fn net_local(&mut self, slot: u16) -> Option<&mut NetLocal> {
        self.nets.get_mut(usize::from(slot))?.as_mut()
    }

    /// Joins the upgraded client of `port` to the network its request `target` names (with the
    /// token's network `token_network`, when tokens are required), or says to park it while
    /// that network is made, or refuses it.
    pub(super) fn join_network(
        &mut self,
        port: PortId,
        target: &str,
        token_network: Option<&str>,
    ) -> Joined {
        let requested = match networks::requested(target) {
            Ok(r) => r,
            Err(bad) => {
                return self.refuse_upgrade(
                    port,
                    target,
                    DropReason::BadNetworkPath,
                    bad.response(),
                );
            }
        };
        if let Some(token_network) = token_network {
            if !networks::token_allows(token_network, requested) {
                let response = access::Denied::TokenWrongNetwork.response();
                return self.refuse_upgrade(port, target, DropReason::TokenWrongNetwork, response);
            }
        }
        let name = match requested {
            Requested::Default => {
                self.shared
                    .default_net
                    .clients
                    .fetch_add(1, Ordering::AcqRel);
                self.attach(port, 0);
                return Joined::Now;
            }
            Requested::Named(name) => name,
        };
        if let Some(net) = self.shared.networks.join(name) {
            let slot = net.id.slot;
            if !self.net_local(slot).is_some_and(|l| l.is(net.id)) {
                // Published after every core was sent it: the command is in our queue.
                self.run_commands();
            }
            if self.net_local(slot).is_some_and(|l| l.is(net.id)) {
                if net
                    .limits
                    .max_clients
                    .is_some_and(|max| net.clients.load(Ordering::Acquire) > max)
                {
                    self.leave(&net);
                    let response = unavailable_response(name, "it has its most clients");
                    return self.refuse_upgrade(port, target, DropReason::NetworkFull, response);
                }
                self.attach(port, slot);
                self.apply_limits(port, &net);
                return Joined::Now;
            }
            self.leave(&net);
            log::warn!(
                "core {}: network {name} is up but this core was not given it; refusing the connection",
                self.id
            );
            let response = unavailable_response(name, "the network is not ready on this core");
            return self.refuse_upgrade(port, target, DropReason::NetworkFailed, response);
        }
        if self.cfg.networks == Mode::Declared {
            let response = unknown_response(name);
            return self.refuse_upgrade(port, target, DropReason::NetworkUnknown, response);
        }
        Joined::Wait(name.to_string())
    }

    /// Parks the client of `port` until network `name` is made, answering `response` then;
    /// asks the control thread for it unless this core already did.
    pub(super) fn park(&mut self, port: PortId, name: String, response: Vec<u8>) {
        let deadline_ms = self.time.now_ms + NETWORK_WAIT_MS;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        c.parked = Some(Box::new(Parked {
            response,
            input: Vec::new(),
            deadline_ms,
        }));
        let first = !self.waiting.by_name.contains_key(&name);
        self.waiting
            .by_name
            .entry(name.clone())
            .or_default()
            .push(port);
        if first {
            self.shared.tell_control(NetEvent::Wanted {
                name,
                core: self.id,
            });
        }
    }

    /// Counts the client of `port` as joined to network slot `slot` (already counted in the
    /// network's clients) and puts it on the slot's flood list.
    fn attach(&mut self, port: PortId, slot: u16) {
        self.clients.set_open(port, slot);
    }

    /// Gives the client of `port` the rates of `net`, where it has its own.
    fn apply_limits(&mut self, port: PortId, net: &Network) {
        let (rate, bpps) = (net.limits.client_rate, net.limits.client_broadcast_pps);
        if rate.is_none() && bpps.is_none() {
            return;
        }
        let now = self.time.now_ms;
        if let Some(c) = self.clients.get_mut(port) {
            c.conn.set_rates(rate, bpps, now);
        }
    }

    /// Undoes a count of [`Directory::join`] for a client that did not join after all.
    ///
    /// [`Directory::join`]: super::super::network::Directory::join
    fn leave(&self, net: &Network) {
        if net.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            net.idle_since_ms.store(self.time.now_ms, Ordering::Release);
        }
    }

    /// A client of network slot `slot` left it.
    pub(super) fn left(&mut self, slot: u16) {
        let now = self.time.now_ms;
        if let Some(l) = self.net_local(slot) {
            if l.net.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
                l.net.idle_since_ms.store(now, Ordering::Release);
            }
        }
    }

    /// Refuses an upgraded request with `response`, counting `reason`; logged once per kind
    /// per interval.
    pub(super) fn refuse_upgrade(
        &mut self,
        port: PortId,
        target: &str,
        reason: DropReason,
        response: String,
    ) -> Joined {
        self.counters.dropped(reason);
        if let Some(held) = self.shared.log_gate.admit(loggate::kind(reason)) {
            let from = super::FromAddr(self.clients.get_mut(port).and_then(|c| c.address()));
            log::info!(
                "core {}: refused a connection{from} on {}: {}{}",
                self.id,
                access::path_only(target),
                reason.label(),
                held_note(held)
            );
        }
        let now = self.time.now_ms;
        if let Some(c) = self.clients.get_mut(port) {
            c.conn.refuse(now, REFUSAL_FLUSH_MS);
        }
        self.enqueue_owned(port, response.into_bytes());
        Joined::Refused
    }

    /// Runs the control thread's commands.
    pub(super) fn run_commands(&mut self) {
        for cmd in self.shared.take_commands(self.id) {
            match cmd {
                CoreCmd::Add { net, tap } => self.add_network(net, tap),
                CoreCmd::Remove(id) => self.remove_network(id),
                CoreCmd::Refuse {
                    name,
                    reason,
                    response,
                } => {
                    for port in self.waiting.by_name.remove(&name).unwrap_or_default() {
                        self.refuse_parked(port, reason, &response);
                    }
                }
                CoreCmd::Unpark(name) => self.unpark_all(&name),
                CoreCmd::Report { net, reply } => {
                    let _ = reply.send(self.report(net));
                }
                CoreCmd::Close { id, reply } => {
                    let _ = reply.send(self.close_by_id(id));
                }
            }
        }
    }

    /// Starts serving `net` with `tap`, this core's queue of its TAP; connections parked for
    /// it join it.
    fn add_network(&mut self, net: Arc<Network>, tap: std::os::fd::OwnedFd) {
        let slot = usize::from(net.id.slot);
        if self.nets.len() <= slot {
            self.nets.resize_with(slot + 1, || None);
        }
        if let Some(old) = &self.nets[slot] {
            // The control thread reuses a slot only after every core removed its network.
            log::error!(
                "core {}: network {} given slot {slot} of network {}, which is still here; refusing it",
                self.id,
                net.name,
                old.net.name
            );
            return;
        }
        let mut local = NetLocal {
            switch: Switch::with_uplink(
                super::ms(self.cfg.clients.mac_ageing),
                net.uplink_macs.clone(),
            )
            .isolated(net.isolate)
            .roaming(net.roam),
            tap: TapQueue::new(
                tap,
                net.id.slot,
                self.features.multishot_tap_read,
                self.pool.tap_read_len(),
            ),
            net,
        };
        local.tap.arm_reads(&mut self.ring, &self.pool);
        let name = local.net.name.clone();
        let net = local.net.clone();
        self.nets[slot] = Some(local);
        for port in self.waiting.by_name.remove(&name).unwrap_or_default() {
            self.unpark(port, &net);
        }
    }

    /// The open clients of network `id` on this core, for the admin API.
    fn report(&mut self, id: NetId) -> Vec<ClientReport> {
        let (core, now) = (self.id, self.time.now_ms);
        let Some(local) = self.nets.get(usize::from(id.slot)).and_then(Option::as_ref) else {
            return Vec::new();
        };
        if !local.is(id) {
            return Vec::new();
        }
        let net = local.net.clone();
        let ports: Vec<PortId> = (0..self.clients.open_count(id.slot))
            .map(|i| self.clients.open_port(id.slot, i))
            .collect();
        let mut out = Vec::with_capacity(ports.len());
        for port in ports {
            let (macs, ips) = net.authority.with(|own| {
                let macs = own.macs_of(port).to_vec();
                let ips = macs
                    .iter()
                    .filter_map(|m| own.binding(*m, now))
                    .map(|b| std::net::Ipv4Addr::from(b.ip))
                    .collect::<Vec<_>>();
                (macs, ips)
            });
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            let remote = c.peer();
            let address = c.forwarded.or(remote.map(|a| a.ip().to_canonical()));
            out.push(ClientReport {
                id: port.0,
                core,
                network: net.name.clone(),
                macs,
                ips,
                remote,
                address,
                age_ms: now.saturating_sub(c.since_ms),
                rx_frames: c.rx_frames,
                rx_bytes: c.rx_bytes,
                tx_frames: c.tx_frames,
                tx_bytes: c.tx_bytes,
                queued: c.out.len(),
            });
        }
        out
    }

    /// Closes client `id` with 1001 (the operator's kick) if it is an open client of this
    /// core; whether it was.
    fn close_by_id(&mut self, id: u64) -> bool {
        let port = PortId(id);
        if port.core() != self.id {
            return false;
        }
        let Some(c) = self.clients.get_mut(port) else {
            return false;
        };
        if !c.conn.is_open() || c.parked.is_some() {
            return false;
        }
        if let Some(close) = c.conn.close_gracefully(1001) {
            log::info!(
                "core {}: client {}{}: closed by the admin API",
                self.id,
                port.slot(),
                super::FromAddr(c.address())
            );
            self.enqueue_owned(port, close);
            return true;
        }
        false
    }

    /// The network `name` was up already when this core asked for it: its parked connections
    /// join it as a new connection would.
    fn unpark_all(&mut self, name: &str) {
        let ports = self.waiting.by_name.remove(name).unwrap_or_default();
        if ports.is_empty() {
            return;
        }
        let Some(net) = self.shared.networks.get(name) else {
            // Removed since: ask again.
            for port in ports {
                if let Some(c) = self.clients.get_mut(port) {
                    if let Some(p) = c.parked.take() {
                        self.park_again(port, name, *p);
                    }
                }
            }
            return;
        };
        if !self.net_local(net.id.slot).is_some_and(|l| l.is(net.id)) {
            let response = unavailable_response(name, "the network is not ready on this core");
            for port in ports {
                self.refuse_parked(port, DropReason::NetworkFailed, &response);
            }
            return;
        }
        for port in ports {
            self.unpark(port, &net);
        }
    }

    /// Parks again a connection whose network went away before it could join.
    fn park_again(&mut self, port: PortId, name: &str, parked: Parked) {
        let deadline = parked.deadline_ms;
        let Parked {
            response, input, ..
        } = parked;
        self.park(port, name.to_string(), response);
        if let Some(p) = self.clients.get_mut(port).and_then(|c| c.parked.as_mut()) {
            p.input = input;
            p.deadline_ms = deadline;
        }
    }

    /// The parked client of `port` joins `net`: its `101` goes out and its input is switched.
    fn unpark(&mut self, port: PortId, net: &Network) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        let Some(parked) = c.parked.take() else {
            return;
        };
        if !c.conn.is_open() {
            // Closed while it waited: give back what it kept.
            for (buf, _, _) in parked.input {
                self.pool.release(buf);
            }
            return;
        }
        let count = net.clients.fetch_add(1, Ordering::AcqRel) + 1;
        if net.limits.max_clients.is_some_and(|max| count > max) {
            self.leave(net);
            for (buf, _, _) in parked.input {
                self.pool.release(buf);
            }
            let response = unavailable_response(&net.name, "it has its most clients");
            self.refuse_upgrade(port, "(parked)", DropReason::NetworkFull, response);
            return;
        }
        self.attach(port, net.id.slot);
        self.apply_limits(port, net);
        self.counters.connections_upgraded.inc();
        self.enqueue_owned(port, parked.response);
        for (buf, start, end) in parked.input {
            self.on_bytes_at(port, buf, start, end);
            self.pool.release(buf);
        }
    }

    /// Refuses the parked client of `port` with `response`.
    pub(super) fn refuse_parked(&mut self, port: PortId, reason: DropReason, response: &str) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        let Some(parked) = c.parked.take() else {
            return;
        };
        for (buf, _, _) in parked.input {
            self.pool.release(buf);
        }
        if c.conn.is_open() {
            self.refuse_upgrade(port, "(parked)", reason, response.to_string());
        }
    }

    /// Keeps `start..end` of buffer `buf` for the parked client of `port` (taking a
    /// reference); refuses it when it has sent too much.
    pub(super) fn keep_parked_input(&mut self, port: PortId, buf: BufId, start: usize, end: usize) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        let Some(parked) = c.parked.as_mut() else {
            return;
        };
        if parked.input.len() >= MAX_PARKED {
            let response =
                unavailable_response("", "too much input before the upgrade was answered");
            self.refuse_parked(port, DropReason::NetworkWaitInput, &response);
            return;
        }
        parked.input.push((buf, start, end));
        self.pool.retain(buf);
    }

    /// Stops serving network `id`: cancels its TAP reads; it is dropped once idle.
    fn remove_network(&mut self, id: NetId) {
        let Some(local) = self
            .nets
            .get_mut(usize::from(id.slot))
            .and_then(Option::as_mut)
            .filter(|l| l.is(id))
        else {
            // Never given (it was removed before this core saw it), or gone already.
            self.shared
                .tell_control(NetEvent::Removed { id, core: self.id });
            return;
        };
        local.tap.close(&mut self.ring);
        self.finish_removal(id.slot);
    }

    /// Drops network slot `slot` if it is being removed and nothing is in flight on its queue.
    pub(super) fn finish_removal(&mut self, slot: u16) {
        let Some(local) = self.net_local(slot) else {
            return;
        };
        if !local.tap.closing() || !local.tap.idle() {
            return;
        }
        let id = local.net.id;
        self.nets[usize::from(slot)] = None;
        self.shared
            .tell_control(NetEvent::Removed { id, core: self.id });
    }

    /// Refuses parked connections whose network did not come in time.
    pub(super) fn expire_parked(&mut self) {
        if self.waiting.by_name.is_empty() {
            return;
        }
        let now = self.time.now_ms;
        let mut expired = Vec::new();
        for (name, ports) in &mut self.waiting.by_name {
            ports.retain(|port| {
                let due = self
                    .clients
                    .get_mut(*port)
                    .and_then(|c| c.parked.as_ref())
                    .is_none_or(|p| p.deadline_ms <= now);
                if due {
                    expired.push((name.clone(), *port));
                }
                !due
            });
        }
        self.waiting.by_name.retain(|_, ports| !ports.is_empty());
        for (name, port) in expired {
            let response = unavailable_response(&name, "it was not made in time");
            self.refuse_parked(port, DropReason::NetworkFailed, &response);
        }
    }
}

/// What [`Worker::join_network`] did with a client.
pub(super) enum Joined {
    /// It joined its network: answer its upgrade.
    Now,
    /// Its network is being made: park it.
    Wait(String),
    /// It was refused (the response is queued).
    Refused,
}

/// The `503` for a connection whose network `name` cannot be had, and why.
pub fn unavailable_response(name: &str, why: &str) -> String {
    let body = if name.is_empty() {
        format!("tapwire: network unavailable: {why}\n")
    } else {
        format!("tapwire: network {name} unavailable: {why}\n")
    };
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The `403` for a network nobody declared (`--networks declared`).
fn unknown_response(name: &str) -> String {
    let body = format!(
        "tapwire: network {name} is not declared here (this relay runs with --networks declared)\n"
    );
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

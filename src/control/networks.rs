//! The networks other than the default one, on the host side: made when a core asks for one
//! (a connection to `/n/NAME`), removed when idle. Each has its own multi-queue TAP (one queue
//! per core, handed to the cores), its gateway address from the network pool (on the TAP, or
//! on a bridge around it when the network spans hosts: `overlay`), its elements in the
//! instance's nftables sets, and DHCP from the one dnsmasq (whose ranges for every block were
//! declared at its start). Everything is ledgered before it is made.
//!
//! Requests that arrive together are made together: a burst of connections to new networks
//! costs one pass, and no core ever waits for the host side (its connections do).

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::ledger::Change;
use super::{firewall, Host};
use crate::config::{
    network_tap_name, Config, Declared, HostAccess, NetLimits, Reservation, Subnet,
};
use crate::counters::DropReason;
use crate::engine::network::{CoreCmd, NetEvent, NetId, Network};
use crate::engine::{unavailable_response, Shared};
use crate::networks::Pool;

mod host_side;
mod overlay;
mod routes;
pub(super) use overlay::SpanHost;
pub(in crate::control) use routes::routed_subnets;

/// What of `made` was undone: all but `left`.
fn undone(made: &[Change], left: &[Change]) -> Vec<Change> {
    made.iter().filter(|c| !left.contains(c)).cloned().collect()
}

/// Records `change` in the ledger and in `made` (what one network changed), before it is
/// made.
fn record(host: &mut Host, made: &mut Vec<Change>, change: Change) -> Result<(), String> {
    host.record(change.clone()).map_err(|e| e.to_string())?;
    made.push(change);
    Ok(())
}

/// How often idle networks are looked for.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What a network is made with.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    subnet: Subnet,
    nat: bool,
    isolate: bool,
    host: HostAccess,
    limits: NetLimits,
    reservations: Vec<Reservation>,
    /// Its DHCP range.
    dhcp_range: (std::net::Ipv4Addr, std::net::Ipv4Addr),
    /// Declared in the config file: made at start-up, never removed while the relay runs.
    declared: bool,
    /// Its VXLAN network identifier and peer hosts, when it spans.
    span: Option<(u32, Vec<std::net::Ipv4Addr>)>,
}

impl Plan {
    fn rules<'a>(&'a self, tap: &'a str) -> firewall::NetworkRules<'a> {
        firewall::NetworkRules {
            tap,
            subnet: &self.subnet,
            isolate: self.isolate,
            nat: self.nat,
            host: &self.host,
        }
    }
}

/// A network that is up.
struct Up {
    net: Arc<Network>,
    plan: Plan,
    /// Its interface with the gateway's address (what dnsmasq and the nftables rules see):
    /// its TAP, or its bridge when it spans.
    iface: String,
    /// What was ledgered for it, forgotten once it is removed.
    changes: Vec<Change>,
    /// Its bridge and VXLAN device, when it spans.
    overlay: Option<overlay::Overlay>,
}

/// A network whose host side is made but for its rules, not yet published.
struct Prepared {
    up: Up,
    /// Each core's queue of its TAP.
    queues: Vec<OwnedFd>,
}

/// A network being removed: the cores that have not yet closed its queue.
struct Removing {
    up: Up,
    cores_left: usize,
}

/// Slots of networks (1 and up; 0 is the default network) and their generations.
#[derive(Default)]
struct Slots {
    generations: Vec<u16>,
    free: Vec<u16>,
}

impl Slots {
    fn take(&mut self) -> NetId {
        if let Some(slot) = self.free.pop() {
            let g = &mut self.generations[usize::from(slot)];
            *g = g.wrapping_add(1);
            return NetId {
                slot,
                generation: *g,
            };
        }
        if self.generations.is_empty() {
            self.generations.push(0);
        }
        self.generations.push(1);
        NetId {
            // Lossless: at most --max-networks (≤ 4096) slots exist.
            slot: (self.generations.len() - 1) as u16,
            generation: 1,
        }
    }

    fn give_back(&mut self, id: NetId) {
        // Lowest first, so that TAP names stay short and reused.
        self.free.push(id.slot);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }
}

/// The networks of one instance, on the control thread.
pub(super) struct Networks {
    shared: Arc<Shared>,
    handle: rtnetlink::Handle,
    table: Option<Arc<Mutex<firewall::Installed>>>,
    tap: String,
    cores: usize,
    /// `--offload`: every network's TAP with the instance's offloads, handing over at most
    /// this many segments at once.
    offload: Option<u32>,
    mtu: u32,
    max: usize,
    idle_ms: u64,
    nat: bool,
    /// On-demand networks follow the instance's `--isolate` and `--allow-host-port`.
    isolate: bool,
    host: HostAccess,
    max_macs: usize,
    pool: Pool,
    slots: Slots,
    up: HashMap<String, Up>,
    removing: HashMap<NetId, Removing>,
    /// Names wanted while their network was being removed: made again once it is gone.
    wanted_again: HashSet<String>,
    /// Said once that leases cannot be released.
    warned_no_release: bool,
    /// This host's slice of a farm's DHCP ranges, and their lease time, when it has one and
    /// DHCP runs (for guests that roam here from another host).
    roaming: Option<(crate::config::Slice, std::time::Duration)>,
    /// Spanning: the options, and this host's end of the tunnels once started.
    span_cfg: Option<crate::config::Span>,
    span: Option<SpanHost>,
}

impl Networks {
    pub(super) fn new(
        cfg: &Config,
        shared: Arc<Shared>,
        handle: rtnetlink::Handle,
        table: Option<Arc<Mutex<firewall::Installed>>>,
    ) -> Self {
        Networks {
            shared,
            handle,
            table,
            tap: cfg.tap.to_string(),
            cores: cfg.cores,
            offload: cfg
                .offload
                .then(|| crate::offload::max_segments(cfg.max_frame)),
            mtu: cfg.mtu,
            max: cfg.networks.max_networks,
            idle_ms: u64::try_from(cfg.networks.idle.as_millis()).unwrap_or(u64::MAX),
            nat: cfg.nat.is_some(),
            isolate: cfg.isolate,
            host: cfg.host_access.clone(),
            max_macs: cfg.clients.max_macs_per_client,
            pool: cfg.networks.pool.clone(),
            slots: Slots::default(),
            up: HashMap::new(),
            removing: HashMap::new(),
            wanted_again: HashSet::new(),
            warned_no_release: false,
            roaming: cfg.farm.slice.zip(cfg.host.dhcp().map(|d| d.lease_time)),
            span_cfg: cfg.span.clone(),
            span: None,
        }
    }

    /// Handles `first` and every event that came with it.
    pub(super) async fn on_events(
        &mut self,
        first: NetEvent,
        events: &mut UnboundedReceiver<NetEvent>,
        host: &mut Host,
    ) {
        let mut wanted: Vec<String> = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next.take().or_else(|| events.try_recv().ok()) {
            match event {
                NetEvent::Wanted { name, core } => {
                    if self.up.contains_key(&name) {
                        self.shared.command(core, CoreCmd::Unpark(name));
                    } else if self.removing.values().any(|r| r.up.net.name == name) {
                        self.wanted_again.insert(name);
                    } else if !wanted.contains(&name) {
                        wanted.push(name);
                    }
                }
                NetEvent::Removed { id, core: _ } => self.on_removed(id, host, &mut wanted).await,
            }
        }
        self.make_all(wanted, host).await;
    }

    /// Makes the networks `names`, publishes those that were made, refuses the others. Their
    /// host sides are made one by one, then their rules in one nft transaction.
    async fn make_all(&mut self, names: Vec<String>, host: &mut Host) {
        let mut batch = Vec::new();
        for name in names {
            if self.up.len() + self.removing.len() + batch.len() >= self.max {
                self.refuse(
                    &name,
                    DropReason::TooManyNetworks,
                    &format!(
                        "this relay has its most networks up (--max-networks {})",
                        self.max
                    ),
                );
                continue;
            }
            let elsewhere = routed_subnets();
            let Some(subnet) = self.pool.take_for(&name, &elsewhere) else {
                let why = "no block of --network-pool is free (other interfaces of the host use the rest)";
                log::warn!("network {name}: cannot make it: {why}");
                self.refuse(&name, DropReason::NetworkFailed, why);
                continue;
            };
            let span = self.span_plan(&name, &subnet);
            if let Err(why) = span {
                self.pool.give_back(&subnet);
                log::warn!("network {name}: cannot make it: {why}");
                self.refuse(&name, DropReason::NetworkFailed, &why);
                continue;
            }
            let plan = Plan {
                name: name.clone(),
                subnet,
                nat: self.nat,
                isolate: self.isolate,
                host: self.host.clone(),
                limits: NetLimits::default(),
                reservations: Vec::new(),
                dhcp_range: crate::config::default_range(&subnet),
                declared: false,
                span: span.unwrap_or(None),
            };
            match self.prepare(plan, host).await {
                Ok(p) => batch.push(p),
                Err((plan, why)) => {
                    self.pool.give_back(&plan.subnet);
                    log::warn!("network {name}: cannot make it: {why}");
                    self.refuse(&name, DropReason::NetworkFailed, &why);
                }
            }
        }
        if let Err(why) = self.add_rules(&batch).await {
            for p in batch {
                log::warn!("network {}: cannot make it: {why}", p.up.plan.name);
                self.refuse(&p.up.plan.name, DropReason::NetworkFailed, &why);
                self.discard(p, host).await;
            }
            return;
        }
        for p in batch {
            self.publish(p);
        }
    }

    /// Makes every network of the config file (at start-up, in order: slots 1, 2, …); an error
    /// stops the start.
    pub(super) async fn make_declared(
        &mut self,
        declared: &[Declared],
        host: &mut Host,
    ) -> Result<(), String> {
        let mut batch = Vec::new();
        for d in declared {
            let plan = Plan {
                name: d.name.clone(),
                subnet: d.subnet,
                nat: d.nat,
                isolate: d.isolate,
                host: d.host.clone(),
                limits: d.limits,
                reservations: d.reservations.clone(),
                dhcp_range: d.dhcp_range,
                declared: true,
                span: self
                    .span_cfg
                    .as_ref()
                    .and_then(|s| s.peers_of(&d.span))
                    .map(|peers| (crate::config::vni_of(d), peers)),
            };
            match self.prepare(plan, host).await {
                Ok(p) => batch.push(p),
                Err((plan, e)) => {
                    for p in batch {
                        self.discard(p, host).await;
                    }
                    return Err(format!("network {}: cannot make it: {e}", plan.name));
                }
            }
        }
        if let Err(e) = self.add_rules(&batch).await {
            for p in batch {
                self.discard(p, host).await;
            }
            return Err(format!("the declared networks' nftables rules: {e}"));
        }
        for p in batch {
            self.publish(p);
        }
        Ok(())
    }

    /// Makes the host side of `plan` but its rules: a slot, its TAP with one queue per core,
    /// its address, up. What could not be made is undone, and `plan` comes back with why.
    async fn prepare(&mut self, plan: Plan, host: &mut Host) -> Result<Prepared, (Plan, String)> {
        let id = self.slots.take();
        let tap = network_tap_name(&self.tap, id.slot);
        let mut made = Vec::new();
        match self.make_host_side(&plan, id, &tap, host, &mut made).await {
            Ok((net, queues, overlay)) => Ok(Prepared {
                up: Up {
                    net,
                    plan,
                    iface: tap,
                    changes: made,
                    overlay,
                },
                queues,
            }),
            Err(e) => {
                // The queues are closed (the TAP and its address go with them), the links
                // that outlive the process are deleted; what was recorded is forgotten.
                let left = self.remove_overlay(&plan.name, &made).await;
                host.forget(&undone(&made, &left));
                self.slots.give_back(id);
                Err((plan, e))
            }
        }
    }

    /// Puts the elements of every network of `batch` in the table, in one nft transaction.
    async fn add_rules(&mut self, batch: &[Prepared]) -> Result<(), String> {
        let Some(table) = self.table.clone() else {
            return Ok(());
        };
        if batch.is_empty() {
            return Ok(());
        }
        let plans: Vec<(Plan, String)> = batch
            .iter()
            .map(|p| (p.up.plan.clone(), p.up.iface.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
            let rules: Vec<firewall::NetworkRules<'_>> =
                plans.iter().map(|(plan, tap)| plan.rules(tap)).collect();
            t.add_networks(&rules)
        })
        .await
        .map_err(|e| format!("the nftables change stopped unexpectedly: {e}"))?
    }

    /// Undoes a prepared network that will not be published.
    async fn discard(&mut self, p: Prepared, host: &mut Host) {
        drop(p.queues);
        let left = self.remove_overlay(&p.up.plan.name, &p.up.changes).await;
        host.forget(&undone(&p.up.changes, &left));
        if !p.up.plan.declared {
            self.pool.give_back(&p.up.plan.subnet);
        }
        self.slots.give_back(p.up.net.id);
    }

    /// Publishes a prepared network: every core is sent it with its queue of its TAP, then
    /// its name is published.
    fn publish(&mut self, p: Prepared) {
        let Prepared { up, queues } = p;
        for (core, queue) in queues.into_iter().enumerate() {
            self.shared.command(
                core,
                CoreCmd::Add {
                    net: up.net.clone(),
                    tap: queue,
                },
            );
        }
        // After every core was sent it: a core that finds the name has the command waiting.
        self.shared.networks.insert(up.net.clone());
        log::info!(
            "network {}: {}, subnet {} on {} {} (gateway {}){}",
            up.plan.name,
            if up.plan.declared { "declared" } else { "made" },
            up.plan.subnet,
            if up.overlay.is_some() {
                "bridge"
            } else {
                "TAP"
            },
            up.iface,
            up.plan.subnet.gateway(),
            up.overlay
                .as_ref()
                .map_or(String::new(), |o| format!(", spanning: {}", o.describe()))
        );
        self.up.insert(up.plan.name.clone(), up);
    }

    /// Tells every core to refuse the connections waiting for `name`.
    fn refuse(&self, name: &str, reason: DropReason, why: &str) {
        let response = unavailable_response(name, why);
        for core in 0..self.cores {
            self.shared.command(
                core,
                CoreCmd::Refuse {
                    name: name.to_string(),
                    reason,
                    response: response.clone(),
                },
            );
        }
    }

    /// Starts removing every network idle for `--network-idle`: its DHCP leases are released
    /// (while its TAP still exists), then every core is told to close its queue.
    pub(super) async fn remove_idle(&mut self) {
        let now = self.shared.clock.now_ms();
        let Some(before) = now.checked_sub(self.idle_ms) else {
            return;
        };
        let idle: Vec<String> = self
            .up
            .iter()
            .filter(|(_, u)| {
                !u.plan.declared
                    && u.net.clients.load(Ordering::Acquire) == 0
                    && u.net.idle_since_ms.load(Ordering::Acquire) <= before
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            // Taken out under the directory's lock only if still idle: no client joins it
            // after this.
            if self.shared.networks.remove_idle(&name, before).is_none() {
                continue;
            }
            let Some(up) = self.up.remove(&name) else {
                continue;
            };
            log::info!(
                "network {name}: idle for {:?}, removing it",
                Duration::from_millis(self.idle_ms)
            );
            self.release_leases(&up).await;
            let id = up.net.id;
            for core in 0..self.cores {
                self.shared.command(core, CoreCmd::Remove(id));
            }
            self.removing.insert(
                id,
                Removing {
                    up,
                    cores_left: self.cores,
                },
            );
        }
    }

    /// Core `core` closed its queue of network `id`; once every core did, the rest of its host
    /// side goes. A name wanted meanwhile goes into `wanted` to be made again.
    async fn on_removed(&mut self, id: NetId, host: &mut Host, wanted: &mut Vec<String>) {
        let Some(r) = self.removing.get_mut(&id) else {
            return;
        };
        r.cores_left -= 1;
        if r.cores_left > 0 {
            return;
        }
        let Some(Removing { up, .. }) = self.removing.remove(&id) else {
            return;
        };
        // Every queue is closed: the TAP is gone, and its address and routes with it (a
        // spanning network's address is on its bridge, which goes below).
        if let Some(table) = self.table.clone() {
            let (plan, tap) = (up.plan.clone(), up.iface.clone());
            let removed = tokio::task::spawn_blocking(move || {
                let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                t.remove_network(&plan.rules(&tap))
            })
            .await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!(
                    "network {}: cannot take its nftables elements out: {e}",
                    up.net.name
                ),
                Err(e) => log::warn!(
                    "network {}: the nftables change stopped unexpectedly: {e}",
                    up.net.name
                ),
            }
        }
        let left = self.remove_overlay(&up.net.name, &up.changes).await;
        host.forget(&undone(&up.changes, &left));
        self.pool.give_back(&up.plan.subnet);
        self.slots.give_back(id);
        log::info!("network {}: removed", up.net.name);
        if self.wanted_again.remove(&up.net.name) && !wanted.contains(&up.net.name) {
            wanted.push(up.net.name.clone());
        }
    }
}

/// The start-up line about networks besides the default one.
pub(super) fn start_line(cfg: &Config) -> String {
    let n = &cfg.networks;
    if n.max_networks == 0 {
        return "networks: only the default one (--max-networks 0, or --attach-bridge)".into();
    }
    let blocks = n.pool.reachable();
    let prefix = blocks.first().map_or(0, |b| b.prefix);
    match n.mode {
        crate::config::NetworksMode::OnDemand => format!(
            "networks: ws://{}/n/NAME makes network NAME on its first connection: up to {}, each a /{prefix} of {} with its own TAP ({}n<slot>), removed {:?} after their last client",
            cfg.listen, n.max_networks, cfg.networks.pool_cidr(), cfg.tap, n.idle
        ),
        crate::config::NetworksMode::Declared => {
            "networks: /n/NAME joins only declared networks (--networks declared); other names get 403".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_start_at_one_and_come_back_with_a_new_generation() {
        let mut s = Slots::default();
        let a = s.take();
        let b = s.take();
        assert_eq!((a.slot, a.generation, b.slot), (1, 1, 2));
        s.give_back(b);
        s.give_back(a);
        let again = s.take();
        assert_eq!(
            (again.slot, again.generation),
            (1, 2),
            "lowest first, next generation"
        );
        assert_eq!(s.take().slot, 2);
        assert_eq!(s.take().slot, 3);
    }
}

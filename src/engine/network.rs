//! Networks in the data plane: what the cores share about each network, how they find one by
//! name, and the messages between the cores and the control thread that makes and removes
//! networks.
//!
//! Contract: a network is isolated by construction. Each has its own MAC ownership authority,
//! and each core keeps, per network, its own switch replica and its own queue of the
//! network's TAP; a client joins exactly one network at its upgrade and its frames are
//! switched only in that network's replica. A frame's network is the client it came from or
//! the TAP queue it was read from: the frame itself is never looked at for it. Ids name a
//! slot and the slot's generation, so a message about a network that was removed is never
//! taken for the network that reuses its slot.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::counters::Counter;
use crate::steering::Steering;
use crate::switch::{Mac, Ownership, SharedOwnership};

/// A network: its slot in every core's table (0 is the default network) and the slot's
/// generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId {
    pub slot: u16,
    pub generation: u16,
}

impl NetId {
    /// The default network: always there, never removed.
    pub const DEFAULT: NetId = NetId {
        slot: 0,
        generation: 0,
    };
}

/// What one core counted for one network (written by that core only; see
/// [`crate::counters`]).
#[derive(Debug, Default)]
pub struct NetCoreStats {
    /// Frames and bytes from the network's clients.
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    /// Frames and bytes queued to the network's clients.
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    /// Frames of the network dropped, for any reason.
    pub drops: Counter,
}

/// What the cores share about one network.
pub struct Network {
    pub id: NetId,
    pub name: String,
    pub tap: String,
    pub subnet: Option<crate::config::Subnet>,
    /// Who owns which MAC in this network (and the IPv4 bindings of its guests).
    pub authority: SharedOwnership,
    /// Steering of the network's TAP queues by destination MAC, where the kernel allows it.
    pub steering: Option<Steering>,
    /// Addresses behind the network's TAP (never learned on a client port).
    pub uplink_macs: Vec<Mac>,
    /// Guests of this network talk only to its uplink.
    pub isolate: bool,
    /// Limits of its clients that differ from the instance's.
    pub limits: crate::config::NetLimits,
    /// Addresses a guest that moved here from another host of the farm may keep.
    pub roam: Option<crate::switch::Roam>,
    /// How it spans the farm's hosts, when it does (for the admin API).
    pub span: Option<SpanInfo>,
    /// Clients joined to this network, over all cores.
    pub clients: AtomicUsize,
    /// When (on the engine's clock, ms) the last client left; meaningful while `clients` is 0.
    pub idle_since_ms: AtomicU64,
    /// One entry per core.
    pub stats: Vec<NetCoreStats>,
}

/// How a network spans the hosts of a farm: its bridge (the gateway's interface), VXLAN
/// device, network identifier and peer hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanInfo {
    pub bridge: String,
    pub vxlan: String,
    pub vni: u32,
    pub peers: Vec<std::net::Ipv4Addr>,
}

/// What a network is made with.
pub struct NetworkSpec {
    pub name: String,
    /// Its TAP and, when routed, its subnet (for the admin API and logs).
    pub tap: String,
    pub subnet: Option<crate::config::Subnet>,
    /// Addresses behind the network's TAP (its own MAC, the gateway's).
    pub uplink_macs: Vec<Mac>,
    pub isolate: bool,
    pub max_macs_per_client: usize,
    pub steering: Option<Steering>,
    /// A declared network's limits of its clients.
    pub limits: crate::config::NetLimits,
    /// Addresses a guest that moved here from another host of the farm may keep.
    pub roam: Option<crate::switch::Roam>,
    /// How it spans the farm's hosts, when it does.
    pub span: Option<SpanInfo>,
}

impl NetworkSpec {
    /// A network of `name` on TAP `tap` with no subnet, steering or limits, 4 MACs per
    /// client (tests).
    #[cfg(test)]
    pub fn for_test(name: &str, tap: &str) -> Self {
        NetworkSpec {
            name: name.to_string(),
            tap: tap.to_string(),
            subnet: None,
            uplink_macs: Vec::new(),
            isolate: false,
            max_macs_per_client: 4,
            steering: None,
            limits: Default::default(),
            roam: None,
            span: None,
        }
    }
}

impl Network {
    /// Network `id` as `spec` says, for `cores` cores, with no clients, idle since `now_ms`.
    pub fn new(id: NetId, spec: NetworkSpec, cores: usize, now_ms: u64) -> Self {
        Network {
            id,
            name: spec.name,
            tap: spec.tap,
            subnet: spec.subnet,
            authority: SharedOwnership::new(Ownership::new(spec.max_macs_per_client)),
            steering: spec.steering,
            uplink_macs: spec.uplink_macs,
            isolate: spec.isolate,
            limits: spec.limits,
            roam: spec.roam,
            span: spec.span,
            clients: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            stats: (0..cores).map(|_| NetCoreStats::default()).collect(),
        }
    }

    /// Totals over the cores: (frames in, bytes in, frames out, bytes out, drops).
    pub fn totals(&self) -> [u64; 5] {
        let mut t = [0u64; 5];
        for s in &self.stats {
            t[0] += s.rx_frames.get();
            t[1] += s.rx_bytes.get();
            t[2] += s.tx_frames.get();
            t[3] += s.tx_bytes.get();
            t[4] += s.drops.get();
        }
        t
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How networks other than the default come to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A name nobody declared is made on its first connection (`--networks on-demand`).
    OnDemand,
    /// Only declared names join (`--networks declared`); others are refused with `403`.
    Declared,
}

/// The named networks that are up, by name. A core looks a name up at each upgrade; the
/// control thread adds a network after every core has been sent it, and removes one only
/// while it has no client, under the write lock (so a client never joins a network that is
/// being removed).
#[derive(Debug, Default)]
pub struct Directory {
    by_name: RwLock<HashMap<String, Arc<Network>>>,
}

impl Directory {
    /// The network named `name`, counted as joined by one more client when found.
    pub fn join(&self, name: &str) -> Option<Arc<Network>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        let net = map.get(name)?;
        net.clients.fetch_add(1, Ordering::AcqRel);
        Some(net.clone())
    }

    /// The network named `name`, if it is up.
    pub fn get(&self, name: &str) -> Option<Arc<Network>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned()
    }

    /// Publishes `net` under its name.
    pub fn insert(&self, net: Arc<Network>) {
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        map.insert(net.name.clone(), net);
    }

    /// Takes `name` out if its network has had no client since `idle_before_ms` (engine clock),
    /// and returns it; `None` if it has a client, was used since, or is not there.
    pub fn remove_idle(&self, name: &str, idle_before_ms: u64) -> Option<Arc<Network>> {
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        let net = map.get(name)?;
        if net.clients.load(Ordering::Acquire) != 0
            || net.idle_since_ms.load(Ordering::Acquire) > idle_before_ms
        {
            return None;
        }
        map.remove(name)
    }

    /// Every network that is up, sorted by name.
    pub fn all(&self) -> Vec<Arc<Network>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Arc<Network>> = map.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// How many networks are up.
    pub fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no named network is up.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the control thread tells a core.
pub enum CoreCmd {
    /// Serve `net` from now on; `tap` is this core's queue of its TAP.
    Add { net: Arc<Network>, tap: OwnedFd },
    /// Stop serving the network (it has no clients): cancel the queue's reads, and once nothing
    /// is in flight on it close it and answer [`NetEvent::Removed`].
    Remove(NetId),
    /// Answer with the open clients of network `net` on this core.
    Report {
        net: NetId,
        reply: tokio::sync::mpsc::UnboundedSender<Vec<ClientReport>>,
    },
    /// Close client `id` with 1001 if it is on this core; answer whether it was.
    Close {
        id: u64,
        reply: tokio::sync::mpsc::UnboundedSender<bool>,
    },
    /// The network `name` this core asked for was up already: the connections waiting for it
    /// join it.
    Unpark(String),
    /// The network `name` cannot be made: refuse the connections waiting for it with
    /// `response` (a whole HTTP response), counting `reason`.
    Refuse {
        name: String,
        reason: crate::counters::DropReason,
        response: String,
    },
}

/// One client as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReport {
    /// The client's id: its port (core, generation and slot) as a number.
    pub id: u64,
    pub core: usize,
    pub network: String,
    pub macs: Vec<Mac>,
    /// The IPv4 addresses bound to its MACs.
    pub ips: Vec<std::net::Ipv4Addr>,
    /// The socket's peer: the client, or the proxy it came through.
    pub remote: Option<std::net::SocketAddr>,
    /// The client's address: as a `--trusted-proxy` forwarded it, else the peer's.
    pub address: Option<std::net::IpAddr>,
    pub age_ms: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Entries waiting in its send queue.
    pub queued: usize,
}

/// What a core tells the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A connection on core `core` wants network `name`, which it did not find up: make it (or,
    /// if it is up by now, answer [`CoreCmd::Unpark`]).
    Wanted { name: String, core: usize },
    /// Core `core` no longer serves network `id` (its TAP queue is closed).
    Removed { id: NetId, core: usize },
}

/// A core's inbox of commands from the control thread.
#[derive(Default)]
pub struct CmdQueue {
    queue: Mutex<Vec<CoreCmd>>,
    /// Set when the queue may hold commands: checked once per loop pass without the lock.
    pending: AtomicBool,
}

impl CmdQueue {
    /// Adds a command (the caller then wakes the core).
    pub fn push(&self, cmd: CoreCmd) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd);
        self.pending.store(true, Ordering::Release);
    }

    /// Takes every command, oldest first (none without taking the lock when none is pending).
    pub fn take(&self) -> Vec<CoreCmd> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The per-network series of `/metrics` for `default` and `named` (sorted by name): clients,
/// frames and bytes each way, drops. The label set is bounded by `--max-networks`.
pub fn metrics(default: &Network, named: &[Arc<Network>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tapwire_networks Networks up besides the default one.\n# TYPE tapwire_networks gauge\ntapwire_networks {}",
        named.len()
    );
    let all: Vec<&Network> = std::iter::once(default)
        .chain(named.iter().map(|n| &**n))
        .collect();
    let _ = writeln!(
        out,
        "# HELP tapwire_network_clients Clients joined to the network.\n# TYPE tapwire_network_clients gauge"
    );
    for n in &all {
        let _ = writeln!(
            out,
            "tapwire_network_clients{{network=\"{}\"}} {}",
            n.name,
            n.clients.load(Ordering::Relaxed)
        );
    }
    const SERIES: [(&str, &str); 5] = [
        (
            "tapwire_network_rx_frames_total",
            "Frames from the network's clients.",
        ),
        (
            "tapwire_network_rx_bytes_total",
            "Bytes of frames from the network's clients.",
        ),
        (
            "tapwire_network_tx_frames_total",
            "Frames queued to the network's clients.",
        ),
        (
            "tapwire_network_tx_bytes_total",
            "Bytes of frames queued to the network's clients.",
        ),
        (
            "tapwire_network_drops_total",
            "Frames of the network dropped, for any reason (tapwire_drops_total says why).",
        ),
    ];
    let totals: Vec<[u64; 5]> = all.iter().map(|n| n.totals()).collect();
    for (i, (name, help)) in SERIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (n, t) in all.iter().zip(&totals) {
            let _ = writeln!(out, "{name}{{network=\"{}\"}} {}", n.name, t[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_network_has_its_series() {
        let a = net("a", 1);
        a.stats[1].rx_frames.add(3);
        a.stats[0].rx_frames.add(2);
        a.clients.store(2, Ordering::Release);
        let text = metrics(&net("default", 0), &[a]);
        assert!(text.contains("tapwire_networks 1\n"), "{text}");
        assert!(text.contains("tapwire_network_clients{network=\"a\"} 2\n"));
        assert!(text.contains("tapwire_network_clients{network=\"default\"} 0\n"));
        assert!(text.contains("tapwire_network_rx_frames_total{network=\"a\"} 5\n"));
        assert!(text.contains("# TYPE tapwire_network_drops_total counter\n"));
    }

    fn net(name: &str, slot: u16) -> Arc<Network> {
        let spec = NetworkSpec::for_test(name, &format!("t{slot}"));
        Arc::new(Network::new(
            NetId {
                slot,
                generation: 0,
            },
            spec,
            2,
            0,
        ))
    }

    #[test]
    fn a_network_with_a_client_or_used_lately_is_not_removed() {
        let dir = Directory::default();
        dir.insert(net("a", 1));
        let joined = dir.join("a").expect("up");
        assert!(dir.remove_idle("a", 1_000).is_none(), "it has a client");
        joined.clients.fetch_sub(1, Ordering::AcqRel);
        joined.idle_since_ms.store(2_000, Ordering::Release);
        assert!(dir.remove_idle("a", 1_000).is_none(), "used since");
        assert!(dir.remove_idle("a", 2_000).is_some());
        assert!(dir.join("a").is_none(), "gone: nobody joins it any more");
        assert!(dir.remove_idle("nope", 0).is_none());
    }

    #[test]
    fn commands_come_out_in_order_and_once() {
        let q = CmdQueue::default();
        assert!(q.take().is_empty());
        q.push(CoreCmd::Remove(NetId {
            slot: 1,
            generation: 1,
        }));
        q.push(CoreCmd::Remove(NetId {
            slot: 2,
            generation: 1,
        }));
        let got: Vec<NetId> = q
            .take()
            .into_iter()
            .map(|c| match c {
                CoreCmd::Remove(id) => id,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got.iter().map(|i| i.slot).collect::<Vec<_>>(), vec![1, 2]);
        assert!(q.take().is_empty());
    }
}

//! One core's replica of the MAC table, and the forwarding decision for a frame.
//!
//! Contract: [`ingress`] decides where one frame goes (a port, a flood, the uplink) or why it
//! is dropped, learning the source address through the [`Ownership`] authority when this
//! replica does not know it. Entries of local ports age out in [`Switch::expire`]; entries of
//! other cores' ports change only by [`Switch::learn`]/[`Switch::forget`] messages. Time is a
//! millisecond count passed in; nothing here reads a clock.

use std::collections::HashMap;

use super::ownership::{Ownership, Refusal, SharedOwnership};
use super::{Binding, Mac, PortId};

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A client (switch port).
    Port(PortId),
    /// The TAP (host side).
    Uplink,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To exactly this port.
    Port(PortId),
    /// To every port but the source, and to the uplink unless it is the source.
    Flood,
    /// To the uplink only.
    Uplink,
}

/// Why the switch dropped a frame. Each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchDrop {
    /// The source address is owned by another port (first owner wins).
    MacConflict,
    /// The port already owns its maximum number of addresses.
    MacLimit,
    /// The source address is a group (multicast/broadcast) address, or all zeros.
    BadSourceMac,
    /// The source address lives behind the uplink (the TAP's own, or with a bridge the
    /// bridge's or one of its ports'): a client claiming it would draw the host's traffic.
    UplinkMac,
    /// The destination is the sender itself: a frame never goes back to its source.
    Hairpin,
    /// `--isolate`: a frame from one client to another.
    Isolated,
    /// A unicast frame from the uplink for an address no client owns: it belongs to no guest
    /// here (a guest that left, or an address a guest gave up), and flooding it would hand it
    /// to every other guest.
    UnknownUnicast,
    /// The IPv4 address the frame claims is not bound to its source address (anti-spoofing;
    /// the caller knows whether the claim came from IPv4 or ARP).
    Unbound,
}

/// A table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    port: PortId,
    /// Last time (ms) a frame from this address was seen; meaningful for local ports only.
    last_seen_ms: u64,
    /// The IPv4 address bound to this MAC; kept for local ports only.
    binding: Option<Binding>,
    /// Not before this time (ms) is the authority asked again for a roaming binding of this
    /// MAC (see [`Roam`]): an unbound guest's every frame must not take its lock.
    roam_after_ms: u64,
}

/// Addresses a guest may go on using when it moved here from another host of a farm
/// (`--hosts`): the network's DHCP range outside this host's own slice, which only another
/// host can have leased. Such an address is bound to the first MAC that uses it while no
/// other MAC holds it, for `hold_ms` (the lease time: no lease from the other host lasts
/// longer), and the guest's next DHCP renewal makes it an ordinary lease here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roam {
    /// The farm's whole range, first and last.
    pub range: ([u8; 4], [u8; 4]),
    /// This host's slice of it.
    pub own: ([u8; 4], [u8; 4]),
    pub hold_ms: u64,
}

/// How long an unbound MAC waits between two tries for a roaming binding.
const ROAM_RETRY_MS: u64 = 1_000;

impl Roam {
    /// Whether a roaming guest may be bound to `ip`.
    pub fn allows(&self, ip: [u8; 4]) -> bool {
        let v = u32::from_be_bytes(ip);
        let within = |(a, b): ([u8; 4], [u8; 4])| {
            (u32::from_be_bytes(a)..=u32::from_be_bytes(b)).contains(&v)
        };
        within(self.range) && !within(self.own)
    }
}

/// A core's replica of the MAC table.
#[derive(Debug)]
pub struct Switch {
    table: HashMap<Mac, Entry>,
    /// Entries unused for this long are forgotten (Linux bridge default: 300 s).
    ageing_ms: u64,
    /// Addresses that live behind the uplink; never learned on a client port.
    uplink: Vec<Mac>,
    /// Clients talk only to the uplink: their broadcasts go only there, frames to another
    /// client are dropped.
    isolate: bool,
    /// Addresses of other hosts' slices a moved guest may be bound to (`--hosts`).
    roam: Option<Roam>,
    /// Unicast destinations this replica does not know that the authority had no owner for
    /// either, with the authority's claim count then: while the count is unchanged the
    /// destination still has no owner, so the authority's lock is not taken again for it.
    unowned: HashMap<Mac, u64>,
}

/// At most this many unowned destinations are remembered; past it one is forgotten for each
/// new one.
const UNOWNED_MEMORY: usize = 256;

/// Something that lends the ownership authority briefly (a lock in the engine, a plain value
/// in tests).
pub trait OwnershipAccess {
    /// Runs `f` with exclusive access to the authority.
    fn with<R>(&mut self, f: impl FnOnce(&mut Ownership) -> R) -> R;

    /// The authority's claim count ([`Ownership::claims`]), read without exclusive access.
    fn claims(&self) -> u64;
}

impl OwnershipAccess for Ownership {
    fn with<R>(&mut self, f: impl FnOnce(&mut Ownership) -> R) -> R {
        f(self)
    }

    fn claims(&self) -> u64 {
        Ownership::claims(self)
    }
}

impl OwnershipAccess for &SharedOwnership {
    fn with<R>(&mut self, f: impl FnOnce(&mut Ownership) -> R) -> R {
        SharedOwnership::with(self, f)
    }

    fn claims(&self) -> u64 {
        SharedOwnership::claims(self)
    }
}

/// The outcome of switching one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Where the frame goes.
    pub forward: Forward,
    /// A source address this frame taught the switch; other cores must be told.
    pub learned: Option<Mac>,
    /// The frame's source was bound to the address it claims as a guest that moved here
    /// ([`Roam`]); count it.
    pub roamed: bool,
}

impl Switch {
    /// An empty replica whose local entries age out after `ageing_ms`.
    pub fn new(ageing_ms: u64) -> Self {
        Self::with_uplink(ageing_ms, Vec::new())
    }

    /// A replica that refuses to learn `uplink` (addresses behind the TAP) on client ports.
    pub fn with_uplink(ageing_ms: u64, uplink: Vec<Mac>) -> Self {
        Switch {
            table: HashMap::new(),
            ageing_ms,
            uplink,
            isolate: false,
            roam: None,
            unowned: HashMap::new(),
        }
    }

    /// Guests that moved here from another host of the farm keep their addresses (`--hosts`).
    pub fn roaming(mut self, roam: Option<Roam>) -> Self {
        self.roam = roam;
        self
    }

    /// Clients talk only to the uplink (`--isolate`).
    pub fn isolated(mut self, isolate: bool) -> Self {
        self.isolate = isolate;
        self
    }

    /// Records that `mac` belongs to `port` (a local learn, or a message from another core).
    pub fn learn(&mut self, mac: Mac, port: PortId, now_ms: u64) {
        self.table.insert(
            mac,
            Entry {
                port,
                last_seen_ms: now_ms,
                binding: None,
                roam_after_ms: 0,
            },
        );
    }

    /// Sets the binding of `mac` if this replica knows it (a DHCP ACK or NAK seen on any
    /// core, or a release).
    pub fn set_binding(&mut self, mac: Mac, binding: Option<Binding>) {
        if let Some(e) = self.table.get_mut(&mac) {
            e.binding = binding;
        }
    }

    /// Forgets `mac` if it still belongs to `port`.
    pub fn forget(&mut self, mac: Mac, port: PortId) {
        if self.table.get(&mac).is_some_and(|e| e.port == port) {
            self.table.remove(&mac);
        }
    }

    /// The port that owns `mac`, if known.
    pub fn lookup(&self, mac: Mac) -> Option<PortId> {
        self.table.get(&mac).map(|e| e.port)
    }

    /// Removes entries of ports for which `is_local` holds that were idle for the ageing time,
    /// releases them from `authority`, and returns them (to tell the other cores).
    pub fn expire(
        &mut self,
        now_ms: u64,
        is_local: impl Fn(PortId) -> bool,
        authority: &mut impl OwnershipAccess,
    ) -> Vec<(Mac, PortId)> {
        let ageing = self.ageing_ms;
        // A connected client keeps its most recently used address however long it is idle
        // (a guest that only listens must still be reached); only addresses it used before
        // another age out.
        let mut freshest: HashMap<PortId, u64> = HashMap::new();
        for e in self.table.values().filter(|e| is_local(e.port)) {
            let f = freshest.entry(e.port).or_insert(e.last_seen_ms);
            *f = (*f).max(e.last_seen_ms);
        }
        let old: Vec<(Mac, PortId)> = self
            .table
            .iter()
            .filter(|(_, e)| {
                is_local(e.port)
                    && now_ms.saturating_sub(e.last_seen_ms) >= ageing
                    && freshest.get(&e.port).is_some_and(|f| *f > e.last_seen_ms)
            })
            .map(|(m, e)| (*m, e.port))
            .collect();
        if old.is_empty() {
            return old;
        }
        authority.with(|own| {
            for (mac, port) in &old {
                own.release(*mac, *port);
            }
        });
        for (mac, _) in &old {
            self.table.remove(mac);
        }
        old
    }

    /// All entries, sorted (for tests and diagnostics).
    pub fn entries(&self) -> Vec<(Mac, PortId)> {
        let mut all: Vec<(Mac, PortId)> = self.table.iter().map(|(m, e)| (*m, e.port)).collect();
        all.sort();
        all
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Switches one frame with destination `dst` and source `src` arriving from `source`.
pub fn ingress(
    sw: &mut Switch,
    authority: &mut impl OwnershipAccess,
    source: Source,
    dst: Mac,
    src: Mac,
    now_ms: u64,
) -> Result<Decision, SwitchDrop> {
    ingress_claiming(sw, authority, source, dst, src, None, now_ms)
}

/// [`ingress`] for a frame from a client that claims the IPv4 address `claim` as its own
/// (see [`super::guard`]): the address must be bound to `src`, else [`SwitchDrop::Unbound`]
/// and nothing is learned.
pub fn ingress_claiming(
    sw: &mut Switch,
    authority: &mut impl OwnershipAccess,
    source: Source,
    dst: Mac,
    src: Mac,
    claim: Option<[u8; 4]>,
    now_ms: u64,
) -> Result<Decision, SwitchDrop> {
    let mut learned = None;
    let mut roamed = false;
    if let Source::Port(port) = source {
        if src.is_group() {
            return Err(SwitchDrop::BadSourceMac);
        }
        match sw.table.get_mut(&src) {
            Some(entry) if entry.port == port => {
                if let Some(ip) = claim {
                    if !Binding::holds(entry.binding, ip, now_ms) {
                        // A guest with no binding may be one that moved here; asked at most
                        // once a second per MAC.
                        let unbound = entry.binding.is_none_or(|b| b.until_ms <= now_ms);
                        let Some(roam) = sw.roam.filter(|r| unbound && r.allows(ip)) else {
                            return Err(SwitchDrop::Unbound);
                        };
                        if now_ms < entry.roam_after_ms {
                            return Err(SwitchDrop::Unbound);
                        }
                        entry.roam_after_ms = now_ms.saturating_add(ROAM_RETRY_MS);
                        let until_ms = now_ms.saturating_add(roam.hold_ms);
                        let Some(b) =
                            authority.with(|own| own.bind_roaming(src, ip, now_ms, until_ms))
                        else {
                            return Err(SwitchDrop::Unbound);
                        };
                        entry.binding = Some(b);
                        roamed = true;
                    }
                }
                entry.last_seen_ms = now_ms;
            }
            Some(_) => return Err(SwitchDrop::MacConflict),
            // Checked only when learning: an address refused here is never in the table as a
            // port's, so frames of known sources skip these comparisons.
            None if src == Mac::ZERO => return Err(SwitchDrop::BadSourceMac),
            None if sw.uplink.contains(&src) => return Err(SwitchDrop::UplinkMac),
            None => {
                let roam = sw.roam;
                let binding = authority.with(|own| {
                    let binding = own.binding(src, now_ms);
                    // An address not bound to `src` passes only as a guest's that moved here
                    // from another host of the farm, bound once the MAC is claimed.
                    let roaming = match claim {
                        Some(ip) if !Binding::holds(binding, ip, now_ms) => {
                            if !roam.is_some_and(|r| r.allows(ip)) {
                                return Err(SwitchDrop::Unbound);
                            }
                            Some(ip)
                        }
                        _ => None,
                    };
                    own.claim(src, port).map_err(|r| match r {
                        Refusal::Conflict => SwitchDrop::MacConflict,
                        Refusal::PortLimit => SwitchDrop::MacLimit,
                    })?;
                    let Some(ip) = roaming else {
                        return Ok(binding);
                    };
                    let until_ms = now_ms.saturating_add(roam.map_or(0, |r| r.hold_ms));
                    match own.bind_roaming(src, ip, now_ms, until_ms) {
                        Some(b) => {
                            roamed = true;
                            Ok(Some(b))
                        }
                        None => {
                            own.release(src, port);
                            Err(SwitchDrop::Unbound)
                        }
                    }
                })?;
                sw.learn(src, port, now_ms);
                sw.set_binding(src, binding);
                learned = Some(src);
            }
        }
    }
    let isolated = sw.isolate && matches!(source, Source::Port(_));
    let forward = if dst.is_group() {
        if isolated {
            Forward::Uplink
        } else {
            Forward::Flood
        }
    } else {
        let owner = match sw.lookup(dst) {
            Some(owner) => Some(owner),
            // The host's own addresses: no client can own them (they are never learned).
            None if matches!(source, Source::Port(_)) && sw.uplink.contains(&dst) => None,
            None => unseen_owner(sw, authority, dst),
        };
        match (owner, source) {
            (Some(owner), Source::Port(port)) if owner == port => return Err(SwitchDrop::Hairpin),
            (Some(_), Source::Port(_)) if isolated => return Err(SwitchDrop::Isolated),
            (Some(owner), _) => Forward::Port(owner),
            (None, Source::Port(_)) => Forward::Uplink,
            // No guest here has the address: drop, never flood (a client's freshest address
            // never ages out, see `expire`).
            (None, Source::Uplink) => return Err(SwitchDrop::UnknownUnicast),
        }
    };
    Ok(Decision {
        forward,
        learned,
        roamed,
    })
}

/// The owner of `dst`, an address this replica does not know, as the authority has it: a
/// client of another core may have claimed it, its learning not yet arrived here (a guest
/// that has just appeared). A destination the authority had no owner for is remembered with
/// the claim count of then, and the lock is not taken for it again until some claim is granted.
fn unseen_owner(sw: &mut Switch, authority: &mut impl OwnershipAccess, dst: Mac) -> Option<PortId> {
    if sw.unowned.get(&dst) == Some(&authority.claims()) {
        return None;
    }
    let (owner, claims) = authority.with(|own| (own.owner(dst), own.claims()));
    match owner {
        Some(_) => {
            sw.unowned.remove(&dst);
        }
        None => {
            if sw.unowned.len() >= UNOWNED_MEMORY && !sw.unowned.contains_key(&dst) {
                // Forget one (whichever comes first): a client sending to many unowned
                // addresses costs one lock per new address, never one per frame to the rest.
                if let Some(old) = sw.unowned.keys().next().copied() {
                    sw.unowned.remove(&old);
                }
            }
            sw.unowned.insert(dst, claims);
        }
    }
    owner
}

#[cfg(test)]
mod tests;

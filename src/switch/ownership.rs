//! Who owns which MAC address, across all cores: the one place where a claim is decided.
//!
//! Contract: a MAC belongs to at most one port; the first port to claim it keeps it until it
//! is released (port gone, or the entry aged out on the owner's core); a port owns at most
//! `max_macs_per_port` addresses. Consulted only when a core meets a source MAC its own
//! replica does not know, so the lock around it (in the engine) is off the per-frame path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Binding, Mac, PortId};

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another port owns the address (first owner wins).
    Conflict,
    /// The port already owns as many addresses as allowed.
    PortLimit,
}

/// The authoritative MAC → port map.
#[derive(Debug)]
pub struct Ownership {
    owner: HashMap<Mac, PortId>,
    /// Addresses per port, to enforce the limit and release them all on disconnect.
    by_port: HashMap<PortId, Vec<Mac>>,
    max_macs_per_port: usize,
    /// IPv4 bindings by MAC (anti-spoofing). They outlive the port: a guest that reconnects
    /// with its MAC keeps its address until the lease ends.
    bindings: HashMap<Mac, Binding>,
    /// `--reserve` bindings: never end, whatever DHCP says.
    reserved: HashMap<Mac, [u8; 4]>,
    /// Claims granted so far (a count that only grows): an address with no owner at one
    /// count still has none while the count is unchanged.
    claims: u64,
}

impl Ownership {
    /// An empty table allowing `max_macs_per_port` addresses per port.
    pub fn new(max_macs_per_port: usize) -> Self {
        Ownership {
            owner: HashMap::new(),
            by_port: HashMap::new(),
            max_macs_per_port,
            bindings: HashMap::new(),
            reserved: HashMap::new(),
            claims: 0,
        }
    }

    /// Claims `mac` for `port`; succeeds if it is free or already the port's.
    pub fn claim(&mut self, mac: Mac, port: PortId) -> Result<(), Refusal> {
        match self.owner.get(&mac) {
            Some(owner) if *owner == port => return Ok(()),
            Some(_) => return Err(Refusal::Conflict),
            None => {}
        }
        let macs = self.by_port.entry(port).or_default();
        if macs.len() >= self.max_macs_per_port {
            if macs.is_empty() {
                self.by_port.remove(&port);
            }
            return Err(Refusal::PortLimit);
        }
        macs.push(mac);
        self.owner.insert(mac, port);
        self.claims += 1;
        Ok(())
    }

    /// Releases `mac` if `port` owns it; returns whether it did.
    pub fn release(&mut self, mac: Mac, port: PortId) -> bool {
        if self.owner.get(&mac) != Some(&port) {
            return false;
        }
        self.owner.remove(&mac);
        if let Some(macs) = self.by_port.get_mut(&port) {
            macs.retain(|m| *m != mac);
            if macs.is_empty() {
                self.by_port.remove(&port);
            }
        }
        true
    }

    /// Releases every address of `port` and returns them.
    pub fn release_port(&mut self, port: PortId) -> Vec<Mac> {
        let macs = self.by_port.remove(&port).unwrap_or_default();
        for mac in &macs {
            self.owner.remove(mac);
        }
        macs
    }

    /// Binds `mac` to `binding` (a DHCP ACK), and forgets bindings whose lease ended before
    /// `now_ms`. A reserved MAC keeps its reservation.
    pub fn bind(&mut self, mac: Mac, binding: Binding, now_ms: u64) {
        self.bindings.retain(|_, b| b.until_ms > now_ms);
        if self.reserved.contains_key(&mac) {
            return;
        }
        self.bindings.insert(mac, binding);
    }

    /// Binds `mac` to `ip` until `until_ms` if `mac` holds no address and no other MAC holds
    /// `ip` (by lease or reservation): a guest that moved here from another host of a farm
    /// goes on using the address that host leased it, first come, first served (RFC 6620's
    /// rule), until it renews here. The binding made, or `None`.
    pub fn bind_roaming(
        &mut self,
        mac: Mac,
        ip: [u8; 4],
        now_ms: u64,
        until_ms: u64,
    ) -> Option<Binding> {
        if self.binding(mac, now_ms).is_some() {
            return None;
        }
        let held = self
            .bindings
            .iter()
            .any(|(m, b)| *m != mac && b.ip == ip && b.until_ms > now_ms)
            || self.reserved.iter().any(|(m, r)| *m != mac && *r == ip);
        if held {
            return None;
        }
        let binding = Binding { ip, until_ms };
        self.bind(mac, binding, now_ms);
        Some(binding)
    }

    /// Binds `mac` to `ip` for good (`--reserve`).
    pub fn reserve(&mut self, mac: Mac, ip: [u8; 4]) {
        self.reserved.insert(mac, ip);
    }

    /// Ends the lease binding of `mac` (a DHCP NAK, release or decline); a reservation stays.
    pub fn unbind(&mut self, mac: Mac) {
        self.bindings.remove(&mac);
    }

    /// The binding of `mac`: its lease if one has not ended at `now_ms`, else its reservation.
    pub fn binding(&self, mac: Mac, now_ms: u64) -> Option<Binding> {
        self.bindings
            .get(&mac)
            .copied()
            .filter(|b| b.until_ms > now_ms)
            .or_else(|| {
                self.reserved.get(&mac).map(|ip| Binding {
                    ip: *ip,
                    until_ms: u64::MAX,
                })
            })
    }

    /// The addresses `port` owns.
    pub fn macs_of(&self, port: PortId) -> &[Mac] {
        self.by_port.get(&port).map_or(&[], Vec::as_slice)
    }

    /// The DHCP leases bound now (reservations left out): MAC and address.
    pub fn leases(&self, now_ms: u64) -> Vec<(Mac, [u8; 4])> {
        self.bindings
            .iter()
            .filter(|(mac, b)| b.until_ms > now_ms && !self.reserved.contains_key(*mac))
            .map(|(mac, b)| (*mac, b.ip))
            .collect()
    }

    /// Every owned address.
    pub fn owned(&self) -> impl Iterator<Item = Mac> + '_ {
        self.owner.keys().copied()
    }

    /// Current owner of `mac`.
    pub fn owner(&self, mac: Mac) -> Option<PortId> {
        self.owner.get(&mac).copied()
    }

    /// Claims granted so far; only grows.
    pub fn claims(&self) -> u64 {
        self.claims
    }

    /// Number of owned addresses.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// Whether no address is owned.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }
}

/// The authority as the cores share it: the map under a lock, and its claim count readable
/// without the lock (so a core can tell, with one atomic load, that no address gained an owner
/// since it last looked).
#[derive(Debug)]
pub struct SharedOwnership {
    map: Mutex<Ownership>,
    claims: AtomicU64,
}

impl SharedOwnership {
    /// Shares `ownership`.
    pub fn new(ownership: Ownership) -> Self {
        let claims = AtomicU64::new(ownership.claims());
        SharedOwnership {
            map: Mutex::new(ownership),
            claims,
        }
    }

    /// Runs `f` with the map locked, then publishes its claim count (also if `f` panics).
    pub fn with<R>(&self, f: impl FnOnce(&mut Ownership) -> R) -> R {
        /// Publishes the count when the lock is given back, however that happens.
        struct Publish<'a> {
            map: std::sync::MutexGuard<'a, Ownership>,
            claims: &'a AtomicU64,
        }
        impl Drop for Publish<'_> {
            fn drop(&mut self) {
                self.claims.store(self.map.claims(), Ordering::Release);
            }
        }
        // A poisoned lock means another core panicked mid-claim; the map itself is still
        // consistent (every mutation is a single insert/remove), so keep using it.
        let mut locked = Publish {
            map: self
                .map
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            claims: &self.claims,
        };
        f(&mut locked.map)
    }

    /// The claim count as last published (see [`Ownership::claims`]).
    pub fn claims(&self) -> u64 {
        self.claims.load(Ordering::Acquire)
    }
}

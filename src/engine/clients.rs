//! A core's client table: slots, their generations, the free list, each network's flood list
//! of the open clients that joined it, and the list of clients with output to flush.
//!
//! Contract: a client is named by its [`PortId`] (core, generation, slot). A slot is reused
//! only with a new generation, so a completion or a cross-core frame for a client that has
//! gone never reaches the one that took its slot: [`ClientTable::get_mut`] checks the
//! generation. Lists hold each client at most once. Pure bookkeeping: no I/O.

use crate::switch::PortId;

use super::client::Client;

/// A slot's occupant and the table's notes about it.
struct Entry {
    client: Client,
    /// The network slot the client joined and its index in that network's flood list, while
    /// open (for O(1) removal).
    open_at: Option<(u16, usize)>,
    /// In the dirty list, waiting for a flush.
    dirty: bool,
}

/// One core's clients.
pub struct ClientTable {
    core: usize,
    slots: Vec<Option<Entry>>,
    /// `generations[i]` counts the reuses of slot i (24 bits, as in [`PortId`]).
    generations: Vec<u32>,
    free: Vec<u32>,
    /// Open clients by network slot: a flood in a network goes to each of its clients.
    open: Vec<Vec<PortId>>,
    /// Clients with output queued since the last flush.
    dirty: Vec<PortId>,
    len: usize,
}

impl ClientTable {
    /// An empty table for core `core`.
    pub fn new(core: usize) -> Self {
        ClientTable {
            core,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            open: Vec::new(),
            dirty: Vec::new(),
            len: 0,
        }
    }

    /// Places the client `make` builds for its new port; returns the port.
    pub fn insert(&mut self, make: impl FnOnce(PortId) -> Client) -> PortId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                // Lossless: slots are bounded by --max-clients (≤ u32::MAX).
                (self.slots.len() - 1) as u32
            }
        };
        let port = PortId::new(self.core, self.generations[slot as usize], slot);
        self.slots[slot as usize] = Some(Entry {
            client: make(port),
            open_at: None,
            dirty: false,
        });
        self.len += 1;
        port
    }

    /// The client of `port`, if it is still there.
    #[inline]
    pub fn get_mut(&mut self, port: PortId) -> Option<&mut Client> {
        self.entry_mut(port).map(|e| &mut e.client)
    }

    #[inline]
    fn entry_mut(&mut self, port: PortId) -> Option<&mut Entry> {
        self.slots
            .get_mut(port.slot() as usize)?
            .as_mut()
            .filter(|e| e.client.port == port)
    }

    /// Removes the client of `port` (its slot gets a new generation and is reused later).
    pub fn remove(&mut self, port: PortId) -> Option<Client> {
        self.entry_mut(port)?;
        self.set_closed(port);
        let slot = port.slot() as usize;
        let entry = self.slots[slot].take()?;
        self.generations[slot] = PortId::next_generation(self.generations[slot]);
        self.free.push(port.slot());
        self.len -= 1;
        // A stale dirty mark is skipped by `get_mut` at flush time.
        Some(entry.client)
    }

    /// Adds the client to the flood list of network slot `net` (the network it joined).
    pub fn set_open(&mut self, port: PortId, net: u16) {
        let list = usize::from(net);
        if self.open.len() <= list {
            self.open.resize_with(list + 1, Vec::new);
        }
        let index = self.open[list].len();
        if let Some(e) = self.entry_mut(port) {
            if e.open_at.is_none() {
                e.open_at = Some((net, index));
                self.open[list].push(port);
            }
        }
    }

    /// Takes the client off its flood list; returns the network slot it had joined.
    pub fn set_closed(&mut self, port: PortId) -> Option<u16> {
        let (net, index) = self.entry_mut(port).and_then(|e| e.open_at.take())?;
        let list = &mut self.open[usize::from(net)];
        list.swap_remove(index);
        if let Some(&moved) = list.get(index) {
            if let Some(e) = self.entry_mut(moved) {
                e.open_at = Some((net, index));
            }
        }
        Some(net)
    }

    /// The network slot the client of `port` joined, if it is open.
    #[inline]
    pub fn net_of(&mut self, port: PortId) -> Option<u16> {
        self.entry_mut(port)?.open_at.map(|(net, _)| net)
    }

    /// Open clients of network slot `net` (its flood list).
    pub fn open_count(&self, net: u16) -> usize {
        self.open.get(usize::from(net)).map_or(0, Vec::len)
    }

    /// The `i`-th open client of network slot `net`.
    pub fn open_port(&self, net: u16, i: usize) -> PortId {
        self.open[usize::from(net)][i]
    }

    /// Notes that the client has output to flush.
    pub fn mark_dirty(&mut self, port: PortId) {
        if let Some(e) = self.entry_mut(port) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(port);
            }
        }
    }

    /// Takes the list of clients with output to flush (clearing their marks); give the
    /// vector back with [`ClientTable::restore_dirty`] to keep its allocation.
    pub fn take_dirty(&mut self) -> Vec<PortId> {
        let dirty = std::mem::take(&mut self.dirty);
        for &port in &dirty {
            if let Some(e) = self.entry_mut(port) {
                e.dirty = false;
            }
        }
        dirty
    }

    /// Returns the (drained) vector from [`ClientTable::take_dirty`].
    pub fn restore_dirty(&mut self, mut spent: Vec<PortId>) {
        spent.clear();
        spent.append(&mut self.dirty);
        self.dirty = spent;
    }

    /// Slots ever used (the bound for [`ClientTable::port_at`]).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The client in slot `slot`, if any.
    pub fn port_at(&self, slot: usize) -> Option<PortId> {
        self.slots.get(slot)?.as_ref().map(|e| e.client.port)
    }

    /// Every client, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Client> {
        self.slots.iter_mut().flatten().map(|e| &mut e.client)
    }

    /// Clients in the table.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// No clients.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conn::{Conn, ConnLimits};

    fn client(port: PortId) -> Client {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let limits = ConnLimits {
            max_frame: 1518,
            client_rate: None,
            client_broadcast_pps: None,
            ping_interval_ms: None,
            slow_client_timeout_ms: 1,
            frame_timeout_ms: 1,
        };
        Client::new(a.into(), port, Conn::new(limits, 0, 1), None)
    }

    #[test]
    fn a_reused_slot_has_a_new_generation() {
        let mut t = ClientTable::new(1);
        let a = t.insert(client);
        assert_eq!((a.core(), a.slot()), (1, 0));
        assert!(t.remove(a).is_some());
        assert!(t.remove(a).is_none());
        let b = t.insert(client);
        assert_eq!(b.slot(), a.slot());
        assert_ne!(b, a);
        assert!(
            t.get_mut(a).is_none(),
            "the old port must not reach the new client"
        );
        assert!(t.get_mut(b).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn generations_wrap_in_24_bits() {
        assert_eq!(PortId::next_generation(0xFF_FFFF), 0);
        assert_eq!(PortId::next_generation(5), 6);
    }

    #[test]
    fn flood_list_removal_keeps_the_others() {
        let mut t = ClientTable::new(0);
        let ports: Vec<_> = (0..4).map(|_| t.insert(client)).collect();
        for &p in &ports {
            t.set_open(p, 0);
            t.set_open(p, 0);
        }
        assert_eq!(t.open_count(0), 4);
        assert_eq!(t.set_closed(ports[0]), Some(0));
        assert_eq!(t.set_closed(ports[0]), None);
        t.remove(ports[2]);
        let mut open: Vec<_> = (0..t.open_count(0)).map(|i| t.open_port(0, i)).collect();
        open.sort();
        assert_eq!(open, vec![ports[1], ports[3]]);
        // Indices stay right after the moves.
        t.set_closed(ports[3]);
        t.set_closed(ports[1]);
        assert_eq!(t.open_count(0), 0);
    }

    #[test]
    fn each_network_has_its_own_flood_list() {
        let mut t = ClientTable::new(0);
        let ports: Vec<_> = (0..5).map(|_| t.insert(client)).collect();
        t.set_open(ports[0], 0);
        t.set_open(ports[1], 3);
        t.set_open(ports[2], 3);
        t.set_open(ports[3], 1);
        t.set_open(ports[1], 1);
        assert_eq!(t.net_of(ports[1]), Some(3), "a client joins one network");
        assert_eq!(t.net_of(ports[4]), None, "not open");
        assert_eq!(
            (t.open_count(0), t.open_count(1), t.open_count(3)),
            (1, 1, 2)
        );
        assert_eq!(t.open_count(2), 0);
        assert_eq!(t.open_count(99), 0);
        assert_eq!(t.set_closed(ports[1]), Some(3));
        assert_eq!(t.open_port(3, 0), ports[2]);
        assert_eq!(t.net_of(ports[1]), None);
    }

    #[test]
    fn dirty_list_holds_each_client_once() {
        let mut t = ClientTable::new(0);
        let a = t.insert(client);
        let b = t.insert(client);
        t.mark_dirty(a);
        t.mark_dirty(b);
        t.mark_dirty(a);
        let dirty = t.take_dirty();
        assert_eq!(dirty, vec![a, b]);
        // Marks are cleared: marking again lists them again.
        t.mark_dirty(b);
        t.restore_dirty(dirty);
        assert_eq!(t.take_dirty(), vec![b]);
    }

    #[test]
    fn port_at_walks_the_slots() {
        let mut t = ClientTable::new(0);
        let a = t.insert(client);
        let b = t.insert(client);
        t.remove(a);
        let found: Vec<_> = (0..t.capacity()).filter_map(|s| t.port_at(s)).collect();
        assert_eq!(found, vec![b]);
    }
}

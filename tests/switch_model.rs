//! The switch against a naive reference model over random event sequences: forwarding
//! decisions, drops and table contents must match after every event.

use proptest::prelude::*;
use tapwire::switch::{
    ingress, Forward, Mac, Ownership, OwnershipAccess, PortId, SharedOwnership, Source, Switch,
    SwitchDrop,
};

const AGEING_MS: u64 = 1_000;
const MAX_MACS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Disconnect(usize),
    Frame { port: usize, src: usize, dst: usize },
    FromUplink { dst: usize },
    Advance(u64),
}

/// A small pool of addresses so collisions happen: index 0 is broadcast, 1 a multicast.
fn mac(i: usize) -> Mac {
    match i {
        0 => Mac::BROADCAST,
        1 => Mac([0x01, 0x00, 0x5e, 0, 0, 1]),
        n => Mac([0x00, 0x22, 0x15, 0, 0, n as u8]),
    }
}

/// The reference: a list of (mac, port, last_seen) and the rules written out plainly.
#[derive(Default)]
struct Model {
    entries: Vec<(Mac, PortId, u64)>,
    /// `--isolate`: clients reach only the uplink.
    isolate: bool,
}

impl Model {
    fn frame(&mut self, port: PortId, src: Mac, dst: Mac, now: u64) -> Result<Forward, SwitchDrop> {
        if src.0[0] & 1 == 1 {
            return Err(SwitchDrop::BadSourceMac);
        }
        match self.entries.iter_mut().find(|e| e.0 == src) {
            Some(e) if e.1 != port => return Err(SwitchDrop::MacConflict),
            Some(e) => e.2 = now,
            None => {
                if self.entries.iter().filter(|e| e.1 == port).count() >= MAX_MACS {
                    return Err(SwitchDrop::MacLimit);
                }
                self.entries.push((src, port, now));
            }
        }
        if dst.0[0] & 1 == 1 {
            return Ok(if self.isolate {
                Forward::Uplink
            } else {
                Forward::Flood
            });
        }
        match self.entries.iter().find(|e| e.0 == dst) {
            Some(e) if e.1 == port => Err(SwitchDrop::Hairpin),
            Some(_) if self.isolate => Err(SwitchDrop::Isolated),
            Some(e) => Ok(Forward::Port(e.1)),
            None => Ok(Forward::Uplink),
        }
    }

    fn uplink_frame(&self, dst: Mac) -> Result<Forward, SwitchDrop> {
        if dst.0[0] & 1 == 1 {
            return Ok(Forward::Flood);
        }
        self.entries
            .iter()
            .find(|e| e.0 == dst)
            .map(|e| Forward::Port(e.1))
            .ok_or(SwitchDrop::UnknownUnicast)
    }

    /// Ages out entries idle for the ageing time, except each port's most recent ones.
    fn expire(&mut self, now: u64) {
        let snapshot = self.entries.clone();
        self.entries.retain(|e| {
            let freshest = snapshot
                .iter()
                .filter(|o| o.1 == e.1)
                .map(|o| o.2)
                .max()
                .unwrap_or(e.2);
            now - e.2 < AGEING_MS || e.2 >= freshest
        });
    }

    fn table(&self) -> Vec<(Mac, PortId)> {
        let mut t: Vec<_> = self.entries.iter().map(|e| (e.0, e.1)).collect();
        t.sort();
        t
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Connect),
        1 => (0usize..8).prop_map(Op::Disconnect),
        8 => (0usize..8, 0usize..8, 0usize..8).prop_map(|(port, src, dst)| Op::Frame { port, src, dst }),
        2 => (0usize..8).prop_map(|dst| Op::FromUplink { dst }),
        1 => (0u64..1500).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn switch_matches_reference(ops in prop::collection::vec(op(), 1..200), isolate in any::<bool>()) {
        let mut sw = Switch::new(AGEING_MS).isolated(isolate);
        let mut own = Ownership::new(MAX_MACS);
        let mut model = Model { isolate, ..Model::default() };
        let mut ports: Vec<PortId> = Vec::new();
        let mut next_slot = 0u32;
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Connect => {
                    ports.push(PortId::new(0, 1, next_slot));
                    next_slot += 1;
                }
                Op::Disconnect(i) => {
                    if ports.is_empty() { continue; }
                    let port = ports.remove(i % ports.len());
                    for m in own.release_port(port) {
                        sw.forget(m, port);
                    }
                    model.entries.retain(|e| e.1 != port);
                }
                Op::Frame { port, src, dst } => {
                    if ports.is_empty() { continue; }
                    let port = ports[port % ports.len()];
                    let got = ingress(&mut sw, &mut own, Source::Port(port), mac(dst), mac(src), now);
                    let want = model.frame(port, mac(src), mac(dst), now);
                    prop_assert_eq!(got.map(|d| d.forward), want);
                    if let Ok(Forward::Port(to)) = want {
                        prop_assert_ne!(to, port, "a frame never goes back to its source");
                    }
                }
                Op::FromUplink { dst } => {
                    let got = ingress(&mut sw, &mut own, Source::Uplink, mac(dst), mac(2), now);
                    prop_assert_eq!(got.map(|d| d.forward), model.uplink_frame(mac(dst)));
                }
                Op::Advance(ms) => {
                    now += ms;
                    sw.expire(now, |_| true, &mut own);
                    model.expire(now);
                }
            }
            prop_assert_eq!(sw.entries(), model.table());
            prop_assert_eq!(own.len(), model.entries.len());
            for p in &ports {
                prop_assert!(model.entries.iter().filter(|e| e.1 == *p).count() <= MAX_MACS);
            }
        }
    }
}

#[test]
fn learning_on_one_core_is_seen_as_conflict_on_another() {
    // Two replicas sharing one authority, as two cores do.
    let own = SharedOwnership::new(Ownership::new(4));
    let mut core0 = Switch::new(AGEING_MS);
    let mut core1 = Switch::new(AGEING_MS);
    let a = PortId::new(0, 1, 0);
    let b = PortId::new(1, 1, 0);
    let m = mac(5);
    let d = ingress(&mut core0, &mut &own, Source::Port(a), Mac::BROADCAST, m, 0).unwrap();
    assert_eq!(d.learned, Some(m));
    // core1 has not heard of it yet; the authority refuses the claim all the same.
    assert_eq!(
        ingress(&mut core1, &mut &own, Source::Port(b), Mac::BROADCAST, m, 0),
        Err(SwitchDrop::MacConflict)
    );
    core1.learn(m, a, 0);
    assert_eq!(
        ingress(&mut core1, &mut &own, Source::Port(b), m, mac(6), 0)
            .unwrap()
            .forward,
        Forward::Port(a)
    );
}

#[test]
fn a_frame_to_an_address_another_core_just_learned_reaches_its_owner() {
    // A guest appears on core 0 and another guest on core 1 answers it at once, before core 1
    // has heard of it: the frame goes to the owner, not up the TAP (where the kernel would
    // drop it), and the same from the host's side.
    let own = SharedOwnership::new(Ownership::new(4));
    let mut core0 = Switch::new(AGEING_MS);
    let mut core1 = Switch::new(AGEING_MS);
    let (a, b) = (PortId::new(0, 1, 0), PortId::new(1, 1, 0));
    let (ma, mb) = (mac(5), mac(6));
    ingress(
        &mut core0,
        &mut &own,
        Source::Port(a),
        Mac::BROADCAST,
        ma,
        0,
    )
    .unwrap();
    assert_eq!(core1.lookup(ma), None, "the news has not reached core 1");
    let d = ingress(&mut core1, &mut &own, Source::Port(b), ma, mb, 0).unwrap();
    assert_eq!(d.forward, Forward::Port(a));
    let d = ingress(&mut core1, &mut &own, Source::Uplink, ma, mac(9), 0).unwrap();
    assert_eq!(d.forward, Forward::Port(a));
    // And the answer back, before core 0 has heard of the other guest.
    assert_eq!(
        ingress(&mut core0, &mut &own, Source::Port(a), mb, ma, 0).map(|d| d.forward),
        Ok(Forward::Port(b))
    );
}

/// Counts how often the authority is locked.
struct Counting {
    own: Ownership,
    locks: usize,
}

impl OwnershipAccess for Counting {
    fn with<R>(&mut self, f: impl FnOnce(&mut Ownership) -> R) -> R {
        self.locks += 1;
        f(&mut self.own)
    }

    fn claims(&self) -> u64 {
        self.own.claims()
    }
}

#[test]
fn an_unowned_destination_takes_the_lock_again_only_after_a_new_claim() {
    let mut auth = Counting {
        own: Ownership::new(4),
        locks: 0,
    };
    let mut sw = Switch::new(AGEING_MS);
    let (a, b) = (PortId::new(0, 1, 0), PortId::new(1, 1, 0));
    let (guest, outside) = (mac(5), mac(7));
    let send = |sw: &mut Switch, auth: &mut Counting| {
        ingress(sw, auth, Source::Port(a), outside, guest, 0).map(|d| d.forward)
    };
    // The first frame learns its source and asks about the destination.
    assert_eq!(send(&mut sw, &mut auth), Ok(Forward::Uplink));
    assert_eq!(auth.locks, 2);
    for _ in 0..100 {
        assert_eq!(send(&mut sw, &mut auth), Ok(Forward::Uplink));
    }
    assert_eq!(auth.locks, 2, "asked again while nothing was claimed");
    // Host frames to an address nobody owns: asked once, then remembered.
    for _ in 0..100 {
        assert_eq!(
            ingress(&mut sw, &mut auth, Source::Uplink, mac(8), outside, 0),
            Err(SwitchDrop::UnknownUnicast)
        );
    }
    assert_eq!(auth.locks, 3);
    // Another core's client claims an unrelated address: asked once more, still unowned.
    auth.own.claim(mac(6), b).unwrap();
    assert_eq!(send(&mut sw, &mut auth), Ok(Forward::Uplink));
    assert_eq!(send(&mut sw, &mut auth), Ok(Forward::Uplink));
    assert_eq!(auth.locks, 4);
    // It claims the destination itself: the next frame goes to it.
    auth.own.claim(outside, b).unwrap();
    assert_eq!(send(&mut sw, &mut auth), Ok(Forward::Port(b)));
}

#[test]
fn port_id_round_trip() {
    let p = PortId::new(3, 0xABCDEF, 0x1234_5678);
    assert_eq!(
        (p.core(), p.generation(), p.slot()),
        (3, 0xABCDEF, 0x1234_5678)
    );
}

#[test]
fn addresses_behind_the_uplink_and_zero_are_never_learned_on_a_port() {
    let mut own = Ownership::new(4);
    let gateway = mac(9);
    let mut sw = Switch::with_uplink(AGEING_MS, vec![gateway]);
    let p = PortId::new(0, 1, 0);
    let mut broadcast_from =
        |src| ingress(&mut sw, &mut own, Source::Port(p), Mac::BROADCAST, src, 0);
    assert_eq!(broadcast_from(gateway), Err(SwitchDrop::UplinkMac));
    assert_eq!(broadcast_from(Mac::ZERO), Err(SwitchDrop::BadSourceMac));
    assert_eq!(
        sw.lookup(gateway),
        None,
        "the gateway's address stays with the uplink"
    );
    // Frames to the gateway still go up, and the host's frames still come down.
    let d = ingress(&mut sw, &mut own, Source::Port(p), gateway, mac(3), 0).unwrap();
    assert_eq!(d.forward, Forward::Uplink);
    let d = ingress(&mut sw, &mut own, Source::Uplink, mac(3), gateway, 0).unwrap();
    assert_eq!(d.forward, Forward::Port(p));
}

#[test]
fn a_claimed_address_must_be_bound_to_the_source() {
    use tapwire::switch::{ingress_claiming, Binding};
    let mut own = Ownership::new(4);
    let mut sw = Switch::new(AGEING_MS);
    let (p, q) = (PortId::new(0, 1, 0), PortId::new(0, 1, 1));
    let (guest, gateway_ip, guest_ip) = (mac(3), [10, 86, 0, 1], [10, 86, 0, 50]);
    let claim = |sw: &mut Switch, own: &mut Ownership, port, ip, now| {
        ingress_claiming(sw, own, Source::Port(port), Mac::BROADCAST, guest, ip, now)
    };
    // No binding yet: refused, and nothing is learned (a spoofer's MAC is not claimed).
    assert_eq!(
        claim(&mut sw, &mut own, p, Some(guest_ip), 0),
        Err(SwitchDrop::Unbound)
    );
    assert_eq!((sw.lookup(guest), own.owner(guest)), (None, None));
    // Claiming nothing (a DHCP discover from 0.0.0.0) learns the address.
    assert!(claim(&mut sw, &mut own, p, None, 0).is_ok());
    // A lease binds it: the learned entry takes it by `set_binding`, a new learn from the
    // authority.
    let lease = Binding::lease(guest_ip, 60, 0);
    own.bind(guest, lease, 0);
    sw.set_binding(guest, Some(lease));
    assert!(claim(&mut sw, &mut own, p, Some(guest_ip), 1).is_ok());
    assert_eq!(
        claim(&mut sw, &mut own, p, Some(gateway_ip), 1),
        Err(SwitchDrop::Unbound),
        "the gateway's address"
    );
    // The lease ends.
    assert_eq!(
        claim(&mut sw, &mut own, p, Some(guest_ip), 60_000),
        Err(SwitchDrop::Unbound)
    );
    // The client leaves and comes back as another port: a fresh lease is found in the
    // authority when the MAC is learned again.
    own.bind(guest, Binding::lease(guest_ip, 60, 60_000), 60_000);
    own.release_port(p);
    sw.forget(guest, p);
    assert!(claim(&mut sw, &mut own, q, Some(guest_ip), 60_001).is_ok());
    assert_eq!(own.owner(guest), Some(q));
    // A NAK or release ends a lease binding; a reservation outlives it.
    own.unbind(guest);
    assert_eq!(own.binding(guest, 60_002), None);
    own.reserve(guest, guest_ip);
    own.bind(guest, Binding::lease([10, 86, 0, 99], 60, 60_002), 60_002);
    own.unbind(guest);
    assert_eq!(
        own.binding(guest, u64::MAX - 1).map(|b| b.ip),
        Some(guest_ip)
    );
}

/// One network as the engine holds it: its own replica, its own ownership authority, and the
/// reference for both; and its ports.
struct Net {
    sw: Switch,
    own: Ownership,
    model: Model,
    ports: Vec<PortId>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Three networks over one address pool (so the same MACs live in several): every decision
    /// matches its own network's reference, a frame only ever goes to a port of its network,
    /// and no network's table or ownership holds another network's port.
    #[test]
    fn networks_never_share_a_frame_or_an_address(
        ops in prop::collection::vec((0usize..3, op()), 1..300),
    ) {
        let mut nets: Vec<Net> = (0..3)
            .map(|_| Net {
                sw: Switch::new(AGEING_MS),
                own: Ownership::new(MAX_MACS),
                model: Model::default(),
                ports: Vec::new(),
            })
            .collect();
        let mut next_slot = 0u32;
        let mut now = 0u64;
        for (n, op) in ops {
            let net = &mut nets[n];
            match op {
                Op::Connect => {
                    net.ports.push(PortId::new(0, 1, next_slot));
                    next_slot += 1;
                }
                Op::Disconnect(i) => {
                    if net.ports.is_empty() { continue; }
                    let port = net.ports.remove(i % net.ports.len());
                    for m in net.own.release_port(port) {
                        net.sw.forget(m, port);
                    }
                    net.model.entries.retain(|e| e.1 != port);
                }
                Op::Frame { port, src, dst } => {
                    if net.ports.is_empty() { continue; }
                    let port = net.ports[port % net.ports.len()];
                    let got = ingress(&mut net.sw, &mut net.own, Source::Port(port), mac(dst), mac(src), now);
                    let want = net.model.frame(port, mac(src), mac(dst), now);
                    prop_assert_eq!(got.map(|d| d.forward), want);
                    if let Ok(Forward::Port(to)) = want {
                        prop_assert!(net.ports.contains(&to), "a frame stays in its network");
                    }
                }
                Op::FromUplink { dst } => {
                    let got = ingress(&mut net.sw, &mut net.own, Source::Uplink, mac(dst), mac(2), now);
                    prop_assert_eq!(got.map(|d| d.forward), net.model.uplink_frame(mac(dst)));
                    if let Ok(Forward::Port(to)) = got.map(|d| d.forward) {
                        prop_assert!(net.ports.contains(&to), "the network's TAP reaches only its ports");
                    }
                }
                Op::Advance(ms) => {
                    now += ms;
                    for net in &mut nets {
                        net.sw.expire(now, |_| true, &mut net.own);
                        net.model.expire(now);
                    }
                }
            }
            for net in &nets {
                prop_assert_eq!(net.sw.entries(), net.model.table());
                prop_assert!(net.sw.entries().iter().all(|(_, p)| net.ports.contains(p)));
                prop_assert_eq!(net.own.len(), net.model.entries.len());
            }
        }
    }
}

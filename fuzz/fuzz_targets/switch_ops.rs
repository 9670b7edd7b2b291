//! Switch operation sequences in two networks over one address pool, each network with two
//! replicas sharing its own authority (two cores), with the learn and forget messages between
//! them delivered late, in order, as the engine's mailboxes do: table bounds hold; a frame
//! never returns to its source and never reaches a port of another network; a unicast frame
//! goes up the uplink (or, from the uplink, is dropped as unknown) only when no client of its
//! network owns its destination, even when the news of its owner has not reached this
//! replica; a replica with no messages waiting agrees with its network's authority on every
//! owner.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tapwire::switch::{
    ingress, Forward, Mac, Ownership, PortId, SharedOwnership, Source, Switch, SwitchDrop,
};

const MAX_MACS: usize = 3;

#[derive(Debug, Arbitrary)]
enum Op {
    Connect { core: bool },
    Disconnect(u8),
    Frame { port: u8, src: u8, dst: u8 },
    Uplink { dst: u8 },
    Advance(u16),
    Deliver { core: bool },
}

/// One network: its authority, its replica on each core, the messages on their way to each,
/// and its ports.
struct Net {
    authority: SharedOwnership,
    replicas: [Switch; 2],
    inbox: [VecDeque<Msg>; 2],
    ports: Vec<PortId>,
    /// Every port this network ever had (a frame may still reach one that left: the engine
    /// then drops it as `port_gone`), never another network's.
    ever: Vec<PortId>,
}

/// A message from one core to the other.
enum Msg {
    Learn(Mac, PortId),
    Forget(Mac, PortId),
}

fn mac(i: u8) -> Mac {
    if i % 16 == 0 {
        Mac::BROADCAST
    } else {
        Mac([0x00, 0x22, 0x15, 0, 0, i % 24])
    }
}

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |ops: Vec<(bool, Op)>| {
    let mut nets: Vec<Net> = (0..2)
        .map(|_| Net {
            authority: SharedOwnership::new(Ownership::new(MAX_MACS)),
            replicas: [Switch::new(1000), Switch::new(1000)],
            inbox: [VecDeque::new(), VecDeque::new()],
            ports: Vec::new(),
            ever: Vec::new(),
        })
        .collect();
    let mut next = 0u32;
    let mut now = 0u64;
    for (second, op) in ops.into_iter().take(500) {
        let net = &mut nets[usize::from(second)];
        let Net {
            authority,
            replicas,
            inbox,
            ports,
            ever,
        } = net;
        let authority = &*authority;
        let owner = |m: Mac| authority.with(|own| own.owner(m));
        match op {
            Op::Connect { core } => {
                ports.push(PortId::new(usize::from(core), 1, next));
                ever.push(PortId::new(usize::from(core), 1, next));
                next += 1;
            }
            Op::Disconnect(i) => {
                if ports.is_empty() {
                    continue;
                }
                let p = ports.remove(usize::from(i) % ports.len());
                for m in authority.with(|own| own.release_port(p)) {
                    replicas[p.core()].forget(m, p);
                    inbox[1 - p.core()].push_back(Msg::Forget(m, p));
                }
            }
            Op::Frame { port, src, dst } => {
                if ports.is_empty() {
                    continue;
                }
                let p = ports[usize::from(port) % ports.len()];
                let core = p.core();
                let (dst, src) = (mac(dst), mac(src));
                match ingress(&mut replicas[core], &mut { authority }, Source::Port(p), dst, src, now) {
                    Ok(d) => {
                        match d.forward {
                            Forward::Port(to) => {
                                assert_ne!(to, p, "frame returned to its source");
                                assert!(ever.contains(&to), "frame left its network");
                                if inbox[core].is_empty() {
                                    assert_eq!(owner(dst), Some(to), "sent to a port that does not own {dst}");
                                }
                            }
                            Forward::Uplink => {
                                assert_eq!(owner(dst), None, "{dst} sent up although a client owns it");
                            }
                            Forward::Flood => assert!(dst.is_group()),
                        }
                        if let Some(m) = d.learned {
                            inbox[1 - core].push_back(Msg::Learn(m, p));
                        }
                    }
                    Err(SwitchDrop::Hairpin) => assert_eq!(owner(dst), Some(p)),
                    Err(_) => {}
                }
            }
            Op::Uplink { dst } => {
                let dst = mac(dst);
                match ingress(&mut replicas[0], &mut { authority }, Source::Uplink, dst, mac(1), now) {
                    Ok(d) => {
                        if let Forward::Port(to) = d.forward {
                            assert!(ever.contains(&to), "the network's TAP reached another network");
                            if inbox[0].is_empty() {
                                assert_eq!(owner(dst), Some(to));
                            }
                        }
                    }
                    Err(SwitchDrop::UnknownUnicast) => {
                        assert_eq!(owner(dst), None, "a frame for {dst} dropped although a client owns it");
                    }
                    Err(_) => {}
                }
            }
            Op::Advance(ms) => {
                now += u64::from(ms);
                for net in &mut nets {
                    for core in 0..2 {
                        let aged =
                            net.replicas[core].expire(now, |p| p.core() == core, &mut &net.authority);
                        for (m, p) in aged {
                            net.inbox[1 - core].push_back(Msg::Forget(m, p));
                        }
                    }
                }
            }
            Op::Deliver { core } => {
                let core = usize::from(core);
                while let Some(msg) = inbox[core].pop_front() {
                    match msg {
                        Msg::Learn(m, p) => replicas[core].learn(m, p, now),
                        Msg::Forget(m, p) => replicas[core].forget(m, p),
                    }
                }
            }
        }
        for net in &nets {
            for p in &net.ports {
                let owned = net.replicas[p.core()].entries().iter().filter(|(_, q)| q == p).count();
                assert!(owned <= MAX_MACS, "port owns {owned} MACs");
            }
            for (core, r) in net.replicas.iter().enumerate() {
                for (m, p) in r.entries() {
                    assert!(net.ever.contains(&p), "replica {core} holds {m} of another network's port");
                    if net.inbox[core].is_empty() {
                        assert_eq!(net.authority.with(|own| own.owner(m)), Some(p), "replica {core} disagrees with the authority on {m}");
                    }
                }
            }
        }
    }
});

//! Switch operation sequences on two replicas sharing one authority (two cores): table bounds
//! hold, a frame never returns to its source, and the replicas never disagree on an owner.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;
use tapwire::switch::{ingress, Forward, Mac, Ownership, PortId, Source, Switch};

const MAX_MACS: usize = 3;

#[derive(Debug, Arbitrary)]
enum Op {
    Connect { core: bool },
    Disconnect(u8),
    Frame { port: u8, src: u8, dst: u8 },
    Uplink { dst: u8 },
    Advance(u16),
}

fn mac(i: u8) -> Mac {
    if i % 16 == 0 {
        Mac::BROADCAST
    } else {
        Mac([0x00, 0x22, 0x15, 0, 0, i % 24])
    }
}

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |ops: Vec<Op>| {
    let authority = Mutex::new(Ownership::new(MAX_MACS));
    let mut replicas = [Switch::new(1000), Switch::new(1000)];
    let mut ports: Vec<PortId> = Vec::new();
    let mut next = 0u32;
    let mut now = 0u64;
    for op in ops.into_iter().take(500) {
        match op {
            Op::Connect { core } => {
                ports.push(PortId::new(usize::from(core), 1, next));
                next += 1;
            }
            Op::Disconnect(i) => {
                if ports.is_empty() {
                    continue;
                }
                let p = ports.remove(usize::from(i) % ports.len());
                for m in authority.lock().unwrap().release_port(p) {
                    for r in &mut replicas {
                        r.forget(m, p);
                    }
                }
            }
            Op::Frame { port, src, dst } => {
                if ports.is_empty() {
                    continue;
                }
                let p = ports[usize::from(port) % ports.len()];
                let core = p.core();
                if let Ok(d) = ingress(&mut replicas[core], &mut &authority, Source::Port(p), mac(dst), mac(src), now) {
                    if let Forward::Port(to) = d.forward {
                        assert_ne!(to, p, "frame returned to its source");
                    }
                    if let Some(m) = d.learned {
                        replicas[1 - core].learn(m, p, now);
                    }
                }
            }
            Op::Uplink { dst } => {
                let _ = ingress(&mut replicas[0], &mut &authority, Source::Uplink, mac(dst), mac(1), now);
            }
            Op::Advance(ms) => {
                now += u64::from(ms);
                for core in 0..2 {
                    let aged = replicas[core].expire(now, |p| p.core() == core, &mut &authority);
                    for (m, p) in aged {
                        replicas[1 - core].forget(m, p);
                    }
                }
            }
        }
        let own = authority.lock().unwrap();
        for p in &ports {
            let owned = replicas[p.core()].entries().iter().filter(|(_, q)| q == p).count();
            assert!(owned <= MAX_MACS, "port owns {owned} MACs");
        }
        for r in &replicas {
            for (m, p) in r.entries() {
                assert_eq!(own.owner(m), Some(p), "replica disagrees with the authority on {m}");
            }
        }
    }
});

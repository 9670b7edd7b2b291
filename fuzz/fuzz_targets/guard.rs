//! The anti-spoofing checks on arbitrary frames, from an arbitrary source MAC whose binding is
//! arbitrary too (none, a lease that ended or runs, a reservation): never panic; a claim names
//! the frame's own IPv4 source (or ARP sender) address; a refusal is for the kind of frame it
//! names; the switch passes a claiming frame exactly when the source's binding holds the
//! claimed address; a snooped binding names an address and a MAC that are in the reply.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tapwire::switch::guard::{inspect, snoop, GuardDrop, Snoop};
use tapwire::switch::{
    ingress_claiming, Binding, Mac, Ownership, PortId, Source, Switch, SwitchDrop,
};

#[derive(Arbitrary, Debug)]
struct Case<'a> {
    src: [u8; 6],
    lease: Option<([u8; 4], u16)>,
    reserved: Option<[u8; 4]>,
    now: u16,
    frame: &'a [u8],
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |case: Case<'_>| {
    let (src, frame, now) = (Mac(case.src), case.frame, u64::from(case.now));
    match inspect(frame, src) {
        Ok(claim) => {
            let mut own = Ownership::new(4);
            if let Some((ip, until)) = case.lease {
                own.bind(src, Binding { ip, until_ms: u64::from(until) }, 0);
            }
            if let Some(ip) = case.reserved {
                own.reserve(src, ip);
            }
            let binding = own.binding(src, now);
            let claimed = claim.address.map(|(ip, _)| ip);
            if let Some(ip) = claimed {
                let at = match ethertype(frame) {
                    0x0800 => 26,
                    0x0806 => 28,
                    t => panic!("ethertype {t:#x} claimed an address"),
                };
                assert_eq!(&frame[at..at + 4], &ip);
            }
            let mut sw = Switch::new(300_000);
            let port = PortId::new(0, 1, 0);
            let got = ingress_claiming(&mut sw, &mut own, Source::Port(port), Mac::BROADCAST, src, claimed, now);
            let bad_source = src.is_group() || src == Mac::ZERO;
            match got {
                Err(SwitchDrop::BadSourceMac) => assert!(bad_source),
                Err(SwitchDrop::Unbound) => {
                    assert!(!bad_source);
                    assert!(claimed.is_some_and(|ip| !Binding::holds(binding, ip, now)), "{binding:?} {claimed:?}");
                }
                Ok(_) => {
                    assert!(!bad_source);
                    assert!(claimed.is_none_or(|ip| Binding::holds(binding, ip, now)), "{binding:?} {claimed:?}");
                    assert_eq!(sw.lookup(src), Some(port));
                }
                Err(other) => panic!("a first frame from a free address dropped as {other:?}"),
            }
        }
        Err(drop) => {
            // A frame too short for an ethertype has nothing to check.
            assert!(frame.len() >= 14, "{drop:?} on a {}-byte frame", frame.len());
            let t = ethertype(frame);
            match drop {
                GuardDrop::VlanTagged => assert!([0x8100, 0x88A8, 0x9100].contains(&t), "{t:#x}"),
                GuardDrop::ArpSpoof => assert_eq!(t, 0x0806),
                GuardDrop::IpSpoof | GuardDrop::RogueDhcp | GuardDrop::DhcpChaddr => assert_eq!(t, 0x0800),
            }
        }
    }
    match snoop(frame) {
        Some(Snoop::Ack { mac, ip, .. }) => {
            assert_ne!(ip, [0; 4]);
            assert!(frame.windows(4).any(|w| w == ip));
            assert!(frame.windows(6).any(|w| w == mac.0));
        }
        Some(Snoop::Nak { mac }) => assert!(frame.windows(6).any(|w| w == mac.0)),
        None => {}
    }
});

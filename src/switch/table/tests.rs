//! Roaming bindings: a guest that moved here from another host of a farm keeps its address.

use super::*;

const GW: Mac = Mac([0x02, 0, 0, 0, 0, 1]);
const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xA]);
const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 0xB]);
const HOLD_MS: u64 = 3_600_000;

/// A farm range 10.96.0.10-10.96.0.254 of which this host leases 10.96.0.10-10.96.0.91.
fn roam() -> Roam {
    Roam {
        range: ([10, 96, 0, 10], [10, 96, 0, 254]),
        own: ([10, 96, 0, 10], [10, 96, 0, 91]),
        hold_ms: HOLD_MS,
    }
}

fn port(slot: u32) -> PortId {
    PortId::new(0, 1, slot)
}

fn send(
    sw: &mut Switch,
    own: &mut Ownership,
    from: PortId,
    src: Mac,
    ip: [u8; 4],
    now: u64,
) -> Result<Decision, SwitchDrop> {
    ingress_claiming(sw, own, Source::Port(from), GW, src, Some(ip), now)
}

#[test]
fn only_addresses_of_other_hosts_slices_roam() {
    let r = roam();
    assert!(r.allows([10, 96, 0, 92]));
    assert!(r.allows([10, 96, 0, 254]));
    assert!(
        !r.allows([10, 96, 0, 91]),
        "this host's own slice: only its DHCP binds"
    );
    assert!(!r.allows([10, 96, 0, 10]));
    assert!(!r.allows([10, 96, 0, 9]), "outside the range");
    assert!(!r.allows([10, 96, 1, 100]));
}

#[test]
fn a_moved_guest_is_bound_on_its_first_frame() {
    let mut sw = Switch::with_uplink(300_000, vec![GW]).roaming(Some(roam()));
    let mut own = Ownership::new(4);
    let d = send(&mut sw, &mut own, port(1), A, [10, 96, 0, 100], 10).unwrap();
    assert!(d.roamed && d.learned == Some(A));
    assert_eq!(d.forward, Forward::Uplink);
    assert_eq!(
        own.binding(A, 10),
        Some(Binding {
            ip: [10, 96, 0, 100],
            until_ms: 10 + HOLD_MS
        })
    );
    // Its next frames are an ordinary binding's.
    let d = send(&mut sw, &mut own, port(1), A, [10, 96, 0, 100], 20).unwrap();
    assert!(!d.roamed);
    // A second address is not its: one binding per MAC.
    assert_eq!(
        send(&mut sw, &mut own, port(1), A, [10, 96, 0, 101], 30),
        Err(SwitchDrop::Unbound)
    );
}

#[test]
fn a_guest_learned_without_an_address_roams_later_at_most_once_a_second() {
    let mut sw = Switch::with_uplink(300_000, vec![GW]).roaming(Some(roam()));
    let mut own = Ownership::new(4);
    // An ARP probe or IPv6 first: learned, nothing claimed.
    ingress_claiming(&mut sw, &mut own, Source::Port(port(1)), GW, A, None, 0).unwrap();
    // B holds .100 here already (it moved first).
    own.bind_roaming(B, [10, 96, 0, 100], 0, HOLD_MS).unwrap();
    assert_eq!(
        send(&mut sw, &mut own, port(1), A, [10, 96, 0, 100], 5),
        Err(SwitchDrop::Unbound)
    );
    // Within the second, the authority is not asked again: even a free address waits.
    let claims = own.claims();
    assert_eq!(
        send(&mut sw, &mut own, port(1), A, [10, 96, 0, 120], 500),
        Err(SwitchDrop::Unbound)
    );
    assert_eq!(own.binding(A, 500), None);
    assert_eq!(own.claims(), claims);
    let d = send(&mut sw, &mut own, port(1), A, [10, 96, 0, 120], 1_005).unwrap();
    assert!(d.roamed);
    assert_eq!(own.binding(A, 1_005).map(|b| b.ip), Some([10, 96, 0, 120]));
}

#[test]
fn an_address_held_here_or_of_this_hosts_slice_never_roams() {
    let mut sw = Switch::with_uplink(300_000, vec![GW]).roaming(Some(roam()));
    let mut own = Ownership::new(4);
    own.reserve(B, [10, 96, 0, 200]);
    assert_eq!(
        send(&mut sw, &mut own, port(1), A, [10, 96, 0, 200], 0),
        Err(SwitchDrop::Unbound),
        "reserved for another MAC"
    );
    assert_eq!(
        send(&mut sw, &mut own, port(1), A, [10, 96, 0, 50], 0),
        Err(SwitchDrop::Unbound),
        "this host's own slice"
    );
    // A refused first frame learns nothing and claims nothing.
    assert_eq!(sw.lookup(A), None);
    assert_eq!(own.owner(A), None);
    // Without a farm nothing roams.
    let mut alone = Switch::with_uplink(300_000, vec![GW]);
    assert_eq!(
        send(&mut alone, &mut own, port(1), A, [10, 96, 0, 150], 0),
        Err(SwitchDrop::Unbound)
    );
}

#[test]
fn a_mac_owned_by_another_port_gets_no_roaming_binding() {
    let mut sw = Switch::with_uplink(300_000, vec![GW]).roaming(Some(roam()));
    let mut own = Ownership::new(4);
    own.claim(A, port(2)).unwrap();
    assert_eq!(
        send(&mut sw, &mut own, port(1), A, [10, 96, 0, 150], 0),
        Err(SwitchDrop::MacConflict)
    );
    assert_eq!(own.binding(A, 0), None);
    assert_eq!(own.owner(A), Some(port(2)));
}

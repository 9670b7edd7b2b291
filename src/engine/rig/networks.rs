//! Networks in the engine: a client joins the network its URL names, frames never cross from
//! one network to another (nor to another network's TAP), the same MAC lives in two networks
//! at once, a connection waits while its network is made and is refused when it cannot be,
//! and a removed network's queues are closed and reported.

use super::*;
use crate::counters::DropReason;

const BROADCAST: [u8; 6] = [0xff; 6];

/// Steps until nothing more arrives, then says whether `c` got any frame.
fn got_any(rig: &mut Rig, c: &mut Client) -> bool {
    for _ in 0..20 {
        rig.step();
    }
    let mut any = false;
    while c.next_frame().is_some() {
        any = true;
    }
    any
}

/// Drains whatever each TAP stand-in of `slot` got; how many frames.
fn tap_frames(rig: &Rig, slot: u16, cores: usize) -> usize {
    let mut n = 0;
    for core in 0..cores {
        while rig.net_recv(slot, core).is_some() {
            n += 1;
        }
    }
    n
}

#[test]
fn networks_are_isolated_from_each_other_and_from_the_default_one() {
    let mut rig = Rig::new(2, &[]);
    let a = rig.add_network("a", false);
    let b = rig.add_network("b", false);
    let mut d1 = rig.client(0);
    let mut a1 = rig.client_on(0, "/n/a");
    let mut a2 = rig.client_on(1, "/n/a/");
    let mut b1 = rig.client_on(1, "/n/b?x=1");
    // The same MAC in networks a and b, and in the default network.
    let same = mac(1);
    a1.send_frame(&eth(BROADCAST, same, b"a1 hello"));
    rig.until("a1's hello reaches a2 across cores", |_| {
        a2.next_frame()
            .is_some_and(|f| f == eth(BROADCAST, same, b"a1 hello"))
    });
    b1.send_frame(&eth(BROADCAST, same, b"b1 hello"));
    rig.until("b1's hello reaches network b's TAP", |rig| {
        rig.net_recv(b.slot, 1)
            .is_some_and(|f| f == eth(BROADCAST, same, b"b1 hello"))
    });
    d1.send_frame(&eth(BROADCAST, same, b"d1 hello"));
    rig.until("d1's hello reaches the default TAP", |rig| {
        rig.host_recv(0)
            .is_some_and(|f| f == eth(BROADCAST, same, b"d1 hello"))
    });
    assert_eq!(
        rig.drops(DropReason::MacConflict),
        0,
        "one MAC, three networks"
    );
    assert!(
        !got_any(&mut rig, &mut d1),
        "nothing of a or b reaches the default network"
    );
    assert!(!got_any(&mut rig, &mut b1), "nothing of a reaches b");
    assert_eq!(
        tap_frames(&rig, a.slot, 2),
        1,
        "a1's hello only, on a's TAP"
    );
    assert_eq!(
        tap_frames(&rig, 0, 2),
        0,
        "the default TAP got d1's hello only"
    );
    assert_eq!(tap_frames(&rig, b.slot, 2), 0);

    // Unicast to `same` goes to the owner in the sender's network, across cores.
    a2.send_frame(&eth(same, mac(2), b"a2 to a1"));
    rig.until("a2's unicast reaches a1", |_| {
        a1.next_frame()
            .is_some_and(|f| f == eth(same, mac(2), b"a2 to a1"))
    });
    // A host frame on b's TAP for `same` reaches b1 only, whichever core reads it.
    let gateway = [0x02, 0xaa, 0, 0, 0, 1];
    rig.net_send(b.slot, 0, &eth(same, gateway, b"host to b1"));
    rig.until("the host's frame on b reaches b1", |_| {
        b1.next_frame()
            .is_some_and(|f| f == eth(same, gateway, b"host to b1"))
    });
    assert!(!got_any(&mut rig, &mut a1));
    assert!(!got_any(&mut rig, &mut d1));
    // Each network counted its own frames.
    let net_a = rig.shared.networks.get("a").expect("a is up");
    let [rx_frames, _, tx_frames, _, drops] = net_a.totals();
    assert_eq!((rx_frames, tx_frames, drops), (2, 2, 0));
    assert_eq!(net_a.clients.load(Ordering::Acquire), 2);
}

#[test]
fn a_connection_waits_for_its_network_and_its_early_frames_follow_it() {
    let mut rig = Rig::new(2, &[]);
    let mut c = rig.connect(1);
    let mut burst = upgrade_request("/n/lab");
    burst.extend(client_frame(2, &eth(BROADCAST, mac(1), b"early")));
    c.send_raw(&burst);
    rig.until("core 1 asks for the network", |rig| {
        rig.events().contains(&NetEvent::Wanted {
            name: "lab".into(),
            core: 1,
        })
    });
    for _ in 0..20 {
        rig.step();
    }
    assert!(!c.upgraded(), "no answer while the network is being made");
    // A second connection for the same network on the same core does not ask again.
    let mut d = rig.connect(1);
    d.send_raw(&upgrade_request("/n/lab"));
    for _ in 0..20 {
        rig.step();
    }
    assert!(rig.events().is_empty(), "asked once per core and name");
    let lab = rig.add_network("lab", false);
    rig.until("both are answered", |_| c.upgraded() && d.upgraded());
    assert_eq!(
        rig.host_expect_on(lab.slot, 1, "the early frame reaches lab's TAP"),
        eth(BROADCAST, mac(1), b"early")
    );
    // Both joined: the network is theirs (c's early frame went out before d had joined).
    c.send_frame(&eth(BROADCAST, mac(1), b"later"));
    rig.until("c's next frame reaches d", |_| {
        d.next_frame()
            .is_some_and(|f| f == eth(BROADCAST, mac(1), b"later"))
    });
    assert_eq!(rig.count(|c| c.connections_upgraded.get()), 2);
}

#[test]
fn a_network_that_cannot_be_made_or_not_in_time_is_a_503() {
    let mut rig = Rig::new(1, &[]);
    let mut refused = rig.connect(0);
    refused.send_raw(&upgrade_request("/n/full"));
    rig.until("asked for", |rig| !rig.events().is_empty());
    rig.shared.command(
        0,
        CoreCmd::Refuse {
            name: "full".into(),
            reason: DropReason::TooManyNetworks,
            response: crate::engine::unavailable_response("full", "too many"),
        },
    );
    rig.until("refused", |_| refused.refusal().is_some());
    let text = refused.refusal().unwrap();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        text.contains("network full unavailable: too many"),
        "{text}"
    );
    assert_eq!(rig.drops(DropReason::TooManyNetworks), 1);
    rig.until("the refused connection is closed", |_| refused.ended());

    let mut slow = rig.connect(0);
    slow.send_raw(&upgrade_request("/n/slow"));
    rig.until("asked for", |rig| !rig.events().is_empty());
    rig.advance(9_750);
    assert!(slow.refusal().is_none(), "still within 10 s");
    rig.advance(250);
    rig.until("refused at 10 s", |_| slow.refusal().is_some());
    assert!(slow.refusal().unwrap().starts_with("HTTP/1.1 503 "));
    assert_eq!(rig.drops(DropReason::NetworkFailed), 1);
    // The network comes after all: nobody waits for it any more.
    rig.add_network("slow", false);
    for _ in 0..10 {
        rig.step();
    }
    assert_eq!(rig.count(|c| c.connections_upgraded.get()), 0);
}

#[test]
fn a_path_under_n_that_names_no_network_is_a_400() {
    let mut rig = Rig::new(1, &[]);
    for path in ["/n/", "/n/a/b", "/n/a.b", "/n/%41"] {
        let mut c = rig.connect(0);
        c.send_raw(&upgrade_request(path));
        rig.until("refused", |_| c.refusal().is_some());
        let text = c.refusal().unwrap();
        assert!(text.starts_with("HTTP/1.1 400 "), "{path}: {text}");
    }
    assert_eq!(rig.drops(DropReason::BadNetworkPath), 4);
    assert!(
        rig.events().is_empty(),
        "nothing asked of the control thread"
    );
    // /n/default is the default network.
    let mut d = rig.client_on(0, "/n/default");
    d.send_frame(&eth(BROADCAST, mac(3), b"hi"));
    rig.host_expect(0, "the default network's TAP");
}

#[test]
fn declared_mode_refuses_a_network_nobody_declared() {
    let mut rig = Rig::new(1, &["--networks", "declared"]);
    let mut c = rig.connect(0);
    c.send_raw(&upgrade_request("/n/nope"));
    rig.until("refused", |_| c.refusal().is_some());
    assert!(c.refusal().unwrap().starts_with("HTTP/1.1 403 "));
    assert_eq!(rig.drops(DropReason::NetworkUnknown), 1);
    assert!(rig.events().is_empty());
    // A network that is up (declared) is joined.
    rig.add_network("yes", false);
    rig.client_on(0, "/n/yes");
}

#[test]
fn a_token_opens_only_the_network_it_names() {
    let dir = std::env::temp_dir().join(format!("tapwire-rig-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    let secret = b"0123456789abcdef0123456789abcdef";
    std::fs::write(&secret_file, secret).unwrap();
    let path = secret_file.to_str().unwrap().to_string();
    let mut rig = Rig::new(1, &["--token-secret", &path]);
    rig.add_network("a", false);
    rig.add_network("b", false);
    let token = |network: &str| crate::ws::access::mint(secret, u64::MAX / 2, network).unwrap();
    let mut wrong = rig.connect(0);
    wrong.send_raw(&upgrade_request(&format!("/n/b?token={}", token("a"))));
    rig.until("refused", |_| wrong.refusal().is_some());
    assert!(wrong.refusal().unwrap().starts_with("HTTP/1.1 403 "));
    let mut default_with_a = rig.connect(0);
    default_with_a.send_raw(&upgrade_request(&format!("/?token={}", token("a"))));
    rig.until("refused", |_| default_with_a.refusal().is_some());
    assert_eq!(rig.drops(DropReason::TokenWrongNetwork), 2);
    rig.client_on(0, &format!("/n/a?token={}", token("a")));
    rig.client_on(0, &format!("/?token={}", token("")));
    rig.client_on(0, &format!("/n/default?token={}", token("default")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_removed_network_closes_its_queues_and_every_core_says_so() {
    let mut rig = Rig::new(2, &[]);
    let gone = rig.add_network("gone", false);
    let mut c = rig.client_on(1, "/n/gone");
    c.send_frame(&eth(BROADCAST, mac(1), b"x"));
    rig.host_expect_on(gone.slot, 1, "the frame on gone's TAP");
    drop(c);
    rig.until("the client left", |rig| {
        rig.shared
            .networks
            .get("gone")
            .is_some_and(|n| n.clients.load(Ordering::Acquire) == 0)
    });
    let now = rig.now.load(Ordering::Acquire);
    assert!(rig.shared.networks.remove_idle("gone", now).is_some());
    for core in 0..2 {
        rig.shared.command(core, CoreCmd::Remove(gone));
    }
    let mut removed = Vec::new();
    rig.until("every core closed its queue", |rig| {
        removed.extend(rig.events());
        removed.len() == 2
    });
    removed.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        removed,
        vec![
            NetEvent::Removed { id: gone, core: 0 },
            NetEvent::Removed { id: gone, core: 1 }
        ]
    );
    // The queues are closed: the host's ends see them gone.
    for core in 0..2 {
        let mut buf = [0u8; 64];
        assert_eq!(
            rustix::io::read(&rig.taps[&gone.slot][core], &mut buf),
            Ok(0),
            "core {core}'s queue is closed"
        );
    }
    // A new connection for the name asks for it again.
    let mut again = rig.connect(0);
    again.send_raw(&upgrade_request("/n/gone"));
    rig.until("asked for again", |rig| {
        rig.events().contains(&NetEvent::Wanted {
            name: "gone".into(),
            core: 0,
        })
    });
}

#[test]
fn a_network_with_its_own_limits_refuses_the_client_beyond_them() {
    let mut rig = Rig::new(2, &[]);
    let limits = crate::config::NetLimits {
        max_clients: Some(1),
        client_broadcast_pps: Some(1),
        ..Default::default()
    };
    rig.add_network_with("small", false, limits);
    let mut first = rig.client_on(0, "/n/small");
    let mut second = rig.connect(1);
    second.send_raw(&upgrade_request("/n/small"));
    rig.until("the second is refused", |_| second.refusal().is_some());
    assert!(second.refusal().unwrap().starts_with("HTTP/1.1 503 "));
    assert_eq!(rig.drops(DropReason::NetworkFull), 1);
    // The network's broadcast limit (1/s, a burst of 1) holds the first client, not the relay's
    // (none).
    for i in 0..3u8 {
        first.send_frame(&eth(BROADCAST, mac(1), &[i; 20]));
    }
    rig.until("the rate limit counted", |rig| {
        rig.drops(DropReason::RateLimited) >= 2
    });
    // The first one leaves; the room comes back.
    drop(first);
    rig.until("the first left", |rig| {
        rig.shared
            .networks
            .get("small")
            .is_some_and(|n| n.clients.load(Ordering::Acquire) == 0)
    });
    rig.client_on(1, "/n/small");
}

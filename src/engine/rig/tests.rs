//! Engine behaviour that needs no kernel feature but io_uring and sockets: framing, flooding,
//! pings and pong timeouts, partial frames, slow readers, handshake deadlines, churn, limits
//! and cross-core delivery, with time advanced by the test.

use super::*;
use crate::counters::DropReason;

const BROADCAST: [u8; 6] = [0xff; 6];

/// A client on `core` whose MAC `m` every core has learned.
fn guest(rig: &mut Rig, core: usize, m: [u8; 6]) -> Client {
    let mut c = rig.client(core);
    c.send_frame(&eth(BROADCAST, m, b"hello"));
    rig.host_expect(core, "the guest's hello reaches the TAP");
    c
}

/// `mac(1)` on core 0 and `mac(2)` on core 1, every core knowing both, nothing unread.
fn guests_on_two_cores(rig: &mut Rig) -> (Client, Client) {
    let mut a = guest(rig, 0, mac(1));
    let mut b = guest(rig, 1, mac(2));
    rig.until("b's hello reaches a", |_| a.next_frame().is_some());
    while b.next_frame().is_some() {}
    (a, b)
}

#[test]
fn frames_pipelined_behind_the_upgrade_all_reach_the_tap() {
    let mut rig = Rig::new(1, &[]);
    let mut c = rig.connect(0);
    let mut burst = UPGRADE.to_vec();
    for i in 0..3u8 {
        burst.extend(client_frame(2, &eth(BROADCAST, mac(1), &[i; 50])));
    }
    c.send_raw(&burst);
    for i in 0..3u8 {
        let f = rig.host_expect(0, "a pipelined frame");
        assert_eq!(f, eth(BROADCAST, mac(1), &[i; 50]));
    }
    assert!(c.upgraded());
}

#[test]
fn host_unicast_reaches_its_guest_only_and_broadcast_reaches_everyone_but_its_sender() {
    let mut rig = Rig::new(1, &[]);
    let mut a = guest(&mut rig, 0, mac(1));
    let mut b = guest(&mut rig, 0, mac(2));
    // Each saw the other's hello (a flood).
    rig.until("b's hello reaches a", |_| a.next_frame().is_some());
    let gateway = [0x02, 0xaa, 0, 0, 0, 1];
    rig.host_send(0, &eth(mac(2), gateway, b"for b"));
    rig.until("the host's frame reaches b", |_| {
        b.next_frame()
            .is_some_and(|f| f == eth(mac(2), gateway, b"for b"))
    });
    a.send_frame(&eth(BROADCAST, mac(1), b"to all"));
    rig.until("a's broadcast reaches b", |_| b.next_frame().is_some());
    assert_eq!(
        rig.host_expect(0, "a's broadcast reaches the TAP"),
        eth(BROADCAST, mac(1), b"to all")
    );
    for _ in 0..20 {
        rig.step();
    }
    assert_eq!(
        a.next_frame(),
        None,
        "nothing for a, and not its own broadcast"
    );
    // A host frame for an address nobody owns is dropped, not flooded.
    rig.host_send(0, &eth(mac(9), gateway, b"nobody"));
    rig.until("the unknown unicast is counted", |rig| {
        rig.drops(DropReason::UnknownUnicast) == 1
    });
    assert_eq!(b.next_frame(), None);
}

#[test]
fn pings_are_answered_and_a_client_that_never_pongs_is_closed_after_two_intervals() {
    let mut rig = Rig::new(1, &["--ping-interval", "30s"]);
    let mut c = rig.client(0);
    c.send_raw(&client_frame(9, b"are you there"));
    rig.until("the pong", |_| {
        c.next() == Some(Got::Pong(b"are you there".to_vec()))
    });
    // 29.9 s idle: nothing; 30 s: a ping; 30 s more without a pong: closed with 1001.
    rig.advance(29_900);
    rig.step();
    assert_eq!(c.next(), None);
    rig.advance(100);
    rig.until("the keep-alive ping", |_| {
        matches!(c.next(), Some(Got::Ping(_)))
    });
    rig.advance(29_999);
    rig.step();
    assert_eq!(c.next(), None, "no close before the second interval ends");
    rig.advance(1);
    rig.until("the close for no pong", |_| {
        c.next() == Some(Got::Close(Some(1001)))
    });
    assert_eq!(rig.drops(DropReason::PongTimeout), 1);
    rig.until("the connection ends", |_| c.ended());
}

#[test]
fn a_client_that_answers_pings_stays() {
    let mut rig = Rig::new(1, &["--ping-interval", "30s"]);
    let mut c = rig.client(0);
    for _ in 0..5 {
        rig.advance(30_000);
        let mut ping = None;
        rig.until("a ping", |_| match c.next() {
            Some(Got::Ping(p)) => {
                ping = Some(p);
                true
            }
            _ => false,
        });
        c.send_raw(&client_frame(10, &ping.expect("ping")));
        rig.step();
    }
    assert_eq!(rig.drops(DropReason::PongTimeout), 0);
    assert!(!c.ended());
}

#[test]
fn a_frame_left_half_sent_is_closed_1008_at_the_frame_timeout() {
    let mut rig = Rig::new(1, &["--frame-timeout", "10s", "--ping-interval", "0"]);
    let mut c = rig.client(0);
    let whole = client_frame(2, &eth(BROADCAST, mac(1), &[7; 100]));
    c.send_raw(&whole[..40]);
    for _ in 0..10 {
        rig.step();
    }
    rig.advance(9_999);
    // A close queued by the tick goes out in the next pass: give it one.
    rig.step();
    assert_eq!(c.next(), None, "not before the timeout");
    rig.advance(1);
    rig.until("the close", |_| c.next() == Some(Got::Close(Some(1008))));
    assert_eq!(rig.drops(DropReason::FrameTimeout), 1);
}

#[test]
fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let mut rig = Rig::new(1, &["--handshake-timeout", "10s"]);
    let mut c = rig.connect(0);
    c.send_raw(b"GET / HTTP/1.1\r\n");
    rig.until("accepted", |rig| {
        rig.count(|c| c.connections_accepted.get()) == 1
    });
    rig.advance(9_999);
    assert!(!c.ended());
    rig.advance(1);
    rig.until("the connection ends", |_| c.ended());
    assert_eq!(rig.drops(DropReason::HandshakeTimeout), 1);
}

#[test]
fn a_client_that_stops_reading_is_shut_down_and_the_others_are_served() {
    let mut rig = Rig::new(1, &["--slow-client-timeout", "10s", "--ping-interval", "0"]);
    let stuck = guest(&mut rig, 0, mac(1));
    stuck.stream.set_nonblocking(true).expect("nonblocking");
    let mut other = guest(&mut rig, 0, mac(2));
    let gateway = [0x02, 0xaa, 0, 0, 0, 1];
    // The host sends to the stuck guest until its socket and queue are full.
    for _ in 0..4_000 {
        rig.host_send(0, &eth(mac(1), gateway, &[1; 1400]));
        rig.step();
        if rig.drops(DropReason::SendQueueFull) > 0 {
            break;
        }
    }
    assert!(
        rig.drops(DropReason::SendQueueFull) > 0,
        "the queue never filled"
    );
    // The other guest is still served at once.
    while other.next_frame().is_some() {}
    rig.host_send(0, &eth(mac(2), gateway, b"still here"));
    rig.until("the other guest's frame", |_| other.next_frame().is_some());
    // Its output stalled at 0 ms on the clock.
    rig.advance(9_999);
    rig.step();
    assert_eq!(
        rig.drops(DropReason::SlowClient),
        0,
        "not before the timeout"
    );
    rig.advance(1);
    rig.until("the stuck guest is shut down", |rig| {
        rig.drops(DropReason::SlowClient) == 1
    });
    rig.until("its slot is freed", |rig| {
        rig.count(|c| c.connections_closed.get()) == 1
    });
    drop(stuck);
}

#[test]
fn connections_reset_at_every_stage_are_freed() {
    let mut rig = Rig::new(1, &[]);
    for i in 0..60 {
        let mut c = rig.connect(0);
        match i % 3 {
            0 => c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            1 => {
                c.send_raw(UPGRADE);
                rig.until("upgraded", |_| c.upgraded());
                c.send_raw(&client_frame(2, &eth(BROADCAST, mac(1), &[0; 60]))[..20]);
            }
            _ => {
                c.send_raw(UPGRADE);
                rig.until("upgraded", |_| c.upgraded());
            }
        }
        for _ in 0..3 {
            rig.step();
        }
        // Reset (RST, not FIN): linger 0.
        let s = socket2::SockRef::from(&c.stream);
        s.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(c);
    }
    rig.until("every connection freed", |rig| {
        rig.count(|c| c.connections_closed.get()) == 60
    });
    assert_eq!(rig.count(|c| c.clients_open.get()), 0);
    // And the core still serves.
    let mut c = rig.client(0);
    c.send_raw(&client_frame(9, b"x"));
    rig.until("a pong", |_| matches!(c.next(), Some(Got::Pong(_))));
}

#[test]
fn clients_over_max_clients_get_503() {
    let mut rig = Rig::new(1, &["--max-clients", "2"]);
    let _a = rig.client(0);
    let _b = rig.client(0);
    let mut c = rig.connect(0);
    c.send_raw(UPGRADE);
    let mut head = Vec::new();
    rig.until("the refusal", |_| {
        let mut buf = [0u8; 512];
        if let Ok(n) = c.stream.read(&mut buf) {
            head.extend_from_slice(&buf[..n]);
        }
        head.windows(4).any(|w| w == b"\r\n\r\n")
    });
    assert!(
        head.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(rig.drops(DropReason::TooManyClients), 1);
}

#[test]
fn a_frame_crosses_cores_to_a_guest_learned_on_the_other() {
    let mut rig = Rig::new(2, &[]);
    let (mut a, mut b) = guests_on_two_cores(&mut rig);
    a.send_frame(&eth(mac(2), mac(1), b"across"));
    rig.until("the frame reaches b on the other core", |_| {
        b.next_frame()
            .is_some_and(|f| f == eth(mac(2), mac(1), b"across"))
    });
    assert!(rig.count(|c| c.cross_core_frames.get()) >= 1);
    // A guest core 1 has just learned, before core 0 has read the news: core 1 takes its
    // first frame (its message to core 0 is still unsent: a core sends its messages at the
    // start of its next pass), then core 0 switches a frame to it and must ask the authority.
    let mut c = rig.connect(1);
    c.send_raw(UPGRADE);
    rig.until("c upgraded", |_| c.upgraded());
    c.send_frame(&eth(BROADCAST, mac(3), b"new"));
    let newcomer = crate::switch::Mac(mac(3));
    for _ in 0..MAX_STEPS {
        if rig
            .shared
            .default_net
            .authority
            .with(|o| o.owner(newcomer))
            .is_some()
        {
            break;
        }
        rig.step_core(1);
    }
    a.send_frame(&eth(mac(3), mac(1), b"to the newcomer"));
    rig.step_core(0);
    rig.until("the frame reaches the newcomer", |_| {
        std::iter::from_fn(|| c.next_frame()).any(|f| f == eth(mac(3), mac(1), b"to the newcomer"))
    });
}

#[test]
fn a_wss_client_upgrades_and_frames_cross_both_ways() {
    let dir = std::env::temp_dir().join(format!("tapwire-rig-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = tapwire_testkit::tls::self_signed(&dir, "rig", &["127.0.0.1"]).expect("certificate");
    let (cert, key) = (
        pem.cert.display().to_string(),
        pem.key.display().to_string(),
    );
    let mut rig = Rig::new(
        1,
        &[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let url = format!("wss://{}/", rig.tls_ports[0]);
    let gateway = [0x02, 0xaa, 0, 0, 0, 1];
    // The client blocks in its own thread; the test's thread drives the worker meanwhile.
    let client = std::thread::spawn(move || {
        let stream = tapwire_testkit::ws::connect_tls(&url, &pem.cert, None)?;
        let mut ws = tapwire_testkit::ws::WsClient::new(stream);
        ws.send_frame(&eth(BROADCAST, mac(5), b"over tls"));
        ws.recv_frame(Duration::from_secs(20))
            .ok_or_else(|| std::io::Error::other("no frame from the host"))
    });
    let from_client = rig.host_expect(0, "the wss:// client's frame reaches the TAP");
    assert_eq!(from_client, eth(BROADCAST, mac(5), b"over tls"));
    rig.host_send(0, &eth(mac(5), gateway, b"back over tls"));
    rig.until("the client has its frame", |_| client.is_finished());
    let got = client
        .join()
        .expect("client thread")
        .expect("wss:// client");
    assert_eq!(got, eth(mac(5), gateway, b"back over tls"));
    assert_eq!(rig.count(|c| c.tls_handshakes.get()), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_core_that_falls_behind_holds_the_senders_input_back_without_running_out_of_buffers() {
    let mut rig = Rig::new(2, &[]);
    let (mut a, mut b) = guests_on_two_cores(&mut rig);
    const FRAMES: u16 = 3_000;
    let burst: Vec<u8> = (0..FRAMES)
        .flat_map(|i| client_frame(2, &eth(mac(2), mac(1), &i.to_be_bytes())))
        .collect();
    a.send_raw(&burst);
    // Core 1 does not run: its inbox fills, and core 0 holds a's input back.
    for _ in 0..200 {
        rig.step_core(0);
    }
    assert!(
        rig.count(|c| c.input_held.get()) > 0,
        "core 0 never held input"
    );
    assert!(
        rig.count(|c| c.cross_core_frames.get()) < u64::from(FRAMES),
        "everything crossed at once"
    );
    // Both run. Core 1 finds more frames for b than b's send queue takes (1 024): those are
    // dropped as a full send queue, as for any client that falls behind; none for want of a
    // buffer or of room between the cores, and what arrives is in order.
    let mut seen: Vec<u16> = Vec::new();
    rig.until("every frame delivered or counted", |rig| {
        while let Some(f) = b.next_frame() {
            seen.push(u16::from_be_bytes([f[14], f[15]]));
        }
        seen.len() as u64 + rig.drops(DropReason::SendQueueFull) == u64::from(FRAMES)
    });
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(seen.len() >= 1_024, "only {} arrived", seen.len());
    for reason in DropReason::ALL
        .iter()
        .filter(|r| **r != DropReason::SendQueueFull)
    {
        assert_eq!(rig.drops(*reason), 0, "{}", reason.label());
    }
}

#[test]
fn frames_pipelined_behind_the_upgrade_reach_another_client_whole_also_behind_a_7_kib_head() {
    let mut rig = Rig::new(1, &[]);
    let rx = mac(0x41);
    let mut receiver = guest(&mut rig, 0, rx);
    for (round, (pad, count)) in [(0, 20), (7_000, 2), (7_000, 20)].into_iter().enumerate() {
        let tx = mac(0x50 + round as u8);
        let head = String::from_utf8(UPGRADE.to_vec())
            .expect("ascii")
            .replacen(
                "\r\n\r\n",
                &format!("\r\nX-Pad: {}\r\n\r\n", "p".repeat(pad)),
                1,
            );
        let mut bytes = head.into_bytes();
        for i in 0..count {
            let mut payload = vec![i as u8; 1500];
            payload[0] = round as u8;
            bytes.extend(client_frame(2, &eth(rx, tx, &payload)));
        }
        let mut sender = rig.connect(0);
        sender.send_raw(&bytes);
        let mut got = Vec::new();
        rig.until("every pipelined frame reaches the receiver", |_| {
            got.extend(std::iter::from_fn(|| receiver.next_frame()).filter(|f| f[6..12] == tx));
            got.len() >= count
        });
        assert_eq!(got.len(), count, "round {round}");
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.len(), 1514, "round {round} frame {i}");
            assert_eq!(f[14], round as u8);
            assert!(
                f[15..].iter().all(|b| *b == i as u8),
                "round {round}: frame {i} corrupted"
            );
        }
        assert!(sender.upgraded());
        assert_eq!(
            sender.next(),
            None,
            "round {round}: the sender is left open and sent nothing"
        );
    }
    for reason in DropReason::ALL {
        assert_eq!(rig.drops(*reason), 0, "{}", reason.label());
    }
}

//! Two cores: cross-core overload is held back, and TAP steering puts host frames on the
//! guest's core.

use std::time::{Duration, Instant};

use super::harness::*;

#[test]
fn cross_core_overload_is_held_back_not_dropped_for_want_of_buffers() {
    if skip_unless_root("cross_core_overload_is_held_back_not_dropped_for_want_of_buffers") {
        return;
    }
    let relay = Relay::start(&[]);
    // 8 pairs each way: senders on one core, their receivers on the other.
    let pairs = 8u8;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..pairs * 2 {
        let (send_core, recv_core) = if i < pairs { (0, 1) } else { (1, 0) };
        let mut r = relay.client(Some(source_port_for_core(recv_core)));
        r.send_frame(&eth(BROADCAST, mac(100 + i), b"claim"));
        receivers.push(r);
        senders.push((i, relay.client(Some(source_port_for_core(send_core)))));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = receivers
        .into_iter()
        .map(|mut r| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = 0u64;
                r.stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = std::io::Read::read(&mut r.stream, &mut buf) {
                        got += n as u64;
                    }
                }
                got
            })
        })
        .collect();
    // Each sender: 64-byte frames in bursts of 512, for at most 3 s or 400 bursts.
    let writers: Vec<_> = senders
        .into_iter()
        .map(|(i, mut s)| {
            let frame =
                tapwire_testkit::ws::client_frame(2, &eth(mac(100 + i), mac(150 + i), &[0; 50]));
            let burst = frame.repeat(512);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(3);
                for _ in 0..400 {
                    if Instant::now() > deadline
                        || std::io::Write::write_all(&mut s.stream, &burst).is_err()
                    {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let _senders: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got: Vec<u64> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    let c = relay.counters();
    println!("bytes per receiver {got:?}; counters {c:?}");
    assert!(
        got.iter().all(|&b| b > 0),
        "every receiver got frames: {got:?}"
    );
    assert!(
        c.get("tapwire_cross_core_frames_total") > 100_000,
        "the load crossed cores: {c:?}"
    );
    assert_eq!(
        c.drops("no_frame_buffer"),
        0,
        "an overloaded core must hold its clients back, not run out of frame buffers: {c:?}"
    );
    assert_eq!(c.drops("cross_core_full"), 0, "{c:?}");
    assert!(
        c.get("tapwire_input_held_total") > 0,
        "the overloaded cores held their clients' input back: {c:?}"
    );
}

#[test]
fn host_frames_reach_each_guest_on_its_own_core() {
    if skip_unless_root("host_frames_reach_each_guest_on_its_own_core") {
        return;
    }
    // A deep send queue: the 400-frame bursts below must not meet the per-client limit.
    // No IPv6 on the host side: its own neighbour discovery and MLD would be flooded to both
    // cores' guests, and be hand-offs that are not the steered traffic's.
    let ns = netns("twr");
    exec_ok(
        &ns,
        &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
    );
    exec_ok(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    let relay = Relay::launch_in(ns, &[], None, None, &["--no-dhcp", "--send-queue", "2048"]);
    assert!(
        !relay.proc().log_text().contains("cannot steer TAP queues"),
        "{}",
        relay.proc().log_text()
    );
    // One guest per core; each announces its MAC, and the host knows its address statically.
    let mut guests = Vec::new();
    for core in 0..2u8 {
        let mut g = relay.client(Some(source_port_for_core(usize::from(core))));
        g.send_frame(&eth(BROADCAST, mac(60 + core), b"hello"));
        relay.static_neighbour(&format!("10.86.3.{}", core + 1), mac(60 + core));
        guests.push(g);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = relay.counters();
    // 8 flows per guest (different source ports), 50 datagrams each: a flow hash alone would
    // put some of them on the other core's queue.
    relay.ns.enter(|| {
        for port in 0..8u16 {
            let s = std::net::UdpSocket::bind(("10.86.0.1", 41_000 + port)).expect("udp");
            for core in 0..2 {
                for _ in 0..50 {
                    s.send_to(b"steered", (format!("10.86.3.{}", core + 1).as_str(), 9))
                        .expect("send");
                }
            }
        }
    });
    for (core, g) in guests.iter_mut().enumerate() {
        let mut got = 0;
        while let Some(f) = g.recv_frame(Duration::from_secs(2)) {
            if f.ends_with(b"steered") && f[..6] == mac(60 + core as u8) {
                got += 1;
                if got == 400 {
                    break;
                }
            }
        }
        assert_eq!(
            got,
            400,
            "guest on core {core} got every datagram: {:?}",
            relay.counters()
        );
    }
    let after = relay.counters();
    // Per-core series are left out while zero.
    let delta = |name: &str| after.get_or_zero(name) - before.get_or_zero(name);
    let crossed = delta("tapwire_cross_core_frames_total");
    let read0 = delta("tapwire_tap_rx_frames_total{core=\"0\"}");
    let read1 = delta("tapwire_tap_rx_frames_total{core=\"1\"}");
    println!("TAP reads per core {read0}/{read1}, cross-core frames {crossed}");
    assert_eq!(
        (read0, read1),
        (400, 400),
        "each core read its own guest's frames from the TAP, and nothing else came"
    );
    assert_eq!(crossed, 0, "host → guest frames do not cross cores");
}

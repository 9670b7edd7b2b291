//! The spanning rows of group `farm`: guest → guest in a spanning network on one host and
//! across two over VXLAN, next to the kernel alone on the across path; round trips of both.

use super::*;

/// Guest numbers of the spanning rows, new for every connection (a MAC just released is not
/// taken again at once).
static NEXT_GUEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(3000);

fn next_guest() -> usize {
    NEXT_GUEST.fetch_add(1, Ordering::Relaxed)
}

/// A source port, new each time, that a two-core relay puts on `core`.
fn port_on(core: usize) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 40_000 + (std::process::id() % 5_000) as u16 * 4;
    loop {
        let p = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) % 10_000);
        if tapwire::control::listen::steer(p, 2) == core {
            return p;
        }
    }
}

fn span_sample(rig: &Rig, size: usize, to: usize, seconds: f64) -> (Sample, Drops) {
    let name = "spanb";
    let subnet = subnet_of(name);
    let (a, b) = (next_guest(), next_guest());
    let (mac_a, mac_b) = (guest_mac(a), guest_mac(b));
    let (ip_a, ip_b) = (address(&subnet, a - 3000), address(&subnet, b - 3000));
    // The sender on relay core 0, the receiver on core 1 (of its host's relay), as in g2g.
    let sender = rig.direct_from(0, name, Some(port_on(0)));
    let mut receiver = rig.direct_from(to, name, Some(port_on(1)));
    // The receiver announces itself (a broadcast crosses the overlay, so the sender's host
    // learns where it is).
    let hello = udp_frame([0xFF; 6], mac_b, (ip_b, 1), (Ipv4Addr::BROADCAST, 7), 64);
    receiver
        .write_all(&tapwire_testkit::ws::client_frame(frame::OP_BINARY, &hello))
        .expect("hello");
    std::thread::sleep(Duration::from_millis(300));
    let f = udp_frame(mac_b, mac_a, (ip_a, 1000), (ip_b, 9), size);
    let batch = tapwire_testkit::ws::client_frame(frame::OP_BINARY, &f).repeat(64);
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, st2) = (received.clone(), stop.clone());
    let rx = spawn_in(&rig.hosts[to], LOAD_CPU, move || {
        let mut rs = vec![receiver];
        receive_loop(&mut rs, &st2, &r2);
    });
    let st3 = stop.clone();
    // The sender beside the relays (as in g2g): a sender beside the receiver would take the
    // CPU the receiver needs, and the relays would drop for a full client queue.
    let tx = spawn_in(&rig.hosts[0], RELAY_CPU, move || {
        let mut s = sender;
        while !st3.load(Ordering::Relaxed) {
            let _ = s.write_all(&batch);
        }
    });
    let pids: Vec<u32> = rig.relays.iter().flatten().map(Relay::pid).collect();
    let ticks = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let drops = || {
        let mut all = Drops::new();
        for r in rig.relays.iter().flatten() {
            for (k, v) in r.live_drops() {
                *all.entry(k).or_default() += v;
            }
        }
        all
    };
    std::thread::sleep(Duration::from_millis(300));
    // Drops are counted over the window only (not the warm-up, not the teardown).
    let (before, kernel_before) = (drops(), kernel_drops(rig));
    let (r0, c0, t0) = (received.load(Ordering::Relaxed), ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (r1, c1, dt) = (
        received.load(Ordering::Relaxed),
        ticks(),
        t0.elapsed().as_secs_f64(),
    );
    let mut dropped = delta(drops(), &before);
    dropped.extend(delta(kernel_drops(rig), &kernel_before));
    stop.store(true, Ordering::Relaxed);
    drop(tx.join());
    drop(rx.join());
    (Sample::delivered((r1 - r0) as f64, dt, c1 - c0), dropped)
}

/// Frames the kernel dropped on the links of the relays' namespaces (receive and transmit,
/// from /proc/net/dev), by the link's role: a spanning network's TAP, bridge or VXLAN device,
/// or the underlay.
fn kernel_drops(rig: &Rig) -> Drops {
    let mut all = Drops::new();
    // Packets dropped because a CPU's input backlog was full (/proc/net/softnet_stat, second
    // column, all CPUs: the machine's, not only these namespaces').
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let backlog: u64 = softnet
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum();
    all.insert("kernel backlog".into(), backlog);
    for (ns, relay) in rig.hosts.iter().zip(&rig.relays) {
        let Some(relay) = relay else { continue };
        let tap = relay.tap.clone();
        let text =
            ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default());
        for line in text.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 12 {
                continue;
            }
            let role = match name
                .strip_prefix(tap.as_str())
                .and_then(|r| r.chars().next())
            {
                _ if name == "ul0" => "underlay",
                Some('t') => "TAP",
                Some('n') => "bridge",
                Some('x') => "VXLAN",
                _ => continue,
            };
            for (dir, n) in [("rx", v[3]), ("tx", v[11])] {
                *all.entry(format!("kernel {role} {dir}")).or_default() += n;
            }
        }
    }
    all
}

/// What `after` counted beyond `before`, non-zero only.
fn delta(mut after: Drops, before: &Drops) -> Drops {
    for (k, v) in before {
        if let Some(now) = after.get_mut(k) {
            *now -= v;
        }
    }
    after.retain(|_, v| *v > 0);
    after
}

/// Round trips of ICMP echoes of `size` bytes from a guest on host 0 to one on host `to`,
/// which answers them: p50 and p99 in µs.
fn span_rtt(rig: &Rig, size: usize, to: usize) -> (f64, f64) {
    let name = "spanb";
    let subnet = subnet_of(name);
    let (ga, gb) = (next_guest(), next_guest());
    let (mac_a, mac_b) = (guest_mac(ga), guest_mac(gb));
    let (ip_a, ip_b) = (address(&subnet, ga - 3000), address(&subnet, gb - 3000));
    let mut a = WsClient::new(rig.direct_from(0, name, Some(port_on(0))));
    let mut b = WsClient::new(rig.direct_from(to, name, Some(port_on(1))));
    let hello = udp_frame([0xFF; 6], mac_b, (ip_b, 1), (Ipv4Addr::BROADCAST, 7), 64);
    b.send_frame(&hello);
    std::thread::sleep(Duration::from_millis(300));
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let answerer = spawn_in(&rig.hosts[to], LOAD_CPU, move || {
        while !st.load(Ordering::Relaxed) {
            if let Some(f) = b.recv_frame(Duration::from_millis(50)) {
                if let Some(reply) = packet::echo_reply_to(&f, mac_b, ip_b) {
                    b.send_frame(&reply);
                }
            }
        }
    });
    let data = size.saturating_sub(42).max(8);
    let rtts = spawn_in(&rig.hosts[0], LOAD_CPU, move || {
        let mut rtts = Vec::with_capacity(ECHOES);
        for seq in 0..ECHOES as u16 {
            let sent = Instant::now();
            a.send_frame(&packet::icmp_echo_data(
                (mac_b, mac_a),
                ip_a,
                ip_b,
                (0x99, seq),
                &vec![0x5a; data],
            ));
            let deadline = sent + Duration::from_millis(200);
            while let Some(f) = a.recv_frame(deadline.saturating_duration_since(Instant::now())) {
                if packet::icmp_echo_reply(&f).is_some_and(|(_, s, _)| s == seq) {
                    rtts.push(sent.elapsed().as_secs_f64() * 1e6);
                    break;
                }
            }
            std::thread::sleep(ECHO_GAP);
        }
        rtts
    })
    .join()
    .expect("pinger");
    stop.store(true, Ordering::Relaxed);
    drop(answerer.join());
    let mut rtts = rtts;
    assert!(
        rtts.len() > ECHOES / 2,
        "{} of {ECHOES} echoes answered",
        rtts.len()
    );
    (percentile(&mut rtts, 0.5), percentile(&mut rtts, 0.99))
}

/// The kernel alone on the path a frame across hosts takes: a thread writing to a TAP on
/// host 0's bridge of the spanning network, through VXLAN, to a TAP on host 1's bridge read
/// by another thread (writer on `RELAY_CPU`, reader on `LOAD_CPU`, as the relays' sender and
/// receiver): frames/s read.
fn kernel_span(rig: &Rig, size: usize, seconds: f64) -> f64 {
    let open = |i: usize| {
        let ns = &rig.hosts[i];
        let bridge = format!("{}n1", rig.relays[i].as_ref().expect("relay").tap);
        let name = tapwire_testkit::netns::unique("twk");
        let n2 = name.clone();
        let fd = ns.enter(move || tapwire::tap::open_single(&n2, false).expect("tap"));
        sh(ns, &["ip", "link", "set", &name, "master", &bridge]);
        sh(ns, &["ip", "link", "set", &name, "up"]);
        fd
    };
    let (writer, reader) = (open(0), open(1));
    let (mac_a, mac_b) = (guest_mac(next_guest()), guest_mac(next_guest()));
    let subnet = subnet_of("spanb");
    let (ip_a, ip_b) = (address(&subnet, 200), address(&subnet, 201));
    let hello = udp_frame([0xFF; 6], mac_b, (ip_b, 1), (Ipv4Addr::BROADCAST, 7), 64);
    let (w, r) = (writer.as_raw_fd(), reader.as_raw_fd());
    // SAFETY: writing our frame to the TAP descriptor kept open by `reader`.
    unsafe { libc::write(r, hello.as_ptr().cast(), hello.len()) };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(r, libc::F_SETFL, libc::O_RDWR | libc::O_NONBLOCK) };
    let frame = udp_frame(mac_b, mac_a, (ip_a, 1000), (ip_b, 9), size);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let writes = spawn_in(&rig.hosts[0], RELAY_CPU, move || {
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..64 {
                // SAFETY: writing our frame buffer to the TAP descriptor kept open by `writer`.
                unsafe { libc::write(w, frame.as_ptr().cast(), frame.len()) };
            }
        }
    });
    let reads = spawn_in(&rig.hosts[1], LOAD_CPU, move || {
        let mut buf = vec![0u8; 65_600];
        std::thread::sleep(Duration::from_millis(200));
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut n = 0u64;
        while Instant::now() < end {
            // SAFETY: reading into our buffer from the TAP descriptor kept open by `reader`.
            if unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
                n += 1;
            }
        }
        n
    })
    .join()
    .expect("reader");
    stop.store(true, Ordering::Relaxed);
    drop(writes.join());
    drop((writer, reader));
    reads as f64 / seconds
}

/// Spanning rows and round trips: hosts 0 and 1 span every network to each other.
pub(super) fn run(ctx: &Ctx, rig: &mut Rig, table: &mut Table, result: &mut FarmResult) {
    let peers = format!("{},{}", HOST_IPS[0], HOST_IPS[1]);
    for i in 0..2 {
        rig.start_relay(
            i,
            (false, true),
            &[
                "--allow-spoofing",
                "--span-peers",
                &peers,
                "--span-dev",
                "ul0",
            ],
        );
    }
    // The network on both hosts, with the subnet the bench computes.
    for i in 0..2 {
        drop(rig.direct(i, "spanb"));
        rig.expect_subnet(i, "spanb", &subnet_of("spanb"));
    }
    for size in sizes(ctx) {
        let (mut one, mut across) = (Vec::new(), Vec::new());
        let (mut one_drops, mut across_drops) = (Drops::new(), Drops::new());
        for rep in 0..ctx.opts.reps {
            for to in [rep % 2, 1 - rep % 2] {
                let (s, d) = span_sample(rig, size, to, ctx.opts.seconds);
                let (samples, drops) = if to == 0 {
                    (&mut one, &mut one_drops)
                } else {
                    (&mut across, &mut across_drops)
                };
                samples.push(s);
                for (k, v) in d {
                    *drops.entry(k).or_default() += v;
                }
            }
        }
        let kernel: Vec<f64> = (0..ctx.opts.reps)
            .map(|_| kernel_span(rig, size, ctx.opts.seconds))
            .collect();
        let kernel_row = Row {
            scenario: "kernel_span".into(),
            size,
            count: Some(1),
            fps: stat(&kernel),
            ..Row::default()
        };
        let one_row = Row::measured("span_one_host", size, 1, &one, one_drops);
        let across_row = Row {
            reference_fps: Some(kernel_row.fps.median),
            ..Row::measured("span_across_hosts", size, 1, &across, across_drops)
        };
        for row in [one_row, across_row, kernel_row] {
            progress(&row);
            table.rows.push(row);
        }
        let (p50, p99) = span_rtt(rig, size, 0);
        result.span_rtt_one_host.push((size, p50, p99));
        let (p50, p99) = span_rtt(rig, size, 1);
        result.span_rtt_across.push((size, p50, p99));
    }
    rig.stop_relays();
}

//! Networks that span the hosts of a farm over kernel VXLAN: guests of one network on two
//! hosts share one segment, the gateway stays on each host, and an underlay too small for a
//! guest frame is refused at start.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tapwire_testkit::packet;

use super::farm_rig::*;
use super::harness::*;

/// Every host spans every network to the whole farm (its own address is skipped).
pub(super) const SPAN: [&str; 4] = [
    "--span-peers",
    "10.250.0.11,10.250.0.12,10.250.0.13",
    "--span-dev",
    "ul0",
];
pub(super) const NETWORK: &str = "span1";
const HTTP_PORT: u16 = 8000;

/// A connection straight to host `i` (not through the balancer) to the spanning network.
pub(super) fn direct(farm: &Farm, i: usize) -> WsClient {
    let url = format!("ws://127.0.0.1:8086/n/{NETWORK}");
    WsClient::new(
        farm.hosts[i]
            .ns
            .enter(move || tapwire_testkit::ws::connect(&url, None))
            .expect("connect to the host"),
    )
}

/// The packets a rule of host `i`'s bridge filter counted (chain, rule text's start).
pub(super) fn filtered(farm: &Farm, i: usize, rule: &str) -> u64 {
    let table = exec_ok(
        &farm.hosts[i].ns,
        &[
            "nft",
            "list",
            "table",
            "bridge",
            &format!("tapwire_{}", farm.hosts[i].tap),
        ],
    );
    table
        .lines()
        .find(|l| l.trim_start().starts_with(rule))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rule {rule}: {table}"))
}

/// Host `i`'s VXLAN device (the one spanning network's).
pub(super) fn vxlan(farm: &Farm, i: usize) -> String {
    let out = exec_ok(
        &farm.hosts[i].ns,
        &["ip", "-o", "link", "show", "type", "vxlan"],
    );
    out.lines()
        .next()
        .and_then(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .unwrap_or_else(|| panic!("no VXLAN device: {out}"))
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    exec_ok(
        ns,
        &[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/rx_packets"),
        ],
    )
    .trim()
    .parse()
    .expect("rx_packets")
}

/// Waits until `check` holds, at most `limit`.
pub(super) fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Serves a 1 MiB blob from `guest` with busybox httpd; its SHA-256.
fn serve_blob(guest: &Guest, dir: &TempDir) -> (Proc, String) {
    let www = dir.0.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let blob: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).expect("blob");
    let sha = exec_ok(
        &guest.ns,
        &["sha256sum", &www.join("blob").display().to_string()],
    )
    .split_whitespace()
    .next()
    .unwrap_or_default()
    .to_string();
    let http = Proc::spawn(
        guest.ns.cmd(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            &HTTP_PORT.to_string(),
            "-h",
            &www.display().to_string(),
        ]),
        dir.0.join("httpd.log"),
    )
    .expect("httpd");
    (http, sha)
}

/// Has `guest` (a kernel-stack guest) ping the synthetic guest `s` three times while `s`
/// answers; returns `s` once at least one ping was answered.
fn answer_pings(
    guest: &Guest,
    s: WsClient,
    (mac, ip, gateway): ([u8; 6], Ipv4Addr, Ipv4Addr),
    dir: &TempDir,
    log: &str,
) -> WsClient {
    let mut pinger = guest.ping_background(&ip.to_string(), 3, dir.0.join(log));
    let answered = std::thread::spawn(move || {
        let mut s = FarmGuest {
            client: s,
            mac,
            ip,
            gateway,
            gateway_mac: [0; 6],
        };
        // Answers ARP and echo requests for 6 s, counting the echo requests.
        let mut echoes = 0;
        s.await_frame(Duration::from_secs(6), |f| {
            echoes += usize::from(packet::echo_reply_to(f, mac, ip).is_some());
            false
        });
        (echoes, s.client)
    });
    let (echoes, s) = answered.join().expect("guest thread");
    assert!(echoes >= 1, "no echo request reached the guest");
    let (sent, received) = ping_outcome(&mut pinger, Duration::from_secs(10));
    assert!(received >= 1, "{received}/{sent} answered");
    s
}

/// Sends to hC's VXLAN port (UDP 4789, the network's VNI), from the balancer's namespace, a
/// frame from the network's gateway MAC, an ARP request for the gateway and a DHCP
/// discover: what the filter must drop coming in from the overlay.
fn inject_into_c(farm: &Farm) {
    let subnet = network_subnet(NETWORK);
    let gateway = subnet.gateway();
    let gw_mac = tapwire::networks::gateway_mac(NETWORK, &subnet).0;
    let stranger = mac(0x77);
    let frames = [
        packet::udp_frame(
            BROADCAST,
            gw_mac,
            (gateway, 5000),
            (Ipv4Addr::BROADCAST, 5000),
            64,
        ),
        packet::arp(
            1,
            stranger,
            Ipv4Addr::from(u32::from(gateway) + 76),
            [0; 6],
            gateway,
        ),
        packet::dhcp_message(stranger, 0x5a5a_0077, packet::DhcpKind::Discover, None),
    ];
    let vni = tapwire::config::vni(NETWORK);
    let datagrams: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut d = vec![0x08, 0, 0, 0];
            d.extend_from_slice(&(vni << 8).to_be_bytes());
            d.extend_from_slice(f);
            d
        })
        .collect();
    let to = format!("{}:4789", HOST_IPS[2]);
    farm.lb.enter(move || {
        let sock = std::net::UdpSocket::bind((LB_IP, 0)).expect("udp");
        for d in &datagrams {
            sock.send_to(d, &to).expect("send");
        }
    });
}

#[test]
fn guests_of_one_network_on_two_hosts_share_a_segment_over_vxlan() {
    let test = "guests_of_one_network_on_two_hosts_share_a_segment_over_vxlan";
    if skip_unless_haproxy(test) {
        return;
    }
    let farm = Farm::start_with(&SPAN);
    let dir = TempDir::new();
    let url = format!("ws://127.0.0.1:8086/n/{NETWORK}");
    // Kernel-stack guests on hA and hC, each leasing from its own host.
    let mut a = spawn_guest(&farm.hosts[0].ns, &url, &dir.0, None);
    let mut c = spawn_guest(&farm.hosts[2].ns, &url, &dir.0, None);
    let ip_a = a.dhcp(&dir.0);
    let ip_c = c.dhcp(&dir.0);
    assert_ne!(ip_a, ip_c);
    // The admin API says how the network spans; the default network never does.
    let (status, v) = farm.api(0, "GET", "/api/networks");
    assert!(status.contains("200"), "{status} {v}");
    let nets = v["networks"].as_array().expect("networks");
    let span = &nets.iter().find(|n| n["name"] == NETWORK).expect("network")["span"];
    assert_eq!(span["vni"], tapwire::config::vni(NETWORK), "{v}");
    assert_eq!(
        span["peers"],
        serde_json::json!(["10.250.0.12", "10.250.0.13"]),
        "{v}"
    );
    let tap0 = &farm.hosts[0].tap;
    assert_eq!(span["bridge"], format!("{tap0}n1"), "{v}");
    assert_eq!(span["vxlan"], format!("{tap0}x1"), "{v}");
    assert!(nets[0]["span"].is_null(), "{v}");
    // Neither DHCP request crossed the overlay: each host's dnsmasq served its own guest.
    assert!(filtered(&farm, 0, "oifname @ports udp dport 67") > 0);
    assert!(filtered(&farm, 2, "oifname @ports udp dport 67") > 0);
    for i in [0, 2] {
        assert_eq!(
            filtered(&farm, i, "iifname @ports udp dport 67"),
            0,
            "no DHCP of another host arrived"
        );
    }
    // A synthetic guest on hA: its ARP request for the gateway gets exactly one answer (its
    // own host's; every host's gateway has the same MAC, so two would look alike).
    let mut s = direct(&farm, 0);
    let s_mac = guest_mac(7, 0);
    let s_ip = lease(&mut s, s_mac);
    let o = s_ip.octets();
    let gateway = Ipv4Addr::new(o[0], o[1], o[2], 1);
    let arp_out = filtered(&farm, 0, "oifname . arp daddr ip @gw_ip");
    s.send_frame(&packet::arp(1, s_mac, s_ip, [0; 6], gateway));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut answers = 0;
    while let Some(f) = s.recv_frame(deadline.saturating_duration_since(Instant::now())) {
        if matches!(packet::parse_arp(&f), Some((2, _, ip, _)) if ip == gateway) {
            answers += 1;
        }
    }
    assert_eq!(answers, 1, "the gateway answers once, from this host");
    assert!(
        filtered(&farm, 0, "oifname . arp daddr ip @gw_ip") > arp_out,
        "the request for the gateway was kept off the overlay"
    );
    for rule in [
        "iifname . ether saddr @gw_mac",
        "iifname . arp daddr ip @gw_ip",
    ] {
        assert_eq!(filtered(&farm, 2, rule), 0, "hC: {rule}");
    }
    // hA pins the guest's MAC to the network's TAP in its bridge and announces it: hC's
    // VXLAN device knows where it is although nothing the guest sent crossed the overlay
    // (its DHCP and its ARP for the gateway were kept off it, above).
    let fdb = |i: usize| exec_ok(&farm.hosts[i].ns, &["bridge", "fdb", "show"]);
    let s_text = packet::format_mac(s_mac);
    assert!(
        within(Duration::from_secs(5), || fdb(0)
            .lines()
            .any(|l| l.starts_with(&s_text) && l.contains(" static"))),
        "not pinned on hA: {}",
        fdb(0)
    );
    let vx_c = vxlan(&farm, 2);
    let knows = |host_ip: &str| {
        let remote = exec_ok(&farm.hosts[2].ns, &["bridge", "fdb", "show", "dev", &vx_c]);
        remote
            .lines()
            .any(|l| l.starts_with(&s_text) && l.contains(&format!("dst {host_ip} ")))
    };
    assert!(
        within(Duration::from_secs(5), || knows("10.250.0.11")),
        "hC does not know {s_text} is on hA"
    );
    // hC's guest reaches it.
    let s = answer_pings(&c, s, (s_mac, s_ip, gateway), &dir, "ping-s-on-a.log");
    // It moves to hB (connects there and sends one frame): hB pins and announces it, and hC
    // reaches it there at once, not after its VXLAN device forgets hA (300 s).
    drop(s);
    let mut s = direct(&farm, 1);
    s.send_frame(&packet::arp(1, s_mac, s_ip, [0; 6], gateway));
    assert!(
        within(Duration::from_secs(5), || knows("10.250.0.12")),
        "hC does not know {s_text} moved to hB"
    );
    let _s = answer_pings(&c, s, (s_mac, s_ip, gateway), &dir, "ping-s-on-b.log");
    // What hC's filter drops coming in: frames from the gateway's MAC, ARP for the gateway
    // and DHCP requests, sent to hC's VXLAN port from the balancer's namespace.
    inject_into_c(&farm);
    for rule in [
        "iifname . ether saddr @gw_mac",
        "iifname . arp daddr ip @gw_ip",
        "iifname @ports udp dport 67",
    ] {
        assert!(
            within(Duration::from_secs(2), || filtered(&farm, 2, rule) > 0),
            "hC let through what {rule} drops"
        );
    }
    // Kernel guests across hosts: ARP, ping, a DF ping at the guest MTU (1500: 1472 bytes of
    // payload) and a 1 MiB download with its hash.
    assert_eq!(a.ping(&ip_c, 3), 3, "ping across hosts");
    let mut df = a.ns.cmd(&[
        "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1472", &ip_c,
    ]);
    let out = df.output().expect("ping");
    assert!(
        out.status.success(),
        "DF ping at MTU 1500: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (_http, sha) = serve_blob(&c, &dir);
    // hB holds no such network: a flood would still reach its underlay.
    let b_before = rx_packets(&farm.hosts[1].ns, "ul0");
    let c_before = rx_packets(&farm.hosts[2].ns, &vx_c);
    let got = exec_ok(
        &a.ns,
        &[
            "sh",
            "-c",
            &format!("timeout 20 busybox wget -q -O - http://{ip_c}:{HTTP_PORT}/blob | sha256sum"),
        ],
    );
    assert_eq!(
        got.split_whitespace().next(),
        Some(sha.as_str()),
        "1 MiB across hosts"
    );
    // The transfer went to hC only: hB, which floods would reach, saw almost nothing of it.
    let to_c = rx_packets(&farm.hosts[2].ns, &vx_c) - c_before;
    let to_b = rx_packets(&farm.hosts[1].ns, "ul0") - b_before;
    assert!(to_c > 100, "{to_c} frames reached hC");
    assert!(
        to_b * 20 < to_c,
        "hB received {to_b} frames of {to_c}: flooded"
    );
    drop((a, c, _http, _s));
    // The bridge and the VXLAN device outlive a killed relay; its ledger names them, and
    // `tapwire cleanup` deletes them and the bridge filter.
    let mut farm = farm;
    farm.hosts[2].relay.expect_exit();
    farm.hosts[2].proc().signal(libc::SIGKILL);
    farm.hosts[2]
        .proc_mut()
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    assert!(
        links(&farm.hosts[2].ns).contains(&vx_c),
        "the VXLAN device went with the process"
    );
    let (ok, report) = farm.hosts[2].cleanup();
    assert!(ok, "{report}");
    assert_eq!(links(&farm.hosts[2].ns), vec!["ul0".to_string()]);
    let tables = exec_ok(&farm.hosts[2].ns, &["nft", "list", "tables"]);
    assert!(!tables.contains("tapwire"), "left: {tables}");
}

/// A namespace whose underlay is one veth pair (`ul0` at 10.251.0.1/24, MTU `mtu`, and its
/// peer `ul1`): a host with no other host.
fn lone_host(mtu: &str) -> Netns {
    let ns = netns("twr");
    exec_ok(&ns, &["ip", "link", "set", "lo", "up"]);
    exec_ok(
        &ns,
        &[
            "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1",
        ],
    );
    exec_ok(&ns, &["ip", "link", "set", "ul0", "mtu", mtu, "up"]);
    exec_ok(&ns, &["ip", "addr", "add", "10.251.0.1/24", "dev", "ul0"]);
    ns
}

#[test]
fn an_underlay_that_cannot_carry_a_guest_frame_is_refused_at_start() {
    let test = "an_underlay_that_cannot_carry_a_guest_frame_is_refused_at_start";
    if skip_unless_root(test) {
        return;
    }
    let ns = lone_host("1500");
    let dir = TempDir::new();
    let out = ns
        .cmd(&[
            tapwire_bin(),
            "run",
            "--tap",
            "twspan0",
            "--runtime-dir",
            &dir.0.join("run").display().to_string(),
            "--span-peers",
            "10.251.0.2",
            "--span-dev",
            "ul0",
        ])
        .output()
        .expect("tapwire");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {text}");
    assert!(
        text.contains("--span-dev ul0 has MTU 1500") && text.contains("at least 1550"),
        "{text}"
    );
    // Nothing was left behind.
    let mut left = links(&ns);
    left.sort();
    assert_eq!(left, vec!["ul0".to_string(), "ul1".to_string()]);
    let tables = exec_ok(&ns, &["nft", "list", "tables"]);
    assert!(!tables.contains("tapwire"), "left: {tables}");
}

#[test]
fn a_declared_network_spans_to_its_own_peers_with_its_own_vni() {
    let test = "a_declared_network_spans_to_its_own_peers_with_its_own_vni";
    if skip_unless_root(test) {
        return;
    }
    let ns = lone_host("9000");
    let dir = TempDir::new();
    let config = dir.0.join("tapwire.toml");
    std::fs::write(
        &config,
        "[[network]]\nname = \"lab\"\nspan = [\"10.251.0.2\", \"10.251.0.1\"]\nvni = 4242\n\n[[network]]\nname = \"quiet\"\nspan = false\n",
    )
    .expect("config");
    let config = config.display().to_string();
    let relay = Relay::launch_in(
        ns,
        &[],
        None,
        None,
        &["--config", &config, "--span-dev", "ul0"],
    );
    // Only "lab" spans (there is no --span-peers): its VXLAN device has VNI 4242 and floods to
    // the one peer that is not this host.
    let vxlans = exec_ok(
        &relay.ns,
        &["ip", "-d", "-o", "link", "show", "type", "vxlan"],
    );
    assert_eq!(vxlans.lines().count(), 1, "{vxlans}");
    assert!(
        vxlans.contains("id 4242") && vxlans.contains("local 10.251.0.1"),
        "{vxlans}"
    );
    let floods = exec_ok(
        &relay.ns,
        &["bridge", "fdb", "show", "dev", &format!("{}x1", relay.tap)],
    );
    let peers: Vec<&str> = floods
        .lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00"))
        .collect();
    assert_eq!(peers.len(), 1, "{floods}");
    assert!(peers[0].contains("dst 10.251.0.2"), "{floods}");
    // The gateway is on the bridge, which has the name a TAP would; "quiet" has a TAP.
    let bridge = exec_ok(
        &relay.ns,
        &["ip", "-d", "link", "show", &format!("{}n1", relay.tap)],
    );
    assert!(bridge.contains("bridge"), "{bridge}");
    assert!(exec_ok(
        &relay.ns,
        &["ip", "-4", "addr", "show", &format!("{}n1", relay.tap)]
    )
    .contains("inet "));
    let quiet = exec_ok(
        &relay.ns,
        &["ip", "-d", "link", "show", &format!("{}n2", relay.tap)],
    );
    assert!(quiet.contains("tun"), "{quiet}");
    // Someone deletes the bridge filter: tapwire makes it again, with the network's elements.
    let table = format!("tapwire_{}", relay.tap);
    exec_ok(&relay.ns, &["nft", "delete", "table", "bridge", &table]);
    let vxlan_port = format!("\"{}x1\"", relay.tap);
    let restored = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        relay
            .ns
            .cmd(&["nft", "list", "set", "bridge", &table, "ports"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&vxlan_port))
    });
    assert!(
        restored,
        "the bridge filter was not made again: {}",
        relay.proc().log_text()
    );
    // A network made on demand does not span either: its interface is a TAP.
    let mut client = super::networks::join(&relay, "other").expect("join");
    lease(&mut client, mac(9));
    let vxlans = exec_ok(&relay.ns, &["ip", "-o", "link", "show", "type", "vxlan"]);
    assert_eq!(vxlans.lines().count(), 1, "{vxlans}");
    let other = exec_ok(
        &relay.ns,
        &["ip", "-d", "link", "show", &format!("{}n3", relay.tap)],
    );
    assert!(other.contains("tun"), "{other}");
}

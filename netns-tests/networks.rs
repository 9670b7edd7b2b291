//! Networks by URL path on a real relay: guests of each network lease from their own block,
//! reach each other and their gateway and nothing of another network; the same MAC in two
//! networks; on-demand networks removed when idle, `--max-networks` and `--networks declared`
//! refusals; and `kill -9` then `tapwire cleanup` with networks up.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// The URL of network `name` on `relay`.
fn network_url(relay: &Relay, name: &str) -> String {
    format!("{}n/{name}", relay.url())
}

/// A kernel-stack guest of network `name` on `core`, with MAC `mac` if given, leased.
fn network_guest(relay: &Relay, name: &str, core: usize, mac: Option<&str>) -> Guest {
    let mut g = spawn_guest(
        &relay.ns,
        &network_url(relay, name),
        &relay.dir.0,
        Some(source_port_for_core(core)),
    );
    if let Some(mac) = mac {
        exec_ok(&g.ns, &["ip", "link", "set", "eth0", "address", mac]);
    }
    let ip = g.dhcp(&relay.dir.0);
    // Everything off its own subnet goes to its gateway, so that the host is asked to route it.
    exec_ok(
        &g.ns,
        &[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &gateway_of(&ip),
            "dev",
            "eth0",
        ],
    );
    g
}

/// The gateway of the /24 block `ip` is in.
fn gateway_of(ip: &str) -> String {
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets[3] = "1";
    octets.join(".")
}

/// The relay's nftables table, as `nft` lists it.
fn table_rules(relay: &Relay) -> String {
    let table = format!("tapwire_{}", relay.tap);
    exec_ok(&relay.ns, &["nft", "list", "table", "inet", &table])
}

/// The network TAPs (`TAPn<slot>`) of `relay`.
fn network_taps(relay: &Relay) -> Vec<String> {
    let prefix = format!("{}n", relay.tap);
    links(&relay.ns)
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

#[test]
fn three_networks_and_the_default_one_lease_ping_and_stay_apart() {
    if skip_unless_root("three_networks_and_the_default_one_lease_ping_and_stay_apart") {
        return;
    }
    let relay = Relay::start(&[]);
    // The host would route between its interfaces: only tapwire's rules may keep networks
    // apart.
    exec_ok(&relay.ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let shared_mac = "02:00:00:00:aa:01";
    let d = relay.leased_guest(0);
    exec_ok(
        &d.ns,
        &[
            "ip", "route", "replace", "default", "via", GATEWAY, "dev", "eth0",
        ],
    );
    let a1 = network_guest(&relay, "alpha", 0, Some(shared_mac));
    let a2 = network_guest(&relay, "alpha", 1, None);
    // The same MAC as a1, in another network.
    let b1 = network_guest(&relay, "beta", 1, Some(shared_mac));
    let c1 = network_guest(&relay, "gamma", 0, None);
    let ip = |g: &Guest| g.ip.clone().expect("leased");
    let d_ip = ip(&d);
    assert!(d_ip.starts_with("10.86."), "{d_ip}");
    for g in [&a1, &a2, &b1, &c1] {
        assert!(ip(g).starts_with("10.9"), "a network's block: {}", ip(g));
    }
    assert_eq!(
        gateway_of(&ip(&a1)),
        gateway_of(&ip(&a2)),
        "one network, one block"
    );
    let blocks = [
        gateway_of(&ip(&a1)),
        gateway_of(&ip(&b1)),
        gateway_of(&ip(&c1)),
    ];
    assert!(
        blocks[0] != blocks[1] && blocks[1] != blocks[2] && blocks[0] != blocks[2],
        "{blocks:?}"
    );
    assert_eq!(network_taps(&relay).len(), 3, "one TAP per network");

    // Within a network, and to one's own gateway: everything answers.
    for g in [&a1, &a2, &b1, &c1] {
        assert_eq!(g.ping(&gateway_of(&ip(g)), 3), 3, "{} → its gateway", ip(g));
    }
    assert_eq!(d.ping(GATEWAY, 3), 3, "default guest → its gateway");
    assert_eq!(a1.ping(&ip(&a2), 3), 3, "alpha across cores");
    assert_eq!(
        b1.ping(&gateway_of(&ip(&b1)), 3),
        3,
        "beta, with alpha's MAC"
    );

    // Across networks, by any address: nothing, though the host has a route to each (and
    // forwards): tapwire's table drops it.
    let route = exec_ok(&relay.ns, &["ip", "route", "get", &ip(&b1)]);
    assert!(route.contains(&format!("dev {}n", relay.tap)), "{route}");
    assert_eq!(a1.ping(&ip(&b1), 2), 0, "alpha → beta's guest");
    assert_eq!(
        a1.ping(&gateway_of(&ip(&b1)), 2),
        0,
        "alpha → beta's gateway"
    );
    assert_eq!(a1.ping(&d_ip, 2), 0, "alpha → the default network's guest");
    assert_eq!(a1.ping(GATEWAY, 2), 0, "alpha → the default gateway");
    assert_eq!(d.ping(&ip(&c1), 2), 0, "default → gamma's guest");
    assert_eq!(c1.ping(&ip(&a2), 2), 0, "gamma → alpha's guest");

    let c = relay.counters();
    assert_eq!(c.get("tapwire_clients_open"), 5, "{c:?}");
    assert_eq!(c.drops("mac_conflict"), 0, "one MAC in two networks");
}

/// A synthetic client of network `name`, or the HTTP status it was refused with.
pub(super) fn join(relay: &Relay, name: &str) -> Result<WsClient, String> {
    let url = network_url(relay, name);
    relay
        .ns
        .enter(move || tapwire_testkit::ws::connect_with(&url, None, None))
        .map(WsClient::new)
        .map_err(|e| e.to_string())
}

/// Waits up to `limit` for `done`.
pub(super) fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

#[test]
fn idle_networks_go_and_the_limits_refuse_with_their_status() {
    if skip_unless_root("idle_networks_go_and_the_limits_refuse_with_their_status") {
        return;
    }
    let relay = Relay::start(&["--max-networks", "2", "--network-idle", "2s"]);
    // A guest with a DHCP lease in the first network.
    let one = network_guest(&relay, "one", 0, None);
    let leased = one.ip.clone().expect("leased");
    let leases = relay.instance_dir().join("dnsmasq.leases");
    let text = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(text.contains(&format!(" {leased} ")), "{text}");
    let two = join(&relay, "two").expect("second network");
    let refused = join(&relay, "three")
        .err()
        .expect("a third network is over the limit");
    assert!(refused.contains("503"), "{refused}");
    assert_eq!(network_taps(&relay).len(), 2);
    let rules = table_rules(&relay);
    for tap in network_taps(&relay) {
        assert!(
            rules.contains(&format!("\"{tap}\"")),
            "{tap} in the sets: {rules}"
        );
        // No queueing discipline: the kernel's default for a multi-queue TAP costs about
        // 6.5 MiB per network.
        let qdisc = exec_ok(&relay.ns, &["tc", "qdisc", "show", "dev", &tap]);
        assert!(
            qdisc.starts_with("qdisc noqueue ") && qdisc.lines().count() == 1,
            "{tap}: {qdisc}"
        );
    }
    drop(one);
    drop(two);
    assert!(
        eventually(Duration::from_secs(10), || network_taps(&relay).is_empty()),
        "idle networks are removed: {:?}",
        network_taps(&relay)
    );
    let text = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(
        !text.contains(&format!(" {leased} ")),
        "the removed network's lease is released: {text}"
    );
    let rules = table_rules(&relay);
    let prefix = format!("\"{}n", relay.tap);
    assert!(
        !rules.contains(&prefix),
        "no element of a removed network: {rules}"
    );
    // Room again: a new network is made (in a reused slot).
    let again = join(&relay, "three").expect("room for a network again");
    drop(again);
    let c = relay.counters();
    assert_eq!(c.drops("too_many_networks"), 1, "{c:?}");
}

#[test]
fn declared_mode_refuses_unknown_names_with_403() {
    if skip_unless_root("declared_mode_refuses_unknown_names_with_403") {
        return;
    }
    let relay = Relay::start(&["--networks", "declared"]);
    let refused = join(&relay, "nobody").err().expect("not declared");
    assert!(refused.contains("403"), "{refused}");
    assert!(network_taps(&relay).is_empty());
    assert_eq!(relay.counters().drops("network_unknown"), 1);
}

/// Whether a line of `ip -4 -o addr show` has an address of the default pool, 10.96.0.0/12.
fn in_pool(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "inet");
    words
        .next()
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .is_some_and(|ip| ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]))
}

/// What networks leave on the host: TAPs, addresses of the pool, and the instance's table.
fn network_leftovers(relay: &Relay) -> (usize, usize, bool) {
    let addresses = exec_ok(&relay.ns, &["ip", "-4", "-o", "addr", "show"]);
    let tables = exec_ok(&relay.ns, &["nft", "list", "tables"]);
    (
        network_taps(relay).len(),
        addresses.lines().filter(|l| in_pool(l)).count(),
        tables.contains(&format!("tapwire_{}", relay.tap)),
    )
}

/// 50 networks, each with a client.
fn fifty_networks(relay: &Relay) -> Vec<WsClient> {
    let clients: Vec<WsClient> = (0..50)
        .map(|i| join(relay, &format!("k{i}")).expect("network"))
        .collect();
    assert_eq!(network_leftovers(relay).0, 50);
    clients
}

#[test]
fn kill_9_with_50_networks_up_then_cleanup_or_a_restart_leaves_nothing() {
    if skip_unless_root("kill_9_with_50_networks_up_then_cleanup_or_a_restart_leaves_nothing") {
        return;
    }
    let mut relay = Relay::start(&[]);
    let clients = fifty_networks(&relay);
    assert_eq!(network_leftovers(&relay).1, 50, "a gateway address each");
    relay.signal_and_wait(9);
    drop(clients);
    // The kernel unregisters the TAPs a moment after their last queue closed.
    assert!(
        eventually(Duration::from_secs(10), || network_leftovers(&relay).0 == 0),
        "the TAPs go with their process: {:?}",
        network_taps(&relay)
    );
    let (ok, out) = relay.cleanup();
    assert!(ok, "{out}");
    assert_eq!(network_leftovers(&relay), (0, 0, false), "after cleanup");
    let dnsmasq = exec_ok(&relay.ns, &["sh", "-c", "pgrep -a dnsmasq || true"]);
    assert!(!dnsmasq.contains(&relay.tap), "{dnsmasq}");

    // Killed with networks up again, then the same instance starts again: it undoes the dead
    // run and starts with no network.
    let runtime_dir = relay.runtime_dir.display().to_string();
    let args = [
        "--tap",
        relay.tap.as_str(),
        "--metrics",
        "9187",
        "--runtime-dir",
        &runtime_dir,
    ];
    let mut again = relay.another("again", &args).expect("again");
    let clients = fifty_networks(&relay);
    again.proc.signal(libc::SIGKILL);
    again
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    drop(clients);
    assert!(eventually(Duration::from_secs(10), || network_leftovers(
        &relay
    )
    .0 == 0));
    let mut third = relay.another("third", &args).expect("third");
    assert!(third.proc.log_text().contains("did not clean up"));
    let (taps, addresses, table) = network_leftovers(&relay);
    assert_eq!(
        (taps, addresses, table),
        (0, 0, true),
        "a fresh table, no network"
    );
    let rules = table_rules(&relay);
    assert!(
        !rules.contains(&format!("\"{}n", relay.tap)),
        "no element of the dead run: {rules}"
    );
    assert!(third.stop().is_some_and(|s| s.success()));
    assert_eq!(network_leftovers(&relay), (0, 0, false));
}

/// Fetches the "internet" server's blob from `guest` (default route via `gateway`); its
/// SHA-256, or `None` when it cannot.
fn download_via(guest: &Guest, gateway: &str) -> Option<String> {
    use super::internet::{HTTP_PORT, SERVER};
    let out = guest
        .ns
        .cmd(&[
            "sh",
            "-c",
            &format!("ip route replace default via {gateway} dev eth0; timeout 5 busybox wget -q -O - http://{SERVER}:{HTTP_PORT}/blob | sha256sum"),
        ])
        .output()
        .expect("wget");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let sha = text.split_whitespace().next()?.to_string();
    // sha256sum of nothing: the download failed.
    (sha != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").then_some(sha)
}

#[test]
fn declared_networks_have_their_own_nat_internet_and_forwards() {
    if skip_unless_root("declared_networks_have_their_own_nat_internet_and_forwards") {
        return;
    }
    let ns = netns("twr");
    let net = super::internet::internet(&ns);
    let config = TempDir::new();
    let file = config.0.join("tapwire.toml");
    let served_mac = "02:aa:bb:cc:dd:02";
    std::fs::write(
        &file,
        format!(
            r#"
[[network]]
name = "online"

[[network]]
name = "offline"
internet = false

[[network]]
name = "served"
subnet = "10.201.0.0/24"
forward = ["tcp:8122:{served_mac}:2222"]
"#
        ),
    )
    .expect("config");
    let relay = Relay::launch_in(
        ns,
        &[],
        None,
        None,
        &[
            "--nat",
            "--networks",
            "declared",
            "--config",
            &file.display().to_string(),
        ],
    );
    let log = relay.proc().log_text();
    assert!(
        log.contains("network served: declared, subnet 10.201.0.0/24"),
        "{log}"
    );
    assert_eq!(network_taps(&relay).len(), 3, "made at start-up");
    let online = network_guest(&relay, "online", 0, None);
    let offline = network_guest(&relay, "offline", 1, None);
    let ip = |g: &Guest| g.ip.clone().expect("leased");
    assert_eq!(
        download_via(&online, &gateway_of(&ip(&online))).as_deref(),
        Some(net.sha.as_str()),
        "online reaches the internet through NAT"
    );
    assert_eq!(
        download_via(&offline, &gateway_of(&ip(&offline))),
        None,
        "offline does not"
    );
    assert_eq!(
        offline.ping(&gateway_of(&ip(&offline)), 3),
        3,
        "but has its gateway"
    );
    // A forward into the served network's guest, named by its MAC (reserved: 10.201.0.2).
    let served = network_guest(&relay, "served", 0, Some(served_mac));
    assert_eq!(ip(&served), "10.201.0.2");
    exec_ok(
        &served.ns,
        &["ip", "route", "replace", "default", "via", "10.201.0.1"],
    );
    let _services = super::forwards::guest_services(&served.ns, &relay.dir.0, 2222, 5353);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe(&net.ns, super::internet::UPLINK_ADDRESS, 8122, false).contains("guest-tcp") {
        assert!(
            Instant::now() < deadline,
            "the forward does not reach the served guest"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Declared mode: a name not declared is refused.
    assert!(join(&relay, "other").is_err());
}

#[test]
fn two_hundred_networks_in_a_burst_while_a_guest_pings_then_all_go_when_idle() {
    if skip_unless_root("two_hundred_networks_in_a_burst_while_a_guest_pings_then_all_go_when_idle")
    {
        return;
    }
    let relay = Relay::start(&["--network-idle", "3s"]);
    let mut steady = network_guest(&relay, "steady", 0, None);
    let leased = steady.ip.clone().expect("leased");
    let gateway = gateway_of(&leased);
    let mut pinger = steady.ping_background(&gateway, 75, relay.dir.0.join("steady-ping.log"));
    // 200 connections to 200 new networks: 10 threads of 20, all at once.
    let url = relay.url();
    let ns_name = relay.ns.name.clone();
    let started = Instant::now();
    let clients: Vec<Result<std::net::TcpStream, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..10)
            .map(|t| {
                let (url, ns_name) = (url.clone(), ns_name.clone());
                s.spawn(move || {
                    tapwire_testkit::netns::enter_named(&ns_name).expect("setns");
                    (0..20)
                        .map(|i| {
                            tapwire_testkit::ws::connect_with(
                                &format!("{url}n/b{t}-{i}"),
                                None,
                                None,
                            )
                            .map_err(|e| e.to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a connecting thread"))
            .collect()
    });
    let made_in = started.elapsed();
    let failed: Vec<&String> = clients.iter().filter_map(|c| c.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 200 refused: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(network_taps(&relay).len(), 201, "200 and steady");
    eprintln!("200 networks made by a burst of connections in {made_in:?}");
    drop(clients);
    assert!(
        eventually(Duration::from_secs(30), || network_taps(&relay).len() == 1),
        "the 200 idle networks are removed: {} left",
        network_taps(&relay).len()
    );
    let (sent, answered) = ping_outcome(&mut pinger, Duration::from_secs(60));
    assert!(
        sent >= 70 && answered + 1 >= sent,
        "the steady guest's pings: {answered} of {sent}"
    );
    // 200 networks made and removed did not disturb the steady network's DHCP: a new lease
    // request is answered with its address.
    assert_eq!(steady.dhcp(&relay.dir.0), leased);
    let rules = table_rules(&relay);
    assert_eq!(
        rules.matches(&format!("\"{}n", relay.tap)).count(),
        rules
            .matches(&format!("\"{}", network_taps(&relay)[0]))
            .count(),
        "only steady's elements are left: {rules}"
    );
    let addresses = exec_ok(&relay.ns, &["ip", "-4", "-o", "addr", "show"]);
    assert_eq!(
        addresses.lines().filter(|l| in_pool(l)).count(),
        1,
        "{addresses}"
    );
    assert_eq!(relay.counters().get("tapwire_networks"), 1);
}

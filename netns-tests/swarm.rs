//! `tapwire-swarm` against the relay: many guests leasing and pinging, and a timed UDP phase.

use super::harness::*;

/// Runs `tapwire-swarm` against `relay` with `args` (after --url) and returns what it printed;
/// fails the test if the swarm fails.
fn run_swarm(relay: &Relay, args: &[&str]) -> String {
    let url = relay.url();
    let swarm = tool_bin("tapwire-swarm");
    let mut all = vec![swarm.as_str(), "--url", &url];
    all.extend_from_slice(args);
    let out = relay.ns.cmd(&all).output().expect("swarm");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn swarm_of_synthetic_guests_each_lease_and_ping() {
    if skip_unless_root("swarm_of_synthetic_guests_each_lease_and_ping") {
        return;
    }
    let relay = Relay::start(&[]);
    let text = run_swarm(&relay, &["--guests", "300", "--timeout", "90"]);
    assert!(
        text.contains("300 guests, 300 upgraded, 300 leased, 300 pinged the gateway"),
        "{text}"
    );
    let leases =
        std::fs::read_to_string(relay.instance_dir().join("dnsmasq.leases")).unwrap_or_default();
    assert_eq!(
        leases.lines().filter(|l| l.contains(" 02:53:")).count(),
        300,
        "dnsmasq recorded a lease per guest"
    );
}

/// The number before `label` in `text` ("... 123 sent ..." → 123 for " sent").
fn number_before(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in {text}"))
}

/// A relay that knows `guests` swarm guests by their static addresses (reserved, so that
/// anti-spoofing, on, knows them without DHCP), with a UDP echo server at 10.86.0.1:7777.
fn relay_with_echo(guests: u32) -> (Relay, tapwire_testkit::udp_echo::UdpEcho) {
    let reserved = tapwire_testkit::swarm::reservations("10.86.1.1".parse().unwrap(), guests);
    let relay = Relay::start(&[
        "--no-dhcp",
        "--reserve",
        &reserved,
        "--allow-host-port",
        "udp:7777",
    ]);
    let echo = tapwire_testkit::udp_echo::UdpEcho::start(
        &relay.ns,
        "10.86.0.1:7777".parse().unwrap(),
        None,
    );
    (relay, echo)
}

#[test]
fn swarm_guests_send_timestamped_udp_and_every_echo_comes_back() {
    if skip_unless_root("swarm_guests_send_timestamped_udp_and_every_echo_comes_back") {
        return;
    }
    let (relay, echo) = relay_with_echo(200);
    let text = run_swarm(
        &relay,
        &[
            "--guests",
            "200",
            "--static-from",
            "10.86.1.1",
            "--udp-to",
            "10.86.0.1:7777",
            "--udp-pps",
            "20",
            "--udp-seconds",
            "3",
            "--timeout",
            "60",
        ],
    );
    let echoed = echo.stop();
    assert!(
        text.contains(
            "200 guests, 200 upgraded, static addresses (no DHCP), 200 pinged the gateway"
        ),
        "{text}"
    );
    let sent = number_before(&text, " sent in");
    let echoes = number_before(&text, " of them echoes");
    // 200 guests × 20/s × 3 s = 12 000, plus at most one per guest at the window's start. A
    // stalled machine may end the window between two rounds: only bound it loosely below.
    assert!(
        (6_000..=12_200).contains(&sent),
        "paced guests send on schedule: {text}"
    );
    assert_eq!(echoed, sent, "the echo server saw every datagram: {text}");
    assert_eq!(echoes, sent, "every echo came back to its guest: {text}");
    assert!(
        text.contains("rtt p50 ") && !text.contains("rtt p50 –"),
        "{text}"
    );
}

#[test]
fn swarm_broadcasts_reach_every_other_guest_across_two_swarms() {
    if skip_unless_root("swarm_broadcasts_reach_every_other_guest_across_two_swarms") {
        return;
    }
    let (relay, echo) = relay_with_echo(50);
    // Two swarms of 25 on one segment: guests 0–24 and 25–49 (--first-guest), at once.
    let url = relay.url();
    let swarm = tool_bin("tapwire-swarm");
    let children: Vec<_> = ["0", "25"]
        .into_iter()
        .map(|first| {
            relay
                .ns
                .cmd(&[
                    &swarm,
                    "--url",
                    &url,
                    "--guests",
                    "25",
                    "--first-guest",
                    first,
                    "--static-from",
                    "10.86.1.1",
                    "--udp-to",
                    "10.86.0.1:7777",
                    "--udp-pps",
                    "20",
                    "--udp-seconds",
                    "2",
                    "--udp-broadcast-every",
                    "10",
                    "--timeout",
                    "60",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("swarm")
        })
        .collect();
    // Both are waited for before anything is asserted: none outlives the test.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("swarm output"))
        .collect();
    let texts: Vec<String> = outputs
        .iter()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .collect();
    for (out, text) in outputs.iter().zip(&texts) {
        println!("{text}");
        assert!(out.status.success(), "{text}");
        assert!(text.contains("25 pinged the gateway"), "{text}");
    }
    let echoed = echo.stop();
    let sum = |label: &str| texts.iter().map(|t| number_before(t, label)).sum::<u64>();
    let (sent, broadcasts) = (sum(" sent in"), sum(" broadcasts sent"));
    // Every 10th datagram of each guest: about 200 in 2 s at 20/s from 50 guests.
    assert!(broadcasts >= 50, "broadcasts were sent: {texts:?}");
    // The relay floods each to the 49 other guests, in either swarm (and to the TAP, whose
    // host drops it); the unicast rest reaches the echo server and comes back.
    assert_eq!(
        sum(" broadcast copies received"),
        broadcasts * 49,
        "every other guest got every broadcast: {texts:?}"
    );
    assert_eq!(
        echoed,
        sent - broadcasts,
        "the echo server saw every unicast datagram"
    );
    assert_eq!(sum(" of them echoes"), sent - broadcasts, "{texts:?}");
}

//! relay-bridge, the kernel path relay-bench's `tcp` group compares tapwire with, does what
//! it stands for: each client gets a TAP of its own on a bridge that holds the gateway's
//! address; frames go client → host, host → client and client → client through the kernel;
//! and the bridge goes when it stops.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use tapwire_testkit::netns::{unique, Netns};
use tapwire_testkit::packet::{format_mac, parse_mac, udp_datagram, udp_payload_to};
use tapwire_testkit::process::RelayProcess;
use tapwire_testkit::skip::unless_root;
use tapwire_testkit::ws::{connect, WsClient};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 86, 0, 1);

fn guest_mac(i: u8) -> [u8; 6] {
    [0x02, 0x00, 0x0a, 0x56, 0, i]
}

fn guest_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 86, 1, i + 1)
}

/// The payload of the first UDP datagram to `ip` among the next 20 frames `client` gets.
fn datagram_to(client: &mut WsClient, ip: Ipv4Addr) -> Option<Vec<u8>> {
    (0..20).find_map(|_| {
        let f = client.recv_frame(Duration::from_secs(5))?;
        udp_payload_to(&f, ip).map(<[u8]>::to_vec)
    })
}

#[test]
fn every_client_gets_a_tap_on_the_bridge_and_frames_cross_it_every_way() {
    if unless_root("every_client_gets_a_tap_on_the_bridge_and_frames_cross_it_every_way") {
        return;
    }
    let ns = Netns::new("twr").expect("netns");
    let dir = std::env::temp_dir().join(unique("relay-bridge-test-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let bridge: String = unique("twbr").chars().take(11).collect();
    let mut relay = RelayProcess::start(
        &ns,
        &[],
        &PathBuf::from(env!("CARGO_BIN_EXE_relay-bridge")),
        &["--bridge".to_string(), bridge.clone()],
        dir.join("bridge.log"),
    )
    .expect("relay-bridge starts");
    let bridge_mac = parse_mac(
        &ns.run(&["cat", &format!("/sys/class/net/{bridge}/address")])
            .expect("the bridge exists"),
    )
    .expect("mac");
    let mut clients: Vec<WsClient> = ns.enter(|| {
        (0..2)
            .map(|_| WsClient::new(connect("ws://127.0.0.1:8086/", None).expect("connect")))
            .collect()
    });
    // Client i's TAP is the bridge's name and i, on the bridge.
    for i in 0..2 {
        let tap = format!("{bridge}{i}");
        let mut tries = 0;
        while !ns
            .run(&["ip", "-o", "link", "show", &tap])
            .is_ok_and(|l| l.contains(&format!("master {bridge}")))
        {
            tries += 1;
            assert!(tries < 100, "no TAP {tap} on the bridge");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Client → host.
    let sink = ns.enter(|| UdpSocket::bind((GATEWAY, 9999)).expect("sink"));
    sink.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    clients[0].send_frame(&udp_datagram(
        bridge_mac,
        guest_mac(0),
        (guest_ip(0), 1000),
        (GATEWAY, 9999),
        b"up",
    ));
    let mut buf = [0u8; 64];
    let n = sink.recv(&mut buf).expect("the datagram reached the host");
    assert_eq!(&buf[..n], b"up");
    // Host → client (the bridge learned client 0's MAC on its port).
    ns.run(&[
        "ip",
        "neigh",
        "replace",
        &guest_ip(0).to_string(),
        "lladdr",
        &format_mac(guest_mac(0)),
        "dev",
        &bridge,
    ])
    .expect("neighbour");
    ns.enter(|| {
        UdpSocket::bind((GATEWAY, 0))
            .expect("udp")
            .send_to(b"down", (guest_ip(0), 9))
            .expect("send")
    });
    let down = datagram_to(&mut clients[0], guest_ip(0)).expect("client 0 got the host's datagram");
    assert_eq!(down, b"down");
    // Client → client: 1 announces itself, then 0 sends to it.
    clients[1].send_frame(&udp_datagram(
        bridge_mac,
        guest_mac(1),
        (guest_ip(1), 1000),
        (GATEWAY, 9999),
        b"hello",
    ));
    assert!(sink.recv(&mut buf).is_ok(), "client 1's announcement");
    clients[0].send_frame(&udp_datagram(
        guest_mac(1),
        guest_mac(0),
        (guest_ip(0), 1000),
        (guest_ip(1), 9),
        b"across",
    ));
    let across =
        datagram_to(&mut clients[1], guest_ip(1)).expect("client 1 got client 0's datagram");
    assert_eq!(across, b"across");
    relay.stop();
    let log = relay.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.starts_with("relay-bridge: ") && l.contains("frames up")),
        "its closing line:\n{log}"
    );
    assert!(
        ns.run(&["ip", "link", "show", &bridge]).is_err(),
        "the bridge outlived it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

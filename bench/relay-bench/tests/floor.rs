//! relay-floor moves the frames it claims, whole and in order, both ways: relay-bench's
//! floor rows are only as good as this.

use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tapwire::ws::frame;
use tapwire_testkit::netns::{unique, Netns};
use tapwire_testkit::packet::{format_mac, parse_mac, udp_datagram, udp_payload_to};
use tapwire_testkit::process::RelayProcess;
use tapwire_testkit::skip::unless_root;
use tapwire_testkit::ws::{client_frame, connect, WsClient};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 86, 0, 1);

fn guest_mac(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x0a, 0x56, (i >> 8) as u8, i as u8]
}

fn guest_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 86, 1, i as u8 + 1)
}

/// A payload that says who sent it and which it is, of a length that varies with `n`.
fn payload(client: usize, n: usize) -> Vec<u8> {
    let len = 18 + (n * 97) % 1400;
    let mut p = vec![(client as u8) ^ (n as u8); len];
    p[..4].copy_from_slice(&(client as u32).to_be_bytes());
    p[4..8].copy_from_slice(&(n as u32).to_be_bytes());
    p
}

/// `relay-floor run` in `ns`, moving `direction`, with `extra` arguments; its TAP's name and
/// MAC.
fn floor(
    ns: &Netns,
    dir: &std::path::Path,
    direction: &str,
    extra: &[&str],
) -> (RelayProcess, String, [u8; 6]) {
    let tap = unique("twf");
    let args: Vec<String> = ["--tap", &tap, "--direction", direction]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
    let floor = RelayProcess::start(
        ns,
        &[],
        &PathBuf::from(env!("CARGO_BIN_EXE_relay-floor")),
        &args,
        dir.join(format!("{direction}.log")),
    )
    .expect("relay-floor starts");
    let mac = ns
        .run(&["cat", &format!("/sys/class/net/{tap}/address")])
        .expect("mac");
    (floor, tap, parse_mac(&mac).expect("mac"))
}

/// Stops it; the numbers of its last line: frames, bytes, refused, unroutable.
fn stop(mut floor: RelayProcess) -> [u64; 4] {
    floor.stop();
    let log = floor.proc.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("relay-floor: "))
        .unwrap_or_else(|| panic!("no closing line in:\n{log}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    n.try_into().expect("four numbers")
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("relay-floor-test-"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[test]
fn up_writes_every_client_frame_to_the_tap_whole_and_in_order() {
    if unless_root("up_writes_every_client_frame_to_the_tap_whole_and_in_order") {
        return;
    }
    const PER_CLIENT: usize = 400;
    let ns = Netns::new("twr").expect("netns");
    let dir = scratch();
    // Behind a table of its own (as relay-bench puts it behind the relay's), which goes
    // with it.
    let nft = dir.join("floor.nft");
    std::fs::write(
        &nft,
        "table inet twfloortest {\n  chain input {\n    type filter hook input priority filter; policy accept;\n    udp dport 9999 counter accept\n  }\n}\n",
    )
    .expect("ruleset");
    let (floor, _tap, tap_mac) = floor(&ns, &dir, "up", &["--nft", &nft.display().to_string()]);
    let sink = ns.enter(|| UdpSocket::bind((GATEWAY, 9999)).expect("sink"));
    sink.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Room for everything (a sink that overflows loses datagrams the floor did write).
    let room: libc::c_int = 64 << 20;
    // SAFETY: setting an int option on a socket we own, as root.
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sink),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&room as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(forced, 0, "SO_RCVBUFFORCE");
    // The clients write while the sink reads: its buffer holds less than all of it.
    let ns_path = ns.path();
    let sender = std::thread::spawn(move || {
        tapwire_testkit::netns::enter_path(&ns_path).expect("setns");
        let mut clients: Vec<_> = (0..2)
            .map(|_| connect("ws://127.0.0.1:8086/", None).expect("connect"))
            .collect();
        for (c, stream) in clients.iter_mut().enumerate() {
            // Every frame, a ping between them, all written in 777-byte pieces: frames and
            // headers cut across the floor's receives.
            let mut bytes = Vec::new();
            for n in 0..PER_CLIENT {
                let f = udp_datagram(
                    tap_mac,
                    guest_mac(c),
                    (guest_ip(c), 1000),
                    (GATEWAY, 9999),
                    &payload(c, n),
                );
                bytes.extend(client_frame(frame::OP_BINARY, &f));
                if n == PER_CLIENT / 2 {
                    bytes.extend(client_frame(frame::OP_PING, b"x"));
                }
            }
            for piece in bytes.chunks(777) {
                stream.write_all(piece).expect("send");
                stream.flush().expect("flush");
            }
        }
        // The sockets stay open until the sink has everything.
        clients
    });
    let mut next = [0usize; 2];
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(20);
    while next.iter().sum::<usize>() < 2 * PER_CLIENT && Instant::now() < deadline {
        let n = sink.recv(&mut buf).expect("a datagram within 5 s");
        let client = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert!(client < 2, "a datagram from no client");
        assert_eq!(
            &buf[..n],
            &payload(client, next[client])[..],
            "client {client}'s datagram {} arrived changed or out of order",
            next[client]
        );
        next[client] += 1;
    }
    assert_eq!(next, [PER_CLIENT; 2], "datagrams that reached the sink");
    drop(sender.join().expect("sender"));
    let table = ns
        .run(&["nft", "list", "table", "inet", "twfloortest"])
        .expect("its table while it runs");
    assert!(
        table.contains(&format!("packets {}", 2 * PER_CLIENT)),
        "every frame passed its chain:\n{table}"
    );
    let [frames, _, refused, _] = stop(floor);
    assert_eq!(frames, 2 * PER_CLIENT as u64, "the frames it says it wrote");
    assert_eq!(refused, 0);
    assert!(
        ns.run(&["nft", "list", "table", "inet", "twfloortest"])
            .is_err(),
        "its table outlived it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn down_sends_every_tap_frame_to_its_guest_whole_and_in_order() {
    if unless_root("down_sends_every_tap_frame_to_its_guest_whole_and_in_order") {
        return;
    }
    const PER_GUEST: usize = 300;
    const GUESTS: usize = 3;
    let ns = Netns::new("twr").expect("netns");
    let dir = scratch();
    let (floor, tap, _) = floor(&ns, &dir, "down", &[]);
    let mut clients: Vec<WsClient> = ns.enter(|| {
        (0..GUESTS)
            .map(|_| WsClient::new(connect("ws://127.0.0.1:8086/", None).expect("connect")))
            .collect()
    });
    for i in 0..GUESTS {
        ns.run(&[
            "ip",
            "neigh",
            "replace",
            &guest_ip(i).to_string(),
            "lladdr",
            &format_mac(guest_mac(i)),
            "dev",
            &tap,
        ])
        .expect("neighbour");
    }
    ns.enter(|| {
        let s = UdpSocket::bind((GATEWAY, 0)).expect("udp");
        for n in 0..PER_GUEST {
            for i in 0..GUESTS {
                s.send_to(&payload(i, n), (guest_ip(i), 9)).expect("send");
            }
            if n % 50 == 0 {
                // Within the TAP's queue of 1 000: no frame may be lost before the floor.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    for (i, client) in clients.iter_mut().enumerate() {
        for n in 0..PER_GUEST {
            let f = client
                .recv_frame(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("guest {i} got {n} frames of {PER_GUEST}"));
            assert_eq!(&f[..6], &guest_mac(i), "guest {i}, frame {n}: another's");
            assert_eq!(
                udp_payload_to(&f, guest_ip(i)),
                Some(&payload(i, n)[..]),
                "guest {i}, frame {n}: changed or out of order"
            );
        }
    }
    let [frames, _, refused, _] = stop(floor);
    assert_eq!(
        frames,
        (GUESTS * PER_GUEST) as u64,
        "the frames it says it sent"
    );
    assert_eq!(refused, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

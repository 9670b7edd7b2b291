//! `--offload`: the TAP's checksum and TCP segmentation offloads. A kernel guest that ends on
//! any frame over its MTU (`tapwire-guest --max-frame 1514`) leases (dnsmasq's UDP, its
//! checksum left partial by the kernel), pings, and moves TCP both ways with iperf3, while
//! the relay cuts the host's super-frames.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// iperf3's server on the gateway address at `port`, in the relay's namespace, once it
/// listens.
pub fn iperf3_server(relay: &Relay, port: u16) -> Proc {
    let p = port.to_string();
    let server = Proc::spawn(
        relay.ns.cmd(&["iperf3", "-s", "-B", GATEWAY, "-p", &p]),
        relay.dir.0.join(format!("iperf3-server-{port}.log")),
    )
    .expect("iperf3 server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exec_ok(&relay.ns, &["ss", "-ltn"]).contains(&format!(":{port}")) {
        assert!(
            Instant::now() < deadline,
            "iperf3 server did not start: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Runs iperf3 for 2 s from `guest` to the gateway's server at `port` with `extra`
/// arguments; the bits per second its receiver counted.
pub fn iperf3(guest: &Guest, port: u16, extra: &[&str]) -> f64 {
    let p = port.to_string();
    let mut args = vec![
        "timeout", "30", "iperf3", "-c", GATEWAY, "-p", &p, "-t", "2", "-J",
    ];
    args.extend(extra);
    let out = guest.ns.cmd(&args).output().expect("iperf3");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 {extra:?} failed: {json}");
    json.split("\"sum_received\"")
        .nth(1)
        .or_else(|| json.split("\"sum\"").last())
        .and_then(|s| s.split("\"bits_per_second\":").nth(1))
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[test]
fn offload_cuts_the_hosts_tcp_super_frames_into_frames_a_guest_takes() {
    if skip_unless_root("offload_cuts_the_hosts_tcp_super_frames_into_frames_a_guest_takes") {
        return;
    }
    let relay = Relay::start(&["--offload", "--allow-host-port", "tcp:5201"]);
    let mut guest = relay.guest_with(0, &["--max-frame", "1514"]);
    guest.dhcp(&relay.dir.0);
    assert_eq!(guest.ping(GATEWAY, 3), 3, "ping through the offloading TAP");
    let _server = iperf3_server(&relay, 5201);
    let down = iperf3(&guest, 5201, &["-R"]);
    let up = iperf3(&guest, 5201, &[]);
    println!(
        "with --offload: down {:.0} Mbit/s, up {:.0} Mbit/s",
        down / 1e6,
        up / 1e6
    );
    assert!(down > 1e6 && up > 1e6, "down {down} bit/s, up {up} bit/s");
    let running = guest.proc.child.as_mut().map(|c| c.try_wait());
    assert!(
        matches!(running, Some(Ok(None))),
        "the guest ended (a frame over its MTU?): {}",
        guest.proc.log_text()
    );
    let c = relay.counters();
    let (read, cut) = (
        c.get("tapwire_tap_rx_frames_total"),
        c.get("tapwire_tap_rx_segments_total"),
    );
    // The download alone is tens of thousands of frames; cut from super-frames, they are
    // more than every frame read from the TAP, super-frames and ACKs together.
    assert!(
        cut > read,
        "{cut} frames cut from {read} read: no super-frames came"
    );
    assert_eq!(c.drops("offload_malformed"), 0, "{c:?}");
}

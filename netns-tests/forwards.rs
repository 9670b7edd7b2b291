//! Port forwards into guests: a TCP and a UDP service inside a kernel-stack guest, named by
//! its MAC, reached from an "internet" namespace through the relay namespace's uplink address,
//! and from the relay's namespace itself at its own addresses (and, for TCP, at 127.0.0.1
//! through tapwire's loopback proxy).

use std::time::{Duration, Instant};

use super::harness::*;
use super::internet::{internet, UPLINK_ADDRESS};
use super::GATEWAY;

const GUEST_MAC: &str = "02:aa:bb:cc:dd:01";

/// A Python TCP greeter on `tcp` and UDP echo on `udp`, inside `ns`.
pub fn guest_services(ns: &Netns, dir: &std::path::Path, tcp: u16, udp: u16) -> Proc {
    let script = format!(
        "import signal, socket, threading
signal.alarm(120)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(('0.0.0.0', {tcp})); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', {udp}))
def echo():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(b'echo ' + data, peer)
threading.Thread(target=echo, daemon=True).start()
while True:
    c, _ = t.accept(); c.sendall(b'guest-tcp\\n'); c.close()
"
    );
    let path = dir.join("guest_services.py");
    std::fs::write(&path, script).expect("script");
    // Limited by its own alarm, not a `timeout` wrapper: killing the wrapper on drop would leave
    // python running.
    let cmd = ns.cmd(&["python3", &path.display().to_string()]);
    Proc::spawn(cmd, dir.join("guest_services.log")).expect("guest services")
}

#[test]
fn forwards_reach_a_guest_from_other_hosts_and_from_the_host() {
    if skip_unless_root("forwards_reach_a_guest_from_other_hosts_and_from_the_host") {
        return;
    }
    let ns = netns("twr");
    let net = internet(&ns);
    let tcp = format!("tcp:8022:{GUEST_MAC}:2222");
    let udp = format!("udp:8053:{GUEST_MAC}:5353");
    let relay = Relay::launch_in(ns, &[], None, None, &["--forward", &tcp, "--forward", &udp]);
    let log = relay.proc().log_text();
    assert!(log.contains("forward tcp:8022 → 10.86.0.2:2222"), "{log}");
    let mut guest = relay.guest(0);
    for step in [
        vec!["ip", "link", "set", "eth0", "down"],
        vec!["ip", "link", "set", "eth0", "address", GUEST_MAC],
        vec!["ip", "link", "set", "eth0", "up"],
    ] {
        exec_ok(&guest.ns, &step);
    }
    // The MAC's address is reserved: DHCP gives it 10.86.0.2, the first free host address.
    assert_eq!(guest.dhcp(&relay.dir.0), "10.86.0.2");
    exec_ok(
        &guest.ns,
        &["ip", "route", "replace", "default", "via", GATEWAY],
    );
    let _services = guest_services(&guest.ns, &relay.dir.0, 2222, 5353);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe(&relay.ns, "10.86.0.2", 2222, false).contains("guest-tcp") {
        assert!(Instant::now() < deadline, "guest services did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // From another host, through the uplink address.
    assert!(probe(&net.ns, UPLINK_ADDRESS, 8022, false).contains("guest-tcp"));
    assert!(probe(&net.ns, UPLINK_ADDRESS, 8053, true).contains("echo ping"));
    // From the host itself: its uplink and gateway addresses, and TCP on 127.0.0.1.
    for addr in [UPLINK_ADDRESS, GATEWAY] {
        assert!(
            probe(&relay.ns, addr, 8022, false).contains("guest-tcp"),
            "{addr}"
        );
        assert!(
            probe(&relay.ns, addr, 8053, true).contains("echo ping"),
            "{addr}"
        );
    }
    assert!(probe(&relay.ns, "127.0.0.1", 8022, false).contains("guest-tcp"));
    // Other ports of the host are not forwarded, and the guest's other ports stay closed to
    // the internet (no route into the guest subnet without a forward).
    assert!(!probe(&net.ns, UPLINK_ADDRESS, 8023, false).contains("guest-tcp"));
    drop(guest);
    drop(relay);
    drop(net);
}

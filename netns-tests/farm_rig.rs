//! The farm of `farm.rs`: HAProxy and three tapwire hosts in namespaces of their own on one
//! underlay bridge, and synthetic guests that lease, renew, answer ARP and echo, and ping.

// Each test binary (scenarios, v86) uses part of the rig.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tapwire_testkit::packet::{self, Dhcp, DhcpKind};

use super::harness::*;

pub use tapwire_testkit::farm::{HOST_IPS, HOST_NAMES, LB_IP, LB_PORT};
pub const ADMIN_TOKEN: &str = "farm-admin-token-0123456789";

/// Three hosts and a balancer. Dropped in field order: HAProxy, then the hosts (each relay
/// stopped, its namespace and underlay link deleted), then the balancer's namespace (and
/// the bridge in it).
pub struct Farm {
    pub haproxy: Proc,
    pub hosts: Vec<Relay>,
    pub lb: Netns,
    pub dir: TempDir,
}

impl Farm {
    pub fn start() -> Farm {
        Self::start_with(&[])
    }

    /// [`Farm::start`] with `extra` options on every host.
    pub fn start_with(extra: &[&str]) -> Farm {
        let dir = TempDir::new();
        let lb = netns("twr");
        let namespaces: Vec<Netns> = HOST_IPS.iter().map(|_| netns("twr")).collect();
        tapwire_testkit::farm::wire(&lb, &namespaces.iter().collect::<Vec<_>>())
            .expect("the underlay");
        let token = dir.0.join("admin-token");
        std::fs::write(&token, ADMIN_TOKEN).expect("token file");
        let token = token.display().to_string();
        let mut hosts = Vec::new();
        for (i, (ns, name)) in namespaces.into_iter().zip(HOST_NAMES).enumerate() {
            let index = i.to_string();
            let relay = Relay::launch_in(
                ns,
                &[],
                None,
                None,
                &[
                    "--listen",
                    "0.0.0.0:8086",
                    "--metrics",
                    "0.0.0.0:9186",
                    "--admin-token",
                    &token,
                    "--trusted-proxy",
                    LB_IP,
                    "--host-name",
                    name,
                    "--hosts",
                    "3",
                    "--host-index",
                    &index,
                ]
                .into_iter()
                .chain(extra.iter().copied())
                .collect::<Vec<_>>(),
            );
            hosts.push(relay);
        }
        // The shipped example, listening where the test connects and with a stats socket to
        // see the servers' health.
        let socket = dir.0.join("haproxy.sock");
        let cfg = tapwire_testkit::farm::haproxy_config(&socket);
        let cfg_file = dir.0.join("haproxy.cfg");
        std::fs::write(&cfg_file, cfg).expect("haproxy.cfg");
        let haproxy = Proc::spawn(
            lb.cmd(&["haproxy", "-db", "-f", &cfg_file.display().to_string()]),
            dir.0.join("haproxy.log"),
        )
        .expect("haproxy");
        let farm = Farm {
            haproxy,
            hosts,
            lb,
            dir,
        };
        farm.wait_for_servers(&["UP", "UP", "UP"], Duration::from_secs(20));
        farm
    }

    /// HAProxy's view of each host (`UP`, `DOWN`, ...), in host order.
    pub fn server_states(&self) -> Vec<String> {
        tapwire_testkit::farm::server_states(&self.dir.0.join("haproxy.sock"))
    }

    /// Waits until HAProxy sees the hosts as `want` says (a state's prefix: `UP`, `DOWN`).
    #[track_caller]
    pub fn wait_for_servers(&self, want: &[&str; 3], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.server_states();
            if got.iter().zip(want).all(|(g, w)| g.starts_with(w)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy sees {got:?}, not {want:?}: {}",
                self.haproxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A synthetic guest's connection to network `name` through the balancer; `None` while
    /// the balancer has no host for it (503) or the host refuses (draining).
    pub fn connect(&self, name: &str) -> Option<WsClient> {
        let url = format!("ws://127.0.0.1:{LB_PORT}/n/{name}");
        self.lb
            .enter(move || tapwire_testkit::ws::connect(&url, None))
            .ok()
            .map(WsClient::new)
    }

    /// [`Farm::connect`], tried every 200 ms for at most `limit`.
    #[track_caller]
    pub fn connect_within(&self, name: &str, limit: Duration) -> WsClient {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.connect(name) {
                return c;
            }
            assert!(Instant::now() < deadline, "no host took network {name}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `method` `path` on host `i`'s admin API, from the balancer's namespace: (status line,
    /// JSON body).
    pub fn api(&self, i: usize, method: &str, path: &str) -> (String, serde_json::Value) {
        let addr = format!("{}:9186", HOST_IPS[i]);
        let (status, body) = http(&self.lb, &addr, (method, path), Some(ADMIN_TOKEN));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, json)
    }

    /// The networks host `i` holds with clients: name → (clients, TAP).
    pub fn held(&self, i: usize) -> Vec<(String, u64, String)> {
        let (status, v) = self.api(i, "GET", "/api/networks");
        assert!(status.contains("200"), "{status}");
        assert_eq!(v["host"], HOST_NAMES[i]);
        v["networks"]
            .as_array()
            .expect("networks")
            .iter()
            .filter(|n| n["clients"].as_u64().unwrap_or(0) > 0)
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or("").to_string(),
                    n["clients"].as_u64().unwrap_or(0),
                    n["tap"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Which host holds network `name` now (the only one with clients in it).
    #[track_caller]
    pub fn host_of(&self, name: &str) -> usize {
        let holders: Vec<usize> = (0..3)
            .filter(|i| !self.killed(*i) && self.held(*i).iter().any(|(n, _, _)| n == name))
            .collect();
        assert_eq!(holders.len(), 1, "network {name} is on hosts {holders:?}");
        holders[0]
    }

    /// Whether host `i`'s relay is gone (killed and reaped).
    pub fn killed(&self, i: usize) -> bool {
        // A reaped process has no pid any more (0); one that runs answers signal 0.
        let pid = self.hosts[i].relay.proc.pid();
        pid == 0
            || !self.hosts[i]
                .ns
                .cmd(&["kill", "-0", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
    }

    /// The MAC of network `tap`'s gateway on host `i`.
    pub fn gateway_mac(&self, i: usize, tap: &str) -> [u8; 6] {
        let text = exec_ok(
            &self.hosts[i].ns,
            &["cat", &format!("/sys/class/net/{tap}/address")],
        );
        packet::parse_mac(text.trim()).expect("MAC")
    }
}

/// A synthetic guest: its connection, MAC, leased address and gateway.
pub struct FarmGuest {
    pub client: WsClient,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: [u8; 6],
}

impl FarmGuest {
    /// Waits (at most `limit`) for a frame `want` accepts, answering ARP requests for the
    /// guest's address meanwhile (the host's kernel asks before it answers).
    pub fn await_frame(&mut self, limit: Duration, mut want: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(f) = self
            .client
            .recv_frame(deadline.saturating_duration_since(Instant::now()))
        {
            if want(&f) {
                return true;
            }
            if let Some((1, asker_mac, asker_ip, target)) = packet::parse_arp(&f) {
                if target == self.ip {
                    self.client
                        .send_frame(&packet::arp(2, self.mac, self.ip, asker_mac, asker_ip));
                }
            }
            if let Some(reply) = packet::echo_reply_to(&f, self.mac, self.ip) {
                self.client.send_frame(&reply);
            }
        }
        false
    }

    /// Renews the lease as a guest in RENEWING state does (unicast to the gateway, from its
    /// address): the address the server ACKs, or `None` (NAK or no answer).
    pub fn renew(&mut self) -> Option<Ipv4Addr> {
        let xid = u32::from_be_bytes([self.mac[2], self.mac[3], self.mac[4], self.mac[5]]) ^ 0x5a5a;
        let request = Dhcp {
            kind: DhcpKind::Request,
            xid,
            chaddr: self.mac,
            ciaddr: self.ip,
            ..Dhcp::default()
        };
        self.client
            .send_frame(&request.frame((self.gateway_mac, self.mac), (self.ip, self.gateway)));
        let acked = std::cell::Cell::new(None);
        self.await_frame(Duration::from_secs(5), |f| {
            match packet::dhcp_reply(f, xid) {
                Some((DhcpKind::Ack, ip, _)) => {
                    acked.set(Some(ip));
                    true
                }
                Some(_) => true,
                None => false,
            }
        });
        acked.get()
    }

    /// Pings `ip` at `mac` once: whether the answer came.
    pub fn ping(&mut self, mac: [u8; 6], ip: Ipv4Addr, seq: u16) -> bool {
        let stamp = 0xfa23_0000 + u64::from(seq);
        self.client.send_frame(&packet::icmp_echo(
            mac, self.mac, self.ip, ip, 0x46, seq, stamp,
        ));
        self.await_frame(Duration::from_secs(2), |f| {
            packet::icmp_echo_reply(f).is_some_and(|(_, s, st)| s == seq && st == stamp)
        })
    }
}

/// Leases an address for `mac` on `client` (network `name` through the balancer).
pub fn join(farm: &Farm, name: &str, mac: [u8; 6]) -> FarmGuest {
    let mut client = farm.connect_within(name, Duration::from_secs(10));
    let ip = lease(&mut client, mac);
    let o = ip.octets();
    let gateway = Ipv4Addr::new(o[0], o[1], o[2], 1);
    let host = farm.host_of(name);
    let tap = farm
        .held(host)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, tap)| tap)
        .expect("tap");
    FarmGuest {
        client,
        mac,
        ip,
        gateway,
        gateway_mac: farm.gateway_mac(host, &tap),
    }
}

/// Names whose subnets (their preferred blocks of the default pool) all differ, so that a
/// network that moves finds its subnet free on any host (docs/scale-out.md says what happens
/// otherwise).
pub fn network_names(count: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut blocks = Vec::new();
    for i in 0.. {
        if names.len() == count {
            break;
        }
        let name = format!("net{i}");
        let block = network_subnet(&name);
        if !blocks.contains(&block) {
            blocks.push(block);
            names.push(name);
        }
    }
    names
}

/// Guest `g` of network `k`: a MAC of its own.
pub fn guest_mac(k: usize, g: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xfa, k as u8, g as u8]
}

#[track_caller]
pub fn skip_unless_haproxy(test: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    let found = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        tapwire_testkit::skip::skip(test, "haproxy not installed (apt-get install haproxy)");
    }
    !found
}

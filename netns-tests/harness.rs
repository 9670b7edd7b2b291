//! Scenario harness: uniquely named network namespaces, a tapwire relay in one, kernel-stack
//! and synthetic guests, and guards that tear everything down on success, failure or panic.
//!
//! Every guard deletes what it made in `Drop`; processes are stopped by the pid we started.
//! Traffic stays on loopback inside the relay's namespace and on the TAP links inside the
//! namespaces made here.

// Each test binary (scenarios, v86) uses part of the harness.
#![allow(dead_code, unused_imports)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use tapwire_testkit::counters::Counters;
pub use tapwire_testkit::netns::{unique, Netns};
pub use tapwire_testkit::packet::{eth, BROADCAST};
pub use tapwire_testkit::process::{Proc, RelayProcess};
pub use tapwire_testkit::tls::{Pem, TlsStream, Transport};
pub use tapwire_testkit::ws::{Got, WsClient};

#[path = "guest.rs"]
mod guest;
pub use guest::*;

/// Skips the test when not root (counted; a failure under `TAPWIRE_NO_SKIP`): whether the
/// caller must return.
#[track_caller]
pub fn skip_unless_root(test: &str) -> bool {
    tapwire_testkit::skip::unless_root(test)
}

/// The tapwire binary under test.
pub fn tapwire_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tapwire")
}

/// A test tool of the testkit crate (built by `cargo build --workspace`).
pub fn tool_bin(name: &str) -> String {
    let env = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    tapwire_testkit::sibling_binary(name, &env)
        .display()
        .to_string()
}

/// A namespace for a test (panics if it cannot be made).
pub fn netns(prefix: &str) -> Netns {
    Netns::new(prefix).expect("ip netns add")
}

/// Runs a command inside `ns`, panicking with its stderr on failure.
/// Borrowed views of owned arguments, for [`Relay::start`].
pub fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn exec_ok(ns: &Netns, args: &[&str]) -> String {
    ns.run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("tapwire-test-"));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TAPWIRE_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tapwire relay running in its own namespace on 127.0.0.1:8086 with 2 cores, stopped
/// with SIGTERM on drop.
pub struct Relay {
    pub relay: RelayProcess,
    pub tap: String,
    pub runtime_dir: PathBuf,
    pub port: u16,
    // Declared last: dropped after the process is gone.
    pub ns: Netns,
    pub dir: TempDir,
}

impl Relay {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_wrapped(&[], extra)
    }

    /// Starts the relay under a wrapper command (e.g. `prlimit --nofile=64:64`).
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Self {
        Self::launch(wrapper, None, None, extra)
    }

    /// Starts the relay with TAP `tap` (default: a unique name) and runtime directory
    /// `runtime_dir` (default: one in its own temporary directory).
    pub fn launch(
        wrapper: &[&str],
        tap: Option<&str>,
        runtime_dir: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        Self::launch_in(netns("twr"), wrapper, tap, runtime_dir, extra)
    }

    /// [`Relay::launch`] in a namespace the caller has prepared (routes, links).
    pub fn launch_in(
        ns: Netns,
        wrapper: &[&str],
        tap: Option<&str>,
        runtime_dir: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        let dir = TempDir::new();
        let tap = tap.map_or_else(|| unique("twt"), str::to_string);
        let runtime_dir = runtime_dir.map_or_else(|| dir.0.join("run"), Path::to_path_buf);
        let port = 8086;
        let mut args: Vec<String> = Vec::new();
        // Another --listen (a farm's host on every address) keeps port 8086.
        if !extra.contains(&"--listen") {
            args.extend(["--listen".to_string(), "127.0.0.1:8086".to_string()]);
        }
        args.extend(
            [
                "--cores",
                "2",
                "--tap",
                &tap,
                "--log-level",
                "debug",
                "--runtime-dir",
            ]
            .iter()
            .map(|a| a.to_string()),
        );
        args.push(runtime_dir.display().to_string());
        // Counters are read from /metrics (fresh or an error, never a stale summary).
        if !extra.contains(&"--metrics") {
            args.extend(["--metrics".to_string(), METRICS_PORT.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let relay = RelayProcess::start(
            &ns,
            wrapper,
            Path::new(tapwire_bin()),
            &args,
            dir.0.join("relay.log"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Relay {
            relay,
            tap,
            runtime_dir,
            port,
            ns,
            dir,
        }
    }

    /// The state directory of this relay's instance (`RUNTIME_DIR/net-INODE/TAP`).
    pub fn instance_dir(&self) -> PathBuf {
        let inode = exec_ok(&self.ns, &["stat", "-L", "-c", "%i", "/proc/self/ns/net"]);
        self.runtime_dir
            .join(format!("net-{}", inode.trim()))
            .join(&self.tap)
    }

    /// Another `tapwire run` in this relay's namespace, with its own log; an error when it
    /// does not start.
    pub fn another(&self, name: &str, args: &[&str]) -> std::io::Result<RelayProcess> {
        let mut all: Vec<String> = vec!["--log-level".into(), "debug".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        RelayProcess::start(
            &self.ns,
            &[],
            Path::new(tapwire_bin()),
            &all,
            self.dir.0.join(format!("{name}.log")),
        )
    }

    /// The TAP's MAC address (the gateway's, as guests see it).
    pub fn tap_mac(&self) -> [u8; 6] {
        let text = exec_ok(
            &self.ns,
            &["cat", &format!("/sys/class/net/{}/address", self.tap)],
        );
        tapwire_testkit::packet::parse_mac(text.trim()).expect("TAP MAC")
    }

    /// A static neighbour entry on the TAP, so the host sends to `ip` at `mac` without ARP.
    pub fn static_neighbour(&self, ip: &str, mac: [u8; 6]) {
        let mac = tapwire_testkit::packet::format_mac(mac);
        exec_ok(
            &self.ns,
            &[
                "ip", "neigh", "replace", ip, "lladdr", &mac, "dev", &self.tap,
            ],
        );
    }

    /// The IPv4 addresses on this relay's TAP.
    pub fn tap_addresses(&self) -> String {
        self.ns
            .cmd(&["ip", "-4", "-o", "addr", "show", "dev", &self.tap])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Sends `sig` to the relay and waits (15 s at most) for it to exit.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        self.relay.expect_exit();
        self.proc().signal(sig);
        self.proc_mut()
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("relay did not exit on signal {sig}"))
    }

    /// Runs `tapwire cleanup --runtime-dir RUNTIME_DIR` in the relay's namespace: whether it
    /// succeeded, and what it printed.
    pub fn cleanup(&self) -> (bool, String) {
        let out = self
            .ns
            .cmd(&[tapwire_bin(), "cleanup", "--runtime-dir"])
            .arg(&self.runtime_dir)
            .output()
            .expect("cleanup");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The relay's process.
    pub fn proc(&self) -> &Proc {
        &self.relay.proc
    }

    /// The relay's process, mutably (to signal or wait for it).
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.relay.proc
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Counters scraped from its `/metrics` (or its exit summary once stopped); panics when
    /// there are none.
    #[track_caller]
    pub fn counters(&self) -> Counters {
        self.relay.counters()
    }

    /// [`Relay::counters`], or why there are none.
    pub fn try_counters(&self) -> Result<Counters, String> {
        self.relay.try_counters()
    }

    /// A synthetic client connected from inside the relay's namespace, from `source_port`.
    pub fn client(&self, source_port: Option<u16>) -> WsClient {
        self.client_with(source_port, None)
    }

    /// A synthetic client with a given socket receive buffer.
    pub fn client_with(&self, source_port: Option<u16>, recv_buffer: Option<usize>) -> WsClient {
        let url = self.url();
        let stream = self
            .ns
            .enter(move || tapwire_testkit::ws::connect_with(&url, source_port, recv_buffer))
            .expect("connect");
        WsClient::new(stream)
    }

    /// wss:// URL of a relay started with [`tls_args`].
    pub fn tls_url(&self) -> String {
        format!("wss://127.0.0.1:{TLS_PORT}/")
    }

    /// A wss:// client connected from inside the relay's namespace, trusting `ca`.
    pub fn tls_client(&self, ca: &Path) -> std::io::Result<WsClient<TlsStream>> {
        let url = self.tls_url();
        let ca = ca.to_path_buf();
        self.ns
            .enter(move || tapwire_testkit::ws::connect_tls(&url, &ca, None))
            .map(WsClient::new)
    }

    /// A kernel-stack guest over wss:// trusting `ca`, placed on `core` of 2.
    pub fn tls_guest(&self, core: usize, ca: &Path) -> Guest {
        spawn_guest_with(
            &self.ns,
            &self.tls_url(),
            &self.dir.0,
            Some(source_port_for_core(core)),
            Some(ca),
            &[],
        )
    }

    /// A raw TCP connection from inside the relay's namespace (no handshake).
    pub fn raw(&self) -> TcpStream {
        let port = self.port;
        let s = self
            .ns
            .enter(move || TcpStream::connect(("127.0.0.1", port)))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    /// Starts a kernel-stack guest in a new namespace, placed on `core` of 2.
    pub fn guest(&self, core: usize) -> Guest {
        self.guest_with(core, &[])
    }

    /// [`Relay::guest`] with `extra` arguments for `tapwire-guest`.
    pub fn guest_with(&self, core: usize, extra: &[&str]) -> Guest {
        spawn_guest_with(
            &self.ns,
            &self.url(),
            &self.dir.0,
            Some(source_port_for_core(core)),
            None,
            extra,
        )
    }

    /// A kernel-stack guest on core `core` with its DHCP lease.
    pub fn leased_guest(&self, core: usize) -> Guest {
        let mut guest = self.guest(core);
        guest.dhcp(&self.dir.0);
        guest
    }
}

/// The `--metrics` port of every relay the harness starts (unless the test gives its own).
pub const METRICS_PORT: u16 = 9186;

/// The wss:// port of relays started with [`tls_args`].
pub const TLS_PORT: u16 = 8443;

/// A fresh self-signed certificate for 127.0.0.1 and localhost, written to `dir` as `NAME.crt`
/// and `NAME.key`, and the relay options that serve it on [`TLS_PORT`].
pub fn tls_args(dir: &Path, name: &str) -> (Pem, Vec<String>) {
    let pem = tapwire_testkit::tls::self_signed(dir, name, &["127.0.0.1", "localhost"])
        .expect("certificate");
    let args = vec![
        "--listen-tls".to_string(),
        format!("127.0.0.1:{TLS_PORT}"),
        "--tls-cert".to_string(),
        pem.cert.display().to_string(),
        "--tls-key".to_string(),
        pem.key.display().to_string(),
    ];
    (pem, args)
}

/// Waits for a frame whose payload ends with `tag` (other traffic, e.g. the host's IPv6
/// neighbour discovery, may come first).
pub fn wait_for_tag(client: &mut WsClient, tag: &[u8], limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match client.recv_frame(deadline.saturating_duration_since(Instant::now())) {
            Some(f) if f.ends_with(tag) => return Some(f),
            Some(_) => {}
            None => return None,
        }
    }
    None
}

/// Test MAC number `n` (v86's OUI).
pub fn mac(n: u8) -> [u8; 6] {
    [0x00, 0x22, 0x15, 0x00, 0x00, n]
}

/// Names of links in a namespace (besides lo).
pub fn links(ns: &Netns) -> Vec<String> {
    exec_ok(ns, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .filter(|n| n != "lo")
        .collect()
}

/// Waits up to `limit` for every process of `pids` to be gone; whether they are.
pub fn all_gone(pids: &[u32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    pids.iter().all(|p| !pid_alive(*p))
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The dnsmasq pids a relay's log names (`dnsmasq[PID]`).
pub fn dnsmasq_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.split("dnsmasq[").nth(1)?.split(']').next()?.parse().ok())
        .collect()
}

/// Sends probes from `sender` (source `from`) to `to` until one reaches `receiver` (10 s at
/// most), then takes any later copy: afterwards every core knows where `to` is (the two may
/// be on different cores, and `to`'s first frame may still have been queued).
pub fn until_delivered(sender: &mut WsClient, receiver: &mut WsClient, to: [u8; 6], from: [u8; 6]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    'probe: loop {
        assert!(Instant::now() < deadline, "no probe reached the receiver");
        sender.send_frame(&eth(to, from, b"probe"));
        while let Some(f) = receiver.recv_frame(Duration::from_millis(200)) {
            if f[6..12] == from {
                break 'probe;
            }
        }
    }
    for _ in 0..20 {
        if receiver.recv_frame(Duration::from_millis(200)).is_none() {
            break;
        }
    }
}

/// The status line the relay answers `request` with (sent on a raw connection), read up to
/// the end of the response head (a `101` keeps the connection open).
pub fn http_status(relay: &Relay, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = relay.raw();
    s.write_all(request).expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// `METHOD PATH` over HTTP/1.1 to `addr` from inside `ns`, with `Authorization: Bearer
/// TOKEN` when given: the status line and the body (the server closes after answering).
pub fn http(
    ns: &Netns,
    addr: &str,
    (method, path): (&str, &str),
    token: Option<&str>,
) -> (String, String) {
    use std::io::{Read, Write};
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
    let addr = addr.to_string();
    let text = ns
        .enter(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap_or_else(|e| panic!("HTTP {method} {path}: {e}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// `tapwire token` with `args`: (token, URL with the token).
pub fn tapwire_token(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(tapwire_bin())
        .arg("token")
        .args(args)
        .output()
        .expect("tapwire token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    (
        lines.next().unwrap_or("").to_string(),
        lines.next().unwrap_or("").to_string(),
    )
}

/// Takes a DHCP lease for `mac` on a synthetic client; see [`WsClient::lease`].
pub fn lease<S: Transport>(client: &mut WsClient<S>, mac: [u8; 6]) -> std::net::Ipv4Addr {
    client.lease(mac)
}

/// What `ns` gets from TCP `addr:port` (what the server sends first, or the error) or, with
/// `udp`, the answer to a datagram "ping" (python3, so IPv6 with a `%scope` works too).
pub fn probe(ns: &Netns, addr: &str, port: u16, udp: bool) -> String {
    let script = if udp {
        format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\ntry:\n  s.sendto(b'ping', ('{addr}', {port})); print(s.recv(64))\nexcept OSError as e:\n  print(e)")
    } else {
        format!("import socket\ntry:\n  print(socket.create_connection(('{addr}', {port}), timeout=2).recv(64))\nexcept OSError as e:\n  print(e)")
    };
    let out = ns
        .cmd(&["timeout", "5", "python3", "-c", &script])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The subnet a relay with the default pool options gives network `name` when that block is
/// free there (the block of the pool its name hashes to: `Pool::take_for`).
pub fn network_subnet(name: &str) -> tapwire::config::Subnet {
    let mut pool =
        tapwire::networks::Pool::new("10.96.0.0/12".parse().expect("pool"), 24).expect("pool");
    pool.exclude(&"10.86.0.0/16".parse().expect("subnet"));
    // --max-networks 256 and the 64 spare blocks the relay takes.
    pool.limit(256 + 64);
    pool.take_for(name, &[]).expect("a block")
}

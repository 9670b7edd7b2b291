//! Scenario harness: uniquely named network namespaces, a tapwire relay in one, kernel-stack
//! and synthetic guests, and guards that tear everything down on success, failure or panic.
//!
//! Every guard deletes what it made in `Drop`; processes are stopped by the pid we started.
//! Traffic stays on loopback inside the relay's namespace and on the TAP links inside the
//! namespaces made here.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tapwire::ws::{frame, Event, Session};

/// Prints the skip line and returns true when not root (the caller returns).
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root ({test})");
        return true;
    }
    false
}

/// The tapwire binary under test.
pub fn tapwire_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tapwire")
}

pub use tapwire::testkit::{unique, Netns};

/// A namespace for a test (panics if it cannot be made).
pub fn netns(prefix: &str) -> Netns {
    Netns::new(prefix).expect("ip netns add")
}

/// Runs a command inside `ns`, panicking with its stderr on failure.
pub fn exec_ok(ns: &Netns, args: &[&str]) -> String {
    ns.run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A child process, killed (SIGKILL by its pid) and reaped on drop unless already waited.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits up to `limit` for exit; returns the exit code (None: still running or signalled).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Relay {
    /// Stops the relay the way a user does (SIGTERM: clients closed, host state undone), and
    /// only kills it if it hangs.
    fn drop(&mut self) {
        if self.proc.child.is_some() {
            self.proc.signal(libc::SIGTERM);
            if self.proc.wait_exit(Duration::from_secs(10)).is_none() {
                eprintln!("relay ignored SIGTERM for 10 s; killing it");
            }
        }
    }
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

/// A tapwire relay running in its own namespace on 127.0.0.1:8086 with 2 cores.
pub struct Relay {
    pub proc: Proc,
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
        let ns = netns("twr");
        let dir = TempDir::new();
        let tap = unique("twt");
        let runtime_dir = dir.0.join("run");
        let port = 8086;
        let mut args: Vec<&str> = wrapper.to_vec();
        args.push(tapwire_bin());
        let mut cmd = ns.cmd(&args);
        cmd.args([
            "run",
            "--listen",
            "127.0.0.1:8086",
            "--cores",
            "2",
            "--tap",
            &tap,
            "--log-level",
            "debug",
        ]);
        cmd.arg("--runtime-dir").arg(&runtime_dir).args(extra);
        let proc = Proc::spawn(cmd, dir.0.join("relay.log"));
        let relay = Relay {
            proc,
            tap,
            runtime_dir,
            port,
            ns,
            dir,
        };
        relay.wait_listening();
        relay
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.proc.log_text().contains("relaying ws://") {
                return;
            }
            if self.proc.log_text().contains("tapwire: ") {
                panic!("relay failed to start:\n{}", self.proc.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("relay did not start within 20 s:\n{}", self.proc.log_text());
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Counters from a SIGUSR1 summary (or the exit summary once stopped).
    pub fn counters(&self) -> HashMap<String, u64> {
        let before = self
            .proc
            .log_text()
            .matches("tapwire_clients_open ")
            .count();
        if self.proc.child.is_some() {
            self.proc.signal(libc::SIGUSR1);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self
                .proc
                .log_text()
                .matches("tapwire_clients_open ")
                .count()
                == before
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        parse_counters(&self.proc.log_text())
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
            .enter(move || tapwire::guest::connect_with(&url, source_port, recv_buffer))
            .expect("connect");
        WsClient::new(stream)
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
        let ns = netns("twg");
        let port = source_port_for_core(core);
        let url = self.url();
        let cmd = self.ns.cmd(&[
            tapwire_bin(),
            "guest",
            "--url",
            &url,
            "--netns",
            &ns.name,
            "--tap",
            "eth0",
            "--source-port",
            &port.to_string(),
        ]);
        let proc = Proc::spawn(cmd, self.dir.0.join(format!("{}.log", ns.name)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns
            .cmd(&["ip", "link", "show", "eth0"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "guest TAP did not appear: {}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Guest { proc, ns, ip: None }
    }
}

static PORT: AtomicUsize = AtomicUsize::new(0);

/// A free-looking source port that [`tapwire::control::listen::steer`] puts on `core` of 2.
pub fn source_port_for_core(core: usize) -> u16 {
    let base = 20_000 + (std::process::id() as usize % 5_000) * 4;
    loop {
        let p = (base + PORT.fetch_add(1, Ordering::Relaxed)) as u16;
        if tapwire::control::listen::steer(p, 2) == core {
            return p;
        }
    }
}

pub fn parse_counters(log: &str) -> HashMap<String, u64> {
    let mut map = HashMap::new();
    for line in log.lines() {
        if let Some((name, value)) = line.rsplit_once(' ') {
            if name.starts_with("tapwire_") {
                if let Ok(v) = value.parse() {
                    map.insert(name.to_string(), v);
                }
            }
        }
    }
    map
}

/// A counter value from a summary (0 when absent).
pub fn counter(map: &HashMap<String, u64>, name: &str) -> u64 {
    map.get(name).copied().unwrap_or(0)
}

pub fn drops(map: &HashMap<String, u64>, reason: &str) -> u64 {
    counter(map, &format!("tapwire_drops_total{{reason=\"{reason}\"}}"))
}

/// A guest whose network stack is the kernel's, in its own namespace.
pub struct Guest {
    pub proc: Proc,
    pub ip: Option<String>,
    pub ns: Netns,
}

const UDHCPC_SCRIPT: &str = "#!/bin/sh\ncase \"$1\" in\n  bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/${mask:-16}\" dev \"$interface\"; echo \"LEASE $ip\" ;;\nesac\n";

impl Guest {
    /// Takes a DHCP lease with busybox udhcpc; returns the address.
    pub fn dhcp(&mut self, dir: &Path) -> String {
        let script = dir.join("udhcpc.sh");
        if !script.exists() {
            std::fs::write(&script, UDHCPC_SCRIPT).expect("script");
            std::process::Command::new("chmod")
                .arg("+x")
                .arg(&script)
                .status()
                .expect("chmod");
        }
        let out = self
            .ns
            .cmd(&[
                "timeout", "60", "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "10", "-T",
                "2", "-s",
            ])
            .arg(&script)
            .output()
            .expect("udhcpc");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let ip = text
            .lines()
            .find_map(|l| l.strip_prefix("LEASE "))
            .unwrap_or_else(|| panic!("no DHCP lease: {text}"))
            .trim()
            .to_string();
        self.ip = Some(ip.clone());
        ip
    }

    /// Pings `target` `count` times; returns how many answers came back.
    pub fn ping(&self, target: &str, count: u32) -> u32 {
        let out = self
            .ns
            .cmd(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "3",
                target,
            ])
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                l.split(", ")
                    .find_map(|p| p.strip_suffix(" received"))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Starts a ping in the background (bounded by `count`).
    pub fn ping_background(&self, target: &str, count: u32, log: PathBuf) -> Proc {
        Proc::spawn(
            self.ns.cmd(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "3",
                target,
            ]),
            log,
        )
    }
}

/// Result of a background ping: (transmitted, received).
pub fn ping_result(log: &str) -> (u32, u32) {
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("");
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

/// A synthetic guest: a WebSocket client sending and receiving hand-built frames.
pub struct WsClient {
    pub stream: TcpStream,
    session: Session,
    /// Reassembly of a message received in pieces.
    buf: Vec<u8>,
    /// Bytes received and not yet decoded past `pos`.
    pending: Vec<u8>,
    pos: usize,
}

/// What a synthetic client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Frame(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Eof,
    Timeout,
}

impl WsClient {
    pub fn new(stream: TcpStream) -> Self {
        WsClient {
            stream,
            session: Session::new(70_000, false),
            buf: Vec::new(),
            pending: Vec::new(),
            pos: 0,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send_frame(&mut self, eth: &[u8]) {
        let f = tapwire::guest::client_frame(frame::OP_BINARY, eth);
        self.send_raw(&f);
    }

    /// Next event within `limit`.
    pub fn recv(&mut self, limit: Duration) -> Got {
        let deadline = Instant::now() + limit;
        loop {
            let mut pos = self.pos;
            let ev = self
                .session
                .next(&mut self.pending, &mut pos)
                .unwrap_or_else(|e| panic!("server sent an invalid frame: {e}"));
            self.pos = pos;
            let got = match ev {
                Some(Event::Message(r)) => Some(Got::Frame(self.pending[r].to_vec())),
                Some(Event::Piece { range, first }) => {
                    if first {
                        self.buf.clear();
                    }
                    self.buf.extend_from_slice(&self.pending[range]);
                    None
                }
                Some(Event::Assembled) => Some(Got::Frame(std::mem::take(&mut self.buf))),
                Some(Event::Ping) => Some(Got::Ping(self.session.control_payload().to_vec())),
                Some(Event::Pong) => Some(Got::Pong(self.session.control_payload().to_vec())),
                Some(Event::Close { code }) => Some(Got::Close(code)),
                Some(Event::Runt { .. }) => None,
                None => {
                    self.pending.drain(..self.pos);
                    self.pos = 0;
                    let now = Instant::now();
                    if now >= deadline {
                        return Got::Timeout;
                    }
                    self.stream
                        .set_read_timeout(Some(deadline - now))
                        .expect("timeout");
                    let mut chunk = [0u8; 65_536];
                    match self.stream.read(&mut chunk) {
                        Ok(0) => return Got::Eof,
                        Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            return Got::Timeout
                        }
                        Err(_) => return Got::Eof,
                    }
                    None
                }
            };
            if let Some(g) = got {
                return g;
            }
        }
    }

    /// Next Ethernet frame within `limit`, skipping control frames (answering pings).
    pub fn recv_frame(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Got::Frame(f) => return Some(f),
                Got::Ping(p) => {
                    let pong = tapwire::guest::client_frame(frame::OP_PONG, &p);
                    self.send_raw(&pong);
                }
                Got::Pong(_) => {}
                _ => return None,
            }
        }
    }

    /// Reads until the server's close frame and the end of the stream; returns the code.
    pub fn expect_close(&mut self, limit: Duration) -> Option<u16> {
        let deadline = Instant::now() + limit;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Close(code) => {
                    let eof = matches!(self.recv(Duration::from_secs(5)), Got::Eof);
                    assert!(eof, "socket not closed after the close frame");
                    return code;
                }
                Got::Eof | Got::Timeout => return None,
                _ => {}
            }
        }
    }
}

/// An Ethernet frame from `src` to `dst` with EtherType 0x88B5 (local experimental) and `payload`.
pub fn eth(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xB5]);
    f.extend_from_slice(payload);
    f
}

pub const BROADCAST: [u8; 6] = [0xFF; 6];

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

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The dnsmasq pids a ledger recorded.
pub fn dnsmasq_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.split("dnsmasq[").nth(1)?.split(']').next()?.parse().ok())
        .collect()
}

//! Helpers shared by the namespace scenarios (`netns-tests/`) and `relay-bench`: namespace
//! guards, entering a namespace on a thread, and hand-built Ethernet/IPv4/UDP/ICMP frames.
//! Test and benchmark tooling; the relay itself does not use it.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique short name (interface and namespace names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a uniquely named namespace with `lo` up.
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let name = unique(prefix);
        let status = Command::new("ip").args(["netns", "add", &name]).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "ip netns add {name} failed (needs root)"
            )));
        }
        let ns = Netns { name };
        ns.cmd(&["ip", "link", "set", "lo", "up"]).status()?;
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside the namespace; its stdout, or the error with its stderr.
    pub fn run(&self, args: &[&str]) -> std::io::Result<String> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread inside this namespace (sockets it opens stay in it).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_path(&path).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter_path(path: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns on an open namespace file; affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(out: &mut Vec<u8>, protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) {
    let start = out.len();
    let total = (20 + payload_len) as u16;
    out.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        protocol,
        0,
        0,
    ]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let sum = checksum(&out[start..start + 20]);
    out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
}

/// An Ethernet/IPv4/UDP frame of exactly `frame_len` bytes (≥ 42), UDP checksum 0.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    frame_len: usize,
) -> Vec<u8> {
    let payload = frame_len.max(42) - 42;
    let mut f = Vec::with_capacity(frame_len.max(42));
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    ipv4(&mut f, 17, src.0, dst.0, 8 + payload);
    let udp_len = (8 + payload) as u16;
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(frame_len.max(42), 0x5A);
    f
}

/// An ICMP echo request frame with identifier `id`, sequence `seq` and 8 bytes of `stamp`.
pub fn icmp_echo(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    stamp: u64,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(50);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    ipv4(&mut f, 1, src, dst, 16);
    let start = f.len();
    f.extend_from_slice(&[8, 0, 0, 0]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&stamp.to_be_bytes());
    let sum = checksum(&f[start..]);
    f[start + 2..start + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// If `frame` is an ICMP echo reply, its (identifier, sequence, stamp).
pub fn icmp_echo_reply(frame: &[u8]) -> Option<(u16, u16, u64)> {
    if frame.len() < 50 || frame[12..14] != [0x08, 0x00] || frame[23] != 1 || frame[34] != 0 {
        return None;
    }
    let id = u16::from_be_bytes([frame[38], frame[39]]);
    let seq = u16::from_be_bytes([frame[40], frame[41]]);
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&frame[42..50]);
    Some((id, seq, u64::from_be_bytes(stamp)))
}

/// A UDP echo server on a thread (sends every datagram back to its sender) until dropped.
pub struct UdpEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl UdpEcho {
    /// Binds `addr` inside `ns` (with an 8 MiB receive buffer, so a stalled thread does not
    /// lose datagrams) and echoes on a thread pinned to `cpu` if given.
    pub fn start(ns: &Netns, addr: std::net::SocketAddrV4, cpu: Option<usize>) -> Self {
        let sock = ns.enter(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("udp socket");
            // Force: above net.core.rmem_max (root only; the plain call caps silently).
            // SAFETY: setsockopt with a valid int on a socket we own.
            unsafe {
                let size: libc::c_int = 8 << 20;
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s.bind(&std::net::SocketAddr::V4(addr).into())
                .expect("bind udp echo");
            std::net::UdpSocket::from(s)
        });
        sock.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .expect("timeout");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            let mut buf = vec![0u8; 65_536];
            let mut echoed = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if sock.send_to(&buf[..n], from).is_ok() {
                        echoed += 1;
                    }
                }
            }
            echoed
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server; datagrams echoed.
    pub fn stop(mut self) -> u64 {
        self.finish()
    }

    fn finish(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_sizes() {
        let f = udp_frame(
            [1; 6],
            [2; 6],
            ("10.0.0.2".parse().unwrap(), 5),
            ("10.0.0.1".parse().unwrap(), 9),
            1514,
        );
        assert_eq!(f.len(), 1514);
        assert_eq!(
            checksum(&f[14..34]),
            0,
            "IPv4 header checksum verifies to zero"
        );
        let e = icmp_echo(
            [1; 6],
            [2; 6],
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            7,
            9,
            42,
        );
        assert_eq!(checksum(&e[34..]), 0);
        let mut reply = e.clone();
        reply[34] = 0;
        assert_eq!(icmp_echo_reply(&reply), Some((7, 9, 42)));
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
    }
}

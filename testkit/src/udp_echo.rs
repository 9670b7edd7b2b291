//! A UDP echo server in a namespace, on a thread, until dropped.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use crate::netns::Netns;

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

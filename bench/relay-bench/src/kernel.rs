//! The kernel's own limits, measured in the same run on the same CPUs: TAP writes, TAP reads, loopback TCP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapwire::ws::frame;
use tapwire_testkit::netns::{unique, Netns};
use tapwire_testkit::packet::{parse_mac, udp_frame};

use crate::relay::*;
use crate::stats::{stat, Stat};
use crate::sys::*;

/// A single-queue TAP with the gateway address and a UDP sink, for the kernel-limit loops.
pub(crate) fn kernel_tap(ns: &Netns, size: usize) -> (std::os::fd::OwnedFd, [u8; 6], String) {
    let name = unique("twk");
    let n2 = name.clone();
    let fd = ns.enter(move || tapwire::tap::open_single(&n2, false).expect("tap"));
    ns.run(&["ip", "addr", "add", "10.87.0.1/24", "dev", &name])
        .expect("addr");
    let mtu = (size.max(1514) - 14).to_string();
    ns.run(&["ip", "link", "set", &name, "mtu", &mtu, "up"])
        .expect("up");
    neighbour(ns, &name, "10.87.0.2", "02:00:00:00:00:02");
    let mac = parse_mac(
        &ns.run(&["cat", &format!("/sys/class/net/{name}/address")])
            .expect("mac"),
    )
    .expect("mac");
    (fd, mac, name)
}

/// The kernel's TAP write limit: one thread writing pre-built UDP frames to the sink.
pub(crate) fn kernel_tap_write(ns: &Netns, size: usize, seconds: f64) -> f64 {
    let (fd, mac, _name) = kernel_tap(ns, size);
    let sink = ns.enter(|| UdpSocket::bind(("10.87.0.1", SINK_PORT)).expect("sink"));
    let frame = udp_frame(
        mac,
        [2, 0, 0, 0, 0, 2],
        ("10.87.0.2".parse().unwrap(), 1000),
        ("10.87.0.1".parse().unwrap(), SINK_PORT),
        size,
    );
    let fd_raw = fd.as_raw_fd();
    let writes = spawn_in(ns, RELAY_CPU, move || {
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..64 {
                // SAFETY: writing our frame buffer to the TAP descriptor kept open by `fd`.
                if unsafe { libc::write(fd_raw, frame.as_ptr().cast(), frame.len()) } > 0 {
                    n += 1;
                }
            }
        }
        n
    })
    .join()
    .expect("writer");
    drop(sink);
    drop(fd);
    // Every write the TAP accepted went through the kernel's receive path on this CPU.
    writes as f64 / seconds
}

/// The kernel's TAP read limit: a UDP sender on the load CPU, one thread reading the TAP.
pub(crate) fn kernel_tap_read(ns: &Netns, size: usize, seconds: f64) -> f64 {
    let (fd, _mac, _name) = kernel_tap(ns, size);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let payload = vec![0x5Au8; size.max(42) - 42];
    let sender = spawn_in(ns, LOAD_CPU, move || {
        let s = UdpSocket::bind("10.87.0.1:0").expect("udp");
        s.connect("10.87.0.2:9").expect("connect");
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..64 {
                let _ = s.send(&payload);
            }
        }
    });
    let fd_raw = fd.as_raw_fd();
    // Non-blocking reads so the loop ends on time even if the sender stalls.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd_raw, libc::F_SETFL, libc::O_RDWR | libc::O_NONBLOCK) };
    let reads = spawn_in(ns, RELAY_CPU, move || {
        let mut buf = vec![0u8; 65_600];
        std::thread::sleep(Duration::from_millis(200));
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut n = 0u64;
        while Instant::now() < end {
            // SAFETY: reading into our buffer from the TAP descriptor kept open by `fd`.
            if unsafe { libc::read(fd_raw, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
                n += 1;
            }
        }
        n
    })
    .join()
    .expect("reader");
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    drop(fd);
    reads as f64 / seconds
}

/// Loopback TCP with the same message sizes (plus a 2–4 byte WebSocket header).
pub(crate) fn kernel_loopback_tcp(ns: &Netns, size: usize, seconds: f64) -> f64 {
    let msg = frame::header_len(size, false) + size;
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").expect("listen"));
    let addr = listener.local_addr().expect("addr");
    let writer = spawn_in(ns, LOAD_CPU, move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let chunk = vec![0u8; msg * 64];
        let end = Instant::now() + Duration::from_secs_f64(seconds + 0.5);
        while Instant::now() < end {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (mut conn, _) = listener.accept().expect("accept");
    let bytes = spawn_in(ns, RELAY_CPU, move || {
        let mut buf = vec![0u8; 256 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut total = 0u64;
        while Instant::now() < end {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    })
    .join()
    .expect("reader");
    let _ = writer.join();
    bytes as f64 / msg as f64 / seconds
}

/// A kernel-limit loop: frames (or messages) per second at a frame size, for some seconds.
pub(crate) type KernelLoop = fn(&Netns, usize, f64) -> f64;

/// `f` measured `--reps` times at `size`: median, min and max.
pub(crate) fn kernel_limit(ctx: &crate::Ctx, f: KernelLoop, size: usize) -> Stat {
    let o = &ctx.opts;
    stat(
        &(0..o.reps)
            .map(|_| f(&ctx.ns, size, o.seconds))
            .collect::<Vec<_>>(),
    )
}

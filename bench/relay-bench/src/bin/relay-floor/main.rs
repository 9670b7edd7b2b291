//! relay-floor: the least work any relay must do on this kernel, for relay-bench's *floor*
//! rows. It is not a relay: it has no switch, no guard, no queues, no limits, one core.
//!
//! - `--direction up`: receives the WebSocket byte stream of every connection with large
//!   receives (256 KiB), parses each frame's header, unmasks the payload in place and writes
//!   it to the TAP: one `write` per frame (`--io plain`) or every frame of one receive in one
//!   `io_uring_enter` (`--io uring`).
//! - `--direction down`: reads the TAP into 256 slots, a read outstanding on an io_uring for
//!   each and the completions taken in batches (`--io uring`), or with `read` until the TAP is
//!   empty (`--io plain`); finds each frame's connection by its destination MAC (relay-bench's guest MACs number the
//!   connections in the order they were accepted: a table index, cheaper than any relay's
//!   lookup), and sends each connection its frames, each behind a 2- or 4-byte WebSocket
//!   header, in one `sendmsg` per connection per batch (no copy: the headers and frames are
//!   the message's pieces).
//!
//! `--nft FILE` puts it behind an nftables ruleset (relay-bench gives it the relay's own).
//! `relay-floor run …` prints `relaying ws://ADDR/` once it listens (relay-bench waits for
//! that line, as for tapwire) and, on SIGTERM or SIGINT, one line with what it moved.

mod tap;
mod wsio;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tap::{TapReader, TapWriter};
use tapwire::ws::frame;
use wsio::{frames, upgrade};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Direction {
    /// Connections → TAP.
    Up,
    /// TAP → connections.
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Io {
    /// One `write` or `read` per frame.
    Plain,
    /// Up: the frames of one receive written with one `io_uring_enter`; down: a read
    /// outstanding for every slot, completions taken in batches.
    Uring,
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Listen, make the TAP and move frames one way until SIGTERM.
    Run(Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// The TAP to make (one queue, the flags tapwire uses).
    #[arg(long)]
    tap: String,
    /// The TAP's address and prefix (the gateway's, as tapwire gives it).
    #[arg(long, default_value = "10.86.0.1/16")]
    address: String,
    /// The TAP's MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Where the WebSocket clients connect.
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    #[arg(long, value_enum)]
    direction: Direction,
    /// How the TAP is written (up) or read (down).
    #[arg(long, value_enum, default_value = "uring")]
    io: Io,
    /// An nftables ruleset to load once the TAP is up (`nft -f`), its tables deleted at
    /// exit: relay-bench gives the floor the relay's own host protection this way.
    #[arg(long)]
    nft: Option<std::path::PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// What the floor moved, printed at exit.
#[derive(Debug, Default)]
struct Moved {
    frames: u64,
    bytes: u64,
    /// Frames the kernel refused (TAP write errors, full socket buffers).
    refused: u64,
    /// Frames for no connection (down: a destination that is not a connected guest).
    unroutable: u64,
}

/// Receive size: as large as a relay's provided buffers are useful.
const RECV: usize = 256 * 1024;
/// TAP reads per batch (down), and so at most 512 pieces per `sendmsg` (UIO_MAXIOV is 1024).
const BATCH: usize = 256;

fn main() {
    let Cmd::Run(args) = Cli::parse().cmd;
    if let Err(e) = run(&args) {
        eprintln!("relay-floor: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let tap = tapwire::tap::open_multiqueue(&args.tap, 1)
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("no TAP queue")?;
    for cmd in [
        vec!["addr", "add", &args.address, "dev", &args.tap],
        vec!["link", "set", &args.tap, "mtu", &args.mtu.to_string(), "up"],
    ] {
        let status = std::process::Command::new("ip")
            .args(&cmd)
            .status()
            .map_err(|e| format!("ip: {e}"))?;
        if !status.success() {
            return Err(format!("ip {} failed", cmd.join(" ")));
        }
    }
    let tables = match &args.nft {
        Some(file) => load_nft(file)?,
        None => Vec::new(),
    };
    let result = serve(args, tap);
    for table in tables {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table"])
            .args(table.split_whitespace())
            .status();
    }
    result
}

/// Loads the ruleset in `file`; the tables it made (`FAMILY NAME`).
fn load_nft(file: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let status = std::process::Command::new("nft")
        .arg("-f")
        .arg(file)
        .status()
        .map_err(|e| format!("nft: {e}"))?;
    if !status.success() {
        return Err(format!("nft -f {} failed", file.display()));
    }
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(|l| l.trim_end_matches(" {").trim().to_string())
        .collect())
}

fn serve(args: &Args, tap: OwnedFd) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen).map_err(|e| format!("{}: {e}", args.listen))?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    // SAFETY: epoll_create1 has no preconditions; the descriptor is owned from here on.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(format!("epoll: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor of ours.
    let epoll: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(epoll) };
    let (tx, rx) = mpsc::channel();
    let watch_conns = (args.direction == Direction::Up).then_some(epoll.as_raw_fd());
    std::thread::spawn(move || accept_loop(listener, tx, watch_conns));
    println!(
        "relaying ws://{}/ (relay-floor, {:?})",
        args.listen, args.direction
    );
    let _ = std::io::stdout().flush();
    let moved = match args.direction {
        Direction::Up => up(epoll.as_raw_fd(), tap.as_raw_fd(), &rx, args.io),
        Direction::Down => down(epoll.as_raw_fd(), tap.as_raw_fd(), &rx, (args.mtu, args.io)),
    }?;
    println!(
        "relay-floor: {} frames, {} bytes, {} refused, {} unroutable",
        moved.frames, moved.bytes, moved.refused, moved.unroutable
    );
    Ok(())
}

/// Accepts connections, answers their upgrades and hands them on in accept order; with
/// `epoll`, registers each for input under its index.
fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<(TcpStream, Vec<u8>)>,
    epoll: Option<RawFd>,
) {
    for (index, conn) in listener.incoming().enumerate() {
        let Ok(mut conn) = conn else { continue };
        let Some(rest) = upgrade(&mut conn) else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_nonblocking(true);
        let fd = conn.as_raw_fd();
        if tx.send((conn, rest)).is_err() {
            return;
        }
        if let Some(ep) = epoll {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: index as u64,
            };
            // SAFETY: registering a socket we just handed to the main loop, which keeps it open.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        }
    }
}

/// A connection of the up direction: the start of a frame the last receive cut off.
struct UpConn {
    sock: TcpStream,
    carry: Vec<u8>,
    open: bool,
}

fn up(
    epoll: RawFd,
    tap: RawFd,
    rx: &mpsc::Receiver<(TcpStream, Vec<u8>)>,
    io: Io,
) -> Result<Moved, String> {
    let mut moved = Moved::default();
    let mut conns: Vec<UpConn> = Vec::new();
    let mut buf = vec![0u8; RECV + 70_000];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut writer = TapWriter::new(tap, io)?;
    while !STOP.load(Ordering::Relaxed) {
        // SAFETY: `events` is a valid array of its length.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in &events[..n.max(0) as usize] {
            let index = ev.u64 as usize;
            while conns.len() <= index {
                let Ok((sock, carry)) = rx.recv_timeout(Duration::from_secs(1)) else {
                    return Err("a registered connection never arrived".into());
                };
                conns.push(UpConn {
                    sock,
                    carry,
                    open: true,
                });
            }
            let conn = &mut conns[index];
            if !conn.open {
                continue;
            }
            let carried = conn.carry.len();
            buf[..carried].copy_from_slice(&conn.carry);
            let got = match conn.sock.read(&mut buf[carried..carried + RECV]) {
                Ok(0) => {
                    close_up(epoll, conn);
                    continue;
                }
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    close_up(epoll, conn);
                    continue;
                }
            };
            let data = &mut buf[..carried + got];
            let (used, ok) = frames(data, |payload| writer.write(payload, &mut moved))?;
            writer.finish(&mut moved)?;
            conn.carry.clear();
            conn.carry.extend_from_slice(&data[used..]);
            if !ok {
                close_up(epoll, conn);
            }
        }
    }
    Ok(moved)
}

fn close_up(epoll: RawFd, conn: &mut UpConn) {
    conn.open = false;
    // SAFETY: removing a descriptor we still hold open from our epoll set.
    unsafe {
        libc::epoll_ctl(
            epoll,
            libc::EPOLL_CTL_DEL,
            conn.sock.as_raw_fd(),
            std::ptr::null_mut(),
        )
    };
}

/// relay-bench's guest MACs (`02:00:0a:56:HI:LO`, guest number HI·256+LO).
const GUEST_PREFIX: [u8; 4] = [0x02, 0x00, 0x0a, 0x56];

fn down(
    epoll: RawFd,
    tap: RawFd,
    rx: &mpsc::Receiver<(TcpStream, Vec<u8>)>,
    (mtu, io): (usize, Io),
) -> Result<Moved, String> {
    let mut moved = Moved::default();
    let slot = mtu + 14;
    let mut frames = vec![0u8; slot * BATCH];
    let mut lens = [0usize; BATCH];
    let mut headers = [[0u8; 4]; BATCH];
    let mut reader = TapReader::new(epoll, tap, io, &mut frames, slot)?;
    let mut conns: Vec<TcpStream> = Vec::new();
    // Per connection, the frames of this batch (slots), and which connections have any.
    let mut pending: Vec<Vec<u16>> = Vec::new();
    let mut touched: Vec<usize> = Vec::new();
    let mut ready: Vec<u16> = Vec::with_capacity(BATCH);
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(2 * BATCH);
    while !STOP.load(Ordering::Relaxed) {
        reader.next_batch(&mut frames, &mut lens, &mut ready)?;
        if ready.is_empty() {
            continue;
        }
        while let Ok((sock, _)) = rx.try_recv() {
            conns.push(sock);
            pending.push(Vec::new());
        }
        for &f in &ready {
            let at = usize::from(f) * slot;
            let dst = &frames[at..at + 6];
            let index = (usize::from(dst[4]) << 8) | usize::from(dst[5]);
            if dst[..4] != GUEST_PREFIX || index >= conns.len() {
                moved.unroutable += 1;
            } else {
                if pending[index].is_empty() {
                    touched.push(index);
                }
                pending[index].push(f);
            }
        }
        for &index in &touched {
            iov.clear();
            let mut total = 0;
            for &f in &pending[index] {
                let f = usize::from(f);
                let h =
                    frame::encode_header(&mut headers[f], true, frame::OP_BINARY, lens[f], None);
                iov.push(libc::iovec {
                    iov_base: headers[f].as_mut_ptr().cast(),
                    iov_len: h,
                });
                iov.push(libc::iovec {
                    iov_base: frames[f * slot..].as_mut_ptr().cast(),
                    iov_len: lens[f],
                });
                total += h + lens[f];
            }
            let n = pending[index].len() as u64;
            if send_all(&conns[index], &mut iov, total) {
                moved.frames += n;
                moved.bytes += pending[index]
                    .iter()
                    .map(|f| lens[usize::from(*f)] as u64)
                    .sum::<u64>();
            } else {
                moved.refused += n;
            }
            pending[index].clear();
        }
        touched.clear();
        reader.release(&mut frames, &ready)?;
    }
    Ok(moved)
}

/// Sends the pieces in `iov` (`total` bytes) on `sock`: false when nothing could go (a full
/// socket buffer: the batch is dropped); the rest of a partial send follows, waiting for room,
/// so that the stream stays whole.
fn send_all(sock: &TcpStream, iov: &mut [libc::iovec], total: usize) -> bool {
    let fd = sock.as_raw_fd();
    let mut sent = 0usize;
    let mut first = 0usize;
    while sent < total && !STOP.load(Ordering::Relaxed) {
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov[first..].as_mut_ptr();
        msg.msg_iovlen = iov.len() - first;
        // SAFETY: the pieces point into buffers we hold for this call.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if r < 0 {
            if sent == 0 {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10) };
            continue;
        }
        let mut r = r as usize;
        sent += r;
        // Skip the pieces sent whole; trim the one sent in part.
        while first < iov.len() && r >= iov[first].iov_len {
            r -= iov[first].iov_len;
            first += 1;
        }
        if r > 0 {
            // SAFETY: advancing within the same piece.
            iov[first].iov_base = unsafe { iov[first].iov_base.cast::<u8>().add(r) }.cast();
            iov[first].iov_len -= r;
        }
    }
    true
}

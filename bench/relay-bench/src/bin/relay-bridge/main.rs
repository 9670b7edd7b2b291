//! relay-bridge: the kernel path the relays tapwire replaces use (wsnic, websockproxy), for
//! relay-bench's `tcp` group to compare against: a Linux bridge holding the gateway's
//! address, and for every WebSocket client a TAP of its own on that bridge, pumped by two
//! threads (connection → TAP: large receives, header parse, unmask, one `write` per frame;
//! TAP → connection: one `read` per frame, one `writev` of header and frame). The kernel
//! switches, learns and floods; this program only moves bytes, as fast as plain blocking
//! I/O does, so it is the Python relays' design without Python's cost.
//!
//! `relay-bridge run …` prints `relaying ws://ADDR/` once it listens (relay-bench waits for
//! that line, as for tapwire) and, on SIGTERM or SIGINT, one line with what it moved; the
//! bridge goes with it (each TAP goes when its descriptor closes).

#[path = "../relay-floor/wsio.rs"]
mod wsio;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tapwire::ws::frame;
use wsio::{frames, upgrade};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make the bridge, listen, and give every client a TAP on it until SIGTERM.
    Run(Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// The bridge to make; the clients' TAPs are named after it with their number appended
    /// (`NAME` must leave room: interface names have at most 15 characters).
    #[arg(long)]
    bridge: String,
    /// The bridge's address and prefix (the gateway's, as tapwire gives its TAP).
    #[arg(long, default_value = "10.86.0.1/16")]
    address: String,
    /// The MTU of the bridge and of every TAP.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Where the WebSocket clients connect.
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Frames moved each way, printed at exit.
#[derive(Default)]
struct Moved {
    up: AtomicU64,
    down: AtomicU64,
}

fn main() {
    let Cmd::Run(args) = Cli::parse().cmd;
    if let Err(e) = run(&args) {
        eprintln!("relay-bridge: {e}");
        std::process::exit(1);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| format!("ip: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("ip {} failed", args.join(" ")))
    }
}

fn run(args: &Args) -> Result<(), String> {
    let mtu = args.mtu.to_string();
    ip(&["link", "add", &args.bridge, "type", "bridge"])?;
    // A bridge takes the lowest MAC of its ports unless one was set: set its own, so that
    // the gateway's MAC stays what the guests learned when TAPs join.
    let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", args.bridge))
        .map_err(|e| format!("the bridge's MAC: {e}"));
    let result = mac
        .and_then(|mac| ip(&["link", "set", &args.bridge, "address", mac.trim()]))
        .and_then(|()| ip(&["addr", "add", &args.address, "dev", &args.bridge]))
        .and_then(|()| ip(&["link", "set", &args.bridge, "mtu", &mtu, "up"]))
        .and_then(|()| serve(args));
    let _ = ip(&["link", "del", &args.bridge]);
    result
}

fn serve(args: &Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen).map_err(|e| format!("{}: {e}", args.listen))?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let moved = Arc::new(Moved::default());
    let (bridge, mtu, m) = (args.bridge.clone(), args.mtu, moved.clone());
    std::thread::spawn(move || {
        for (index, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let Some(rest) = upgrade(&mut conn) else {
                continue;
            };
            if let Err(e) = attach(&bridge, mtu, index, conn, rest, &m) {
                eprintln!("relay-bridge: client {index}: {e}");
            }
        }
    });
    println!("relaying ws://{}/ (relay-bridge)", args.listen);
    let _ = std::io::stdout().flush();
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "relay-bridge: {} frames up, {} frames down",
        moved.up.load(Ordering::Relaxed),
        moved.down.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Gives client `index` its TAP on the bridge and starts its two pumps.
fn attach(
    bridge: &str,
    mtu: usize,
    index: usize,
    conn: TcpStream,
    rest: Vec<u8>,
    moved: &Arc<Moved>,
) -> Result<(), String> {
    let name = format!("{bridge}{index}");
    let tap = Arc::new(tapwire::tap::open_single(&name, false).map_err(|e| e.to_string())?);
    ip(&["link", "set", &name, "mtu", &mtu.to_string()])?;
    ip(&["link", "set", &name, "master", bridge, "up"])?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    conn.set_read_timeout(None).map_err(|e| e.to_string())?;
    let out = conn.try_clone().map_err(|e| e.to_string())?;
    let (t, m) = (tap.clone(), moved.clone());
    std::thread::spawn(move || pump_up(conn, rest, &t, &m));
    let m = moved.clone();
    std::thread::spawn(move || pump_down(&tap, out, mtu, &m));
    Ok(())
}

/// Connection → TAP until the connection ends.
fn pump_up(mut conn: TcpStream, rest: Vec<u8>, tap: &OwnedFd, moved: &Moved) {
    let mut buf = vec![0u8; 256 * 1024 + 70_000];
    let mut held = rest.len();
    buf[..held].copy_from_slice(&rest);
    loop {
        let write = |payload: &[u8]| {
            // SAFETY: writing one whole frame from our buffer to the TAP descriptor.
            let n = unsafe { libc::write(tap.as_raw_fd(), payload.as_ptr().cast(), payload.len()) };
            if n > 0 {
                moved.up.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        };
        let Ok((used, open)) = frames(&mut buf[..held], write) else {
            return;
        };
        buf.copy_within(used..held, 0);
        held -= used;
        if !open {
            return;
        }
        match conn.read(&mut buf[held..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => held += n,
        }
    }
}

/// TAP → connection, one frame per `writev`, until either side fails.
fn pump_down(tap: &OwnedFd, conn: TcpStream, mtu: usize, moved: &Moved) {
    let mut buf = vec![0u8; mtu + 14];
    let mut header = [0u8; 14];
    loop {
        // SAFETY: reading into our own buffer from the TAP descriptor.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        let len = n as usize;
        let at = frame::encode_header(&mut header, true, frame::OP_BINARY, len, None);
        if !write_all(&conn, &header[..at], &buf[..len]) {
            return;
        }
        moved.down.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `head` then `body` with `writev`, finishing a short write; false when the
/// connection failed.
fn write_all(conn: &TcpStream, mut head: &[u8], mut body: &[u8]) -> bool {
    while !head.is_empty() || !body.is_empty() {
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: body.as_ptr() as *mut libc::c_void,
                iov_len: body.len(),
            },
        ];
        // SAFETY: two iovecs over live slices; a blocking socket of ours.
        let n = unsafe { libc::writev(conn.as_raw_fd(), iov.as_ptr(), 2) };
        if n <= 0 {
            return false;
        }
        let mut n = n as usize;
        let h = n.min(head.len());
        head = &head[h..];
        n -= h;
        body = &body[n..];
    }
    true
}

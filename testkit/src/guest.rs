//! `tapwire-guest`: a fake guest whose network stack is the real Linux one.
//!
//! It opens the WebSocket to a relay from the namespace it starts in, then enters the guest
//! namespace (`--netns`), makes a TAP there and pumps frames both ways: each frame the guest
//! kernel sends becomes one masked binary message, each message received is written to the
//! TAP. Real tools (udhcpc, ping, iperf3) then run inside the namespace. Test tooling, with
//! plain blocking I/O: two threads per guest.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tapwire::ws::frame;

use crate::ws::{client_frame, connect, Decoder, Message};

/// Options of `tapwire-guest`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Relay to connect to, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (with --ca).
    #[arg(long)]
    pub url: String,
    /// For wss://: the PEM certificate(s) to trust (the relay's, or its CA).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Network namespace (from `ip netns add`) to make the TAP in; default: the current one.
    #[arg(long)]
    pub netns: Option<String>,
    /// Name of the guest's TAP interface.
    #[arg(long, default_value = "eth0")]
    pub tap: String,
    /// Local TCP port to connect from (chooses the relay core; see `listen::steer`).
    #[arg(long)]
    pub source_port: Option<u16>,
    /// Largest frame the relay may send: a longer one ends the guest with an error (the
    /// relay must never send a guest a frame over its MTU).
    #[arg(long, default_value_t = 65_553)]
    pub max_frame: usize,
    /// Connect again this many milliseconds after the connection ends, from the namespace the
    /// guest started in, keeping the TAP and everything the guest's kernel knows (as v86
    /// does; ws:// only); 0: exit when it ends.
    #[arg(long, default_value_t = 0)]
    pub reconnect_ms: u64,
}

fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: a plain datagram socket used only for the interface ioctls below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh descriptor we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq naming the interface.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs the guest until the relay closes the connection (or, with `--reconnect-ms`, until
/// it is killed).
pub fn run(args: &GuestArgs) -> io::Result<()> {
    if args.url.starts_with("wss://") {
        let ca = args
            .ca
            .as_deref()
            .ok_or_else(|| io::Error::other("a wss:// URL needs --ca FILE"))?;
        return run_tls(args, ca);
    }
    // Where connections are made from: this namespace, also after entering the guest's.
    let origin = std::fs::File::open("/proc/thread-self/ns/net")?;
    let stream = connect(&args.url, args.source_port)?;
    if let Some(ns) = &args.netns {
        crate::netns::enter_named(ns)?;
    }
    let tap = Arc::new(tapwire::tap::open_single(&args.tap, false).map_err(io::Error::other)?);
    set_up(&args.tap)?;
    let reconnect = args.reconnect_ms > 0;
    // The connection frames go out on; `None` while there is none (frames are then lost, as
    // on a cable pulled out: the guest's kernel retransmits).
    let writer = Arc::new(Mutex::new(Some(stream.try_clone()?)));
    {
        let tap = tap.clone();
        let writer = writer.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_600];
            loop {
                // SAFETY: reading into our own buffer from the TAP descriptor.
                let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    return;
                }
                let msg = client_frame(frame::OP_BINARY, &buf[..n as usize]);
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(stream) = w.as_mut() {
                    if stream.write_all(&msg).is_err() {
                        if !reconnect {
                            std::process::exit(0);
                        }
                        *w = None;
                    }
                }
            }
        });
    }
    let mut reader = stream;
    loop {
        let ended = serve(&mut reader, &tap, &writer, args.max_frame);
        if !reconnect {
            return ended;
        }
        *writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
        eprintln!("tapwire-guest: connection ended ({ended:?}); connecting again");
        reader = connect_again(&origin, &args.url, args.reconnect_ms)?;
        *writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader.try_clone()?);
        eprintln!("tapwire-guest: connected again");
    }
}

/// Relays what arrives on `reader` to the TAP, answering pings on `writer`, until the relay
/// closes the connection or it breaks.
fn serve(
    reader: &mut std::net::TcpStream,
    tap: &OwnedFd,
    writer: &Mutex<Option<std::net::TcpStream>>,
    max_frame: usize,
) -> io::Result<()> {
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut closed = false;
        let mut result = Ok(());
        decoder
            .feed(&mut buf[..n], |m| match m {
                Message::Frame(f) if f.len() > max_frame => result = Err(oversized(f, max_frame)),
                Message::Frame(f) => {
                    // SAFETY: writing a complete frame from our buffer to the TAP.
                    unsafe { libc::write(tap.as_raw_fd(), f.as_ptr().cast(), f.len()) };
                }
                Message::Ping(p) => {
                    let pong = client_frame(frame::OP_PONG, p);
                    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(Err(e)) = w.as_mut().map(|s| s.write_all(&pong)) {
                        result = Err(e);
                    }
                }
                Message::Pong(_) => {}
                Message::Close(_) => closed = true,
            })
            .map_err(io::Error::other)?;
        result?;
        if closed {
            return Ok(());
        }
    }
}

/// The error of a frame from the relay over `--max-frame`.
fn oversized(frame: &[u8], max_frame: usize) -> io::Error {
    io::Error::other(format!(
        "the relay sent a frame of {} bytes, over --max-frame {max_frame}",
        frame.len()
    ))
}

/// Connects to `url` again from the namespace `origin` (a thread of its own enters it:
/// sockets stay in the namespace they were made in), `after_ms` after the last try, at most
/// [`RECONNECT_TRIES`] times.
fn connect_again(
    origin: &std::fs::File,
    url: &str,
    after_ms: u64,
) -> io::Result<std::net::TcpStream> {
    let origin = origin.try_clone()?;
    let url = url.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace file; affects only this thread.
        if unsafe { libc::setns(origin.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut last = None;
        for _ in 0..RECONNECT_TRIES {
            std::thread::sleep(std::time::Duration::from_millis(after_ms));
            match connect(&url, None) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    eprintln!("tapwire-guest: cannot connect again yet: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no try")))
    })
    .join()
    .map_err(|_| io::Error::other("the connecting thread panicked"))?
}

/// Tries of [`connect_again`] before the guest gives up.
const RECONNECT_TRIES: u32 = 60;

/// [`run`] over wss://: one thread polling the TAP and the socket (a TLS connection cannot be
/// read and written from two threads). A TAP frame is read only when the previous one has
/// gone out.
fn run_tls(args: &GuestArgs, ca: &std::path::Path) -> io::Result<()> {
    let mut stream = crate::ws::connect_tls(&args.url, ca, args.source_port)?;
    if let Some(ns) = &args.netns {
        crate::netns::enter_named(ns)?;
    }
    let tap = tapwire::tap::open_single(&args.tap, false).map_err(io::Error::other)?;
    set_up(&args.tap)?;
    stream.sock.set_nonblocking(true)?;
    let mut decoder = Decoder::default();
    let mut frame_buf = vec![0u8; 65_600];
    let mut plain = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let flushing = stream.conn.wants_write();
        let mut fds = [
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: if flushing { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: stream.sock.as_raw_fd(),
                events: libc::POLLIN | if flushing { libc::POLLOUT } else { 0 },
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // rustls holds little decrypted data: take it out after every read.
            plain.clear();
            let mut eof = false;
            loop {
                match stream.conn.read_tls(&mut stream.sock) {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
                stream
                    .conn
                    .process_new_packets()
                    .map_err(io::Error::other)?;
                loop {
                    match stream.conn.reader().read(&mut chunk) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => plain.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                if eof {
                    break;
                }
            }
            let got = plain.len();
            let mut closed = false;
            let conn = &mut stream.conn;
            let mut result = Ok(());
            decoder
                .feed(&mut plain[..got], |m| match m {
                    Message::Frame(f) if f.len() > args.max_frame => {
                        result = Err(oversized(f, args.max_frame))
                    }
                    Message::Frame(f) => {
                        // SAFETY: writing a complete frame from our buffer to the TAP.
                        unsafe { libc::write(tap.as_raw_fd(), f.as_ptr().cast(), f.len()) };
                    }
                    Message::Ping(p) => {
                        let _ = conn.writer().write_all(&client_frame(frame::OP_PONG, p));
                    }
                    Message::Pong(_) => {}
                    Message::Close(_) => closed = true,
                })
                .map_err(io::Error::other)?;
            result?;
            if closed || eof {
                return Ok(());
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: reading into our own buffer from the TAP descriptor.
            let n = unsafe {
                libc::read(
                    tap.as_raw_fd(),
                    frame_buf.as_mut_ptr().cast(),
                    frame_buf.len(),
                )
            };
            if n <= 0 {
                return Ok(());
            }
            let msg = client_frame(frame::OP_BINARY, &frame_buf[..n as usize]);
            stream.conn.writer().write_all(&msg)?;
        }
        while stream.conn.wants_write() {
            match stream.conn.write_tls(&mut stream.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

//! `tapwire guest`: a fake guest whose network stack is the real Linux one.
//!
//! It opens the WebSocket to a relay from the namespace it starts in, then enters the guest
//! namespace (`--netns`), makes a TAP there and pumps frames both ways: each frame the guest
//! kernel sends becomes one masked binary message, each message received is written to the
//! TAP. Real tools (udhcpc, ping, iperf3) then run inside the namespace. Test tooling, with
//! plain blocking I/O: two threads per guest.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use crate::ws::frame::{self, apply_mask, encode_header};
use crate::ws::{handshake, Event, Session};

/// Options of `tapwire guest`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Relay to connect to, ws://HOST:PORT/PATH.
    #[arg(long)]
    pub url: String,
    /// Network namespace (from `ip netns add`) to make the TAP in; default: the current one.
    #[arg(long)]
    pub netns: Option<String>,
    /// Name of the guest's TAP interface.
    #[arg(long, default_value = "eth0")]
    pub tap: String,
    /// Local TCP port to connect from (chooses the relay core; see `listen::steer`).
    #[arg(long)]
    pub source_port: Option<u16>,
    /// Largest frame.
    #[arg(long, default_value_t = 65_553)]
    pub max_frame: usize,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom fills the buffer we pass with its exact length.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    b
}

/// Splits `ws://HOST:PORT/PATH` into the resolved address, `HOST:PORT` and `/PATH`.
pub fn parse_ws_url(url: &str) -> io::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| io::Error::other(format!("{url}: only ws:// URLs are supported")))?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {hostport}")))?;
    Ok((addr, hostport.to_string(), path))
}

/// Opens a client WebSocket to `url` (plain ws://), optionally from `source_port`.
pub fn connect(url: &str, source_port: Option<u16>) -> io::Result<TcpStream> {
    connect_with(url, source_port, None)
}

/// [`connect`] with a receive buffer size set before connecting (a small one makes a client
/// that stops reading stall the relay's sends quickly, as a slow browser tab would).
pub fn connect_with(
    url: &str,
    source_port: Option<u16>,
    recv_buffer: Option<usize>,
) -> io::Result<TcpStream> {
    let (addr, hostport, path) = parse_ws_url(url)?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(port) = source_port {
        socket.set_reuse_address(true)?;
        let local: SocketAddr = if addr.is_ipv4() {
            ([127, 0, 0, 1], port).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, port).into()
        };
        socket.bind(&local.into())?;
    }
    socket.connect(&addr.into())?;
    let mut stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>());
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 || head.len() > 8192 {
            return Err(io::Error::other(format!(
                "relay closed during the handshake: {:?}",
                String::from_utf8_lossy(&head)
            )));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("HTTP/1.1 101") || !text.contains(&handshake::accept_key(key.as_bytes())) {
        return Err(io::Error::other(format!(
            "relay refused the upgrade: {}",
            text.lines().next().unwrap_or("")
        )));
    }
    Ok(stream)
}

/// Builds one masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = random_bytes::<4>();
    let mut out = vec![0u8; frame::header_len(payload.len(), true) + payload.len()];
    let n = encode_header(&mut out, true, opcode, payload.len(), Some(mask));
    out[n..].copy_from_slice(payload);
    apply_mask(&mut out[n..], mask, 0);
    out
}

fn enter_netns(name: &str) -> io::Result<()> {
    let path = ["/run/netns", "/var/run/netns"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists());
    let path = path.ok_or_else(|| {
        io::Error::other(format!(
            "network namespace {name} not found (create it with `ip netns add {name}`)"
        ))
    })?;
    crate::testkit::enter_path(&path)
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

/// Runs the guest until the relay closes the connection.
pub fn run(args: &GuestArgs) -> io::Result<()> {
    let stream = connect(&args.url, args.source_port)?;
    if let Some(ns) = &args.netns {
        enter_netns(ns)?;
    }
    let tap = Arc::new(crate::tap::open_single(&args.tap, false).map_err(io::Error::other)?);
    set_up(&args.tap)?;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
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
                if w.write_all(&msg).is_err() {
                    std::process::exit(0);
                }
            }
        });
    }
    let mut reader = stream;
    let mut session = Session::new(args.max_frame, false);
    let mut buf = vec![0u8; 256 * 1024];
    let mut assembly = Vec::new();
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut pos = 0;
        let chunk = &mut buf[..n];
        while let Some(ev) = session.next(chunk, &mut pos).map_err(io::Error::other)? {
            let frame: Option<&[u8]> = match ev {
                Event::Message(r) => Some(&chunk[r]),
                Event::Piece { range, first } => {
                    if first {
                        assembly.clear();
                    }
                    assembly.extend_from_slice(&chunk[range]);
                    None
                }
                Event::Assembled => Some(&assembly),
                Event::Ping => {
                    let pong = client_frame(frame::OP_PONG, session.control_payload());
                    writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .write_all(&pong)?;
                    None
                }
                Event::Close { .. } => return Ok(()),
                Event::Runt { .. } | Event::Pong => None,
            };
            if let Some(f) = frame {
                // SAFETY: writing a complete frame from our buffer to the TAP.
                unsafe { libc::write(tap.as_raw_fd(), f.as_ptr().cast(), f.len()) };
            }
        }
    }
}

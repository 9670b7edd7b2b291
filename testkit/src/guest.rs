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
        crate::netns::enter_named(ns)?;
    }
    let tap = Arc::new(tapwire::tap::open_single(&args.tap, false).map_err(io::Error::other)?);
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
                Message::Frame(f) => {
                    // SAFETY: writing a complete frame from our buffer to the TAP.
                    unsafe { libc::write(tap.as_raw_fd(), f.as_ptr().cast(), f.len()) };
                }
                Message::Ping(p) => {
                    let pong = client_frame(frame::OP_PONG, p);
                    if let Err(e) = writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .write_all(&pong)
                    {
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

//! The one WebSocket test client: the upgrade, masked client frames, and a decoder of server
//! frames on tapwire's own sans-io [`Session`], used by the kernel-stack guest, the swarm and
//! the namespace scenarios. [`WsClient`] wraps it for blocking use.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tapwire::ws::frame::{self, apply_mask, encode_header};
use tapwire::ws::{handshake, Event, Session, Violation};

use crate::tls::Transport;

/// Largest message the test clients accept (jumbo frames included).
pub const MAX_MESSAGE: usize = 70_000;

/// `N` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom fills the buffer we pass with its exact length.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    b
}

/// Splits `ws://HOST:PORT/PATH` (or `wss://`) into the resolved address, `HOST:PORT` and
/// `/PATH`.
pub fn parse_ws_url(url: &str) -> io::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| {
            io::Error::other(format!("{url}: only ws:// and wss:// URLs are supported"))
        })?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {hostport}")))?;
    Ok((addr, hostport.to_string(), path))
}

/// A fresh `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>())
}

/// The upgrade request for `path` on `host` with `key`.
pub fn upgrade_request(path: &str, host: &str, key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

/// Checks the relay's response head (up to the blank line) to an upgrade sent with `key`.
pub fn check_upgrade_response(head: &[u8], key: &str) -> io::Result<()> {
    let text = String::from_utf8_lossy(head);
    if text.starts_with("HTTP/1.1 101") && text.contains(&handshake::accept_key(key.as_bytes())) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "relay refused the upgrade: {}",
            text.lines().next().unwrap_or("")
        )))
    }
}

/// Opens a client WebSocket to `url` (plain ws://), optionally from `source_port`.
pub fn connect(url: &str, source_port: Option<u16>) -> io::Result<TcpStream> {
    connect_with(url, source_port, None)
}

/// Opens a client WebSocket to the wss:// `url`, trusting only the certificates in the PEM
/// file `ca` (the URL's host is the name checked), optionally from `source_port`.
pub fn connect_tls(
    url: &str,
    ca: &std::path::Path,
    source_port: Option<u16>,
) -> io::Result<crate::tls::TlsStream> {
    let (addr, hostport, path) = parse_ws_url(url)?;
    let tcp = tcp_connect(addr, source_port, None)?;
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport.as_str(), |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let mut stream = crate::tls::connect(tcp, host, ca)?;
    upgrade(&mut stream, &path, &hostport)?;
    Ok(stream)
}

/// [`connect`] with a receive buffer size set before connecting (a small one makes a client
/// that stops reading stall the relay's sends quickly, as a slow browser tab would).
pub fn connect_with(
    url: &str,
    source_port: Option<u16>,
    recv_buffer: Option<usize>,
) -> io::Result<TcpStream> {
    let (addr, hostport, path) = parse_ws_url(url)?;
    let mut stream = tcp_connect(addr, source_port, recv_buffer)?;
    upgrade(&mut stream, &path, &hostport)?;
    Ok(stream)
}

/// A TCP connection to `addr` (without Nagle), from `source_port` on loopback if given.
fn tcp_connect(
    addr: SocketAddr,
    source_port: Option<u16>,
    recv_buffer: Option<usize>,
) -> io::Result<TcpStream> {
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
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The WebSocket upgrade on a connected stream.
fn upgrade(stream: &mut (impl Read + Write), path: &str, hostport: &str) -> io::Result<()> {
    let key = new_key();
    stream.write_all(upgrade_request(path, hostport, &key).as_bytes())?;
    // Byte by byte, so no frame behind the head is consumed here.
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
    check_upgrade_response(&head, &key)
}

/// One masked client frame (random key).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(opcode, payload, random_bytes::<4>())
}

/// A client frame with an all-zero masking key (legal, RFC 6455 §5.3): the payload is sent
/// as it is, so a template can be stamped in place without re-masking.
pub fn client_frame_zero_key(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(opcode, payload, [0; 4])
}

fn masked_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0u8; frame::header_len(payload.len(), true) + payload.len()];
    let n = encode_header(&mut out, true, opcode, payload.len(), Some(key));
    out[n..].copy_from_slice(payload);
    apply_mask(&mut out[n..], key, 0);
    out
}

/// A message from the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// An Ethernet frame.
    Frame(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close(Option<u16>),
}

/// Decodes the relay's frames (unmasked, in place), reassembling fragmented messages.
pub struct Decoder {
    session: Session,
    assembly: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            session: Session::new(MAX_MESSAGE, false),
            assembly: Vec::new(),
        }
    }
}

impl Decoder {
    /// Decodes every byte of `data` (the next bytes of the stream), handing each complete
    /// message to `on`. Frames whole in `data` are handed over where they lie.
    pub fn feed(
        &mut self,
        data: &mut [u8],
        mut on: impl FnMut(Message<'_>),
    ) -> Result<(), Violation> {
        let mut pos = 0;
        while let Some(event) = self.session.next(data, &mut pos)? {
            match event {
                Event::Message(range) => on(Message::Frame(&data[range])),
                Event::Piece { range, first } => {
                    if first {
                        self.assembly.clear();
                    }
                    self.assembly.extend_from_slice(&data[range]);
                }
                Event::Assembled => on(Message::Frame(&self.assembly)),
                Event::Ping => on(Message::Ping(self.session.control_payload())),
                Event::Pong => on(Message::Pong(self.session.control_payload())),
                Event::Close { code } => on(Message::Close(code)),
                Event::Runt { .. } => {}
            }
        }
        Ok(())
    }
}

/// What a [`WsClient`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Frame(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Eof,
    Timeout,
}

impl From<Message<'_>> for Got {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::Frame(f) => Got::Frame(f.to_vec()),
            Message::Ping(p) => Got::Ping(p.to_vec()),
            Message::Pong(p) => Got::Pong(p.to_vec()),
            Message::Close(code) => Got::Close(code),
        }
    }
}

/// A blocking WebSocket client sending and receiving Ethernet frames, over TCP or TLS.
pub struct WsClient<S: Transport = TcpStream> {
    pub stream: S,
    decoder: Decoder,
    received: VecDeque<Got>,
}

impl<S: Transport> WsClient<S> {
    /// Wraps an upgraded stream (see [`connect`], [`connect_tls`]).
    pub fn new(stream: S) -> Self {
        WsClient {
            stream,
            decoder: Decoder::default(),
            received: VecDeque::new(),
        }
    }

    /// Sends bytes as they are (a hand-made frame, garbage, half a header).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends one Ethernet frame as a binary message.
    pub fn send_frame(&mut self, eth: &[u8]) {
        let f = client_frame(frame::OP_BINARY, eth);
        self.send_raw(&f);
    }

    /// Next message within `limit`.
    pub fn recv(&mut self, limit: Duration) -> Got {
        let deadline = Instant::now() + limit;
        let mut chunk = vec![0u8; 65_536];
        loop {
            if let Some(got) = self.received.pop_front() {
                return got;
            }
            let now = Instant::now();
            if now >= deadline {
                return Got::Timeout;
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("timeout");
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Eof,
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Got::Timeout
                }
                Err(_) => return Got::Eof,
            };
            let received = &mut self.received;
            self.decoder
                .feed(&mut chunk[..n], |m| received.push_back(Got::from(m)))
                .unwrap_or_else(|e| panic!("server sent an invalid frame: {e}"));
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
                    let pong = client_frame(frame::OP_PONG, &p);
                    self.send_raw(&pong);
                }
                Got::Pong(_) => {}
                _ => return None,
            }
        }
    }

    /// Takes a DHCP lease for `mac` (DISCOVER, OFFER, REQUEST, ACK) and returns the address;
    /// panics without one within 10 s.
    pub fn lease(&mut self, mac: [u8; 6]) -> std::net::Ipv4Addr {
        use crate::packet::{dhcp_message, dhcp_reply, DhcpKind};
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
        let reply = |client: &mut Self, want: DhcpKind| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Some(f) =
                client.recv_frame(deadline.saturating_duration_since(Instant::now()))
            {
                if let Some((kind, ip, server)) = dhcp_reply(&f, xid) {
                    assert_eq!(kind, want, "DHCP reply");
                    return (ip, server);
                }
            }
            panic!("no DHCP {want:?} for {mac:02x?}");
        };
        self.send_frame(&dhcp_message(mac, xid, DhcpKind::Discover, None));
        let offer = reply(self, DhcpKind::Offer);
        self.send_frame(&dhcp_message(mac, xid, DhcpKind::Request, Some(offer)));
        reply(self, DhcpKind::Ack).0
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked).
    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; frame::header_len(payload.len(), false)];
        encode_header(&mut out, fin, opcode, payload.len(), None);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decoder_reassembles_across_feeds_and_fragments() {
        let mut stream = server_frame(frame::OP_BINARY, false, &[1; 20]);
        stream.extend(server_frame(frame::OP_PING, true, b"hi"));
        stream.extend(server_frame(frame::OP_CONTINUATION, true, &[2; 10]));
        stream.extend(server_frame(frame::OP_CLOSE, true, &1001u16.to_be_bytes()));
        for split in 0..stream.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            let (a, b) = stream.split_at(split);
            for part in [a, b] {
                d.feed(&mut part.to_vec(), |m| got.push(format!("{m:?}")))
                    .unwrap();
            }
            let mut whole = vec![1u8; 20];
            whole.extend([2u8; 10]);
            assert_eq!(
                got,
                vec![
                    format!("{:?}", Message::Ping(b"hi")),
                    format!("{:?}", Message::Frame(&whole)),
                    format!("{:?}", Message::Close(Some(1001))),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn client_frames_unmask_to_their_payload() {
        let payload: Vec<u8> = (0..40).collect();
        let mut s = Session::new(100, true);
        for _ in 0..8 {
            // Random keys: the bytes on the wire differ from the payload, the relay's decoder
            // gets the payload back.
            let mut f = client_frame(frame::OP_BINARY, &payload);
            assert_eq!(f[1] & 0x80, 0x80, "masked");
            let mut pos = 0;
            let Ok(Some(Event::Message(r))) = s.next(&mut f, &mut pos) else {
                panic!("not a message");
            };
            assert_eq!(&f[r], &payload[..]);
        }
        let mut f = client_frame_zero_key(frame::OP_BINARY, &[7; 20]);
        assert_eq!(&f[f.len() - 20..], &[7; 20], "zero key: payload as it is");
        let mut pos = 0;
        let Ok(Some(Event::Message(r))) = s.next(&mut f, &mut pos) else {
            panic!("not a message");
        };
        assert_eq!(&f[r], &[7; 20]);
    }

    #[test]
    fn urls() {
        let (addr, host, path) = parse_ws_url("ws://127.0.0.1:8086/n/x").unwrap();
        assert_eq!(
            (addr.port(), host.as_str(), path.as_str()),
            (8086, "127.0.0.1:8086", "/n/x")
        );
        assert_eq!(parse_ws_url("ws://127.0.0.1:1").unwrap().2, "/");
        assert_eq!(
            parse_ws_url("wss://127.0.0.1:8443/").unwrap().1,
            "127.0.0.1:8443"
        );
        assert!(parse_ws_url("http://x/").is_err());
    }
}

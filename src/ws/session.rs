//! A streaming, in-place WebSocket message decoder for one connection (sans-io).
//!
//! Contract: feed every received byte exactly once, in order, through [`Session::next`],
//! with the buffer it arrived in. The session unmasks payload bytes *in that buffer* and
//! answers with [`Event`]s that name byte ranges of it, so the caller can forward a frame
//! without copying it. Bytes may be split across buffers at any point; a message that is
//! not whole in one buffer comes out as [`Event::Piece`]s that the caller appends to a
//! reassembly buffer bounded by the maximum message size. Every rule of the bad-input
//! policy that concerns frames (docs/protocol.md) is decided here and returned as a
//! [`Violation`] carrying the close code to send.

use std::ops::Range;

use super::frame::{
    self, apply_mask, parse_header, FrameHeader, HeaderError, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};

/// Smallest binary message we forward: an Ethernet II header (6 + 6 + 2 bytes).
pub const MIN_ETHERNET_FRAME: usize = 14;

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole binary message (≥ 14 bytes) lies unmasked in `buf[range]`.
    Message(Range<usize>),
    /// Unmasked bytes of a message that spans frames or buffers: append `buf[range]` to the
    /// reassembly buffer; `first` means start a new one.
    Piece { range: Range<usize>, first: bool },
    /// The message built from the preceding pieces is complete (≥ 14 bytes).
    Assembled,
    /// A binary message shorter than an Ethernet header was received and discarded
    /// (any reassembly started for it must be discarded too). The connection stays open.
    Runt { len: usize },
    /// A ping arrived; its payload is [`Session::control_payload`]. Answer with a pong.
    Ping,
    /// A pong arrived (proof of life).
    Pong,
    /// The peer sent a close frame. Echo a close and close the socket.
    Close { code: Option<u16> },
}

/// A protocol violation: the connection must be closed with [`Violation::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The frame header itself is invalid.
    #[error("{0}")]
    Header(#[from] HeaderError),
    /// A text message: our protocol carries only binary Ethernet frames.
    #[error("text message (only binary Ethernet frames are accepted)")]
    Text,
    /// One frame declares more payload than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u64, max: usize },
    /// A fragmented message grew past the maximum frame size.
    #[error("fragmented message exceeds the maximum of {max} bytes")]
    FragmentedTooLarge { max: usize },
    /// A continuation frame without a message in progress, or a new message inside one.
    #[error("continuation frame out of sequence")]
    BadContinuation,
    /// A close frame with a 1-byte payload, an invalid code or a non-UTF-8 reason.
    #[error("malformed close frame")]
    BadClose,
}

impl Violation {
    /// The close code RFC 6455 §7.4.1 prescribes for this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::Text => 1003,
            Violation::TooLarge { .. } | Violation::FragmentedTooLarge { .. } => 1009,
            _ => 1002,
        }
    }
}

/// The frame whose payload is being received.
#[derive(Debug, Clone, Copy)]
struct CurrentFrame {
    header: FrameHeader,
    /// Payload bytes already consumed.
    done: u64,
}

/// Decoder state of one WebSocket connection. About 170 bytes; no heap.
#[derive(Debug, Clone)]
pub struct Session {
    /// Largest binary message accepted (the configured maximum Ethernet frame).
    max_message: usize,
    /// Server side: clients must mask. Client side (test guests): frames are unmasked.
    require_mask: bool,
    /// A header split across buffers, gathered until complete.
    header_buf: [u8; MAX_HEADER_LEN],
    header_have: usize,
    /// Set while inside a frame's payload.
    current: Option<CurrentFrame>,
    /// Bytes of the binary message in progress that are not whole in one buffer,
    /// `None` when no such message is in progress.
    message_len: Option<usize>,
    /// Whether the message in progress was started with FIN clear (continuations follow).
    fragmented: bool,
    /// Emit `Assembled`/`Runt` on the next call: the last piece has been handed out.
    message_complete_pending: bool,
    /// Control frame payload, gathered whole (≤ 125 bytes).
    control_buf: [u8; MAX_CONTROL_PAYLOAD],
    control_len: usize,
}

impl Session {
    /// A decoder for frames arriving at a server (`require_mask = true`) or at a client.
    pub fn new(max_message: usize, require_mask: bool) -> Self {
        Session {
            max_message,
            require_mask,
            header_buf: [0; MAX_HEADER_LEN],
            header_have: 0,
            current: None,
            message_len: None,
            fragmented: false,
            message_complete_pending: false,
            control_buf: [0; MAX_CONTROL_PAYLOAD],
            control_len: 0,
        }
    }

    /// Payload of the last ping, pong or close frame.
    pub fn control_payload(&self) -> &[u8] {
        &self.control_buf[..self.control_len]
    }

    /// Whether a message is half received (a reassembly is in progress).
    pub fn mid_message(&self) -> bool {
        self.message_len.is_some()
    }

    /// Whether anything of a frame or message is half received: a header, a payload, or the
    /// fragments of a message (false exactly at a message boundary).
    pub fn in_progress(&self) -> bool {
        self.header_have > 0
            || self.current.is_some()
            || self.message_len.is_some()
            || self.fragmented
            || self.message_complete_pending
    }

    /// Consumes bytes of `buf` from `*pos` until one event is ready (`Ok(Some)`), or the buffer
    /// is used up (`Ok(None)`). Payload bytes are unmasked in place.
    pub fn next(&mut self, buf: &mut [u8], pos: &mut usize) -> Result<Option<Event>, Violation> {
        if self.message_complete_pending {
            self.message_complete_pending = false;
            return Ok(Some(self.finish_message()));
        }
        loop {
            let Some(mut cur) = self.current else {
                if *pos >= buf.len() {
                    return Ok(None);
                }
                let Some(header) = self.take_header(buf, pos)? else {
                    return Ok(None);
                };
                if let Some(event) = self.start_frame(header, buf, pos)? {
                    return Ok(Some(event));
                }
                continue;
            };
            let remaining = cur.header.payload_len - cur.done;
            let avail = (buf.len() - *pos) as u64;
            if remaining > 0 && avail == 0 {
                return Ok(None);
            }
            // Lossless: bounded by the buffer length.
            let take = remaining.min(avail) as usize;
            let range = *pos..*pos + take;
            if let Some(key) = cur.header.mask {
                // Offset is the payload position modulo 4; the u64 → usize cast keeps it.
                apply_mask(&mut buf[range.clone()], key, (cur.done % 4) as usize);
            }
            *pos += take;
            cur.done += take as u64;
            let frame_done = cur.done == cur.header.payload_len;
            self.current = if frame_done { None } else { Some(cur) };
            if cur.header.is_control() {
                self.control_buf[self.control_len..self.control_len + take]
                    .copy_from_slice(&buf[range]);
                self.control_len += take;
                if frame_done {
                    return self.control_event(cur.header.opcode).map(Some);
                }
                continue;
            }
            let message_len = self.message_len.get_or_insert(0);
            let first = *message_len == 0;
            *message_len += take;
            let message_done = frame_done && cur.header.fin;
            if take == 0 {
                if message_done {
                    return Ok(Some(self.finish_message()));
                }
                continue;
            }
            self.message_complete_pending = message_done;
            return Ok(Some(Event::Piece { range, first }));
        }
    }

    /// Reads a whole header, from `buf` directly or gathered across calls.
    fn take_header(
        &mut self,
        buf: &[u8],
        pos: &mut usize,
    ) -> Result<Option<FrameHeader>, Violation> {
        if self.header_have == 0 {
            if let Some((header, len)) = parse_header(&buf[*pos..], self.require_mask)? {
                *pos += len;
                return Ok(Some(header));
            }
        }
        let before = self.header_have;
        let take = (MAX_HEADER_LEN - before).min(buf.len() - *pos);
        self.header_buf[before..before + take].copy_from_slice(&buf[*pos..*pos + take]);
        match parse_header(&self.header_buf[..before + take], self.require_mask)? {
            Some((header, len)) => {
                *pos += len - before;
                self.header_have = 0;
                Ok(Some(header))
            }
            None => {
                *pos += take;
                self.header_have = before + take;
                Ok(None)
            }
        }
    }

    /// Applies the message-level rules to a new frame header. Returns an event when the frame
    /// can be answered at once (a whole message in `buf`, an empty frame).
    fn start_frame(
        &mut self,
        header: FrameHeader,
        buf: &mut [u8],
        pos: &mut usize,
    ) -> Result<Option<Event>, Violation> {
        let len = header.payload_len;
        match header.opcode {
            frame::OP_TEXT => return Err(Violation::Text),
            frame::OP_BINARY => {
                if self.fragmented {
                    return Err(Violation::BadContinuation);
                }
                if len > self.max_message as u64 {
                    return Err(Violation::TooLarge {
                        len,
                        max: self.max_message,
                    });
                }
                self.fragmented = !header.fin;
            }
            frame::OP_CONTINUATION => {
                if !self.fragmented {
                    return Err(Violation::BadContinuation);
                }
                let so_far = self.message_len.unwrap_or(0) as u64;
                if so_far + len > self.max_message as u64 {
                    return Err(Violation::FragmentedTooLarge {
                        max: self.max_message,
                    });
                }
                if header.fin {
                    self.fragmented = false;
                }
            }
            _ => {
                // Control frame: validated by parse_header (≤ 125 bytes, FIN set).
                self.control_len = 0;
                if len == 0 {
                    return self.control_event(header.opcode).map(Some);
                }
                self.current = Some(CurrentFrame { header, done: 0 });
                return Ok(None);
            }
        }
        // Lossless: len ≤ max_message, a usize.
        let len_usize = len as usize;
        let whole_here =
            header.opcode == frame::OP_BINARY && header.fin && buf.len() - *pos >= len_usize;
        if whole_here {
            let range = *pos..*pos + len_usize;
            if let Some(key) = header.mask {
                apply_mask(&mut buf[range.clone()], key, 0);
            }
            *pos += len_usize;
            if len_usize < MIN_ETHERNET_FRAME {
                return Ok(Some(Event::Runt { len: len_usize }));
            }
            return Ok(Some(Event::Message(range)));
        }
        if len == 0 {
            self.message_len.get_or_insert(0);
            if header.fin {
                return Ok(Some(self.finish_message()));
            }
            return Ok(None);
        }
        self.current = Some(CurrentFrame { header, done: 0 });
        Ok(None)
    }

    fn finish_message(&mut self) -> Event {
        let len = self.message_len.take().unwrap_or(0);
        if len < MIN_ETHERNET_FRAME {
            Event::Runt { len }
        } else {
            Event::Assembled
        }
    }

    fn control_event(&mut self, opcode: u8) -> Result<Event, Violation> {
        match opcode {
            frame::OP_PING => Ok(Event::Ping),
            frame::OP_PONG => Ok(Event::Pong),
            _ => {
                let payload = self.control_payload();
                match payload.len() {
                    0 => Ok(Event::Close { code: None }),
                    1 => Err(Violation::BadClose),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        let valid_code = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                        if !valid_code || std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(Violation::BadClose);
                        }
                        Ok(Event::Close { code: Some(code) })
                    }
                }
            }
        }
    }
}

/// Builds a complete server control frame (close, ping, pong): unmasked, FIN set.
pub fn server_control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut out = vec![0u8; 2 + payload.len()];
    let n = frame::encode_header(&mut out, true, opcode, payload.len(), None);
    out[n..].copy_from_slice(payload);
    out
}

/// Builds a server close frame with `code` (RFC 6455 §5.5.1).
pub fn server_close_frame(code: u16) -> Vec<u8> {
    server_control_frame(frame::OP_CLOSE, &code.to_be_bytes())
}

//! The protocol of one client connection, sans-io: bytes and `now` in, actions out.
//!
//! Contract: the engine feeds every received byte once, in order: while the connection is in
//! its handshake through [`Conn::on_handshake_bytes`], afterwards through [`Conn::next_input`]
//! with the buffer the bytes arrived in (payloads are unmasked in that buffer and named by
//! range, so the engine forwards them without copying). On every housekeeping tick the engine
//! asks [`Conn::poll_timeout`] whether a ping is due or the connection must go. The engine
//! does what the returned value says (queue a reply, forward a frame, count a drop, shut the
//! socket down); nothing here touches a socket, a buffer pool or a clock.
//!
//! The connection's life is one [`Lifecycle`]:
//!
//! ```text
//! Handshake ──upgrade──▶ Open ──close / violation / pong timeout──▶ Flushing ──queue sent──▶ Closed
//!     │                                                                ▲                       ▲
//!     └──────── bad request: HTTP error queued ────────────────────────┘                       │
//!     └──────── reset, error, handshake timeout, stalled output, shutdown ─────────────────────┘
//! ```

use std::ops::Range;

use crate::counters::DropReason;
use crate::switch::limit::TokenBucket;
use crate::ws::frame::{self, HeaderError};
use crate::ws::handshake::{self, Rejection, Upgrade};
use crate::ws::session::{server_close_frame, server_control_frame};
use crate::ws::{Event, Session, Violation};

/// The payload of the server's keep-alive pings.
const PING_PAYLOAD: &[u8] = b"tapwire";

/// How long the owner of a MAC another client sends from has to show it is alive (any byte
/// in) before it is shut down and the MAC goes free. A browser answers a ping within a round
/// trip; a half-open connection (a sleeping laptop, a NAT that forgot it) never does.
pub const CHALLENGE_MS: u64 = 3_000;

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Reading the HTTP upgrade; bytes gathered here (bounded by the 8 KiB head limit).
    Handshake { head: Vec<u8>, deadline_ms: u64 },
    /// Upgraded: frames flow both ways.
    Open,
    /// No more input is decoded and no frames are queued; what is queued (a close frame or an
    /// HTTP error) is sent, then the socket is shut down. A connection refused during its
    /// handshake keeps the handshake deadline.
    Flushing { deadline_ms: Option<u64> },
    /// The socket is shut down; the slot is freed once no operation is in flight.
    Closed,
}

/// Per-client settings, in the units the protocol uses.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest binary message accepted (the configured maximum Ethernet frame).
    pub max_frame: usize,
    /// Bytes per second a client may send, when limited.
    pub client_rate: Option<u64>,
    /// Broadcast/multicast frames per second a client may send, when limited.
    pub client_broadcast_pps: Option<u64>,
    /// Ping a client idle this long; close it if the next interval passes without an answer.
    pub ping_interval_ms: Option<u64>,
    /// Shut down a client that takes none of its pending output for this long.
    pub slow_client_timeout_ms: u64,
    /// Close a client whose frame (or fragmented message) in progress is not complete this
    /// long after its first byte arrived.
    pub frame_timeout_ms: u64,
}

/// The outcome of handshake bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Not a whole request head yet (or the connection is no longer in its handshake).
    Incomplete,
    /// Refused: queue `response`; the connection is flushing.
    Rejected {
        reason: DropReason,
        rejection: Rejection,
        response: Vec<u8>,
    },
    /// Upgraded: queue `response`; the connection is open. `stream_at` is where, in the
    /// bytes just passed in, the WebSocket stream starts: bytes the client sent right behind
    /// its request (frames) lie in `bytes[stream_at..]`, whatever their length, and are
    /// decoded as input from there.
    Upgraded {
        response: Vec<u8>,
        path: String,
        origin: Option<String>,
        /// The request's `X-Forwarded-For` values (see [`crate::ws::forwarded`]).
        forwarded_for: Option<String>,
        stream_at: usize,
    },
}

/// What the engine must do with decoded input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A whole Ethernet frame lies unmasked in `bytes[range]`: switch it.
    Frame(Range<usize>),
    /// Append `bytes[range]` to the reassembly buffer (`first`: start a new one).
    Piece { range: Range<usize>, first: bool },
    /// The reassembled frame is complete: switch it.
    Assembled,
    /// A message shorter than an Ethernet header: discard it and any reassembly; count it.
    Runt { len: usize },
    /// A ping: queue this pong.
    Pong(Vec<u8>),
    /// The connection ends: queue `reply` (a close frame); it is now flushing. `violation`
    /// says why when the client broke the protocol (count and log it).
    Close {
        reply: Vec<u8>,
        violation: Option<(DropReason, Violation)>,
    },
}

/// What a housekeeping tick found.
#[derive(Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Idle for a ping interval: queue this ping.
    Ping(Vec<u8>),
    /// Queue this close frame; the connection is flushing: no pong for a ping interval
    /// (`pong_timeout`, 1001), or a frame in progress for longer than the frame timeout
    /// (`frame_timeout`, 1008).
    Close { reason: DropReason, reply: Vec<u8> },
    /// The connection must be shut down at once (handshake deadline passed, or output stalled:
    /// a stream stuck mid-frame cannot carry a close frame).
    ShutDown(DropReason),
}

/// One client's protocol state.
#[derive(Debug)]
pub struct Conn {
    lifecycle: Lifecycle,
    /// The WebSocket decoder (RFC 6455), used once open.
    session: Session,
    limits: ConnLimits,
    /// Last time anything arrived (ms), for pings.
    last_rx_ms: u64,
    /// When the unanswered ping was sent.
    ping_sent_ms: Option<u64>,
    /// When the first byte of the frame or message now in progress arrived (`None` at a
    /// message boundary).
    frame_started_ms: Option<u64>,
    /// Challenged as the owner of a MAC another client wants: shut down unless something
    /// arrives before this time.
    challenge_deadline_ms: Option<u64>,
    /// When this client last had an owner challenged (at most one per [`CHALLENGE_MS`]).
    challenged_other_ms: Option<u64>,
    /// Limits on what this client may send, when configured (set at the upgrade).
    byte_limit: Option<TokenBucket>,
    broadcast_limit: Option<TokenBucket>,
    /// Drop reasons already logged for this client in the current log interval (bit set).
    logged: u64,
}

impl Conn {
    /// A connection accepted at `now_ms`, in its handshake until `deadline_ms`.
    pub fn new(limits: ConnLimits, now_ms: u64, deadline_ms: u64) -> Self {
        Conn {
            lifecycle: Lifecycle::Handshake {
                head: Vec::new(),
                deadline_ms,
            },
            session: Session::new(limits.max_frame, true),
            limits,
            last_rx_ms: now_ms,
            ping_sent_ms: None,
            frame_started_ms: None,
            challenge_deadline_ms: None,
            challenged_other_ms: None,
            byte_limit: None,
            broadcast_limit: None,
            logged: 0,
        }
    }

    /// The connection's state.
    #[cfg(any(test, fuzzing))]
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Upgraded and not closing: frames may be queued to it and flood reaches it.
    #[inline]
    pub fn is_open(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Open)
    }

    /// Input is still read (handshake or open).
    pub fn wants_input(&self) -> bool {
        matches!(
            self.lifecycle,
            Lifecycle::Handshake { .. } | Lifecycle::Open
        )
    }

    /// Output is still sent (anything but closed).
    #[inline]
    pub fn wants_output(&self) -> bool {
        !matches!(self.lifecycle, Lifecycle::Closed)
    }

    /// Sending what is queued, then closing.
    pub fn is_flushing(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Flushing { .. })
    }

    /// Shut down (the socket is being closed).
    #[inline]
    pub fn is_closed(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Closed)
    }

    /// Something arrived at `now_ms` (any bytes count as proof of life).
    pub fn received(&mut self, now_ms: u64) {
        self.last_rx_ms = now_ms;
        self.challenge_deadline_ms = None;
    }

    /// Another client sends from a MAC this one owns: returns the ping to send now; unless
    /// anything arrives within [`CHALLENGE_MS`], [`Conn::poll_timeout`] shuts this client
    /// down (`mac_takeover`). `None` when not open or already challenged.
    pub fn challenge(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        if !self.is_open() || self.challenge_deadline_ms.is_some() {
            return None;
        }
        // Judged by any input, not by the pong: the keep-alive ping clock is left alone.
        self.challenge_deadline_ms = Some(now_ms + CHALLENGE_MS);
        Some(server_control_frame(frame::OP_PING, PING_PAYLOAD))
    }

    /// Whether this client, refused a MAC another client owns, may have that owner challenged
    /// now (once per [`CHALLENGE_MS`]).
    pub fn may_challenge(&mut self, now_ms: u64) -> bool {
        if self
            .challenged_other_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < CHALLENGE_MS)
        {
            return false;
        }
        self.challenged_other_ms = Some(now_ms);
        true
    }

    /// Stops reading and queues `reply` as the last output (a close frame, shutdown 1001).
    /// Returns the frame to queue, or `None` when the connection is not open.
    pub fn close_gracefully(&mut self, code: u16) -> Option<Vec<u8>> {
        if !self.is_open() {
            return None;
        }
        self.lifecycle = Lifecycle::Flushing { deadline_ms: None };
        Some(server_close_frame(code))
    }

    /// The network it joined sets its own rates (a declared network's `client-rate`,
    /// `client-broadcast-pps`; 0: no limit): they replace the instance's.
    pub fn set_rates(&mut self, client_rate: Option<u64>, broadcast_pps: Option<u64>, now_ms: u64) {
        if let Some(r) = client_rate {
            self.byte_limit =
                (r > 0).then(|| TokenBucket::new(r, self.limits.max_frame as u64, now_ms));
        }
        if let Some(p) = broadcast_pps {
            self.broadcast_limit = (p > 0).then(|| TokenBucket::new(p, 1, now_ms));
        }
    }

    /// Refused after a valid upgrade request (access control): the refusal queued by the
    /// caller is the last output, flushed within `flush_ms`.
    pub fn refuse(&mut self, now_ms: u64, flush_ms: u64) {
        self.lifecycle = Lifecycle::Flushing {
            deadline_ms: Some(now_ms + flush_ms),
        };
    }

    /// The socket is being shut down.
    pub fn close(&mut self) {
        self.lifecycle = Lifecycle::Closed;
    }

    /// Takes handshake bytes; see [`HandshakeStep`].
    pub fn on_handshake_bytes(&mut self, bytes: &[u8], now_ms: u64) -> HandshakeStep {
        let Lifecycle::Handshake { head, deadline_ms } = &mut self.lifecycle else {
            return HandshakeStep::Incomplete;
        };
        // Keep at most one byte beyond the limit: enough to know the head is too large.
        let before = head.len();
        let room = (handshake::MAX_HEAD_LEN + 1).saturating_sub(before);
        head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        match handshake::parse_upgrade(head) {
            Upgrade::Incomplete => HandshakeStep::Incomplete,
            Upgrade::Reject(rejection) => {
                let reason = if rejection == Rejection::HeadTooLarge {
                    DropReason::HeadTooLarge
                } else {
                    DropReason::NotWebsocket
                };
                self.lifecycle = Lifecycle::Flushing {
                    deadline_ms: Some(*deadline_ms),
                };
                HandshakeStep::Rejected {
                    reason,
                    rejection,
                    response: rejection.response().into_bytes(),
                }
            }
            Upgrade::Accept {
                response,
                head_len,
                path,
                origin,
                forwarded_for,
            } => {
                // The head was incomplete before these bytes, so it ends inside them; what
                // follows (possibly more than was copied into `head`) is the stream.
                let stream_at = head_len - before;
                self.lifecycle = Lifecycle::Open;
                // Byte bursts of at least one maximum frame, so a limit never blocks every frame.
                self.byte_limit = self
                    .limits
                    .client_rate
                    .map(|r| TokenBucket::new(r, self.limits.max_frame as u64, now_ms));
                self.broadcast_limit = self
                    .limits
                    .client_broadcast_pps
                    .map(|r| TokenBucket::new(r, 1, now_ms));
                HandshakeStep::Upgraded {
                    response: response.into_bytes(),
                    path,
                    origin,
                    forwarded_for,
                    stream_at,
                }
            }
        }
    }

    /// Decodes the next input from `bytes[*pos..]` (unmasking it in place); `None` when the
    /// bytes are used up or the connection no longer reads.
    #[inline]
    pub fn next_input(&mut self, bytes: &mut [u8], pos: &mut usize) -> Option<Input> {
        loop {
            if !self.is_open() {
                return None;
            }
            let event = match self.session.next(bytes, pos) {
                Ok(None) => {
                    // The bytes are used up. A frame left half received has a deadline from
                    // the receive that started it.
                    if !self.session.in_progress() {
                        self.frame_started_ms = None;
                    } else if self.frame_started_ms.is_none() {
                        self.frame_started_ms = Some(self.last_rx_ms);
                    }
                    return None;
                }
                Ok(Some(event)) => event,
                Err(violation) => {
                    self.lifecycle = Lifecycle::Flushing { deadline_ms: None };
                    return Some(Input::Close {
                        reply: server_close_frame(violation.close_code()),
                        violation: Some((violation_reason(&violation), violation)),
                    });
                }
            };
            if !matches!(event, Event::Piece { .. }) && !self.session.in_progress() {
                // A message (or control frame) ended at a boundary: the next one starts afresh.
                self.frame_started_ms = None;
            }
            return Some(match event {
                Event::Message(range) => Input::Frame(range),
                Event::Piece { range, first } => Input::Piece { range, first },
                Event::Assembled => Input::Assembled,
                Event::Runt { len } => Input::Runt { len },
                Event::Ping => Input::Pong(server_control_frame(
                    frame::OP_PONG,
                    self.session.control_payload(),
                )),
                Event::Pong => {
                    self.ping_sent_ms = None;
                    continue;
                }
                Event::Close { code } => {
                    self.lifecycle = Lifecycle::Flushing { deadline_ms: None };
                    let reply = match code {
                        Some(code) => server_close_frame(code),
                        None => server_control_frame(frame::OP_CLOSE, &[]),
                    };
                    Input::Close {
                        reply,
                        violation: None,
                    }
                }
            });
        }
    }

    /// Charges a frame of `len` bytes (a group address when `group`) to the client's limits.
    /// `Err` names the limit it is over.
    #[inline]
    pub fn charge(&mut self, len: usize, group: bool, now_ms: u64) -> Result<(), &'static str> {
        let bytes_ok = self
            .byte_limit
            .as_mut()
            .is_none_or(|b| b.allow(len as u64, now_ms));
        if !bytes_ok {
            return Err("over --client-rate");
        }
        let broadcast_ok = !group
            || self
                .broadcast_limit
                .as_mut()
                .is_none_or(|b| b.allow(1, now_ms));
        if !broadcast_ok {
            return Err("over --client-broadcast-pps");
        }
        Ok(())
    }

    /// What is due at `now_ms`, given since when the client's output has waited without the
    /// socket taking any (`stalled_since_ms`).
    pub fn poll_timeout(&mut self, now_ms: u64, stalled_since_ms: Option<u64>) -> Option<Timeout> {
        let stalled = stalled_since_ms.is_some_and(|since| {
            now_ms.saturating_sub(since) >= self.limits.slow_client_timeout_ms
        });
        match &self.lifecycle {
            Lifecycle::Handshake { deadline_ms, .. }
            | Lifecycle::Flushing {
                deadline_ms: Some(deadline_ms),
            } if now_ms >= *deadline_ms => Some(Timeout::ShutDown(DropReason::HandshakeTimeout)),
            Lifecycle::Open | Lifecycle::Flushing { deadline_ms: None } if stalled => {
                Some(Timeout::ShutDown(DropReason::SlowClient))
            }
            Lifecycle::Open if self.challenge_deadline_ms.is_some_and(|d| now_ms >= d) => {
                Some(Timeout::ShutDown(DropReason::MacTakeover))
            }
            Lifecycle::Open
                if self
                    .frame_started_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= self.limits.frame_timeout_ms) =>
            {
                self.close_gracefully(1008).map(|reply| Timeout::Close {
                    reason: DropReason::FrameTimeout,
                    reply,
                })
            }
            Lifecycle::Open => {
                let interval = self.limits.ping_interval_ms?;
                match self.ping_sent_ms {
                    Some(sent) if now_ms.saturating_sub(sent) >= interval => {
                        // The peer may still read: close gracefully. If it does not, the stall
                        // rule shuts it down later.
                        self.close_gracefully(1001).map(|reply| Timeout::Close {
                            reason: DropReason::PongTimeout,
                            reply,
                        })
                    }
                    None if now_ms.saturating_sub(self.last_rx_ms) >= interval => {
                        self.ping_sent_ms = Some(now_ms);
                        Some(Timeout::Ping(server_control_frame(
                            frame::OP_PING,
                            PING_PAYLOAD,
                        )))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// True the first time `reason` is logged for this client in the current log interval.
    pub fn first_log(&mut self, reason: DropReason) -> bool {
        let bit = 1u64 << (reason as usize);
        let first = self.logged & bit == 0;
        self.logged |= bit;
        first
    }

    /// Starts a new log interval.
    pub fn reset_log(&mut self) {
        self.logged = 0;
    }
}

/// The counter of a protocol violation.
fn violation_reason(v: &Violation) -> DropReason {
    match v {
        Violation::Text => DropReason::TextMessage,
        Violation::TooLarge { .. } => DropReason::FrameTooLarge,
        Violation::FragmentedTooLarge { .. } => DropReason::FragmentedTooLarge,
        Violation::Header(HeaderError::ControlTooLong | HeaderError::ControlFragmented) => {
            DropReason::ControlFrameInvalid
        }
        _ => DropReason::ProtocolViolation,
    }
}

#[cfg(test)]
mod tests;

//! One wss:// client's TLS: rustls's unbuffered server connection, fed the ciphertext of each
//! receive where it lies and encrypting the client's queued output into one send buffer.
//!
//! Contract (pure: no I/O, no `unsafe`):
//! - [`TlsSession::receive`] processes ciphertext in place; each decrypted record goes to the
//!   caller's sink. Only a record split across receives is copied (into `partial`, at most one
//!   record), and, while rustls joins a handshake message split over records, the input
//!   behind it (at most [`MAX_JOIN`] bytes). A failure names the drop reason; its alert, if
//!   rustls made one, is queued to send.
//! - Output is one buffer, `tx`: handshake messages, encrypted data and alerts in the order
//!   they were made. [`TlsSession::unsent`] is what to send next. Output made while processing
//!   input waits in `later` and is moved behind `tx`'s content by [`TlsSession::prepare`],
//!   which the caller runs only with no send in flight; so is [`TlsSession::encrypt`].
//! - A session holds `tx` only while it has output: the caller lends one with
//!   [`TlsSession::attach`] before [`TlsSession::prepare`] (which makes one if none was lent)
//!   and takes it back with [`TlsSession::release`] once everything in it went out, so that an
//!   idle client holds no send buffer.
//!
//! rustls 0.23 decrypts each record in place and then copies its plaintext into a `Vec` of
//! its own; the caller copies it once more, into a plaintext buffer the frame path can
//! reference (docs/design.md, "wss://").

use std::sync::Arc;

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use crate::counters::DropReason;

/// Largest TLS record on the wire: header, 2^14 bytes of plaintext and the most expansion
/// TLS 1.2 allows (RFC 5246 6.2.3).
pub const MAX_RECORD: usize = 5 + 16_384 + 2_048;
/// Bytes of a send buffer; it grows only for a handshake message larger than what is left (a
/// long certificate chain), and a grown one is not handed back by [`TlsSession::release`].
pub const TX_SIZE: usize = 40 * 1024;
/// Bytes first made room for when rustls encodes a handshake message: handshake messages are
/// smaller than this except a certificate chain of several certificates, which then takes
/// what it needs.
const ENCODE_ROOM: usize = 4096;
/// Most input kept while rustls joins a handshake message split across records.
pub const MAX_JOIN: usize = 64 * 1024;
/// Room kept per record for its header, nonce, tag and content type.
pub const RECORD_OVERHEAD: usize = 64;

/// Why a TLS connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: DropReason,
    pub detail: String,
}

/// What a receive brought besides plaintext.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The handshake completed in this receive.
    pub handshaken: bool,
    /// The client sent close_notify: it sends nothing more.
    pub peer_closed: bool,
}

/// A client's TLS state.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// A record split across receives: its bytes so far.
    partial: Vec<u8>,
    /// Ciphertext to send: `tx[sent..len]`; empty while the session holds no send buffer.
    tx: Box<[u8]>,
    len: usize,
    sent: usize,
    /// Output made while processing input (handshake messages, alerts, key-update answers),
    /// moved behind `tx`'s content by the next [`TlsSession::prepare`].
    later: Vec<u8>,
    handshaken: bool,
    close_queued: bool,
    /// A failure was seen: no more input is processed.
    failed: bool,
    /// Both sides sent close_notify.
    closed: bool,
    /// rustls has consumed a record (to tell garbage from a failed handshake).
    seen_record: bool,
}

impl TlsSession {
    /// A session for a new connection with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            partial: Vec::new(),
            tx: Box::default(),
            len: 0,
            sent: 0,
            later: Vec::new(),
            handshaken: false,
            close_queued: false,
            failed: false,
            closed: false,
            seen_record: false,
        })
    }

    /// The handshake is done: application data flows.
    pub fn handshaken(&self) -> bool {
        self.handshaken
    }

    /// Takes the ciphertext of one receive (decrypted in place); plaintext goes to `sink` in
    /// order.
    ///
    /// rustls may keep a record it has read but not consumed (a handshake message split
    /// across records): the bytes it has not consumed must come first in its next input. So
    /// whatever is left of one receive is kept in `partial`. Usually that is the start of one
    /// record, completed from the next receive and processed alone; the rest of that receive
    /// is then processed where it lies. Only while rustls joins a message are whole receives
    /// appended to `partial` (at most [`MAX_JOIN`] bytes).
    pub fn receive(
        &mut self,
        input: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Received, Failure> {
        let mut got = Received::default();
        if self.failed || self.closed {
            return Ok(got);
        }
        let mut at = 0;
        if !self.partial.is_empty() && !holds_whole_record(&self.partial) {
            // Complete the split record: its header first, then its body.
            if self.partial.len() < 5 {
                at = (5 - self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input[..at]);
            }
            if let Some(n) = record_len(&self.partial).filter(|&n| n <= MAX_RECORD) {
                let take = (n - self.partial.len()).min(input.len() - at);
                self.partial.extend_from_slice(&input[at..at + take]);
                at += take;
            }
            // An oversized header goes to rustls as it is: rustls refuses it.
            let ready = record_len(&self.partial)
                .is_some_and(|n| self.partial.len() >= n || n > MAX_RECORD);
            if !ready {
                return Ok(got);
            }
            self.process_partial(sink, &mut got)?;
        }
        if !self.partial.is_empty() {
            // rustls is joining a message: everything goes behind what it has not consumed.
            if self.partial.len() + input.len() - at > MAX_JOIN {
                let detail = format!("a handshake message over {MAX_JOIN} bytes");
                return Err(self.fail(DropReason::TlsHandshakeFailed, detail, &mut []));
            }
            self.partial.extend_from_slice(&input[at..]);
            self.process_partial(sink, &mut got)?;
            return Ok(got);
        }
        let used = self.process(&mut input[at..], sink, &mut got)?;
        let rest = &input[at + used..];
        if !rest.is_empty() && !self.closed {
            self.partial.extend_from_slice(rest);
        }
        Ok(got)
    }

    /// Processes `partial`, keeping what rustls did not consume.
    fn process_partial(
        &mut self,
        sink: &mut dyn FnMut(&[u8]),
        got: &mut Received,
    ) -> Result<(), Failure> {
        let mut buf = std::mem::take(&mut self.partial);
        let result = self.process(&mut buf, sink, got);
        if let Ok(used) = result {
            buf.drain(..used);
            if self.closed {
                buf.clear();
            }
            self.partial = buf;
        }
        result.map(|_| ())
    }

    /// Runs rustls over `buf` until it needs more input; returns the bytes it consumed.
    fn process(
        &mut self,
        buf: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
        got: &mut Received,
    ) -> Result<usize, Failure> {
        enum Step {
            More,
            Stop,
            Fail(DropReason, String),
        }
        let mut at = 0;
        loop {
            // A TLS connection starts with a handshake record of version 3.x.
            let hello_like = buf[at..].starts_with(&[0x16, 3]);
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut buf[at..]);
            let step = match state {
                Err(e) => {
                    let reason = if !self.seen_record && !hello_like {
                        DropReason::TlsNotTls
                    } else if !self.handshaken {
                        DropReason::TlsHandshakeFailed
                    } else if matches!(e, rustls::Error::AlertReceived(_)) {
                        DropReason::TlsAlert
                    } else {
                        DropReason::TlsBadRecord
                    };
                    Step::Fail(reason, e.to_string())
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut step = Step::More;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => sink(record.payload),
                            Err(e) => {
                                step = Step::Fail(DropReason::TlsBadRecord, e.to_string());
                                break;
                            }
                        }
                    }
                    step
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    // Handshake output waits in `later` until the next flush moves it to tx.
                    // Room for a typical handshake message; a larger one (a long certificate
                    // chain) says how much it needs and gets it on the next pass.
                    let start = self.later.len();
                    self.later.resize(start + ENCODE_ROOM, 0);
                    loop {
                        match encode.encode(&mut self.later[start..]) {
                            Ok(n) => {
                                self.later.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(s)) => {
                                self.later.resize(start + s.required_size, 0);
                            }
                            Err(EncodeError::AlreadyEncoded) => {
                                self.later.truncate(start);
                                break;
                            }
                        }
                    }
                    Step::More
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // Sent in order with everything after it, at the next flush.
                    transmit.done();
                    Step::More
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Stop,
                Ok(ConnectionState::WriteTraffic(_)) => {
                    if !self.handshaken {
                        self.handshaken = true;
                        got.handshaken = true;
                    }
                    Step::Stop
                }
                Ok(ConnectionState::PeerClosed) => {
                    got.peer_closed = true;
                    Step::More
                }
                Ok(ConnectionState::Closed) => {
                    self.closed = true;
                    Step::Stop
                }
                // Early data is not enabled; any other state is one this code predates.
                Ok(other) => Step::Fail(
                    DropReason::TlsHandshakeFailed,
                    format!("unexpected TLS state {other:?}"),
                ),
            };
            if discard > 0 {
                self.seen_record = true;
            }
            at += discard;
            match step {
                Step::More => {}
                Step::Stop => return Ok(at),
                Step::Fail(reason, detail) => {
                    return Err(self.fail(reason, detail, &mut buf[at..]));
                }
            }
        }
    }

    /// Marks the session failed and queues the alert rustls prepared, if any. `rest` is the
    /// input rustls has not consumed (it must see it again).
    fn fail(&mut self, reason: DropReason, detail: String, rest: &mut [u8]) -> Failure {
        self.failed = true;
        // A failed connection hands out its alert as handshake output, once: asked again,
        // rustls would process the failed record again.
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let mut alert = [0u8; 64];
            if let Ok(n) = encode.encode(&mut alert) {
                self.later.extend_from_slice(&alert[..n]);
            }
        }
        self.partial = Vec::new();
        Failure { reason, detail }
    }

    /// A failure while sending.
    fn fail_sending(&mut self, detail: String) -> Failure {
        let mut rest = std::mem::take(&mut self.partial);
        self.fail(DropReason::TlsBadRecord, detail, &mut rest)
    }

    /// Bytes of plaintext [`TlsSession::encrypt`] may still take before the next send.
    pub fn room(&self) -> usize {
        if !self.handshaken || self.failed || self.close_queued {
            return 0;
        }
        let free = self.tx.len() - self.len;
        let records = free / 16_384 + 1;
        free.saturating_sub(records * RECORD_OVERHEAD)
    }

    /// The session holds no send buffer: lend it one ([`TlsSession::attach`]) before
    /// [`TlsSession::prepare`].
    pub fn needs_buffer(&self) -> bool {
        self.tx.is_empty()
    }

    /// Lends the session a send buffer of [`TX_SIZE`] bytes (ignored if it holds one).
    pub fn attach(&mut self, buffer: Box<[u8]>) {
        if self.tx.is_empty() {
            self.tx = buffer;
        }
    }

    /// Takes the send buffer back when nothing in it is unsent and no output waits (call
    /// with no send in flight); `None` if it holds none, is still needed, or grew past
    /// [`TX_SIZE`] (then it is freed here).
    pub fn release(&mut self) -> Option<Box<[u8]>> {
        if self.tx.is_empty() || self.has_output() {
            return None;
        }
        self.sent = 0;
        self.len = 0;
        let tx = std::mem::take(&mut self.tx);
        (tx.len() == TX_SIZE).then_some(tx)
    }

    /// Moves waiting output into `tx` behind what is unsent (call with no send in flight),
    /// making a send buffer if none was lent.
    pub fn prepare(&mut self) {
        if self.tx.is_empty() {
            self.tx = vec![0; TX_SIZE].into_boxed_slice();
        }
        if self.sent == self.len {
            self.sent = 0;
            self.len = 0;
        } else if self.sent > 0 {
            self.tx.copy_within(self.sent..self.len, 0);
            self.len -= self.sent;
            self.sent = 0;
        }
        if !self.later.is_empty() {
            self.ensure(self.later.len());
            self.tx[self.len..self.len + self.later.len()].copy_from_slice(&self.later);
            self.len += self.later.len();
            // Each handshake message was encoded into room for a whole record: after the
            // handshake `later` would keep about 36 KiB per client for good. Output that
            // waits here is rare once data flows (alerts, key updates): free it.
            self.later = Vec::new();
        }
    }

    /// Grows `tx` so that `more` bytes fit behind its content (no send in flight).
    fn ensure(&mut self, more: usize) {
        grow(&mut self.tx, self.len, more);
    }

    /// Encrypts `plaintext` into `tx` (no send in flight, after [`TlsSession::prepare`]);
    /// at most [`TlsSession::room`] bytes.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<(), Failure> {
        loop {
            // rustls sees the input it has not consumed (it may have read into it); with no
            // complete record there, it consumes nothing.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.partial);
            match state {
                Ok(ConnectionState::WriteTraffic(mut write)) => {
                    let free = &mut self.tx[self.len..];
                    return match write.encrypt(plaintext, free) {
                        Ok(n) => {
                            self.len += n;
                            Ok(())
                        }
                        Err(EncryptError::InsufficientSize(s)) => {
                            self.ensure(s.required_size);
                            continue;
                        }
                        Err(e) => Err(self.fail_sending(e.to_string())),
                    };
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let mut need = 0;
                    loop {
                        match encode.encode(&mut self.tx[self.len..]) {
                            Ok(n) => {
                                self.len += n;
                                break;
                            }
                            Err(EncodeError::InsufficientSize(s)) if need == 0 => {
                                need = s.required_size;
                                grow(&mut self.tx, self.len, need);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(other) => {
                    let detail = format!("cannot send in state {other:?}");
                    return Err(self.fail_sending(detail));
                }
                Err(e) => return Err(self.fail_sending(e.to_string())),
            }
        }
    }

    /// Queues close_notify (once; after the handshake only), behind everything queued.
    pub fn queue_close_notify(&mut self) {
        if self.close_queued || !self.handshaken || self.failed {
            return;
        }
        self.close_queued = true;
        self.ensure(64);
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.partial);
        if let Ok(ConnectionState::WriteTraffic(mut write)) = state {
            if let Ok(n) = write.queue_close_notify(&mut self.tx[self.len..]) {
                self.len += n;
            }
        }
    }

    /// close_notify is queued (or cannot be: the handshake never finished or failed).
    pub fn close_done(&self) -> bool {
        self.close_queued || !self.handshaken || self.failed
    }

    /// The bytes to send next, if any (stable until [`TlsSession::sent`]).
    pub fn unsent(&self) -> Option<&[u8]> {
        (self.sent < self.len).then(|| &self.tx[self.sent..self.len])
    }

    /// Output is waiting: unsent bytes, or bytes made while a send was in flight.
    pub fn has_output(&self) -> bool {
        self.sent < self.len || !self.later.is_empty()
    }

    /// `n` bytes of [`TlsSession::unsent`] went out.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.len);
    }
}

/// Grows `tx` so that `more` bytes fit behind its first `len`.
fn grow(tx: &mut Box<[u8]>, len: usize, more: usize) {
    if len + more > tx.len() {
        let mut bigger = vec![0; len + more].into_boxed_slice();
        bigger[..len].copy_from_slice(&tx[..len]);
        *tx = bigger;
    }
}

/// `bytes` starts with a whole record.
fn holds_whole_record(bytes: &[u8]) -> bool {
    record_len(bytes).is_some_and(|n| bytes.len() >= n)
}

/// Length of the record starting `bytes` (header included), once its header is there.
fn record_len(bytes: &[u8]) -> Option<usize> {
    (bytes.len() >= 5).then(|| 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]])))
}

#[cfg(test)]
mod tests;

//! wss:// clients on a core. Ciphertext is decrypted where it was received; each record's
//! plaintext is copied into plaintext buffers, which the WebSocket path then reads like
//! receive buffers (frames written to the TAP from there). Output queued for the client is
//! encrypted into a send buffer lent to its session (from the core's spares, taken back when
//! everything in it went out) when no send is in flight, gathered into records
//! of up to [`STAGE`] bytes first: rustls 0.23 allocates and copies per record, so fewer,
//! larger records cost less than one per frame even with the gathering copy (relay-bench
//! `wss`, 1514-byte frames to 64 clients: 0.62 of ws:// with a record per frame, 0.74
//! gathered).

use io_uring::{opcode, types};

use crate::counters::DropReason;
use crate::switch::PortId;

use super::super::bufpool::BufId;
use super::super::ops::{self, Kind};
use super::{Worker, REFUSAL_FLUSH_MS};

/// Plaintext buffers one receive may need. The sink fills buffers to the brim, so this is the
/// most plaintext one receive yields, in buffers: a record completed from earlier receives
/// (16 KiB), then either the rest of this receive buffer (less than 16 KiB) or, while rustls
/// joins a handshake message, everything kept for it (at most `MAX_JOIN`, 64 KiB): 80 KiB,
/// five 16 KiB buffers, and one to spare.
pub(super) const PLAIN_PER_RECEIVE: usize = 6;
const _: () =
    assert!((16_384 + super::super::tls_session::MAX_JOIN) / (16 * 1024) < PLAIN_PER_RECEIVE);
/// Plaintext gathered per record (the most a TLS record holds).
const STAGE: usize = 16 * 1024;

impl Worker {
    /// `len` bytes of ciphertext from the wss:// client of `port` in receive buffer `id`.
    pub(super) fn on_tls_bytes(&mut self, port: PortId, id: BufId, len: usize) {
        let arena = self.pool.arena();
        // SAFETY: the kernel handed this receive buffer over; it stays referenced until the
        // caller releases it after this call, and this is the only view of it.
        let input = unsafe { arena.bytes_mut(id, 0, len) };
        let recv_size = self.pool.recv_size();
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        let Some(tls) = c.tls.as_mut() else {
            return;
        };
        let was_handshaken = tls.handshaken();
        let pool = &mut self.pool;
        let filled = &mut self.tls_scratch.plain;
        filled.clear();
        let mut short = false;
        let mut sink = |mut bytes: &[u8]| {
            while !bytes.is_empty() {
                if filled.last().is_none_or(|&(_, used)| used == recv_size) {
                    let Some(p) = pool.alloc_plain() else {
                        short = true;
                        return;
                    };
                    filled.push((p, 0));
                }
                let Some((p, used)) = filled.last_mut() else {
                    return;
                };
                let n = (recv_size - *used).min(bytes.len());
                // SAFETY: a plaintext buffer just taken from the free list is ours alone
                // until it is handed to the WebSocket path below.
                unsafe { arena.bytes_mut(*p, *used, n) }.copy_from_slice(&bytes[..n]);
                *used += n;
                bytes = &bytes[n..];
            }
        };
        let result = tls.receive(input, &mut sink);
        if tls.has_output() {
            self.clients.mark_dirty(port);
        }
        // Plaintext decrypted before any failure is the client's and is handled.
        let filled = std::mem::take(&mut self.tls_scratch.plain);
        for &(p, used) in &filled {
            self.on_bytes(port, p, used);
            self.pool.release(p);
        }
        self.tls_scratch.plain = filled;
        let now = self.time.now_ms;
        match result {
            Ok(got) => {
                if got.handshaken {
                    self.counters.tls_handshakes.inc();
                }
                if short {
                    // Never reached while input waits for PLAIN_PER_RECEIVE free buffers.
                    self.drop_logged(
                        port,
                        DropReason::NoFrameBuffer,
                        format_args!("no plaintext buffer for decrypted input; closing"),
                    );
                    self.begin_close(port);
                } else if got.peer_closed {
                    self.begin_close(port);
                }
            }
            Err(failure) => {
                self.counters.dropped(failure.reason);
                if !was_handshaken {
                    self.counters.tls_handshake_failures.inc();
                }
                self.log_once(
                    port,
                    failure.reason,
                    format_args!("TLS: {}; closing", failure.detail),
                );
                if let Some(c) = self.clients.get_mut(port) {
                    c.conn.refuse(now, REFUSAL_FLUSH_MS);
                }
                self.clients.mark_dirty(port);
            }
        }
    }

    /// Encrypts what the wss:// client of `port` has queued and submits one send of its
    /// ciphertext (no send in flight). A client that is flushing gets close_notify last, then
    /// is closed.
    pub(super) fn flush_tls(&mut self, port: PortId) {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if !c.conn.wants_output() || c.socket.sending() {
            return;
        }
        let flushing = c.conn.is_flushing();
        let (out, socket) = (&mut c.out, &mut c.socket);
        let Some(tls) = c.tls.as_mut() else {
            return;
        };
        if tls.needs_buffer() {
            if let Some(buffer) = self.tls_scratch.spare_tx.pop() {
                tls.attach(buffer);
            }
        }
        tls.prepare();
        let stage = &mut self.tls_scratch.stage;
        stage.clear();
        let mut taken = 0;
        let mut failure = None;
        // Not bound by iovecs: as many queued frames as the send buffer takes.
        for (ptr, len) in out.pending(usize::MAX) {
            let room = tls.room().saturating_sub(stage.len());
            if room == 0 {
                break;
            }
            // SAFETY: the queue holds a reference on every pool buffer it names and owns its
            // other entries; neither changes until the queue is advanced past them below.
            let run = unsafe { std::slice::from_raw_parts(ptr, len.min(room)) };
            let result = if stage.len() + run.len() > STAGE {
                let staged = tls.encrypt(stage);
                stage.clear();
                stage.extend_from_slice(run);
                staged
            } else {
                stage.extend_from_slice(run);
                Ok(())
            };
            if let Err(f) = result {
                failure = Some(f);
                break;
            }
            taken += run.len();
            if run.len() < len {
                break;
            }
        }
        if failure.is_none() && !stage.is_empty() {
            failure = tls.encrypt(stage).err();
        }
        let pool = &mut self.pool;
        out.advance(taken, now, |id| pool.release(id));
        if flushing && out.is_empty() {
            tls.queue_close_notify();
        }
        let submitted = match tls.unsent() {
            Some(bytes) => {
                let (ptr, len) = (bytes.as_ptr(), bytes.len());
                socket.prepare_send_bytes(ptr, len).map(|msg| {
                    opcode::SendMsg::new(types::Fd(socket.raw_fd()), msg)
                        .flags(libc::MSG_NOSIGNAL as u32)
                        .build()
                        .user_data(ops::for_port(Kind::Send, port))
                })
            }
            None => None,
        };
        let done = submitted.is_none() && flushing && out.is_empty() && tls.close_done();
        if let Some(entry) = submitted {
            // SAFETY: the msghdr and iovec live in the client's boxes, and the bytes they name
            // in its session's send buffer, which is not written while the send is in flight
            // (output made meanwhile waits in the session); the slot is not freed meanwhile.
            unsafe { self.ring.push(&entry) };
        }
        if let Some(f) = failure {
            self.counters.dropped(f.reason);
            self.log_once(port, f.reason, format_args!("TLS: {}; closing", f.detail));
            self.begin_close(port);
            self.maybe_free(port);
        } else if done {
            self.begin_close(port);
            self.maybe_free(port);
        }
    }

    /// A send of the wss:// client of `port` completed with `sent` bytes.
    pub(super) fn on_tls_sent(&mut self, port: PortId, sent: usize) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        let Some(tls) = c.tls.as_mut() else {
            return;
        };
        tls.advance(sent);
        // All of it went out: the send buffer goes back for the next client with output. The
        // spares are as many as clients ever had output at once, never freed, so that a send
        // never waits on an allocation once the core has seen its busiest moment.
        if let Some(buffer) = tls.release() {
            self.tls_scratch.spare_tx.push(buffer);
        }
        let more = tls.has_output() || !c.out.is_empty();
        let flushing = c.conn.is_flushing();
        if more || flushing {
            // A flushing client with nothing left is closed by the flush, after close_notify.
            self.clients.mark_dirty(port);
        }
        self.maybe_free(port);
    }
}

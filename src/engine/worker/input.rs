//! Client → host: receives, the client protocol, the switch, TAP writes.
//!
//! A frame to the host is written to the TAP from the receive buffer it arrived in (unmasked
//! in place): no copy. A frame to other clients is copied once into a frame slot whose
//! headroom takes the server header (not sent from the receive buffer: one receive buffer
//! holds many frames, and a slow recipient would pin all of it and starve the receive ring).

use std::io;

use io_uring::{cqueue, opcode, squeue, types};

use crate::counters::DropReason;
use crate::switch::{ingress_claiming, Forward, Mac, PortId, Source, SwitchDrop};

use super::super::bufpool::{BufId, BufferPool, HEADROOM, RECV_GROUP};
use super::super::conn::{HandshakeStep, Input};
use super::super::loggate::{self, held_note};
use super::super::mailbox::Control;
use super::super::ops::{self, Kind};
use super::output::Ready;
use super::upgrade::Upgraded;
use super::{Held, Worker};

/// Client input is also held while the frames this core sent to other cores, and has not got
/// back, exceed 1/CROSS_HIGH_WATER_DIV of its slots. Each such frame pins a slot of the sender
/// until the receiver has copied it; without this bound an overloaded receiver let a sender's
/// clients pin every slot of the sender, and both cores then dropped nearly everything as
/// `no_frame_buffer`. Frames arriving from other cores are never held: two cores whose slots
/// are pinned in each other's queues would wait for each other forever. Slots pinned by slow
/// local recipients do not hold input (that would let a few non-reading clients stall a core's
/// TAP traffic); they are bounded by `--send-queue` and the slow-client timeout instead.
const CROSS_HIGH_WATER_DIV: usize = 8;

/// A client frame, unmasked, and where it lives in the pool.
#[derive(Clone, Copy)]
pub(super) struct ClientFrame<'a> {
    pub bytes: &'a [u8],
    /// The buffer holding `bytes` (the caller holds a reference on it): a receive buffer, or
    /// a slot holding just this frame at its [`HEADROOM`] (which can then be sent as it is).
    pub buf: BufId,
}

impl Worker {
    /// Arms a receive on the client of `port` unless one is armed or it reads no more.
    pub(super) fn arm_recv(&mut self, port: PortId) {
        let multishot = self.features.multishot_recv;
        let recv_size = self.pool.recv_size();
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if !c.conn.wants_input() || !c.socket.start_recv() {
            return;
        }
        let fd = types::Fd(c.socket.raw_fd());
        if multishot {
            self.pending.probes.arm(port);
        }
        let entry = if multishot {
            opcode::RecvMulti::new(fd, RECV_GROUP).build()
        } else {
            // Lossless: receive buffers are a few KiB.
            opcode::Recv::new(fd, std::ptr::null_mut(), recv_size as u32)
                .buf_group(RECV_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        // SAFETY: the kernel picks a provided buffer of the pool; the socket stays open until
        // the receive has completed (the slot is freed only then).
        unsafe {
            self.ring
                .push(&entry.user_data(ops::for_port(Kind::Recv, port)))
        };
    }

    /// A receive completed: handle it now, or hold it while the TAP or other cores are behind.
    pub(super) fn on_recv(&mut self, port: PortId, res: i32, flags: u32) {
        let buf = cqueue::buffer_select(flags).map(|bid| self.pool.recv_buf(bid));
        if let Some(id) = buf {
            self.pool.received(id);
        }
        let more = cqueue::more(flags);
        let Some(c) = self.clients.get_mut(port) else {
            if let Some(id) = buf {
                self.pool.release(id);
            }
            return;
        };
        if !more {
            c.socket.recv_ended();
        }
        if res == -libc::ENOBUFS {
            self.counters.buffer_ring_empty.inc();
            self.pending.starved.push(port);
        } else if self.pending.held.is_empty() && !self.backpressured() {
            self.handle_input(port, res, buf);
        } else {
            // Held buffers drain the receive ring, which stops receives and lets TCP push back.
            self.counters.input_held.inc();
            self.pending.held.push_back(Held {
                port,
                result: res,
                buf,
            });
        }
        if !more {
            self.arm_recv(port);
            self.maybe_free(port);
        }
    }

    /// True while client input must wait: too many TAP writes or cross-core frames in flight,
    /// or (with a wss:// listener) too few plaintext buffers free for one more receive.
    fn backpressured(&self) -> bool {
        self.taps_behind()
            || self.mailbox.in_flight() >= self.cfg.frame_slots as usize / CROSS_HIGH_WATER_DIV
            || (self.cfg.tls.is_some() && self.pool.plain_free() < super::tls::PLAIN_PER_RECEIVE)
    }

    /// Handles held input while the TAP and the other cores have room.
    pub(super) fn process_held_input(&mut self) {
        while !self.backpressured() {
            let Some(h) = self.pending.held.pop_front() else {
                break;
            };
            self.handle_input(h.port, h.result, h.buf);
        }
    }

    /// Handles one receive result (data, end of stream or error) of a client.
    fn handle_input(&mut self, port: PortId, res: i32, buf: Option<BufId>) {
        if let Some(c) = self.clients.get_mut(port) {
            if res > 0 {
                c.conn.received(self.time.now_ms);
                if let Some(id) = buf {
                    // Lossless: res > 0.
                    if c.tls.is_some() {
                        self.on_tls_bytes(port, id, res as usize);
                    } else {
                        self.on_bytes(port, id, res as usize);
                    }
                }
            } else if res == 0
                || res == -libc::ECONNRESET
                || res == -libc::ECANCELED
                || res == -libc::EPIPE
            {
                self.begin_close(port);
            } else {
                self.counters.dropped(DropReason::ClientError);
                log::debug!(
                    "core {}: receive failed: {}",
                    self.id,
                    io::Error::from_raw_os_error(-res)
                );
                self.begin_close(port);
            }
            self.maybe_free(port);
        }
        if let Some(id) = buf {
            self.pool.release(id);
        }
    }

    /// `len` received bytes in receive buffer `id` (for a wss:// client: a plaintext buffer).
    pub(super) fn on_bytes(&mut self, port: PortId, id: BufId, len: usize) {
        self.on_bytes_at(port, id, 0, len);
    }

    /// The received bytes `start..end` of buffer `id` (the caller holds a reference on it).
    pub(super) fn on_bytes_at(&mut self, port: PortId, id: BufId, start: usize, end: usize) {
        let arena = self.pool.arena();
        // SAFETY: the buffer is referenced by the caller until this call returns, and this is
        // the only view of these bytes (frames passed on below are re-borrows of this view; a
        // parked connection keeps its own reference and reads the bytes only later).
        let bytes = unsafe { arena.bytes_mut(id, start, end - start) };
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if c.parked.is_some() {
            self.keep_parked_input(port, id, start, end);
            return;
        }
        if c.conn.is_open() {
            self.on_frames(port, bytes, id);
            return;
        }
        match c.conn.on_handshake_bytes(bytes, now) {
            HandshakeStep::Incomplete => {}
            HandshakeStep::Rejected {
                reason,
                rejection,
                response,
            } => {
                self.counters.dropped(reason);
                if let Some(held) = self.shared.log_gate.admit(loggate::kind(reason)) {
                    log::info!(
                        "core {}: refused a connection: {rejection:?}{}",
                        self.id,
                        held_note(held)
                    );
                }
                self.enqueue_owned(port, response);
            }
            HandshakeStep::Upgraded {
                response,
                path,
                origin,
                forwarded_for,
                stream_at,
            } => {
                let request = Upgraded {
                    response,
                    path,
                    origin,
                    forwarded_for,
                };
                self.upgraded(port, request, bytes, stream_at, (id, start, end));
            }
        }
    }

    /// Decodes frames in `bytes`, which lie in receive buffer `buf`.
    pub(super) fn on_frames(&mut self, port: PortId, bytes: &mut [u8], buf: BufId) {
        let mut pos = 0;
        loop {
            let Some(c) = self.clients.get_mut(port) else {
                return;
            };
            let Some(input) = c.conn.next_input(bytes, &mut pos) else {
                return;
            };
            match input {
                Input::Frame(range) => {
                    self.client_frame(
                        port,
                        ClientFrame {
                            bytes: &bytes[range],
                            buf,
                        },
                    );
                }
                Input::Piece { range, first } => self.append_piece(port, &bytes[range], first),
                Input::Assembled => {
                    if let Some((slot, len)) = self.partial.take(&mut c.assembly) {
                        self.client_frame_in_slot(port, slot, len);
                    }
                }
                Input::Runt { len } => {
                    if let Some((slot, _)) = self.partial.take(&mut c.assembly) {
                        self.pool.release(slot);
                    }
                    self.drop_logged(
                        port,
                        DropReason::RuntFrame,
                        format_args!(
                            "dropped a {len}-byte message (shorter than an Ethernet header)"
                        ),
                    );
                }
                Input::Pong(pong) => {
                    self.counters.pings_answered.inc();
                    self.enqueue_pong(port, pong);
                }
                Input::Close { reply, violation } => {
                    if let Some((reason, violation)) = violation {
                        self.drop_logged(
                            port,
                            reason,
                            format_args!("closing with {}: {violation}", violation.close_code()),
                        );
                    }
                    self.enqueue_owned(port, reply);
                    return;
                }
            }
        }
    }

    /// Appends a piece of a message that spans frames or buffers to the client's reassembly
    /// slot (a new one when `first`).
    fn append_piece(&mut self, port: PortId, piece: &[u8], first: bool) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if first {
            if let Some((old, _)) = self.partial.take(&mut c.assembly) {
                self.pool.release(old);
            }
            match self.partial.start(&mut self.pool) {
                Ok(slot) => c.assembly = Some((slot, 0)),
                Err(DropReason::PartialFramesFull) => {
                    self.drop_logged(
                        port,
                        DropReason::PartialFramesFull,
                        format_args!("dropped a message split across receives: this core's slots for partial frames are in use"),
                    );
                    return;
                }
                Err(reason) => self.counters.dropped(reason),
            }
        }
        if let Some((id, len)) = c.assembly.as_mut() {
            // SAFETY: the reassembly slot is ours alone until the message is complete; the
            // session bounds a message by max_frame.
            unsafe { self.pool.append_to_slot(*id, *len, piece) };
            *len += piece.len();
        }
    }

    /// The client of `challenger` sent from `mac`, which another client owns: that owner must
    /// show it is alive (a v86 guest reconnecting with its MAC while its old connection is
    /// half-open would otherwise be locked out until a ping interval passes). At most one
    /// challenge per challenger per [`CHALLENGE_MS`].
    fn challenge_owner_of(&mut self, challenger: PortId, net: u16, mac: Mac) {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(challenger) else {
            return;
        };
        if !c.conn.may_challenge(now) {
            return;
        }
        let Some(local) = self.net_local(net) else {
            return;
        };
        let owner = local
            .switch
            .lookup(mac)
            .or_else(|| local.net.authority.with(|own| own.owner(mac)));
        let Some(owner) = owner.filter(|o| *o != challenger) else {
            return;
        };
        self.counters.mac_challenges.inc();
        if owner.core() == self.id {
            self.challenge(owner);
        } else {
            self.mailbox
                .send_control(owner.core(), Control::Challenge(owner));
        }
    }

    /// Switches the `len`-byte frame at [`HEADROOM`] of `slot` (complete, and referenced by
    /// us alone: a finished reassembly), then drops our reference.
    fn client_frame_in_slot(&mut self, port: PortId, slot: BufId, len: usize) {
        let arena = self.pool.arena();
        // SAFETY: the slot is complete and referenced by us alone; nothing writes its frame
        // while it is switched (a server header goes into the headroom in front).
        let bytes = unsafe { arena.bytes(slot, HEADROOM, len) };
        self.client_frame(port, ClientFrame { bytes, buf: slot });
        self.pool.release(slot);
    }

    /// Switches a frame from the client of `port`, in the network it joined.
    pub(super) fn client_frame(&mut self, port: PortId, frame: ClientFrame<'_>) {
        let (Some(dst), Some(src)) = (Mac::destination(frame.bytes), Mac::source(frame.bytes))
        else {
            return;
        };
        let Some(net) = self.clients.net_of(port) else {
            return;
        };
        let len = frame.bytes.len();
        self.counters.client_rx_frames.inc();
        self.counters.client_rx_bytes.add(len as u64);
        let core = self.id;
        let Some(local) = self.net_local(net) else {
            return;
        };
        let stats = &local.net.stats[core];
        stats.rx_frames.inc();
        stats.rx_bytes.add(len as u64);
        if !self.within_limits(port, len, dst.is_group()) {
            self.net_dropped(net);
            return;
        }
        let Some(claim) = self.guard(port, frame.bytes, src) else {
            self.net_dropped(net);
            return;
        };
        let now = self.time.now_ms;
        let Some(local) = self.net_local(net) else {
            return;
        };
        let id = local.net.id;
        let decision = match ingress_claiming(
            &mut local.switch,
            &mut &local.net.authority,
            Source::Port(port),
            dst,
            src,
            claim.address.map(|(ip, _)| ip),
            now,
        ) {
            Ok(d) => d,
            Err(drop) => {
                let reason = match (drop, claim.address) {
                    (SwitchDrop::Unbound, Some((_, guard_drop))) => DropReason::from(guard_drop),
                    _ => DropReason::from(drop),
                };
                self.counters.dropped(reason);
                self.net_dropped(net);
                if reason != DropReason::Hairpin {
                    self.log_once(port, reason, format_args!("source {src}"));
                }
                if reason == DropReason::MacConflict {
                    self.challenge_owner_of(port, net, src);
                }
                return;
            }
        };
        if let Some(mac) = decision.learned {
            self.mailbox.broadcast(Control::Learn(id, mac, port));
            self.steer(net, mac);
        }
        if decision.roamed {
            self.counters.roam_bindings.inc();
            log::debug!(
                "core {}: client {}: {src} keeps {} here: it moved from another host of the farm",
                self.id,
                port.slot(),
                claim
                    .address
                    .map_or(std::net::Ipv4Addr::UNSPECIFIED, |(ip, _)| ip.into())
            );
        }
        self.after_guard(net, claim, src);
        match decision.forward {
            Forward::Uplink => self.tap_write(net, frame),
            Forward::Port(to) => {
                if let Some(ready) = self.ready_copy(frame) {
                    self.deliver(to, ready);
                    self.pool.release(ready.buf);
                }
            }
            Forward::Flood => {
                self.tap_write(net, frame);
                if let Some(ready) = self.ready_copy(frame) {
                    self.flood(net, ready, Some(port));
                    self.pool.release(ready.buf);
                }
            }
        }
    }

    /// Counts a dropped frame of network slot `net`.
    pub(super) fn net_dropped(&mut self, net: u16) {
        let core = self.id;
        if let Some(local) = self.net_local(net) {
            local.net.stats[core].drops.inc();
        }
    }

    /// Counts a frame to its client and charges it to its limits; false (and counted) when
    /// over one.
    fn within_limits(&mut self, port: PortId, len: usize, group: bool) -> bool {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return true;
        };
        c.rx_frames += 1;
        c.rx_bytes += len as u64;
        let Err(what) = c.conn.charge(len, group, now) else {
            return true;
        };
        self.drop_logged(port, DropReason::RateLimited, format_args!("{what}"));
        false
    }

    /// The frame in a buffer ready to send to clients (the caller owns one reference): the
    /// frame's own slot when it already has headroom, else a copy in a new slot.
    fn ready_copy(&mut self, frame: ClientFrame<'_>) -> Option<Ready> {
        let len = frame.bytes.len();
        if self.pool.has_headroom(frame.buf) {
            self.pool.retain(frame.buf);
            return Some(self.ready(frame.buf, len));
        }
        let Some(slot) = self.pool.copy_to_slot(frame.bytes) else {
            self.counters.dropped(DropReason::NoFrameBuffer);
            return None;
        };
        Some(self.ready(slot, len))
    }

    /// Writes a client frame to the TAP of network slot `net` from the buffer it lies in.
    fn tap_write(&mut self, net: u16, frame: ClientFrame<'_>) {
        let len = frame.bytes.len();
        if self.taps_full() {
            self.counters.dropped(DropReason::TapBacklog);
            self.net_dropped(net);
            return;
        }
        let Some(local) = self.nets.get_mut(usize::from(net)).and_then(Option::as_mut) else {
            return;
        };
        // SAFETY: the bytes lie in `frame.buf`, on which the reference taken below is held
        // until the write completes; nobody writes a frame's bytes once it is decoded.
        unsafe {
            local.tap.write(
                &mut self.ring,
                (frame.bytes.as_ptr(), len),
                frame.buf.0,
                self.vnet_writes.as_mut(),
            )
        };
        self.tap_writes += 1;
        self.pool.retain(frame.buf);
        self.counters.tap_tx_frames.inc();
        self.counters.tap_tx_bytes.add(len as u64);
    }

    /// A TAP write of network slot `net` completed.
    pub(super) fn on_tap_write(&mut self, net: u16, buf: BufId, res: i32) {
        self.tap_writes -= 1;
        if let Some(local) = self.net_local(net) {
            local.tap.on_write();
        }
        self.pool.release(buf);
        if res < 0 {
            self.counters.dropped(DropReason::TapWriteError);
            log::debug!(
                "core {}: TAP write failed: {}",
                self.id,
                io::Error::from_raw_os_error(-res)
            );
        }
        self.finish_removal(net);
    }

    /// Points the TAP queue steering of network slot `net` for `mac` at this core (once per
    /// learned address).
    fn steer(&mut self, net: u16, mac: Mac) {
        let core = self.id;
        let Some(steering) = self.net_local(net).and_then(|l| l.net.steering.as_ref()) else {
            return;
        };
        // Lossless: core ids are small.
        if let Err(e) = steering.set(mac, core as u32) {
            self.counters.steering_failed.inc();
            log::debug!("core {core}: cannot steer {mac} to this core: {e}");
        }
    }
}

/// The frame slots this core's clients hold for partial frames (reassemblies), and how many
/// they may: a quarter of the slots, so the rest always serve whole frames and clients
/// trickling frames cannot starve this core's other clients. The one place that counts them:
/// a slot is counted from [`PartialSlots::start`] until [`PartialSlots::take`] takes it back
/// out of its client.
pub(super) struct PartialSlots {
    held: usize,
    max: usize,
}

impl PartialSlots {
    pub(super) fn new(max: usize) -> Self {
        PartialSlots { held: 0, max }
    }

    /// A slot for a new reassembly, counted; or why there is none.
    pub(super) fn start(&mut self, pool: &mut BufferPool) -> Result<BufId, DropReason> {
        if self.held >= self.max {
            return Err(DropReason::PartialFramesFull);
        }
        let slot = pool.alloc_slot().ok_or(DropReason::NoFrameBuffer)?;
        self.held += 1;
        Ok(slot)
    }

    /// Takes a client's reassembly out of `assembly`, no longer counted (the caller switches
    /// or releases its slot).
    pub(super) fn take(&mut self, assembly: &mut Option<(BufId, usize)>) -> Option<(BufId, usize)> {
        let taken = assembly.take();
        if taken.is_some() {
            self.held -= 1;
        }
        taken
    }
}

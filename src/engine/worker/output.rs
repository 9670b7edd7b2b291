//! Host → clients, and every frame's way to its recipients: TAP reads, delivery to a port or
//! a flood, frames across cores, the send queues and their sends.
//!
//! A frame to clients is sent from a buffer with headroom (a TAP read buffer or a frame slot)
//! into which its server header is written once, before any send of it is queued; a flood
//! sends the same buffer to every recipient (reference counted). A frame for another core's
//! clients travels as a reference; that core copies it into its own slot and gives the
//! reference back.

use std::io;

use io_uring::{opcode, types};

use crate::counters::DropReason;
use crate::switch::guard::snoop;
use crate::switch::{ingress, Forward, Mac, PortId, Source};

use super::super::bufpool::{BufId, HEADROOM};
use super::super::loggate::{self, held_note};
use super::super::mailbox::{Control, Incoming, Target};
use super::super::ops::{self, Kind};
use super::super::outqueue::OutData;
use super::super::tapq::ReadEnd;
use super::Worker;

/// A frame ready to send: `len` bytes at [`HEADROOM`] of `buf`, its server header of
/// `header_len` bytes written just before, the whole WebSocket frame starting at `start`
/// (computed once, for every recipient). Whoever holds it holds a reference on `buf`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ready {
    pub buf: BufId,
    pub len: usize,
    header_len: usize,
    start: *const u8,
}

impl Worker {
    /// Writes the server header of the `len`-byte frame at [`HEADROOM`] of `buf` (a buffer
    /// with headroom that the caller holds and that no send has been queued from yet).
    pub(super) fn ready(&mut self, buf: BufId, len: usize) -> Ready {
        // SAFETY: every caller passes a TAP buffer or slot it holds, before queueing any send
        // of it.
        let header_len = unsafe { self.pool.write_server_header(buf, len) };
        Ready {
            buf,
            len,
            header_len,
            start: self.pool.ptr(buf, HEADROOM - header_len),
        }
    }

    /// A read of network slot `net`'s TAP queue completed.
    pub(super) fn on_tap_read(&mut self, net: u16, res: i32, flags: u32) {
        if let Some(bid) = io_uring::cqueue::buffer_select(flags) {
            let id = self.pool.tap_buf(bid);
            self.pool.received(id);
            if res > 0 {
                // Lossless: res > 0.
                let res = res as usize;
                if self.cfg.offload {
                    self.tap_offloaded(net, id, res);
                } else {
                    self.tap_frame(net, id, res);
                }
            }
            self.pool.release(id);
        }
        let draining = self.draining();
        let Some(local) = self.nets.get_mut(usize::from(net)).and_then(Option::as_mut) else {
            return;
        };
        match local.tap.on_read(res, flags) {
            ReadEnd::Armed => {}
            ReadEnd::Stopped => {
                if !draining {
                    local.tap.arm_reads(&mut self.ring, &self.pool);
                }
            }
            ReadEnd::Starved => {
                self.pending.taps_starved = true;
                self.counters.buffer_ring_empty.inc();
            }
            ReadEnd::RetryLater(e) => {
                if let Some(held) = self.shared.log_gate.admit(loggate::TAP_READ_FAILED) {
                    log::warn!(
                        "core {}: TAP read failed (network {}): {e}{}",
                        self.id,
                        local.net.name,
                        held_note(held)
                    );
                }
            }
        }
        self.finish_removal(net);
    }

    /// Switches a frame read from network slot `net`'s TAP: `len` bytes at [`HEADROOM`] of
    /// `id`.
    fn tap_frame(&mut self, net: u16, id: BufId, len: usize) {
        self.counters.tap_rx_frames.inc();
        self.counters.tap_rx_bytes.add(len as u64);
        let (dst, src, dhcp) = {
            // SAFETY: the kernel handed this buffer over and we hold its reference; nothing
            // writes it while this look lasts.
            let bytes = unsafe { self.pool.bytes(id, HEADROOM, len) };
            let dhcp = self.cfg.anti_spoofing.then(|| snoop(bytes)).flatten();
            (Mac::destination(bytes), Mac::source(bytes), dhcp)
        };
        let whole = len >= crate::ws::session::MIN_ETHERNET_FRAME;
        let (Some(dst), Some(src), true) = (dst, src, whole) else {
            self.counters.dropped(DropReason::TapRunt);
            self.net_dropped(net);
            return;
        };
        if let Some(dhcp) = dhcp {
            self.snooped(net, dhcp);
        }
        match self.uplink_forward(net, dst, src) {
            Some(Forward::Port(to)) => {
                let ready = self.ready(id, len);
                self.deliver(to, ready);
            }
            Some(Forward::Flood) => {
                let ready = self.ready(id, len);
                self.flood(net, ready, None);
            }
            Some(Forward::Uplink) | None => {}
        }
    }

    /// Where the switch of network slot `net` sends a frame from its TAP (`None`: dropped,
    /// and counted).
    fn uplink_forward(&mut self, net: u16, dst: Mac, src: Mac) -> Option<Forward> {
        let now = self.time.now_ms;
        let local = self
            .nets
            .get_mut(usize::from(net))
            .and_then(Option::as_mut)?;
        match ingress(
            &mut local.switch,
            &mut &local.net.authority,
            Source::Uplink,
            dst,
            src,
            now,
        ) {
            Ok(d) => Some(d.forward),
            Err(drop) => {
                self.counters.dropped(DropReason::from(drop));
                self.net_dropped(net);
                None
            }
        }
    }

    /// With `--offload`: `res` bytes read from network slot `net`'s TAP into `id`, a
    /// `virtio_net_hdr` (at the end of the headroom) and the frame (at [`HEADROOM`]). A frame
    /// whose checksum the kernel left partial is completed in place; a super-frame is cut.
    fn tap_offloaded(&mut self, net: u16, id: BufId, res: usize) {
        use crate::offload::{complete_checksum, VnetHdr, NEEDS_CSUM, VNET_HDR_LEN};
        let Some(len) = res.checked_sub(VNET_HDR_LEN) else {
            self.counters.dropped(DropReason::TapRunt);
            self.net_dropped(net);
            return;
        };
        // A read that filled the buffer may have been cut short.
        if res >= self.pool.tap_read_len() {
            return self.offload_dropped(net, len, "a read that filled its buffer");
        }
        let arena = self.pool.arena();
        let hdr = {
            // SAFETY: the kernel just handed this buffer over and only we hold it: nothing
            // else reads or writes it while this view lasts.
            let all = unsafe { arena.bytes_mut(id, HEADROOM - VNET_HDR_LEN, res) };
            let (head, frame) = all.split_at_mut(VNET_HDR_LEN);
            let hdr = VnetHdr::parse(&(*head).try_into().expect("a header's length"));
            // A frame that is not a super-frame must fit a slot, as without offloads.
            if !hdr.is_gso() && len > self.cfg.max_frame {
                return self.offload_dropped(net, len, "a frame over --max-frame");
            }
            if !hdr.is_gso() && hdr.flags & NEEDS_CSUM != 0 {
                let (start, offset) = (hdr.csum_start.into(), hdr.csum_offset.into());
                if let Err(e) = complete_checksum(frame, start, offset) {
                    return self.offload_dropped(net, len, e);
                }
            }
            hdr
        };
        if hdr.is_gso() {
            self.tap_super_frame(net, id, len, hdr);
        } else {
            self.tap_frame(net, id, len);
        }
    }

    /// Cuts the TCP super-frame of `len` bytes at [`HEADROOM`] of `id` into frames of the
    /// MTU, each in a slot of its own, and sends them where the switch says.
    fn tap_super_frame(&mut self, net: u16, id: BufId, len: usize, hdr: crate::offload::VnetHdr) {
        let arena = self.pool.arena();
        // SAFETY: we hold the buffer's reference and nothing writes it while this view lives
        // (the frames are written into slots).
        let frame = unsafe { arena.bytes(id, HEADROOM, len) };
        let gso = match crate::offload::Gso::parse(frame, &hdr) {
            Ok(gso) if gso.max_segment_len() <= self.cfg.max_frame => gso,
            Ok(_) => return self.offload_dropped(net, len, "segments over --max-frame"),
            Err(e) => return self.offload_dropped(net, len, e),
        };
        self.counters.tap_rx_frames.inc();
        self.counters.tap_rx_bytes.add(len as u64);
        let (Some(dst), Some(src)) = (Mac::destination(frame), Mac::source(frame)) else {
            // Gso::parse read the Ethernet header: not reached.
            return self.offload_dropped(net, len, "no Ethernet header");
        };
        let forward = match self.uplink_forward(net, dst, src) {
            Some(Forward::Uplink) | None => return,
            Some(forward) => forward,
        };
        for i in 0..gso.segments() {
            let Some(slot) = self.pool.alloc_slot() else {
                self.counters.dropped(DropReason::NoFrameBuffer);
                self.net_dropped(net);
                continue;
            };
            let seg_len = gso.segment_len(i);
            // SAFETY: a slot just taken from the free list is ours alone, and holds max_frame
            // bytes (at least seg_len) after its headroom.
            gso.write_segment(frame, i, unsafe {
                arena.bytes_mut(slot, HEADROOM, seg_len)
            });
            self.counters.tap_rx_segments.inc();
            let ready = self.ready(slot, seg_len);
            match forward {
                Forward::Port(to) => self.deliver(to, ready),
                Forward::Flood => self.flood(net, ready, None),
                // Returned above.
                Forward::Uplink => {}
            }
            self.pool.release(slot);
        }
    }

    /// Counts a frame of `len` bytes from network slot `net`'s TAP (read, and dropped) that
    /// `--offload` could not make whole.
    fn offload_dropped(&mut self, net: u16, len: usize, why: impl std::fmt::Display) {
        self.counters.tap_rx_frames.inc();
        self.counters.tap_rx_bytes.add(len as u64);
        self.counters.dropped(DropReason::OffloadMalformed);
        self.net_dropped(net);
        log::debug!("core {}: frame from the TAP dropped: {why}", self.id);
    }

    /// Sends a ready frame to port `to`, wherever it lives.
    pub(super) fn deliver(&mut self, to: PortId, ready: Ready) {
        if to.core() == self.id {
            self.enqueue(to, ready);
        } else {
            self.send_to_core(to.core(), ready, Target::Port(to));
        }
    }

    /// Sends a ready frame to every port of network slot `net` but `except`, on every core.
    pub(super) fn flood(&mut self, net: u16, ready: Ready, except: Option<PortId>) {
        let Some(id) = self.net_local(net).map(|l| l.net.id) else {
            return;
        };
        self.flood_local(net, ready, except);
        for core in 0..self.shared.cores {
            if core != self.id {
                self.send_to_core(core, ready, Target::Flood(id));
            }
        }
    }

    /// Sends a ready frame to every open port of network slot `net` on this core but
    /// `except`.
    fn flood_local(&mut self, net: u16, ready: Ready, except: Option<PortId>) {
        for i in 0..self.clients.open_count(net) {
            let port = self.clients.open_port(net, i);
            if Some(port) != except {
                self.enqueue(port, ready);
            }
        }
    }

    /// Hands a ready frame to another core (a reference travels with it).
    fn send_to_core(&mut self, core: usize, ready: Ready, target: Target) {
        let data = ready.start.wrapping_add(ready.header_len);
        if self
            .mailbox
            .send_frame(core, data, ready.len, ready.buf, target)
        {
            self.pool.retain(ready.buf);
            self.counters.cross_core_frames.inc();
        } else {
            self.counters.dropped(DropReason::CrossCoreFull);
        }
    }

    /// Handles every message other cores sent us.
    pub(super) fn drain_mailbox(&mut self) {
        while let Some(msg) = self.mailbox.next() {
            match msg {
                Incoming::Frame {
                    from,
                    data,
                    len,
                    buf,
                    target,
                } => {
                    // SAFETY: the sender keeps `buf` referenced and unmodified until our
                    // release arrives, and its pool outlives every core thread.
                    let bytes = unsafe { std::slice::from_raw_parts(data, len) };
                    let slot = self.pool.copy_to_slot(bytes);
                    self.mailbox.release(from, buf);
                    let Some(slot) = slot else {
                        self.counters.dropped(DropReason::NoFrameBuffer);
                        continue;
                    };
                    let ready = self.ready(slot, len);
                    match target {
                        Target::Port(to) => self.deliver(to, ready),
                        // Flood locally only: the sender already covered other cores. A
                        // network this core does not serve (yet, or any more) has no client
                        // here.
                        Target::Flood(id) => {
                            if self.net_local(id.slot).is_some_and(|l| l.is(id)) {
                                self.flood_local(id.slot, ready, None);
                            }
                        }
                    }
                    self.pool.release(slot);
                }
                Incoming::Released(buf) => self.pool.release(buf),
                Incoming::Control(Control::Learn(id, mac, port)) => {
                    let now = self.time.now_ms;
                    if let Some(l) = self.net_local(id.slot).filter(|l| l.is(id)) {
                        l.switch.learn(mac, port, now);
                    }
                }
                Incoming::Control(Control::Forget(id, mac, port)) => {
                    if let Some(l) = self.net_local(id.slot).filter(|l| l.is(id)) {
                        l.switch.forget(mac, port);
                    }
                }
                Incoming::Control(Control::Challenge(port)) => self.challenge(port),
                Incoming::Control(Control::Bind(id, mac, binding)) => {
                    if let Some(l) = self.net_local(id.slot).filter(|l| l.is(id)) {
                        l.switch.set_binding(mac, binding);
                    }
                }
            }
        }
    }

    /// Queues a ready frame to the client of `port` (a local port), within its queue bound.
    fn enqueue(&mut self, port: PortId, ready: Ready) {
        let now = self.time.now_ms;
        let total = ready.header_len + ready.len;
        let (slots_free, tap_lent) = (self.pool.slots_free(), self.pool.tap_available());
        let Some(c) = self.clients.get_mut(port) else {
            self.counters.dropped(DropReason::PortGone);
            return;
        };
        if !c.conn.is_open() {
            return;
        }
        if !self
            .policy
            .queue
            .admits(&c.out, total, slots_free, tap_lent)
        {
            if let Some(net) = self.clients.net_of(port) {
                self.net_dropped(net);
            }
            self.drop_logged(
                port,
                DropReason::SendQueueFull,
                format_args!("client is not reading fast enough"),
            );
            return;
        }
        c.out.push(
            OutData::Pool {
                buf: ready.buf,
                ptr: ready.start,
                // Lossless: total ≤ 65563.
                len: total as u32,
            },
            now,
        );
        c.tx_frames += 1;
        c.tx_bytes += ready.len as u64;
        self.pool.retain(ready.buf);
        self.clients.mark_dirty(port);
        self.counters.client_tx_frames.inc();
        self.counters.client_tx_bytes.add(ready.len as u64);
        let core = self.id;
        if let Some(net) = self.clients.net_of(port) {
            if let Some(local) = self.net_local(net) {
                let stats = &local.net.stats[core];
                stats.tx_frames.inc();
                stats.tx_bytes.add(ready.len as u64);
            }
        }
    }

    /// Queues the pong `bytes` for the client of `port`, replacing a pong still waiting: a
    /// client pinging faster than it reads holds at most two pongs in the queue.
    pub(super) fn enqueue_pong(&mut self, port: PortId, bytes: Vec<u8>) {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if !c.conn.wants_output() {
            return;
        }
        if c.out.push_pong(bytes.into_boxed_slice(), now) {
            self.counters.pongs_coalesced.inc();
        }
        self.clients.mark_dirty(port);
    }

    /// Pings the client of `port` now: another client wants one of its MACs.
    pub(super) fn challenge(&mut self, port: PortId) {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if let Some(ping) = c.conn.challenge(now) {
            self.enqueue_owned(port, ping);
        }
    }

    /// Queues a small frame or HTTP response for the client of `port` (not subject to the
    /// queue bound: each kind is bounded by the lifecycle, one handshake reply, one close,
    /// one ping in flight; pongs go through [`Worker::enqueue_pong`]).
    pub(super) fn enqueue_owned(&mut self, port: PortId, bytes: Vec<u8>) {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if !c.conn.wants_output() {
            return;
        }
        c.out.push(OutData::Owned(bytes.into_boxed_slice()), now);
        self.clients.mark_dirty(port);
    }

    /// Submits one `sendmsg` for every client with output and no send in flight.
    pub(super) fn flush_sends(&mut self) {
        let mut dirty = self.clients.take_dirty();
        for &port in &dirty {
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            if c.tls.is_some() {
                self.flush_tls(port);
                continue;
            }
            if !c.conn.wants_output() {
                continue;
            }
            let Some(msg) = c.socket.prepare_send(&mut c.out) else {
                continue;
            };
            let entry = opcode::SendMsg::new(types::Fd(c.socket.raw_fd()), msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(ops::for_port(Kind::Send, port));
            // SAFETY: the msghdr and iovecs live in the client's boxes and the bytes they name
            // in its queue (pool buffers it references, or owned boxes); neither changes until
            // the send completes, and the slot is not freed while it is in flight.
            unsafe { self.ring.push(&entry) };
        }
        dirty.clear();
        self.clients.restore_dirty(dirty);
    }

    /// A send completed.
    pub(super) fn on_send(&mut self, port: PortId, res: i32) {
        let now = self.time.now_ms;
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        c.socket.send_ended();
        if res < 0 {
            if res != -libc::EPIPE && res != -libc::ECONNRESET && res != -libc::ECANCELED {
                self.counters.dropped(DropReason::ClientError);
                log::debug!(
                    "core {}: send failed: {}",
                    self.id,
                    io::Error::from_raw_os_error(-res)
                );
            }
            self.begin_close(port);
            self.maybe_free(port);
            return;
        }
        if c.tls.is_some() {
            // Lossless: res ≥ 0.
            self.on_tls_sent(port, res as usize);
            return;
        }
        let pool = &mut self.pool;
        // Lossless: res ≥ 0.
        c.out.advance(res as usize, now, |id| pool.release(id));
        let more = !c.out.is_empty();
        let flushed = !more && c.conn.is_flushing();
        if more {
            self.clients.mark_dirty(port);
        } else if flushed {
            self.begin_close(port);
        }
        self.maybe_free(port);
    }
}

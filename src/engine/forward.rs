//! The frame paths of a core.
//!
//! - client → TAP: written from the receive buffer it arrived in (unmasked in place).
//! - client → clients: copied once into a frame slot whose headroom takes the server header;
//!   every local recipient sends from that slot. (Not sent from the receive buffer: one
//!   receive buffer holds many frames, and a slow recipient would pin all of it and starve
//!   the receive ring.)
//! - TAP → clients: sent from the TAP read buffer; the header goes into its headroom.
//! - to another core: a reference to the frame buffer travels; that core copies the frame
//!   into its own slot and gives the reference back.

use io_uring::{opcode, types};
use std::os::fd::AsRawFd;

use crate::counters::DropReason;
use crate::switch::{ingress, Forward, Mac, PortId, Source, SwitchDrop};
use crate::ws::frame;

use super::bufpool::{BufId, HEADROOM};
use super::client::{OutData, Phase};
use super::core::Core;
use super::crosscore::{CoreMsg, Target};
use super::ops::{self, Kind};

/// TAP writes in flight per core before further frames to the host are dropped.
const MAX_TAP_WRITES: usize = 1024;

fn switch_drop_reason(d: SwitchDrop) -> DropReason {
    match d {
        SwitchDrop::MacConflict => DropReason::MacConflict,
        SwitchDrop::MacLimit => DropReason::MacLimit,
        SwitchDrop::BadSourceMac => DropReason::BadSourceMac,
        SwitchDrop::Hairpin => DropReason::Hairpin,
    }
}

impl Core {
    /// A frame from client `port`, `len` bytes at `offset` of pool buffer `id` (unmasked).
    pub(super) fn switch_client_frame(
        &mut self,
        port: PortId,
        id: BufId,
        offset: usize,
        len: usize,
    ) {
        // SAFETY: the caller holds a reference on `id`; these bytes are not written meanwhile.
        let bytes = unsafe { self.pool.bytes_mut(id, offset, len) };
        let (Some(dst), Some(src)) = (Mac::destination(bytes), Mac::source(bytes)) else {
            return;
        };
        self.counters.client_rx_frames.inc();
        self.counters.client_rx_bytes.add(len as u64);
        if !self.within_limits(port, len, dst.is_group()) {
            return;
        }
        let decision = match ingress(
            &mut self.switch,
            &mut &self.shared.authority,
            Source::Port(port),
            dst,
            src,
            self.now_ms,
        ) {
            Ok(d) => d,
            Err(drop) => {
                let reason = switch_drop_reason(drop);
                self.counters.dropped(reason);
                if drop != SwitchDrop::Hairpin {
                    self.log_once(port.slot(), reason, format_args!("source {src}"));
                }
                return;
            }
        };
        if let Some(mac) = decision.learned {
            self.broadcast(CoreMsg::Learn(mac, port));
            self.steer(mac);
        }
        match decision.forward {
            Forward::Uplink => self.tap_write(id, offset, len),
            Forward::Port(to) => {
                if let Some(slot) = self.frame_buffer(id, offset, len) {
                    self.send_to_port(to, slot, len);
                    self.pool.release(slot);
                }
            }
            Forward::Flood => {
                self.tap_write(id, offset, len);
                if let Some(slot) = self.frame_buffer(id, offset, len) {
                    self.flood(slot, len, Some(port));
                    self.pool.release(slot);
                }
            }
        }
    }

    /// Points TAP queue steering for `mac` at this core (once per learned address).
    fn steer(&mut self, mac: Mac) {
        let Some(steering) = &self.shared.steering else {
            return;
        };
        // Lossless: core ids are small.
        if let Err(e) = steering.set(mac, self.id as u32) {
            self.counters.steering_failed.inc();
            log::debug!("core {}: cannot steer {mac} to this core: {e}", self.id);
        }
    }

    /// Charges a frame to its client's limits; false (and counted) when over one.
    fn within_limits(&mut self, port: PortId, len: usize, group: bool) -> bool {
        let now = self.now_ms;
        let Some(c) = self.client_mut(port.slot(), port.generation()) else {
            return true;
        };
        let bytes_ok = c
            .byte_limit
            .as_mut()
            .is_none_or(|b| b.allow(len as u64, now));
        let broadcast_ok = !group || c.broadcast_limit.as_mut().is_none_or(|b| b.allow(1, now));
        if bytes_ok && broadcast_ok {
            return true;
        }
        self.counters.dropped(DropReason::RateLimited);
        let what = if bytes_ok {
            "over --client-broadcast-pps"
        } else {
            "over --client-rate"
        };
        self.log_once(port.slot(), DropReason::RateLimited, format_args!("{what}"));
        false
    }

    /// A frame from a private copy (frames that arrived with the handshake).
    pub(super) fn switch_client_copy(&mut self, port: PortId, bytes: &[u8]) {
        let Some(slot) = self.copy_to_slot(bytes) else {
            return;
        };
        self.switch_client_frame(port, slot, HEADROOM, bytes.len());
        self.pool.release(slot);
    }

    /// A buffer holding the frame at HEADROOM with a server header in front: the frame's
    /// own buffer if it already has that shape, else a new slot. The caller owns one reference.
    fn frame_buffer(&mut self, id: BufId, offset: usize, len: usize) -> Option<BufId> {
        if offset == HEADROOM && self.is_frame_shaped(id) {
            self.pool.retain(id);
            return Some(id);
        }
        // SAFETY: read-only view of bytes we hold a reference on.
        let bytes = unsafe { self.pool.bytes_mut(id, offset, len) };
        let copy: &[u8] = bytes;
        // Re-borrow through a raw pointer: copy_to_slot writes a different buffer.
        let (ptr, n) = (copy.as_ptr(), copy.len());
        // SAFETY: `ptr`/`n` describe the frame above, which stays valid and unmodified.
        self.copy_to_slot(unsafe { std::slice::from_raw_parts(ptr, n) })
    }

    fn is_frame_shaped(&self, id: BufId) -> bool {
        // Receive buffers come first in the id space; TAP buffers and slots have headroom.
        id.0 >= self.cfg.recv_buffers as u32
    }

    fn copy_to_slot(&mut self, bytes: &[u8]) -> Option<BufId> {
        let Some(slot) = self.pool.alloc_slot() else {
            self.counters.dropped(DropReason::NoFrameBuffer);
            return None;
        };
        // SAFETY: a slot just taken from the free list is ours alone; it holds max_frame bytes
        // after the headroom and frames are bounded by max_frame.
        unsafe { self.pool.bytes_mut(slot, HEADROOM, bytes.len()) }.copy_from_slice(bytes);
        Some(slot)
    }

    /// Writes the server frame header into the headroom of `id` (frame of `len` at HEADROOM)
    /// and returns where the WebSocket frame starts.
    fn write_server_header(&mut self, id: BufId, len: usize) -> (*const u8, usize) {
        let header_len = frame::header_len(len, false);
        // SAFETY: the headroom of a frame buffer we hold a reference on; every recipient
        // needs exactly these header bytes, so rewriting them is harmless.
        let head = unsafe { self.pool.bytes_mut(id, HEADROOM - header_len, header_len) };
        frame::encode_header(head, true, frame::OP_BINARY, len, None);
        (head.as_ptr(), header_len + len)
    }

    /// Sends frame buffer `id` (frame of `len` at HEADROOM) to port `to`, wherever it lives.
    fn send_to_port(&mut self, to: PortId, id: BufId, len: usize) {
        if to.core() == self.id {
            let (ptr, total) = self.write_server_header(id, len);
            self.enqueue_frame(to.slot(), to.generation(), id, ptr, total, len);
        } else {
            self.send_to_core(to.core(), id, len, Target::Port(to));
        }
    }

    /// Sends frame buffer `id` to every port but `except`, on every core.
    fn flood(&mut self, id: BufId, len: usize, except: Option<PortId>) {
        self.flood_local(id, len, except);
        for core in 0..self.shared.cores {
            if core != self.id {
                self.send_to_core(core, id, len, Target::Flood);
            }
        }
    }

    /// Sends frame buffer `id` to every open port of this core but `except`.
    fn flood_local(&mut self, id: BufId, len: usize, except: Option<PortId>) {
        let (ptr, total) = self.write_server_header(id, len);
        for i in 0..self.open_ports.len() {
            let slot = self.open_ports[i];
            let Some(c) = self.clients[slot as usize].as_ref() else {
                continue;
            };
            if Some(c.port) == except {
                continue;
            }
            let generation = c.port.generation();
            self.enqueue_frame(slot, generation, id, ptr, total, len);
        }
    }

    fn send_to_core(&mut self, core: usize, id: BufId, len: usize, target: Target) {
        // SAFETY: in bounds of the buffer (HEADROOM < stride).
        let data = unsafe { self.pool.base(id).add(HEADROOM) };
        // Lossless: frames are at most 65553 bytes.
        let msg = CoreMsg::Frame {
            data,
            len: len as u32,
            buf: id,
            target,
        };
        self.pool.retain(id);
        match self.shared.queue(self.id, core).push(msg) {
            Ok(()) => {
                self.cross_in_flight += 1;
                self.counters.cross_core_frames.inc();
                self.wake_pending[core] = true;
            }
            Err(_) => {
                self.pool.release(id);
                self.counters.dropped(DropReason::CrossCoreFull);
            }
        }
    }

    /// A frame read from the TAP: `len` bytes at HEADROOM of `id`.
    pub(super) fn switch_tap_frame(&mut self, id: BufId, len: usize) {
        self.counters.tap_rx_frames.inc();
        self.counters.tap_rx_bytes.add(len as u64);
        // SAFETY: the kernel handed us this buffer; read-only view.
        let bytes = unsafe { self.pool.bytes_mut(id, HEADROOM, len) };
        let (Some(dst), Some(src)) = (Mac::destination(bytes), Mac::source(bytes)) else {
            self.counters.dropped(DropReason::TapRunt);
            return;
        };
        if len < 14 {
            self.counters.dropped(DropReason::TapRunt);
            return;
        }
        match ingress(
            &mut self.switch,
            &mut &self.shared.authority,
            Source::Uplink,
            dst,
            src,
            self.now_ms,
        ) {
            Ok(d) => match d.forward {
                Forward::Port(to) => self.send_to_port(to, id, len),
                Forward::Flood => self.flood(id, len, None),
                Forward::Uplink => {}
            },
            Err(drop) => self.counters.dropped(switch_drop_reason(drop)),
        }
    }

    fn tap_write(&mut self, id: BufId, offset: usize, len: usize) {
        if self.tap_writes_in_flight >= MAX_TAP_WRITES {
            self.counters.dropped(DropReason::TapBacklog);
            return;
        }
        self.pool.retain(id);
        self.tap_writes_in_flight += 1;
        self.counters.tap_tx_frames.inc();
        self.counters.tap_tx_bytes.add(len as u64);
        // SAFETY: in bounds of buffer `id`, which the reference keeps alive until completion.
        let ptr = unsafe { self.pool.base(id).add(offset) };
        // Lossless: frames are at most 65553 bytes.
        let entry = opcode::Write::new(types::Fd(self.tap.as_raw_fd()), ptr, len as u32)
            .build()
            .user_data(ops::user_data(Kind::TapWrite, 0, id.0));
        self.push(entry);
    }

    /// Queues `total` bytes at `ptr` (inside buffer `id`: header and a frame of `payload_len`)
    /// to the client in `slot`.
    fn enqueue_frame(
        &mut self,
        slot: u32,
        generation: u32,
        id: BufId,
        ptr: *const u8,
        total: usize,
        payload_len: usize,
    ) {
        let now = self.now_ms;
        let limit = self.cfg.send_queue;
        let Some(c) = self.client_mut(slot, generation) else {
            self.counters.dropped(DropReason::PortGone);
            return;
        };
        if !matches!(c.phase, Phase::Open) || c.close_after_flush {
            return;
        }
        if c.queue.len() >= limit {
            self.counters.dropped(DropReason::SendQueueFull);
            self.log_once(
                slot,
                DropReason::SendQueueFull,
                format_args!("client is not reading fast enough"),
            );
            return;
        }
        // Lossless: total ≤ 65563.
        c.queue.push_back(OutData::Pool {
            buf: id,
            ptr,
            len: total as u32,
        });
        c.output_queued(now);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
        self.pool.retain(id);
        self.counters.client_tx_frames.inc();
        self.counters.client_tx_bytes.add(payload_len as u64);
    }

    /// Queues a small frame or HTTP response for the client in `slot` (not subject to the
    /// queue limit: control traffic is small and bounded by the peer's own requests).
    pub(super) fn enqueue_owned(&mut self, slot: u32, bytes: Vec<u8>) {
        let now = self.now_ms;
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if matches!(c.phase, Phase::Closing) {
            return;
        }
        c.queue.push_back(OutData::Owned(bytes.into_boxed_slice()));
        c.output_queued(now);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Sends a control message to every other core (never dropped: backlogged when full).
    pub(super) fn broadcast(&mut self, msg: CoreMsg) {
        for core in 0..self.shared.cores {
            if core == self.id {
                continue;
            }
            let copy = match &msg {
                CoreMsg::Learn(m, p) => CoreMsg::Learn(*m, *p),
                CoreMsg::Forget(m, p) => CoreMsg::Forget(*m, *p),
                _ => continue,
            };
            self.backlog[core].push_back(copy);
        }
    }

    /// Moves backlogged control messages into their queues while there is room.
    pub(super) fn flush_backlog(&mut self) {
        for core in 0..self.shared.cores {
            while let Some(msg) = self.backlog[core].pop_front() {
                match self.shared.queue(self.id, core).push(msg) {
                    Ok(()) => self.wake_pending[core] = true,
                    Err(msg) => {
                        self.backlog[core].push_front(msg);
                        break;
                    }
                }
            }
        }
    }

    /// Wakes cores that were sent messages in this iteration (one eventfd write each).
    pub(super) fn wake_peers(&mut self) {
        for core in 0..self.shared.cores {
            if std::mem::take(&mut self.wake_pending[core]) {
                let one: u64 = 1;
                // SAFETY: writing 8 bytes from a local u64 to an eventfd we share ownership of.
                unsafe {
                    libc::write(
                        self.shared.wake_fds[core].as_raw_fd(),
                        (&one as *const u64).cast(),
                        8,
                    )
                };
            }
        }
    }

    /// Handles every message other cores sent us.
    pub(super) fn drain_inbox(&mut self) {
        for from in 0..self.shared.cores {
            if from == self.id {
                continue;
            }
            while let Some(msg) = self.shared.queue(from, self.id).pop() {
                match msg {
                    CoreMsg::Frame {
                        data,
                        len,
                        buf,
                        target,
                    } => {
                        // SAFETY: the sender keeps `buf` referenced and unmodified until our
                        // Release arrives, and its pool outlives every core thread.
                        let bytes = unsafe { std::slice::from_raw_parts(data, len as usize) };
                        let slot = self.copy_to_slot(bytes);
                        self.backlog[from].push_back(CoreMsg::Release(buf));
                        let Some(slot) = slot else { continue };
                        match target {
                            Target::Port(to) => self.send_to_port(to, slot, len as usize),
                            // Flood locally only: the sender already covered other cores.
                            Target::Flood => self.flood_local(slot, len as usize, None),
                        }
                        self.pool.release(slot);
                    }
                    CoreMsg::Release(buf) => {
                        self.cross_in_flight -= 1;
                        self.pool.release(buf);
                    }
                    CoreMsg::Learn(mac, port) => self.switch.learn(mac, port, self.now_ms),
                    CoreMsg::Forget(mac, port) => self.switch.forget(mac, port),
                }
            }
        }
    }
}

//! One core's event loop: a ring, a listener, a TAP queue, its clients and its switch replica.
//!
//! Each iteration: publish returned buffers, submit every pending send, TAP write and re-arm
//! in one `io_uring_enter` that also waits for at least one completion, then handle all
//! completions and the messages from other cores. Nothing here blocks except that wait.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::counters::{CoreCounters, DropReason};
use crate::switch::limit::TokenBucket;
use crate::switch::{PortId, Switch};
use crate::ws::handshake::{self, Upgrade};
use crate::ws::session::{server_close_frame, server_control_frame};
use crate::ws::{frame, Event, Violation};

use super::bufpool::{BufId, BufferPool, PoolSizes, RECV_GROUP, TAP_GROUP};
use super::client::{Client, OutData, Phase};
use super::crosscore::CoreMsg;
use super::ops::{self, Features, Kind};
use super::{EngineConfig, Shared};

/// Single-shot TAP reads kept armed when multishot read is unavailable.
const FALLBACK_TAP_READS: usize = 64;
/// Housekeeping tick.
const TICK_MS: u64 = 250;
/// How long a shutdown waits for clients to take their close frames.
const DRAIN_MS: u64 = 2_000;
/// TAP writes in flight above which client input is held until they complete.
const TAP_HIGH_WATER: usize = 512;
/// Client input is also held while the frames this core sent to other cores, and has not got
/// back, exceed 1/CROSS_HIGH_WATER_DIV of its slots. Each such frame pins a slot of the sender
/// until the receiver has copied it; without this bound an overloaded receiver let a sender's
/// clients pin every slot of the sender, and both cores then dropped nearly everything as
/// `no_frame_buffer`. Frames arriving from other cores are never held: two cores whose slots
/// are pinned in each other's queues would wait for each other forever. Slots pinned by slow
/// local recipients do not hold input (that would let a few non-reading clients stall a core's
/// TAP traffic); they are bounded by `--send-queue` and the slow-client timeout instead.
const CROSS_HIGH_WATER_DIV: usize = 8;
/// Interval after which per-client log suppression resets.
const LOG_INTERVAL_MS: u64 = 10_000;

/// A core. Field order matters: the ring is dropped before the pool whose buffers it lends.
pub struct Core {
    pub(super) ring: IoUring,
    pub(super) pool: BufferPool,
    pub(super) id: usize,
    pub(super) cfg: Arc<EngineConfig>,
    pub(super) shared: Arc<Shared>,
    pub(super) counters: Arc<CoreCounters>,
    pub(super) features: Features,
    listener: OwnedFd,
    pub(super) tap: OwnedFd,
    /// Client slab; `generations[i]` counts reuses of slot i.
    pub(super) clients: Vec<Option<Client>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    /// Slots of open clients, the flood list.
    pub(super) open_ports: Vec<u32>,
    /// Clients with something to send.
    pub(super) dirty: Vec<u32>,
    /// Clients whose receive stopped because the receive ring ran dry.
    recv_starved: Vec<u32>,
    /// Receive results held while the TAP is behind: (slot, generation, result, buffer).
    pending_input: std::collections::VecDeque<(u32, u32, i32, Option<BufId>)>,
    pub(super) switch: Switch,
    pub(super) tap_writes_in_flight: usize,
    /// Frames sent to other cores whose Release has not come back.
    pub(super) cross_in_flight: usize,
    tap_reads_armed: usize,
    tap_starved: bool,
    /// A TAP read failed with an unexpected error: re-arm on the next tick, not at once.
    tap_retry_on_tick: bool,
    accept_armed: bool,
    /// Accept failed: re-arm it from the next tick rather than at once.
    accept_retry_on_tick: bool,
    /// Control messages to other cores that did not fit their queue yet.
    pub(super) backlog: Vec<std::collections::VecDeque<CoreMsg>>,
    /// Cores that got messages this iteration and must be woken.
    pub(super) wake_pending: Vec<bool>,
    wake_buf: Box<u64>,
    timer: Box<types::Timespec>,
    started: Instant,
    pub(super) now_ms: u64,
    last_ageing_ms: u64,
    last_log_reset_ms: u64,
    drain_deadline_ms: Option<u64>,
    completions: Vec<(u64, i32, u32)>,
}

// SAFETY: a Core is made, driven and dropped by one thread at a time: its raw pointers
// (pool memory, iovecs, queued frame pointers) point into memory the Core itself owns, and
// it only moves to the joining thread after its loop has returned.
unsafe impl Send for Core {}

impl Core {
    /// Builds core `id` on the calling thread (the ring must be driven by the thread that
    /// made it).
    pub fn new(
        id: usize,
        cfg: Arc<EngineConfig>,
        shared: Arc<Shared>,
        listener: OwnedFd,
        tap: OwnedFd,
    ) -> io::Result<Self> {
        let ring = make_ring(cfg.ring_entries)?;
        let features = ops::probe(&ring, cfg.io_fallback);
        let pool = BufferPool::new(
            &ring.submitter(),
            PoolSizes {
                recv_count: cfg.recv_buffers,
                recv_size: cfg.recv_buffer_size,
                tap_count: cfg.tap_buffers,
                slot_count: cfg.frame_slots,
                max_frame: cfg.max_frame,
            },
        )?;
        let counters = shared.counters[id].clone();
        Ok(Core {
            ring,
            pool,
            id,
            counters,
            features,
            listener,
            tap,
            clients: Vec::new(),
            generations: Vec::new(),
            free_slots: Vec::new(),
            open_ports: Vec::new(),
            dirty: Vec::new(),
            recv_starved: Vec::new(),
            pending_input: std::collections::VecDeque::new(),
            switch: Switch::new(cfg.mac_ageing_ms),
            tap_writes_in_flight: 0,
            cross_in_flight: 0,
            tap_reads_armed: 0,
            tap_starved: false,
            tap_retry_on_tick: false,
            accept_armed: false,
            accept_retry_on_tick: false,
            backlog: (0..shared.cores).map(|_| Default::default()).collect(),
            wake_pending: vec![false; shared.cores],
            wake_buf: Box::new(0),
            timer: Box::new(types::Timespec::new().nsec((TICK_MS * 1_000_000) as u32)),
            started: Instant::now(),
            now_ms: 0,
            last_ageing_ms: 0,
            last_log_reset_ms: 0,
            drain_deadline_ms: None,
            completions: Vec::with_capacity(1024),
            cfg,
            shared,
        })
    }

    /// Which io_uring features this core uses.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Runs until shutdown has drained every client.
    pub fn run(&mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_tap_reads();
        self.arm_wake();
        self.push(
            opcode::Timeout::new(&*self.timer)
                .build()
                .user_data(ops::user_data(Kind::Timer, 0, 0)),
        );
        loop {
            self.now_ms = self.started.elapsed().as_millis() as u64;
            if self
                .shared
                .shutdown
                .load(std::sync::atomic::Ordering::Acquire)
                && self.drain_deadline_ms.is_none()
            {
                self.start_drain();
            }
            self.rearm_starved();
            self.flush_dirty();
            self.flush_backlog();
            self.wake_peers();
            self.pool.publish();
            if self.drained() {
                return Ok(());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.now_ms = self.started.elapsed().as_millis() as u64;
            self.completions.clear();
            for cqe in self.ring.completion() {
                self.completions
                    .push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
            // Handlers may reap more completions into the backlog (see `push`): read its length
            // each time round.
            let mut i = 0;
            while i < self.completions.len() {
                let (ud, res, flags) = self.completions[i];
                self.complete(ud, res, flags);
                i += 1;
            }
            self.drain_inbox();
            self.process_pending_input();
        }
    }

    /// Queues a submission, submitting first if the queue is full.
    pub(super) fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this module points only at memory that outlives the
            // operation: pool buffers (kept by a reference until completion), client iovec and
            // msghdr boxes (freed only when no send is in flight), and Core-owned boxes.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The completion queue is full: move its entries to the backlog the loop is
                // working through, which makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    log::error!("core {}: io_uring submit failed: {e}", self.id);
                    self.reap();
                }
            }
        }
    }

    /// Moves every available completion to the backlog handled by the loop.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            self.completions
                .push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    fn arm_accept(&mut self) {
        let fd = types::Fd(self.listener.as_raw_fd());
        let entry = if self.features.multishot_accept {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        self.push(entry.user_data(ops::user_data(Kind::Accept, 0, 0)));
        self.accept_armed = true;
    }

    fn arm_tap_reads(&mut self) {
        let fd = types::Fd(self.tap.as_raw_fd());
        let ud = ops::user_data(Kind::TapRead, 0, 0);
        // Lossless: max_frame ≤ 65553.
        let len = self.cfg.max_frame as u32;
        if self.features.multishot_tap_read {
            if self.tap_reads_armed == 0 {
                // The kernel takes the length from the provided buffer: len must be 0.
                self.push(
                    opcode::ReadMulti::new(fd, 0, TAP_GROUP)
                        .build()
                        .user_data(ud),
                );
                self.tap_reads_armed = 1;
            }
        } else {
            while self.tap_reads_armed < FALLBACK_TAP_READS.min(self.pool.tap_available()) {
                let entry = opcode::Read::new(fd, std::ptr::null_mut(), len)
                    .buf_group(TAP_GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT);
                self.push(entry.user_data(ud));
                self.tap_reads_armed += 1;
            }
        }
    }

    fn arm_wake(&mut self) {
        let fd = types::Fd(self.shared.wake_fds[self.id].as_raw_fd());
        let ptr = (&mut *self.wake_buf as *mut u64).cast::<u8>();
        self.push(
            opcode::Read::new(fd, ptr, 8)
                .build()
                .user_data(ops::user_data(Kind::Wake, 0, 0)),
        );
    }

    pub(super) fn arm_recv(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if c.recv_armed || c.input_done || matches!(c.phase, Phase::Closing) {
            return;
        }
        c.recv_armed = true;
        let fd = types::Fd(c.fd.as_raw_fd());
        let ud = ops::user_data(Kind::Recv, c.port.generation(), slot);
        let entry = if self.features.multishot_recv {
            opcode::RecvMulti::new(fd, RECV_GROUP).build()
        } else {
            // Lossless: receive buffers are a few KiB.
            let len = self.pool.recv_size() as u32;
            opcode::Recv::new(fd, std::ptr::null_mut(), len)
                .buf_group(RECV_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        self.push(entry.user_data(ud));
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let Some((kind, generation, index)) = ops::decode(ud) else {
            return;
        };
        match kind {
            Kind::Accept => self.on_accept(res, flags),
            Kind::TapRead => self.on_tap_read(res, flags),
            Kind::Wake => {
                if res != -libc::ECANCELED {
                    self.arm_wake();
                }
            }
            Kind::Timer => {
                self.housekeeping();
                self.push(opcode::Timeout::new(&*self.timer).build().user_data(ud));
            }
            Kind::Recv => self.on_recv(index, generation, res, flags),
            Kind::Send => self.on_send(index, generation, res),
            Kind::TapWrite => {
                self.tap_writes_in_flight -= 1;
                self.pool.release(BufId(index));
                if res < 0 {
                    self.counters.dropped(DropReason::TapWriteError);
                    log::debug!(
                        "core {}: TAP write failed: {}",
                        self.id,
                        io::Error::from_raw_os_error(-res)
                    );
                }
            }
            Kind::Cancel => {}
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res >= 0 {
            // SAFETY: a successful accept completion carries a new descriptor that we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            self.counters.connections_accepted.inc();
            self.new_client(fd);
        } else if res != -libc::ECANCELED {
            let err = io::Error::from_raw_os_error(-res);
            let hint = if res == -libc::EMFILE || res == -libc::ENFILE {
                " — out of file descriptors: raise the open-file limit (ulimit -n) or lower --max-clients"
            } else {
                ""
            };
            log::warn!(
                "core {}: accept failed: {err}{hint}; retrying on the next tick",
                self.id
            );
            // An error that repeats at once (EMFILE) must not spin the loop: retry from the timer.
            if !self.accept_armed {
                self.accept_retry_on_tick = true;
            }
            return;
        }
        if !self.accept_armed && self.drain_deadline_ms.is_none() {
            self.arm_accept();
        }
    }

    fn new_client(&mut self, fd: OwnedFd) {
        if self.drain_deadline_ms.is_some() {
            return;
        }
        let total = self
            .shared
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if total >= self.cfg.max_clients {
            self.shared
                .clients
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            self.counters.dropped(DropReason::TooManyClients);
            let response = handshake::too_many_clients_response();
            // One non-blocking send on a fresh socket; if it does not fit, the peer gets a reset.
            // SAFETY: valid fd and buffer for the duration of the call.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    response.as_ptr().cast(),
                    response.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            return;
        }
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid fd and an int option value that outlives the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.clients.push(None);
                self.generations.push(0);
                (self.clients.len() - 1) as u32
            }
        };
        let generation = self.generations[slot as usize];
        let port = PortId::new(self.id, generation, slot);
        let deadline = self.now_ms + self.cfg.handshake_timeout_ms;
        self.clients[slot as usize] = Some(Client::new(
            fd,
            port,
            self.cfg.max_frame,
            self.now_ms,
            deadline,
        ));
        self.counters.clients_open.inc();
        self.arm_recv(slot);
    }

    /// The client in `slot` if it is still the one of `generation`.
    pub(super) fn client_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Client> {
        client_of(&mut self.clients, slot, generation)
    }

    fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let buf = cqueue::buffer_select(flags).map(|bid| self.pool.recv_buf(bid));
        if let Some(id) = buf {
            self.pool.received(id);
        }
        let more = cqueue::more(flags);
        let Some(c) = self.client_mut(slot, generation) else {
            if let Some(id) = buf {
                self.pool.release(id);
            }
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        if res == -libc::ENOBUFS {
            self.counters.buffer_ring_empty.inc();
            self.recv_starved.push(slot);
        } else if self.pending_input.is_empty() && !self.backpressured() {
            self.handle_input(slot, generation, res, buf);
        } else {
            // The TAP or another core is behind: hold the input (in order) until they catch
            // up. Held buffers drain the receive ring, which stops receives and lets TCP push
            // back.
            self.counters.input_held.inc();
            self.pending_input.push_back((slot, generation, res, buf));
        }
        if !more {
            self.arm_recv(slot);
            self.maybe_free(slot);
        }
    }

    /// Handles one receive result (data, end of stream or error) of a client.
    fn handle_input(&mut self, slot: u32, generation: u32, res: i32, buf: Option<BufId>) {
        let now = self.now_ms;
        if let Some(c) = self.client_mut(slot, generation) {
            if res > 0 {
                c.last_rx_ms = now;
                if let Some(id) = buf {
                    // Lossless: res > 0.
                    self.on_bytes(slot, id, res as usize);
                }
            } else if res == 0
                || res == -libc::ECONNRESET
                || res == -libc::ECANCELED
                || res == -libc::EPIPE
            {
                self.begin_close(slot);
            } else {
                self.counters.dropped(DropReason::ClientError);
                log::debug!(
                    "core {}: receive failed: {}",
                    self.id,
                    io::Error::from_raw_os_error(-res)
                );
                self.begin_close(slot);
            }
            self.maybe_free(slot);
        }
        if let Some(id) = buf {
            self.pool.release(id);
        }
    }

    /// True while client input must wait: too many TAP writes or cross-core frames in flight.
    fn backpressured(&self) -> bool {
        self.tap_writes_in_flight >= TAP_HIGH_WATER
            || self.cross_in_flight >= self.cfg.frame_slots as usize / CROSS_HIGH_WATER_DIV
    }

    /// Handles held input while the TAP and the other cores have room.
    fn process_pending_input(&mut self) {
        while !self.backpressured() {
            let Some((slot, generation, res, buf)) = self.pending_input.pop_front() else {
                break;
            };
            self.handle_input(slot, generation, res, buf);
        }
    }

    fn on_bytes(&mut self, slot: u32, id: BufId, len: usize) {
        // SAFETY: the kernel handed us this receive buffer and we hold its only mutable view
        // until the release after this call.
        let bytes = unsafe { self.pool.bytes_mut(id, 0, len) };
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if matches!(c.phase, Phase::Open) {
            self.on_frames(slot, bytes, Some(id));
            return;
        }
        match &mut c.phase {
            Phase::Closing | Phase::Open => {}
            Phase::Handshake { head, .. } => {
                let room =
                    handshake::MAX_HEAD_LEN + 1 - head.len().min(handshake::MAX_HEAD_LEN + 1);
                head.extend_from_slice(&bytes[..len.min(room)]);
                let head = std::mem::take(head);
                self.on_head(slot, head);
            }
        }
    }

    fn on_head(&mut self, slot: u32, mut head: Vec<u8>) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        match handshake::parse_upgrade(&head) {
            Upgrade::Incomplete => {
                if let Phase::Handshake { head: h, .. } = &mut c.phase {
                    *h = head;
                }
            }
            Upgrade::Reject(rejection) => {
                let reason = if rejection == handshake::Rejection::HeadTooLarge {
                    DropReason::HeadTooLarge
                } else {
                    DropReason::NotWebsocket
                };
                self.counters.dropped(reason);
                log::info!("core {}: refused a connection: {:?}", self.id, rejection);
                c.input_done = true;
                c.close_after_flush = true;
                self.enqueue_owned(slot, rejection.response().into_bytes());
            }
            Upgrade::Accept {
                response,
                head_len,
                path,
            } => {
                log::debug!("core {}: client {:?} upgraded on {path}", self.id, c.port);
                c.phase = Phase::Open;
                let now = self.now_ms;
                // Byte bursts of at least one maximum frame, so a limit never blocks every frame.
                c.byte_limit = self
                    .cfg
                    .client_rate
                    .map(|r| TokenBucket::new(r, self.cfg.max_frame as u64, now));
                c.broadcast_limit = self
                    .cfg
                    .client_broadcast_pps
                    .map(|r| TokenBucket::new(r, 1, now));
                c.open_index = Some(self.open_ports.len());
                self.open_ports.push(slot);
                self.counters.connections_upgraded.inc();
                self.enqueue_owned(slot, response.into_bytes());
                if head.len() > head_len {
                    // Frames sent right behind the request: decode them from this copy.
                    let mut rest = head.split_off(head_len);
                    self.on_frames(slot, &mut rest, None);
                }
            }
        }
    }

    /// Decodes frames in `bytes`; `buf` is the pool buffer they lie in (None: a private copy).
    fn on_frames(&mut self, slot: u32, bytes: &mut [u8], buf: Option<BufId>) {
        let mut pos = 0;
        loop {
            let Some(c) = self.clients[slot as usize].as_mut() else {
                return;
            };
            if c.input_done {
                return;
            }
            let port = c.port;
            match c.session.next(bytes, &mut pos) {
                Ok(None) => return,
                Ok(Some(Event::Message(range))) => match buf {
                    Some(id) => self.switch_client_frame(port, id, range.start, range.len()),
                    None => self.switch_client_copy(port, &bytes[range]),
                },
                Ok(Some(Event::Piece { range, first })) => {
                    self.append_piece(slot, &bytes[range], first)
                }
                Ok(Some(Event::Assembled)) => {
                    if let Some((id, len)) = c.assembly.take() {
                        self.switch_client_frame(port, id, super::bufpool::HEADROOM, len);
                        self.pool.release(id);
                    }
                }
                Ok(Some(Event::Runt { len })) => {
                    if let Some((id, _)) = c.assembly.take() {
                        self.pool.release(id);
                    }
                    self.counters.dropped(DropReason::RuntFrame);
                    self.log_once(
                        slot,
                        DropReason::RuntFrame,
                        format_args!(
                            "dropped a {len}-byte message (shorter than an Ethernet header)"
                        ),
                    );
                }
                Ok(Some(Event::Ping)) => {
                    let pong = server_control_frame(frame::OP_PONG, c.session.control_payload());
                    self.counters.pings_answered.inc();
                    self.enqueue_owned(slot, pong);
                }
                Ok(Some(Event::Pong)) => c.ping_sent_ms = None,
                Ok(Some(Event::Close { code })) => {
                    c.input_done = true;
                    c.close_after_flush = true;
                    let echo = match code {
                        Some(code) => server_close_frame(code),
                        None => server_control_frame(frame::OP_CLOSE, &[]),
                    };
                    self.enqueue_owned(slot, echo);
                    return;
                }
                Err(violation) => {
                    c.input_done = true;
                    c.close_after_flush = true;
                    let reason = violation_reason(&violation);
                    self.counters.dropped(reason);
                    self.log_once(
                        slot,
                        reason,
                        format_args!("closing with {}: {violation}", violation.close_code()),
                    );
                    self.enqueue_owned(slot, server_close_frame(violation.close_code()));
                    return;
                }
            }
        }
    }

    fn append_piece(&mut self, slot: u32, piece: &[u8], first: bool) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if first {
            if let Some((old, _)) = c.assembly.take() {
                self.pool.release(old);
            }
            c.assembly = self.pool.alloc_slot().map(|id| (id, 0));
            c.assembly_lost = c.assembly.is_none();
            if c.assembly_lost {
                self.counters.dropped(DropReason::NoFrameBuffer);
            }
        }
        if let Some((id, len)) = c.assembly.as_mut() {
            // SAFETY: the slot is ours (taken from the free list); the session bounds a message
            // by max_frame, which the slot holds after its headroom.
            let dst = unsafe {
                self.pool
                    .bytes_mut(*id, super::bufpool::HEADROOM + *len, piece.len())
            };
            dst.copy_from_slice(piece);
            *len += piece.len();
        }
    }

    fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let Some(c) = client_of(&mut self.clients, slot, generation) else {
            return;
        };
        if res < 0 {
            c.send_in_flight = false;
            if res != -libc::EPIPE && res != -libc::ECONNRESET && res != -libc::ECANCELED {
                self.counters.dropped(DropReason::ClientError);
            }
            self.begin_close(slot);
            self.maybe_free(slot);
            return;
        }
        let pool = &mut self.pool;
        // Lossless: res ≥ 0.
        c.advance(res as usize, self.now_ms, |id| pool.release(id));
        if !c.queue.is_empty() {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        } else if c.close_after_flush {
            self.begin_close(slot);
        }
        self.maybe_free(slot);
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for slot in dirty.drain(..) {
            let Some(c) = self.clients[slot as usize].as_mut() else {
                continue;
            };
            c.dirty = false;
            if matches!(c.phase, Phase::Closing) {
                continue;
            }
            if let Some(msg) = c.prepare_send() {
                let ud = ops::user_data(Kind::Send, c.port.generation(), slot);
                let entry = opcode::SendMsg::new(types::Fd(c.fd.as_raw_fd()), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(ud);
                self.push(entry);
            }
        }
        self.dirty = dirty;
    }

    /// Stops a client: no more input or output, MACs released, socket shut down. The slot is
    /// freed once its operations have completed.
    pub(super) fn begin_close(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if matches!(c.phase, Phase::Closing) {
            return;
        }
        c.phase = Phase::Closing;
        c.input_done = true;
        let port = c.port;
        let fd = c.fd.as_raw_fd();
        if let Some(index) = c.open_index.take() {
            self.open_ports.swap_remove(index);
            if let Some(&moved) = self.open_ports.get(index) {
                if let Some(m) = self.clients[moved as usize].as_mut() {
                    m.open_index = Some(index);
                }
            }
        }
        let macs = self
            .shared
            .authority
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release_port(port);
        for mac in macs {
            self.switch.forget(mac, port);
            self.broadcast(CoreMsg::Forget(mac, port));
            if let Some(s) = &self.shared.steering {
                s.remove(mac);
            }
        }
        // SAFETY: shutdown on a socket we own; wakes any receive or send still in flight.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        let cancel =
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
        self.push(cancel.user_data(ops::user_data(Kind::Cancel, 0, 0)));
    }

    /// Frees a closing client whose operations have all completed.
    pub(super) fn maybe_free(&mut self, slot: u32) {
        let done = matches!(&self.clients[slot as usize], Some(c) if matches!(c.phase, Phase::Closing) && !c.recv_armed && !c.send_in_flight);
        if !done {
            return;
        }
        let Some(mut c) = self.clients[slot as usize].take() else {
            return;
        };
        for out in c.queue.drain(..) {
            if let OutData::Pool { buf, .. } = out {
                self.pool.release(buf);
            }
        }
        if let Some((id, _)) = c.assembly.take() {
            self.pool.release(id);
        }
        drop(c);
        self.generations[slot as usize] = (self.generations[slot as usize] + 1) & 0xFF_FFFF;
        self.free_slots.push(slot);
        self.shared
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.counters.connections_closed.inc();
        self.counters.client_gone();
    }

    fn rearm_starved(&mut self) {
        if !self.recv_starved.is_empty() && self.pool.recv_available() > 0 {
            for slot in std::mem::take(&mut self.recv_starved) {
                self.arm_recv(slot);
            }
        }
        if self.tap_starved && self.pool.tap_available() > 0 && self.drain_deadline_ms.is_none() {
            self.tap_starved = false;
            self.arm_tap_reads();
        }
    }

    fn on_tap_read(&mut self, res: i32, flags: u32) {
        let more = self.features.multishot_tap_read && cqueue::more(flags);
        if !more {
            self.tap_reads_armed -= 1;
        }
        if let Some(bid) = cqueue::buffer_select(flags) {
            let id = self.pool.tap_buf(bid);
            self.pool.received(id);
            if res > 0 {
                // Lossless: res > 0.
                self.switch_tap_frame(id, res as usize);
            }
            self.pool.release(id);
        }
        if res == -libc::ENOBUFS {
            self.counters.buffer_ring_empty.inc();
            self.tap_starved = true;
            return;
        }
        if res == -libc::EINVAL && self.features.multishot_tap_read {
            log::warn!(
                "core {}: multishot TAP read refused (EINVAL); using single-shot reads",
                self.id
            );
            self.features.multishot_tap_read = false;
        } else if res < 0 && res != -libc::EAGAIN && res != -libc::ECANCELED {
            // Re-armed from the next tick, so a persistent error cannot spin the loop.
            log::warn!(
                "core {}: TAP read failed: {}",
                self.id,
                io::Error::from_raw_os_error(-res)
            );
            self.tap_retry_on_tick = true;
            return;
        }
        if !more && self.drain_deadline_ms.is_none() {
            self.arm_tap_reads();
        }
    }

    fn housekeeping(&mut self) {
        let now = self.now_ms;
        if std::mem::take(&mut self.tap_retry_on_tick) && self.drain_deadline_ms.is_none() {
            self.arm_tap_reads();
        }
        if std::mem::take(&mut self.accept_retry_on_tick)
            && !self.accept_armed
            && self.drain_deadline_ms.is_none()
        {
            self.arm_accept();
        }
        if now - self.last_log_reset_ms >= LOG_INTERVAL_MS {
            self.last_log_reset_ms = now;
            for c in self.clients.iter_mut().flatten() {
                c.logged = 0;
            }
        }
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        for (slot, c) in self.clients.iter().enumerate() {
            let Some(c) = c else { continue };
            let slot = slot as u32;
            match &c.phase {
                Phase::Handshake { deadline_ms, .. } if now >= *deadline_ms => {
                    to_close.push((slot, DropReason::HandshakeTimeout))
                }
                Phase::Open => {
                    if c.stalled_since_ms
                        .is_some_and(|since| now - since >= self.cfg.slow_client_timeout_ms)
                    {
                        to_close.push((slot, DropReason::SlowClient));
                    } else if let Some(interval) = self.cfg.ping_interval_ms {
                        match c.ping_sent_ms {
                            Some(sent) if now - sent >= interval => {
                                to_close.push((slot, DropReason::PongTimeout))
                            }
                            None if now - c.last_rx_ms >= interval => to_ping.push(slot),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        for slot in to_ping {
            if let Some(c) = self.clients[slot as usize].as_mut() {
                c.ping_sent_ms = Some(now);
            }
            self.enqueue_owned(slot, server_control_frame(frame::OP_PING, b"tapwire"));
        }
        for (slot, reason) in to_close {
            self.counters.dropped(reason);
            self.log_once(slot, reason, format_args!("closing the connection"));
            if reason == DropReason::PongTimeout {
                // The peer may still read: close gracefully. If it does not, the stall rule
                // shuts it down later.
                if let Some(c) = self.clients[slot as usize].as_mut() {
                    c.input_done = true;
                    c.close_after_flush = true;
                }
                self.enqueue_owned(slot, server_close_frame(1001));
            } else {
                // Handshake timeout, or a stalled client: its stream is stuck mid-frame, so no
                // close frame (1008) could reach it; shut the connection down.
                self.begin_close(slot);
                self.maybe_free(slot);
            }
        }
        if now - self.last_ageing_ms >= 1_000 {
            self.last_ageing_ms = now;
            let me = self.id;
            let aged = self
                .switch
                .expire(now, |p| p.core() == me, &mut &self.shared.authority);
            for (mac, port) in aged {
                self.broadcast(CoreMsg::Forget(mac, port));
                if let Some(s) = &self.shared.steering {
                    s.remove(mac);
                }
            }
        }
        if let Some(deadline) = self.drain_deadline_ms {
            if now >= deadline {
                let slots = self.occupied_slots();
                for slot in slots {
                    self.begin_close(slot);
                    self.maybe_free(slot);
                }
            }
        }
    }

    fn start_drain(&mut self) {
        self.drain_deadline_ms = Some(self.now_ms + DRAIN_MS);
        if self.accept_armed {
            self.push(
                opcode::AsyncCancel::new(ops::user_data(Kind::Accept, 0, 0))
                    .build()
                    .user_data(ops::user_data(Kind::Cancel, 0, 0)),
            );
        }
        let slots = self.occupied_slots();
        for slot in slots {
            let Some(c) = self.clients[slot as usize].as_mut() else {
                continue;
            };
            match c.phase {
                Phase::Open => {
                    c.input_done = true;
                    c.close_after_flush = true;
                    self.enqueue_owned(slot, server_close_frame(1001));
                }
                _ => {
                    self.begin_close(slot);
                    self.maybe_free(slot);
                }
            }
        }
    }

    /// Slots that hold a client (snapshot, so the caller may close them while iterating).
    fn occupied_slots(&self) -> Vec<u32> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u32)
            .collect()
    }

    fn drained(&self) -> bool {
        self.drain_deadline_ms.is_some()
            && self.pending_input.is_empty()
            && self.clients.iter().all(|c| c.is_none())
            && self.tap_writes_in_flight == 0
    }

    /// Logs `what` for the client in `slot` at most once per reason per log interval.
    /// `what` is formatted only when it is logged: drop paths run per frame and must not
    /// allocate.
    pub(super) fn log_once(
        &mut self,
        slot: u32,
        reason: DropReason,
        what: std::fmt::Arguments<'_>,
    ) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        let bit = 1u64 << (reason as usize);
        if c.logged & bit == 0 {
            c.logged |= bit;
            log::info!(
                "core {}: client {}: {}: {what}",
                self.id,
                c.port.slot(),
                reason.label()
            );
        }
    }
}

/// The client in `slot` of `clients` if it is still the one of `generation` (borrows only
/// the slab, so the pool can be used alongside).
fn client_of(clients: &mut [Option<Client>], slot: u32, generation: u32) -> Option<&mut Client> {
    clients
        .get_mut(slot as usize)?
        .as_mut()
        .filter(|c| c.port.generation() == generation & 0xFF_FFFF)
}

fn violation_reason(v: &Violation) -> DropReason {
    use crate::ws::frame::HeaderError;
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

fn make_ring(entries: u32) -> io::Result<IoUring> {
    // Single issuer + deferred task work (Linux 6.1) cut wakeups; fall back without them.
    let tuned = IoUring::builder()
        .setup_cqsize(entries * 4)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(_) => IoUring::builder().setup_cqsize(entries * 4).build(entries),
    }
}

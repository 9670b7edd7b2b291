//! One core's event loop: a ring, a listener, a TAP queue, its clients and its switch replica.
//!
//! Each iteration publishes returned buffers, submits every pending send, TAP write and
//! re-arm with one `io_uring_enter` that also waits for at least one completion, then handles
//! all completions and the messages from other cores. Nothing here blocks except that wait.
//!
//! The per-frame paths, top to bottom:
//!
//! - **client → host** ([`input`]): a receive completes ([`Worker::on_recv`]) → the bytes are
//!   decoded in place by the client's [`Conn`] ([`Worker::on_frames`]) → each frame is
//!   switched ([`Worker::client_frame`]) → written to the TAP from the receive buffer
//!   ([`Worker::tap_write`]).
//! - **host → clients** ([`output`]): a TAP read completes ([`Worker::on_tap_read`]) → the
//!   frame is switched ([`Worker::tap_frame`]) → delivered to a port or flooded
//!   ([`Worker::deliver`], [`Worker::flood`]) → queued on each client ([`Worker::enqueue`]) →
//!   sent with one `sendmsg` per client per iteration ([`Worker::flush_sends`]).
//! - client → client and across cores go through the same delivery, from a frame slot.
//!
//! Connections come and go in [`lifecycle`], are upgraded (and joined to their network) in
//! [`upgrade`]; timers and shutdown in [`housekeeping`].
//!
//! [`Conn`]: super::conn::Conn

mod bindings;
mod housekeeping;
mod input;
mod lifecycle;
mod networks;
mod output;
mod tls;
mod upgrade;

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use io_uring::{opcode, types};

use crate::counters::{CoreCounters, DropReason};
use crate::switch::{PortId, Switch};

pub use networks::unavailable_response;

use super::acceptor::Acceptor;
use super::bufpool::{BufId, BufferPool, PoolSizes};
use super::clients::ClientTable;
use super::conn::ConnLimits;
use super::loggate::{self, held_note};
use super::mailbox::Mailbox;
use super::ops::{self, Features, Kind};
use super::outqueue::QueueBound;
use super::ring::{Completion, Ring};
use super::tapq::{TapQueue, VnetWrites, HIGH_WATER, MAX_WRITES};
use super::{EngineConfig, Shared};
use input::PartialSlots;
use networks::{NetLocal, Waiting};

/// Housekeeping tick.
const TICK_MS: u64 = 250;

/// How long a refusal (after the upgrade request, or of a failed TLS connection) may take to
/// flush before the socket closes.
const REFUSAL_FLUSH_MS: u64 = 5_000;

/// The first tick after `now_ms`: ticks fall on multiples of [`TICK_MS`], so a timeout that
/// is a multiple of it is seen exactly when it ends on a clock that jumps there.
fn next_tick(now_ms: u64) -> u64 {
    (now_ms / TICK_MS + 1) * TICK_MS
}

/// Milliseconds of `d`, the engine's clock unit (saturating: durations are user input).
fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What every client of this core is allowed.
struct Policy {
    /// Limits and timers of each connection.
    conn: ConnLimits,
    /// How much a client's send queue may hold.
    queue: QueueBound,
}

/// Input that waits, in the order it came.
#[derive(Default)]
struct Pending {
    /// Receive results held while the TAP or another core is behind, in arrival order.
    held: VecDeque<Held>,
    /// Clients whose receive stopped because the receive ring ran dry.
    starved: Vec<PortId>,
    /// Clients to check once after their multishot receive was armed (see
    /// [`housekeeping`]'s `probe_armed_receives`).
    probes: housekeeping::RecvProbes,
    /// Some network's TAP reads stopped because the TAP buffer ring ran dry.
    taps_starved: bool,
}

/// The worker's time and the jobs that run on it.
struct Time {
    clock: super::clock::Clock,
    /// Milliseconds on the clock, read once per pass.
    now_ms: u64,
    /// When the tick's jobs run next.
    next_tick_ms: u64,
    /// The tick's timeout, which wakes the loop on a real clock (boxed: the kernel reads it
    /// while the timeout is armed).
    timer: Box<types::Timespec>,
    last_ageing_ms: u64,
    last_log_reset_ms: u64,
    /// Set when shutdown began: clients past it are shut down.
    drain_deadline_ms: Option<u64>,
}

/// wss:// output gathered into a record before encryption, the plaintext buffers filled
/// by one receive (both kept for their capacity), and send buffers no client holds: a wss://
/// client holds one only while it has output (see `tls_session`).
#[derive(Default)]
struct TlsScratch {
    stage: Vec<u8>,
    plain: Vec<(BufId, usize)>,
    spare_tx: Vec<Box<[u8]>>,
}

/// A receive result held back while the TAP or another core is behind.
struct Held {
    port: PortId,
    result: i32,
    buf: Option<BufId>,
}

/// A core. Field order matters: the ring is dropped before the pool whose buffers it lends.
pub struct Worker {
    ring: Ring,
    pool: BufferPool,
    id: usize,
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    counters: Arc<CoreCounters>,
    features: Features,
    /// The ws:// listener's acceptor, then the wss:// one's if any.
    acceptors: Vec<Acceptor>,
    /// The networks this core serves, by slot (0: the default network): each with its switch
    /// replica and this core's queue of its TAP.
    nets: Vec<Option<NetLocal>>,
    /// TAP writes in flight over every network's queue.
    tap_writes: usize,
    /// With `--offload`, the iovecs of those writes (a header goes in front of each frame).
    vnet_writes: Option<VnetWrites>,
    /// Connections waiting for their network to be made.
    waiting: Waiting,
    clients: ClientTable,
    mailbox: Mailbox,
    /// What every new connection is allowed, and how much its send queue may hold.
    policy: Policy,
    /// Frame slots holding partial frames (reassemblies).
    partial: PartialSlots,
    /// Input waiting: held receives, receives starved of buffers, receives to probe.
    pending: Pending,
    /// The clock and what runs on it.
    time: Time,
    /// Scratch space of the wss:// paths.
    tls_scratch: TlsScratch,
}

// SAFETY: a Worker is made, driven and dropped by one thread at a time: its raw pointers
// (pool memory, iovecs, queued frame pointers) and the `Rc` of its arena point into memory
// the Worker itself owns (every `Rc` clone is the Worker's own or a local of one of its
// methods), and it only moves to the joining thread after its loop has returned.
unsafe impl Send for Worker {}

impl Worker {
    /// Builds core `id` on the calling thread (the ring must be driven by the thread that
    /// made it).
    pub fn new(
        id: usize,
        cfg: Arc<EngineConfig>,
        shared: Arc<Shared>,
        listener: OwnedFd,
        tls_listener: Option<OwnedFd>,
        tap: OwnedFd,
    ) -> io::Result<Self> {
        let ring = Ring::new(cfg.ring_entries, id)?;
        let features = ops::probe(ring.uring(), cfg.io_fallback);
        let pool = BufferPool::new(
            &ring.uring().submitter(),
            PoolSizes {
                recv_count: cfg.recv_buffers,
                recv_size: cfg.recv_buffer_size,
                plain_count: cfg.plain_buffers,
                tap_count: cfg.tap_buffers,
                tap_frame: cfg.tap_frame,
                tap_prefix: if cfg.offload {
                    crate::offload::VNET_HDR_LEN
                } else {
                    0
                },
                slot_count: cfg.frame_slots,
                max_frame: cfg.max_frame,
            },
        )?;
        let tap_read_len = pool.tap_read_len();
        let policy = &cfg.clients;
        let limits = ConnLimits {
            max_frame: cfg.max_frame,
            client_rate: policy.client_rate(),
            client_broadcast_pps: policy.client_broadcast_pps(),
            ping_interval_ms: policy.ping_interval().map(ms),
            slow_client_timeout_ms: ms(policy.slow_client_timeout),
            frame_timeout_ms: ms(policy.frame_timeout).max(1),
        };
        Ok(Worker {
            ring,
            pool,
            id,
            counters: shared.counters[id].clone(),
            features,
            acceptors: std::iter::once(listener)
                .chain(tls_listener)
                .zip(0..)
                .map(|(fd, index)| Acceptor::new(fd, index, features.multishot_accept))
                .collect(),
            tls_scratch: TlsScratch::default(),
            nets: vec![Some(NetLocal {
                net: shared.default_net.clone(),
                switch: Switch::with_uplink(
                    ms(cfg.clients.mac_ageing),
                    shared.default_net.uplink_macs.clone(),
                )
                .isolated(shared.default_net.isolate)
                .roaming(shared.default_net.roam),
                tap: TapQueue::new(tap, 0, features.multishot_tap_read, tap_read_len),
            })],
            tap_writes: 0,
            vnet_writes: cfg.offload.then(VnetWrites::new),
            waiting: Waiting::default(),
            clients: ClientTable::new(id),
            mailbox: Mailbox::new(id, shared.clone()),
            policy: Policy {
                conn: limits,
                queue: QueueBound::new(
                    policy.send_queue,
                    policy.send_queue_bytes,
                    usize::from(cfg.tap_buffers),
                    cfg.frame_slots as usize,
                ),
            },
            partial: PartialSlots::new((cfg.frame_slots / 4) as usize),
            pending: Pending::default(),
            time: Time {
                clock: shared.clock.clone(),
                now_ms: 0,
                next_tick_ms: TICK_MS,
                timer: Box::new(types::Timespec::new().nsec((TICK_MS * 1_000_000) as u32)),
                last_ageing_ms: 0,
                last_log_reset_ms: 0,
                drain_deadline_ms: None,
            },
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
        self.start();
        while !self.step(None)? {}
        Ok(())
    }

    /// Arms what runs for the worker's whole life: accepts, TAP reads, the wake-up from
    /// other cores and, on a real clock, the tick's timer.
    pub(super) fn start(&mut self) {
        for a in &mut self.acceptors {
            a.arm(&mut self.ring);
        }
        for local in self.nets.iter_mut().flatten() {
            local.tap.arm_reads(&mut self.ring, &self.pool);
        }
        self.mailbox.arm_wake(&mut self.ring);
        if !self.time.clock.is_manual() {
            self.arm_timer();
        }
        self.tick_clock();
        self.time.next_tick_ms = next_tick(self.time.now_ms);
    }

    /// One pass of the loop: submits what is pending, waits for a completion (at most `wait`;
    /// `None`: until one), handles every completion and message, and runs the tick's jobs
    /// when the clock has passed the tick. True once shutdown has drained every client.
    pub(super) fn step(&mut self, wait: Option<std::time::Duration>) -> io::Result<bool> {
        self.tick_clock();
        if self.shutdown_requested() && self.time.drain_deadline_ms.is_none() {
            self.start_drain();
        }
        self.rearm_starved();
        self.flush_sends();
        self.mailbox.flush();
        self.pool.publish();
        if self.drained() {
            return Ok(true);
        }
        match wait {
            None => self.ring.submit_and_wait()?,
            Some(limit) => self.ring.submit_and_wait_at_most(limit)?,
        }
        self.tick_clock();
        // Handlers may reap more completions while pushing work (see `Ring::push`): they
        // are handled in this same pass.
        while let Some(c) = self.ring.next_completion() {
            self.complete(c);
        }
        self.drain_mailbox();
        self.run_commands();
        self.process_held_input();
        if self.time.now_ms >= self.time.next_tick_ms {
            self.time.next_tick_ms = next_tick(self.time.now_ms);
            self.housekeeping();
        }
        Ok(false)
    }

    fn tick_clock(&mut self) {
        self.time.now_ms = self.time.clock.now_ms();
    }

    fn shutdown_requested(&self) -> bool {
        self.shared
            .shutdown
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn draining(&self) -> bool {
        self.time.drain_deadline_ms.is_some()
    }

    fn arm_timer(&mut self) {
        let entry = opcode::Timeout::new(&*self.time.timer)
            .build()
            .user_data(ops::for_index(Kind::Timer, 0));
        // SAFETY: the timespec is a box this worker owns for as long as the ring lives.
        unsafe { self.ring.push(&entry) };
    }

    /// Routes one completion to its handler.
    fn complete(&mut self, c: Completion) {
        let Some((kind, port)) = ops::decode(c.user_data, self.id) else {
            return;
        };
        match kind {
            Kind::Accept => self.on_accept(port.slot() as usize, c.result, c.flags),
            // The generation field carries the network slot (see `ops::for_tap`); lossless:
            // slots are u16.
            Kind::TapRead => self.on_tap_read(port.generation() as u16, c.result, c.flags),
            Kind::Wake => {
                if c.result != -libc::ECANCELED {
                    self.mailbox.arm_wake(&mut self.ring);
                }
            }
            // Only wakes the loop: the tick's jobs run when the clock has passed the tick.
            Kind::Timer => self.arm_timer(),
            Kind::Recv => self.on_recv(port, c.result, c.flags),
            Kind::Send => self.on_send(port, c.result),
            Kind::TapWrite => {
                self.on_tap_write(port.generation() as u16, BufId(port.slot()), c.result)
            }
            Kind::Cancel => {}
        }
    }

    /// Re-arms receives and TAP reads that stopped because their ring ran dry.
    fn rearm_starved(&mut self) {
        if !self.pending.starved.is_empty() && self.pool.recv_available() > 0 {
            for port in std::mem::take(&mut self.pending.starved) {
                self.arm_recv(port);
            }
        }
        if self.pending.taps_starved && !self.draining() && self.pool.tap_available() > 0 {
            self.pending.taps_starved = false;
            for local in self.nets.iter_mut().flatten() {
                local.tap.rearm_if_refilled(&mut self.ring, &self.pool);
            }
        }
    }

    /// TAP writes in flight are many enough that client input should wait.
    fn taps_behind(&self) -> bool {
        self.tap_writes >= HIGH_WATER
    }

    /// No more TAP writes may be put in flight on this core.
    fn taps_full(&self) -> bool {
        self.tap_writes >= MAX_WRITES
    }

    /// Counts a drop for `reason` and logs `what` for the client of `port` (see
    /// [`Worker::log_once`]).
    fn drop_logged(&mut self, port: PortId, reason: DropReason, what: std::fmt::Arguments<'_>) {
        self.counters.dropped(reason);
        self.log_once(port, reason, what);
    }

    /// Logs `what` for the client of `port` at most once per reason per log interval.
    /// `what` is formatted only when it is logged: drop paths run per frame and must not
    /// allocate.
    fn log_once(&mut self, port: PortId, reason: DropReason, what: std::fmt::Arguments<'_>) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if !c.conn.first_log(reason) {
            return;
        }
        if let Some(held) = self.shared.log_gate.admit(loggate::kind(reason)) {
            log::info!(
                "core {}: client {}{}: {}: {what}{}",
                self.id,
                port.slot(),
                FromAddr(c.address()),
                reason.label(),
                held_note(held)
            );
        }
    }
}

/// ` from ADDR` in a log line about a client, when its address is known.
pub(super) struct FromAddr(pub Option<std::net::IpAddr>);

impl std::fmt::Display for FromAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, " from {ip}"),
            None => Ok(()),
        }
    }
}

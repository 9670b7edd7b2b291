//! The data plane: one thread per core, each with its own io_uring, listener, TAP queue,
//! clients and switch replica (docs/design.md). All `unsafe` of the data path lives in this
//! module, each block with its `// SAFETY:` reason, and guards only what the kernel or
//! another core shares: submissions, buffer views, cross-core frame pointers.
//!
//! The rooms: [`worker`] runs one core's loop and reads top to bottom along the frame paths;
//! it drives a [`ring`], a [`clients`] table whose clients each hold a pure [`conn`] protocol
//! state and an [`outqueue`], a [`mailbox`] to the other cores, a [`tapq`] TAP queue, an
//! [`acceptor`], and a [`bufpool`] over an [`arena`].

mod acceptor;
mod arena;
mod bufpool;
mod client;
mod clients;
pub mod clock;
// Public in fuzz builds only, for `fuzz/fuzz_targets/conn.rs`.
#[cfg(fuzzing)]
pub mod conn;
#[cfg(not(fuzzing))]
mod conn;
pub mod loggate;
mod mailbox;
pub mod network;
pub mod ops;
mod outqueue;
#[cfg(test)]
mod rig;
mod ring;
mod shared;
mod tapq;
pub mod tls_session;
mod worker;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::ClientPolicy;

pub use ops::Features;
pub use shared::Shared;
pub use worker::unavailable_response;

/// Messages one core may have outstanding to another before frames are dropped.
const CROSS_CORE_QUEUE: usize = 8192;

/// What the engine is given: the client policy as the user set it, and the sizes of each
/// core's rings and buffers.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest Ethernet frame from a client.
    pub max_frame: usize,
    /// Limits and timers of every client (`tapwire run`'s options, as they are).
    pub clients: ClientPolicy,
    /// Single-shot operations even where multishot exists.
    pub io_fallback: bool,
    /// Submission queue entries per ring (completion queue: 4×).
    pub ring_entries: u32,
    /// Receive buffers per core (power of two) and their size.
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
    /// Plaintext buffers per core (decrypted TLS input; none without a TLS listener).
    pub plain_buffers: u16,
    /// TAP read buffers per core (power of two; at least the TAP's txqueuelen of 1000).
    pub tap_buffers: u16,
    /// Largest frame a TAP read returns: `max_frame`, or with `offload` a super-frame.
    pub tap_frame: usize,
    /// `--offload`: the TAPs carry a `virtio_net_hdr` in front of every frame, and hand over
    /// TCP super-frames that the cores cut (see [`crate::offload`]).
    pub offload: bool,
    /// Frame slots per core.
    pub frame_slots: u32,
    /// Whether a name nobody declared makes a network (`--networks`).
    pub networks: network::Mode,
    /// Check every client frame against the IPv4 bindings (off with `--allow-spoofing`).
    pub anti_spoofing: bool,
    /// Who may connect (`--token-secret`, `--allow-origin`); open by default.
    pub access: Arc<crate::ws::access::Access>,
    /// The certificate of the wss:// listener, if there is one.
    pub tls: Option<Arc<crate::tls::Certs>>,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`).
    pub trusted_proxies: Vec<crate::ws::forwarded::Cidr>,
}

impl EngineConfig {
    /// Engine settings for a validated configuration.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        // Jumbo frames make every TAP buffer and slot 64 KiB, and --offload every TAP buffer
        // (it takes a super-frame): keep their number modest.
        let jumbo = cfg.max_frame > 9_018;
        // Frames over 4 KiB (--mtu 9000): receive buffers of 64 KiB, a quarter as many (the
        // same memory), so that few frames straddle two buffers and need reassembling. The
        // wss:// plaintext buffers are as large as receive buffers: one for every eight.
        let big = cfg.max_frame > 4_096;
        let recv_buffers = if big { 512 } else { 2048 };
        EngineConfig {
            max_frame: cfg.max_frame,
            clients: cfg.clients.clone(),
            io_fallback: cfg.io_fallback,
            ring_entries: 4096,
            recv_buffers,
            recv_buffer_size: if big { 64 * 1024 } else { 16 * 1024 },
            plain_buffers: if cfg.tls.is_some() {
                recv_buffers / 8
            } else {
                0
            },
            tap_buffers: if jumbo || cfg.offload { 1024 } else { 4096 },
            tap_frame: if cfg.offload {
                crate::offload::largest_super_frame(cfg.max_frame)
            } else {
                cfg.max_frame
            },
            offload: cfg.offload,
            frame_slots: if jumbo { 2048 } else { 8192 },
            networks: match cfg.networks.mode {
                crate::config::NetworksMode::OnDemand => network::Mode::OnDemand,
                crate::config::NetworksMode::Declared => network::Mode::Declared,
            },
            anti_spoofing: !cfg.allow_spoofing,
            access: Arc::new(cfg.access.clone()),
            tls: cfg.tls.as_ref().map(|t| t.certs.clone()),
            trusted_proxies: cfg.farm.trusted_proxies.clone(),
        }
    }
}

/// A running engine: its threads, joined by [`Engine::join`].
pub struct Engine {
    threads: Vec<JoinHandle<io::Result<Option<Box<worker::Worker>>>>>,
    ready: std::sync::mpsc::Receiver<io::Result<Features>>,
    cores: usize,
}

impl Engine {
    /// Starts one pinned thread per (listener, TAP queue) pair; `tls_listeners` is empty or
    /// has one wss:// listener per core.
    pub fn start(
        cfg: EngineConfig,
        shared: Arc<Shared>,
        listeners: Vec<OwnedFd>,
        tls_listeners: Vec<OwnedFd>,
        taps: Vec<OwnedFd>,
    ) -> io::Result<Self> {
        let cfg = Arc::new(cfg);
        let cores = listeners.len();
        let mut tls_listeners = tls_listeners.into_iter();
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (id, (listener, tap)) in listeners.into_iter().zip(taps).enumerate() {
            let cfg = cfg.clone();
            let shared = shared.clone();
            let cpu = (cpus.len() >= cores).then(|| cpus[id]);
            let ready_tx = ready_tx.clone();
            let tls_listener = tls_listeners.next();
            let thread = std::thread::Builder::new()
                .name(format!("tapwire-core{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        core_affinity::set_for_current(cpu);
                    }
                    let mut core = match worker::Worker::new(
                        id,
                        cfg,
                        shared.clone(),
                        listener,
                        tls_listener,
                        tap,
                    ) {
                        Ok(core) => core,
                        Err(e) => {
                            let _ = ready_tx.send(Err(io::Error::new(
                                e.kind(),
                                format!("core {id}: cannot set up io_uring: {e}"),
                            )));
                            return Err(e);
                        }
                    };
                    let _ = ready_tx.send(Ok(core.features()));
                    let result = core.run();
                    if let Err(e) = &result {
                        log::error!("core {id} stopped: {e}; stopping tapwire");
                        shared.request_shutdown();
                    }
                    // Hand the core back so its pool outlives every other core's references.
                    result.map(|()| Some(Box::new(core)))
                })?;
            threads.push(thread);
        }
        Ok(Engine {
            threads,
            ready,
            cores,
        })
    }

    /// Waits until every core has set up its ring; returns the features in use.
    pub fn wait_ready(&self) -> io::Result<Features> {
        let mut features = None;
        for _ in 0..self.cores {
            let f = self
                .ready
                .recv()
                .map_err(|_| io::Error::other("a core thread died during start-up"))??;
            features = Some(f);
        }
        features.ok_or_else(|| io::Error::other("no cores"))
    }

    /// Waits for every core to stop; the first error, if any.
    pub fn join(self) -> io::Result<()> {
        let mut first_err = None;
        let mut finished = Vec::new();
        for t in self.threads {
            match t.join() {
                Ok(Ok(core)) => finished.push(core),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(io::Error::other("a core thread panicked"));
                }
            }
        }
        drop(finished);
        first_err.map_or(Ok(()), Err)
    }
}

//! State shared by all cores: the mailboxes between them and their wake-ups, the MAC
//! ownership authority, the stop flag, the client count, counters, the log gate, TAP steering
//! and the clock.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::clock::Clock;
use super::{loggate, mailbox, CROSS_CORE_QUEUE};
use crate::counters::{CoreCounters, HostCounters};
use crate::switch::{Ownership, SharedOwnership};

/// State shared by all cores.
pub struct Shared {
    pub cores: usize,
    /// queues[from * cores + to]
    queues: Vec<ArrayQueue<mailbox::CoreMsg>>,
    /// One eventfd per core, to wake it when messages arrive or at shutdown.
    pub wake_fds: Vec<OwnedFd>,
    /// Who owns which MAC (taken only when a core meets an unknown source address).
    pub authority: SharedOwnership,
    /// Set once to stop: every core drains its clients and returns.
    pub shutdown: AtomicBool,
    /// Clients connected across cores (for --max-clients).
    pub clients: AtomicUsize,
    pub counters: Vec<Arc<CoreCounters>>,
    /// The control thread's counters.
    pub host_counters: HostCounters,
    /// One log line per kind per interval, over all cores.
    pub log_gate: loggate::LogGate,
    /// TAP queue steering by destination MAC (multi-core relays, where the kernel allows it).
    pub steering: Option<crate::steering::Steering>,
    /// Every core's millisecond clock (one zero for all, so that a lease's end computed on
    /// one core means the same on another).
    pub clock: Clock,
}

impl Shared {
    /// State for `cores` cores, on a real clock.
    pub fn new(
        cores: usize,
        max_macs_per_client: usize,
        steering: Option<crate::steering::Steering>,
    ) -> io::Result<Arc<Self>> {
        Self::with_clock(cores, max_macs_per_client, steering, Clock::real())
    }

    /// State for `cores` cores reading `clock`.
    pub fn with_clock(
        cores: usize,
        max_macs_per_client: usize,
        steering: Option<crate::steering::Steering>,
        clock: Clock,
    ) -> io::Result<Arc<Self>> {
        let wake_fds = (0..cores)
            .map(|_| {
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Shared {
            cores,
            queues: (0..cores * cores)
                .map(|_| ArrayQueue::new(CROSS_CORE_QUEUE))
                .collect(),
            wake_fds,
            authority: SharedOwnership::new(Ownership::new(max_macs_per_client)),
            shutdown: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            steering,
            counters: (0..cores)
                .map(|_| Arc::new(CoreCounters::default()))
                .collect(),
            host_counters: HostCounters::default(),
            log_gate: loggate::LogGate::new(clock.clone()),
            clock,
        }))
    }

    pub(super) fn queue(&self, from: usize, to: usize) -> &ArrayQueue<mailbox::CoreMsg> {
        &self.queues[from * self.cores + to]
    }

    /// Wakes core `core` (its loop reads its eventfd).
    pub(super) fn wake(&self, core: usize) {
        // A full eventfd counter (EAGAIN) still wakes the reader: nothing to do on error.
        let _ = rustix::io::write(&self.wake_fds[core], &1u64.to_ne_bytes());
    }

    /// Asks every core to drain and stop.
    pub fn request_shutdown(&self) {
        self.shutdown
            .store(true, std::sync::atomic::Ordering::Release);
        for core in 0..self.cores {
            self.wake(core);
        }
    }
}

//! State shared by all cores: the mailboxes between them and their wake-ups, the networks
//! (each with its MAC ownership authority and TAP steering), the commands from the control
//! thread and the events for it, the stop flag, the client count, counters, the log gate and
//! the clock.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::clock::Clock;
use super::network::{CmdQueue, CoreCmd, Directory, NetEvent, NetId, Network, NetworkSpec};
use super::{loggate, mailbox, CROSS_CORE_QUEUE};
use crate::counters::{CoreCounters, HostCounters};

/// State shared by all cores.
pub struct Shared {
    pub cores: usize,
    /// queues[from * cores + to]
    queues: Vec<ArrayQueue<mailbox::CoreMsg>>,
    /// One eventfd per core, to wake it when messages arrive or at shutdown.
    pub wake_fds: Vec<OwnedFd>,
    /// The default network (slot 0): always up.
    pub default_net: Arc<Network>,
    /// The named networks that are up.
    pub networks: Directory,
    /// Each core's commands from the control thread.
    commands: Vec<CmdQueue>,
    /// Where cores tell the control thread what they need of it.
    events: UnboundedSender<NetEvent>,
    /// Set once to stop: every core drains its clients and returns.
    pub shutdown: AtomicBool,
    /// Draining (the admin API's `POST /api/drain`): upgrades are refused with 503 and
    /// `/healthz` answers 503, so a load balancer sends new clients to another host.
    pub draining: AtomicBool,
    /// Clients connected across cores (for --max-clients).
    pub clients: AtomicUsize,
    /// The most clients connected at once since the start (for the exit summary).
    pub peak_clients: AtomicUsize,
    pub counters: Vec<Arc<CoreCounters>>,
    /// The control thread's counters.
    pub host_counters: HostCounters,
    /// One log line per kind per interval, over all cores.
    pub log_gate: loggate::LogGate,
    /// Every core's millisecond clock (one zero for all, so that a lease's end computed on
    /// one core means the same on another).
    pub clock: Clock,
}

impl Shared {
    /// State for `cores` cores whose default network is `default_net`, on a real clock; and
    /// the receiver of the cores' [`NetEvent`]s, for the control thread.
    pub fn new(
        cores: usize,
        default_net: NetworkSpec,
    ) -> io::Result<(Arc<Self>, UnboundedReceiver<NetEvent>)> {
        Self::with_clock(cores, default_net, Clock::real())
    }

    /// [`Shared::new`] reading `clock`.
    pub fn with_clock(
        cores: usize,
        default_net: NetworkSpec,
        clock: Clock,
    ) -> io::Result<(Arc<Self>, UnboundedReceiver<NetEvent>)> {
        let wake_fds = (0..cores)
            .map(|_| {
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (events, events_rx) = unbounded_channel();
        let now = clock.now_ms();
        let shared = Arc::new(Shared {
            cores,
            queues: (0..cores * cores)
                .map(|_| ArrayQueue::new(CROSS_CORE_QUEUE))
                .collect(),
            wake_fds,
            default_net: Arc::new(Network::new(NetId::DEFAULT, default_net, cores, now)),
            networks: Directory::default(),
            commands: (0..cores).map(|_| CmdQueue::default()).collect(),
            events,
            shutdown: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            peak_clients: AtomicUsize::new(0),
            counters: (0..cores)
                .map(|_| Arc::new(CoreCounters::default()))
                .collect(),
            host_counters: HostCounters::default(),
            log_gate: loggate::LogGate::new(clock.clone()),
            clock,
        });
        Ok((shared, events_rx))
    }

    /// State for `cores` cores whose default network allows 4 MACs per client (unit tests).
    #[cfg(test)]
    pub fn for_tests(cores: usize) -> Arc<Self> {
        let spec = NetworkSpec::for_test(crate::networks::DEFAULT, "t0");
        Self::new(cores, spec).expect("eventfds").0
    }

    /// Sends core `core` a command and wakes it.
    pub fn command(&self, core: usize, cmd: CoreCmd) {
        self.commands[core].push(cmd);
        self.wake(core);
    }

    /// Core `core`'s commands, oldest first.
    pub(super) fn take_commands(&self, core: usize) -> Vec<CoreCmd> {
        self.commands[core].take()
    }

    /// Tells the control thread `event` (dropped when it no longer listens: it is stopping).
    pub(super) fn tell_control(&self, event: NetEvent) {
        let _ = self.events.send(event);
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

//! The tick's jobs (every 250 ms), and shutdown: the check after arming multishot receives,
//! retries of failed arms, the log interval,
//! client liveness, MAC ageing, and the drain.

use super::super::conn::Timeout;
use super::super::mailbox::Control;
use super::Worker;
use crate::switch::PortId;

/// Interval after which per-client log suppression resets.
const LOG_INTERVAL_MS: u64 = super::super::loggate::INTERVAL_MS;
/// How often local MAC entries are checked for ageing.
const AGEING_CHECK_MS: u64 = 1_000;
/// How long a shutdown waits for clients to take their close frames.
const DRAIN_MS: u64 = 2_000;

impl Worker {
    /// Everything the tick does.
    pub(super) fn housekeeping(&mut self) {
        self.probe_armed_receives();
        self.retry_failed_arms();
        self.reset_log_interval();
        self.check_liveness();
        self.expire_parked();
        self.age_macs();
        self.enforce_drain_deadline();
    }

    /// Checks, once, every client whose multishot receive was armed before the previous tick
    /// (so the arm has been submitted since): a peek that finds the stream ended or reset
    /// means the receive will never complete, and the client is closed now.
    ///
    /// Why: when a multishot receive is first issued on a socket that already holds data
    /// followed by a reset (a client that sent part of its request and reset before the
    /// receive was armed), the kernel hands over the data with `IORING_CQE_F_MORE` and then
    /// posts nothing for the reset: seen on Linux 6.18 for about 1 in 10 000 such connections
    /// (`netns-tests/churn.rs`). Later events on an armed receive are always delivered, so one
    /// check after each arm covers it; single-shot receives do not have the problem.
    fn probe_armed_receives(&mut self) {
        let due = self.pending.probes.take_due();
        for &port in &due {
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            if !c.conn.wants_input() || c.socket.idle() {
                continue;
            }
            let mut byte = [0u8; 1];
            let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
            let ended = match rustix::net::recv(c.socket.fd(), &mut byte[..], flags) {
                Ok((0, _)) => true,
                Ok(_) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => false,
                Err(_) => true,
            };
            if ended {
                self.counters.missed_stream_ends.inc();
                self.begin_close(port);
                self.maybe_free(port);
            }
        }
        self.pending.probes.give_back(due);
    }

    /// Re-arms TAP reads and accepts that failed unexpectedly (never at once: a persistent
    /// error must not spin the loop).
    fn retry_failed_arms(&mut self) {
        if self.draining() {
            return;
        }
        for local in self.nets.iter_mut().flatten() {
            local.tap.retry(&mut self.ring, &self.pool);
        }
        for a in &mut self.acceptors {
            a.retry(&mut self.ring);
        }
    }

    fn reset_log_interval(&mut self) {
        if self.time.now_ms - self.time.last_log_reset_ms >= LOG_INTERVAL_MS {
            self.time.last_log_reset_ms = self.time.now_ms;
            for c in self.clients.iter_mut() {
                c.conn.reset_log();
            }
            if self.id == 0 {
                for note in self.shared.log_gate.flush() {
                    log::info!("{note}");
                }
            }
        }
    }

    /// Handshake deadlines, stalled output, pings and pong timeouts.
    fn check_liveness(&mut self) {
        let now = self.time.now_ms;
        for slot in 0..self.clients.capacity() {
            let Some(port) = self.clients.port_at(slot) else {
                continue;
            };
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            if c.parked.is_some() {
                // Not answered yet: nothing may go to it but its answer (see
                // `expire_parked` for its deadline).
                continue;
            }
            let stalled_since = c.out.stalled_since_ms();
            match c.conn.poll_timeout(now, stalled_since) {
                None => {}
                Some(Timeout::Ping(ping)) => self.enqueue_owned(port, ping),
                Some(Timeout::Close { reason, reply }) => {
                    self.drop_logged(port, reason, format_args!("closing the connection"));
                    self.enqueue_owned(port, reply);
                }
                Some(Timeout::ShutDown(reason)) => {
                    self.counters.dropped(reason);
                    if c.tls.as_ref().is_some_and(|t| !t.handshaken()) {
                        self.counters.tls_handshake_failures.inc();
                    }
                    self.log_once(port, reason, format_args!("closing the connection"));
                    self.begin_close(port);
                    self.maybe_free(port);
                }
            }
        }
    }

    /// Forgets local MAC entries unused for `--mac-ageing`, and tells the other cores.
    fn age_macs(&mut self) {
        if self.time.now_ms - self.time.last_ageing_ms < AGEING_CHECK_MS {
            return;
        }
        self.time.last_ageing_ms = self.time.now_ms;
        let (me, now) = (self.id, self.time.now_ms);
        for local in self.nets.iter_mut().flatten() {
            if local.switch.is_empty() {
                continue;
            }
            let aged = local
                .switch
                .expire(now, |p| p.core() == me, &mut &local.net.authority);
            for (mac, port) in aged {
                self.mailbox
                    .broadcast(Control::Forget(local.net.id, mac, port));
                if let Some(s) = &local.net.steering {
                    s.remove(mac);
                }
            }
        }
    }

    /// Starts shutdown: no more accepts; open clients get a close 1001, the others are shut
    /// down; stragglers are shut down at the drain deadline.
    pub(super) fn start_drain(&mut self) {
        self.time.drain_deadline_ms = Some(self.time.now_ms + DRAIN_MS);
        for a in &mut self.acceptors {
            a.cancel(&mut self.ring);
        }
        for slot in 0..self.clients.capacity() {
            let Some(port) = self.clients.port_at(slot) else {
                continue;
            };
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            if c.parked.is_some() {
                let response = super::unavailable_response("", "the relay is stopping");
                self.refuse_parked(port, crate::counters::DropReason::NetworkFailed, &response);
                continue;
            }
            if let Some(close) = c.conn.close_gracefully(1001) {
                self.enqueue_owned(port, close);
            } else if !c.conn.is_flushing() {
                self.begin_close(port);
                self.maybe_free(port);
            }
        }
    }

    fn enforce_drain_deadline(&mut self) {
        if self
            .time
            .drain_deadline_ms
            .is_none_or(|d| self.time.now_ms < d)
        {
            return;
        }
        for slot in 0..self.clients.capacity() {
            if let Some(port) = self.clients.port_at(slot) {
                self.begin_close(port);
                self.maybe_free(port);
            }
        }
    }

    /// Shutdown is complete: no client, no held input, no TAP write in flight.
    pub(super) fn drained(&self) -> bool {
        self.draining()
            && self.pending.held.is_empty()
            && self.clients.is_empty()
            && self.tap_writes == 0
    }
}

/// Clients whose multishot receive was armed, checked once two ticks later at most: those
/// armed before a tick are due at the next one, when their arm has surely been submitted.
#[derive(Debug, Default)]
pub(super) struct RecvProbes {
    armed: Vec<PortId>,
    due: Vec<PortId>,
    /// An emptied list kept for reuse (no allocation per tick).
    spare: Vec<PortId>,
}

impl RecvProbes {
    /// A multishot receive of `port` is being armed.
    pub(super) fn arm(&mut self, port: PortId) {
        self.armed.push(port);
    }

    /// The ports due now; those armed since the last tick become due at the next.
    fn take_due(&mut self) -> Vec<PortId> {
        let due = std::mem::replace(&mut self.due, std::mem::take(&mut self.armed));
        self.armed = std::mem::take(&mut self.spare);
        due
    }

    /// Returns the list [`RecvProbes::take_due`] gave out, emptied, for reuse.
    fn give_back(&mut self, mut list: Vec<PortId>) {
        list.clear();
        self.spare = list;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_armed_before_a_tick_is_due_at_the_next() {
        let mut p = RecvProbes::default();
        let a = PortId::new(0, 1, 1);
        let b = PortId::new(0, 1, 2);
        p.arm(a);
        let due = p.take_due();
        assert!(due.is_empty(), "armed in this iteration: not yet submitted");
        p.give_back(due);
        p.arm(b);
        let due = p.take_due();
        assert_eq!(due, vec![a]);
        p.give_back(due);
        assert_eq!(p.take_due(), vec![b]);
    }
}

//! The tick's jobs (every 250 ms), and shutdown: retries of failed arms, the log interval,
//! client liveness, MAC ageing, and the drain.

use super::super::conn::Timeout;
use super::super::mailbox::Control;
use super::Worker;

/// Interval after which per-client log suppression resets.
const LOG_INTERVAL_MS: u64 = super::super::loggate::INTERVAL_MS;
/// How often local MAC entries are checked for ageing.
const AGEING_CHECK_MS: u64 = 1_000;
/// How long a shutdown waits for clients to take their close frames.
const DRAIN_MS: u64 = 2_000;

impl Worker {
    /// Everything the tick does.
    pub(super) fn housekeeping(&mut self) {
        self.retry_failed_arms();
        self.reset_log_interval();
        self.check_liveness();
        self.age_macs();
        self.enforce_drain_deadline();
    }

    /// Re-arms TAP reads and accepts that failed unexpectedly (never at once: a persistent
    /// error must not spin the loop).
    fn retry_failed_arms(&mut self) {
        if self.draining() {
            return;
        }
        self.tap.retry(&mut self.ring, &self.pool);
        self.acceptor.retry(&mut self.ring);
    }

    fn reset_log_interval(&mut self) {
        if self.now_ms - self.last_log_reset_ms >= LOG_INTERVAL_MS {
            self.last_log_reset_ms = self.now_ms;
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
        let now = self.now_ms;
        for slot in 0..self.clients.capacity() {
            let Some(port) = self.clients.port_at(slot) else {
                continue;
            };
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            let stalled_since = c.out.stalled_since_ms();
            match c.conn.poll_timeout(now, stalled_since) {
                None => {}
                Some(Timeout::Ping(ping)) => self.enqueue_owned(port, ping),
                Some(Timeout::Close { reason, reply }) => {
                    self.counters.dropped(reason);
                    self.log_once(port, reason, format_args!("closing the connection"));
                    self.enqueue_owned(port, reply);
                }
                Some(Timeout::ShutDown(reason)) => {
                    self.counters.dropped(reason);
                    self.log_once(port, reason, format_args!("closing the connection"));
                    self.begin_close(port);
                    self.maybe_free(port);
                }
            }
        }
    }

    /// Forgets local MAC entries unused for `--mac-ageing`, and tells the other cores.
    fn age_macs(&mut self) {
        if self.now_ms - self.last_ageing_ms < AGEING_CHECK_MS {
            return;
        }
        self.last_ageing_ms = self.now_ms;
        let me = self.id;
        let aged = self
            .switch
            .expire(self.now_ms, |p| p.core() == me, &mut &self.shared.authority);
        for (mac, port) in aged {
            self.mailbox.broadcast(Control::Forget(mac, port));
            if let Some(s) = &self.shared.steering {
                s.remove(mac);
            }
        }
    }

    /// Starts shutdown: no more accepts; open clients get a close 1001, the others are shut
    /// down; stragglers are shut down at the drain deadline.
    pub(super) fn start_drain(&mut self) {
        self.drain_deadline_ms = Some(self.now_ms + DRAIN_MS);
        self.acceptor.cancel(&mut self.ring);
        for slot in 0..self.clients.capacity() {
            let Some(port) = self.clients.port_at(slot) else {
                continue;
            };
            let Some(c) = self.clients.get_mut(port) else {
                continue;
            };
            if let Some(close) = c.conn.close_gracefully(1001) {
                self.enqueue_owned(port, close);
            } else if !c.conn.is_flushing() {
                self.begin_close(port);
                self.maybe_free(port);
            }
        }
    }

    fn enforce_drain_deadline(&mut self) {
        if self.drain_deadline_ms.is_none_or(|d| self.now_ms < d) {
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
            && self.held.is_empty()
            && self.clients.is_empty()
            && self.tap.writes_in_flight() == 0
    }
}

//! Relay-wide log rate limit: at most one line per kind (a drop reason, a failed accept, a
//! failed TAP read) per interval, over all cores and all clients, with a count of the lines
//! held back. 5 000 bad requests make one line and a "suppressed" note, not 5 000 lines.
//!
//! Contract: only the logging path touches it (never a frame's path): [`LogGate::admit`]
//! says whether a line may go out now and how many of its kind were held back since the last
//! one; [`LogGate::flush`] (from one core's housekeeping) reports kinds whose held-back lines
//! would otherwise never be mentioned because no later line came.

use super::clock::Clock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::DropReason;

/// One line per kind per this many milliseconds.
pub const INTERVAL_MS: u64 = 10_000;

/// Kind of an accept that failed (after the drop reasons).
pub const ACCEPT_FAILED: usize = DropReason::ALL.len();
/// Kind of a TAP read that failed.
pub const TAP_READ_FAILED: usize = ACCEPT_FAILED + 1;
const KINDS: usize = TAP_READ_FAILED + 1;

/// The kind of a drop reason's lines.
pub fn kind(reason: DropReason) -> usize {
    reason as usize
}

fn kind_name(kind: usize) -> &'static str {
    match kind {
        ACCEPT_FAILED => "accept failed",
        TAP_READ_FAILED => "TAP read failed",
        k => DropReason::ALL[k].label(),
    }
}

struct Gate {
    /// When the last line of this kind went out (ms since the gate's start, plus one: 0 means
    /// never).
    last_ms: AtomicU64,
    /// Lines held back since.
    held: AtomicU64,
}

/// The relay's log gate, shared by every core.
pub struct LogGate {
    clock: Clock,
    gates: Vec<Gate>,
}

impl Default for LogGate {
    fn default() -> Self {
        Self::new(Clock::real())
    }
}

impl LogGate {
    /// A gate reading `clock` (the cores' own).
    pub fn new(clock: Clock) -> Self {
        LogGate {
            clock,
            gates: (0..KINDS)
                .map(|_| Gate {
                    last_ms: AtomicU64::new(0),
                    held: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        // 0 means "never logged".
        self.clock.now_ms() + 1
    }

    /// Whether a line of `kind` may be logged now: `Some(held)` with the number of its lines
    /// held back since the last one (to mention), or `None` (it is counted as held back).
    pub fn admit(&self, kind: usize) -> Option<u64> {
        self.admit_at(kind, self.now_ms())
    }

    fn admit_at(&self, kind: usize, now: u64) -> Option<u64> {
        let gate = &self.gates[kind];
        let last = gate.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= INTERVAL_MS;
        if due
            && gate
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(gate.held.swap(0, Ordering::Relaxed));
        }
        gate.held.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Lines to log for kinds whose interval has passed with lines held back and no line since.
    pub fn flush(&self) -> Vec<String> {
        self.flush_at(self.now_ms())
    }

    fn flush_at(&self, now: u64) -> Vec<String> {
        (0..KINDS)
            .filter_map(|k| {
                let gate = &self.gates[k];
                let last = gate.last_ms.load(Ordering::Relaxed);
                if gate.held.load(Ordering::Relaxed) == 0 || now.saturating_sub(last) < INTERVAL_MS
                {
                    return None;
                }
                let held = gate.held.swap(0, Ordering::Relaxed);
                (held > 0).then(|| suppressed_note(kind_name(k), held))
            })
            .collect()
    }
}

/// The note for `held` lines of `what` held back.
pub fn suppressed_note(what: &str, held: u64) -> String {
    format!(
        "{held} more `{what}` line(s) suppressed in the last {} s (see the counters for every one)",
        INTERVAL_MS / 1000
    )
}

/// What to append to a line after `held` lines of its kind were held back.
pub fn held_note(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} similar line(s) suppressed before this one)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_held_back() {
        let g = LogGate::default();
        let bad = kind(DropReason::NotWebsocket);
        assert_eq!(g.admit_at(bad, 1), Some(0));
        for t in 2..5_002 {
            assert_eq!(g.admit_at(bad, t), None);
        }
        // Another kind has its own line.
        assert_eq!(g.admit_at(ACCEPT_FAILED, 3), Some(0));
        assert!(g.flush_at(5_000).is_empty(), "the interval has not passed");
        assert_eq!(g.admit_at(bad, 10_001), Some(5_000));
        assert_eq!(g.admit_at(bad, 10_002), None);
        let notes = g.flush_at(20_002);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("1 more `not_websocket` line"),
            "{notes:?}"
        );
        assert!(g.flush_at(40_000).is_empty(), "reported once");
    }

    #[test]
    fn cores_racing_admit_one_line() {
        let g = std::sync::Arc::new(LogGate::default());
        let admitted: u64 = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    (0..1_000)
                        .filter(|_| g.admit(kind(DropReason::HeadTooLarge)).is_some())
                        .count() as u64
                })
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 1);
    }
}

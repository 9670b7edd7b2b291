//! The engine's time: milliseconds since one zero shared by every core. Real in the relay;
//! in the engine's tests a number the test sets, so that every timeout (pings, slow clients,
//! frame and handshake deadlines, MAC ageing) happens when the test says and never by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the cores read the time.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Milliseconds since this instant.
    Real(Instant),
    /// The value the test last set.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A real clock starting now.
    pub fn real() -> Self {
        Clock::Real(Instant::now())
    }

    /// A manual clock at 0 and the handle that sets it.
    pub fn manual() -> (Self, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(0));
        (Clock::Manual(now.clone()), now)
    }

    /// Milliseconds since the zero.
    pub fn now_ms(&self) -> u64 {
        match self {
            // Lossless for 584 million years.
            Clock::Real(zero) => zero.elapsed().as_millis() as u64,
            Clock::Manual(now) => now.load(Ordering::Acquire),
        }
    }

    /// Whether time moves only when a test moves it.
    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}

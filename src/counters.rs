//! Per-core counters: frames and bytes each way, and one drop counter per reason.
//!
//! Contract: each core writes only its own [`CoreCounters`] (single writer, so an increment
//! is a relaxed load and store, no locked instruction); any thread may read them. Names
//! follow `tapwire_<noun>_total{reason=...}` so a metrics endpoint can print them as they are.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter written by one thread and read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning core calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! drop_reasons {
    ($($variant:ident => $label:literal, $doc:literal;)*) => {
        /// Why something was dropped or a client was closed. One counter each.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum DropReason { $(#[doc = $doc] $variant,)* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// The `reason` label.
            pub fn label(self) -> &'static str {
                match self { $(DropReason::$variant => $label,)* }
            }
        }
    };
}

drop_reasons! {
    NotWebsocket => "not_websocket", "Request was not a valid WebSocket upgrade (400/426).";
    HeadTooLarge => "head_too_large", "Request head over 8 KiB (431).";
    HandshakeTimeout => "handshake_timeout", "Handshake not completed before the deadline.";
    ProtocolViolation => "protocol_violation", "Unmasked frame, RSV bits, reserved opcode, non-minimal length, bad continuation or close (1002).";
    ControlFrameInvalid => "control_frame_invalid", "Control frame over 125 bytes or fragmented (1002).";
    TextMessage => "text_message", "Text message (1003).";
    RuntFrame => "runt_frame", "Binary message shorter than an Ethernet header (dropped, client kept).";
    FrameTooLarge => "frame_too_large", "Binary frame over --max-frame (1009).";
    FragmentedTooLarge => "fragmented_too_large", "Fragmented message over --max-frame (1009).";
    MacConflict => "mac_conflict", "Source MAC owned by another client.";
    MacLimit => "mac_limit", "Client already owns its maximum number of MACs.";
    BadSourceMac => "bad_source_mac", "Source MAC is a group address.";
    Hairpin => "hairpin", "Destination is the sender itself.";
    RateLimited => "rate_limited", "Client over --client-rate or --client-broadcast-pps.";
    SendQueueFull => "send_queue_full", "Client's send queue full: its copy dropped.";
    SlowClient => "slow_client", "Client shut down after taking none of its output for the slow-client timeout.";
    TooManyClients => "too_many_clients", "Connection beyond --max-clients (503).";
    PongTimeout => "pong_timeout", "Client did not answer pings.";
    TapBacklog => "tap_backlog", "Too many TAP writes in flight on this core.";
    TapWriteError => "tap_write_error", "The kernel refused a TAP write.";
    TapRunt => "tap_runt", "Frame read from the TAP shorter than an Ethernet header.";
    CrossCoreFull => "cross_core_full", "Ring to another core full.";
    NoFrameBuffer => "no_frame_buffer", "Frame buffer pool exhausted.";
    ClientError => "client_error", "Socket error on a client connection.";
    PortGone => "port_gone", "Frame for a client that disconnected while it was on its way.";
}

impl From<crate::switch::SwitchDrop> for DropReason {
    fn from(d: crate::switch::SwitchDrop) -> Self {
        use crate::switch::SwitchDrop;
        match d {
            SwitchDrop::MacConflict => DropReason::MacConflict,
            SwitchDrop::MacLimit => DropReason::MacLimit,
            SwitchDrop::BadSourceMac => DropReason::BadSourceMac,
            SwitchDrop::Hairpin => DropReason::Hairpin,
        }
    }
}

/// Counters of one core.
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// Ethernet frames received from clients, and their bytes.
    pub client_rx_frames: Counter,
    pub client_rx_bytes: Counter,
    /// Ethernet frames queued to clients (each copy counts), and their bytes.
    pub client_tx_frames: Counter,
    pub client_tx_bytes: Counter,
    /// Frames written to the TAP, and their bytes.
    pub tap_tx_frames: Counter,
    pub tap_tx_bytes: Counter,
    /// Frames read from the TAP, and their bytes.
    pub tap_rx_frames: Counter,
    pub tap_rx_bytes: Counter,
    /// Frames handed to another core.
    pub cross_core_frames: Counter,
    /// Connections accepted, upgraded and closed.
    pub connections_accepted: Counter,
    pub connections_upgraded: Counter,
    pub connections_closed: Counter,
    /// Pings received from clients and answered.
    pub pings_answered: Counter,
    /// Times a provided-buffer ring ran dry (receives paused until buffers came back).
    pub buffer_ring_empty: Counter,
    /// Learned addresses the TAP steering map could not take (their frames are handed over
    /// between cores instead).
    pub steering_failed: Counter,
    /// Receive results held back because the TAP or another core was behind (backpressure).
    pub input_held: Counter,
    /// Clients currently open on this core (a gauge, same single writer).
    pub clients_open: Counter,
    drops: [Counter; DropReason::ALL.len()],
}

impl CoreCounters {
    /// Counts one drop for `reason`.
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].inc();
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// Decrements the open-clients gauge.
    pub fn client_gone(&self) {
        let v = self.clients_open.get();
        self.clients_open
            .0
            .store(v.saturating_sub(1), Ordering::Relaxed);
    }

    fn plain(&self) -> [(&'static str, &Counter); 17] {
        [
            ("tapwire_client_rx_frames_total", &self.client_rx_frames),
            ("tapwire_client_rx_bytes_total", &self.client_rx_bytes),
            ("tapwire_client_tx_frames_total", &self.client_tx_frames),
            ("tapwire_client_tx_bytes_total", &self.client_tx_bytes),
            ("tapwire_tap_tx_frames_total", &self.tap_tx_frames),
            ("tapwire_tap_tx_bytes_total", &self.tap_tx_bytes),
            ("tapwire_tap_rx_frames_total", &self.tap_rx_frames),
            ("tapwire_tap_rx_bytes_total", &self.tap_rx_bytes),
            ("tapwire_cross_core_frames_total", &self.cross_core_frames),
            (
                "tapwire_connections_accepted_total",
                &self.connections_accepted,
            ),
            (
                "tapwire_connections_upgraded_total",
                &self.connections_upgraded,
            ),
            ("tapwire_connections_closed_total", &self.connections_closed),
            ("tapwire_pings_answered_total", &self.pings_answered),
            ("tapwire_buffer_ring_empty_total", &self.buffer_ring_empty),
            ("tapwire_input_held_total", &self.input_held),
            ("tapwire_steering_failed_total", &self.steering_failed),
            ("tapwire_clients_open", &self.clients_open),
        ]
    }
}

/// The summary printed at exit and on SIGUSR1: every counter summed over cores, then
/// per-core lines for the non-zero ones. Prometheus text format.
pub fn summary(cores: &[std::sync::Arc<CoreCounters>]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = CoreCounters::default()
        .plain()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for (i, name) in names.iter().enumerate() {
        let total: u64 = cores.iter().map(|c| c.plain()[i].1.get()).sum();
        let _ = writeln!(out, "{name} {total}");
    }
    for reason in DropReason::ALL {
        let total: u64 = cores.iter().map(|c| c.drops(*reason)).sum();
        let _ = writeln!(
            out,
            "tapwire_drops_total{{reason=\"{}\"}} {total}",
            reason.label()
        );
    }
    for (core, c) in cores.iter().enumerate() {
        for (name, counter) in c.plain() {
            if counter.get() != 0 {
                let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", counter.get());
            }
        }
        for reason in DropReason::ALL {
            if c.drops(*reason) != 0 {
                let _ = writeln!(
                    out,
                    "tapwire_drops_total{{reason=\"{}\",core=\"{core}\"}} {}",
                    reason.label(),
                    c.drops(*reason)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_sums_cores() {
        let a = std::sync::Arc::new(CoreCounters::default());
        let b = std::sync::Arc::new(CoreCounters::default());
        a.dropped(DropReason::RuntFrame);
        b.dropped(DropReason::RuntFrame);
        b.tap_tx_frames.add(5);
        let s = summary(&[a, b]);
        assert!(s.contains("tapwire_drops_total{reason=\"runt_frame\"} 2\n"));
        assert!(s.contains("tapwire_tap_tx_frames_total 5\n"));
        assert!(s.contains("tapwire_tap_tx_frames_total{core=\"1\"} 5\n"));
    }
}

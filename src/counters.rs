//! Per-core counters: frames and bytes each way, the open-client gauge, and one drop counter
//! per reason. Each series is declared once (field, name, help, type) in `core_series!`.
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
    TokenMissing => "token_missing", "--token-secret: no token in the URL (401).";
    TokenMalformed => "token_malformed", "--token-secret: a token that is not one (401).";
    TokenExpired => "token_expired", "--token-secret: an expired token (403).";
    TokenForged => "token_forged", "--token-secret: a token not signed with the relay's secret (403).";
    OriginRefused => "origin_refused", "--allow-origin: a browser's Origin not in the list (403).";
    TokenWrongNetwork => "token_wrong_network", "--token-secret: a token for another network than the URL's (403).";
    BadNetworkPath => "bad_network_path", "A path under /n/ that is not one network name (400).";
    NetworkUnknown => "network_unknown", "--networks declared: a network nobody declared (403).";
    TooManyNetworks => "too_many_networks", "A new network beyond --max-networks (503).";
    Draining => "draining", "An upgrade while the host drains (POST /api/drain; 503, so that the client connects again and its load balancer sends it elsewhere).";
    NetworkFull => "network_full", "A client beyond a declared network's max-clients (503).";
    NetworkFailed => "network_failed", "A network that could not be made, or not within 10 s (503; the log says why).";
    NetworkWaitInput => "network_wait_input", "A connection waiting for its network sent more than 16 receive buffers before its upgrade was answered (503).";
    HandshakeTimeout => "handshake_timeout", "TLS or WebSocket handshake not completed before the deadline.";
    TlsNotTls => "tls_not_tls", "wss:// listener: the first bytes are not a TLS record (plain HTTP, garbage); closed.";
    TlsHandshakeFailed => "tls_handshake_failed", "wss:// listener: TLS handshake failed (no common version or cipher suite, a malformed message, an alert from the client); closed with an alert.";
    TlsBadRecord => "tls_bad_record", "wss:// client: a TLS record that does not decrypt, is oversized or unexpected; closed with an alert.";
    TlsAlert => "tls_alert", "wss:// client: sent a fatal TLS alert after the handshake; closed.";
    ProtocolViolation => "protocol_violation", "Unmasked frame, RSV bits, reserved opcode, non-minimal length, bad continuation or close (1002).";
    ControlFrameInvalid => "control_frame_invalid", "Control frame over 125 bytes or fragmented (1002).";
    TextMessage => "text_message", "Text message (1003).";
    RuntFrame => "runt_frame", "Binary message shorter than an Ethernet header (dropped, client kept).";
    FrameTooLarge => "frame_too_large", "Binary frame over --max-frame (1009).";
    FragmentedTooLarge => "fragmented_too_large", "Fragmented message over --max-frame (1009).";
    MacConflict => "mac_conflict", "Source MAC owned by another client.";
    MacLimit => "mac_limit", "Client already owns its maximum number of MACs.";
    MacTakeover => "mac_takeover", "Client shut down: another client sent from its MAC and it did not answer a ping within 3 s (a half-open connection).";
    BadSourceMac => "bad_source_mac", "Source MAC is a group address or all zeros.";
    UplinkMac => "uplink_mac", "Source MAC lives behind the uplink (the TAP's, or the bridge's or its ports').";
    Hairpin => "hairpin", "Destination is the sender itself.";
    Isolated => "isolated", "--isolate: a frame from one client to another.";
    UnknownUnicast => "unknown_unicast", "Unicast frame from the uplink for an address no client owns (never flooded to other guests).";
    IpSpoof => "ip_spoof", "IPv4 packet whose source address is not bound to the client's MAC by a DHCP lease, --reserve, or (--hosts) as a guest that moved from another host of the farm (anti-spoofing).";
    ArpSpoof => "arp_spoof", "ARP packet claiming an address not bound to the client's MAC (the gateway's, another guest's), or whose sender hardware address is not the frame's source.";
    RogueDhcp => "rogue_dhcp", "DHCP server message (UDP source port 67) from a client.";
    DhcpChaddr => "dhcp_chaddr", "DHCP request whose client hardware address is not the frame's source MAC.";
    VlanTagged => "vlan_tagged", "802.1Q/802.1ad tagged frame from a client (anti-spoofing cannot see inside).";
    RateLimited => "rate_limited", "Client over --client-rate or --client-broadcast-pps.";
    SendQueueFull => "send_queue_full", "Client's send queue full: its copy dropped.";
    SlowClient => "slow_client", "Client shut down after taking none of its output for the slow-client timeout.";
    TooManyClients => "too_many_clients", "Connection beyond --max-clients (503).";
    PongTimeout => "pong_timeout", "Client did not answer pings.";
    TapBacklog => "tap_backlog", "Too many TAP writes in flight on this core.";
    TapWriteError => "tap_write_error", "The kernel refused a TAP write.";
    TapRunt => "tap_runt", "Frame read from the TAP shorter than an Ethernet header.";
    OffloadMalformed => "offload_malformed", "--offload: a frame from the TAP over --max-frame, filling its whole buffer (maybe cut short), or whose partial checksum lies outside it; or a super-frame that is not TCP over IPv4 or IPv6, or is VLAN-tagged (run without --offload on a TAP that carries VLANs), or whose segments would exceed --max-frame.";
    CrossCoreFull => "cross_core_full", "Ring to another core full.";
    NoFrameBuffer => "no_frame_buffer", "Frame buffer pool exhausted.";
    PartialFramesFull => "partial_frames_full", "A message split across receives dropped: the core's quarter of frame slots for partial frames is in use.";
    FrameTimeout => "frame_timeout", "A frame in progress not completed within --frame-timeout (close 1008).";
    ClientError => "client_error", "Socket error on a client connection.";
    PortGone => "port_gone", "Frame for a client that disconnected while it was on its way.";
}

impl From<crate::ws::access::Denied> for DropReason {
    fn from(d: crate::ws::access::Denied) -> Self {
        use crate::ws::access::Denied;
        match d {
            Denied::TokenMissing => DropReason::TokenMissing,
            Denied::TokenMalformed => DropReason::TokenMalformed,
            Denied::TokenExpired => DropReason::TokenExpired,
            Denied::TokenForged => DropReason::TokenForged,
            Denied::OriginRefused => DropReason::OriginRefused,
            Denied::TokenWrongNetwork => DropReason::TokenWrongNetwork,
        }
    }
}

impl From<crate::switch::guard::GuardDrop> for DropReason {
    fn from(d: crate::switch::guard::GuardDrop) -> Self {
        use crate::switch::guard::GuardDrop;
        match d {
            GuardDrop::IpSpoof => DropReason::IpSpoof,
            GuardDrop::ArpSpoof => DropReason::ArpSpoof,
            GuardDrop::RogueDhcp => DropReason::RogueDhcp,
            GuardDrop::DhcpChaddr => DropReason::DhcpChaddr,
            GuardDrop::VlanTagged => DropReason::VlanTagged,
        }
    }
}

impl From<crate::switch::SwitchDrop> for DropReason {
    fn from(d: crate::switch::SwitchDrop) -> Self {
        use crate::switch::SwitchDrop;
        match d {
            SwitchDrop::MacConflict => DropReason::MacConflict,
            SwitchDrop::MacLimit => DropReason::MacLimit,
            SwitchDrop::BadSourceMac => DropReason::BadSourceMac,
            SwitchDrop::UplinkMac => DropReason::UplinkMac,
            SwitchDrop::Hairpin => DropReason::Hairpin,
            SwitchDrop::Isolated => DropReason::Isolated,
            SwitchDrop::UnknownUnicast => DropReason::UnknownUnicast,
            SwitchDrop::Unbound => DropReason::IpSpoof,
        }
    }
}

/// Whether a series only grows or goes up and down (Prometheus `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
}

impl MetricType {
    fn name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// A gauge written by one thread and read by any.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one. Only the owning core calls this.
    #[inline]
    pub fn inc(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Subtracts one (never below zero). Only the owning core calls this.
    #[inline]
    pub fn dec(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Declares the per-core series once: field, kind, name and help text.
macro_rules! core_series {
    ($($field:ident: $ty:ident, $kind:ident, $name:literal, $help:literal;)*) => {
        /// Counters and gauges of one core.
        #[derive(Debug)]
        pub struct CoreCounters {
            $(#[doc = $help] pub $field: $ty,)*
            drops: [Counter; DropReason::ALL.len()],
        }

        impl Default for CoreCounters {
            fn default() -> Self {
                CoreCounters {
                    $($field: $ty::default(),)*
                    drops: std::array::from_fn(|_| Counter::default()),
                }
            }
        }

        /// Name, help text and type of every series but the drops.
        pub const SERIES: &[(&str, &str, MetricType)] = &[$(($name, $help, MetricType::$kind),)*];

        impl CoreCounters {
            /// Values of [`SERIES`], in order.
            fn values(&self) -> [u64; SERIES.len()] {
                [$(self.$field.get(),)*]
            }
        }
    };
}

core_series! {
    client_rx_frames: Counter, Counter, "tapwire_client_rx_frames_total", "Ethernet frames received from clients.";
    client_rx_bytes: Counter, Counter, "tapwire_client_rx_bytes_total", "Bytes of Ethernet frames received from clients.";
    client_tx_frames: Counter, Counter, "tapwire_client_tx_frames_total", "Ethernet frames queued to clients (each copy counts).";
    client_tx_bytes: Counter, Counter, "tapwire_client_tx_bytes_total", "Bytes of Ethernet frames queued to clients.";
    tap_tx_frames: Counter, Counter, "tapwire_tap_tx_frames_total", "Frames written to the TAP.";
    tap_tx_bytes: Counter, Counter, "tapwire_tap_tx_bytes_total", "Bytes written to the TAP.";
    tap_rx_frames: Counter, Counter, "tapwire_tap_rx_frames_total", "Frames read from the TAP.";
    tap_rx_bytes: Counter, Counter, "tapwire_tap_rx_bytes_total", "Bytes read from the TAP.";
    tap_rx_segments: Counter, Counter, "tapwire_tap_rx_segments_total", "--offload: frames cut from the TAP's TCP super-frames (each super-frame counts once in tapwire_tap_rx_frames_total).";
    cross_core_frames: Counter, Counter, "tapwire_cross_core_frames_total", "Frames handed to another core.";
    connections_accepted: Counter, Counter, "tapwire_connections_accepted_total", "TCP connections accepted.";
    tls_handshakes: Counter, Counter, "tapwire_tls_handshakes_total", "TLS handshakes completed on the wss:// listener.";
    tls_handshake_failures: Counter, Counter, "tapwire_tls_handshake_failures_total", "TLS handshakes that failed or timed out (reasons tls_not_tls, tls_handshake_failed, handshake_timeout before the TLS handshake ended).";
    connections_upgraded: Counter, Counter, "tapwire_connections_upgraded_total", "Connections upgraded to WebSocket.";
    connections_closed: Counter, Counter, "tapwire_connections_closed_total", "Connections closed and freed.";
    pings_answered: Counter, Counter, "tapwire_pings_answered_total", "Pings received from clients and answered.";
    pongs_coalesced: Counter, Counter, "tapwire_pongs_coalesced_total", "Pongs that replaced a pong still waiting to be sent (a client pinging faster than it reads).";
    missed_stream_ends: Counter, Counter, "tapwire_missed_stream_ends_total", "Connections found ended or reset by the check after arming a multishot receive, whose end the kernel posted no completion for.";
    mac_challenges: Counter, Counter, "tapwire_mac_challenges_total", "Owners of a MAC another client sent from, pinged to show they are alive.";
    buffer_ring_empty: Counter, Counter, "tapwire_buffer_ring_empty_total", "Times a provided-buffer ring ran dry (receives paused until buffers came back).";
    input_held: Counter, Counter, "tapwire_input_held_total", "Receives held back because the TAP or another core was behind (backpressure).";
    steering_failed: Counter, Counter, "tapwire_steering_failed_total", "Learned addresses the TAP steering map did not take (their frames are handed over between cores instead).";
    dhcp_bindings: Counter, Counter, "tapwire_dhcp_bindings_total", "DHCP ACKs from the uplink that bound an address to a guest's MAC (anti-spoofing).";
    roam_bindings: Counter, Counter, "tapwire_roam_bindings_total", "Guests that moved here from another host of the farm, bound to the address that host leased them on their first frame from it (--hosts).";
    dhcp_unbindings: Counter, Counter, "tapwire_dhcp_unbindings_total", "Bindings ended by a DHCP NAK from the uplink or a release or decline from the guest.";
    clients_open: Gauge, Gauge, "tapwire_clients_open", "Clients connected right now.";
}

/// Counters of the control thread: the host state it watches, and what it put back.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub dnsmasq_restarts: Counter,
    pub firewall_restores: Counter,
    pub tap_set_up_again: Counter,
}

impl HostCounters {
    /// Name, help and value of each, in the summary's order.
    fn series(&self) -> [(&'static str, &'static str, u64); 3] {
        [
            (
                "tapwire_dnsmasq_restarts_total",
                "Times the instance's dnsmasq exited and was started again.",
                self.dnsmasq_restarts.get(),
            ),
            (
                "tapwire_firewall_restores_total",
                "Times the instance's nftables table was found deleted or changed by someone else and made again.",
                self.firewall_restores.get(),
            ),
            (
                "tapwire_tap_set_up_again_total",
                "Times the TAP was found set down by someone else and set up again.",
                self.tap_set_up_again.get(),
            ),
        ]
    }
}

/// Name and help of the drop family.
const DROPS: (&str, &str) = (
    "tapwire_drops_total",
    "Frames dropped and clients closed, by reason.",
);

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
}

/// `text` (Prometheus text format) with `label="value"` added to every sample, first among
/// its labels; comment lines as they are. `value` must need no escaping (`--host-name`).
pub fn with_label(text: &str, label: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(name_end);
            out.push_str(name);
            match rest.strip_prefix('{') {
                Some(labels) => {
                    let _ = write!(out, "{{{label}=\"{value}\",{labels}");
                }
                None => {
                    let _ = write!(out, "{{{label}=\"{value}\"}}{rest}");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// What a run did, in one paragraph for a person (printed at exit): how long it ran, the
/// clients it served and the most at once, frames and bytes each way, and only what is not
/// zero of the drops and of the host events the control thread repaired.
pub fn exit_paragraph(
    cores: &[std::sync::Arc<CoreCounters>],
    host: &HostCounters,
    uptime: std::time::Duration,
    peak_clients: usize,
) -> String {
    let sum = |f: &dyn Fn(&CoreCounters) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
    let served = sum(&|c| c.connections_upgraded.get());
    let count = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut out = format!(
        "ran {}: {} served, {peak_clients} at most at once; from guests {} ({}), to guests {} ({})",
        human_duration(uptime),
        count(served, "client"),
        count(sum(&|c| c.client_rx_frames.get()), "frame"),
        human_bytes(sum(&|c| c.client_rx_bytes.get())),
        count(sum(&|c| c.client_tx_frames.get()), "frame"),
        human_bytes(sum(&|c| c.client_tx_bytes.get())),
    );
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter_map(|r| {
            let n: u64 = cores.iter().map(|c| c.drops(*r)).sum();
            (n > 0).then(|| format!("{} {n}", r.label()))
        })
        .collect();
    if drops.is_empty() {
        out.push_str("; nothing dropped");
    } else {
        out.push_str(&format!("; dropped: {}", drops.join(", ")));
    }
    let repaired: Vec<String> = host
        .series()
        .iter()
        .filter(|(_, _, v)| *v > 0)
        .map(|(name, _, v)| {
            let short = name
                .trim_start_matches("tapwire_")
                .trim_end_matches("_total");
            format!("{short} {v}")
        })
        .collect();
    if !repaired.is_empty() {
        out.push_str(&format!("; host state repaired: {}", repaired.join(", ")));
    }
    out.push_str(". The full counters: kill -USR1, --metrics, or --log-level debug at exit.");
    out
}

/// `d` as a person reads it: `45s`, `12m 3s`, `2h 5m`, `3d 4h`.
fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `n` bytes as a person reads them, in powers of 1024: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The summary printed on SIGUSR1 (and at exit with `--log-level debug`), in Prometheus text
/// format: per series its `# HELP` and `# TYPE`, the sum over cores, then each core's non-zero
/// value.
pub fn summary(cores: &[std::sync::Arc<CoreCounters>], host: &HostCounters) -> String {
    let mut out = String::new();
    let values: Vec<[u64; SERIES.len()]> = cores.iter().map(|c| c.values()).collect();
    for (i, (name, help, kind)) in SERIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.name());
        let total: u64 = values.iter().map(|v| v[i]).sum();
        let _ = writeln!(out, "{name} {total}");
        for (core, v) in values.iter().enumerate() {
            if v[i] != 0 {
                let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", v[i]);
            }
        }
    }
    for (name, help, value) in host.series() {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let (name, help) = DROPS;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for reason in DropReason::ALL {
        let total: u64 = cores.iter().map(|c| c.drops(*reason)).sum();
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {total}", reason.label());
        for (core, c) in cores.iter().enumerate() {
            if c.drops(*reason) != 0 {
                let _ = writeln!(
                    out,
                    "{name}{{reason=\"{}\",core=\"{core}\"}} {}",
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
    #[test]
    fn a_label_on_every_sample() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total{core=\"1\"} 2\n";
        assert_eq!(
            with_label(text, "host", "hA"),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{host=\"hA\"} 3\na_total{host=\"hA\",core=\"1\"} 2\n"
        );
    }

    use super::*;

    #[test]
    fn the_exit_paragraph_says_what_a_person_needs_and_only_the_drops_that_happened() {
        let a = std::sync::Arc::new(CoreCounters::default());
        let b = std::sync::Arc::new(CoreCounters::default());
        a.connections_upgraded.add(3);
        b.connections_upgraded.add(2);
        a.client_rx_frames.add(10);
        a.client_rx_bytes.add(1536);
        b.client_tx_frames.add(7);
        b.client_tx_bytes.add(3 * 1024 * 1024);
        b.dropped(DropReason::MacConflict);
        b.dropped(DropReason::MacConflict);
        let host = HostCounters::default();
        host.dnsmasq_restarts.inc();
        let p = exit_paragraph(
            &[a.clone(), b],
            &host,
            std::time::Duration::from_secs(3723),
            4,
        );
        assert_eq!(
            p,
            "ran 1h 2m: 5 clients served, 4 at most at once; from guests 10 frames (1.5 KiB), to guests 7 frames (3.0 MiB); dropped: mac_conflict 2; host state repaired: dnsmasq_restarts 1. The full counters: kill -USR1, --metrics, or --log-level debug at exit."
        );
        assert!(!p.contains('\n'), "one paragraph");
        let quiet = exit_paragraph(
            &[a],
            &HostCounters::default(),
            std::time::Duration::from_secs(59),
            1,
        );
        assert!(
            quiet.starts_with("ran 59s: 3 clients served, 1 at most at once;"),
            "{quiet}"
        );
        assert!(quiet.contains("; nothing dropped."), "{quiet}");
        assert!(!quiet.contains("repaired"), "{quiet}");
        assert_eq!(
            human_duration(std::time::Duration::from_secs(90_061)),
            "1d 1h"
        );
        assert_eq!(human_bytes(1023), "1023 B");
    }

    #[test]
    fn summary_sums_cores() {
        let a = std::sync::Arc::new(CoreCounters::default());
        let b = std::sync::Arc::new(CoreCounters::default());
        a.dropped(DropReason::RuntFrame);
        b.dropped(DropReason::RuntFrame);
        b.tap_tx_frames.add(5);
        let s = summary(&[a, b], &HostCounters::default());
        assert!(s.contains("tapwire_drops_total{reason=\"runt_frame\"} 2\n"));
        assert!(s.contains("tapwire_tap_tx_frames_total 5\n"));
        assert!(s.contains("tapwire_tap_tx_frames_total{core=\"1\"} 5\n"));
    }

    #[test]
    fn every_series_has_help_and_type_and_the_open_count_is_a_gauge() {
        let c = std::sync::Arc::new(CoreCounters::default());
        c.clients_open.inc();
        c.clients_open.inc();
        c.clients_open.dec();
        let host = HostCounters::default();
        host.firewall_restores.inc();
        let s = summary(&[c], &host);
        for (name, _, _) in SERIES {
            assert!(s.contains(&format!("# HELP {name} ")), "{name}");
            assert!(s.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(s.contains("# TYPE tapwire_clients_open gauge\n"));
        assert!(s.contains("\ntapwire_firewall_restores_total 1\n"));
        assert!(s.contains("\ntapwire_dnsmasq_restarts_total 0\n"));
        assert!(s.contains("# TYPE tapwire_drops_total counter\n"));
        assert!(s.contains("tapwire_clients_open 1\n"));
        // Each family's samples follow its own header (Prometheus requires them grouped).
        let help = s.find("# HELP tapwire_input_held_total").unwrap();
        let sample = s.find("\ntapwire_input_held_total ").unwrap();
        let next = s.find("# HELP tapwire_steering_failed_total").unwrap();
        assert!(help < sample && sample < next);
    }
}

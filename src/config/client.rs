//! How every client is treated (`ClientPolicy`): the limits and timers of `tapwire run`.

use std::time::Duration;

use clap::Args;

use super::{in_range, parse_duration};

/// How every client is treated: its limits and timers. Part of `tapwire run`'s options and
/// handed to the engine as it is.
#[derive(Debug, Clone, Args)]
pub struct ClientPolicy {
    /// Most clients connected at once; more are answered 503.
    #[arg(long, env = "TAPWIRE_MAX_CLIENTS", default_value_t = 16_384, value_parser = in_range(1, 1 << 24))]
    pub max_clients: usize,
    /// Frames queued per client (2 to 65536) before further copies to it are dropped; the
    /// engine uses at most a quarter of a core's TAP buffers (1024, or 256 with jumbo frames or
    /// --offload).
    /// The default takes every frame of one full 16 KiB receive of minimal frames.
    #[arg(long, env = "TAPWIRE_SEND_QUEUE", default_value_t = 1024, value_parser = in_range(2, 1 << 16))]
    pub send_queue: usize,
    /// Bytes queued per client before further copies to it are dropped.
    #[arg(long, env = "TAPWIRE_SEND_QUEUE_BYTES", default_value_t = 4 << 20, value_parser = in_range(65_536, 1 << 30))]
    pub send_queue_bytes: usize,
    /// Close a connection that has not completed the WebSocket handshake within this time.
    #[arg(long, env = "TAPWIRE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Close a client that takes none of its pending output for this long (it stopped
    /// reading); frames to it meanwhile are dropped once its send queue is full.
    #[arg(long, env = "TAPWIRE_SLOW_CLIENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub slow_client_timeout: Duration,
    /// Close (1008) a client whose frame in progress is not complete this long after its first
    /// byte arrived (a client trickling a frame holds a frame slot and is never idle).
    #[arg(long, env = "TAPWIRE_FRAME_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub frame_timeout: Duration,
    /// Send a WebSocket ping to a client idle this long; close it if the next interval
    /// passes without an answer. 0 disables.
    #[arg(long, env = "TAPWIRE_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Most bytes per second one client may send (frames over it are dropped); 0: no limit.
    #[arg(long, env = "TAPWIRE_CLIENT_RATE", default_value_t = 0)]
    pub client_rate: u64,
    /// Most broadcast/multicast frames per second one client may send; 0: no limit.
    #[arg(long, env = "TAPWIRE_CLIENT_BROADCAST_PPS", default_value_t = 0)]
    pub client_broadcast_pps: u64,
    /// MAC addresses one client may own.
    #[arg(long, env = "TAPWIRE_MAX_MACS_PER_CLIENT", default_value_t = 4, value_parser = in_range(1, 1024))]
    pub max_macs_per_client: usize,
    /// Forget a MAC address after this long without a frame from it.
    #[arg(long, env = "TAPWIRE_MAC_AGEING", default_value = "300s", value_parser = parse_duration)]
    pub mac_ageing: Duration,
}

impl ClientPolicy {
    /// The ping interval, unless pings are off.
    pub fn ping_interval(&self) -> Option<Duration> {
        (!self.ping_interval.is_zero()).then_some(self.ping_interval)
    }

    /// The per-client byte rate limit, if any.
    pub fn client_rate(&self) -> Option<u64> {
        (self.client_rate > 0).then_some(self.client_rate)
    }

    /// The per-client broadcast limit, if any.
    pub fn client_broadcast_pps(&self) -> Option<u64> {
        (self.client_broadcast_pps > 0).then_some(self.client_broadcast_pps)
    }
}

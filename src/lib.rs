//! tapwire relays raw Ethernet frames between WebSocket clients (v86, jor1k, JSLinux) and the
//! host's network through one multi-queue TAP behind a userspace MAC-learning switch.
//!
//! Layout: [`ws`], [`switch`] and [`networks`] are pure (no I/O, no `unsafe`); [`engine`] is the per-core
//! io_uring data plane; [`tap`] makes the TAP; [`control`] does host state, the ledger,
//! dnsmasq and signals; [`processes`] is what both read about other processes in /proc. [`run`] is the entry point: it takes its listeners (bind port 0 in
//! tests) and a [`Shutdown`] handle.

pub mod config;
pub mod control;
pub mod counters;
pub mod engine;
pub mod ifname;
pub mod networks;
pub mod offload;
pub mod processes;
pub mod steering;
pub mod switch;
pub mod tap;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use control::listen::{bind_listeners, bind_tls_listeners};
pub use control::{RunError, RunReport, Shutdown};

/// Runs tapwire with `config` on `listeners` (one per core, e.g. from [`bind_listeners`]),
/// and with `--listen-tls` on `tls_listeners` (one per core, from [`bind_tls_listeners`]) until `shutdown` is triggered (or, with [`Shutdown::with_signals`], SIGINT/SIGTERM): makes
/// the TAP and host state, starts dnsmasq and the cores, and on stop closes every client with
/// 1001 and undoes every host change in reverse order.
pub fn run(
    config: Config,
    listeners: Vec<std::net::TcpListener>,
    tls_listeners: Vec<std::net::TcpListener>,
    shutdown: Shutdown,
) -> Result<RunReport, RunError> {
    control::run(config, listeners, tls_listeners, shutdown)
}

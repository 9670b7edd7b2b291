//! Test and benchmark tools for tapwire, kept out of the relay crate and its binary.
//!
//! - [`ws`]: the one WebSocket test client (upgrade, masked frames, a decoder of the relay's
//!   frames built on tapwire's own codec, and a blocking client);
//! - [`packet`]: Ethernet, IPv4, UDP, ICMP, ARP and DHCP frames, built and parsed with
//!   `smoltcp::wire`;
//! - [`guest`]: a fake guest whose network stack is the Linux one (`tapwire-guest`);
//! - [`swarm`]: thousands of synthetic guests in one process (`tapwire-swarm`);
//! - [`tls`]: self-signed certificates and a rustls client for wss://;
//! - [`token`]: access tokens as tests need them (a forgery that is always one);
//! - [`skip`]: the one rule for a test that cannot run here (counted, and a failure under
//!   `TAPWIRE_NO_SKIP`);
//! - [`netns`], [`process`], [`counters`], [`udp_echo`]: namespaces, child processes and the
//!   one relay-process wrapper, the counter-summary parser, a UDP echo server.
//!
//! Everything here may send traffic only to loopback or into namespaces its caller made.

pub mod counters;
pub mod farm;
pub mod guest;
pub mod netns;
pub mod packet;
pub mod process;
pub mod skip;
pub mod swarm;
pub mod tls;
pub mod token;
pub mod udp_echo;
pub mod ws;

/// The path of binary `name` built beside the running executable (tests run from
/// `target/<profile>/deps/`, binaries from `target/<profile>/`); `env` overrides it.
pub fn sibling_binary(name: &str, env: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let me = std::env::current_exe().expect("the running executable's path");
    let dir = me.parent().expect("a directory");
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built next to {} — run `cargo build --workspace` first, or set {env}",
                me.display()
            )
        })
}

//! Root-only scenarios: a tapwire relay with 2 cores in its own namespace, kernel-stack guests
//! in theirs (real DHCP, ARP, ICMP), synthetic WebSocket guests for exact frames and bad input.
//! When not root each test skips (counted by `scripts/test.sh`; a failure under
//! `TAPWIRE_NO_SKIP`).

#[path = "harness.rs"]
mod harness;

#[path = "access.rs"]
mod access;
#[path = "bad_input.rs"]
mod bad_input;
#[path = "churn.rs"]
mod churn;
#[path = "cores.rs"]
mod cores;
#[path = "exhaustion.rs"]
mod exhaustion;
#[path = "farm.rs"]
mod farm;
#[path = "farm_rig.rs"]
mod farm_rig;
#[path = "faults.rs"]
mod faults;
#[path = "forwards.rs"]
mod forwards;
#[path = "host_protection.rs"]
mod host_protection;
#[path = "host_state.rs"]
mod host_state;
#[path = "instances.rs"]
mod instances;
#[path = "internet.rs"]
mod internet;
#[path = "macs.rs"]
mod macs;
#[path = "metrics.rs"]
mod metrics;
#[path = "nat.rs"]
mod nat;
#[path = "networks.rs"]
mod networks;
#[path = "networks_api.rs"]
mod networks_api;
#[path = "offload.rs"]
mod offload;
#[path = "span.rs"]
mod span;
#[path = "span_evpn.rs"]
mod span_evpn;
#[path = "spoofing.rs"]
mod spoofing;
#[path = "swarm.rs"]
mod swarm;
#[path = "tls.rs"]
mod tls;
#[path = "traffic.rs"]
mod traffic;

/// The gateway address of the relay's default subnet.
const GATEWAY: &str = "10.86.0.1";

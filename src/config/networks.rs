//! Options of the networks other than the default one (`/n/NAME`): how they come to be, how
//! many may be up, the pool their subnets come from, and when an idle one goes.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::declared::{self, Declared, DeclaredArgs, InstanceDefaults};
use super::{in_range, parse_duration, HostAccess, IfName, Subnet};
use crate::networks::Pool;

/// How networks other than the default come to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworksMode {
    /// A URL /n/NAME makes network NAME on its first connection.
    OnDemand,
    /// Only declared networks exist; other names are refused with 403.
    Declared,
}

/// `tapwire run`'s network options, as given.
#[derive(Debug, Clone, Args)]
pub struct NetworkArgs {
    /// How networks other than the default come to be: on-demand (a connection to /n/NAME
    /// makes network NAME) or declared (other names are refused with 403).
    #[arg(long = "networks", env = "TAPWIRE_NETWORKS", value_enum, default_value_t = NetworksMode::OnDemand)]
    pub mode: NetworksMode,
    /// Most networks up at once besides the default one (each has a TAP with one queue per
    /// core); a connection that would make one more is answered 503. 0: only the default
    /// network.
    #[arg(long, env = "TAPWIRE_MAX_NETWORKS", default_value_t = 256, value_parser = in_range(0, 4096))]
    pub max_networks: usize,
    /// Addresses the networks' subnets are cut from.
    #[arg(long, env = "TAPWIRE_NETWORK_POOL", default_value = "10.96.0.0/12")]
    pub network_pool: Subnet,
    /// Prefix length of each network's subnet (a block of --network-pool).
    #[arg(long, env = "TAPWIRE_NETWORK_PREFIX", default_value_t = 24, value_parser = in_range(8, 29))]
    pub network_prefix: usize,
    /// Remove a network made on demand this long after its last client left (its TAP,
    /// addresses, rules and leases go with it).
    #[arg(long, env = "TAPWIRE_NETWORK_IDLE", default_value = "5m", value_parser = parse_duration)]
    pub network_idle: Duration,
}

/// The network options, checked.
#[derive(Debug, Clone)]
pub struct Networks {
    pub mode: NetworksMode,
    pub max_networks: usize,
    /// The pool, with the default network's subnet excluded.
    pub pool: Pool,
    pub idle: Duration,
    /// Networks of the config file, made at start-up (slots 1 to their number).
    pub declared: Vec<Declared>,
}

/// Blocks of the pool beyond --max-networks that may be handed out, for blocks skipped
/// because another interface of the host has addresses in them.
const SPARE_BLOCKS: u32 = 64;

impl Networks {
    /// The pool networks' subnets are cut from.
    pub fn pool_cidr(&self) -> Subnet {
        self.pool.cidr()
    }
}

/// The TAP of the network in slot `slot` of the instance whose TAP is `tap`.
pub fn tap_name(tap: &str, slot: u16) -> String {
    format!("{tap}n{slot}")
}

impl NetworkArgs {
    /// Checks the options against the instance's TAP name and the default network's subnet
    /// (`None` with --attach-bridge, where only the default network exists), with the
    /// networks `declared` in the config file and what they take from the instance when they
    /// do not say (`--nat`, `--isolate`, `--allow-host-port`).
    pub fn validate(
        &self,
        tap: &IfName,
        default_subnet: Option<&Subnet>,
        declared: &[DeclaredArgs],
        (nat, isolate, host): (bool, bool, &HostAccess),
    ) -> Result<Networks, String> {
        if default_subnet.is_none() && !declared.is_empty() {
            return Err(
                "[[network]] needs a routed TAP: with --attach-bridge there is only the default network"
                    .into(),
            );
        }
        if declared.len() > self.max_networks {
            return Err(format!(
                "{} networks are declared, more than --max-networks {}: raise --max-networks",
                declared.len(),
                self.max_networks
            ));
        }
        let max_networks = if default_subnet.is_some() {
            self.max_networks
        } else {
            0
        };
        // Lossless: network_prefix is between 8 and 29.
        let mut pool = Pool::new(self.network_pool, self.network_prefix as u8)?;
        if let Some(subnet) = default_subnet {
            pool.exclude(subnet);
        }
        if max_networks > pool.usable() as usize {
            return Err(format!(
                "--max-networks {max_networks}: --network-pool {} has only {} blocks of /{} besides the default subnet; lower --max-networks, or widen the pool or --network-prefix",
                self.network_pool,
                pool.usable(),
                self.network_prefix
            ));
        }
        let declared = match default_subnet {
            Some(default_subnet) => declared::validate(
                declared,
                &InstanceDefaults {
                    nat,
                    isolate,
                    host,
                    default_subnet,
                },
                &mut pool,
            )?,
            None => Vec::new(),
        };
        // Blocks beyond these are never needed: dnsmasq is told the ranges of these only.
        // Lossless: max_networks ≤ 4096.
        pool.limit(max_networks as u32 + SPARE_BLOCKS);
        if max_networks > 0 {
            // Lossless: max_networks ≤ 4096.
            let longest = tap_name(tap, max_networks as u16);
            if longest.len() > crate::ifname::MAX_IFNAME_LEN {
                return Err(format!(
                    "--tap {tap}: the networks' TAPs are named {tap}n<slot> (up to {longest}), longer than the kernel's {} characters: choose a TAP name of at most {} characters, or --max-networks 0",
                    crate::ifname::MAX_IFNAME_LEN,
                    crate::ifname::MAX_IFNAME_LEN - (longest.len() - tap.len())
                ));
            }
        }
        Ok(Networks {
            mode: self.mode,
            max_networks,
            pool,
            idle: self.network_idle,
            declared,
        })
    }
}

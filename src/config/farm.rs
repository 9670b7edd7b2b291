//! Options for a relay that is one host of a farm behind a load balancer (docs/scale-out.md):
//! whose `X-Forwarded-For` is believed, the host's name in metrics and logs, and which slice
//! of every DHCP range this host leases so that no two hosts lease one address.

use std::net::Ipv4Addr;

use clap::Args;

use super::{default_range, in_range, HostSide, Networks};
use crate::ws::forwarded::Cidr;

/// Most hosts one farm's DHCP ranges are cut for.
pub const MAX_HOSTS: usize = 64;

/// `tapwire run`'s farm options, as given.
#[derive(Debug, Clone, Default, Args)]
pub struct FarmArgs {
    /// A proxy whose X-Forwarded-For header names the client (repeatable, CIDR or address),
    /// for logs and the admin API; the header from any other peer is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "TAPWIRE_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxies: Vec<Cidr>,
    /// This host's name in a farm: a `host` label on every metric and a prefix of every log
    /// line (letters, digits, `.`, `_`, `-`; at most 63).
    #[arg(long, env = "TAPWIRE_HOST_NAME", value_name = "NAME", value_parser = parse_host_name)]
    pub host_name: Option<String>,
    /// Number of hosts in the farm (1 to 64): every DHCP range is cut into this many equal
    /// slices and this host leases only from its own (--host-index), while it still renews a
    /// lease another host gave.
    #[arg(long, env = "TAPWIRE_HOSTS", value_parser = in_range(1, MAX_HOSTS))]
    pub hosts: Option<usize>,
    /// This host's place in the farm, 0 to --hosts minus 1.
    #[arg(long, env = "TAPWIRE_HOST_INDEX", value_parser = in_range(0, MAX_HOSTS - 1))]
    pub host_index: Option<usize>,
}

/// Which slice of every DHCP range this host leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub index: usize,
    pub count: usize,
}

impl Slice {
    /// This host's part of `range` (first, last): the range cut into `count` runs of equal
    /// size (the first `size % count` one address longer), in host order. `None` when the
    /// range has fewer addresses than hosts.
    pub fn of(&self, (first, last): (Ipv4Addr, Ipv4Addr)) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let (first, last) = (u32::from(first), u32::from(last));
        let size = u64::from(last.checked_sub(first)?) + 1;
        let count = self.count as u64;
        let index = self.index as u64;
        let (each, longer) = (size / count, size % count);
        if each == 0 {
            return None;
        }
        let start = u64::from(first) + index * each + index.min(longer);
        let len = each + u64::from(index < longer);
        // Lossless: start + len - 1 ≤ last, a u32.
        Some((
            Ipv4Addr::from(start as u32),
            Ipv4Addr::from((start + len - 1) as u32),
        ))
    }
}

/// The farm options, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Farm {
    pub trusted_proxies: Vec<Cidr>,
    pub host_name: Option<String>,
    /// `None`: this host leases from the whole of every range (a farm of one).
    pub slice: Option<Slice>,
}

impl Farm {
    /// This host's part of a DHCP range (the whole range outside a farm); an error naming the
    /// range when it is too small to be cut.
    pub fn lease_range(
        &self,
        what: &str,
        range: (Ipv4Addr, Ipv4Addr),
    ) -> Result<(Ipv4Addr, Ipv4Addr), String> {
        match self.slice {
            None => Ok(range),
            Some(slice) => slice.of(range).ok_or_else(|| {
                format!(
                    "--hosts {}: the DHCP range {}-{} of {what} has fewer addresses than hosts; widen it or use fewer hosts",
                    slice.count, range.0, range.1
                )
            }),
        }
    }
}

impl Farm {
    /// Every DHCP range this host leases from can be cut for the farm: the default network's,
    /// each declared network's, and a block's of the network pool.
    pub fn fits(&self, host: &HostSide, networks: &Networks) -> Result<(), String> {
        if self.slice.is_none() {
            return Ok(());
        }
        if let Some(dhcp) = host.dhcp() {
            self.lease_range("the default network", dhcp.range)?;
        }
        for d in &networks.declared {
            self.lease_range(&format!("network {}", d.name), d.dhcp_range)?;
        }
        if networks.max_networks > 0 {
            let block = networks.pool.block(0);
            self.lease_range(
                &format!("a /{} block of --network-pool", block.prefix),
                default_range(&block),
            )?;
        }
        Ok(())
    }
}

impl Farm {
    /// What a guest that moved here from another host may keep of a DHCP range `range`
    /// leased for `lease_time` (see [`crate::switch::Roam`]); `None` outside a farm.
    pub fn roam(
        &self,
        range: (Ipv4Addr, Ipv4Addr),
        lease_time: std::time::Duration,
    ) -> Option<crate::switch::Roam> {
        self.slice?.roam(range, lease_time)
    }
}

impl Slice {
    /// [`Farm::roam`] for this host's slice.
    pub fn roam(
        &self,
        range: (Ipv4Addr, Ipv4Addr),
        lease_time: std::time::Duration,
    ) -> Option<crate::switch::Roam> {
        let own = self.of(range)?;
        Some(crate::switch::Roam {
            range: (range.0.octets(), range.1.octets()),
            own: (own.0.octets(), own.1.octets()),
            hold_ms: u64::try_from(lease_time.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

impl Farm {
    /// The start line about this host's part in a farm; `None` when it has none. `range` is
    /// the default network's DHCP range, if it runs DHCP.
    pub fn describe(&self, range: Option<(Ipv4Addr, Ipv4Addr)>) -> Option<String> {
        if self.slice.is_none() && self.trusted_proxies.is_empty() && self.host_name.is_none() {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(name) = &self.host_name {
            parts.push(format!("host {name}"));
        }
        if let Some(s) = self.slice {
            let leases = match range.and_then(|r| Some((r, s.of(r)?))) {
                Some((r, own)) => format!(
                    "; the default network leases {}-{} of {}-{} (each network its own slice) and renews any",
                    own.0, own.1, r.0, r.1
                ),
                None => String::new(),
            };
            parts.push(format!("index {} of {} hosts{leases}", s.index, s.count));
        }
        if !self.trusted_proxies.is_empty() {
            let list: Vec<String> = self.trusted_proxies.iter().map(|c| c.to_string()).collect();
            parts.push(format!("X-Forwarded-For believed from {}", list.join(", ")));
        }
        Some(format!("farm: {}", parts.join(", ")))
    }
}

impl FarmArgs {
    /// Checks the options that join.
    pub fn validate(&self) -> Result<Farm, String> {
        let slice = match (self.hosts, self.host_index) {
            (None, None) => None,
            (Some(count), Some(index)) if index < count => Some(Slice { index, count }),
            (Some(count), Some(index)) => {
                return Err(format!(
                    "--host-index {index} is not below --hosts {count}: hosts are numbered from 0 to {}",
                    count - 1
                ))
            }
            _ => return Err("--hosts and --host-index go together".into()),
        };
        Ok(Farm {
            trusted_proxies: self.trusted_proxies.clone(),
            host_name: self.host_name.clone(),
            slice,
        })
    }
}

/// `--host-name`: a label value and log prefix, so no spaces, quotes or control characters.
fn parse_host_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?}: a host name is 1 to 63 letters, digits, '.', '_' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(t: &str) -> Ipv4Addr {
        t.parse().unwrap()
    }

    #[test]
    fn slices_cover_the_range_once_in_order() {
        let range = (ip("10.96.0.10"), ip("10.96.0.254"));
        for count in 1..=MAX_HOSTS {
            let mut next = u32::from(range.0);
            for index in 0..count {
                let (a, b) = Slice { index, count }.of(range).unwrap();
                assert_eq!(u32::from(a), next, "{index}/{count}");
                assert!(a <= b);
                next = u32::from(b) + 1;
            }
            assert_eq!(next, u32::from(range.1) + 1, "{count} hosts");
        }
    }

    #[test]
    fn three_hosts_of_a_slash_24() {
        let range = (ip("10.96.0.10"), ip("10.96.0.254"));
        let cut = |index| Slice { index, count: 3 }.of(range).unwrap();
        // 245 addresses: 82, 82, 81.
        assert_eq!(cut(0), (ip("10.96.0.10"), ip("10.96.0.91")));
        assert_eq!(cut(1), (ip("10.96.0.92"), ip("10.96.0.173")));
        assert_eq!(cut(2), (ip("10.96.0.174"), ip("10.96.0.254")));
    }

    #[test]
    fn a_range_smaller_than_the_farm_is_refused() {
        let range = (ip("10.0.0.2"), ip("10.0.0.4"));
        assert!(Slice { index: 0, count: 4 }.of(range).is_none());
        let farm = Farm {
            slice: Some(Slice { index: 0, count: 4 }),
            ..Farm::default()
        };
        let err = farm.lease_range("network x", range).unwrap_err();
        assert!(err.contains("10.0.0.2-10.0.0.4 of network x"), "{err}");
        assert_eq!(Farm::default().lease_range("x", range), Ok(range));
    }

    #[test]
    fn the_start_line() {
        assert_eq!(Farm::default().describe(None), None);
        let farm = Farm {
            trusted_proxies: vec!["10.250.0.2".parse().unwrap()],
            host_name: Some("hB".into()),
            slice: Some(Slice { index: 1, count: 3 }),
        };
        assert_eq!(
            farm.describe(Some((ip("10.96.0.10"), ip("10.96.0.254")))).unwrap(),
            "farm: host hB, index 1 of 3 hosts; the default network leases 10.96.0.92-10.96.0.173 of 10.96.0.10-10.96.0.254 (each network its own slice) and renews any, X-Forwarded-For believed from 10.250.0.2/32"
        );
    }

    #[test]
    fn validation() {
        let args = |hosts, host_index| FarmArgs {
            hosts,
            host_index,
            ..FarmArgs::default()
        };
        assert_eq!(args(None, None).validate().unwrap().slice, None);
        assert_eq!(
            args(Some(3), Some(2)).validate().unwrap().slice,
            Some(Slice { index: 2, count: 3 })
        );
        let err = args(Some(3), Some(3)).validate().unwrap_err();
        assert!(err.contains("0 to 2"), "{err}");
        assert!(args(Some(3), None).validate().is_err());
        assert!(parse_host_name("hA").is_ok());
        assert!(parse_host_name("relay-1.eu_west").is_ok());
        assert!(parse_host_name("").is_err());
        assert!(parse_host_name("a b").is_err());
        assert!(parse_host_name("a\"b").is_err());
        assert!(parse_host_name(&"x".repeat(64)).is_err());
    }
}

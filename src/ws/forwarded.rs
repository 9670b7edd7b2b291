//! Who a client is behind a proxy: `X-Forwarded-For`, believed only from `--trusted-proxy`.
//!
//! Contract: [`client_address`] takes the TCP peer's address, the `X-Forwarded-For` values of
//! the request (every such header, in order, joined by commas) and the trusted ranges. A peer
//! outside every trusted range is the client, whatever the header says: anyone can write the
//! header. A trusted peer forwards for the address to its left in the list; that address is
//! believed too when it is itself trusted (a chain of proxies), and so on, right to left. The
//! first untrusted address met is the client. An entry that is not an address ends the walk
//! there: the last address believed is the client (a proxy never writes garbage, so garbage
//! came from the client's side of the first trusted proxy). Pure: no I/O, no allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range, IPv4 or IPv6 (`--trusted-proxy 10.0.0.0/8`, `::1/128`, or a bare
/// address for one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the range. An IPv4 address also matches as its IPv4-mapped IPv6
    /// form (`::ffff:a.b.c.d`, which a dual-stack listener reports), and the other way round.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(ip) & mask == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(ip.to_ipv6_mapped()) & mask == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; any other address as it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `ADDR/PREFIX` with no host bits set, or a bare address (a /32 or /128).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("{addr:?} is not an IP address (e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8)")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{p:?} is not a prefix length from 0 to {max}"))?,
        };
        let cidr = Cidr { network, prefix };
        let masked = match network {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix))),
        };
        if masked != network {
            return Err(format!(
                "{text} has host bits set; did you mean {masked}/{prefix}?"
            ));
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether any of `trusted` contains `ip`.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// One entry of an `X-Forwarded-For` list: an address, optionally in brackets or with a port
/// (`192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = entry.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    text.parse::<u16>().is_ok()
}

/// The client's address: `peer` itself unless `peer` is trusted and `forwarded_for` names
/// someone (see the module contract).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer = unmap(peer);
    let Some(list) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for entry in list.rsplit(',') {
        if !is_trusted(trusted, client) {
            break;
        }
        match parse_entry(entry) {
            Some(ip) => client = unmap(ip),
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("192.0.2.7"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("192.0.2.7")));
        assert!(!"192.0.2.7"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("192.0.2.8")));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("203.0.113.1")));
        assert!("fd00::/8".parse::<Cidr>().unwrap().contains(ip("fd12::1")));
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("lb.example".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "10.1.0.0/16"
        );
    }

    #[test]
    fn mapped_addresses_match_both_ways() {
        let v4 = cidrs(&["10.0.0.0/8"]);
        assert!(is_trusted(&v4, ip("::ffff:10.1.2.3")));
        let mapped = cidrs(&["::ffff:10.0.0.0/104"]);
        assert!(is_trusted(&mapped, ip("10.1.2.3")));
        assert!(!is_trusted(&v4, ip("fd00::1")));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_writes() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("198.51.100.1"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("198.51.100.1"), &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_peer_forwards_for_the_rightmost_untrusted_entry() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let lb = ip("10.0.0.2");
        assert_eq!(client_address(lb, None, &trusted), lb);
        assert_eq!(
            client_address(lb, Some("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        // The client wrote a forged entry first; the proxy appended the real address.
        assert_eq!(
            client_address(lb, Some("1.2.3.4, 198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        // Two proxies in a row, both trusted.
        assert_eq!(
            client_address(lb, Some("198.51.100.1, 10.9.9.9"), &trusted),
            ip("198.51.100.1")
        );
        // Everyone in the list is trusted: the leftmost is the client.
        assert_eq!(
            client_address(lb, Some("10.1.1.1,10.2.2.2"), &trusted),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn entries_with_ports_brackets_and_garbage() {
        let trusted = cidrs(&["10.0.0.0/8", "fd00::/8"]);
        let lb = ip("10.0.0.2");
        assert_eq!(
            client_address(lb, Some("198.51.100.1:4711"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(lb, Some("[2001:db8::1]:4711"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(lb, Some(" 2001:db8::2 "), &trusted),
            ip("2001:db8::2")
        );
        // Garbage right of the real client: the walk stops at the last address believed.
        assert_eq!(client_address(lb, Some("unknown"), &trusted), lb);
        assert_eq!(
            client_address(lb, Some("198.51.100.1, junk, 10.3.3.3"), &trusted),
            ip("10.3.3.3")
        );
        assert_eq!(client_address(lb, Some(""), &trusted), lb);
        assert_eq!(client_address(lb, Some("[::1"), &trusted), lb);
        assert_eq!(client_address(lb, Some("1.2.3.4:99999"), &trusted), lb);
    }

    #[test]
    fn a_mapped_peer_is_reported_as_ipv4() {
        assert_eq!(
            client_address(ip("::ffff:192.0.2.1"), None, &[]),
            ip("192.0.2.1")
        );
    }
}

//! Address values of the configuration: the guest subnet and the DHCP range, parsed and
//! checked where they are typed.

use std::net::Ipv4Addr;

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = String;

    /// Parses `a.b.c.d/n`; host bits must be zero and the prefix between /8 and /30.
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not in CIDR form (e.g. 10.86.0.0/16)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} must be between /8 and /30"));
        }
        let subnet = Subnet {
            network: addr,
            prefix,
        };
        if u32::from(addr) & !subnet.mask() != 0 {
            return Err(format!(
                "{text} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(addr) & subnet.mask())
            ));
        }
        Ok(subnet)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The first host address: the gateway, put on the TAP.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The last host address.
    pub fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.network) | !self.mask()) - 1)
    }

    /// Whether `ip` is a host address of this subnet.
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v & self.mask() == u32::from(self.network)
            && v > u32::from(self.network)
            && v <= u32::from(self.last_host())
    }

    /// The netmask in dotted form.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
}

/// `START,END`: the first and last address dnsmasq leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpRange(pub Ipv4Addr, pub Ipv4Addr);

impl std::str::FromStr for DhcpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (a, b) = text
            .split_once(',')
            .ok_or_else(|| format!("{text:?}: expected START,END"))?;
        let parse = |t: &str| {
            t.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("{t:?} is not an IPv4 address"))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if u32::from(start) > u32::from(end) {
            return Err(format!("{start} comes after {end}"));
        }
        Ok(DhcpRange(start, end))
    }
}

pub fn default_range(subnet: &Subnet) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(subnet.gateway()) + 9;
    let last = u32::from(subnet.last_host());
    // Small subnets (/29, /30): start right after the gateway.
    let first = if first > last {
        u32::from(subnet.gateway()) + 1
    } else {
        first
    };
    (Ipv4Addr::from(first), Ipv4Addr::from(last))
}

/// `--reserve MAC=IP`: the address dnsmasq always gives this MAC, and a static binding for
/// anti-spoofing (the guest may use it with or without DHCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub mac: crate::switch::Mac,
    pub ip: Ipv4Addr,
}

impl std::str::FromStr for Reservation {
    type Err = String;

    /// Parses `52:54:00:12:34:56=10.86.0.50`: a unicast, non-zero MAC and an IPv4 address.
    fn from_str(text: &str) -> Result<Self, String> {
        let (mac, ip) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not MAC=IP (e.g. 52:54:00:12:34:56=10.86.0.50)"))?;
        let mac = crate::switch::Mac::parse_guest(mac)?;
        let ip = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        Ok(Reservation { mac, ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_parse_and_refuse_what_no_guest_has() {
        let r: Reservation = "52:54:00:12:34:5A=10.86.0.50".parse().unwrap();
        assert_eq!(r.mac.to_string(), "52:54:00:12:34:5a");
        assert_eq!(r.ip, Ipv4Addr::new(10, 86, 0, 50));
        for bad in [
            "52:54:00:12:34:56",
            "52:54:00:12:34=10.86.0.50",
            "52:54:00:12:34:567=10.86.0.50",
            "01:00:5e:00:00:01=10.86.0.50",
            "00:00:00:00:00:00=10.86.0.50",
            "52:54:00:12:34:56=10.86.0",
        ] {
            assert!(bad.parse::<Reservation>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_subnet_knows_its_gateway_hosts_and_mask() {
        let s: Subnet = "10.86.0.0/16".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 86, 0, 1));
        assert_eq!(s.last_host(), Ipv4Addr::new(10, 86, 255, 254));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert!(s.contains_host(Ipv4Addr::new(10, 86, 3, 4)));
        assert!(
            !s.contains_host(Ipv4Addr::new(10, 86, 255, 255)),
            "broadcast"
        );
        assert!(!s.contains_host(Ipv4Addr::new(10, 87, 0, 1)));
        assert_eq!(s.to_string(), "10.86.0.0/16");
        assert!("10.86.0.1/16"
            .parse::<Subnet>()
            .unwrap_err()
            .contains("host bits"));
        assert_eq!(
            default_range(&s),
            (
                Ipv4Addr::new(10, 86, 0, 10),
                Ipv4Addr::new(10, 86, 255, 254)
            )
        );
        let small: Subnet = "192.168.1.0/30".parse().unwrap();
        assert_eq!(default_range(&small).0, Ipv4Addr::new(192, 168, 1, 2));
    }

    #[test]
    fn a_dhcp_range_is_ordered() {
        assert!("10.0.0.9,10.0.0.2".parse::<DhcpRange>().is_err());
        let r: DhcpRange = "10.0.0.2, 10.0.0.9".parse().unwrap();
        assert_eq!(
            r,
            DhcpRange(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 9))
        );
    }
}

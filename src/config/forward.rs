//! `--forward PROTO:HOSTPORT:GUEST:PORT`: a port of the host forwarded into a guest, where the
//! guest is named by its MAC (its address is reserved, so it is stable across DHCP) or by an
//! IPv4 address.

use std::net::Ipv4Addr;

use super::subnet::{Reservation, Subnet};
use crate::switch::Mac;

/// Who a forward goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    Mac(Mac),
    Ip(Ipv4Addr),
}

/// One `--forward` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardArg {
    pub udp: bool,
    pub host_port: u16,
    pub guest: Guest,
    pub port: u16,
}

/// A forward with the guest's address resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    pub host_port: u16,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{proto}:{} → {}:{}", self.host_port, self.ip, self.port)
    }
}

impl std::str::FromStr for ForwardArg {
    type Err = String;

    /// Parses `tcp:8080:52:54:00:12:34:56:80` or `udp:5353:10.86.0.50:53`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not PROTO:HOSTPORT:GUEST:PORT, GUEST a MAC or an IPv4 address (e.g. tcp:8080:52:54:00:12:34:56:80)")
        };
        let (proto, rest) = text.split_once(':').ok_or_else(bad)?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(bad()),
        };
        let (host_port, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (guest, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        let (host_port, port) = (port_of(host_port)?, port_of(port)?);
        let guest = if let Ok(ip) = guest.parse::<Ipv4Addr>() {
            Guest::Ip(ip)
        } else {
            Guest::Mac(Mac::parse_guest(guest)?)
        };
        Ok(ForwardArg {
            udp,
            host_port,
            guest,
            port,
        })
    }
}

/// Resolves `forwards` in `subnet`: an IP must be a host address other than the gateway; a MAC
/// takes its `--reserve` address, else the lowest free host address outside `dhcp_range`,
/// which is added to `reservations`. Two forwards of one protocol and host port are an error.
pub fn resolve(
    forwards: &[ForwardArg],
    reservations: &mut Vec<Reservation>,
    subnet: &Subnet,
    dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Result<Vec<Forward>, String> {
    let mut out: Vec<Forward> = Vec::new();
    for f in forwards {
        if out
            .iter()
            .any(|o| o.udp == f.udp && o.host_port == f.host_port)
        {
            let proto = if f.udp { "udp" } else { "tcp" };
            return Err(format!(
                "--forward: {proto}:{} is forwarded twice",
                f.host_port
            ));
        }
        let ip = match f.guest {
            Guest::Ip(ip) => {
                if !subnet.contains_host(ip) || ip == subnet.gateway() {
                    return Err(format!("--forward: {ip} is not a guest address of {subnet} (a host address other than the gateway {})", subnet.gateway()));
                }
                ip
            }
            Guest::Mac(mac) => match reservations.iter().find(|r| r.mac == mac) {
                Some(r) => r.ip,
                None => {
                    let ip = free_address(subnet, dhcp_range, reservations).ok_or_else(|| {
                        format!("--forward: no free address outside the DHCP range for {mac}; give it one with --reserve {mac}=IP")
                    })?;
                    reservations.push(Reservation { mac, ip });
                    ip
                }
            },
        };
        out.push(Forward {
            udp: f.udp,
            host_port: f.host_port,
            ip,
            port: f.port,
        });
    }
    Ok(out)
}

fn free_address(
    subnet: &Subnet,
    dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    reservations: &[Reservation],
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.gateway()) + 1;
    let last = u32::from(subnet.last_host());
    (first..=last).map(Ipv4Addr::from).find(|ip| {
        let leased = dhcp_range.is_some_and(|(a, b)| (a..=b).contains(ip));
        !leased && !reservations.iter().any(|r| r.ip == *ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_with_a_mac_or_an_ip() {
        let f: ForwardArg = "tcp:8080:52:54:00:12:34:56:80".parse().unwrap();
        assert_eq!((f.udp, f.host_port, f.port), (false, 8080, 80));
        assert_eq!(f.guest, Guest::Mac(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])));
        let f: ForwardArg = "udp:5353:10.86.0.50:53".parse().unwrap();
        assert_eq!(f.guest, Guest::Ip(Ipv4Addr::new(10, 86, 0, 50)));
        assert!(f.udp);
        for bad in [
            "tcp:8080:80",
            "sctp:1:10.86.0.5:2",
            "tcp:0:10.86.0.5:80",
            "tcp:8080:10.86.0.5:99999",
            "tcp:8080:01:00:5e:00:00:01:80",
            "tcp:8080:nonsense:80",
        ] {
            assert!(bad.parse::<ForwardArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_guests_get_a_stable_address_outside_the_dhcp_range() {
        let subnet: Subnet = "10.86.0.0/16".parse().unwrap();
        let range = Some((
            Ipv4Addr::new(10, 86, 0, 10),
            Ipv4Addr::new(10, 86, 255, 254),
        ));
        let mut reservations = vec!["52:54:00:00:00:02=10.86.0.2".parse().unwrap()];
        let args: Vec<ForwardArg> = [
            "tcp:2222:52:54:00:00:00:01:22",
            "udp:5353:52:54:00:00:00:01:53",
            "tcp:8080:52:54:00:00:00:02:80",
            "tcp:8081:10.86.0.77:80",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let fw = resolve(&args, &mut reservations, &subnet, range).unwrap();
        let ips: Vec<String> = fw.iter().map(|f| f.ip.to_string()).collect();
        assert_eq!(ips, ["10.86.0.3", "10.86.0.3", "10.86.0.2", "10.86.0.77"]);
        assert_eq!(reservations.len(), 2, "one address per MAC");
        assert_eq!(fw[0].to_string(), "tcp:2222 → 10.86.0.3:22");
        let twice: Vec<ForwardArg> = ["tcp:1:10.86.0.5:2", "tcp:1:10.86.0.6:2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert!(resolve(&twice, &mut Vec::new(), &subnet, range)
            .unwrap_err()
            .contains("twice"));
        let gateway: Vec<ForwardArg> = vec!["tcp:1:10.86.0.1:2".parse().unwrap()];
        assert!(resolve(&gateway, &mut Vec::new(), &subnet, range).is_err());
        // A /30 whose one free host is leased: the MAC needs --reserve.
        let small: Subnet = "10.9.0.0/30".parse().unwrap();
        let full = Some((Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 2)));
        let mac: Vec<ForwardArg> = vec!["tcp:1:52:54:00:00:00:09:2".parse().unwrap()];
        assert!(resolve(&mac, &mut Vec::new(), &small, full)
            .unwrap_err()
            .contains("--reserve"));
    }
}

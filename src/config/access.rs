//! `--allow-host-port`: which of the host's services guests may reach (see
//! `control::firewall`).

/// Which of the host's services guests may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAccess {
    /// Only DHCP, DNS and ICMP echo at the gateway, replies to the host's own connections,
    /// and these ports (`--allow-host-port`).
    Protected(Vec<HostPort>),
    /// Everything (`--allow-host-port all`): no input chain.
    Open,
}

/// `--allow-host-port PROTO:PORT[-PORT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub udp: bool,
    pub first: u16,
    pub last: u16,
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// Parses `tcp:22`, `udp:5000-5010`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not PROTO:PORT or PROTO:FIRST-LAST (e.g. tcp:22, udp:5000-5010), or all")
        };
        let (proto, ports) = text.split_once(':').ok_or_else(bad)?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(bad()),
        };
        let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
        let first: u16 = first.parse().map_err(|_| bad())?;
        let last: u16 = last.parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(HostPort { udp, first, last })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        if self.first == self.last {
            write!(f, "{proto}:{}", self.first)
        } else {
            write!(f, "{proto}:{}-{}", self.first, self.last)
        }
    }
}

/// One `--allow-host-port` value: a port (range) or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPortArg {
    All,
    Port(HostPort),
}

impl std::str::FromStr for HostPortArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "all" {
            Ok(HostPortArg::All)
        } else {
            text.parse().map(HostPortArg::Port)
        }
    }
}

impl HostAccess {
    /// The access the `--allow-host-port` values give.
    pub fn from_args(args: &[HostPortArg]) -> HostAccess {
        let mut ports = Vec::new();
        for a in args {
            match a {
                HostPortArg::All => return HostAccess::Open,
                HostPortArg::Port(p) => ports.push(*p),
            }
        }
        HostAccess::Protected(ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_parse() {
        let p: HostPort = "udp:5000-5010".parse().unwrap();
        assert_eq!((p.udp, p.first, p.last), (true, 5000, 5010));
        assert_eq!(p.to_string(), "udp:5000-5010");
        assert_eq!("tcp:22".parse::<HostPort>().unwrap().to_string(), "tcp:22");
        assert_eq!(
            HostAccess::from_args(&["tcp:22".parse().unwrap(), "all".parse().unwrap()]),
            HostAccess::Open
        );
        assert_eq!(HostAccess::from_args(&[]), HostAccess::Protected(vec![]));
        for bad in ["22", "sctp:22", "tcp:0", "tcp:10-5", "tcp:70000", "tcp:"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }
}

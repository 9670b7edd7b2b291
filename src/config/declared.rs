//! Networks declared in the config file, each with options of its own:
//!
//! ```toml
//! [[network]]
//! name = "lab"
//! subnet = "10.200.0.0/24"          # default: the next block of --network-pool
//! dhcp-range = "10.200.0.50,10.200.0.99"
//! nat = true                        # default: the instance's --nat (which names the uplink)
//! internet = false                  # "no internet": no NAT whatever nat says
//! isolate = true                    # default: the instance's --isolate
//! allow-host-port = ["tcp:22"]      # default: the instance's --allow-host-port
//! forward = ["tcp:2222:52:54:00:12:34:56:22"]
//! reserve = ["52:54:00:12:34:56=10.200.0.5"]
//! max-clients = 50                  # clients of this network at once (503 beyond)
//! client-rate = 1000000             # bytes per second from each client
//! client-broadcast-pps = 100
//! max-macs-per-client = 2
//! span = ["10.0.0.2", "10.0.0.3"]   # default: --span-peers; true, false or peers of its own
//! vni = 4242                        # default: from the name (the same on every host)
//! ```
//!
//! A declared network is made at start-up, before the relay takes clients, and never removed
//! while it runs.

use std::net::Ipv4Addr;

use super::forward::{self, Forward, ForwardArg};
use super::span::{SpanChoice, MAX_VNI};
use super::subnet::{default_range, DhcpRange, Reservation, Subnet};
use super::{HostAccess, HostPortArg};
use crate::networks::{overlap, valid_name, Pool, DEFAULT};

/// Limits of a network's clients that differ from the instance's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetLimits {
    /// Clients of the network at once; more are refused with `503`.
    pub max_clients: Option<usize>,
    pub client_rate: Option<u64>,
    pub client_broadcast_pps: Option<u64>,
    pub max_macs_per_client: Option<usize>,
}

/// A `[[network]]` table as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeclaredArgs {
    pub name: String,
    pub subnet: Option<Subnet>,
    pub dhcp_range: Option<DhcpRange>,
    pub nat: Option<bool>,
    pub internet: Option<bool>,
    pub isolate: Option<bool>,
    pub allow_host_ports: Option<Vec<HostPortArg>>,
    pub forwards: Vec<ForwardArg>,
    pub reservations: Vec<Reservation>,
    pub limits: NetLimits,
    pub span: SpanChoice,
    pub vni: Option<u32>,
}

/// A declared network, checked: everything the relay needs to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub subnet: Subnet,
    pub dhcp_range: (Ipv4Addr, Ipv4Addr),
    pub nat: bool,
    pub isolate: bool,
    pub host: HostAccess,
    pub forwards: Vec<Forward>,
    pub reservations: Vec<Reservation>,
    pub limits: NetLimits,
    /// Whether it spans the hosts of a farm (checked with the instance's options in
    /// [`super::span`]).
    pub span: SpanChoice,
    /// Its own VXLAN network identifier, when it spans.
    pub vni: Option<u32>,
}

/// What a declared network takes from the instance when it does not say.
pub struct InstanceDefaults<'a> {
    pub nat: bool,
    pub isolate: bool,
    pub host: &'a HostAccess,
    pub default_subnet: &'a Subnet,
}

/// The `network` key of a config file: its tables as written. `where_` names the file.
pub fn parse(where_: &str, value: &toml::Value) -> Result<Vec<DeclaredArgs>, String> {
    let toml::Value::Array(tables) = value else {
        return Err(format!(
            "{where_}: network: write each network as a [[network]] table"
        ));
    };
    tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let toml::Value::Table(t) = t else {
                return Err(format!(
                    "{where_}: network #{}: write each network as a [[network]] table",
                    i + 1
                ));
            };
            parse_one(t).map_err(|e| format!("{where_}: network #{}: {e}", i + 1))
        })
        .collect()
}

fn parse_one(t: &toml::map::Map<String, toml::Value>) -> Result<DeclaredArgs, String> {
    let mut d = DeclaredArgs::default();
    let text = |key: &str, v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            _ => Err(format!("{key}: give a string or a number")),
        }
    };
    let list = |key: &str, v: &toml::Value| -> Result<Vec<String>, String> {
        match v {
            toml::Value::Array(items) => items.iter().map(|i| text(key, i)).collect(),
            other => Ok(vec![text(key, other)?]),
        }
    };
    let flag = |key: &str, v: &toml::Value| -> Result<bool, String> {
        v.as_bool()
            .ok_or_else(|| format!("{key}: give true or false"))
    };
    fn parsed<T: std::str::FromStr>(key: &str, s: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        s.parse().map_err(|e| format!("{key}: {e}"))
    }
    for (key, v) in t {
        let k = key.as_str();
        match k {
            "name" => d.name = text(k, v)?,
            "subnet" => d.subnet = Some(parsed(k, &text(k, v)?)?),
            "dhcp-range" => d.dhcp_range = Some(parsed(k, &text(k, v)?)?),
            "nat" => d.nat = Some(flag(k, v)?),
            "internet" => d.internet = Some(flag(k, v)?),
            "isolate" => d.isolate = Some(flag(k, v)?),
            "allow-host-port" => {
                d.allow_host_ports = Some(
                    list(k, v)?
                        .iter()
                        .map(|s| parsed(k, s))
                        .collect::<Result<_, _>>()?,
                )
            }
            "forward" => {
                d.forwards = list(k, v)?
                    .iter()
                    .map(|s| parsed(k, s))
                    .collect::<Result<_, _>>()?
            }
            "reserve" => {
                d.reservations = list(k, v)?
                    .iter()
                    .map(|s| parsed(k, s))
                    .collect::<Result<_, _>>()?
            }
            "max-clients" => d.limits.max_clients = Some(parsed(k, &text(k, v)?)?),
            "client-rate" => d.limits.client_rate = Some(parsed(k, &text(k, v)?)?),
            "client-broadcast-pps" => {
                d.limits.client_broadcast_pps = Some(parsed(k, &text(k, v)?)?)
            }
            "max-macs-per-client" => {
                d.limits.max_macs_per_client = Some(parsed(k, &text(k, v)?)?)
            }
            "span" => {
                d.span = match v {
                    toml::Value::Boolean(true) => SpanChoice::On,
                    toml::Value::Boolean(false) => SpanChoice::Off,
                    toml::Value::Array(_) => SpanChoice::Peers(
                        list(k, v)?
                            .iter()
                            .map(|s| parsed(k, s))
                            .collect::<Result<_, _>>()?,
                    ),
                    _ => return Err(format!("{k}: give true, false or a list of peer addresses")),
                }
            }
            "vni" => {
                let n: u32 = parsed(k, &text(k, v)?)?;
                if !(1..=MAX_VNI).contains(&n) {
                    return Err(format!("{k}: give 1 to {MAX_VNI}"));
                }
                d.vni = Some(n);
            }
            other => {
                return Err(format!(
                    "unknown key {other} (a network takes name, subnet, dhcp-range, nat, internet, isolate, allow-host-port, forward, reserve, max-clients, client-rate, client-broadcast-pps, max-macs-per-client, span, vni)"
                ))
            }
        }
    }
    if d.name.is_empty() {
        return Err("name is missing".into());
    }
    Ok(d)
}

/// Checks the declared networks against each other and the instance, giving those without a
/// subnet the next blocks of `pool` (which then never hands them out to networks made on
/// demand).
pub fn validate(
    args: &[DeclaredArgs],
    instance: &InstanceDefaults<'_>,
    pool: &mut Pool,
) -> Result<Vec<Declared>, String> {
    for (i, d) in args.iter().enumerate() {
        let at = format!("network {}", d.name);
        if !valid_name(&d.name) || d.name == DEFAULT {
            return Err(format!(
                "{at}: a name is 1 to 32 letters, digits, _ or -, and not {DEFAULT}"
            ));
        }
        if args[..i].iter().any(|e| e.name == d.name) {
            return Err(format!("{at}: declared twice"));
        }
        if let Some(s) = &d.subnet {
            if overlap(s, instance.default_subnet) {
                return Err(format!(
                    "{at}: subnet {s} overlaps the default network's {}",
                    instance.default_subnet
                ));
            }
            if let Some(e) = args[..i]
                .iter()
                .find(|e| e.subnet.is_some_and(|o| overlap(&o, s)))
            {
                return Err(format!("{at}: subnet {s} overlaps network {}'s", e.name));
            }
            pool.exclude(s);
        }
    }
    let mut out = Vec::new();
    for d in args {
        let at = format!("network {}", d.name);
        let subnet = match d.subnet {
            Some(s) => s,
            None => pool.take().ok_or_else(|| {
                format!("{at}: --network-pool has no free block left for it; give it a subnet")
            })?,
        };
        let dhcp_range = match d.dhcp_range {
            Some(DhcpRange(start, end)) => {
                for ip in [start, end] {
                    if !subnet.contains_host(ip) || ip == subnet.gateway() {
                        return Err(format!(
                            "{at}: dhcp-range: {ip} is not a host address of {subnet} other than the gateway {}",
                            subnet.gateway()
                        ));
                    }
                }
                (start, end)
            }
            None => default_range(&subnet),
        };
        if d.nat == Some(true) && !instance.nat {
            return Err(format!(
                "{at}: nat = true needs --nat on the relay (it turns on forwarding and names the uplink)"
            ));
        }
        if d.nat == Some(true) && d.internet == Some(false) {
            return Err(format!(
                "{at}: nat = true and internet = false contradict each other"
            ));
        }
        let nat = d.internet != Some(false) && d.nat.unwrap_or(instance.nat);
        for r in &d.reservations {
            if !subnet.contains_host(r.ip) || r.ip == subnet.gateway() {
                return Err(format!(
                    "{at}: reserve {}={}: not a host address of {subnet} other than the gateway",
                    r.mac, r.ip
                ));
            }
        }
        let mut reservations = d.reservations.clone();
        let forwards = forward::resolve(&d.forwards, &mut reservations, &subnet, Some(dhcp_range))
            .map_err(|e| format!("{at}: {e}"))?;
        if d.limits.max_clients == Some(0) || d.limits.max_macs_per_client == Some(0) {
            return Err(format!(
                "{at}: max-clients and max-macs-per-client must be at least 1"
            ));
        }
        out.push(Declared {
            name: d.name.clone(),
            subnet,
            dhcp_range,
            nat,
            isolate: d.isolate.unwrap_or(instance.isolate),
            host: d
                .allow_host_ports
                .as_deref()
                .map_or_else(|| instance.host.clone(), HostAccess::from_args),
            forwards,
            reservations,
            limits: d.limits,
            span: d.span.clone(),
            vni: d.vni,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Value {
        let v: toml::Table = toml::from_str(text).unwrap();
        v["network"].clone()
    }

    fn defaults() -> (HostAccess, Subnet) {
        (
            HostAccess::Protected(vec![]),
            "10.86.0.0/16".parse().unwrap(),
        )
    }

    #[test]
    fn declared_networks_take_their_options_or_the_instances() {
        let args = parse(
            "t.toml",
            &table(
                r#"
[[network]]
name = "lab"
subnet = "10.200.0.0/24"
dhcp-range = "10.200.0.50,10.200.0.99"
internet = false
isolate = true
allow-host-port = ["tcp:22"]
forward = ["tcp:2222:52:54:00:12:34:56:22"]
max-clients = 50
client-rate = 1000000

span = false

[[network]]
name = "open"
span = ["10.0.0.2", "10.0.0.3"]
vni = 4242
"#,
            ),
        )
        .unwrap();
        assert_eq!(args.len(), 2);
        let (host, default_subnet) = defaults();
        let instance = InstanceDefaults {
            nat: true,
            isolate: false,
            host: &host,
            default_subnet: &default_subnet,
        };
        let mut pool = Pool::new("10.200.0.0/22".parse().unwrap(), 24).unwrap();
        let d = validate(&args, &instance, &mut pool).unwrap();
        assert_eq!(d[0].subnet.to_string(), "10.200.0.0/24");
        assert_eq!(d[0].dhcp_range.0.to_string(), "10.200.0.50");
        assert!(!d[0].nat, "internet = false");
        assert!(d[0].isolate);
        assert_eq!(
            d[0].host,
            HostAccess::Protected(vec!["tcp:22".parse().unwrap()])
        );
        assert_eq!(
            d[0].forwards[0].ip.to_string(),
            "10.200.0.2",
            "outside the range"
        );
        assert_eq!(d[0].limits.max_clients, Some(50));
        assert_eq!(
            d[1].subnet.to_string(),
            "10.200.1.0/24",
            "the next free block, not the declared one"
        );
        assert!(d[1].nat && !d[1].isolate, "the instance's");
        assert_eq!(pool.take().unwrap().to_string(), "10.200.2.0/24");
        assert_eq!(d[0].span, SpanChoice::Off);
        assert_eq!(
            d[1].span,
            SpanChoice::Peers(vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.3".parse().unwrap()
            ])
        );
        assert_eq!((d[0].vni, d[1].vni), (None, Some(4242)));
    }

    #[test]
    fn bad_declarations_are_refused_with_the_network_and_the_reason() {
        let (host, default_subnet) = defaults();
        let instance = InstanceDefaults {
            nat: false,
            isolate: false,
            host: &host,
            default_subnet: &default_subnet,
        };
        let err = |text: &str| {
            let mut pool = Pool::new("10.96.0.0/12".parse().unwrap(), 24).unwrap();
            match parse("t.toml", &table(text)) {
                Err(e) => e,
                Ok(args) => validate(&args, &instance, &mut pool).unwrap_err(),
            }
        };
        assert!(err("[[network]]\nname = \"a\"\nbogus = 1\n").contains("unknown key bogus"));
        assert!(err("[[network]]\nsubnet = \"10.1.0.0/24\"\n").contains("name is missing"));
        assert!(err("[[network]]\nname = \"default\"\n").contains("not default"));
        assert!(err("[[network]]\nname = \"a\"\n[[network]]\nname = \"a\"\n").contains("twice"));
        assert!(
            err("[[network]]\nname = \"a\"\nsubnet = \"10.86.1.0/24\"\n")
                .contains("overlaps the default")
        );
        assert!(err("[[network]]\nname = \"a\"\nnat = true\n").contains("needs --nat"));
        assert!(err("[[network]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\ndhcp-range = \"10.1.1.5,10.1.1.9\"\n")
            .contains("dhcp-range"));
        assert!(err("[[network]]\nname = \"a\"\nmax-clients = 0\n").contains("at least 1"));
        assert!(err("[[network]]\nname = \"a\"\nisolate = \"yes\"\n").contains("true or false"));
        assert!(err("network = 3\n").contains("[[network]]"));
        assert!(
            err("[[network]]\nname = \"a\"\nspan = \"yes\"\n").contains("true, false or a list")
        );
        assert!(err("[[network]]\nname = \"a\"\nspan = [\"h\"]\n").contains("span"));
        assert!(err("[[network]]\nname = \"a\"\nvni = 0\n").contains("1 to 16777215"));
    }
}

//! Options of `tapwire run` and their validation. No I/O here: [`RunArgs::validate`] turns
//! what the user typed (flags or `TAPWIRE_*` variables) into a checked [`Config`], or says
//! exactly which option is wrong and why.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::ifname::IfName;

mod access;
mod auth;
mod client;
pub mod declared;
mod farm;
pub mod file;
mod forward;
mod networks;
mod span;
mod subnet;
mod tls;
mod values;
pub use access::{HostAccess, HostPort, HostPortArg};
pub use auth::{read_admin_token, read_token_secret};
pub use client::ClientPolicy;
pub use declared::{Declared, NetLimits};
pub use farm::{Farm, FarmArgs, Slice};
pub use file::LoadError;
pub use forward::{Forward, ForwardArg};
pub use networks::{tap_name as network_tap_name, NetworkArgs, Networks, NetworksMode};
pub use span::{
    fits_underlay, vni, vni_of, Span, SpanArgs, SpanChoice, VXLAN_OVERHEAD, VXLAN_PORT,
};
pub use subnet::default_range;
pub use subnet::{DhcpRange, Reservation, Subnet};
pub use tls::TlsListen;
use values::parse_lease_time;
pub use values::{parse_duration, parse_metrics_addr};

/// Ethernet header (14) plus one 802.1Q tag (4).
pub const ETHERNET_OVERHEAD: usize = 18;
/// Largest frame we ever accept: v86's virtio NIC with MTU 65535, plus header and VLAN tag.
pub const MAX_FRAME_LIMIT: usize = 65_535 + ETHERNET_OVERHEAD;
/// Largest MTU a Linux TAP takes: 65535 less its 14-byte link header (the kernel's
/// `max_mtu`). A guest's own MTU may still be 65535, so at this MTU the default
/// `--max-frame` is [`MAX_FRAME_LIMIT`].
pub const TAP_MAX_MTU: u32 = 65_521;

/// Options of `tapwire run`, each parsed into its type by its value parser (a bad value is
/// refused by clap with the option's name). [`RunArgs::validate`] checks only the rules
/// that join several options.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Read options from this TOML file (keys: the long options, e.g. `max-clients = 5000`);
    /// the command line and the environment take precedence over it.
    #[arg(long, env = "TAPWIRE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and port to accept WebSocket clients on.
    #[arg(long, env = "TAPWIRE_LISTEN", default_value = "127.0.0.1:8086")]
    pub listen: SocketAddr,
    /// Also accept wss:// clients on this address and port (TLS in every core's loop; needs
    /// --tls-cert and --tls-key).
    #[arg(long, env = "TAPWIRE_LISTEN_TLS", value_name = "ADDR:PORT")]
    pub listen_tls: Option<SocketAddr>,
    /// Certificate for --listen-tls: PEM, the leaf first, then its chain; re-read on SIGHUP.
    #[arg(long, env = "TAPWIRE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert: PEM (PKCS#8, PKCS#1 or SEC1); re-read on SIGHUP.
    #[arg(long, env = "TAPWIRE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Number of cores (threads, TAP queues, listeners) to use, 1 to 128; default: all
    /// available (at most 128).
    #[arg(long, env = "TAPWIRE_CORES", value_parser = in_range(1, MAX_CORES))]
    pub cores: Option<usize>,
    /// Name of the TAP interface tapwire creates (non-persistent: gone when tapwire exits).
    #[arg(long, env = "TAPWIRE_TAP", default_value = "tapwire0")]
    pub tap: IfName,
    /// Guest subnet; its first host address is the gateway and is put on the TAP.
    #[arg(long, env = "TAPWIRE_SUBNET", default_value = "10.86.0.0/16")]
    pub subnet: Subnet,
    /// Enslave the TAP to this existing bridge instead of addressing it (no DHCP is started).
    #[arg(long, env = "TAPWIRE_ATTACH_BRIDGE")]
    pub attach_bridge: Option<IfName>,
    /// MTU of the TAP (68 to 65521, the largest a Linux TAP takes).
    #[arg(long, env = "TAPWIRE_MTU", default_value_t = 1500, value_parser = clap::value_parser!(u32).range(68..=TAP_MAX_MTU as i64))]
    pub mtu: u32,
    /// Largest Ethernet frame accepted from a client, in bytes; default: MTU + 18 (header and
    /// a VLAN tag), and 65553 at MTU 65521 (a v86 virtio guest's MTU may be 65535).
    #[arg(long, env = "TAPWIRE_MAX_FRAME", value_parser = in_range(60, MAX_FRAME_LIMIT))]
    pub max_frame: Option<usize>,
    /// Do not start dnsmasq (no DHCP/DNS for guests).
    #[arg(long, env = "TAPWIRE_NO_DHCP")]
    pub no_dhcp: bool,
    /// First and last address dnsmasq leases, as START,END; default: from the 10th host
    /// address to the last one of the subnet.
    #[arg(long, env = "TAPWIRE_DHCP_RANGE")]
    pub dhcp_range: Option<DhcpRange>,
    /// Lease time handed out by dnsmasq (e.g. 12h, 30m, 3600); at least 2m.
    #[arg(long, env = "TAPWIRE_DHCP_LEASE_TIME", default_value = "12h", value_parser = parse_lease_time)]
    pub dhcp_lease_time: Duration,
    /// DNS servers handed to guests (comma-separated); default: the gateway, where dnsmasq
    /// answers and forwards to the host's resolvers.
    #[arg(long, env = "TAPWIRE_DNS", value_delimiter = ',')]
    pub dns: Vec<Ipv4Addr>,
    /// Guests talk only to the gateway and the uplink, never to each other; their broadcasts go
    /// only to the uplink.
    #[arg(long, env = "TAPWIRE_ISOLATE")]
    pub isolate: bool,
    /// Let guests reach beyond the host: masquerade their traffic out of the uplink (rules in
    /// one nftables table of this instance; IPv4 forwarding is turned on and restored at exit).
    #[arg(long, env = "TAPWIRE_NAT")]
    pub nat: bool,
    /// The uplink for --nat; default: the interface of this namespace's default route.
    #[arg(long, env = "TAPWIRE_UPLINK")]
    pub uplink: Option<IfName>,
    /// Turn anti-spoofing off: guests may send from any IPv4 address, answer ARP for any
    /// address and act as DHCP servers (for guests with static addresses tapwire cannot know).
    #[arg(long, env = "TAPWIRE_ALLOW_SPOOFING")]
    pub allow_spoofing: bool,
    /// Forward a port of the host into a guest (repeatable): tcp:HOSTPORT:GUEST:PORT or
    /// udp:…, GUEST a MAC (its address is reserved) or an IPv4 address. Reachable from other
    /// hosts, and from this host at its addresses; on 127.0.0.1 only TCP is proxied.
    #[arg(
        long = "forward",
        env = "TAPWIRE_FORWARD",
        value_delimiter = ',',
        value_name = "PROTO:HOSTPORT:GUEST:PORT"
    )]
    pub forwards: Vec<ForwardArg>,
    /// Serve live counters on GET /metrics (Prometheus text) and GET /healthz at ADDR:PORT, or
    /// at 127.0.0.1:PORT when only a port is given.
    #[arg(long, env = "TAPWIRE_METRICS", value_parser = parse_metrics_addr, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// The admin API (/api/ on the --metrics listener) requires `Authorization: Bearer TOKEN`
    /// with the token in FILE (at least 16 characters); needed to use it when --metrics is not
    /// on loopback.
    #[arg(long, env = "TAPWIRE_ADMIN_TOKEN", value_name = "FILE")]
    pub admin_token: Option<PathBuf>,
    /// Require clients to present a token signed with the secret in FILE (at least 16 bytes),
    /// as ?token=… in the URL; `tapwire token` makes them.
    #[arg(long, env = "TAPWIRE_TOKEN_SECRET", value_name = "FILE")]
    pub token_secret: Option<PathBuf>,
    /// A browser origin allowed to connect (repeatable), e.g. https://farm.example; other
    /// browsers' Origin headers are refused (403). Clients that send no Origin are not browsers.
    #[arg(
        long = "allow-origin",
        env = "TAPWIRE_ALLOW_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allow_origins: Vec<String>,
    /// A host port guests may reach (repeatable): tcp:22, udp:5000-5010, or all (no host
    /// protection). By default the host answers guests only DHCP, DNS and ping at the gateway.
    #[arg(
        long = "allow-host-port",
        env = "TAPWIRE_ALLOW_HOST_PORT",
        value_delimiter = ',',
        value_name = "PROTO:PORT"
    )]
    pub allow_host_ports: Vec<HostPortArg>,
    /// Fixed address for a guest's MAC, as MAC=IP (repeatable): dnsmasq always leases it to
    /// that MAC, and the guest may use it even without DHCP.
    #[arg(
        long = "reserve",
        env = "TAPWIRE_RESERVE",
        value_delimiter = ',',
        value_name = "MAC=IP"
    )]
    pub reservations: Vec<Reservation>,
    #[command(flatten)]
    pub clients: ClientPolicy,
    #[command(flatten)]
    pub networks: NetworkArgs,
    #[command(flatten)]
    pub farm: FarmArgs,
    #[command(flatten)]
    pub span: SpanArgs,
    /// Networks declared in the `--config` file (`[[network]]` tables).
    #[arg(skip)]
    pub declared: Vec<declared::DeclaredArgs>,
    /// Use single-shot io_uring operations even where the kernel has multishot ones (for
    /// testing the fallback path used on older kernels).
    #[arg(long, env = "TAPWIRE_IO_FALLBACK")]
    pub io_fallback: bool,
    /// Let the kernel hand TCP traffic for guests to the relay as super-frames of up to
    /// 64 KiB, which the relay cuts into frames of the MTU (the TAP's checksum and TCP
    /// segmentation offloads); TAP read buffers then take 64 KiB each, 1 024 per core.
    #[arg(long, env = "TAPWIRE_OFFLOAD")]
    pub offload: bool,
    /// Directory for the ledger of host changes and the dnsmasq lease file.
    #[arg(long, env = "TAPWIRE_RUNTIME_DIR", default_value = "/run/tapwire")]
    pub runtime_dir: PathBuf,
    /// How much to log.
    #[arg(long, env = "TAPWIRE_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Most cores tapwire drives (the core number is 8 bits of a port id, and 128 leaves room).
pub const MAX_CORES: usize = 128;

/// A value parser for integers from `min` to `max`.
fn in_range(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text| {
        let v: usize = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a whole number"))?;
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is not between {min} and {max}"))
        }
    }
}

/// A rule that joins several options was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-frame {max_frame} is smaller than --mtu {mtu} plus the 14-byte Ethernet header; raise --max-frame to at least {}", mtu + 14)]
    MaxFrameBelowMtu { max_frame: usize, mtu: usize },
    #[error("--dhcp-range and --dns do not apply with --attach-bridge: DHCP is the bridge owner's business")]
    DhcpWithBridge,
    #[error(
        "--nat needs a routed TAP: with --attach-bridge the bridge's owner routes guest traffic"
    )]
    NatWithBridge,
    #[error("--uplink names the interface --nat masquerades out of: add --nat, or drop --uplink")]
    UplinkWithoutNat,
    #[error("--reserve {mac}={ip}: {ip} is not a host address of {subnet} other than the gateway {gateway}")]
    ReservationOutsideSubnet {
        mac: crate::switch::Mac,
        ip: Ipv4Addr,
        subnet: Subnet,
        gateway: Ipv4Addr,
    },
    #[error("{0}")]
    Forward(String),
    #[error("{0}")]
    Networks(String),
    #[error("{0}")]
    Access(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Farm(String),
    #[error("{0}")]
    Span(String),
    #[error("--forward needs a routed TAP: with --attach-bridge guests are on the bridge's LAN")]
    ForwardWithBridge,
    #[error("--reserve: {0} is given twice; each MAC and each address may be reserved once")]
    ReservedTwice(String),
    #[error(
        "--dhcp-range: {ip} is not a host address of {subnet} other than the gateway {gateway}"
    )]
    RangeOutsideSubnet {
        ip: Ipv4Addr,
        subnet: Subnet,
        gateway: Ipv4Addr,
    },
}

/// DHCP settings for the managed dnsmasq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp {
    /// First and last leased address.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Lease time.
    pub lease_time: Duration,
    /// DNS servers handed out (empty: the gateway).
    pub dns: Vec<Ipv4Addr>,
}

/// Where the TAP goes on the host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSide {
    /// The TAP carries the gateway address of `subnet`; dnsmasq serves it unless `dhcp` is None.
    Routed { subnet: Subnet, dhcp: Option<Dhcp> },
    /// The TAP is enslaved to this existing bridge.
    Bridge(IfName),
}

impl HostSide {
    /// The default network's DHCP, when tapwire runs it.
    pub fn dhcp(&self) -> Option<&Dhcp> {
        match self {
            HostSide::Routed { dhcp, .. } => dhcp.as_ref(),
            HostSide::Bridge(_) => None,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The wss:// listener and its certificate, when enabled.
    pub tls: Option<TlsListen>,
    pub cores: usize,
    pub tap: IfName,
    pub host: HostSide,
    pub mtu: u32,
    pub max_frame: usize,
    pub clients: ClientPolicy,
    pub io_fallback: bool,
    /// `--offload`: the TAP's checksum and TCP segmentation offloads.
    pub offload: bool,
    pub runtime_dir: PathBuf,
    pub log_level: log::LevelFilter,
    /// Masquerade guest traffic out of an uplink (`None`: no NAT).
    pub nat: Option<Nat>,
    /// Guests talk only to the uplink.
    pub isolate: bool,
    /// No anti-spoofing checks.
    pub allow_spoofing: bool,
    /// Which host services guests reach (routed TAP only).
    pub host_access: HostAccess,
    /// Host ports forwarded into guests (routed TAP only).
    pub forwards: Vec<Forward>,
    /// Where live metrics are served.
    pub metrics: Option<SocketAddr>,
    /// Who may connect.
    pub access: crate::ws::access::Access,
    /// Fixed MAC → address pairs (checked to lie in the subnet when routed).
    pub reservations: Vec<Reservation>,
    /// Networks other than the default one.
    pub networks: Networks,
    /// `--admin-token`'s token.
    pub admin_token: Option<String>,
    /// This host's part in a farm (trusted proxies, host name, DHCP slice).
    pub farm: Farm,
    /// Networks that span the farm's hosts over VXLAN (`None`: none does).
    pub span: Option<Span>,
}

/// NAT egress settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    /// The uplink interface; `None`: the default route's, found at start.
    pub uplink: Option<IfName>,
}

/// The default `--max-frame` for `mtu`: the MTU plus header and VLAN tag; at the TAP's largest
/// MTU, the largest frame any guest sends (its MTU is not bound by the TAP's).
pub fn default_max_frame(mtu: u32) -> usize {
    if mtu >= TAP_MAX_MTU {
        MAX_FRAME_LIMIT
    } else {
        mtu as usize + ETHERNET_OVERHEAD
    }
}

impl RunArgs {
    /// Checks the rules that join several options; `available_cores` is what the machine
    /// offers.
    pub fn validate(&self, available_cores: usize) -> Result<Config, ConfigError> {
        let cores = self.cores.unwrap_or(available_cores.clamp(1, MAX_CORES));
        let mtu = self.mtu as usize;
        let max_frame = self.max_frame.unwrap_or(default_max_frame(self.mtu));
        if max_frame < mtu + 14 {
            return Err(ConfigError::MaxFrameBelowMtu { max_frame, mtu });
        }
        if self.uplink.is_some() && !self.nat {
            return Err(ConfigError::UplinkWithoutNat);
        }
        for (i, r) in self.reservations.iter().enumerate() {
            for earlier in &self.reservations[..i] {
                if earlier.mac == r.mac {
                    return Err(ConfigError::ReservedTwice(r.mac.to_string()));
                }
                if earlier.ip == r.ip {
                    return Err(ConfigError::ReservedTwice(r.ip.to_string()));
                }
            }
        }
        let mut reservations = self.reservations.clone();
        let mut forwards = Vec::new();
        let host = match &self.attach_bridge {
            Some(_) if self.nat => return Err(ConfigError::NatWithBridge),
            Some(_) if !self.forwards.is_empty() => return Err(ConfigError::ForwardWithBridge),
            Some(bridge) => {
                if self.dhcp_range.is_some() || !self.dns.is_empty() {
                    return Err(ConfigError::DhcpWithBridge);
                }
                HostSide::Bridge(bridge.clone())
            }
            None => {
                let subnet = self.subnet;
                for r in &self.reservations {
                    if !subnet.contains_host(r.ip) || r.ip == subnet.gateway() {
                        return Err(ConfigError::ReservationOutsideSubnet {
                            mac: r.mac,
                            ip: r.ip,
                            subnet,
                            gateway: subnet.gateway(),
                        });
                    }
                }
                let dhcp = if self.no_dhcp {
                    None
                } else {
                    let range = match self.dhcp_range {
                        Some(DhcpRange(start, end)) => {
                            for ip in [start, end] {
                                if !subnet.contains_host(ip) || ip == subnet.gateway() {
                                    return Err(ConfigError::RangeOutsideSubnet {
                                        ip,
                                        subnet,
                                        gateway: subnet.gateway(),
                                    });
                                }
                            }
                            (start, end)
                        }
                        None => default_range(&subnet),
                    };
                    Some(Dhcp {
                        range,
                        lease_time: self.dhcp_lease_time,
                        dns: self.dns.clone(),
                    })
                };
                forwards = forward::resolve(
                    &self.forwards,
                    &mut reservations,
                    &subnet,
                    dhcp.as_ref().map(|d| d.range),
                )
                .map_err(ConfigError::Forward)?;
                if let Some(f) = forwards
                    .iter()
                    .find(|f| !f.udp && f.host_port == self.listen.port())
                {
                    return Err(ConfigError::Forward(format!(
                        "--forward {f}: port {} is tapwire's own --listen port; pick another host port",
                        f.host_port
                    )));
                }
                HostSide::Routed { subnet, dhcp }
            }
        };
        let default_subnet = match &host {
            HostSide::Routed { subnet, .. } => Some(subnet),
            HostSide::Bridge(_) => None,
        };
        let host_access = HostAccess::from_args(&self.allow_host_ports);
        let networks = self
            .networks
            .validate(
                &self.tap,
                default_subnet,
                &self.declared,
                (self.nat, self.isolate, &host_access),
            )
            .map_err(ConfigError::Networks)?;
        let mut host_ports: Vec<(bool, u16)> = Vec::new();
        for f in forwards
            .iter()
            .chain(networks.declared.iter().flat_map(|d| &d.forwards))
        {
            let proto = if f.udp { "udp" } else { "tcp" };
            if host_ports.contains(&(f.udp, f.host_port)) {
                return Err(ConfigError::Forward(format!(
                    "forward {proto}:{}: forwarded twice (by --forward or a network's forward)",
                    f.host_port
                )));
            }
            if !f.udp && f.host_port == self.listen.port() {
                return Err(ConfigError::Forward(format!(
                    "forward {f}: port {} is tapwire's own --listen port; pick another host port",
                    f.host_port
                )));
            }
            host_ports.push((f.udp, f.host_port));
        }
        let farm = self.farm.validate().map_err(ConfigError::Farm)?;
        farm.fits(&host, &networks).map_err(ConfigError::Farm)?;
        let span = self
            .span
            .validate(
                &networks.declared,
                matches!(host, HostSide::Bridge(_)),
                self.isolate,
            )
            .map_err(ConfigError::Span)?;
        let admin_token = match &self.admin_token {
            None => None,
            Some(path) => Some(read_admin_token(path).map_err(ConfigError::Access)?),
        };
        Ok(Config {
            networks,
            admin_token,
            farm,
            span,
            listen: self.listen,
            tls: self.tls()?,
            cores,
            tap: self.tap.clone(),
            host,
            mtu: self.mtu,
            max_frame,
            clients: self.clients.clone(),
            io_fallback: self.io_fallback,
            offload: self.offload,
            runtime_dir: self.runtime_dir.clone(),
            log_level: self.log_level.into(),
            nat: self.nat.then(|| Nat {
                uplink: self.uplink.clone(),
            }),
            isolate: self.isolate,
            allow_spoofing: self.allow_spoofing,
            host_access: HostAccess::from_args(&self.allow_host_ports),
            reservations,
            forwards,
            metrics: self.metrics,
            access: self.access()?,
        })
    }
}

#[cfg(test)]
mod tests;

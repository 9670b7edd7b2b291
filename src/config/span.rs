//! Options for networks that span the hosts of a farm (docs/scale-out.md): a network's host
//! side is a Linux bridge with the network's TAP and a kernel VXLAN device on it, unicast to
//! the peer hosts, so that the guests of one network on several hosts share one segment.
//!
//! `--span-peers` spans every network reached by `/n/NAME`; a declared network may say
//! `span = false`, or give peers of its own (`span = ["10.0.0.2", …]`). The default network
//! never spans.

use std::net::Ipv4Addr;

use clap::Args;

use super::declared::Declared;
use crate::ifname::IfName;

/// The UDP port of every VXLAN device (IANA's).
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN adds to a guest's frame on the underlay: outer IPv4 (20), UDP (8), VXLAN (8)
/// and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The largest VXLAN network identifier (24 bits; 0 is left unused).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// `tapwire run`'s spanning options, as given.
#[derive(Debug, Clone, Default, Args)]
pub struct SpanArgs {
    /// Span every network reached by /n/NAME to these hosts (underlay IPv4 addresses, comma
    /// separated; this host's own address may be in the list and is skipped): its guests
    /// share one Ethernet segment with its guests on those hosts, over VXLAN.
    #[arg(
        long = "span-peers",
        env = "TAPWIRE_SPAN_PEERS",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub peers: Vec<Ipv4Addr>,
    /// The interface that carries the overlay to the peers (its first IPv4 address is this
    /// host's end of every tunnel; its MTU must take a guest frame plus 50 bytes).
    #[arg(long = "span-dev", env = "TAPWIRE_SPAN_DEV", value_name = "IFACE")]
    pub dev: Option<IfName>,
}

/// Whether a declared network spans, as its `span` key says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpanChoice {
    /// No `span` key: as `--span-peers` says.
    #[default]
    Inherit,
    /// `span = true`: to `--span-peers`.
    On,
    /// `span = false`: never.
    Off,
    /// `span = ["ADDR", …]`: to these hosts.
    Peers(Vec<Ipv4Addr>),
}

/// The spanning options, checked: present when at least one network may span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The underlay interface.
    pub dev: IfName,
    /// `--span-peers` (empty: only declared networks with peers of their own span).
    pub peers: Vec<Ipv4Addr>,
}

impl Span {
    /// The peers of a declared network that spans, or `None`.
    pub fn peers_of(&self, choice: &SpanChoice) -> Option<Vec<Ipv4Addr>> {
        match choice {
            SpanChoice::Inherit | SpanChoice::On if !self.peers.is_empty() => {
                Some(self.peers.clone())
            }
            SpanChoice::Peers(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// The peers of a network made on demand, or `None`.
    pub fn on_demand(&self) -> Option<Vec<Ipv4Addr>> {
        (!self.peers.is_empty()).then(|| self.peers.clone())
    }
}

/// The VXLAN network identifier of network `name`: the same on every host, from its name
/// (24 bits of SHA-256, never 0).
pub fn vni(name: &str) -> u32 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"tapwire vni\0");
    h.update(name.as_bytes());
    let d = h.finalize();
    let v = u32::from_be_bytes([0, d[0], d[1], d[2]]);
    if v == 0 {
        1
    } else {
        v
    }
}

/// The VNI of a declared network: its own `vni` key, else from its name.
pub fn vni_of(d: &Declared) -> u32 {
    d.vni.unwrap_or_else(|| vni(&d.name))
}

impl SpanArgs {
    /// Checks the options with the `declared` networks, whether only the default network
    /// exists (`--attach-bridge`) and the instance's `--isolate`.
    pub fn validate(
        &self,
        declared: &[Declared],
        attached: bool,
        isolate: bool,
    ) -> Result<Option<Span>, String> {
        if let Some(p) = duplicate(&self.peers) {
            return Err(format!("--span-peers: {p} is given twice"));
        }
        let own: Vec<&Declared> = declared
            .iter()
            .filter(|d| matches!(d.span, SpanChoice::On | SpanChoice::Peers(_)))
            .collect();
        if self.peers.is_empty() && self.dev.is_none() && own.is_empty() {
            return Ok(None);
        }
        if attached {
            return Err("--span-peers needs a routed TAP: with --attach-bridge there is only the default network, which never spans".into());
        }
        let Some(dev) = self.dev.clone() else {
            return Err("--span-peers and a network's span need --span-dev IFACE, the interface that carries the overlay to the other hosts".into());
        };
        let span = Span {
            dev,
            peers: self.peers.clone(),
        };
        if self.peers.is_empty() && own.is_empty() {
            return Err(format!(
                "--span-dev {}: no network spans (give --span-peers, or span = [...] to a [[network]])",
                span.dev
            ));
        }
        if !span.peers.is_empty() && isolate {
            return Err("--span-peers and --isolate exclude each other: an isolated guest talks only to its gateway, never to a guest on another host; leave out one of them (a declared network may still be isolated if it says span = false)".into());
        }
        let mut vnis: Vec<(u32, &str)> = Vec::new();
        for d in declared {
            let at = format!("network {}", d.name);
            if d.span == SpanChoice::On && span.peers.is_empty() {
                return Err(format!("{at}: span = true needs --span-peers"));
            }
            if let SpanChoice::Peers(p) = &d.span {
                if p.is_empty() {
                    return Err(format!("{at}: span = []: give peers, or span = false"));
                }
                if let Some(dup) = duplicate(p) {
                    return Err(format!("{at}: span: {dup} is given twice"));
                }
            }
            if span.peers_of(&d.span).is_none() {
                continue;
            }
            if d.isolate {
                return Err(format!("{at}: span and isolate exclude each other (an isolated guest talks only to its gateway, never to a guest on another host)"));
            }
            let v = vni_of(d);
            if let Some((_, other)) = vnis.iter().find(|(w, _)| *w == v) {
                return Err(format!(
                    "{at}: its VXLAN network identifier {v} is network {other}'s too; give one of them vni = N (the same on every host)"
                ));
            }
            vnis.push((v, &d.name));
        }
        Ok(Some(span))
    }
}

fn duplicate(list: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    list.iter()
        .enumerate()
        .find(|(i, a)| list[..*i].contains(a))
        .map(|(_, a)| *a)
}

/// Whether a guest MTU of `mtu` fits an underlay of `underlay` bytes once VXLAN is added;
/// the error says what to change.
pub fn fits_underlay(mtu: u32, dev: &str, underlay: u32) -> Result<(), String> {
    if mtu + VXLAN_OVERHEAD <= underlay {
        return Ok(());
    }
    Err(format!(
        "spanning networks carry guest packets of up to --mtu {mtu} bytes in {VXLAN_OVERHEAD} bytes of VXLAN, but --span-dev {dev} has MTU {underlay}: raise its MTU to at least {} (on every host and the switches between them), or give guests --mtu {} or less",
        mtu + VXLAN_OVERHEAD,
        underlay.saturating_sub(VXLAN_OVERHEAD)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, span: SpanChoice, vni: Option<u32>, isolate: bool) -> Declared {
        Declared {
            name: name.into(),
            subnet: "10.200.0.0/24".parse().unwrap(),
            dhcp_range: (
                "10.200.0.10".parse().unwrap(),
                "10.200.0.20".parse().unwrap(),
            ),
            nat: false,
            isolate,
            host: super::super::HostAccess::Open,
            forwards: vec![],
            reservations: vec![],
            limits: Default::default(),
            span,
            vni,
        }
    }

    fn args(peers: &[&str], dev: Option<&str>) -> SpanArgs {
        SpanArgs {
            peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
            dev: dev.map(|d| d.parse().unwrap()),
        }
    }

    #[test]
    fn nothing_spans_without_options() {
        assert_eq!(args(&[], None).validate(&[], false, true), Ok(None));
        let off = declared("a", SpanChoice::Off, None, false);
        assert_eq!(args(&[], None).validate(&[off], false, false), Ok(None));
    }

    #[test]
    fn peers_need_a_device_and_a_routed_tap() {
        let e = args(&["10.0.0.2"], None)
            .validate(&[], false, false)
            .unwrap_err();
        assert!(e.contains("--span-dev"), "{e}");
        let e = args(&["10.0.0.2"], Some("eth0"))
            .validate(&[], true, false)
            .unwrap_err();
        assert!(e.contains("--attach-bridge"), "{e}");
        let e = args(&[], Some("eth0"))
            .validate(&[], false, false)
            .unwrap_err();
        assert!(e.contains("no network spans"), "{e}");
        let e = args(&["10.0.0.2", "10.0.0.2"], Some("eth0"))
            .validate(&[], false, false)
            .unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_declared_network_spans_as_it_says() {
        let span = args(&["10.0.0.2"], Some("eth0"))
            .validate(&[], false, false)
            .unwrap()
            .unwrap();
        let p = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        assert_eq!(
            span.peers_of(&SpanChoice::Inherit),
            Some(vec![p("10.0.0.2")])
        );
        assert_eq!(span.peers_of(&SpanChoice::Off), None);
        assert_eq!(
            span.peers_of(&SpanChoice::Peers(vec![p("10.0.0.9")])),
            Some(vec![p("10.0.0.9")])
        );
        assert_eq!(span.on_demand(), Some(vec![p("10.0.0.2")]));
        // Peers of its own, with no --span-peers: only that network spans.
        let own = declared("lab", SpanChoice::Peers(vec![p("10.0.0.9")]), None, false);
        let span = args(&[], Some("eth0"))
            .validate(std::slice::from_ref(&own), false, true)
            .unwrap()
            .unwrap();
        assert_eq!(span.on_demand(), None);
        assert_eq!(span.peers_of(&SpanChoice::Inherit), None);
        let on = declared("lab", SpanChoice::On, None, false);
        let e = args(&[], Some("eth0"))
            .validate(&[on], false, false)
            .unwrap_err();
        assert!(e.contains("span = true needs --span-peers"), "{e}");
    }

    #[test]
    fn isolation_and_spanning_exclude_each_other() {
        let e = args(&["10.0.0.2"], Some("eth0"))
            .validate(&[], false, true)
            .unwrap_err();
        assert!(e.contains("--isolate"), "{e}");
        let iso = declared(
            "lab",
            SpanChoice::Peers(vec!["10.0.0.2".parse().unwrap()]),
            None,
            true,
        );
        let e = args(&[], Some("eth0"))
            .validate(&[iso], false, false)
            .unwrap_err();
        assert!(e.contains("isolate"), "{e}");
    }

    #[test]
    fn two_spanning_networks_never_share_a_vni() {
        let a = declared("a", SpanChoice::Inherit, Some(7), false);
        let b = declared("b", SpanChoice::Inherit, Some(7), false);
        let e = args(&["10.0.0.2"], Some("eth0"))
            .validate(&[a.clone(), b], false, false)
            .unwrap_err();
        assert!(e.contains("vni = N") && e.contains("network a"), "{e}");
        let c = declared("c", SpanChoice::Off, Some(7), false);
        assert!(args(&["10.0.0.2"], Some("eth0"))
            .validate(&[a, c], false, false)
            .is_ok());
    }

    #[test]
    fn a_vni_comes_from_the_name_only() {
        assert_eq!(vni("lab"), vni("lab"));
        assert_ne!(vni("lab"), vni("lab2"));
        // docs/api.md's example.
        assert_eq!(vni("shared"), 8_228_143);
        for name in ["a", "lab", "x-1", "ñ"] {
            assert!((1..=MAX_VNI).contains(&vni(name)));
        }
    }

    #[test]
    fn the_underlay_takes_the_guest_mtu_and_fifty_bytes() {
        assert!(fits_underlay(1500, "ul0", 1550).is_ok());
        let e = fits_underlay(1500, "ul0", 1500).unwrap_err();
        assert!(
            e.contains("at least 1550") && e.contains("--mtu 1450"),
            "{e}"
        );
    }
}

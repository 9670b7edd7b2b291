//! The text of the instance's table: its sets, chains and rules, and the elements one network
//! adds to the sets (see the parent module for why it is text for `nft -f -`).

use crate::config::{Forward, HostAccess, Subnet};

/// What the table of one instance holds.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub table: &'a str,
    pub tap: &'a str,
    pub subnet: &'a Subnet,
    /// `--nat`: the uplink guest traffic is masqueraded out of.
    pub nat: Option<&'a str>,
    pub isolate: bool,
    pub host: &'a HostAccess,
    /// `--forward`: DNAT from the host's addresses (not 127.0.0.0/8) into guests.
    pub forwards: &'a [Forward],
    /// Networks other than the default may come: their sets and rules (see
    /// [`network_elements`]).
    pub networks: bool,
    /// Forwards into declared networks' guests, with the network's TAP.
    pub network_forwards: &'a [(String, Forward)],
}

/// `22` or `5000-5010`.
fn port_range(p: &crate::config::HostPort) -> String {
    if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}-{}", p.first, p.last)
    }
}

/// The sets that name the networks' TAPs (one element each per network):
///
/// - `net_ifs`: every network's TAP (host protection, and no routing to or from it but what
///   the rules below allow);
/// - `net_gw`: TAP . gateway address (DNS and ping at the gateway);
/// - `net_same`: TAP . TAP for networks whose guests may reach each other through the
///   gateway (not isolated);
/// - `net_nat`: TAPs of networks with NAT, and `net_nat_src` their subnets;
/// - `net_ports`: TAP . protocol . port (range) of the host ports a network's guests may
///   reach, and `net_open` the TAPs of networks whose guests may reach every host port.
const NETWORK_SETS: &str = "  set net_ifs {
    type ifname;
  }
  set net_gw {
    type ifname . ipv4_addr;
  }
  set net_same {
    type ifname . ifname;
  }
  set net_nat {
    type ifname;
  }
  set net_nat_src {
    type ipv4_addr;
    flags interval;
  }
  set net_ports {
    type ifname . inet_proto . inet_service;
    flags interval;
  }
  set net_open {
    type ifname;
  }
";

/// A network's host side as the table sees it.
#[derive(Debug, Clone)]
pub struct NetworkRules<'a> {
    pub tap: &'a str,
    pub subnet: &'a Subnet,
    pub isolate: bool,
    pub nat: bool,
    pub host: &'a HostAccess,
}

/// The script that adds (`add`) or deletes (`delete`) network `n`'s elements of `table`'s
/// sets: one transaction that touches only this network's rules.
pub fn network_elements(table: &str, n: &NetworkRules<'_>, verb: &str) -> String {
    let tap = n.tap;
    let mut s = format!(
        "{verb} element inet {table} net_ifs {{ \"{tap}\" }}\n{verb} element inet {table} net_gw {{ \"{tap}\" . {} }}\n",
        n.subnet.gateway()
    );
    if !n.isolate {
        s.push_str(&format!(
            "{verb} element inet {table} net_same {{ \"{tap}\" . \"{tap}\" }}\n"
        ));
    }
    if n.nat {
        s.push_str(&format!(
            "{verb} element inet {table} net_nat {{ \"{tap}\" }}\n{verb} element inet {table} net_nat_src {{ {}/{} }}\n",
            n.subnet.network, n.subnet.prefix
        ));
    }
    match n.host {
        HostAccess::Open => s.push_str(&format!(
            "{verb} element inet {table} net_open {{ \"{tap}\" }}\n"
        )),
        HostAccess::Protected(ports) => {
            for p in ports {
                let proto = if p.udp { "udp" } else { "tcp" };
                s.push_str(&format!(
                    "{verb} element inet {table} net_ports {{ \"{tap}\" . {proto} . {} }}\n",
                    port_range(p)
                ));
            }
        }
    }
    s
}

/// The script that (re)creates the table of `r`. The base chains (`input`, `forward`) only
/// dispatch on a packet's interfaces to a chain of its own kind (`in_default`,
/// `in_network`, `fwd_from_default`, …), so a packet is looked at only by the rules that can
/// concern it and the host's other traffic by two to four:
///
/// - **input** (unless the host is open): from the TAP, the host accepts DHCP, DNS and ICMP
///   echo at the gateway, IPv6 neighbour discovery, replies to its own connections and the
///   allowed ports; everything else from the TAP is dropped, whichever host address it is for.
/// - **forward**: with `nat`, guest traffic from the subnet goes out of the uplink and replies
///   come back; guest to guest through the gateway passes unless `isolate`; nothing else is
///   routed from or to the TAP.
/// - **postrouting** (with `nat`): masquerade out of the uplink.
pub fn ruleset(r: &Rules<'_>) -> String {
    let (table, tap) = (r.table, r.tap);
    let net = format!("{}/{}", r.subnet.network, r.subnet.prefix);
    let gateway = r.subnet.gateway();
    let mut s =
        format!("add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    if r.networks {
        s.push_str(NETWORK_SETS);
    }
    let protected = matches!(r.host, HostAccess::Protected(_));
    // Each packet is looked at by a base chain that only dispatches on its interfaces (two
    // to four rules), and then by the rules of its own kind only: a packet of a network
    // used to pass every rule of the default TAP first, each loading the interface name
    // again, and traffic that is not the guests' (the host's own) passed all of them. The
    // regular chains come first: nft resolves a jump when it reads it.
    if let HostAccess::Protected(ports) = r.host {
        s.push_str(&format!(
            "  chain in_default {{
    ct state established,related accept
    udp dport 67 accept
    ip daddr {gateway} udp dport 53 accept
    ip daddr {gateway} tcp dport 53 accept
    ip daddr {gateway} icmp type echo-request accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
"
        ));
        for p in ports {
            let proto = if p.udp { "udp" } else { "tcp" };
            s.push_str(&format!("    {proto} dport {} accept\n", port_range(p)));
        }
        s.push_str("    drop\n  }\n");
    }
    if r.networks {
        // The same for every network, at its own gateway, with its own ports (`net_ports`),
        // or everything (`net_open`).
        s.push_str(
            "  chain in_network {
    ct state established,related accept
    iifname . meta l4proto . th dport @net_ports accept
    iifname @net_open accept
    udp dport 67 accept
    iifname . ip daddr @net_gw udp dport 53 accept
    iifname . ip daddr @net_gw tcp dport 53 accept
    iifname . ip daddr @net_gw icmp type echo-request accept
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
    drop
  }
",
        );
    }
    // Forwarding, by where a packet comes from and then where it goes.
    let dnat = !r.forwards.is_empty();
    s.push_str("  chain fwd_from_default {\n");
    if dnat {
        s.push_str("    ct status dnat accept\n");
    }
    if let Some(uplink) = r.nat {
        s.push_str(&format!("    oifname \"{uplink}\" ip saddr {net} accept\n"));
    }
    if !r.isolate {
        s.push_str(&format!("    oifname \"{tap}\" accept\n"));
    }
    s.push_str("    drop\n  }\n  chain fwd_to_default {\n");
    if dnat {
        s.push_str("    ct status dnat accept\n");
    }
    if let Some(uplink) = r.nat {
        s.push_str(&format!(
            "    iifname \"{uplink}\" ct state established,related accept\n"
        ));
    }
    s.push_str("    drop\n  }\n");
    if r.networks {
        // A network's guests reach the uplink (with NAT), each other through their own
        // gateway (unless isolated), and are reached by the forwards into them; nothing else
        // is routed between networks, or between a network and the default one.
        let dnat = !r.network_forwards.is_empty();
        s.push_str("  chain fwd_from_network {\n");
        if dnat {
            s.push_str("    ct status dnat accept\n");
        }
        if let Some(uplink) = r.nat {
            s.push_str(&format!(
                "    iifname @net_nat oifname \"{uplink}\" ip saddr @net_nat_src accept\n"
            ));
        }
        s.push_str(
            "    iifname . oifname @net_same accept\n    drop\n  }\n  chain fwd_to_network {\n",
        );
        if dnat {
            s.push_str("    ct status dnat accept\n");
        }
        if let Some(uplink) = r.nat {
            s.push_str(&format!(
                "    iifname \"{uplink}\" oifname @net_nat ct state established,related accept\n"
            ));
        }
        s.push_str("    drop\n  }\n");
    }
    if protected || r.networks {
        s.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
        if protected {
            s.push_str(&format!("    iifname \"{tap}\" jump in_default\n"));
        }
        if r.networks {
            s.push_str("    iifname @net_ifs jump in_network\n");
        }
        s.push_str("  }\n");
    }
    s.push_str(&format!(
        "  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{tap}\" jump fwd_from_default
    oifname \"{tap}\" jump fwd_to_default
"
    ));
    if r.networks {
        s.push_str(
            "    iifname @net_ifs jump fwd_from_network\n    oifname @net_ifs jump fwd_to_network\n",
        );
    }
    s.push_str("  }\n");
    if let Some(uplink) = r.nat {
        s.push_str(&format!(
            "  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {net} oifname \"{uplink}\" masquerade
"
        ));
        if r.networks {
            s.push_str(&format!(
                "    ip saddr @net_nat_src oifname \"{uplink}\" masquerade\n"
            ));
        }
        s.push_str("  }\n");
    }
    let all_forwards: Vec<(&str, &Forward)> = r
        .forwards
        .iter()
        .map(|f| (tap, f))
        .chain(r.network_forwards.iter().map(|(t, f)| (t.as_str(), f)))
        .collect();
    if !all_forwards.is_empty() {
        // Other hosts' packets (prerouting) and this host's own (output), to any local
        // address but loopback: DNAT to 127.0.0.1 would need route_localnet.
        // nft 1.0.6 knows the name `dstnat` (-100) only on prerouting.
        for (hook, priority) in [("prerouting", "dstnat"), ("output", "-100")] {
            s.push_str(&format!(
                "  chain {hook} {{\n    type nat hook {hook} priority {priority}; policy accept;\n"
            ));
            for (into, f) in &all_forwards {
                // A network's own packets to the host are not forwarded back into it.
                let from = if hook == "prerouting" {
                    format!("iifname != \"{into}\" ")
                } else {
                    String::new()
                };
                let proto = if f.udp { "udp" } else { "tcp" };
                s.push_str(&format!(
                    "    {from}fib daddr type local ip daddr != 127.0.0.0/8 {proto} dport {} dnat ip to {}:{}\n",
                    f.host_port, f.ip, f.port
                ));
            }
            s.push_str("  }\n");
        }
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_only_our_table() {
        let subnet: Subnet = "10.86.0.0/16".parse().unwrap();
        let protected = HostAccess::Protected(vec!["tcp:22".parse().unwrap()]);
        let rules = |nat, isolate, host| {
            ruleset(&Rules {
                table: "tapwire_t0",
                tap: "t0",
                subnet: &subnet,
                nat,
                isolate,
                host,
                forwards: &[],
                networks: false,
                network_forwards: &[],
            })
        };
        let r = rules(Some("eth0"), false, &protected);
        assert!(r.starts_with("add table inet tapwire_t0\ndelete table inet tapwire_t0\n"));
        assert!(r.contains("ip saddr 10.86.0.0/16 oifname \"eth0\" masquerade"));
        assert!(r.contains("  chain fwd_to_default {\n    iifname \"eth0\" ct state established,related accept\n    drop\n  }\n"));
        assert!(r.contains("  chain fwd_from_default {\n    oifname \"eth0\" ip saddr 10.86.0.0/16 accept\n    oifname \"t0\" accept\n    drop\n  }\n"));
        assert!(r.contains("    tcp dport 22 accept\n    drop\n  }\n"));
        assert!(r.contains("ip daddr 10.86.0.1 udp dport 53 accept"));
        // The base chains only dispatch, on the interfaces: nothing else of the host's
        // traffic passes the guests' rules.
        assert!(r.contains("policy accept;\n    iifname \"t0\" jump in_default\n  }\n"));
        assert!(r.contains("policy accept;\n    iifname \"t0\" jump fwd_from_default\n    oifname \"t0\" jump fwd_to_default\n  }\n"));
        // A jump is resolved when nft reads it: the regular chains come first.
        assert!(r.find("chain in_default").unwrap() < r.find("chain input").unwrap());
        assert!(r.find("chain fwd_to_default").unwrap() < r.find("chain forward").unwrap());
        let isolated = rules(Some("eth0"), true, &protected);
        assert!(!isolated.contains("oifname \"t0\" accept"));
        // Without --nat nothing is routed to or from the TAP, and there is no NAT chain.
        let plain = rules(None, false, &protected);
        assert!(!plain.contains("masquerade") && !plain.contains("eth0"));
        assert!(plain.contains("  chain fwd_from_default {\n    oifname \"t0\" accept\n    drop\n  }\n  chain fwd_to_default {\n    drop\n  }\n"));
        let forwards = [Forward {
            udp: true,
            host_port: 5353,
            ip: "10.86.0.2".parse().unwrap(),
            port: 53,
        }];
        let forwarded = ruleset(&Rules {
            table: "tapwire_t0",
            tap: "t0",
            subnet: &subnet,
            nat: None,
            isolate: false,
            host: &protected,
            forwards: &forwards,
            networks: false,
            network_forwards: &[],
        });
        assert!(forwarded.contains("  chain fwd_from_default {\n    ct status dnat accept\n    oifname \"t0\" accept\n    drop\n  }\n  chain fwd_to_default {\n    ct status dnat accept\n    drop\n  }\n"));
        assert!(forwarded.contains("type nat hook prerouting priority dstnat; policy accept;\n    iifname != \"t0\" fib daddr type local ip daddr != 127.0.0.0/8 udp dport 5353 dnat ip to 10.86.0.2:53\n"));
        assert!(forwarded.contains("type nat hook output priority -100; policy accept;\n    fib daddr type local ip daddr != 127.0.0.0/8 udp dport 5353 dnat ip to 10.86.0.2:53\n"));
        let open = rules(None, false, &HostAccess::Open);
        assert!(!open.contains("chain input"));
        for r in [r, isolated, plain, open, forwarded] {
            // One statement per line: nft 1.0.6 refuses one-line nested blocks.
            assert!(r.lines().all(|l| l.matches('{').count() <= 1), "{r}");
            assert!(!r.contains("flush"), "never flushes anything");
        }
    }

    #[test]
    fn networks_are_kept_apart_by_sets_one_transaction_each() {
        let subnet: Subnet = "10.86.0.0/16".parse().unwrap();
        let protected = HostAccess::Protected(vec!["tcp:22".parse().unwrap()]);
        let r = ruleset(&Rules {
            table: "tapwire_t0",
            tap: "t0",
            subnet: &subnet,
            nat: Some("eth0"),
            isolate: false,
            host: &protected,
            forwards: &[],
            networks: true,
            network_forwards: &[],
        });
        assert!(r.contains("  set net_ifs {\n    type ifname;\n  }\n"));
        assert!(r.contains(
            "  chain in_network {\n    ct state established,related accept\n    iifname . meta l4proto . th dport @net_ports accept\n"
        ));
        assert!(r.contains(
            "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n    drop\n  }\n"
        ));
        assert!(r.contains("  chain fwd_from_network {\n    iifname @net_nat oifname \"eth0\" ip saddr @net_nat_src accept\n    iifname . oifname @net_same accept\n    drop\n  }\n"));
        assert!(r.contains("  chain fwd_to_network {\n    iifname \"eth0\" oifname @net_nat ct state established,related accept\n    drop\n  }\n"));
        assert!(r.contains(
            "    iifname \"t0\" jump in_default\n    iifname @net_ifs jump in_network\n  }\n"
        ));
        assert!(r.contains("    iifname @net_ifs jump fwd_from_network\n    oifname @net_ifs jump fwd_to_network\n  }\n"));
        assert!(r.contains("    ip saddr @net_nat_src oifname \"eth0\" masquerade\n"));
        assert!(
            r.lines()
                .all(|l| l.matches('{').count() <= 1 || l.contains("icmpv6 type {")),
            "{r}"
        );
        let block: Subnet = "10.96.3.0/24".parse().unwrap();
        let n = NetworkRules {
            tap: "t0n3",
            subnet: &block,
            isolate: false,
            nat: true,
            host: &protected,
        };
        let add = network_elements("tapwire_t0", &n, "add");
        assert_eq!(
            add,
            "add element inet tapwire_t0 net_ifs { \"t0n3\" }
add element inet tapwire_t0 net_gw { \"t0n3\" . 10.96.3.1 }
add element inet tapwire_t0 net_same { \"t0n3\" . \"t0n3\" }
add element inet tapwire_t0 net_nat { \"t0n3\" }
add element inet tapwire_t0 net_nat_src { 10.96.3.0/24 }
add element inet tapwire_t0 net_ports { \"t0n3\" . tcp . 22 }
"
        );
        let isolated = NetworkRules {
            isolate: true,
            nat: false,
            host: &HostAccess::Open,
            ..n
        };
        let delete = network_elements("tapwire_t0", &isolated, "delete");
        assert_eq!(delete.lines().count(), 3, "{delete}");
        assert!(delete.contains("delete element inet tapwire_t0 net_open { \"t0n3\" }"));
        assert!(delete
            .lines()
            .all(|l| l.starts_with("delete element inet tapwire_t0 ")));
    }
}

//! The instance's nftables table (`inet tapwire_TAP`): host protection, NAT egress and the
//! forwarding rules for the TAP, made and replaced in one `nft -f -` transaction, deleted at
//! exit and by `tapwire cleanup`. tapwire never adds to, flushes or reorders anyone else's
//! tables or chains.
//!
//! Why the `nft` program rather than netlink: the ruleset is a short text that reads like the
//! documentation, nft checks it and applies it atomically, and its JSON listing is how other
//! tables' forward chains are inspected. Debian 12's nft (1.0.6) has no `destroy`, so a table
//! is replaced with the add-delete-create idiom, and nested blocks are written one statement
//! per line. The family is `inet`, so that the input chain also covers IPv6 (a guest reaches
//! the host's link-local address without any configuration).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::config::{Config, Forward, HostAccess, Subnet};

/// The error when nft is missing.
pub const MISSING: &str = "nft not found: tapwire's host protection and --nat need it — install it with `apt-get install nftables` (or, to run without host protection and NAT, pass --allow-host-port all)";

/// Finds the nft binary.
pub fn find() -> Option<PathBuf> {
    super::find_program("nft")
}

/// The table of the instance whose TAP is `tap` (TAP names are unique in a namespace, and so
/// are nft tables): `tapwire_` and the name with anything but letters, digits and `_` as `_`.
pub fn table_name(tap: &str) -> String {
    let safe: String = tap
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("tapwire_{safe}")
}

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

/// Makes this instance's nftables table (host protection, and with `--nat` masquerade and
/// IPv4 forwarding, ledgered with its old value); warns, with the fix, about other tables'
/// forward chains that would drop guest traffic. Nothing to make when the host is open to
/// guests and there is no NAT.
pub(super) fn start(
    cfg: &Config,
    host: &mut super::Host,
    subnet: &crate::config::Subnet,
) -> Result<Option<Installed>, super::RunError> {
    let network_forwards: Vec<(String, Forward)> = cfg
        .networks
        .declared
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            // Declared networks are made first, in order: slots 1, 2, …
            let tap = crate::config::network_tap_name(&cfg.tap, (i + 1) as u16);
            d.forwards.iter().map(move |f| (tap.clone(), *f))
        })
        .collect();
    let routes = cfg.nat.is_some() || !cfg.forwards.is_empty() || !network_forwards.is_empty();
    let networks = cfg.networks.max_networks > 0;
    if !routes && !networks && cfg.host_access == crate::config::HostAccess::Open {
        return Ok(None);
    }
    let uplink = match cfg.nat.as_ref().map(|n| &n.uplink) {
        None => None,
        Some(Some(u)) => Some(u.to_string()),
        Some(None) => Some(default_route_interface().ok_or_else(|| {
            super::RunError::Setup(
                "--nat: this network namespace has no IPv4 default route to masquerade out of; pass --uplink IFACE, or add a default route".into(),
            )
        })?),
    };
    if find().is_none() {
        return Err(super::RunError::Setup(MISSING.into()));
    }
    if routes {
        let path = std::path::PathBuf::from(IP_FORWARD);
        let old = std::fs::read_to_string(&path)
            .map_err(|e| super::RunError::Setup(format!("cannot read {}: {e}", path.display())))?;
        let old = old.trim().to_string();
        if old != "1" {
            host.record(super::ledger::Change::Sysctl {
                path: path.clone(),
                old,
            })?;
            std::fs::write(&path, "1").map_err(|e| {
                super::RunError::Setup(format!(
                    "--nat/--forward: cannot turn on IPv4 forwarding ({}: {e}); run as root",
                    path.display()
                ))
            })?;
        }
    }
    let table = table_name(&cfg.tap);
    host.record(super::ledger::Change::NftTable(table.clone()))?;
    let script = ruleset(&Rules {
        table: &table,
        tap: &cfg.tap,
        subnet,
        nat: uplink.as_deref(),
        isolate: cfg.isolate,
        host: &cfg.host_access,
        forwards: &cfg.forwards,
        networks,
        network_forwards: &network_forwards,
    });
    apply(&script).map_err(super::RunError::Setup)?;
    let listing = list_table(&table).map_err(|e| {
        super::RunError::Setup(format!(
            "the nftables table inet {table} was made but cannot be read back: {e}"
        ))
    })?;
    let installed = Installed {
        table: table.clone(),
        script,
        listing,
        networks: std::collections::BTreeMap::new(),
    };
    match &cfg.host_access {
        crate::config::HostAccess::Open => {
            log::info!("host protection off (--allow-host-port all): guests reach every service of the host")
        }
        crate::config::HostAccess::Protected(ports) => {
            let extra: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            log::info!(
                "host protection: guests reach only DHCP, DNS and ping at {}{}{} (nftables table inet {table})",
                subnet.gateway(),
                if extra.is_empty() { "" } else { ", and " },
                extra.join(", ")
            );
        }
    }
    for f in cfg
        .forwards
        .iter()
        .chain(network_forwards.iter().map(|(_, f)| f))
    {
        log::info!(
            "forward {f} (from other hosts and this host's addresses{})",
            if f.udp {
                "; UDP is not forwarded on 127.0.0.1"
            } else {
                "; on 127.0.0.1 by a proxy in tapwire"
            }
        );
    }
    if !routes {
        return Ok(Some(installed));
    }
    match blocking_forward_chains(&table) {
        Ok(chains) => {
            for chain in chains {
                log::warn!("--nat/--forward: {}", chain.advice(&cfg.tap));
            }
        }
        Err(e) => log::warn!(
            "--nat/--forward: cannot list nftables chains to look for forward chains that would drop guest traffic: {e}"
        ),
    }
    if let Some(uplink) = uplink {
        log::info!("NAT: guests are masqueraded out of {uplink} (nftables table inet {table})");
    }
    Ok(Some(installed))
}

/// The table as this instance made it, to put back when someone else deletes or changes it
/// (an `nft flush ruleset` by a firewall script, a `delete table`): host protection would be
/// gone without a word.
#[derive(Debug)]
pub struct Installed {
    pub table: String,
    /// The script that makes it (it replaces whatever is there).
    script: String,
    /// `nft list table inet TABLE` right after it was made or last changed by us.
    listing: String,
    /// The elements of each network, by TAP: the `add element` script that puts them in.
    networks: std::collections::BTreeMap<String, String>,
}

/// What [`Installed::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The table is as it was made.
    Intact,
    /// The table was deleted, and is made again.
    Deleted,
    /// The table was changed (flushed, or rules or chains added or removed), and is made again.
    Changed,
}

impl Installed {
    /// Compares the table with what was made, and makes it again if it differs.
    pub fn check(&mut self) -> Result<Found, String> {
        let found = match list_table(&self.table) {
            Ok(now) if now == self.listing => return Ok(Found::Intact),
            Ok(_) => Found::Changed,
            Err(_) => Found::Deleted,
        };
        let mut script = self.script.clone();
        for elements in self.networks.values() {
            script.push_str(elements);
        }
        apply(&script)?;
        // The script makes the same table each time: a listing that fails now is compared
        // again at the next check.
        self.relist();
        Ok(found)
    }

    /// Puts in the elements of networks `all` (one transaction for all of them).
    pub fn add_networks(&mut self, all: &[NetworkRules<'_>]) -> Result<(), String> {
        let each: Vec<String> = all
            .iter()
            .map(|n| network_elements(&self.table, n, "add"))
            .collect();
        apply(&each.concat())?;
        for (n, elements) in all.iter().zip(each) {
            self.networks.insert(n.tap.to_string(), elements);
        }
        self.relist();
        Ok(())
    }

    /// Takes out network `n`'s elements (one transaction).
    pub fn remove_network(&mut self, n: &NetworkRules<'_>) -> Result<(), String> {
        self.networks.remove(n.tap);
        let result = apply(&network_elements(&self.table, n, "delete"));
        self.relist();
        result
    }

    /// Takes the listing our own change left, to compare later ones with.
    fn relist(&mut self) {
        if let Ok(listing) = list_table(&self.table) {
            self.listing = listing;
        }
    }
}

/// `nft list table inet TABLE`: the table as nft prints it (an error when it does not exist).
fn list_table(table: &str) -> Result<String, String> {
    let out = run_nft(&["list", "table", "inet", table], None)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs `nft -f -` with `script`; the error carries nft's own message.
pub fn apply(script: &str) -> Result<(), String> {
    let out = run_nft(&["-f", "-"], Some(script))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How long one run of nft may take before it is killed.
const NFT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs nft with `args`, feeding it `stdin`; its output. A run that takes longer than
/// [`NFT_LIMIT`] (a ruleset lock held by a hung program) is killed and is an error, so no
/// caller waits for ever.
fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, String> {
    let nft = find().ok_or(MISSING)?;
    let mut child = Command::new(&nft)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("cannot feed nft: {e}"))?;
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(NFT_LIMIT) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("nft did not finish: {e}")),
        Err(_) => {
            crate::processes::signal(pid, rustix::process::Signal::KILL);
            Err(format!(
                "nft {} did not finish within {NFT_LIMIT:?} and was killed",
                args.join(" ")
            ))
        }
    }
}

/// Deletes `table` if it exists (family `inet`; `ip` for a ledger of an earlier version).
pub fn delete_table(table: &str) -> Result<(), String> {
    for family in ["inet", "ip"] {
        if list_json(&["list", "table", family, table]).is_ok() {
            apply(&format!("delete table {family} {table}\n"))?;
        }
    }
    Ok(())
}

/// The interface of this namespace's IPv4 default route (from /proc/net/route, which shows
/// the namespace of the reading process).
pub fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// A chain on the forward hook with policy drop in another table: it drops guest traffic
/// whatever our table accepts (Docker's FORWARD, ufw, firewalld).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingChain {
    pub family: String,
    pub table: String,
    pub chain: String,
}

impl BlockingChain {
    /// What to run so that guest traffic through `tap` passes it.
    pub fn advice(&self, tap: &str) -> String {
        let BlockingChain {
            family,
            table,
            chain,
        } = self;
        let mut text = format!(
            "the {family} table {table:?} has a forward chain {chain:?} with policy drop: it drops guest traffic whatever tapwire's table accepts. Let it pass with\n  nft insert rule {family} {table} {chain} iifname \"{tap}\" accept\n  nft insert rule {family} {table} {chain} oifname \"{tap}\" ct state established,related accept"
        );
        if family == "ip" && table == "filter" && chain == "FORWARD" {
            text.push_str(&format!(
                "\nor, where iptables manages it (Docker):\n  iptables -I FORWARD -i {tap} -j ACCEPT\n  iptables -I FORWARD -o {tap} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ));
        }
        text
    }
}

/// Forward chains with policy drop in tables other than `ours`.
pub fn blocking_forward_chains(ours: &str) -> Result<Vec<BlockingChain>, String> {
    let listing = list_json(&["list", "chains"])?;
    Ok(parse_blocking_chains(&listing, ours))
}

fn parse_blocking_chains(listing: &serde_json::Value, ours: &str) -> Vec<BlockingChain> {
    let items = listing["nftables"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|item| {
            let c = item.get("chain")?;
            let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let family = s("family");
            let blocks = s("hook") == "forward"
                && s("policy") == "drop"
                && (family == "ip" || family == "inet")
                && s("table") != ours;
            blocks.then(|| BlockingChain {
                family,
                table: s("table"),
                chain: s("name"),
            })
        })
        .collect()
}

fn list_json(args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = run_nft(&all, None)?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j printed no JSON: {e}"))
}

/// Path of the IPv4 forwarding switch of this namespace.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("tapwire0"), "tapwire_tapwire0");
        assert_eq!(table_name("tw-x.1@y"), "tapwire_tw_x_1_y");
    }

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

    #[test]
    fn only_other_tables_drop_policy_forward_chains_block() {
        let listing: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"chain":{"family":"ip","table":"filter","name":"FORWARD","hook":"forward","prio":0,"policy":"drop"}},
            {"chain":{"family":"ip","table":"filter","name":"INPUT","hook":"input","prio":0,"policy":"drop"}},
            {"chain":{"family":"inet","table":"fw","name":"fwd","hook":"forward","prio":0,"policy":"accept"}},
            {"chain":{"family":"ip","table":"tapwire_t0","name":"forward","hook":"forward","prio":0,"policy":"drop"}},
            {"chain":{"family":"ip","table":"filter","name":"DOCKER"}}]}"#,
        )
        .unwrap();
        let found = parse_blocking_chains(&listing, "tapwire_t0");
        assert_eq!(
            found,
            vec![BlockingChain {
                family: "ip".into(),
                table: "filter".into(),
                chain: "FORWARD".into()
            }]
        );
        let advice = found[0].advice("t0");
        assert!(advice.contains("nft insert rule ip filter FORWARD iifname \"t0\" accept"));
        assert!(advice.contains("iptables -I FORWARD -i t0 -j ACCEPT"));
    }
}

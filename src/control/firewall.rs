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

use crate::config::{Config, Forward};

mod probe;
mod ruleset;
pub mod span;
pub use probe::{blocking_forward_chains, BlockingChain};
pub use ruleset::{network_elements, ruleset, NetworkRules, Rules};

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
    list("inet", table)
}

/// `nft list table FAMILY TABLE`: the table as nft prints it (an error when it does not
/// exist).
pub fn list(family: &str, table: &str) -> Result<String, String> {
    let out = run_nft(&["list", "table", family, table], None)?;
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

/// Deletes `table` if it exists, in each family it exists in (`inet`; `bridge`, the filter
/// of spanning networks; `ip` for a ledger of an earlier version).
pub fn delete_table(table: &str) -> Result<(), String> {
    for family in ["inet", "ip", "bridge"] {
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

/// `nft -j ARGS`: the listing as JSON.
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
}

//! NAT egress: one nftables table per instance (`ip tapwire_TAP`), made and replaced in one
//! `nft -f -` transaction, deleted at exit and by `tapwire cleanup`. tapwire never adds to,
//! flushes or reorders anyone else's tables or chains.
//!
//! Why the `nft` program rather than netlink: the ruleset is a short text that reads like the
//! documentation, nft checks it and applies it atomically, and its JSON listing is how other
//! tables' forward chains are inspected. Debian 12's nft (1.0.6) has no `destroy`, so a table
//! is replaced with the add-delete-create idiom, and nested blocks are written one statement
//! per line.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::config::Subnet;

/// The error when nft is missing.
pub const MISSING: &str =
    "nft not found: --nat needs it — install it with `apt-get install nftables`";

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

/// The script that (re)creates `table`: guest traffic from `subnet` entering on `tap` is
/// forwarded out of `uplink` and masqueraded; replies come back; nothing else from the uplink
/// reaches the guests. With `isolate`, a guest's packet routed back out of the TAP (to another
/// guest through the gateway) is dropped too.
pub fn ruleset(table: &str, tap: &str, subnet: &Subnet, uplink: &str, isolate: bool) -> String {
    let net = format!("{}/{}", subnet.network, subnet.prefix);
    let hairpin = if isolate {
        format!("\n    iifname \"{tap}\" oifname \"{tap}\" drop")
    } else {
        String::new()
    };
    format!(
        "add table ip {table}
delete table ip {table}
table ip {table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {net} oifname \"{uplink}\" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{tap}\" oifname \"{uplink}\" ip saddr {net} accept
    iifname \"{uplink}\" oifname \"{tap}\" ct state established,related accept
    iifname \"{uplink}\" oifname \"{tap}\" drop{hairpin}
  }}
}}
"
    )
}

/// Runs `nft -f -` with `script`; the error carries nft's own message.
pub fn apply(script: &str) -> Result<(), String> {
    let nft = find().ok_or(MISSING)?;
    let mut child = Command::new(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("cannot feed nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes `table` if it exists.
pub fn delete_table(table: &str) -> Result<(), String> {
    let exists = list_json(&["list", "table", "ip", table]).is_ok();
    if !exists {
        return Ok(());
    }
    apply(&format!("delete table ip {table}\n"))
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
    let nft = find().ok_or(MISSING)?;
    let out = Command::new(&nft)
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nft.display()))?;
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
        let r = ruleset("tapwire_t0", "t0", &subnet, "eth0", false);
        assert!(!r.contains("iifname \"t0\" oifname \"t0\""));
        let isolated = ruleset("tapwire_t0", "t0", &subnet, "eth0", true);
        assert!(isolated.contains("iifname \"t0\" oifname \"t0\" drop"));
        assert!(r.starts_with("add table ip tapwire_t0\ndelete table ip tapwire_t0\n"));
        assert!(r.contains("ip saddr 10.86.0.0/16 oifname \"eth0\" masquerade"));
        assert!(r.contains("iifname \"eth0\" oifname \"t0\" ct state established,related accept"));
        // One statement per line: nft 1.0.6 refuses one-line nested blocks.
        assert!(r.lines().all(|l| l.matches('{').count() <= 1));
        assert!(!r.contains("flush"), "never flushes anything");
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

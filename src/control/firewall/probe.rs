//! Other tables' forward chains that would drop guest traffic whatever the instance's table
//! accepts (Docker's FORWARD, ufw, firewalld): found in `nft`'s JSON listing and reported with
//! the rule that lets the TAP's traffic through.

use super::list_json;

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

#[cfg(test)]
mod tests {
    use super::*;

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

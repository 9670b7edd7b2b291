//! The filter of spanning networks at their VXLAN ports (`bridge tapwire_TAP`): every host
//! of a farm has a network's gateway with the same address and MAC, so the gateway must stay
//! on its own host. Frames from or to the gateway's MAC, ARP for the gateway's address, and
//! DHCP requests never cross the overlay in either direction: each host answers, leases to
//! and routes for its own guests only, and guests on two hosts still reach each other.

use crate::switch::Mac;

/// The script that (re)creates the bridge table `table` (empty sets).
pub fn table(table: &str) -> String {
    format!(
        "add table bridge {table}
delete table bridge {table}
table bridge {table} {{
  set ports {{
    type ifname;
  }}
  set gw_mac {{
    type ifname . ether_addr;
  }}
  set gw_ip {{
    type ifname . ipv4_addr;
  }}
  chain from_overlay {{
    type filter hook prerouting priority filter; policy accept;
    iifname . ether saddr @gw_mac counter drop
    iifname . arp daddr ip @gw_ip counter drop
    iifname @ports udp dport 67 counter drop
  }}
  chain to_overlay {{
    type filter hook postrouting priority filter; policy accept;
    oifname . ether saddr @gw_mac counter drop
    oifname . arp daddr ip @gw_ip counter drop
    oifname @ports udp dport 67 counter drop
  }}
}}
"
    )
}

/// The script that adds (`add`) or deletes (`delete`) the elements of a network whose VXLAN
/// port is `port` and whose gateway is `gw_ip` at `gw_mac`.
pub fn elements(
    table: &str,
    port: &str,
    gw_mac: Mac,
    gw_ip: std::net::Ipv4Addr,
    verb: &str,
) -> String {
    format!(
        "{verb} element bridge {table} ports {{ \"{port}\" }}
{verb} element bridge {table} gw_mac {{ \"{port}\" . {gw_mac} }}
{verb} element bridge {table} gw_ip {{ \"{port}\" . {gw_ip} }}
"
    )
}

/// `listing` with every counter's values left out (`counter packets 3 bytes 180` reads
/// `counter`), so that two listings of one table compare equal whatever passed through it.
pub fn without_counters(listing: &str) -> String {
    listing
        .lines()
        .map(|line| match line.find("counter packets ") {
            Some(at) => {
                let rest = &line[at + "counter packets ".len()..];
                // Skip "N bytes M".
                let after = rest.splitn(4, ' ').nth(3).unwrap_or("");
                format!("{}counter {after}", &line[..at])
                    .trim_end()
                    .to_string()
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_compare_without_their_counters() {
        let a = "\t\tiifname @ports udp dport 67 counter packets 0 bytes 0 drop\n\t}";
        let b = "\t\tiifname @ports udp dport 67 counter packets 12 bytes 4068 drop\n\t}";
        assert_eq!(without_counters(a), without_counters(b));
        assert_eq!(
            without_counters(a),
            "\t\tiifname @ports udp dport 67 counter drop\n\t}"
        );
        assert_ne!(without_counters(a), without_counters("\t}"));
    }

    #[test]
    fn the_gateway_and_dhcp_stay_on_their_host_both_ways() {
        let t = table("tapwire_t0");
        for hook in ["prerouting", "postrouting"] {
            assert!(t.contains(&format!("hook {hook} priority filter; policy accept;")));
        }
        for dir in ["iifname", "oifname"] {
            for rule in [
                " . ether saddr @gw_mac counter drop",
                " . arp daddr ip @gw_ip counter drop",
                " @ports udp dport 67 counter drop",
            ] {
                assert!(t.contains(&format!("    {dir}{rule}\n")), "{dir}{rule}");
            }
        }
        let e = elements(
            "tapwire_t0",
            "t0x1",
            Mac([2, 0, 0, 0, 0, 1]),
            "10.96.0.1".parse().unwrap(),
            "add",
        );
        assert_eq!(
            e,
            "add element bridge tapwire_t0 ports { \"t0x1\" }\nadd element bridge tapwire_t0 gw_mac { \"t0x1\" . 02:00:00:00:00:01 }\nadd element bridge tapwire_t0 gw_ip { \"t0x1\" . 10.96.0.1 }\n"
        );
    }
}

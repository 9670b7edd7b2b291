//! The subnets other interfaces of this namespace use, which the networks' pool skips.

use crate::config::Subnet;

/// The subnets of this namespace's routes but the default route (from /proc/net/route, which
/// shows the reader's namespace): addresses other interfaces use.
pub(in crate::control) fn routed_subnets() -> Vec<Subnet> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_routes(&t))
        .unwrap_or_default()
}

/// Parses /proc/net/route: destination and mask of each route (hexadecimal, in network byte
/// order read as a native number), the default route left out.
fn parse_routes(table: &str) -> Vec<Subnet> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?.to_ne_bytes();
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?.to_ne_bytes();
            let prefix = u32::from_be_bytes(mask).leading_ones();
            // Lossless: a prefix is at most 32.
            (prefix > 0).then(|| Subnet {
                network: std::net::Ipv4Addr::from(dest),
                prefix: prefix as u8,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_other_than_the_default_are_subnets_in_use() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
tapwire0\t0000560A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_routes(table),
                vec![
                    "192.168.1.0/24".parse::<Subnet>().unwrap(),
                    "10.86.0.0/16".parse().unwrap()
                ]
            );
        }
    }
}

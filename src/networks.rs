//! Networks by URL path: which network a request asks for, whether its token allows it, and
//! the pool that networks take their subnets from. Pure: no I/O.
//!
//! `ws[s]://HOST/n/NAME` joins network NAME; `/n/default` and every path not under `/n/` join
//! the default network (so URLs from before networks keep working). NAME is 1 to
//! [`MAX_NAME`] ASCII letters, digits, `_` or `-`, the characters tokens carry; a path under
//! `/n/` that is not one such name is refused before the upgrade.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::config::Subnet;

/// Longest network name.
pub const MAX_NAME: usize = 32;
/// The default network's name (in the admin API, metrics, and `/n/default`).
pub const DEFAULT: &str = "default";

/// Whether every byte of `name` may appear in a network name (the empty name passes: a token
/// may carry no network).
pub fn name_chars(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `name` is a network name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name_chars(name)
}

/// The network a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested<'a> {
    Default,
    Named(&'a str),
}

impl Requested<'_> {
    /// Its name (`default` for the default network).
    pub fn name(&self) -> &str {
        match self {
            Requested::Default => DEFAULT,
            Requested::Named(n) => n,
        }
    }
}

/// A path under `/n/` that names no network: refused with `400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadNetworkPath;

impl BadNetworkPath {
    /// The whole HTTP response.
    pub fn response(self) -> String {
        let body = format!(
            "tapwire: a network path is /n/NAME, NAME 1 to {MAX_NAME} letters, digits, _ or -\n"
        );
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// The network a request for `target` (path and query) joins.
pub fn requested(target: &str) -> Result<Requested<'_>, BadNetworkPath> {
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let Some(rest) = path.strip_prefix("/n/") else {
        return Ok(Requested::Default);
    };
    // One trailing slash is the same network.
    let name = rest.strip_suffix('/').unwrap_or(rest);
    if !valid_name(name) {
        return Err(BadNetworkPath);
    }
    if name == DEFAULT {
        return Ok(Requested::Default);
    }
    Ok(Requested::Named(name))
}

/// Whether a token for `token_network` (empty: a token that names none) lets its bearer join
/// `requested`: a token names exactly one network; one that names none, or `default`, is for
/// the default network.
pub fn token_allows(token_network: &str, requested: Requested<'_>) -> bool {
    match requested {
        Requested::Default => token_network.is_empty() || token_network == DEFAULT,
        Requested::Named(name) => token_network == name,
    }
}

/// The URL of network `network` (empty or `default`: the default network) on the relay at
/// `base` (`ws[s]://HOST[:PORT][/PREFIX][?QUERY]`), with `token` in its query if given.
pub fn url_for(base: &str, network: &str, token: Option<&str>) -> String {
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut url = path.to_string();
    if !network.is_empty() && network != DEFAULT {
        url = format!("{}/n/{network}", url.trim_end_matches('/'));
    }
    let mut params: Vec<String> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty() && !p.starts_with("token="))
        .map(str::to_string)
        .collect();
    if let Some(t) = token {
        params.push(format!("token={t}"));
    }
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
    url
}

/// The blocks networks take their subnets from: `--network-pool` cut into
/// `--network-prefix` blocks, each handed out at most once at a time: to a declared network
/// lowest first, to one made on demand the block its name hashes to. Blocks
/// that overlap a subnet in use elsewhere (the default network's, a declared network's) are
/// never handed out.
#[derive(Debug, Clone)]
pub struct Pool {
    pool: Subnet,
    block_prefix: u8,
    taken: BTreeSet<u32>,
    excluded: BTreeSet<u32>,
    /// Only the first this many blocks that are not excluded are ever handed out (dnsmasq is
    /// told their DHCP ranges up front).
    window: u32,
}

impl Pool {
    /// `pool` cut into `/block_prefix` blocks; an error when the blocks do not fit in it or are
    /// too small for a gateway and a guest.
    pub fn new(pool: Subnet, block_prefix: u8) -> Result<Self, String> {
        if block_prefix < pool.prefix {
            return Err(format!(
                "--network-prefix /{block_prefix} is larger than --network-pool {pool}"
            ));
        }
        if block_prefix > 29 {
            return Err(format!(
                "--network-prefix /{block_prefix} leaves no room for DHCP: use /29 or larger"
            ));
        }
        if block_prefix - pool.prefix > 20 {
            return Err(format!(
                "--network-pool {pool} in /{block_prefix} blocks makes over a million networks: use a smaller pool or larger blocks"
            ));
        }
        Ok(Pool {
            pool,
            block_prefix,
            taken: BTreeSet::new(),
            excluded: BTreeSet::new(),
            window: u32::MAX,
        })
    }

    /// Hands out only the first `blocks` blocks that are not excluded.
    pub fn limit(&mut self, blocks: u32) {
        self.window = blocks;
    }

    /// The whole pool.
    pub fn cidr(&self) -> Subnet {
        self.pool
    }

    /// How many blocks the pool has.
    pub fn blocks(&self) -> u32 {
        1 << (self.block_prefix - self.pool.prefix)
    }

    /// How many blocks can be handed out (not excluded).
    pub fn usable(&self) -> u32 {
        (self.blocks() - self.excluded.len() as u32).min(self.window)
    }

    /// Block `index` as a subnet.
    pub fn block(&self, index: u32) -> Subnet {
        let size = 1u32 << (32 - u32::from(self.block_prefix));
        Subnet {
            network: Ipv4Addr::from(u32::from(self.pool.network) + index * size),
            prefix: self.block_prefix,
        }
    }

    /// Never hands out blocks that overlap `subnet`.
    pub fn exclude(&mut self, subnet: &Subnet) {
        for index in 0..self.blocks() {
            if overlap(&self.block(index), subnet) {
                self.excluded.insert(index);
            }
        }
    }

    /// The lowest free block, now taken; `None` when every block is taken.
    pub fn take(&mut self) -> Option<Subnet> {
        self.take_avoiding(&[])
    }

    /// The lowest free block that overlaps none of `avoid` (subnets some other interface of
    /// the host has), now taken.
    pub fn take_avoiding(&mut self, avoid: &[Subnet]) -> Option<Subnet> {
        let index = self.window().find(|i| {
            !self.taken.contains(i) && !avoid.iter().any(|a| overlap(a, &self.block(*i)))
        })?;
        self.taken.insert(index);
        Some(self.block(index))
    }

    /// A block for network `name` that overlaps none of `avoid`, now taken: the block of the
    /// window that `name` hashes to, or the first free one after it (wrapping). Relays with
    /// the same pool and window give a name the same block unless it is taken there, so a
    /// network keeps its subnet across restarts and on every host of a farm.
    pub fn take_for(&mut self, name: &str, avoid: &[Subnet]) -> Option<Subnet> {
        let window: Vec<u32> = self.window().collect();
        let len = window.len();
        if len == 0 {
            return None;
        }
        // Lossless: the remainder is below len, a usize.
        let start = (name_hash(name) % len as u64) as usize;
        let index = (0..len).map(|k| window[(start + k) % len]).find(|i| {
            !self.taken.contains(i) && !avoid.iter().any(|a| overlap(a, &self.block(*i)))
        })?;
        self.taken.insert(index);
        Some(self.block(index))
    }

    /// The block `name` hashes to: what [`Pool::take_for`] gives while that block is free.
    pub fn preferred(&self, name: &str) -> Option<Subnet> {
        let window: Vec<u32> = self.window().collect();
        let len = window.len() as u64;
        // Lossless: the remainder is below len, a usize.
        (len > 0).then(|| self.block(window[(name_hash(name) % len) as usize]))
    }

    /// The indices of the blocks that may be handed out.
    fn window(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.blocks())
            .filter(|i| !self.excluded.contains(i))
            .take(self.window as usize)
    }

    /// Gives a block back.
    pub fn give_back(&mut self, subnet: &Subnet) {
        let size = 1u32 << (32 - u32::from(self.block_prefix));
        let offset = u32::from(subnet.network).wrapping_sub(u32::from(self.pool.network));
        if subnet.prefix == self.block_prefix && offset % size == 0 {
            self.taken.remove(&(offset / size));
        }
    }

    /// Every block that may ever be handed out (dnsmasq is told their ranges up front).
    pub fn reachable(&self) -> Vec<Subnet> {
        self.window().map(|i| self.block(i)).collect()
    }
}

/// A hash of a network name that every build and host computes alike (64-bit FNV-1a).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The MAC address of network `name`'s gateway (its TAP) when its subnet is `subnet`: the
/// same on every host that serves the network with that subnet, so a guest that moves to
/// another host of a farm finds its gateway at the address its ARP cache holds. Locally
/// administered and unicast.
pub fn gateway_mac(name: &str, subnet: &Subnet) -> crate::switch::Mac {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"tapwire gateway\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(subnet.to_string().as_bytes());
    let d = h.finalize();
    crate::switch::Mac([(d[0] & 0xFC) | 0x02, d[1], d[2], d[3], d[4], d[5]])
}

/// Whether two subnets share an address.
pub fn overlap(a: &Subnet, b: &Subnet) -> bool {
    let prefix = a.prefix.min(b.prefix);
    let mask = u32::MAX << (32 - u32::from(prefix));
    u32::from(a.network) & mask == u32::from(b.network) & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_preferred_block_is_the_one_a_free_pool_gives() {
        let mut pool = Pool::new("10.96.0.0/16".parse().unwrap(), 24).unwrap();
        let want = pool.preferred("lab").unwrap();
        assert_eq!(pool.take_for("lab", &[]), Some(want));
        assert_eq!(pool.preferred("lab"), Some(want), "taken or not");
        assert_ne!(
            pool.take_for("lab", &[]),
            Some(want),
            "taken: the next free one"
        );
    }

    #[test]
    fn a_name_gets_the_same_block_on_every_relay_unless_it_is_taken() {
        let pool = || {
            let mut p = Pool::new("10.96.0.0/12".parse().unwrap(), 24).unwrap();
            p.limit(320);
            p
        };
        let (mut a, mut b) = (pool(), pool());
        // Other networks made first on one relay, in another order on the other.
        for n in ["x", "y", "z"] {
            a.take_for(n, &[]).unwrap();
        }
        let on_a = a.take_for("lab", &[]).unwrap();
        let on_b = b.take_for("lab", &[]).unwrap();
        assert_eq!(on_a, on_b);
        // Taken: the next block of the window.
        let mut c = pool();
        c.take_for("lab", &[]).unwrap();
        let next = c.take_for("lab", &[]).unwrap();
        assert_ne!(next, on_a);
        let index = |s: Subnet| (u32::from(s.network) - u32::from(c.block(0).network)) / 256;
        assert_eq!(
            index(next),
            (index(on_a) + 1) % 320,
            "the next block, wrapping"
        );
        // A block another interface has is skipped.
        let mut d = pool();
        assert_ne!(d.take_for("lab", &[on_a]).unwrap(), on_a);
        // Every block of the window is handed out once.
        let mut e = pool();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..320 {
            assert!(seen.insert(e.take_for(&format!("n{}", i % 7), &[]).unwrap().network));
        }
        assert!(e.take_for("full", &[]).is_none());
    }

    #[test]
    fn gateway_macs_are_unicast_local_and_stable() {
        let s: Subnet = "10.96.4.0/24".parse().unwrap();
        let m = gateway_mac("lab", &s);
        assert_eq!(m, gateway_mac("lab", &s));
        assert_eq!(m.0[0] & 0x03, 0x02, "locally administered, unicast");
        assert_ne!(m, gateway_mac("lab2", &s));
        assert_ne!(m, gateway_mac("lab", &"10.96.5.0/24".parse().unwrap()));
    }

    #[test]
    fn paths_pick_networks() {
        assert_eq!(requested("/"), Ok(Requested::Default));
        assert_eq!(requested("/?token=x"), Ok(Requested::Default));
        assert_eq!(requested("/some/path?x=1"), Ok(Requested::Default));
        assert_eq!(requested("/n"), Ok(Requested::Default));
        assert_eq!(requested("/nn/lab"), Ok(Requested::Default));
        assert_eq!(requested("/n/lab"), Ok(Requested::Named("lab")));
        assert_eq!(requested("/n/lab/"), Ok(Requested::Named("lab")));
        assert_eq!(
            requested("/n/Lab_2-b?token=v1.1.x.y"),
            Ok(Requested::Named("Lab_2-b"))
        );
        assert_eq!(requested("/n/default"), Ok(Requested::Default));
        let longest = "a".repeat(MAX_NAME);
        assert_eq!(
            requested(&format!("/n/{longest}")),
            Ok(Requested::Named(longest.as_str()))
        );
        for bad in [
            "/n/",
            "/n//",
            "/n/a/b",
            "/n/a b",
            "/n/%41",
            "/n/a.b",
            "/n/ä",
            &format!("/n/{}", "a".repeat(MAX_NAME + 1)),
        ] {
            assert_eq!(requested(bad), Err(BadNetworkPath), "{bad}");
        }
        let response = BadNetworkPath.response();
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    }

    #[test]
    fn urls_name_their_network() {
        let base = "ws://127.0.0.1:8086/";
        assert_eq!(url_for(base, "", Some("T")), "ws://127.0.0.1:8086/?token=T");
        assert_eq!(url_for(base, "default", None), base);
        assert_eq!(
            url_for(base, "lab", Some("T")),
            "ws://127.0.0.1:8086/n/lab?token=T"
        );
        assert_eq!(
            url_for("wss://farm.example/relay?x=1&token=old", "lab", Some("T")),
            "wss://farm.example/relay/n/lab?x=1&token=T"
        );
        let url = url_for("ws://h:1", "a-b_c", None);
        assert_eq!(url, "ws://h:1/n/a-b_c");
        let path = url.trim_start_matches("ws://h:1");
        assert_eq!(requested(path), Ok(Requested::Named("a-b_c")));
    }

    #[test]
    fn a_token_is_for_exactly_its_network() {
        assert!(token_allows("", Requested::Default));
        assert!(token_allows("default", Requested::Default));
        assert!(!token_allows("lab", Requested::Default));
        assert!(token_allows("lab", Requested::Named("lab")));
        assert!(!token_allows("lab", Requested::Named("lab2")));
        assert!(!token_allows("", Requested::Named("lab")));
        assert!(!token_allows("default", Requested::Named("lab")));
    }

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn the_pool_hands_out_free_blocks_lowest_first_and_skips_excluded_ones() {
        let mut pool = Pool::new(subnet("10.96.0.0/22"), 24).unwrap();
        assert_eq!(pool.blocks(), 4);
        pool.exclude(&subnet("10.96.1.128/25"));
        assert_eq!(pool.usable(), 3);
        assert_eq!(pool.take(), Some(subnet("10.96.0.0/24")));
        assert_eq!(pool.take(), Some(subnet("10.96.2.0/24")));
        assert_eq!(pool.take(), Some(subnet("10.96.3.0/24")));
        assert_eq!(pool.take(), None);
        pool.give_back(&subnet("10.96.2.0/24"));
        assert_eq!(pool.take(), Some(subnet("10.96.2.0/24")));
        assert_eq!(
            pool.reachable(),
            vec![
                subnet("10.96.0.0/24"),
                subnet("10.96.2.0/24"),
                subnet("10.96.3.0/24")
            ]
        );
        // A block that is not one of the pool's is ignored.
        pool.give_back(&subnet("10.96.2.0/25"));
        pool.give_back(&subnet("192.168.0.0/24"));
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn blocks_in_use_elsewhere_are_skipped_and_the_window_bounds_the_rest() {
        let mut pool = Pool::new(subnet("10.96.0.0/22"), 24).unwrap();
        pool.limit(3);
        assert_eq!(pool.usable(), 3);
        assert_eq!(pool.reachable().len(), 3);
        let elsewhere = [subnet("10.96.0.128/25"), subnet("10.0.0.0/16")];
        assert_eq!(pool.take_avoiding(&elsewhere), Some(subnet("10.96.1.0/24")));
        assert_eq!(pool.take_avoiding(&elsewhere), Some(subnet("10.96.2.0/24")));
        assert_eq!(
            pool.take_avoiding(&elsewhere),
            None,
            "10.96.3.0/24 is outside the window"
        );
        assert_eq!(pool.take(), Some(subnet("10.96.0.0/24")));
    }

    #[test]
    fn pools_that_cannot_work_are_refused_with_why() {
        assert!(Pool::new(subnet("10.96.0.0/24"), 16)
            .unwrap_err()
            .contains("larger than"));
        assert!(Pool::new(subnet("10.96.0.0/16"), 30)
            .unwrap_err()
            .contains("no room"));
        assert!(Pool::new(subnet("10.0.0.0/8"), 29)
            .unwrap_err()
            .contains("million"));
        assert_eq!(
            Pool::new(subnet("10.96.0.0/12"), 24).unwrap().blocks(),
            4096
        );
    }

    proptest! {
        #[test]
        fn taken_blocks_never_overlap_each_other_or_an_excluded_subnet(
            takes in proptest::collection::vec(any::<bool>(), 1..80),
            ex in 0u32..256,
        ) {
            let mut pool = Pool::new(subnet("10.96.0.0/20"), 26).unwrap();
            let excluded = Subnet { network: Ipv4Addr::from(0x0A60_0000 + ex * 16), prefix: 28 };
            pool.exclude(&excluded);
            let mut held: Vec<Subnet> = Vec::new();
            for take in takes {
                if take || held.is_empty() {
                    if let Some(s) = pool.take() {
                        prop_assert!(!overlap(&s, &excluded));
                        prop_assert!(held.iter().all(|h| !overlap(h, &s)));
                        held.push(s);
                    } else {
                        prop_assert_eq!(held.len() as u32, pool.usable());
                    }
                } else {
                    let s = held.remove(0);
                    pool.give_back(&s);
                }
            }
        }
    }
}

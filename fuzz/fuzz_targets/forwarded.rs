//! X-Forwarded-For against trusted proxies, on arbitrary lists, peers and ranges: never
//! panics; an untrusted peer is always the client; the client is the peer or an address of the
//! list; and whoever the walk settles on was forwarded for by a trusted hop (everything right
//! of it in the list, and the peer, is trusted). Ranges come from the input as text, so the
//! CIDR parser is fuzzed too.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tapwire::ws::forwarded::{client_address, is_trusted, Cidr};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: &[u8]| {
    // peer (4 or 16 bytes, chosen by the first byte) | ranges, one per line | 0 | the list
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let len = if kind & 1 == 0 { 4 } else { 16 };
    if rest.len() < len {
        return;
    }
    let (peer, rest) = rest.split_at(len);
    let peer: IpAddr = match <[u8; 4]>::try_from(peer) {
        Ok(v4) => v4.into(),
        Err(_) => <[u8; 16]>::try_from(peer).expect("16 bytes").into(),
    };
    let (ranges, list) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let trusted: Vec<Cidr> = String::from_utf8_lossy(ranges)
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let list = String::from_utf8_lossy(list);
    let header = (!list.is_empty()).then_some(list.as_ref());
    let client = client_address(peer, header, &trusted);
    let peer = peer.to_canonical();
    if !is_trusted(&trusted, peer) || header.is_none() {
        assert_eq!(client, peer);
        return;
    }
    if client == peer {
        return;
    }
    // The client is one entry of the list; every entry right of it is a trusted address.
    let entries: Vec<&str> = header.unwrap_or("").split(',').collect();
    let at = entries
        .iter()
        .rposition(|e| entry_is(e, client))
        .expect("the client is an entry of the list");
    for right in &entries[at + 1..] {
        let ip = parse(right).expect("entries right of the client are addresses");
        assert!(is_trusted(&trusted, ip), "{right} is trusted");
    }
});

/// The address an entry names, as the parser reads it (a bare address is enough to check).
fn parse(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    e.rsplit_once(':')?
        .0
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

fn entry_is(entry: &str, ip: IpAddr) -> bool {
    parse(entry) == Some(ip)
}

//! The token and Origin check on arbitrary request targets and origins: never panics; a
//! browser's Origin passes exactly when it is on the list (case and surrounding space aside),
//! and a request without one is not refused for it; only a token minted with the secret
//! passes, before its expiry, and it carries its network name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::ws::access::{mint, Access, Denied};

const SECRET: &[u8] = b"fuzzing secret, thirty-two bytes";
const ALLOWED: &str = "https://farm.example";

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: (&str, Option<&str>, u64)| {
    let (target, origin, now) = data;
    let access = Access {
        secret: Some(SECRET.to_vec()),
        origins: vec![ALLOWED.into(), format!("{ALLOWED}:8443/")],
    };
    let result = access.check(target, origin, now);
    let origin_allowed = origin.is_none_or(|o| {
        let o = o.trim();
        o.eq_ignore_ascii_case(ALLOWED) || o.eq_ignore_ascii_case(&format!("{ALLOWED}:8443"))
    });
    assert_eq!(
        result == Err(Denied::OriginRefused),
        !origin_allowed,
        "origin {origin:?}"
    );
    if let Ok(network) = result {
        let token = target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("token=")))
            .expect("a passing request has a token");
        let expires: u64 = token.split('.').nth(1).unwrap().parse().unwrap();
        assert!(now < expires);
        assert_eq!(mint(SECRET, expires, &network).as_deref(), Ok(token));
    }
});

//! The token and Origin check on arbitrary request targets and origins: never panics; only a
//! token minted with the secret passes, and it carries its network name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::ws::access::{mint, Access};

const SECRET: &[u8] = b"fuzzing secret, thirty-two bytes";

fuzz_target!(|data: (&str, Option<&str>, u64)| {
    let (target, origin, now) = data;
    let access = Access {
        secret: Some(SECRET.to_vec()),
        origins: vec!["https://farm.example".into()],
    };
    if let Ok(network) = access.check(target, origin, now) {
        let token = target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("token=")))
            .expect("a passing request has a token");
        let expires: u64 = token.split('.').nth(1).unwrap().parse().unwrap();
        assert!(now < expires);
        assert_eq!(mint(SECRET, expires, &network).as_deref(), Ok(token));
    }
});

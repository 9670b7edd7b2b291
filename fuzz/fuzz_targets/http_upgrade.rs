//! The HTTP upgrade parser on arbitrary heads: never panics; an accepted head is a GET with a
//! valid key and a length within the limit; prefixes of an accepted head are incomplete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::ws::handshake::{parse_upgrade, Upgrade, MAX_HEAD_LEN};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: &[u8]| {
    match parse_upgrade(data) {
        Upgrade::Accept { response, head_len, .. } => {
            assert!(head_len <= data.len() && head_len <= MAX_HEAD_LEN);
            // RFC 7230 §3.5: empty lines before the request line are ignored.
            assert!(data.trim_ascii_start().starts_with(b"GET "));
            assert!(response.starts_with("HTTP/1.1 101 ") && response.ends_with("\r\n\r\n"));
            assert_eq!(parse_upgrade(&data[..head_len - 1]), Upgrade::Incomplete);
        }
        Upgrade::Reject(r) => assert!(r.response().starts_with("HTTP/1.1 4")),
        Upgrade::Incomplete => assert!(data.len() < MAX_HEAD_LEN),
    }
});

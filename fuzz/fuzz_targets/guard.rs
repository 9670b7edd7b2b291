//! The anti-spoofing parsers on arbitrary frames: never panic; a claim names the frame's own
//! IPv4 source (or ARP sender) address; a snooped binding names the BOOTP chaddr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::switch::guard::{inspect, snoop, Snoop};
use tapwire::switch::Mac;

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: &[u8]| {
    let src = Mac::source(data).unwrap_or(Mac([2, 0, 0, 0, 0, 1]));
    if let Ok(claim) = inspect(data, src) {
        if let Some((ip, _)) = claim.address {
            let at = match u16::from_be_bytes([data[12], data[13]]) {
                0x0800 => 26,
                0x0806 => 28,
                t => panic!("ethertype {t:#x} claimed an address"),
            };
            assert_eq!(&data[at..at + 4], &ip);
        }
    }
    if let Some(Snoop::Ack { ip, .. }) = snoop(data) {
        assert_ne!(ip, [0; 4]);
    }
});

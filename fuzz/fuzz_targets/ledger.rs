//! A ledger read after a crash or damage: any bytes, truncated anywhere. Never a panic; every
//! change read back writes the same line; a cut file gives a prefix of the whole file's
//! changes (a cut line is never read as a change with a cut path).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::control::ledger::{parse_ledger, Change};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: (&[u8], u16)| {
    let (bytes, cut) = data;
    let whole = parse_ledger(bytes);
    for change in &whole {
        assert_eq!(Change::parse(&change.to_line()).as_ref(), Some(change));
    }
    let cut = usize::from(cut) % (bytes.len() + 1);
    let part = parse_ledger(&bytes[..cut]);
    assert!(part.len() <= whole.len());
    assert_eq!(part[..], whole[..part.len()]);
});

//! Frame header parsing, differential against tungstenite: wherever ours accepts, tungstenite
//! reads the same header of the same length; wherever ours waits for more, so does it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use tapwire::ws::frame::{parse_header, HeaderError};

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: &[u8]| {
    let mut cursor = Cursor::new(data);
    let theirs = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor);
    match parse_header(data, false) {
        Ok(Some((h, n))) => {
            let (t, len) = theirs.expect("tungstenite rejected a header we accept").expect("tungstenite wants more");
            assert_eq!((h.fin, h.opcode, h.mask, h.payload_len), (t.is_final, u8::from(t.opcode), t.mask, len));
            assert_eq!(n as u64, cursor.position());
        }
        Ok(None) => assert!(matches!(theirs, Ok(None))),
        Err(HeaderError::ReservedBits) => assert!(data[0] & 0x70 != 0),
        Err(HeaderError::ReservedOpcode(op)) => assert!(matches!(op, 3..=7 | 11..=15)),
        Err(HeaderError::ControlFragmented) => assert!(data[0] & 0x88 == 0x08),
        Err(HeaderError::ControlTooLong) => assert!(data[0] & 0x08 != 0 && data[1] & 0x7F > 125),
        Err(HeaderError::NonMinimalLength) | Err(HeaderError::LengthTopBit) => {
            assert!(matches!(data[1] & 0x7F, 126 | 127));
        }
        Err(HeaderError::Unmasked) => unreachable!("masking not required here"),
    }
});

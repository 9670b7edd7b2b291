//! Property tests for the WebSocket codec: split-anywhere invariance of the streaming decoder
//! and differential header parsing against tungstenite.

use std::io::Cursor;

use proptest::prelude::*;
use tapwire::ws::frame::{self, apply_mask, encode_header, parse_header, HeaderError};
use tapwire::ws::{Event, Session};

/// What a client sends: binary messages (possibly fragmented) with pings between frames.
#[derive(Debug, Clone)]
enum Item {
    Binary { payload: Vec<u8>, fragments: usize },
    Ping(Vec<u8>),
}

/// What the decoder should report for a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(Vec<u8>),
    Runt(usize),
    Ping(Vec<u8>),
}

fn frame_bytes(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) {
    let mut head = [0u8; 14];
    let n = encode_header(&mut head, fin, opcode, payload.len(), Some(key));
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
}

fn encode(items: &[Item], key: [u8; 4]) -> (Vec<u8>, Vec<Seen>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for item in items {
        match item {
            Item::Ping(p) => {
                frame_bytes(&mut wire, true, frame::OP_PING, p, key);
                expected.push(Seen::Ping(p.clone()));
            }
            Item::Binary { payload, fragments } => {
                let parts = (*fragments).max(1);
                let step = payload.len().div_ceil(parts).max(1);
                let chunks: Vec<&[u8]> = if payload.is_empty() {
                    vec![&payload[..]]
                } else {
                    payload.chunks(step).collect()
                };
                for (i, chunk) in chunks.iter().enumerate() {
                    let op = if i == 0 {
                        frame::OP_BINARY
                    } else {
                        frame::OP_CONTINUATION
                    };
                    frame_bytes(&mut wire, i + 1 == chunks.len(), op, chunk, key);
                }
                if payload.len() < 14 {
                    expected.push(Seen::Runt(payload.len()));
                } else {
                    expected.push(Seen::Message(payload.clone()));
                }
            }
        }
    }
    (wire, expected)
}

/// Feeds `wire` to a fresh session in chunks cut at `cuts` (sorted offsets).
fn decode(wire: &[u8], cuts: &[usize], max: usize) -> Vec<Seen> {
    let mut session = Session::new(max, true);
    let mut seen = Vec::new();
    let mut assembly: Vec<u8> = Vec::new();
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|c| *c > 0 && *c < wire.len()));
    bounds.push(wire.len());
    bounds.dedup();
    for w in bounds.windows(2) {
        let mut buf = wire[w[0]..w[1]].to_vec();
        let mut pos = 0;
        while let Some(ev) = session.next(&mut buf, &mut pos).expect("valid stream") {
            match ev {
                Event::Message(r) => seen.push(Seen::Message(buf[r].to_vec())),
                Event::Piece { range, first } => {
                    if first {
                        assembly.clear();
                    }
                    assembly.extend_from_slice(&buf[range]);
                    assert!(assembly.len() <= max);
                }
                Event::Assembled => seen.push(Seen::Message(std::mem::take(&mut assembly))),
                Event::Runt { len } => {
                    assembly.clear();
                    seen.push(Seen::Runt(len));
                }
                Event::Ping => seen.push(Seen::Ping(session.control_payload().to_vec())),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    seen
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (prop::collection::vec(any::<u8>(), 0..1600), 1usize..4).prop_map(|(payload, fragments)| Item::Binary { payload, fragments }),
        1 => (prop::collection::vec(any::<u8>(), 14..70_000)).prop_map(|payload| Item::Binary { payload, fragments: 1 }),
        1 => prop::collection::vec(any::<u8>(), 0..126).prop_map(Item::Ping),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every message comes out the same whichever single byte the stream is split at.
    #[test]
    fn split_at_every_point(items in prop::collection::vec(item(), 1..4).prop_filter("small", |v| v.iter().all(|i| !matches!(i, Item::Binary{payload, ..} if payload.len() > 3000))), key in any::<[u8; 4]>()) {
        let (wire, expected) = encode(&items, key);
        for cut in 0..=wire.len() {
            prop_assert_eq!(&decode(&wire, &[cut], 70_000), &expected, "cut at {}", cut);
        }
    }

    /// And whichever way it is cut into many pieces, including 1-byte reads.
    #[test]
    fn split_anywhere_many(items in prop::collection::vec(item(), 1..8), key in any::<[u8; 4]>(), raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40)) {
        let (wire, expected) = encode(&items, key);
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(&decode(&wire, &cuts, 70_000), &expected);
    }

    /// Our header parser agrees with tungstenite's wherever ours accepts or waits, and each
    /// rejection of ours is justified by the bytes.
    #[test]
    fn header_parse_matches_tungstenite(bytes in prop::collection::vec(any::<u8>(), 0..16), fix_len in any::<bool>()) {
        let mut bytes = bytes;
        if fix_len && bytes.len() > 1 {
            // Bias towards plausible headers: known opcode, no RSV.
            bytes[0] = (bytes[0] & 0x8F & 0xF0) | [0, 1, 2, 8, 9, 10][usize::from(bytes[0]) % 6];
        }
        let ours = parse_header(&bytes, false);
        let mut cursor = Cursor::new(&bytes);
        let theirs = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor);
        match (ours, theirs) {
            (Ok(Some((h, n))), Ok(Some((t, len)))) => {
                prop_assert_eq!(h.fin, t.is_final);
                prop_assert_eq!(h.opcode, u8::from(t.opcode));
                prop_assert_eq!(h.mask, t.mask);
                prop_assert_eq!(h.payload_len, len);
                prop_assert_eq!(n as u64, cursor.position());
            }
            (Ok(None), Ok(None)) => {}
            (Err(HeaderError::ReservedBits), _) => prop_assert!(bytes[0] & 0x70 != 0),
            (Err(HeaderError::ReservedOpcode(op)), t) => {
                prop_assert!(matches!(op, 3..=7 | 11..=15));
                prop_assert!(!matches!(t, Ok(Some(_))));
            }
            (Err(HeaderError::ControlFragmented), _) => prop_assert!(bytes[0] & 0x88 == 0x08),
            (Err(HeaderError::ControlTooLong), _) => prop_assert!(bytes[0] & 0x08 != 0 && bytes[1] & 0x7F > 125),
            (Err(HeaderError::NonMinimalLength), Ok(Some((_, len)))) => {
                prop_assert!((bytes[1] & 0x7F == 126 && len < 126) || (bytes[1] & 0x7F == 127 && len <= 0xFFFF));
            }
            (Err(HeaderError::LengthTopBit), Ok(Some((_, len)))) => prop_assert!(len >> 63 == 1),
            (Err(e), t) => {
                // Our checks run before the length is complete; tungstenite may still wait.
                prop_assert!(matches!(t, Ok(None)), "ours {:?} theirs {:?}", e, t);
            }
            (o, t) => prop_assert!(false, "ours {:?} theirs {:?}", o, t),
        }
    }
}

#[test]
fn violations_carry_close_codes() {
    let cases: &[(&[u8], u16)] = &[
        (&[0x81, 0x80, 0, 0, 0, 0], 1003),             // text
        (&[0x82, 0x00], 1002),                         // unmasked
        (&[0xA2, 0x80, 0, 0, 0, 0], 1002),             // RSV2
        (&[0x83, 0x80, 0, 0, 0, 0], 1002),             // reserved opcode
        (&[0x82, 0xFE, 0x00, 0x10, 0, 0, 0, 0], 1002), // non-minimal length
        (&[0x89, 0xFE, 0x00, 0x80, 0, 0, 0, 0], 1002), // control > 125
        (&[0x09, 0x80, 0, 0, 0, 0], 1002),             // fragmented control
        (&[0x80, 0x80, 0, 0, 0, 0], 1002),             // continuation without start
        (&[0x82, 0xFE, 0x08, 0x00, 0, 0, 0, 0], 1009), // 2048 > max 1518
    ];
    for (bytes, code) in cases {
        let mut session = Session::new(1518, true);
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let err = session
            .next(&mut buf, &mut pos)
            .expect_err("must be rejected");
        assert_eq!(err.close_code(), *code, "{bytes:02x?}");
    }
}

#[test]
fn oversized_fragmented_message_closes_1009_without_buffering() {
    let mut session = Session::new(1518, true);
    let mut wire = Vec::new();
    frame_bytes(
        &mut wire,
        false,
        frame::OP_BINARY,
        &[0u8; 1000],
        [1, 2, 3, 4],
    );
    frame_bytes(
        &mut wire,
        true,
        frame::OP_CONTINUATION,
        &[0u8; 1000],
        [1, 2, 3, 4],
    );
    let mut pos = 0;
    let mut result = Ok(None);
    for _ in 0..10 {
        result = session.next(&mut wire, &mut pos);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result.expect_err("too large").close_code(), 1009);
}

#[test]
fn close_frames() {
    let mut session = Session::new(1518, true);
    let mut wire = Vec::new();
    frame_bytes(
        &mut wire,
        true,
        frame::OP_CLOSE,
        &[0x03, 0xE8, b'o', b'k'],
        [5, 6, 7, 8],
    );
    let mut pos = 0;
    assert_eq!(
        session.next(&mut wire, &mut pos),
        Ok(Some(Event::Close { code: Some(1000) }))
    );
    let mut bad = Vec::new();
    frame_bytes(&mut bad, true, frame::OP_CLOSE, &[0x03], [5, 6, 7, 8]);
    let mut pos = 0;
    assert_eq!(
        Session::new(1518, true)
            .next(&mut bad, &mut pos)
            .map_err(|e| e.close_code()),
        Err(1002)
    );
}

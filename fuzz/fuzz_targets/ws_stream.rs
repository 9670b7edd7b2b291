//! The WebSocket stream decoder fed arbitrary bytes in arbitrary chunks: it must never panic,
//! never hand out a range outside the buffer, never let a reassembly grow past the maximum,
//! and decode the same events whichever way the stream is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire::ws::{Event, Session};

const MAX: usize = 1518;

#[derive(Debug, PartialEq)]
enum Seen {
    Message(Vec<u8>),
    Runt(usize),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
    Error(u16),
}

fn decode(data: &[u8], cuts: &[u8]) -> Vec<Seen> {
    let mut session = Session::new(MAX, true);
    let mut seen = Vec::new();
    let mut assembly = Vec::new();
    let mut rest = data;
    let mut cut_iter = cuts.iter().cycle();
    while !rest.is_empty() {
        let take = if cuts.is_empty() {
            rest.len()
        } else {
            (usize::from(*cut_iter.next().unwrap_or(&255)) + 1).min(rest.len())
        };
        let mut buf = rest[..take].to_vec();
        rest = &rest[take..];
        let mut pos = 0;
        loop {
            match session.next(&mut buf, &mut pos) {
                Ok(None) => break,
                Ok(Some(ev)) => match ev {
                    Event::Message(r) => {
                        assert!(r.end <= buf.len() && r.len() >= 14 && r.len() <= MAX);
                        seen.push(Seen::Message(buf[r].to_vec()));
                    }
                    Event::Piece { range, first } => {
                        if first {
                            assembly.clear();
                        }
                        assembly.extend_from_slice(&buf[range]);
                        assert!(assembly.len() <= MAX);
                    }
                    Event::Assembled => seen.push(Seen::Message(std::mem::take(&mut assembly))),
                    Event::Runt { len } => {
                        assembly.clear();
                        seen.push(Seen::Runt(len));
                    }
                    Event::Ping => seen.push(Seen::Ping(session.control_payload().to_vec())),
                    Event::Pong => seen.push(Seen::Pong),
                    Event::Close { code } => {
                        seen.push(Seen::Close(code));
                        return seen;
                    }
                },
                Err(v) => {
                    seen.push(Seen::Error(v.close_code()));
                    return seen;
                }
            }
            assert!(pos <= buf.len());
        }
    }
    seen
}

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let whole = decode(&data, &[]);
    let split = decode(&data, &cuts);
    assert_eq!(whole, split, "decoding depends on how the stream is cut");
});

//! One client connection's protocol (the engine's `Conn`) driven by arbitrary receives and an
//! arbitrary clock: handshake bytes (a valid upgrade first, or not), frames pipelined behind
//! it, receives split anywhere, pings, closes, challenges, stalled output and time jumps.
//! Never panics; the lifecycle moves only along its diagram; every frame and piece it names
//! lies inside the bytes passed in, and no frame or reassembly is shorter than an Ethernet
//! header or longer than the limit; decoding ends; a connection that is not open decodes
//! nothing.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tapwire::engine::conn::{Conn, ConnLimits, HandshakeStep, Input, Lifecycle, Timeout};

const UPGRADE: &[u8] = b"GET /n/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[derive(Arbitrary, Debug)]
enum Step<'a> {
    Bytes(&'a [u8]),
    Advance(u16),
    Tick { stalled_for: Option<u16> },
    Challenge,
    MayChallenge,
    Received,
    CloseGracefully(u16),
    Refuse(u16),
    Close,
}

#[derive(Arbitrary, Debug)]
struct Case<'a> {
    max_frame: u16,
    client_rate: Option<u16>,
    client_broadcast_pps: Option<u8>,
    ping_interval_ms: Option<u16>,
    slow_client_timeout_ms: u16,
    frame_timeout_ms: u16,
    upgrade_first: bool,
    steps: Vec<Step<'a>>,
}

/// 0 handshake, 1 open, 2 flushing, 3 closed: the diagram only moves forward.
fn stage(c: &Conn) -> u8 {
    match c.lifecycle() {
        Lifecycle::Handshake { .. } => 0,
        Lifecycle::Open => 1,
        Lifecycle::Flushing { .. } => 2,
        Lifecycle::Closed => 3,
    }
}

/// Decodes `bytes` as the open connection's input and checks what comes out. `assembled`
/// is the length of the reassembly in progress.
fn decode(conn: &mut Conn, bytes: &[u8], max_frame: usize, assembled: &mut Option<usize>) {
    let mut buf = bytes.to_vec();
    let mut pos = 0;
    // Each input takes at least one byte of its frame's header, and a message's pieces are
    // separate frames: more inputs than bytes means decoding does not end.
    for _ in 0..=buf.len() + 1 {
        let before = pos;
        let Some(input) = conn.next_input(&mut buf, &mut pos) else {
            assert!(pos <= buf.len());
            return;
        };
        assert!(
            // The end of a reassembly (whole, or too short) follows its last piece.
            pos > before
                || matches!(
                    input,
                    Input::Assembled | Input::Runt { .. } | Input::Close { .. }
                ),
            "{input:?} took no byte"
        );
        assert!(pos <= buf.len());
        match input {
            Input::Frame(r) => {
                assert!(r.end <= pos, "{r:?} beyond {pos}");
                assert!((14..=max_frame).contains(&r.len()), "frame of {}", r.len());
            }
            Input::Piece { range, first } => {
                assert!(range.end <= pos);
                let so_far = if first {
                    0
                } else {
                    assembled.expect("a piece after the first")
                };
                let total = so_far + range.len();
                assert!(total <= max_frame, "reassembly of {total}");
                *assembled = Some(total);
            }
            Input::Assembled => {
                let total = assembled.take().expect("assembled without pieces");
                assert!((14..=max_frame).contains(&total), "assembled {total}");
            }
            Input::Runt { len } => {
                assert!(len < 14);
                *assembled = None;
            }
            Input::Pong(reply) => assert!(reply.len() <= 2 + 125),
            Input::Close { reply, .. } => {
                assert!(reply.len() <= 2 + 125);
                assert!(!conn.is_open());
            }
        }
    }
    panic!("decoding {} bytes did not end", buf.len());
}

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |case: Case<'_>| {
    let max_frame = usize::from(case.max_frame).max(14);
    let limits = ConnLimits {
        max_frame,
        client_rate: case.client_rate.map(u64::from),
        client_broadcast_pps: case.client_broadcast_pps.map(u64::from),
        ping_interval_ms: case.ping_interval_ms.map(u64::from),
        slow_client_timeout_ms: u64::from(case.slow_client_timeout_ms),
        frame_timeout_ms: u64::from(case.frame_timeout_ms),
    };
    let mut now = 1_000u64;
    let mut conn = Conn::new(limits, now, now + 10_000);
    let mut assembled = None;
    let first = case.upgrade_first.then_some(Step::Bytes(UPGRADE));
    for step in first.into_iter().chain(case.steps) {
        let before = stage(&conn);
        match step {
            Step::Bytes(bytes) => {
                if stage(&conn) == 0 {
                    match conn.on_handshake_bytes(bytes, now) {
                        HandshakeStep::Upgraded { stream_at, response, .. } => {
                            assert!(response.starts_with(b"HTTP/1.1 101"));
                            assert!(stream_at <= bytes.len(), "stream at {stream_at} of {}", bytes.len());
                            assert!(conn.is_open());
                            decode(&mut conn, &bytes[stream_at..], max_frame, &mut assembled);
                        }
                        HandshakeStep::Rejected { response, .. } => {
                            assert!(response.starts_with(b"HTTP/1.1 4") || response.starts_with(b"HTTP/1.1 5"));
                            assert!(conn.is_flushing());
                        }
                        HandshakeStep::Incomplete => assert_eq!(stage(&conn), 0),
                    }
                } else {
                    let open = conn.is_open();
                    conn.received(now);
                    if open {
                        decode(&mut conn, bytes, max_frame, &mut assembled);
                    } else {
                        let mut buf = bytes.to_vec();
                        let mut pos = 0;
                        assert_eq!(conn.next_input(&mut buf, &mut pos), None);
                        assert_eq!(pos, 0, "a connection that is not open decoded input");
                    }
                }
            }
            Step::Advance(ms) => now += u64::from(ms),
            Step::Tick { stalled_for } => {
                let since = stalled_for.map(|d| now.saturating_sub(u64::from(d)));
                match conn.poll_timeout(now, since) {
                    Some(Timeout::Ping(p)) => assert!(conn.is_open() && p.len() <= 127),
                    Some(Timeout::Close { reply, .. }) => {
                        assert_eq!(before, 1);
                        assert!(conn.is_flushing() && reply.len() <= 127);
                    }
                    Some(Timeout::ShutDown(_)) | None => {}
                }
            }
            Step::Challenge => {
                if conn.challenge(now).is_some() {
                    assert!(conn.is_open());
                }
            }
            Step::MayChallenge => {
                let _ = conn.may_challenge(now);
            }
            Step::Received => conn.received(now),
            Step::CloseGracefully(code) => {
                if conn.close_gracefully(code).is_some() {
                    assert_eq!(before, 1);
                    assert!(conn.is_flushing());
                }
            }
            // The engine refuses only a connection that has just upgraded (access control).
            Step::Refuse(ms) if before == 1 => conn.refuse(now, u64::from(ms)),
            Step::Refuse(_) => {}
            Step::Close => conn.close(),
        }
        assert!(stage(&conn) >= before, "{before} went back to {}", stage(&conn));
        if !conn.is_open() {
            assert!(!conn.wants_input() || stage(&conn) == 0);
        }
    }
});

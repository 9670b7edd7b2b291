//! The lifecycle of a connection, step by step: handshake → open → ping → close with a
//! violation code → flushed.

use super::*;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn limits() -> ConnLimits {
    ConnLimits {
        max_frame: 1518,
        client_rate: None,
        client_broadcast_pps: None,
        ping_interval_ms: Some(1_000),
        slow_client_timeout_ms: 5_000,
        frame_timeout_ms: 3_000,
    }
}

/// A masked client frame (mask key 1, 2, 3, 4).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut out = vec![0; frame::header_len(payload.len(), true)];
    frame::encode_header(&mut out, true, opcode, payload.len(), Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[start..], key, 0);
    out
}

fn open_conn() -> Conn {
    let mut c = Conn::new(limits(), 0, 10_000);
    assert!(matches!(
        c.on_handshake_bytes(UPGRADE, 0),
        HandshakeStep::Upgraded { stream_at, .. } if stream_at == UPGRADE.len()
    ));
    c
}

fn inputs(c: &mut Conn, bytes: &mut [u8]) -> Vec<Input> {
    let mut pos = 0;
    std::iter::from_fn(|| c.next_input(bytes, &mut pos)).collect()
}

#[test]
fn handshake_split_then_open_with_early_frame() {
    let mut c = Conn::new(limits(), 0, 10_000);
    assert_eq!(
        c.on_handshake_bytes(&UPGRADE[..20], 0),
        HandshakeStep::Incomplete
    );
    let mut rest = UPGRADE[20..].to_vec();
    let frame = masked(frame::OP_BINARY, &[0xAB; 60]);
    rest.extend_from_slice(&frame);
    let HandshakeStep::Upgraded {
        response,
        stream_at,
        ..
    } = c.on_handshake_bytes(&rest, 5)
    else {
        panic!("not upgraded");
    };
    assert!(response.starts_with(b"HTTP/1.1 101"));
    assert!(c.is_open() && c.wants_input());
    let early = &mut rest[stream_at..];
    assert_eq!(early, &frame[..]);
    let got = inputs(&mut c, early);
    let [Input::Frame(range)] = &got[..] else {
        panic!("{got:?}");
    };
    assert_eq!(&early[range.clone()], &[0xAB; 60][..]);
}

/// Everything behind the head's blank line is the WebSocket stream, whatever the head's length
/// and however much follows it in one receive, and however the head itself was split.
#[test]
fn pipelined_frames_behind_any_head_are_all_decoded() {
    let padding = |n: usize| format!("X-Pad: {}\r\n", "p".repeat(n));
    for pad in [0, 1_000, 7_000] {
        let head = String::from_utf8(UPGRADE.to_vec()).unwrap().replacen(
            "\r\n\r\n",
            &format!("\r\n{}\r\n", padding(pad)),
            1,
        );
        for count in [1, 2, 20, 40] {
            for split in [0, 10, head.len() - 1] {
                let mut c = Conn::new(limits(), 0, 10_000);
                if split > 0 {
                    assert_eq!(
                        c.on_handshake_bytes(&head.as_bytes()[..split], 0),
                        HandshakeStep::Incomplete
                    );
                }
                let mut rest = head.as_bytes()[split..].to_vec();
                for i in 0..count {
                    rest.extend_from_slice(&masked(frame::OP_BINARY, &[i as u8; 1514]));
                }
                let HandshakeStep::Upgraded { stream_at, .. } = c.on_handshake_bytes(&rest, 0)
                else {
                    panic!("head of {} bytes not upgraded", head.len());
                };
                let stream = &mut rest[stream_at..];
                let got = inputs(&mut c, stream);
                assert_eq!(got.len(), count, "pad {pad} count {count} split {split}");
                for (i, input) in got.iter().enumerate() {
                    let Input::Frame(range) = input else {
                        panic!("{input:?}");
                    };
                    assert_eq!(&stream[range.clone()], &[i as u8; 1514][..]);
                }
            }
        }
    }
}

#[test]
fn bad_request_flushes_and_keeps_the_deadline() {
    let mut c = Conn::new(limits(), 0, 10_000);
    let step = c.on_handshake_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    assert!(matches!(
        step,
        HandshakeStep::Rejected {
            reason: DropReason::NotWebsocket,
            ..
        }
    ));
    assert_eq!(
        c.lifecycle(),
        &Lifecycle::Flushing {
            deadline_ms: Some(10_000)
        }
    );
    assert!(!c.wants_input() && c.wants_output() && !c.is_open());
    assert_eq!(c.poll_timeout(9_999, None), None);
    assert_eq!(
        c.poll_timeout(10_000, None),
        Some(Timeout::ShutDown(DropReason::HandshakeTimeout))
    );
}

#[test]
fn oversized_head_is_refused() {
    let mut c = Conn::new(limits(), 0, 10_000);
    let junk = vec![b'a'; handshake::MAX_HEAD_LEN + 100];
    assert!(matches!(
        c.on_handshake_bytes(&junk, 0),
        HandshakeStep::Rejected {
            reason: DropReason::HeadTooLarge,
            ..
        }
    ));
}

#[test]
fn handshake_deadline() {
    let mut c = Conn::new(limits(), 0, 10_000);
    assert_eq!(c.poll_timeout(9_999, None), None);
    assert_eq!(
        c.poll_timeout(10_000, None),
        Some(Timeout::ShutDown(DropReason::HandshakeTimeout))
    );
}

#[test]
fn ping_pong_and_pong_timeout() {
    let mut c = open_conn();
    assert_eq!(c.poll_timeout(500, None), None);
    let Some(Timeout::Ping(ping)) = c.poll_timeout(1_000, None) else {
        panic!("no ping");
    };
    assert_eq!(ping[0], 0x80 | frame::OP_PING);
    assert!(ping.ends_with(b"tapwire"), "the documented payload");
    // Pinged: no second ping while waiting.
    assert_eq!(c.poll_timeout(1_500, None), None);
    // The pong answers it; the clock restarts from the last input.
    let mut pong = masked(frame::OP_PONG, b"tapwire");
    assert!(inputs(&mut c, &mut pong).is_empty());
    c.received(1_600);
    assert_eq!(c.poll_timeout(2_000, None), None);
    assert!(matches!(
        c.poll_timeout(2_600, None),
        Some(Timeout::Ping(_))
    ));
    // No answer for an interval: a graceful 1001, once.
    let Some(Timeout::Close {
        reason: DropReason::PongTimeout,
        reply: close,
    }) = c.poll_timeout(3_600, None)
    else {
        panic!("no pong timeout");
    };
    assert_eq!(close, server_close_frame(1001));
    assert!(c.is_flushing());
    assert_eq!(c.poll_timeout(4_600, None), None);
}

#[test]
fn client_ping_is_answered_with_its_payload() {
    let mut c = open_conn();
    let mut ping = masked(frame::OP_PING, b"hello");
    let got = inputs(&mut c, &mut ping);
    assert_eq!(
        got,
        vec![Input::Pong(server_control_frame(frame::OP_PONG, b"hello"))]
    );
    assert!(c.is_open());
}

#[test]
fn violation_closes_with_its_code_and_stops_decoding() {
    let mut c = open_conn();
    let mut bytes = masked(frame::OP_TEXT, b"hi there");
    bytes.extend_from_slice(&masked(frame::OP_BINARY, &[1; 20]));
    let got = inputs(&mut c, &mut bytes);
    let [Input::Close {
        reply,
        violation: Some((DropReason::TextMessage, _)),
    }] = &got[..]
    else {
        panic!("{got:?}");
    };
    assert_eq!(reply, &server_close_frame(1003));
    assert!(c.is_flushing() && !c.wants_input());
    // Flushing, then the queue is sent and the socket shut down.
    c.close();
    assert!(c.is_closed() && !c.wants_output());
}

#[test]
fn unmasked_frame_is_1002() {
    let mut c = open_conn();
    let mut bytes = vec![0x82, 14];
    bytes.extend_from_slice(&[0; 14]);
    let got = inputs(&mut c, &mut bytes);
    assert!(matches!(
        &got[..],
        [Input::Close { violation: Some((DropReason::ProtocolViolation, v)), .. }] if v.close_code() == 1002
    ));
}

#[test]
fn close_is_echoed() {
    let mut c = open_conn();
    let mut bytes = masked(frame::OP_CLOSE, &1000u16.to_be_bytes());
    let got = inputs(&mut c, &mut bytes);
    assert_eq!(
        got,
        vec![Input::Close {
            reply: server_close_frame(1000),
            violation: None
        }]
    );
}

#[test]
fn runt_is_reported_and_the_client_kept() {
    let mut c = open_conn();
    let mut bytes = masked(frame::OP_BINARY, &[1; 5]);
    assert_eq!(inputs(&mut c, &mut bytes), vec![Input::Runt { len: 5 }]);
    assert!(c.is_open());
}

#[test]
fn stalled_output_shuts_down() {
    let mut c = Conn::new(
        ConnLimits {
            ping_interval_ms: None,
            ..limits()
        },
        0,
        10_000,
    );
    let _ = c.on_handshake_bytes(UPGRADE, 0);
    assert_eq!(c.poll_timeout(4_999, Some(0)), None);
    assert_eq!(
        c.poll_timeout(5_000, Some(0)),
        Some(Timeout::ShutDown(DropReason::SlowClient))
    );
    // Also while flushing a close frame the client does not take.
    let _ = c.close_gracefully(1001);
    assert_eq!(
        c.poll_timeout(6_000, Some(1_000)),
        Some(Timeout::ShutDown(DropReason::SlowClient))
    );
}

#[test]
fn graceful_close_only_when_open() {
    let mut c = Conn::new(limits(), 0, 10_000);
    assert_eq!(c.close_gracefully(1001), None);
    let mut c = open_conn();
    assert_eq!(c.close_gracefully(1001), Some(server_close_frame(1001)));
    assert_eq!(c.close_gracefully(1001), None);
}

#[test]
fn limits_name_what_was_exceeded() {
    let mut c = Conn::new(
        ConnLimits {
            client_rate: Some(2_000),
            client_broadcast_pps: Some(1),
            ..limits()
        },
        0,
        10_000,
    );
    let _ = c.on_handshake_bytes(UPGRADE, 0);
    assert_eq!(c.charge(1_518, true, 0), Ok(()));
    assert_eq!(c.charge(60, true, 0), Err("over --client-broadcast-pps"));
    assert_eq!(c.charge(1_518, false, 0), Err("over --client-rate"));
    assert_eq!(c.charge(60, false, 1_000), Ok(()));
}

#[test]
fn log_suppression_per_reason() {
    let mut c = open_conn();
    assert!(c.first_log(DropReason::RuntFrame));
    assert!(!c.first_log(DropReason::RuntFrame));
    assert!(c.first_log(DropReason::RateLimited));
    c.reset_log();
    assert!(c.first_log(DropReason::RuntFrame));
}

/// A frame in progress has a deadline from its first byte: trickling it (which keeps the
/// client from ever being idle, so no ping fires) ends in a close 1008, while a client whose
/// frames keep completing, even split across every receive, never meets it.
#[test]
fn a_frame_in_progress_has_a_deadline_from_its_first_byte() {
    let mut c = open_conn();
    let frame = masked(frame::OP_BINARY, &[0x11; 1514]);
    // One byte per second: proof of life each time, but the frame never completes.
    for (t, byte) in frame.iter().take(3).enumerate() {
        let now = t as u64 * 1_000 + 1;
        c.received(now);
        let mut b = [*byte];
        assert!(inputs(&mut c, &mut b)
            .iter()
            .all(|i| matches!(i, Input::Piece { .. })));
        assert_eq!(
            c.poll_timeout(now, None),
            None,
            "no ping, no deadline yet at {now}"
        );
    }
    let Some(Timeout::Close { reason, reply }) = c.poll_timeout(3_001, None) else {
        panic!("no frame timeout");
    };
    assert_eq!(reason, DropReason::FrameTimeout);
    assert_eq!(reply, server_close_frame(1008));
    assert!(c.is_flushing());

    // An honest client: frames straddle every receive boundary, each completes soon after
    // it started, for far longer than the deadline.
    let mut c = open_conn();
    let stream: Vec<u8> = (0..50)
        .flat_map(|_| masked(frame::OP_BINARY, &[0x22; 1000]))
        .collect();
    let mut now = 0;
    for chunk in stream.chunks(700) {
        now += 500;
        c.received(now);
        let mut bytes = chunk.to_vec();
        inputs(&mut c, &mut bytes);
        assert!(
            !matches!(c.poll_timeout(now, None), Some(Timeout::Close { .. })),
            "an honest stream was closed at {now} ms"
        );
    }
    assert!(now > 3 * 3_000);
    // A header split across receives counts as a frame in progress too.
    let mut c = open_conn();
    c.received(10);
    let mut head = [0x82u8];
    assert!(inputs(&mut c, &mut head).is_empty());
    assert!(matches!(
        c.poll_timeout(3_010, None),
        Some(Timeout::Close {
            reason: DropReason::FrameTimeout,
            ..
        })
    ));
}

/// The owner of a MAC another client wants is pinged; any byte from it within the bound keeps
/// it, silence (a half-open connection) shuts it down so the MAC goes free.
#[test]
fn a_challenged_owner_must_show_it_is_alive() {
    let open_conn = || {
        let no_pings = ConnLimits {
            ping_interval_ms: None,
            ..limits()
        };
        let mut c = Conn::new(no_pings, 0, 10_000);
        c.on_handshake_bytes(UPGRADE, 0);
        c
    };
    let mut c = open_conn();
    let ping = c.challenge(1_000).expect("a ping");
    assert_eq!(ping, server_control_frame(frame::OP_PING, PING_PAYLOAD));
    assert_eq!(c.challenge(1_500), None, "one challenge at a time");
    assert_eq!(c.poll_timeout(1_000 + CHALLENGE_MS - 1, None), None);
    assert_eq!(
        c.poll_timeout(1_000 + CHALLENGE_MS, None),
        Some(Timeout::ShutDown(DropReason::MacTakeover))
    );

    let mut live = open_conn();
    live.challenge(1_000).expect("a ping");
    live.received(1_200); // its pong
    assert_eq!(live.poll_timeout(1_000 + CHALLENGE_MS, None), None);
    assert!(
        live.challenge(5_000).is_some(),
        "it can be challenged again later"
    );

    let mut challenger = open_conn();
    assert!(challenger.may_challenge(0));
    assert!(
        !challenger.may_challenge(CHALLENGE_MS - 1),
        "once per bound"
    );
    assert!(challenger.may_challenge(CHALLENGE_MS));
}

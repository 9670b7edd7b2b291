use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;

/// A server session with a fresh self-signed certificate for "localhost", and a client that
/// trusts it.
fn pair() -> (TlsSession, ClientConnection) {
    let (server, client) = configs();
    (
        TlsSession::new(server).unwrap(),
        ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap(),
    )
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "tapwire-tls-unit-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), key.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
    let certs = crate::tls::Certs::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    (certs.current(), Arc::new(client))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Client → server: everything the client has to send, in pieces of `chunk` bytes; returns
/// the plaintext the server got, or its failure.
fn to_server(
    server: &mut TlsSession,
    client: &mut ClientConnection,
    chunk: usize,
) -> Result<(Vec<u8>, Received), Failure> {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    feed(server, &mut wire, chunk)
}

fn feed(
    server: &mut TlsSession,
    wire: &mut [u8],
    chunk: usize,
) -> Result<(Vec<u8>, Received), Failure> {
    let mut plain = Vec::new();
    let mut all = Received::default();
    for piece in wire.chunks_mut(chunk.max(1)) {
        let got = server.receive(piece, &mut |p| plain.extend_from_slice(p))?;
        all.handshaken |= got.handshaken;
        all.peer_closed |= got.peer_closed;
    }
    Ok((plain, all))
}

/// Server → client: everything the server has to send; returns what the client read.
fn to_client(
    server: &mut TlsSession,
    client: &mut ClientConnection,
) -> Result<Vec<u8>, rustls::Error> {
    server.prepare();
    while let Some(bytes) = server.unsent() {
        let n = bytes.len();
        let mut reader = bytes;
        client.read_tls(&mut reader).unwrap();
        server.advance(n - reader.len());
        client.process_new_packets()?;
    }
    let mut plain = Vec::new();
    match client.reader().read_to_end(&mut plain) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("client read: {e}"),
    }
    Ok(plain)
}

fn handshake(server: &mut TlsSession, client: &mut ClientConnection) {
    for _ in 0..4 {
        let (_, got) = to_server(server, client, usize::MAX).unwrap();
        to_client(server, client).unwrap();
        if got.handshaken {
            assert!(server.handshaken() && !client.is_handshaking());
            return;
        }
    }
    panic!("no handshake");
}

#[test]
fn handshake_then_data_both_ways() {
    let (mut server, mut client) = pair();
    assert_eq!(
        server.room(),
        0,
        "nothing is encrypted before the handshake"
    );
    handshake(&mut server, &mut client);
    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let (plain, _) = to_server(&mut server, &mut client, usize::MAX).unwrap();
    assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
    server.prepare();
    assert!(server.room() >= 16_384);
    server.encrypt(b"HTTP/1.1 101 ").unwrap();
    server.encrypt(b"Switching Protocols").unwrap();
    assert_eq!(
        to_client(&mut server, &mut client).unwrap(),
        b"HTTP/1.1 101 Switching Protocols"
    );
}

#[test]
fn records_split_anywhere_decrypt_to_the_same_stream() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
    for chunk in [1, 5, 6, 700, 16_384, 17_000] {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        client.writer().write_all(&data).unwrap();
        let (plain, _) = to_server(&mut server, &mut client, chunk).unwrap();
        assert!(
            plain == data,
            "chunk {chunk}: {} of {} bytes",
            plain.len(),
            data.len()
        );
    }
}

#[test]
fn large_output_goes_out_in_records_and_partial_sends() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    let data: Vec<u8> = (0..30_000u32).map(|i| i as u8).collect();
    server.prepare();
    server.encrypt(&data).unwrap();
    // The kernel takes 1000 bytes at a time.
    let mut got = Vec::new();
    while let Some(bytes) = server.unsent() {
        let mut piece = &bytes[..bytes.len().min(1000)];
        client.read_tls(&mut piece).unwrap();
        server.advance(1000);
        client.process_new_packets().unwrap();
        let mut buf = vec![0; 65_536];
        if let Ok(n) = client.reader().read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got == data);
    assert!(!server.has_output());
}

#[test]
fn garbage_or_plain_http_is_not_tls() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0x15, 0x03, 0x03, 0, 2, 2, 40][..],
    ] {
        let (mut server, _) = pair();
        let failure = feed(&mut server, &mut input.to_vec(), usize::MAX).unwrap_err();
        assert_eq!(
            failure.reason,
            DropReason::TlsNotTls,
            "{input:?}: {failure:?}"
        );
        // Nothing more is processed afterwards.
        assert!(feed(&mut server, &mut input.to_vec(), usize::MAX)
            .unwrap()
            .0
            .is_empty());
    }
}

#[test]
fn a_malformed_client_hello_fails_the_handshake() {
    let (mut server, mut client) = pair();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    // A handshake record whose body is garbage.
    let body_len = wire.len() - 5;
    for b in &mut wire[5..] {
        *b = 0xee;
    }
    assert!(body_len > 0);
    let failure = feed(&mut server, &mut wire, usize::MAX).unwrap_err();
    assert_eq!(
        failure.reason,
        DropReason::TlsHandshakeFailed,
        "{failure:?}"
    );
}

/// The ClientHello split over several records, which rustls reads and joins before it
/// consumes them: they must reach it again, in order, whatever the receive boundaries.
#[test]
fn a_client_hello_split_across_records_and_receives_completes() {
    for (pieces, chunk) in [(2, usize::MAX), (3, 1), (5, 7), (4, 300)] {
        let (mut server, mut client) = pair();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        assert_eq!(hello[0], 0x16);
        let body = &hello[5..];
        let mut wire = Vec::new();
        for part in body.chunks(body.len().div_ceil(pieces)) {
            wire.extend_from_slice(&[0x16, 3, 1]);
            wire.extend_from_slice(&(part.len() as u16).to_be_bytes());
            wire.extend_from_slice(part);
        }
        feed(&mut server, &mut wire, chunk).unwrap();
        to_client(&mut server, &mut client).unwrap();
        let (_, got) = to_server(&mut server, &mut client, chunk).unwrap();
        assert!(got.handshaken, "{pieces} records in receives of {chunk}");
        client.writer().write_all(b"after").unwrap();
        assert_eq!(
            to_server(&mut server, &mut client, chunk).unwrap().0,
            b"after"
        );
    }
}

#[test]
fn an_oversized_record_is_refused_on_its_header() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    // Split so that the header arrives alone: no 64 KiB are waited for.
    let mut header = [0x17, 0x03, 0x03, 0xff, 0xff];
    let (first, rest) = header.split_at_mut(3);
    assert!(feed(&mut server, first, usize::MAX).is_ok());
    let failure = feed(&mut server, rest, usize::MAX).unwrap_err();
    assert_eq!(failure.reason, DropReason::TlsBadRecord, "{failure:?}");
}

#[test]
fn a_corrupted_record_is_refused_and_answered_with_an_alert() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    client.writer().write_all(b"0123456789").unwrap();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let failure = feed(&mut server, &mut wire, usize::MAX).unwrap_err();
    assert_eq!(failure.reason, DropReason::TlsBadRecord, "{failure:?}");
    server.prepare();
    let alert = server.unsent().expect("an alert").to_vec();
    client.read_tls(&mut &alert[..]).unwrap();
    assert!(
        client.process_new_packets().is_err(),
        "the client sees the alert"
    );
}

#[test]
fn a_fatal_alert_from_the_client_mid_stream_is_counted_as_such() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    // The client gets a corrupted record and answers with a fatal alert.
    server.prepare();
    server.encrypt(b"data").unwrap();
    let mut bad = server.unsent().unwrap().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    client.read_tls(&mut &bad[..]).unwrap();
    assert!(client.process_new_packets().is_err());
    let failure = to_server(&mut server, &mut client, usize::MAX).unwrap_err();
    assert_eq!(failure.reason, DropReason::TlsAlert, "{failure:?}");
}

#[test]
fn close_notify_both_ways() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    client.send_close_notify();
    let (_, got) = to_server(&mut server, &mut client, usize::MAX).unwrap();
    assert!(got.peer_closed);
    server.prepare();
    assert!(!server.close_done());
    server.queue_close_notify();
    assert!(server.close_done() && server.room() == 0);
    to_client(&mut server, &mut client).unwrap();
    assert!(client.process_new_packets().unwrap().peer_has_closed());
}

#[test]
fn output_made_while_a_send_is_in_flight_waits_behind_it() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    server.prepare();
    server.encrypt(b"first").unwrap();
    let first = server.unsent().unwrap().to_vec();
    let in_flight = first.len();
    // A key update from the client makes the server answer with its own while "first" is in
    // flight: the answer goes behind it.
    client.refresh_traffic_keys().unwrap();
    to_server(&mut server, &mut client, usize::MAX).unwrap();
    assert_eq!(
        server.unsent().unwrap().len(),
        in_flight,
        "tx untouched while in flight"
    );
    assert!(server.has_output());
    client.read_tls(&mut &first[..]).unwrap();
    client.process_new_packets().unwrap();
    server.advance(in_flight);
    server.prepare();
    server.encrypt(b" second").unwrap();
    assert_eq!(
        to_client(&mut server, &mut client).unwrap(),
        b"first second"
    );
}

#[test]
fn an_idle_session_gives_its_send_buffer_back_and_works_with_the_next_one_lent() {
    let (mut server, mut client) = pair();
    assert!(
        server.needs_buffer(),
        "no send buffer before there is output"
    );
    assert_eq!(server.release(), None);
    handshake(&mut server, &mut client);
    // Everything went out: the buffer comes back, of the size a pool hands out, and the
    // handshake's output left no capacity behind.
    assert_eq!(server.later.capacity(), 0);
    let buffer = server.release().expect("buffer back");
    assert_eq!(buffer.len(), TX_SIZE);
    assert!(server.needs_buffer());
    // Lent again (dirty from before): the next output goes out whole.
    server.attach(buffer);
    server.prepare();
    server.encrypt(b"after").unwrap();
    assert_eq!(server.release(), None, "unsent output keeps the buffer");
    let unsent = server.unsent().unwrap().to_vec();
    client.read_tls(&mut &unsent[..]).unwrap();
    client.process_new_packets().unwrap();
    server.advance(unsent.len());
    let mut plain = [0u8; 5];
    client.reader().read_exact(&mut plain).unwrap();
    assert_eq!(&plain, b"after");
    assert!(server.release().is_some());
    // Without a buffer lent, prepare makes one.
    server.prepare();
    server.encrypt(b"again").unwrap();
    assert_eq!(to_client(&mut server, &mut client).unwrap(), b"again");
}

#[test]
fn a_send_buffer_not_of_the_pool_size_is_freed_not_handed_back() {
    let (mut server, mut client) = pair();
    handshake(&mut server, &mut client);
    assert!(server.release().is_some());
    // close_notify with no buffer lent: the session makes a small one of its own.
    server.queue_close_notify();
    assert!(server.has_output());
    assert_eq!(server.release(), None, "unsent close_notify keeps it");
    to_client(&mut server, &mut client).unwrap();
    assert!(client.process_new_packets().unwrap().peer_has_closed());
    assert_eq!(server.release(), None, "not of the pool's size: freed");
    assert!(server.needs_buffer());
}

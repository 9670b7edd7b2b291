//! A wss:// client's TLS session driven by a real rustls client and the fuzzer: arbitrary
//! bytes before a handshake (no plaintext comes out and no session is made), or after one a
//! sequence of client writes delivered in arbitrary pieces, server writes, injected bytes and
//! close_notify. Never panics; without injected bytes the server reads exactly what the
//! client wrote and the client exactly what the server wrote.
#![no_main]

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use tapwire::engine::tls_session::TlsSession;

fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("tapwire-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.pem"), key.cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), key.signing_key.serialize_pem()).unwrap();
        let certs = tapwire::tls::Certs::load(&dir.join("c.pem"), &dir.join("k.pem")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut roots = RootCertStore::empty();
        roots.add(key.cert.der().clone()).unwrap();
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        (certs.current(), Arc::new(client))
    })
}

/// Delivers the client's pending bytes to the server in pieces of `piece`; false once the
/// server failed.
fn deliver(
    server: &mut TlsSession,
    client: &mut ClientConnection,
    piece: usize,
    got: &mut Vec<u8>,
) -> bool {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    for p in wire.chunks_mut(piece.max(1)) {
        if server
            .receive(p, &mut |b| got.extend_from_slice(b))
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Everything the server has to send, to the client; what the client read.
fn back(server: &mut TlsSession, client: &mut ClientConnection) -> Option<Vec<u8>> {
    server.prepare();
    while let Some(bytes) = server.unsent() {
        let n = bytes.len();
        let mut r = bytes;
        client.read_tls(&mut r).ok()?;
        server.advance(n - r.len());
        client.process_new_packets().ok()?;
    }
    let mut out = Vec::new();
    let _ = client.reader().read_to_end(&mut out);
    Some(out)
}

fuzz_target!(init: tapwire_fuzz::checks_are_on(), |data: &[u8]| {
    let (server_config, client_config) = configs();
    let mut server = TlsSession::new(server_config.clone()).unwrap();
    let Some((&mode, ops)) = data.split_first() else {
        return;
    };
    if mode < 64 {
        // Arbitrary bytes as the first thing a client sends, in pieces of `mode + 1`.
        let mut input = ops.to_vec();
        let mut plaintext = 0usize;
        for p in input.chunks_mut(usize::from(mode) + 1) {
            if server.receive(p, &mut |b| plaintext += b.len()).is_err() {
                break;
            }
        }
        // No application data, and no session, without a handshake (the fuzzer cannot forge
        // a client's Finished).
        assert_eq!(plaintext, 0, "plaintext before a handshake");
        assert!(!server.handshaken(), "arbitrary bytes finished a handshake");
        server.prepare();
        return;
    }
    let mut client =
        ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        assert!(deliver(&mut server, &mut client, usize::from(mode), &mut got));
        back(&mut server, &mut client).unwrap();
    }
    assert!(server.handshaken() && !client.is_handshaking());
    let (mut sent, mut received, mut back_sent) = (Vec::new(), Vec::new(), Vec::new());
    let mut clean = true;
    let mut ops = ops.chunks_exact(2);
    for op in ops.by_ref() {
        let (kind, arg) = (op[0] % 5, op[1]);
        match kind {
            0 => {
                let bytes: Vec<u8> = (0..u16::from(arg) * 37).map(|i| i as u8).collect();
                // The client buffers a bounded amount: count what it took.
                let n = client.writer().write(&bytes).unwrap_or(0);
                sent.extend_from_slice(&bytes[..n]);
            }
            1 => {
                if !deliver(&mut server, &mut client, usize::from(arg) * 13 + 1, &mut got) {
                    return;
                }
            }
            2 => {
                // An injected byte: the stream is no longer the client's.
                clean = false;
                if server.receive(&mut [arg], &mut |b| got.extend_from_slice(b)).is_err() {
                    return;
                }
            }
            3 => {
                server.prepare();
                let bytes = vec![arg; usize::from(arg) * 101];
                if server.room() >= bytes.len() {
                    // Injected bytes the session has not consumed yet may fail it here.
                    if let Err(e) = server.encrypt(&bytes) {
                        assert!(!clean, "{e:?}");
                        return;
                    }
                    back_sent.extend_from_slice(&bytes);
                }
                match back(&mut server, &mut client) {
                    Some(b) => received.extend_from_slice(&b),
                    None => clean = false,
                }
            }
            _ => {
                client.send_close_notify();
                let _ = deliver(&mut server, &mut client, 1000, &mut got);
                return;
            }
        }
    }
    if deliver(&mut server, &mut client, 7, &mut got) && clean {
        assert!(got == sent, "server read {} of {} bytes", got.len(), sent.len());
        assert!(received == back_sent, "client read {} of {} bytes", received.len(), back_sent.len());
    }
});

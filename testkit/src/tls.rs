//! wss:// for the test clients: self-signed certificates (rcgen), a rustls client that trusts
//! exactly one certificate, and the [`Transport`] both plain and TLS streams offer the
//! WebSocket client.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A client TLS stream over TCP.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// What the WebSocket client needs of its stream.
pub trait Transport: Read + Write {
    /// Read timeout of the underlying socket.
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()>;
    /// The underlying socket.
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, limit)
    }
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for TlsStream {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(limit)
    }
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(limit)
    }
    fn tcp(&self) -> &TcpStream {
        (**self).tcp()
    }
}

/// A certificate and its key written as PEM files.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Base64 of the SHA-256 of the public key (SubjectPublicKeyInfo), as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

/// Writes a fresh self-signed certificate for `names` (DNS names or IP addresses) and its key
/// to `dir/NAME.crt` and `dir/NAME.key`.
pub fn self_signed(dir: &Path, name: &str, names: &[&str]) -> io::Result<Pem> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let key = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    use base64::Engine as _;
    use rcgen::PublicKeyData as _;
    use sha2::Digest as _;
    let spki = sha2::Sha256::digest(key.signing_key.subject_public_key_info());
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        spki_sha256: base64::engine::general_purpose::STANDARD.encode(spki),
    };
    std::fs::write(&pem.cert, key.cert.pem())?;
    std::fs::write(&pem.key, key.signing_key.serialize_pem())?;
    Ok(pem)
}

/// A client configuration trusting only the certificates in the PEM file `ca`.
pub fn client_config(ca: &Path) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(io::Error::other)? {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs a TLS handshake with the server `host` over `tcp`, trusting the PEM file `ca`.
pub fn connect(tcp: TcpStream, host: &str, ca: &Path) -> io::Result<TlsStream> {
    let name = ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(client_config(ca)?, name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

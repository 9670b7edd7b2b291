//! wss:// certificates: `--tls-cert` and `--tls-key` read into a rustls server configuration
//! that every core takes a new connection's settings from, replaced whole on SIGHUP.
//!
//! Contract: [`Certs::load`] refuses anything a client would trip over later (no certificate,
//! no key, a key that is not the certificate's), naming the file and what to do. A failed
//! [`Certs::reload`] keeps the configuration in use. Connections keep the configuration they
//! started with; only new ones see a reloaded certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, ServerConfig};

/// The certificate files and the configuration made from them.
#[derive(Debug)]
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Certs {
    /// Reads `cert` (PEM, the leaf first, then its chain) and `key` (PEM: PKCS#8, PKCS#1 or
    /// SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let config = server_config(cert, key)?;
        Ok(Certs {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(config),
        })
    }

    /// Reads the files again; new connections use them from now on. On error the old
    /// certificate stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The configuration for a new connection (one read lock per accepted TLS connection).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// A rustls server configuration for the PEM files `cert` and `key`.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = read_chain(cert)?;
    let private = read_key(key)?;
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first (TLS 1.3, then 1.2): as safe here and about a third cheaper per byte
    // than AES-256-GCM, which rustls lists first and its clients ask for first.
    provider.cipher_suites.sort_by_key(|s| {
        let aes128 = matches!(
            s.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "--tls-key {} does not go with --tls-cert {} ({e}); give the key the certificate was issued for",
                key.display(),
                cert.display()
            )
        })?;
    // Browsers offer http/1.1 for WebSocket over TLS; nothing else is spoken here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    // No session tickets: a relay connection lives long, and a ticket would be one more
    // message to send after the handshake.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("--tls-cert {}: cannot read it: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block in it; give the PEM certificate (the leaf first, then its chain)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("--tls-key {}: cannot read it: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "--tls-key {}: no private key in it ({e}); give the PEM key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests;

//! `--listen-tls`, `--tls-cert` and `--tls-key`: checked together, the certificate read.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{ConfigError, RunArgs};

/// The wss:// listener: where it listens and the certificate it presents.
#[derive(Debug, Clone)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub certs: Arc<crate::tls::Certs>,
}

impl RunArgs {
    /// The wss:// listener, when `--listen-tls` is given (with both files, read now).
    pub(super) fn tls(&self) -> Result<Option<TlsListen>, ConfigError> {
        let err = |m: String| Err(ConfigError::Tls(m));
        let (listen, cert, key) = match (self.listen_tls, &self.tls_cert, &self.tls_key) {
            (None, None, None) => return Ok(None),
            (None, _, _) => {
                return err("--tls-cert and --tls-key go with --listen-tls ADDR:PORT, the port wss:// clients connect to; add it".into())
            }
            (Some(addr), None, _) | (Some(addr), _, None) => {
                return err(format!("--listen-tls {addr} needs --tls-cert FILE and --tls-key FILE (PEM)"))
            }
            (Some(listen), Some(cert), Some(key)) => (listen, cert, key),
        };
        if listen.port() == self.listen.port() {
            return err(format!(
                "--listen-tls {listen} uses the --listen port {}: wss:// needs a port of its own",
                self.listen.port()
            ));
        }
        if self
            .forwards
            .iter()
            .any(|f| !f.udp && f.host_port == listen.port())
        {
            return err(format!(
                "--forward: TCP port {} is tapwire's --listen-tls port; pick another host port",
                listen.port()
            ));
        }
        let certs = crate::tls::Certs::load(cert, key).map_err(ConfigError::Tls)?;
        Ok(Some(TlsListen {
            listen,
            certs: Arc::new(certs),
        }))
    }
}

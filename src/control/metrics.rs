//! `--metrics ADDR:PORT`: live counters over HTTP, `GET /metrics` (Prometheus text format:
//! every series with `# HELP`/`# TYPE`, summed and per core, every drop reason, open clients as
//! a gauge, and clients, frames, bytes and drops per network) and `GET /healthz`.
//!
//! Served on the control thread. A scrape reads the cores' counters with relaxed atomic loads:
//! nothing on the data path is locked or waits for it. One request per connection; a request
//! head must arrive within [`REQUEST_TIMEOUT`] and fit in [`MAX_HEAD`] bytes; at most
//! [`MAX_CONNECTIONS`] scrapes are served at once (more are closed at once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::engine::Shared;

/// How long a scraper may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
pub const MAX_HEAD: usize = 4096;
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` and serves until the task is aborted; the admin API as `auth` allows; every
/// series labelled `host="HOST"` with `--host-name HOST`.
pub fn start(
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    auth: super::api::AdminAuth,
    host: Option<String>,
) -> std::io::Result<JoinHandle<()>> {
    let auth = Arc::new(auth);
    let host: Arc<Option<String>> = Arc::new(host);
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let open = Arc::new(AtomicUsize::new(0));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let (shared, open, auth, host) =
                (shared.clone(), open.clone(), auth.clone(), host.clone());
            tokio::spawn(async move {
                let served = serve(stream, &shared, &auth, host.as_deref());
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, served).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }))
}

async fn serve(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
    auth: &super::api::AdminAuth,
    host: Option<&str>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = if route(&head) == Route::Api {
        let (status, body) = super::api::respond(&head, shared, auth, host).await;
        http_response(status, "application/json", &body)
    } else {
        respond(&head, shared, host)
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    /// Any method on a path under `/api/` (see [`super::api`]).
    Api,
    /// A GET for any other path.
    NotFound,
    /// Any other method.
    MethodNotAllowed,
}

/// The route of a request head: its request line's method and path (the query ignored).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let path = target.split(|b| *b == b'?').next().unwrap_or(&[]);
    if path.starts_with(b"/api/") {
        return Route::Api;
    }
    match (method, path) {
        (b"GET", b"/metrics") => Route::Metrics,
        (b"GET", b"/healthz") => Route::Healthz,
        (b"GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// The response to a request head; metrics labelled with `host` when given.
fn respond(head: &[u8], shared: &Shared, host: Option<&str>) -> String {
    let (status, kind, body) = match route(head) {
        Route::Metrics => {
            let text = crate::counters::summary(&shared.counters, &shared.host_counters)
                + &crate::engine::network::metrics(&shared.default_net, &shared.networks.all());
            let text = match host {
                Some(host) => crate::counters::with_label(&text, "host", host),
                None => text,
            };
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
        }
        Route::Healthz if shared.draining.load(Ordering::Relaxed) => (
            "503 Service Unavailable",
            "text/plain",
            "draining\n".to_string(),
        ),
        Route::Healthz if !shared.shutdown.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ok\n".to_string())
        }
        Route::Healthz => (
            "503 Service Unavailable",
            "text/plain",
            "shutting down\n".to_string(),
        ),
        Route::NotFound | Route::Api => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /api/networks\n".to_string(),
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    http_response(status, kind, &body)
}

fn http_response(status: &str, kind: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let shared = Shared::for_tests(2);
        shared.counters[1].dropped(crate::counters::DropReason::RuntFrame);
        let metrics = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &shared, None);
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(metrics.contains("# TYPE tapwire_clients_open gauge"));
        assert!(metrics.contains("tapwire_drops_total{reason=\"runt_frame\"} 1"));
        assert!(metrics.contains("tapwire_drops_total{reason=\"runt_frame\",core=\"1\"} 1"));
        assert!(metrics.contains("tapwire_network_clients{network=\"default\"} 0\n"));
        let (_, body) = metrics.split_once("\r\n\r\n").unwrap();
        assert!(metrics.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(respond(b"GET /healthz HTTP/1.1\r\n\r\n", &shared, None).ends_with("\r\n\r\nok\n"));
        assert!(respond(b"GET /x HTTP/1.1\r\n\r\n", &shared, None).starts_with("HTTP/1.1 404"));
        assert!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &shared, None).starts_with("HTTP/1.1 405")
        );
        shared.request_shutdown();
        assert!(
            respond(b"GET /healthz HTTP/1.1\r\n\r\n", &shared, None).starts_with("HTTP/1.1 503")
        );
        let labelled = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &shared, Some("hB"));
        assert!(labelled
            .contains("tapwire_drops_total{host=\"hB\",reason=\"runt_frame\",core=\"1\"} 1"));
        assert!(labelled.contains("tapwire_network_clients{host=\"hB\",network=\"default\"} 0\n"));
    }
}

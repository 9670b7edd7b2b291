//! The loopback part of TCP `--forward`s. The nftables DNAT cannot send connections to
//! 127.0.0.1 into a guest without `route_localnet`, which tapwire does not turn on; so for each
//! TCP forward tapwire listens on 127.0.0.1:HOSTPORT itself and copies each connection to the
//! guest. UDP forwards are not proxied: on 127.0.0.1 they do not reach the guest (README).
//!
//! Runs on the control thread's runtime; at most [`MAX_CONNECTIONS`] connections per forward
//! at once (beyond that a connection is closed at once), and a guest that does not answer
//! within [`CONNECT_TIMEOUT`] gets the connection closed.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::Forward;

/// Connections proxied at once per forward.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection to the guest may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a proxy for each TCP forward whose loopback port is free; warns for the others.
pub fn start(forwards: &[Forward]) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for f in forwards.iter().filter(|f| !f.udp) {
        let bound = std::net::TcpListener::bind(("127.0.0.1", f.host_port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std);
        match bound {
            Ok(listener) => {
                let to = SocketAddrV4::new(f.ip, f.port);
                tasks.push(tokio::spawn(serve(listener, to)));
            }
            Err(e) => log::warn!(
                "forward {f}: cannot listen on 127.0.0.1:{} ({e}), so connections to 127.0.0.1 are not forwarded; the host's other addresses are. Free the port, or connect to another address of the host",
                f.host_port
            ),
        }
    }
    tasks
}

async fn serve(listener: TcpListener, to: SocketAddrV4) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused = 0u64;
    loop {
        let inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("forward to {to}: accept on loopback failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                log::warn!("forward to {to}: {refused} loopback connection(s) closed: {MAX_CONNECTIONS} already open");
            }
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let mut inbound = inbound;
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
                Ok(Ok(mut outbound)) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Ok(Err(e)) => log::debug!("forward to {to}: {e}"),
                Err(_) => log::debug!("forward to {to}: no answer within {CONNECT_TIMEOUT:?}"),
            }
        });
    }
}

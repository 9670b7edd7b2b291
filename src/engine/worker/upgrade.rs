//! The upgrade of a connection: who the client is behind a trusted proxy, whether the host is
//! draining, access control, and joining its network (at once, or parked until the network
//! is made).

use crate::counters::DropReason;
use crate::switch::PortId;
use crate::ws::{access, forwarded};

use super::super::bufpool::BufId;
use super::networks::Joined;
use super::Worker;

/// An upgrade request that the protocol accepted: its `101` and what the request said.
pub(super) struct Upgraded {
    pub response: Vec<u8>,
    pub path: String,
    pub origin: Option<String>,
    pub forwarded_for: Option<String>,
}

impl Worker {
    /// The client of `port` asked for an upgrade that the protocol accepted; `bytes` are the
    /// received bytes (`start..end` of buffer `id`) in which its WebSocket stream starts at
    /// `stream_at`.
    pub(super) fn upgraded(
        &mut self,
        port: PortId,
        request: Upgraded,
        bytes: &mut [u8],
        stream_at: usize,
        (id, start, end): (BufId, usize, usize),
    ) {
        let Upgraded {
            response,
            path,
            origin,
            forwarded_for,
        } = request;
        if let Some(list) = forwarded_for.as_deref() {
            self.note_forwarded(port, list);
        }
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let response = super::unavailable_response(
                "",
                "this host is draining; connect again to reach another",
            );
            self.refuse_upgrade(port, &path, DropReason::Draining, response);
            return;
        }
        let token_network = match self.authorize(&path, origin.as_deref()) {
            Ok(network) => network,
            Err(denied) => {
                let reason = DropReason::from(denied);
                self.refuse_upgrade(port, &path, reason, denied.response());
                return;
            }
        };
        match self.join_network(port, &path, token_network.as_deref()) {
            Joined::Refused => return,
            Joined::Wait(name) => {
                log::debug!("core {}: client {port:?} waits for network {name}", self.id);
                self.park(port, name, response);
                if stream_at < bytes.len() {
                    self.keep_parked_input(port, id, start + stream_at, end);
                }
                return;
            }
            Joined::Now => {}
        }
        log::debug!(
            "core {}: client {port:?} upgraded on {}",
            self.id,
            access::path_only(&path)
        );
        self.counters.connections_upgraded.inc();
        self.enqueue_owned(port, response);
        if stream_at < bytes.len() {
            // Frames sent right behind the request, in this receive buffer.
            self.on_frames(port, &mut bytes[stream_at..], id);
        }
    }

    /// Records the address a trusted proxy forwarded the client of `port` for (`list`: the
    /// request's `X-Forwarded-For` values); nothing when no proxy is trusted or the peer is
    /// not one of them.
    fn note_forwarded(&mut self, port: PortId, list: &str) {
        let trusted = &self.cfg.trusted_proxies;
        if trusted.is_empty() {
            return;
        }
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        let Some(peer) = c.peer() else {
            return;
        };
        let client = forwarded::client_address(peer.ip(), Some(list), trusted);
        if client != peer.ip().to_canonical() {
            c.forwarded = Some(client);
        }
    }

    /// Access control of an upgrade request for `target` (`--token-secret`,
    /// `--allow-origin`): the token's network when tokens are required (empty: a token that
    /// names none), `None` when they are not. Reads the wall clock only when tokens are
    /// required.
    fn authorize(
        &self,
        target: &str,
        origin: Option<&str>,
    ) -> Result<Option<String>, access::Denied> {
        let rules = &self.cfg.access;
        if rules.is_open() {
            return Ok(None);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let network = rules.check(target, origin, now)?;
        Ok(rules.secret.is_some().then_some(network))
    }
}

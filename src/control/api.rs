//! The admin API on the `--metrics` listener, JSON in and out (docs/api.md):
//!
//! - `GET /api/networks`: every network with its subnet, TAP, clients, frames and bytes each
//!   way, and drops;
//! - `GET /api/networks/NAME/clients`: the clients of a network (id, core, MACs, bound IPv4
//!   addresses, remote address, age, frames and bytes each way, send-queue depth), asked of
//!   every core, which answers between two passes of its loop;
//! - `POST /api/clients/ID/close`: closes that client with 1001 (the operator's kick);
//! - `POST /api/drain?over=SECONDS` and `DELETE /api/drain`: drain this host of a farm
//!   ([`super::drain`]).
//!
//! On a loopback listener anyone on the host may use it, as `/metrics`. On any other address it
//! answers only requests carrying `Authorization: Bearer TOKEN` with the token of
//! `--admin-token FILE` (and nothing at all without that option); `/metrics` and `/healthz`
//! stay open.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::engine::network::{ClientReport, CoreCmd, Network};
use crate::engine::Shared;

/// How long the cores have to answer a question of the API.
const CORE_ANSWER: Duration = Duration::from_secs(2);

/// What an API request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute<'a> {
    Networks,
    Clients(&'a str),
    Close(u64),
    Drain,
    Undrain,
    NotFound,
    MethodNotAllowed,
}

/// The route of `method` on `path` (under `/api/`, query removed).
pub fn api_route<'a>(method: &[u8], path: &'a str) -> ApiRoute<'a> {
    let parts: Vec<&str> = path
        .strip_prefix("/api/")
        .unwrap_or("")
        .trim_end_matches('/')
        .split('/')
        .collect();
    let (route, method_wanted): (ApiRoute<'a>, &[u8]) = match parts.as_slice() {
        ["networks"] => (ApiRoute::Networks, b"GET"),
        ["drain"] if method == b"DELETE" => (ApiRoute::Undrain, b"DELETE"),
        ["drain"] => (ApiRoute::Drain, b"POST"),
        ["networks", name, "clients"] => (ApiRoute::Clients(name), b"GET"),
        ["clients", id, "close"] => match id.parse() {
            Ok(id) => (ApiRoute::Close(id), b"POST"),
            Err(_) => return ApiRoute::NotFound,
        },
        _ => return ApiRoute::NotFound,
    };
    if method == method_wanted {
        route
    } else {
        ApiRoute::MethodNotAllowed
    }
}

/// Who may use the API.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// `--admin-token`: required when given.
    pub token: Option<String>,
    /// The listener is on a loopback address: without a token, anyone on the host may.
    pub loopback: bool,
}

impl AdminAuth {
    /// Why a request with head `head` may not use the API, if it may not: (status, reason).
    fn refusal(&self, head: &[u8]) -> Option<(&'static str, &'static str)> {
        match &self.token {
            None if self.loopback => None,
            None => Some((
                "403 Forbidden",
                "the admin API answers on a --metrics address other than loopback only with --admin-token FILE",
            )),
            Some(token) => {
                let given = bearer(head).unwrap_or_default();
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    None
                } else {
                    Some((
                        "401 Unauthorized",
                        "send Authorization: Bearer TOKEN with the token of --admin-token",
                    ))
                }
            }
        }
    }
}

/// The bearer token of a request head's `Authorization` header.
fn bearer(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let value = value.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The response to an API request: status, and a JSON body.
/// `host` is `--host-name`, shown in `GET /api/networks`.
pub async fn respond(
    head: &[u8],
    shared: &Arc<Shared>,
    auth: &AdminAuth,
    host: Option<&str>,
) -> (&'static str, String) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or(&[]);
    let target = std::str::from_utf8(parts.next().unwrap_or(&[])).unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if let Some((status, why)) = auth.refusal(head) {
        return (status, json!({ "error": why }).to_string());
    }
    match api_route(method, path) {
        ApiRoute::Networks => {
            let mut all = vec![network_json(&shared.default_net)];
            all.extend(shared.networks.all().iter().map(|n| network_json(n)));
            let draining = shared.draining.load(std::sync::atomic::Ordering::Relaxed);
            (
                "200 OK",
                json!({ "host": host, "draining": draining, "networks": all }).to_string(),
            )
        }
        ApiRoute::Clients(name) => {
            let net = if name == crate::networks::DEFAULT {
                Some(shared.default_net.clone())
            } else {
                shared.networks.get(name)
            };
            let Some(net) = net else {
                return (
                    "404 Not Found",
                    json!({ "error": format!("no network {name} is up") }).to_string(),
                );
            };
            match clients(shared, &net).await {
                Ok(list) => (
                    "200 OK",
                    json!({ "network": net.name, "clients": list.iter().map(client_json).collect::<Vec<_>>() })
                        .to_string(),
                ),
                Err(why) => ("503 Service Unavailable", json!({ "error": why }).to_string()),
            }
        }
        ApiRoute::Close(id) => match close(shared, id).await {
            Ok(true) => ("200 OK", json!({ "closed": id }).to_string()),
            Ok(false) => (
                "404 Not Found",
                json!({ "error": format!("no open client {id}") }).to_string(),
            ),
            Err(why) => ("503 Service Unavailable", json!({ "error": why }).to_string()),
        },
        ApiRoute::Drain => {
            let over = match super::drain::parse_over(query) {
                Ok(over) => over,
                Err(why) => return ("400 Bad Request", json!({ "error": why }).to_string()),
            };
            match super::drain::start(shared, over).await {
                Ok(count) => (
                    "200 OK",
                    json!({ "draining": true, "clients": count, "over_s": over.as_secs() })
                        .to_string(),
                ),
                Err(why) => ("503 Service Unavailable", json!({ "error": why }).to_string()),
            }
        }
        ApiRoute::Undrain => {
            let was = super::drain::stop(shared);
            ("200 OK", json!({ "draining": false, "was": was }).to_string())
        }
        ApiRoute::NotFound => (
            "404 Not Found",
            json!({ "error": "try GET /api/networks, GET /api/networks/NAME/clients, POST /api/clients/ID/close, POST or DELETE /api/drain" })
                .to_string(),
        ),
        ApiRoute::MethodNotAllowed => (
            "405 Method Not Allowed",
            json!({ "error": "GET for lists, POST to close or drain, DELETE to end a drain" }).to_string(),
        ),
    }
}

fn network_json(n: &Network) -> Value {
    let [rx_frames, rx_bytes, tx_frames, tx_bytes, drops] = n.totals();
    json!({
        "name": n.name,
        "tap": n.tap,
        "subnet": n.subnet.map(|s| s.to_string()),
        "span": n.span.as_ref().map(|s| json!({
            "bridge": s.bridge,
            "vxlan": s.vxlan,
            "vni": s.vni,
            "peers": s.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        "clients": n.clients.load(std::sync::atomic::Ordering::Relaxed),
        "rx_frames": rx_frames,
        "rx_bytes": rx_bytes,
        "tx_frames": tx_frames,
        "tx_bytes": tx_bytes,
        "drops": drops,
    })
}

fn client_json(c: &ClientReport) -> Value {
    json!({
        "id": c.id,
        "core": c.core,
        "network": c.network,
        "macs": c.macs.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "ips": c.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        "remote": c.remote.map(|a| a.to_string()),
        "address": c.address.map(|a| a.to_string()),
        "age_s": c.age_ms / 1000,
        "rx_frames": c.rx_frames,
        "rx_bytes": c.rx_bytes,
        "tx_frames": c.tx_frames,
        "tx_bytes": c.tx_bytes,
        "queued": c.queued,
    })
}

/// The open clients of `net` on every core, sorted by id.
pub(super) async fn clients(shared: &Shared, net: &Network) -> Result<Vec<ClientReport>, String> {
    let (reply, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for core in 0..shared.cores {
        shared.command(
            core,
            CoreCmd::Report {
                net: net.id,
                reply: reply.clone(),
            },
        );
    }
    drop(reply);
    let mut all = Vec::new();
    let collect = async {
        while let Some(list) = answers.recv().await {
            all.extend(list);
        }
    };
    tokio::time::timeout(CORE_ANSWER, collect)
        .await
        .map_err(|_| format!("the cores did not answer within {CORE_ANSWER:?}"))?;
    all.sort_by_key(|c| c.id);
    Ok(all)
}

/// Closes client `id` on its core; whether it was an open client.
pub(super) async fn close(shared: &Shared, id: u64) -> Result<bool, String> {
    let core = crate::switch::PortId(id).core();
    if core >= shared.cores {
        return Ok(false);
    }
    let (reply, mut answer) = tokio::sync::mpsc::unbounded_channel();
    shared.command(core, CoreCmd::Close { id, reply });
    match tokio::time::timeout(CORE_ANSWER, answer.recv()).await {
        Ok(Some(closed)) => Ok(closed),
        _ => Err(format!("core {core} did not answer within {CORE_ANSWER:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(api_route(b"GET", "/api/networks"), ApiRoute::Networks);
        assert_eq!(api_route(b"GET", "/api/networks/"), ApiRoute::Networks);
        assert_eq!(
            api_route(b"GET", "/api/networks/lab/clients"),
            ApiRoute::Clients("lab")
        );
        assert_eq!(
            api_route(b"POST", "/api/clients/72057594037927936/close"),
            ApiRoute::Close(1 << 56)
        );
        assert_eq!(
            api_route(b"POST", "/api/networks"),
            ApiRoute::MethodNotAllowed
        );
        assert_eq!(
            api_route(b"GET", "/api/clients/1/close"),
            ApiRoute::MethodNotAllowed
        );
        assert_eq!(
            api_route(b"POST", "/api/clients/x/close"),
            ApiRoute::NotFound
        );
        assert_eq!(api_route(b"POST", "/api/drain"), ApiRoute::Drain);
        assert_eq!(api_route(b"DELETE", "/api/drain/"), ApiRoute::Undrain);
        assert_eq!(api_route(b"GET", "/api/drain"), ApiRoute::MethodNotAllowed);
        assert_eq!(api_route(b"GET", "/api/nothing"), ApiRoute::NotFound);
        assert_eq!(api_route(b"GET", "/api/"), ApiRoute::NotFound);
    }

    #[test]
    fn off_loopback_the_api_needs_the_token() {
        let head = |auth: &str| format!("GET /api/networks HTTP/1.1\r\n{auth}\r\n\r\n");
        let local = AdminAuth {
            token: None,
            loopback: true,
        };
        assert_eq!(local.refusal(head("").as_bytes()), None);
        let open = AdminAuth {
            token: None,
            loopback: false,
        };
        assert_eq!(
            open.refusal(head("").as_bytes()).unwrap().0,
            "403 Forbidden"
        );
        let guarded = AdminAuth {
            token: Some("s3cret-token-0123".into()),
            loopback: false,
        };
        assert_eq!(
            guarded.refusal(head("").as_bytes()).unwrap().0,
            "401 Unauthorized"
        );
        assert!(guarded
            .refusal(head("Authorization: Bearer wrong").as_bytes())
            .is_some());
        assert_eq!(
            guarded.refusal(head("authorization:  bearer s3cret-token-0123").as_bytes()),
            None
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lists_networks_and_refuses_unknown_ones() {
        let shared = Shared::for_tests(2);
        let auth = AdminAuth {
            token: None,
            loopback: true,
        };
        let (status, body) =
            respond(b"GET /api/networks HTTP/1.1\r\n\r\n", &shared, &auth, None).await;
        assert_eq!(status, "200 OK");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["networks"][0]["name"], "default");
        assert_eq!(v["host"], Value::Null);
        assert_eq!(v["draining"], false);
        assert_eq!(v["networks"][0]["clients"], 0);
        let (status, _) = respond(
            b"GET /api/networks/nope/clients HTTP/1.1\r\n\r\n",
            &shared,
            &auth,
            None,
        )
        .await;
        assert_eq!(status, "404 Not Found");
        let (status, _) = respond(
            b"POST /api/clients/360287970189639680/close HTTP/1.1\r\n\r\n",
            &shared,
            &auth,
            None,
        )
        .await;
        assert_eq!(status, "404 Not Found", "a core beyond the relay's");
    }
}

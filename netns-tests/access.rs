//! Access control: `--token-secret` (tokens from `tapwire token` in the URL) and
//! `--allow-origin`; every refusal has its status, counter and no token in the log.

use std::time::Duration;

use tapwire_testkit::ws::{connect, new_key, WsClient};

use super::harness::*;

/// An upgrade request for `target`, with an `Origin` header if given.
fn request(target: &str, origin: Option<&str>) -> Vec<u8> {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8086\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        new_key()
    )
    .into_bytes()
}

#[test]
fn tokens_and_origins_decide_who_connects() {
    if skip_unless_root("tokens_and_origins_decide_who_connects") {
        return;
    }
    let dir = TempDir::new();
    let secret = dir.0.join("secret");
    std::fs::write(
        &secret,
        "c2VjcmV0IG9mIGEgdGFwd2lyZSBmYXJtLCAzMiBieXRlcw==\n",
    )
    .unwrap();
    let secret = secret.display().to_string();
    let page = "http://127.0.0.1:8000";
    let relay = Relay::start(&["--token-secret", &secret, "--allow-origin", page]);
    let (good, url) = tapwire_token(&["--token-secret", &secret, "--ttl", "1h"]);
    assert_eq!(url, format!("ws://127.0.0.1:8086/?token={good}"));
    assert!(
        good.starts_with("v1.") && good.contains(".."),
        "no network: {good}"
    );
    // A token for a network opens that network's URL, and only that.
    let (farm, farm_url) = tapwire_token(&[
        "--token-secret",
        &secret,
        "--ttl",
        "1h",
        "--network",
        "farm-1",
    ]);
    assert_eq!(
        farm_url,
        format!("ws://127.0.0.1:8086/n/farm-1?token={farm}")
    );
    assert!(farm.contains(".farm-1."));
    let (expired, _) = tapwire_token(&["--token-secret", &secret, "--ttl", "0s"]);
    let forged = tapwire_testkit::token::forge(&good);

    let status = |target: &str, origin: Option<&str>| http_status(&relay, &request(target, origin));
    assert!(status("/", None).starts_with("HTTP/1.1 401"));
    assert!(status("/?token=nonsense", None).starts_with("HTTP/1.1 401"));
    assert!(status(&format!("/?token={expired}"), None).starts_with("HTTP/1.1 403"));
    assert!(status(&format!("/?token={forged}"), None).starts_with("HTTP/1.1 403"));
    let with_token = format!("/?token={good}");
    assert!(status(&with_token, Some("https://evil.example")).starts_with("HTTP/1.1 403"));
    assert!(status(&with_token, Some(page)).starts_with("HTTP/1.1 101"));
    assert!(
        status(&with_token, None).starts_with("HTTP/1.1 101"),
        "not a browser"
    );
    assert!(status(&format!("/n/farm-1?token={farm}"), None).starts_with("HTTP/1.1 101"));
    assert!(status(&format!("/?token={farm}"), None).starts_with("HTTP/1.1 403"));
    assert!(status(&format!("/n/farm-2?token={farm}"), None).starts_with("HTTP/1.1 403"));

    // The URL `tapwire token` printed opens a working client: it takes a DHCP lease.
    let stream = relay.ns.enter({
        let url = url.clone();
        move || connect(&url, None)
    });
    let mut client = WsClient::new(stream.expect("connect with token"));
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ip = lease(&mut client, mac(0x41));
    assert!(ip.to_string().starts_with("10.86."));

    let c = relay.counters();
    for reason in [
        "token_missing",
        "token_malformed",
        "token_expired",
        "token_forged",
        "origin_refused",
    ] {
        assert_eq!(c.drops(reason), 1, "{reason}");
    }
    assert_eq!(c.drops("token_wrong_network"), 2);
    let log = relay.proc().log_text();
    assert!(
        !log.contains(&good) && !log.contains("token="),
        "a token was logged"
    );
}

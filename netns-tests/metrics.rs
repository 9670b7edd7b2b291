//! `--metrics`: a scrape during traffic answers every time, and its counters match what the
//! test sent; /healthz answers; the open-clients gauge follows the clients.

use std::time::{Duration, Instant};

use super::harness::*;
use super::GATEWAY;

/// GET `path` on the relay's metrics port: (status line, body).
fn get(relay: &Relay, path: &str) -> (String, String) {
    http(
        &relay.ns,
        &format!("127.0.0.1:{METRICS_PORT}"),
        ("GET", path),
        None,
    )
}

/// The value of the exact series line `series` (name with labels) in a scrape.
fn value(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_during_traffic_matches_what_was_sent() {
    if skip_unless_root("a_scrape_during_traffic_matches_what_was_sent") {
        return;
    }
    let relay = Relay::start(&["--metrics", &METRICS_PORT.to_string()]);
    assert!(relay.proc().log_text().contains(&format!(
        "metrics on http://127.0.0.1:{METRICS_PORT}/metrics"
    )));
    assert_eq!(
        get(&relay, "/healthz"),
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );
    assert!(get(&relay, "/nothing").0.starts_with("HTTP/1.1 404"));

    let guest = relay.leased_guest(0);
    let pinging = guest.ping_background(GATEWAY, 20, relay.dir.0.join("ping.log"));
    // 37 runt frames from a client, scraped while the guest pings.
    let mut client = relay.client(None);
    for _ in 0..37 {
        client.send_frame(&[0u8; 13]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut scrapes = 0;
    loop {
        let (status, body) = get(&relay, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("# HELP tapwire_drops_total "));
        assert!(body.contains("# TYPE tapwire_clients_open gauge"));
        scrapes += 1;
        let runts = value(&body, "tapwire_drops_total{reason=\"runt_frame\"}");
        if runts == Some(37) && scrapes >= 20 {
            assert_eq!(value(&body, "tapwire_clients_open"), Some(2), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runts never reached 37: {runts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pinging = pinging;
    pinging
        .wait_exit(Duration::from_secs(30))
        .expect("ping ends");
    assert_eq!(ping_result(&pinging.log_text()), (20, 20));
    // The guest's 20 echo requests show as frames from clients, and their replies as frames
    // to them; the client that left no longer counts as open.
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = get(&relay, "/metrics");
        if value(&body, "tapwire_clients_open") == Some(1) {
            assert!(value(&body, "tapwire_client_rx_frames_total").unwrap_or(0) >= 20);
            assert!(value(&body, "tapwire_client_tx_frames_total").unwrap_or(0) >= 20);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gauge kept the closed client: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! Values typed as option arguments that several options share: durations and the metrics
//! address.

use std::net::SocketAddr;
use std::time::Duration;

/// Parses `--metrics`: `ADDR:PORT`, or a bare `PORT` on 127.0.0.1.
pub fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not ADDR:PORT or PORT (e.g. 127.0.0.1:9186)"))
}

/// Parses `500ms`, `30s`, `5m`, `12h` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 30s, 5m, 12h)"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    })
}

/// A DHCP lease time: a duration of at least 2 minutes (dnsmasq's minimum).
pub(super) fn parse_lease_time(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(120) {
        return Err(format!("{text}: must be at least 2m (dnsmasq's minimum)"));
    }
    Ok(d)
}

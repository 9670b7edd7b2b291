//! The one parser of a relay's counters (Prometheus text format: a `/metrics` scrape, or the
//! summary printed at exit and on SIGUSR1): each series' last value.
//!
//! A series that is absent is an error, not a zero: every series and every drop reason is in
//! every summary, so an absent one means a renamed series or a summary that never came. Only
//! per-core series (`{core="N"}`), which are left out when zero, may be read as "absent means
//! 0", and only by asking for it ([`Counters::get_or_zero`]).

use std::collections::HashMap;

/// `name` without a leading `host="…"` label.
fn without_host(name: &str) -> String {
    let Some((family, labels)) = name.split_once("{host=\"") else {
        return name.to_string();
    };
    let Some((_, rest)) = labels.split_once('"') else {
        return name.to_string();
    };
    match rest.strip_prefix(',') {
        Some(others) => format!("{family}{{{others}"),
        None => family.to_string(),
    }
}

/// Counter values by series name, e.g. `tapwire_drops_total{reason="runt_frame"}`.
#[derive(Debug, Default, Clone)]
pub struct Counters(HashMap<String, u64>);

impl Counters {
    /// The last value of every `tapwire_` series in `text` (comments and other lines skipped).
    /// The `host` label of a relay run with `--host-name` is left out of the names: these are
    /// one relay's counters.
    pub fn parse(text: &str) -> Self {
        let mut map = HashMap::new();
        for line in text.lines() {
            if let Some((name, value)) = line.rsplit_once(' ') {
                if name.starts_with("tapwire_") {
                    if let Ok(v) = value.parse() {
                        map.insert(without_host(name), v);
                    }
                }
            }
        }
        Counters(map)
    }

    /// A series' value; panics when the series is absent (renamed, or not a summary at all).
    #[track_caller]
    pub fn get(&self, series: &str) -> u64 {
        match self.0.get(series) {
            Some(v) => *v,
            None => {
                let family = series.split('{').next().unwrap_or(series);
                let mut similar: Vec<&String> = self
                    .0
                    .keys()
                    .filter(|k| {
                        k.starts_with(family)
                            || family.starts_with(k.split('{').next().unwrap_or(k))
                    })
                    .collect();
                similar.sort();
                similar.truncate(8);
                panic!(
                    "series {series} is absent from the relay's counters ({} series read; similar: {similar:?})",
                    self.0.len()
                )
            }
        }
    }

    /// A series' value, 0 when absent: for per-core series (`{core="N"}`), which a summary
    /// leaves out when they are zero.
    pub fn get_or_zero(&self, series: &str) -> u64 {
        self.0.get(series).copied().unwrap_or(0)
    }

    /// Drops counted for `reason`, over all cores; panics when the reason is unknown.
    #[track_caller]
    pub fn drops(&self, reason: &str) -> u64 {
        self.get(&format!("tapwire_drops_total{{reason=\"{reason}\"}}"))
    }

    /// Every drop reason with a non-zero total, sorted by name.
    pub fn nonzero_drops(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .0
            .iter()
            .filter(|(name, v)| {
                **v > 0
                    && name.starts_with("tapwire_drops_total{reason=")
                    && !name.contains("core=")
            })
            .filter_map(|(name, v)| Some((name.split('"').nth(1)?.to_string(), *v)))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_label_is_left_out() {
        let c = Counters::parse(
            "tapwire_a_total{host=\"hA\"} 3\ntapwire_drops_total{host=\"hA\",reason=\"x\"} 2\n",
        );
        assert_eq!(c.get("tapwire_a_total"), 3);
        assert_eq!(c.drops("x"), 2);
    }

    use super::*;

    #[test]
    fn last_summary_wins_and_comments_are_skipped() {
        let text = "# HELP tapwire_tap_tx_frames_total Frames written to the TAP.\n\
                    # TYPE tapwire_tap_tx_frames_total counter\n\
                    tapwire_tap_tx_frames_total 5\n\
                    tapwire_drops_total{reason=\"runt_frame\"} 1\n\
                    some log line 7\n\
                    tapwire_tap_tx_frames_total 9\n\
                    tapwire_drops_total{reason=\"runt_frame\",core=\"1\"} 1\n\
                    tapwire_drops_total{reason=\"hairpin\"} 0\n";
        let c = Counters::parse(text);
        assert_eq!(c.get("tapwire_tap_tx_frames_total"), 9);
        assert_eq!(c.drops("runt_frame"), 1);
        assert_eq!(c.drops("hairpin"), 0);
        assert_eq!(c.get_or_zero("tapwire_tap_tx_frames_total{core=\"0\"}"), 0);
        assert_eq!(c.nonzero_drops(), vec![("runt_frame".to_string(), 1)]);
    }

    #[test]
    #[should_panic(expected = "tapwire_drops_total{reason=\"renamed\"} is absent")]
    fn an_absent_series_is_an_error() {
        Counters::parse("tapwire_drops_total{reason=\"hairpin\"} 0\n").drops("renamed");
    }
}

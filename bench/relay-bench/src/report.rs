//! The results: one [`Row`] type for every measured line, rendered to a markdown table (with
//! the columns its [`Table`] picks) and to JSON (with serde), plus the round-trip and
//! connection figures that are sentences rather than rows.

use serde::Serialize;

use crate::relay::Drops;
use crate::stats::Stat;

/// One measured line.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Row {
    /// `up`, `down`, `up_2cores`, `down_2cores`, `kernel_tap_write`, `kernel_tap_read`,
    /// `kernel_loopback_tcp`, `g2g` or `swarm_flood`.
    pub scenario: String,
    /// Ethernet frame size in bytes.
    pub size: usize,
    /// Clients, guest pairs or swarm guests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Frames per second: median, min and max over the repetitions.
    pub fps: Stat,
    /// The figure of the same run this row is compared with: the kernel's limit (up, down),
    /// the one-core figure (2 cores), loopback TCP (g2g), the plain generator (swarm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_fps: Option<f64>,
    /// The floor of the same run: what `relay-floor` (the least work any relay must do)
    /// moved in the same cell, median frames/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_fps: Option<f64>,
    /// For *up*, frames the generator had queued ahead of the relay when the window closed;
    /// for *down*, frames/s the kernel queued to the TAP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Share of the frames sent that did not arrive (0..1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Relay CPU time per frame in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_frame: Option<f64>,
    /// A proxy's (HAProxy's) CPU time per frame in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cpu_ns_per_frame: Option<f64>,
    /// Times the swarm's socket writes would have blocked (the relay pushed back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_writes_blocked: Option<u64>,
    /// Receives the relay held back (backpressure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_held: Option<u64>,
    /// The relay's drop counters, summed over the repetitions.
    pub drops: Drops,
}

impl Row {
    /// A relay row from repeated samples: frames/s, CPU per frame and drops; the caller adds
    /// what else it compares.
    pub(crate) fn measured(
        scenario: impl Into<String>,
        size: usize,
        count: usize,
        samples: &[crate::stats::Sample],
        drops: Drops,
    ) -> Row {
        use crate::stats::stat_of;
        Row {
            scenario: scenario.into(),
            size,
            count: Some(count),
            fps: stat_of(samples, |s| s.fps),
            cpu_ns_per_frame: Some(stat_of(samples, |s| s.cpu_ns_per_frame).median),
            drops,
            ..Row::default()
        }
    }

    /// Median frames/s over the reference (0 without one).
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.reference_fps.map(|r| self.fps.median / r.max(1.0))
    }

    /// Median frames/s over the floor's.
    pub(crate) fn floor_ratio(&self) -> Option<f64> {
        self.floor_fps.map(|r| self.fps.median / r.max(1.0))
    }

    fn mbits(&self) -> f64 {
        self.fps.median * self.size as f64 * 8.0 / 1e6
    }

    fn label(&self) -> &str {
        label_of(&self.scenario)
    }
}

/// How a scenario is named in tables and charts.
pub(crate) fn label_of(scenario: &str) -> &str {
    {
        match scenario {
            "kernel_tap_write" => "kernel TAP write",
            "kernel_tap_read" => "kernel TAP read",
            "kernel_loopback_tcp" => "kernel loopback TCP",
            "floor_up" => "floor up",
            "floor_down" => "floor down",
            "floor_up_firewall" => "floor up behind the relay's table",
            "floor_up_bare" => "floor up, bare",
            "up_2cores" => "up",
            "down_2cores" => "down",
            "farm_direct" => "straight to the host",
            "farm_haproxy" => "through HAProxy",
            "span_one_host" => "on one host",
            "span_across_hosts" => "across two hosts (VXLAN)",
            "kernel_span" => "the kernel alone across",
            "kernel_forward_up" => "kernel forwarding (up)",
            "kernel_forward_down" => "kernel forwarding (down)",
            other => other,
        }
    }
}

/// How a ratio column prints.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RatioStyle {
    /// A plain number with this many decimals.
    Decimals(usize),
    /// A gain: `1.66×`.
    Gain,
}

/// A column of a markdown table.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Col {
    Scenario(&'static str),
    Size,
    Count(&'static str),
    Fps(&'static str),
    Mbits,
    /// Header, and what to print when the row has no reference.
    Reference(&'static str, &'static str),
    Ratio(&'static str, RatioStyle),
    /// The floor's frames/s, and the row's share of it.
    Floor,
    FloorRatio,
    Load,
    Loss,
    Cpu,
    /// HAProxy's CPU per frame.
    ProxyCpu,
    Blocked,
    Held,
    Drops,
}

impl Col {
    fn header(self) -> &'static str {
        match self {
            Col::Scenario(h) | Col::Count(h) | Col::Fps(h) | Col::Reference(h, _) => h,
            Col::Ratio(h, _) => h,
            Col::Size => "frame",
            Col::Floor => "floor frames/s",
            Col::FloorRatio => "relay / floor",
            Col::Mbits => "Mbit/s",
            Col::Load => "load (see below)",
            Col::Loss => "loss",
            Col::Cpu => "relay CPU ns/frame",
            Col::ProxyCpu => "HAProxy CPU ns/frame",
            Col::Blocked => "swarm writes that would block",
            Col::Held => "relay input held",
            Col::Drops => "drops",
        }
    }

    fn cell(self, row: &Row) -> String {
        let dash = || "–".to_string();
        match self {
            Col::Scenario(_) => row.label().to_string(),
            Col::Size => row.size.to_string(),
            Col::Count(_) => row.count.map_or_else(dash, |c| c.to_string()),
            Col::Fps(_) => format!(
                "{} ({}–{})",
                fmt_rate(row.fps.median),
                fmt_rate(row.fps.min),
                fmt_rate(row.fps.max)
            ),
            Col::Mbits => format!("{:.0}", row.mbits()),
            Col::Reference(_, missing) => row
                .reference_fps
                .map_or_else(|| missing.to_string(), fmt_rate),
            Col::Ratio(_, style) => row.ratio().map_or_else(dash, |r| match style {
                RatioStyle::Decimals(d) => format!("{r:.d$}"),
                RatioStyle::Gain => format!("{r:.2}×"),
            }),
            Col::Floor => row.floor_fps.map_or_else(dash, fmt_rate),
            Col::FloorRatio => row.floor_ratio().map_or_else(dash, |r| format!("{r:.2}")),
            Col::Load => row.load.map_or_else(dash, fmt_rate),
            Col::Loss => row
                .loss
                .map_or_else(dash, |l| format!("{:.2} %", l * 100.0)),
            Col::Cpu => row
                .cpu_ns_per_frame
                .map_or_else(dash, |c| format!("{c:.0}")),
            Col::ProxyCpu => row
                .proxy_cpu_ns_per_frame
                .map_or_else(dash, |c| format!("{c:.0}")),
            Col::Blocked => row
                .swarm_writes_blocked
                .map_or_else(dash, |b| b.to_string()),
            Col::Held => row.input_held.map_or_else(dash, |h| h.to_string()),
            Col::Drops => drop_list(&row.drops),
        }
    }
}

/// Rows under a heading, with the columns they are shown with.
pub(crate) struct Table {
    /// A paragraph above the table.
    pub intro: Option<String>,
    pub columns: Vec<Col>,
    pub rows: Vec<Row>,
    /// A paragraph below the table.
    pub outro: Option<String>,
}

impl Table {
    /// An empty table with these columns.
    pub(crate) fn new(columns: Vec<Col>) -> Self {
        Table {
            intro: None,
            columns,
            rows: Vec::new(),
            outro: None,
        }
    }

    /// The table in markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::from("\n");
        if let Some(intro) = &self.intro {
            md.push_str(&format!("{intro}\n\n"));
        }
        let headers: Vec<&str> = self.columns.iter().map(|c| c.header()).collect();
        md.push_str(&format!("| {} |\n", headers.join(" | ")));
        md.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
        for row in &self.rows {
            let cells: Vec<String> = self.columns.iter().map(|c| c.cell(row)).collect();
            md.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        if let Some(outro) = &self.outro {
            md.push_str(&format!("\n{outro}\n"));
        }
        md
    }
}

/// Round trips of an ICMP echo to the gateway with the relay idle, with the same echo through
/// a bare TAP and a TCP echo between the same CPUs (µs).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct RttIdle {
    pub relay_p50_us: f64,
    pub relay_p99_us: f64,
    pub relay_p999_us: f64,
    pub tap_p50_us: f64,
    pub tap_p99_us: f64,
    pub tap_p999_us: f64,
    pub tcp_echo_p50_us: f64,
    pub tcp_echo_p99_us: f64,
    pub tcp_echo_p999_us: f64,
    /// The relay's round trips at [`crate::stats::CDF_AT`] (µs).
    pub relay_cdf_us: Vec<f64>,
}

/// Round trips of an ICMP echo while swarm guests keep the relay's core busy for a share of
/// its time.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct RttLoaded {
    pub size: usize,
    /// The share of its time the relay's core thread was to be busy.
    pub busy_target: f64,
    pub capacity_fps: f64,
    pub target_load_fps: f64,
    pub measured_load_fps: f64,
    /// The fraction of the echo window the relay's core thread was on a CPU.
    pub relay_busy: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// The round trips at [`crate::stats::CDF_AT`] (µs).
    pub cdf_us: Vec<f64>,
    pub answered: usize,
    pub sent: usize,
}

/// Connection rate and memory per idle client.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct ConnResult {
    pub upgrades_per_s: f64,
    pub upgrade_and_ping_per_s: f64,
    /// (idle clients, relay RSS per client in KiB).
    pub rss_kib_per_idle_client: Vec<(usize, f64)>,
    /// (idle clients, KiB per ws:// client, KiB per wss:// client with the handshake done),
    /// each count on a relay of its own.
    pub rss_kib_per_idle_ws_and_wss: Vec<(usize, f64, f64)>,
}

/// Everything one run measured, as written to `bench/results/relay-bench-DATE.json` (and read
/// back by `--charts-from`: what an older run did not measure is absent).
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Results {
    pub machine: String,
    pub rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_idle: Option<RttIdle>,
    pub rtt_loaded: Vec<RttLoaded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub density: Vec<crate::density::Density>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<crate::tcp::TcpCell>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub farm: Option<crate::farm::FarmResult>,
}

/// Drop counters as "reason=n, …", or "–".
pub(crate) fn drop_list(drops: &Drops) -> String {
    if drops.is_empty() {
        return "–".to_string();
    }
    drops
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rate with k/M suffixes.
pub(crate) fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            scenario: "up".into(),
            size: 1514,
            count: Some(64),
            fps: Stat {
                median: 440_000.0,
                min: 436_000.0,
                max: 449_000.0,
            },
            reference_fps: Some(645_000.0),
            cpu_ns_per_frame: Some(2153.4),
            drops: [("send_queue_full".to_string(), 3)].into_iter().collect(),
            ..Row::default()
        }
    }

    #[test]
    fn one_row_renders_to_markdown_and_json() {
        let mut t = Table::new(vec![
            Col::Scenario("scenario"),
            Col::Size,
            Col::Count("clients"),
            Col::Fps("relay frames/s"),
            Col::Reference("kernel limit frames/s", "–"),
            Col::Ratio("relay / kernel", RatioStyle::Decimals(2)),
            Col::Loss,
            Col::Cpu,
            Col::Drops,
        ]);
        t.rows.push(row());
        let md = t.markdown();
        assert!(md.contains(
            "| up | 1514 | 64 | 440 k (436 k–449 k) | 645 k | 0.68 | – | 2153 | send_queue_full=3 |"
        ), "{md}");
        let json = serde_json::to_value(row()).unwrap();
        assert_eq!(json["fps"]["median"], 440_000.0);
        assert_eq!(json["drops"]["send_queue_full"], 3);
        assert!(json.get("loss").is_none(), "absent values are left out");
    }

    #[test]
    fn gains_and_missing_references() {
        let mut r = row();
        r.scenario = "down_2cores".into();
        assert_eq!(
            Col::Ratio("gain", RatioStyle::Gain).cell(&r),
            format!("{:.2}×", 440.0 / 645.0)
        );
        r.reference_fps = None;
        assert_eq!(Col::Reference("1 core", "not run").cell(&r), "not run");
        assert_eq!(Col::Scenario("scenario").cell(&r), "down");
        assert_eq!(fmt_rate(4_050_000.0), "4.05 M");
    }
}

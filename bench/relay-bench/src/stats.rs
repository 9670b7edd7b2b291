//! Samples and their statistics: medians with spread, percentiles, repetitions.

use crate::relay::*;

/// One measurement: frames/s and the numbers around it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub fps: f64,
    /// up: frames queued ahead of the relay at the end of the window; down: frames/s the
    /// kernel queued to the TAP.
    pub offered_fps: f64,
    pub loss: f64,
    pub cpu_ns_per_frame: f64,
}

impl Sample {
    /// `frames` delivered in `seconds`, the relay having used `cpu_ticks` of CPU meanwhile.
    pub(crate) fn delivered(frames: f64, seconds: f64, cpu_ticks: u64) -> Sample {
        Sample {
            fps: frames / seconds,
            cpu_ns_per_frame: cpu_ticks as f64 / crate::sys::ticks_per_second() * 1e9
                / frames.max(1.0),
            ..Sample::default()
        }
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Median and spread (min, max) of repeated samples.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub(crate) fn stat(values: &[f64]) -> Stat {
    let mut v = values.to_vec();
    let m = median(&mut v);
    Stat {
        median: m,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// The `p`-quantile (0..=1) of `v` (sorted here), 0 if empty.
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    sort(v);
    of_sorted(v, p)
}

fn sort(v: &mut [f64]) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
}

/// The `p`-quantile of sorted `v`, 0 if empty.
fn of_sorted(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The shares at which round-trip distributions are kept for the charts: every 5 % up to 95 %,
/// then 99, 99.5, 99.9 % and the largest.
pub(crate) const CDF_AT: [f64; 24] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0,
];

/// The values of `v` at each share of [`CDF_AT`].
pub(crate) fn cdf(v: &mut [f64]) -> Vec<f64> {
    sort(v);
    CDF_AT.iter().map(|&p| of_sorted(v, p)).collect()
}

/// Runs a scenario `reps` times: its samples, and its drop counters summed over the runs.
pub(crate) fn repeat(
    reps: usize,
    mut run: impl FnMut() -> (Sample, Drops),
) -> (Vec<Sample>, Drops) {
    let mut samples = Vec::with_capacity(reps);
    let mut drops = Drops::new();
    for _ in 0..reps {
        let (sample, d) = run();
        add_drops(&mut drops, d);
        samples.push(sample);
    }
    (samples, drops)
}

/// Adds drop counters to a sum.
pub(crate) fn add_drops(sum: &mut Drops, more: Drops) {
    for (k, v) in more {
        *sum.entry(k).or_default() += v;
    }
}

/// `field` of every sample: median, min and max.
pub(crate) fn stat_of(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> Stat {
    stat(&samples.iter().map(field).collect::<Vec<_>>())
}

//! SVG charts beside the markdown and JSON (the other groups' in `chart_groups.rs`, tcp's in
//! `tcp.rs`): for up and down, frames/s against clients, one
//! panel per frame size, with the relay's median and spread, the floor and the kernel's limit
//! of the same run; for rtt, the round trips' distributions idle and at each load; for
//! density, each trial's p99 and how busy the relay core and the load CPU were.

use std::path::Path;

use plotters::prelude::*;

use crate::density::{Density, P99_LIMIT_US};
use crate::report::{Row, RttIdle, RttLoaded};
use crate::stats::CDF_AT;

/// Writes `STEM-up.svg` and `STEM-down.svg` for the up and down rows there are; the paths
/// written.
pub(crate) fn updown(rows: &[Row], stem: &Path) -> Vec<std::path::PathBuf> {
    let mut written = Vec::new();
    for (way, floor, limit) in [
        ("up", "floor_up", "kernel_tap_write"),
        ("down", "floor_down", "kernel_tap_read"),
    ] {
        let mut sizes: Vec<usize> = rows
            .iter()
            .filter(|r| r.scenario == way)
            .map(|r| r.size)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.is_empty() {
            continue;
        }
        written.extend(write(stem, way, |path| {
            draw(rows, &sizes, (way, floor, limit), path)
        }));
    }
    written
}

/// The result of drawing `STEM-NAME.svg` with `draw`: its path, or `None` after saying why
/// it could not be drawn.
pub(crate) fn write(
    stem: &Path,
    name: &str,
    draw: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error>>,
) -> Option<std::path::PathBuf> {
    let path = stem.with_file_name(format!(
        "{}-{name}.svg",
        stem.file_name().unwrap_or_default().to_string_lossy()
    ));
    match draw(&path) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("relay-bench: chart {}: {e}", path.display());
            None
        }
    }
}

/// A chart of frames/s (0 to `y_max`) against a count on a log axis (to `x_max`) in `panel`,
/// its mesh drawn.
pub(crate) type FramesChart<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<
        plotters::coord::combinators::LogCoord<f64>,
        plotters::coord::types::RangedCoordf64,
    >,
>;

pub(crate) fn frames_panel<'a>(
    panel: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: String,
    x_desc: &str,
    (x_max, y_max): (f64, f64),
) -> Result<FramesChart<'a>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(panel)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("frames/s")
        .y_label_formatter(&|v| crate::report::fmt_rate(*v))
        .draw()?;
    Ok(chart)
}

/// Draws the legend of `chart` at `position`, on a white box with a black border.
pub(crate) fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()?;
    Ok(())
}

/// One panel per size: relay (median with min–max bars), floor, kernel limit, against
/// clients on a log axis.
fn draw(
    rows: &[Row],
    sizes: &[usize],
    (way, floor, limit): (&str, &str, &str),
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let width = 420 * sizes.len() as u32;
    let root = SVGBackend::new(path, (width.max(420), 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, sizes.len()));
    for (panel, &size) in panels.iter().zip(sizes) {
        let series = |name: &str| -> Vec<(f64, f64, f64, f64)> {
            rows.iter()
                .filter(|r| r.scenario == name && r.size == size)
                .filter_map(|r| Some((r.count? as f64, r.fps.median, r.fps.min, r.fps.max)))
                .collect()
        };
        let relay = series(way);
        let floor_points = series(floor);
        let kernel = rows
            .iter()
            .find(|r| r.scenario == limit && r.size == size)
            .map(|r| r.fps.median);
        let x_max = relay.iter().map(|p| p.0).fold(1.0, f64::max) * 2.0;
        let y_max = relay
            .iter()
            .chain(&floor_points)
            .map(|p| p.3)
            .chain(kernel)
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = frames_panel(
            panel,
            format!("{way}, {size} B frames"),
            "clients",
            (x_max, y_max),
        )?;
        if let Some(k) = kernel {
            chart
                .draw_series(LineSeries::new(
                    [(0.5, k), (x_max, k)],
                    BLACK.stroke_width(1),
                ))?
                .label("kernel limit")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
        }
        let line = |points: &[(f64, f64, f64, f64)]| -> Vec<(f64, f64)> {
            points.iter().map(|p| (p.0, p.1)).collect()
        };
        chart
            .draw_series(LineSeries::new(line(&floor_points), BLUE.stroke_width(2)))?
            .label("floor")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(line(&relay), RED.stroke_width(2)))?
            .label("tapwire")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
        chart.draw_series(
            relay
                .iter()
                .map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, RED.filled(), 6)),
        )?;
        legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    }
    root.present()?;
    Ok(())
}

/// Writes `STEM-rtt.svg`, one panel per frame size: the share of echoes slower than each
/// round-trip time (both axes logarithmic, down to 0.1 %), idle and at each load; the path
/// written, if there were loaded measurements.
pub(crate) fn rtt(
    idle: Option<&RttIdle>,
    loaded: &[RttLoaded],
    stem: &Path,
) -> Option<std::path::PathBuf> {
    let mut sizes: Vec<usize> = loaded.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return None;
    }
    write(stem, "rtt", |path| draw_rtt(idle, loaded, &sizes, path))
}

/// (µs, share slower) points of a distribution kept at [`CDF_AT`], without the largest
/// (nothing is slower than it).
fn ccdf(cdf_us: &[f64]) -> Vec<(f64, f64)> {
    CDF_AT
        .iter()
        .zip(cdf_us)
        .filter(|(p, us)| **p < 1.0 && **us > 0.0)
        .map(|(p, us)| (*us, 1.0 - p))
        .collect()
}

fn draw_rtt(
    idle: Option<&RttIdle>,
    loaded: &[RttLoaded],
    sizes: &[usize],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let width = 480 * sizes.len() as u32;
    let root = SVGBackend::new(path, (width, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, sizes.len()));
    let idle_points = idle.map(|i| ccdf(&i.relay_cdf_us)).unwrap_or_default();
    let colours = [BLUE, GREEN, RED, MAGENTA, CYAN];
    for (panel, &size) in panels.iter().zip(sizes) {
        let runs: Vec<(&RttLoaded, Vec<(f64, f64)>)> = loaded
            .iter()
            .filter(|r| r.size == size)
            .map(|r| (r, ccdf(&r.cdf_us)))
            .collect();
        let all = || runs.iter().flat_map(|(_, p)| p).chain(&idle_points);
        let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min).min(1e3) * 0.8;
        let x_max = all().map(|p| p.0).fold(1.0, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("ICMP echo round trip, {size} B load"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min..x_max).log_scale(), (0.0008f64..1.2).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("round trip (µs)")
            .x_labels(6)
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("share of echoes slower")
            .y_label_formatter(&|v| format!("{}", v * 100.0) + " %")
            .draw()?;
        if !idle_points.is_empty() {
            chart
                .draw_series(LineSeries::new(idle_points.clone(), BLACK.stroke_width(2)))?
                .label("idle")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
        }
        for (i, (r, points)) in runs.iter().enumerate() {
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(format!("relay core {:.0} % busy", r.relay_busy * 100.0))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    }
    root.present()?;
    Ok(())
}

/// Writes `STEM-density.svg`, one panel per frame size: each trial's p99 (held: filled, not
/// held: hollow) against guests with the limit, and the relay core's and the load CPU's busy
/// shares on the right axis; the path written, if there were trials.
pub(crate) fn density(results: &[Density], stem: &Path) -> Option<std::path::PathBuf> {
    if results.iter().all(|d| d.trials.is_empty()) {
        return None;
    }
    write(stem, "density", |path| draw_density(results, path))
}

/// A busy share of a density trial.
type BusyOf = fn(&crate::density::Trial) -> f64;

fn draw_density(results: &[Density], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (520 * results.len() as u32, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, results.len()));
    for (panel, d) in panels.iter().zip(results) {
        let mut trials = d.trials.clone();
        trials.sort_by_key(|t| t.guests);
        let x_max = trials.iter().map(|t| t.guests).max().unwrap_or(1) as f64 * 1.1;
        let y_max = trials
            .iter()
            .filter_map(|t| t.p99_us)
            .fold(P99_LIMIT_US, f64::max)
            * 2.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{} B, {} datagrams/s per guest: held {}",
                    d.size, d.pps_per_guest, d.guests_held
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .right_y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, (10f64..y_max).log_scale())?
            .set_secondary_coord(0f64..x_max, 0f64..100f64);
        chart
            .configure_mesh()
            .x_desc("guests")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("round trip p99 (µs)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("busy (%)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, P99_LIMIT_US), (x_max, P99_LIMIT_US)],
                BLACK.stroke_width(1),
            ))?
            .label("p99 limit")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
        chart
            .draw_series(trials.iter().filter_map(|t| {
                let style = if t.passed {
                    RED.filled()
                } else {
                    RED.stroke_width(2)
                };
                Some(Circle::new(
                    (t.guests as f64, t.p99_us?.max(10.0)),
                    5,
                    style,
                ))
            }))?
            .label("p99 (filled: held)")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, RED.filled()));
        let busy_lines: [(&str, RGBColor, BusyOf); 2] = [
            ("relay core busy", BLUE, |t| t.relay_busy),
            ("load CPU busy", GREEN, |t| t.load_cpu_busy),
        ];
        for (name, colour, busy) in busy_lines {
            chart
                .draw_secondary_series(LineSeries::new(
                    trials.iter().map(|t| (t.guests as f64, busy(t) * 100.0)),
                    colour.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory for one test's charts, and the stem of their names in it.
    fn scratch(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("relay-bench-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let stem = dir.join("relay-bench-test");
        (dir, stem)
    }

    /// Asserts that the SVG at `path` holds every one of `texts`.
    fn assert_svg_has(path: &Path, texts: &[&str]) {
        let svg = std::fs::read_to_string(path).expect("svg");
        for text in texts {
            assert!(svg.contains(text), "{text:?} missing");
        }
    }
    use crate::stats::Stat;

    fn row(scenario: &str, size: usize, count: Option<usize>, fps: f64) -> Row {
        Row {
            scenario: scenario.into(),
            size,
            count,
            fps: Stat {
                median: fps,
                min: fps * 0.9,
                max: fps * 1.1,
            },
            ..Row::default()
        }
    }

    #[test]
    fn up_and_down_each_get_a_chart_with_a_panel_per_size_and_the_three_lines() {
        let mut rows = Vec::new();
        for size in [64, 1514] {
            rows.push(row("kernel_tap_write", size, None, 500e3));
            for clients in [1, 64, 1000] {
                rows.push(row("up", size, Some(clients), 300e3));
                rows.push(row("floor_up", size, Some(clients), 400e3));
            }
        }
        let (dir, stem) = scratch("updown");
        let written = updown(&rows, &stem);
        assert_eq!(
            written,
            vec![dir.join("relay-bench-test-up.svg")],
            "no down rows, no down chart"
        );
        assert_svg_has(
            &written[0],
            &[
                "up, 64 B frames",
                "up, 1514 B frames",
                "kernel limit",
                "floor",
                "tapwire",
                "clients",
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rtt_gets_a_panel_per_size_with_idle_and_each_load() {
        let cdf = |scale: f64| -> Vec<f64> { CDF_AT.iter().map(|p| 80.0 + scale * p).collect() };
        let idle = RttIdle {
            relay_cdf_us: cdf(100.0),
            ..RttIdle::default()
        };
        let loaded: Vec<RttLoaded> = [64, 1514]
            .into_iter()
            .flat_map(|size| {
                [0.1, 0.5].into_iter().map(move |busy| RttLoaded {
                    size,
                    relay_busy: busy,
                    cdf_us: CDF_AT.iter().map(|p| 80.0 + 2000.0 * busy * p).collect(),
                    ..RttLoaded::default()
                })
            })
            .collect();
        let (dir, stem) = scratch("rtt");
        assert_eq!(
            rtt(Some(&idle), &[], &stem),
            None,
            "nothing loaded, no chart"
        );
        let written = rtt(Some(&idle), &loaded, &stem).expect("chart");
        assert_eq!(written, dir.join("relay-bench-test-rtt.svg"));
        assert_svg_has(
            &written,
            &[
                "64 B load",
                "1514 B load",
                "idle",
                "relay core 10 % busy",
                "relay core 50 % busy",
                "share of echoes slower",
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn density_gets_a_panel_per_size_with_the_limit_and_both_busy_lines() {
        use crate::density::Trial;
        let t = |guests, passed, p99_us| Trial {
            guests,
            passed,
            p99_us: Some(p99_us),
            relay_busy: 0.5,
            load_cpu_busy: 0.8,
            ..Trial::default()
        };
        let results: Vec<Density> = [64, 1514]
            .into_iter()
            .map(|size| Density {
                size,
                pps_per_guest: 200,
                guests_held: 128,
                trials: vec![
                    t(64, true, 400.0),
                    t(256, false, 9000.0),
                    t(128, true, 600.0),
                ],
                ..Density::default()
            })
            .collect();
        let (dir, stem) = scratch("density");
        assert_eq!(density(&[], &stem), None, "no trials, no chart");
        let written = density(&results, &stem).expect("chart");
        assert_eq!(written, dir.join("relay-bench-test-density.svg"));
        assert_svg_has(
            &written,
            &[
                "64 B, 200 datagrams/s per guest: held 128",
                "1514 B, 200 datagrams/s per guest: held 128",
                "p99 limit",
                "relay core busy",
                "load CPU busy",
                "guests",
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

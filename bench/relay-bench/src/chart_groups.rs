//! SVG charts of the groups whose rows compare a few scenarios (scale, g2g, swarm, spoofing,
//! firewall, nat, wss, networks, farm): one panel per frame size, frames/s against the count
//! (clients, pairs, guests) with the median and the min–max bar of each scenario, and a
//! horizontal line for a row measured once for all counts (a kernel's limit). Drawn from the
//! rows alone, so `--charts-from` draws them for a saved run too.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Row;

/// Each group's chart name and the scenarios it compares.
const GROUPS: &[(&str, &[&str])] = &[
    ("scale", &["up_2cores", "down_2cores", "up", "down"]),
    ("g2g", &["g2g", "kernel_loopback_tcp"]),
    ("swarm", &["swarm_flood"]),
    ("spoofing", &["up_antispoof", "up_allow_spoofing"]),
    ("firewall", &["floor_up_firewall", "floor_up_bare"]),
    (
        "nat",
        &[
            "nat_up",
            "kernel_forward_up",
            "nat_down",
            "kernel_forward_down",
        ],
    ),
    ("wss", &["up_ws", "up_wss", "down_ws", "down_wss"]),
    (
        "networks",
        &[
            "up_default_network",
            "up_1_network",
            "up_64_networks",
            "up_beside_1000_idle_networks",
            "down_default_network",
            "down_1_network",
            "down_64_networks",
            "down_beside_1000_idle_networks",
        ],
    ),
    (
        "farm",
        &[
            "farm_direct",
            "farm_haproxy",
            "span_one_host",
            "span_across_hosts",
            "kernel_span",
        ],
    ),
];

const COLOURS: [RGBColor; 8] = [
    RED,
    BLUE,
    GREEN,
    MAGENTA,
    CYAN,
    BLACK,
    RGBColor(230, 140, 0),
    RGBColor(120, 60, 160),
];

/// Writes `STEM-GROUP.svg` for every group with rows of its own; the paths written. The
/// scale group is drawn only when it has its 2-core rows (its 1-core rows are up's and
/// down's).
pub(crate) fn groups(rows: &[Row], stem: &Path) -> Vec<PathBuf> {
    let mut written = Vec::new();
    for &(name, scenarios) in GROUPS {
        let own = |s: &str| rows.iter().any(|r| r.scenario == s);
        if !own(scenarios[0]) {
            continue;
        }
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| scenarios.contains(&r.scenario.as_str()))
            .collect();
        written.extend(crate::chart::write(stem, name, |path| {
            draw(&mine, scenarios, name, path)
        }));
    }
    written
}

fn draw(
    rows: &[&Row],
    scenarios: &[&str],
    name: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let width = 420 * sizes.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, sizes.len().max(1)));
    for (panel, &size) in panels.iter().zip(&sizes) {
        let of_size: Vec<&&Row> = rows.iter().filter(|r| r.size == size).collect();
        let x_max = of_size.iter().filter_map(|r| r.count).max().unwrap_or(1) as f64 * 2.0;
        let y_max = of_size.iter().map(|r| r.fps.max).fold(1.0, f64::max) * 1.45;
        let mut chart = crate::chart::frames_panel(
            panel,
            format!("{name}, {size} B frames"),
            "clients, pairs or guests",
            (x_max, y_max),
        )?;
        for (i, scenario) in scenarios.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut points: Vec<(f64, &Row)> = of_size
                .iter()
                .filter(|r| r.scenario == *scenario)
                .map(|r| (r.count.map_or(0.0, |c| c as f64), **r))
                .collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = crate::report::label_of(scenario);
            if points.iter().all(|p| p.0 == 0.0) {
                // Measured once, for every count: a line across.
                let y = points[0].1.fps.median;
                chart
                    .draw_series(LineSeries::new(
                        [(0.5, y), (x_max, y)],
                        colour.stroke_width(1),
                    ))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
                continue;
            }
            let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1.fps.median)).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            chart.draw_series(points.iter().map(|p| {
                ErrorBar::new_vertical(p.0, p.1.fps.min, p.1.fps.median, p.1.fps.max, colour, 6)
            }))?;
        }
        crate::chart::legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_drawn_when_its_own_rows_are_there() {
        let dir = std::env::temp_dir().join(format!("relay-bench-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let row = |scenario: &str, count| Row {
            scenario: scenario.into(),
            size: 1514,
            count,
            fps: crate::stats::Stat {
                median: 1000.0,
                min: 900.0,
                max: 1100.0,
            },
            ..Row::default()
        };
        let rows = vec![
            row("up", Some(64)),
            row("nat_up", Some(1)),
            row("nat_up", Some(64)),
            row("kernel_forward_up", None),
        ];
        let written = groups(&rows, &dir.join("run"));
        assert_eq!(written, vec![dir.join("run-nat.svg")]);
        let svg = std::fs::read_to_string(&written[0]).expect("svg");
        assert!(
            svg.contains("kernel forwarding"),
            "the kernel's line is named"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The sweeps behind docs/simulations.md: runs the scenarios over fleet sizes, loss rates
//! and suspicion timeouts, writes every report as CSV, and draws SVG charts.
//!
//! ```text
//!  loss 0..10% at 1,000       ─► detect + false-positives ─► loss.csv ─► loss.svg
//!  suspicion 1..4 s at 1,000  ─► detect + false-positives ─► timing.csv ─► timing.svg
//!  sizes 100..max at 1% loss ─► detect      ─► sizes.csv  ─► detection.svg, bandwidth.svg
//! ```

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::memberlist;
use crate::scenarios;
use crate::sim::SimConfig;
use crate::stats::Report;
use crate::writes::{self, WritesConfig};

const SIZES: [u32; 6] = [100, 300, 1_000, 3_000, 10_000, 50_000];
const LOSSES: [f64; 5] = [0.0, 0.01, 0.02, 0.05, 0.10];
const SUSPICIONS_MS: [u64; 5] = [1_000, 1_500, 2_000, 3_000, 4_000];
/// Fleet size of the loss and timing sweeps.
const SWEEP_MEMBERS: u32 = 1_000;

pub fn sweep(out: &Path, max_members: u32, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    // The small fleets first: the allocator keeps what a large run freed, and each
    // run reports the process's peak memory.
    let losses: Vec<(f64, SimConfig)> = LOSSES
        .iter()
        .map(|&loss| {
            let mut config = SimConfig::new(SWEEP_MEMBERS, seed);
            config.network.loss = loss;
            (loss * 100.0, config)
        })
        .collect();
    trade_off(
        out,
        "loss",
        "1,000 members: detection (s) and false deaths per 1,000 member-hours",
        "datagram loss (%)",
        losses,
    )?;
    let suspicions: Vec<(f64, SimConfig)> = SUSPICIONS_MS
        .iter()
        .map(|&suspect| {
            let mut config = SimConfig::new(SWEEP_MEMBERS, seed);
            config.network.loss = 0.01;
            config.gossip.suspect_to_down = Duration::from_millis(suspect);
            (suspect as f64 / 1000.0, config)
        })
        .collect();
    trade_off(
        out,
        "timing",
        "1,000 members, 1% loss: the suspicion timeout's trade-off",
        "suspicion timeout (s)",
        suspicions,
    )?;
    // Sizes at 1% loss.
    let mut sizes = Vec::new();
    for &n in SIZES.iter().filter(|&&n| n <= max_members) {
        let mut config = SimConfig::new(n, seed);
        config.network.loss = 0.01;
        let report = scenarios::detect(config, 3, 12)?;
        eprintln!("{}", report.to_text());
        sizes.push((n, report));
    }
    write_csv(&out.join("sizes.csv"), sizes.iter().map(|(_, r)| r))?;
    let xs: Vec<f64> = sizes.iter().map(|(n, _)| *n as f64).collect();
    let series = |name: &str| -> Vec<f64> {
        sizes
            .iter()
            .map(|(_, r)| r.get_f64(name).unwrap_or(f64::NAN) / 1000.0)
            .collect()
    };
    let ml: Vec<_> = sizes.iter().map(|(n, _)| memberlist::figures(*n)).collect();
    line_chart(
        &out.join("detection.svg"),
        "Death known everywhere, 1% loss (s)",
        "members",
        true,
        &xs,
        &[
            (
                "Corral: last member knows, max",
                series("detect_last_max_ms"),
            ),
            (
                "Corral: first member knows, p50",
                series("detect_first_p50_ms"),
            ),
            (
                "Corral: shard failed over at the last agent, max",
                series("failover_last_agent_max_ms"),
            ),
            (
                "memberlist defaults (formula): last member knows",
                ml.iter().map(|f| f.detect_last_ms / 1000.0).collect(),
            ),
        ],
    )?;
    let bytes = |name: &str| -> Vec<f64> {
        sizes
            .iter()
            .map(|(_, r)| r.get_f64(name).unwrap_or(f64::NAN))
            .collect()
    };
    line_chart(
        &out.join("bandwidth.svg"),
        "Gossip bytes sent per member per second, 1% loss",
        "members",
        true,
        &xs,
        &[
            ("Corral: mean", bytes("bytes_per_member_s")),
            ("Corral: busiest member", bytes("bytes_per_member_s_max")),
            (
                "memberlist defaults (formula)",
                ml.iter().map(|f| f.bytes_per_member_s).collect(),
            ),
        ],
    )?;

    eprintln!("wrote {}", out.display());
    Ok(())
}

const WRITE_SIZES: [u32; 3] = [1_000, 10_000, 50_000];
const WRITE_RATES: [f64; 2] = [100.0, 1_000.0];

/// The fleet under writes, with the feed tree and without it (the core feeds every
/// agent): `writes.csv`, `writes-delay.svg`, `writes-core.svg`.
pub fn writes_sweep(out: &Path, max_members: u32, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let apply_us = writes::apply_cost(200_000, 256)?;
    eprintln!("the agent applies an entry in {apply_us:.2} µs on this machine");
    let mut runs: Vec<(u32, f64, bool, Report)> = Vec::new();
    for &n in WRITE_SIZES.iter().filter(|&&n| n <= max_members) {
        for &rate in &WRITE_RATES {
            for tree in [true, false] {
                let mut config = WritesConfig::new(n, rate, seed);
                if !tree {
                    config.tree.top = 0;
                }
                let report = writes::run(&config)?;
                eprintln!("{}", report.to_text());
                runs.push((n, rate, tree, report));
            }
        }
    }
    write_csv(&out.join("writes.csv"), runs.iter().map(|r| &r.3))?;
    let sizes: Vec<u32> = WRITE_SIZES
        .into_iter()
        .filter(|&n| n <= max_members)
        .collect();
    let xs: Vec<f64> = sizes.iter().map(|n| *n as f64).collect();
    let series = |rate: f64, tree: bool, name: &str| -> Vec<f64> {
        sizes
            .iter()
            .map(|n| {
                runs.iter()
                    .find(|r| r.0 == *n && r.1 == rate && r.2 == tree)
                    .and_then(|r| r.3.get_f64(name))
                    .unwrap_or(f64::NAN)
            })
            .collect()
    };
    line_chart(
        &out.join("writes-delay.svg"),
        "Agents feeding agents: a write at the replicas, p99 (ms)",
        "agents",
        true,
        &xs,
        &[
            (
                "100 writes/s, the last replica",
                series(100.0, true, "steady_last_replica_p99_ms"),
            ),
            (
                "1,000 writes/s, the last replica",
                series(1_000.0, true, "steady_last_replica_p99_ms"),
            ),
            (
                "1,000 writes/s, every replica, 10% of relays dead at once",
                series(1_000.0, true, "deaths_every_replica_p99_ms"),
            ),
        ],
    )?;
    line_chart(
        &out.join("writes-core.svg"),
        "Copies of each write the core sends (mean), 1,000 writes/s",
        "agents",
        true,
        &xs,
        &[
            (
                "agents feed agents",
                series(1_000.0, true, "steady_core_copies_mean"),
            ),
            (
                "agents feed agents, 10% of relays dead at once",
                series(1_000.0, true, "deaths_core_copies_mean"),
            ),
            (
                "the core feeds every agent",
                series(1_000.0, false, "steady_core_copies_mean"),
            ),
        ],
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Detection and false deaths for each (x, configuration): `<name>.csv`,
/// `<name>-false-positives.csv` and a chart of both against x, `<name>.svg`.
fn trade_off(
    out: &Path,
    name: &str,
    title: &str,
    x_label: &str,
    points: Vec<(f64, SimConfig)>,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for (x, config) in points {
        let detect = scenarios::detect(config.clone(), 3, 12)?;
        let fp = scenarios::false_positives(config, 600, 20.0, 1000)?;
        eprintln!("{}{}", detect.to_text(), fp.to_text());
        runs.push((x, detect, fp));
    }
    write_csv(
        &out.join(format!("{name}.csv")),
        runs.iter().map(|(_, d, _)| d),
    )?;
    write_csv(
        &out.join(format!("{name}-false-positives.csv")),
        runs.iter().map(|(_, _, f)| f),
    )?;
    let xs: Vec<f64> = runs.iter().map(|(x, _, _)| *x).collect();
    let detection = runs
        .iter()
        .map(|(_, d, _)| d.get_f64("detect_last_max_ms").unwrap_or(f64::NAN) / 1000.0)
        .collect();
    let false_deaths = runs
        .iter()
        .map(|(_, _, f)| {
            f.get_f64("false_deaths_per_member_hour")
                .unwrap_or(f64::NAN)
                * 1000.0
        })
        .collect();
    line_chart(
        &out.join(format!("{name}.svg")),
        title,
        x_label,
        false,
        &xs,
        &[
            ("last member knows, max (s)", detection),
            (
                "false deaths per 1,000 member-hours (1 s pauses, 20/min)",
                false_deaths,
            ),
        ],
    )
}

fn write_csv<'a>(path: &Path, reports: impl Iterator<Item = &'a Report>) -> anyhow::Result<()> {
    let mut text = String::new();
    for (i, report) in reports.enumerate() {
        if i == 0 {
            text.push_str(&report.csv_header());
            text.push('\n');
        }
        text.push_str(&report.csv_row());
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// A line chart of several series over the same x values, into an SVG file.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    log_x: bool,
    xs: &[f64],
    series: &[(&str, Vec<f64>)],
) -> anyhow::Result<()> {
    let finite = || {
        series
            .iter()
            .flat_map(|(_, ys)| ys.iter())
            .filter(|y| y.is_finite())
    };
    let y_max = finite().fold(0.0f64, |a, &b| a.max(b)) * 1.1 + 1e-9;
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    anyhow::ensure!(x_min.is_finite() && x_max.is_finite(), "no points to draw");
    let root = SVGBackend::new(path, (860, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(120, 120, 120),
    ];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .draw()
                .map_err(plot_error)?;
            for (i, (name, ys)) in series.iter().enumerate() {
                let color = colors[i % colors.len()];
                let points: Vec<(f64, f64)> = xs
                    .iter()
                    .copied()
                    .zip(ys.iter().copied())
                    .filter(|(_, y)| y.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(plot_error)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(plot_error)?;
        }};
    }
    macro_rules! builder {
        () => {
            ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
        };
    }
    if log_x {
        draw!(
            builder!()
                .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0.0..y_max)
                .map_err(plot_error)?
        );
    } else {
        let pad = (x_max - x_min).max(1e-9) * 0.05;
        draw!(
            builder!()
                .build_cartesian_2d(x_min - pad..x_max + pad, 0.0..y_max)
                .map_err(plot_error)?
        );
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_written_with_its_labels() {
        let dir = std::env::temp_dir().join(format!("corral-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        line_chart(
            &path,
            "title here",
            "members",
            true,
            &[100.0, 1000.0],
            &[("series one", vec![1.0, 2.0])],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.contains("title here") && svg.contains("series one"),
            "{svg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

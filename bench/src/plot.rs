//! `--plot FILE.svg`: the report as a chart (plotters, SVG backend only: no font or image
//! libraries). Two panels:
//!
//! - runs with timelines (`compare`, `sign`, `raw`, `capacity`): throughput over time, one line
//!   per mode and round (for `capacity` with the rated speed and the knockout marked), and
//!   latency percentiles (p50, p90, p99, p99.9, max) per mode;
//! - `raw --sweep`: throughput against concurrency, and p50/p99 latency against it.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::Report;

const SIZE: (u32, u32) = (1100, 800);

/// Writes the chart of `report` to `path` (SVG).
pub fn write(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2);
    let title = format!("{} — {}", report.tool, report.key.input);
    if let Some(sweep) = &report.sweep {
        let threads: Vec<f64> = sweep.points.iter().map(|p| p.threads as f64).collect();
        let rates: Vec<f64> = sweep
            .points
            .iter()
            .map(|p| p.median_signatures_per_s)
            .collect();
        let p50: Vec<f64> = sweep.points.iter().map(|p| p.p50_us / 1e3).collect();
        let p99: Vec<f64> = sweep.points.iter().map(|p| p.p99_us / 1e3).collect();
        xy_panel(
            &upper,
            &title,
            "threads (sessions)",
            "signatures/s",
            &[(
                "median sig/s".into(),
                threads.iter().copied().zip(rates).collect(),
            )],
            &[],
            None,
        )?;
        xy_panel(
            &lower,
            "latency of one C_Sign against concurrency",
            "threads (sessions)",
            "ms",
            &[
                ("p50".into(), threads.iter().copied().zip(p50).collect()),
                ("p99".into(), threads.iter().copied().zip(p99).collect()),
            ],
            &[],
            None,
        )?;
    } else {
        let mut series = Vec::new();
        for m in &report.modes {
            for r in &m.rounds {
                let bucket_s = r.timeline.bucket_ms / 1e3;
                let points = r
                    .timeline
                    .rates()
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| ((i as f64 + 0.5) * bucket_s, v))
                    .collect();
                let name = if m.rounds.len() > 1 {
                    format!("{} round {}", m.mode.name(), r.round)
                } else {
                    m.mode.name().to_owned()
                };
                series.push((name, points));
            }
        }
        let mut marks = Vec::new();
        let mut rated = None;
        if let Some(c) = &report.capacity {
            rated = Some(c.rated_total_per_s);
            if let Some(t) = c.knockout_at_s {
                marks.push((
                    format!("{} out", c.knocked_out.as_deref().unwrap_or("HSM")),
                    t,
                ));
            }
            if let Some(t) = c.restore_at_s {
                marks.push(("back".to_owned(), t));
            }
        }
        xy_panel(
            &upper,
            &title,
            &format!(
                "seconds into the measured window (buckets of {} ms)",
                report.parameters.interval_ms
            ),
            "signatures/s",
            &series,
            &marks,
            rated,
        )?;
        let labels = ["p50", "p90", "p99", "p99.9", "max"];
        let lat: Vec<(String, Vec<(f64, f64)>)> = report
            .modes
            .iter()
            .map(|m| {
                let l = &m.latency;
                let v = [l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us];
                (
                    format!("{} ({})", m.mode.name(), l.of),
                    v.iter()
                        .enumerate()
                        .map(|(i, us)| (i as f64, us / 1e3))
                        .collect(),
                )
            })
            .collect();
        xy_panel(
            &lower,
            &format!("latency percentiles, ms: {}", labels.join(", ")),
            "percentile (0 = p50, 1 = p90, 2 = p99, 3 = p99.9, 4 = max)",
            "ms",
            &lat,
            &[],
            None,
        )?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One panel: lines (with points), vertical marks, an optional horizontal reference line.
pub(crate) fn xy_panel(
    area: &Area<'_>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    marks: &[(String, f64)],
    reference: Option<f64>,
) -> Result<()> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = all
        .clone()
        .map(|p| p.0)
        .chain(marks.iter().map(|m| m.1))
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let x_min = all.clone().map(|p| p.0).fold(x_max, f64::min).min(0.0);
    let y_max = all
        .map(|p| p.1)
        .chain(reference)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(plot_error)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        if points.len() <= 40 {
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(plot_error)?;
        }
    }
    if let Some(r) = reference {
        chart
            .draw_series(LineSeries::new(
                [(x_min, r), (x_max, r)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(plot_error)?
            .label(format!("rated {r:.0}/s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    }
    for (name, x) in marks {
        chart
            .draw_series(LineSeries::new(
                [(*x, 0.0), (*x, y_max)],
                RED.stroke_width(1),
            ))
            .map_err(plot_error)?
            .label(format!("{name} at {x:.1} s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

//! SVG bar charts of the report: one group of two bars (mqttlink, rumqttc) per
//! workload, each bar at the median with a line from min to max.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::measure::{BenchResult, Summary};
use crate::report::{format_value, Library, Report};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 480;
const MQTTLINK_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const RUMQTTC_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const BAR_WIDTH: f64 = 0.3;

/// One workload's bars.
#[derive(Debug, Clone)]
pub struct BarGroup {
    pub label: String,
    pub mqttlink: Option<Summary>,
    pub rumqttc: Option<Summary>,
}

/// Writes the charts the report has data for into `dir` and returns their paths.
pub fn write_charts(report: &Report, dir: &Path) -> BenchResult<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let throughput =
        |workload: &str| workload.starts_with("qos") || workload.starts_with("inbound");
    let charts = [
        (
            "bench-client-throughput.svg",
            "Throughput to the sink (higher is better)",
            "messages/s",
            groups(report, "msg/s", throughput, None),
        ),
        (
            "bench-client-cpu.svg",
            "CPU time per message (lower is better)",
            "CPU µs/message",
            groups(report, "CPU µs/msg", throughput, None),
        ),
        (
            "bench-client-latency.svg",
            "Latency through Mosquitto, p50 and p99 (lower is better)",
            "µs",
            [
                groups(report, "p50 µs", |_| true, Some("p50")),
                groups(report, "p99 µs", |_| true, Some("p99")),
            ]
            .concat(),
        ),
        (
            "bench-client-memory.svg",
            "Resident memory per idle connection (lower is better)",
            "bytes/client",
            groups(report, "bytes/client", |_| true, None),
        ),
    ];

    let mut written = Vec::new();
    for (file, title, unit, bars) in charts {
        if bars.is_empty() {
            continue;
        }
        let path = dir.join(file);
        bar_chart(&path, title, unit, &bars)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

fn groups(
    report: &Report,
    metric: &str,
    include: impl Fn(&str) -> bool + 'static,
    suffix: Option<&str>,
) -> Vec<BarGroup> {
    report
        .rows_of(metric, include)
        .map(|row| BarGroup {
            label: match suffix {
                Some(suffix) => {
                    format!("{}\n{suffix}", row.workload.trim_start_matches("latency-"))
                }
                None => row.workload.clone(),
            },
            mqttlink: row.summary(Library::Mqttlink),
            rumqttc: row.summary(Library::Rumqttc),
        })
        .collect()
}

/// Draws one grouped bar chart into the SVG file at `path`.
pub fn bar_chart(path: &Path, title: &str, unit: &str, bars: &[BarGroup]) -> BenchResult<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;

    let top = bars
        .iter()
        .flat_map(|group| [group.mqttlink, group.rumqttc])
        .flatten()
        .map(|summary| summary.max)
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .margin_top(40)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..bars.len() as f64, 0.0..(top * 1.15).max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .y_label_formatter(&|value| format_value(*value))
        .draw()?;

    for (offset, library, color) in [
        (0.5 - BAR_WIDTH, Library::Mqttlink, MQTTLINK_COLOR),
        (0.5, Library::Rumqttc, RUMQTTC_COLOR),
    ] {
        let summaries: Vec<(f64, Summary)> = bars
            .iter()
            .enumerate()
            .filter_map(|(index, group)| {
                let summary = match library {
                    Library::Mqttlink => group.mqttlink,
                    Library::Rumqttc => group.rumqttc,
                }?;
                Some((index as f64 + offset, summary))
            })
            .collect();
        chart.draw_series(summaries.iter().map(|&(left, summary)| {
            Rectangle::new(
                [(left, 0.0), (left + BAR_WIDTH, summary.median)],
                color.filled(),
            )
        }))?;
        chart.draw_series(summaries.iter().map(|&(left, summary)| {
            let center = left + BAR_WIDTH / 2.0;
            PathElement::new(vec![(center, summary.min), (center, summary.max)], BLACK)
        }))?;
        let value_style = TextStyle::from(("sans-serif", 12).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(summaries.iter().map(|&(left, summary)| {
            Text::new(
                format_value(summary.median),
                (left + BAR_WIDTH / 2.0, summary.max),
                value_style.clone(),
            )
        }))?;
    }

    // Group labels go under the axis, one text line per label line.
    let label_style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (index, group) in bars.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(index as f64 + 0.5, 0.0));
        for (line_index, line) in group.label.lines().enumerate() {
            let line_y = y + 8 + 16 * line_index as i32;
            root.draw(&Text::new(
                line.to_owned(),
                (x, line_y),
                label_style.clone(),
            ))?;
        }
    }

    // The legend sits above the plot, where no bar can hide it.
    let legend_style = TextStyle::from(("sans-serif", 14).into_font());
    for (index, (library, color)) in [
        (Library::Mqttlink, MQTTLINK_COLOR),
        (Library::Rumqttc, RUMQTTC_COLOR),
    ]
    .into_iter()
    .enumerate()
    {
        let left = WIDTH as i32 - 220 + 100 * index as i32;
        root.draw(&Rectangle::new(
            [(left, 14), (left + 12, 26)],
            color.filled(),
        ))?;
        root.draw(&Text::new(
            library.name(),
            (left + 18, 13),
            legend_style.clone(),
        ))?;
    }
    root.present()?;
    Ok(())
}

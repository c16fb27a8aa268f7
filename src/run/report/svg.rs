//! Small SVG chart primitives for the HTML report: a line chart and a horizontal bar
//! chart, each with axes, tick labels, a title and a legend. The output depends only on
//! the input (fixed number formatting, no clock, no randomness), so reports diff cleanly.
//! Non-finite values are skipped, and empty or single-point data still draws a chart.

use super::escape;

/// Series colours, in the order charts hand them out.
pub const PALETTE: [&str; 5] = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];
/// The colour of a "before" or "input" bar beside a coloured "after" or "output" bar.
pub const MUTED: &str = "#94a3b8";

const FONT: &str = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif";
/// Rough width of one character of 11 px text, for laying out labels without a font.
const CHAR_WIDTH: f64 = 6.4;
/// The width of a full-width chart in the report's 920 px column (less its border).
pub const CHART_WIDTH: f64 = 918.0;
/// Up to this many points a line also gets a dot per point (so a single point shows).
const MAX_MARKED_POINTS: usize = 60;

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct LineOptions {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub width: f64,
    pub height: f64,
    /// A range the y axis covers at least (e.g. 0..1 for accuracies).
    pub y_bounds: Option<(f64, f64)>,
    /// Ticks on whole numbers only (steps, iterations).
    pub integer_x: bool,
}

impl LineOptions {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            width: CHART_WIDTH,
            height: 280.0,
            y_bounds: None,
            integer_x: true,
        }
    }
}

/// One row of a horizontal bar chart: a label and one value per series (`None`: no bar).
#[derive(Debug, Clone)]
pub struct BarGroup {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone)]
pub struct BarSeries {
    pub name: String,
    pub color: &'static str,
}

/// How bar values and axis ticks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    Count,
    /// A fraction in [0, 1] written as a percentage.
    Percent,
}

#[derive(Debug, Clone)]
pub struct BarOptions {
    /// Empty: no title row.
    pub title: String,
    pub x_label: String,
    pub width: f64,
    /// A range the value axis covers at least; it always includes 0.
    pub x_bounds: Option<(f64, f64)>,
    pub format: ValueFormat,
    /// Name the series in the title row (off where the page says it once for many charts).
    pub legend: bool,
}

/// A linear axis over "nice" ticks (1, 2 or 5 times a power of ten).
#[derive(Debug, Clone, Copy)]
struct Axis {
    min: f64,
    max: f64,
    step: f64,
}

impl Axis {
    /// The axis covering the finite `values` and `bounds`; (0, 1) when there is nothing.
    fn fit(values: impl Iterator<Item = f64>, bounds: Option<(f64, f64)>, integer: bool) -> Self {
        let (mut lo, mut hi) = values
            .chain(bounds.into_iter().flat_map(|(a, b)| [a, b]))
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            // One distinct value: widen around it so the scale has a length.
            let pad = if integer || lo == 0.0 {
                1.0
            } else {
                lo.abs() * 0.1
            };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let mut step = nice_step((hi - lo) / 4.0);
        if integer {
            step = step.max(1.0);
        }
        // The small slack keeps values that are a whole number of steps from gaining a tick.
        let min = (lo / step + 1e-9).floor() * step;
        let max = (hi / step - 1e-9).ceil() * step;
        Self { min, max, step }
    }

    fn ticks(&self) -> Vec<f64> {
        let count = ((self.max - self.min) / self.step).round() as usize;
        (0..=count)
            .map(|i| self.min + i as f64 * self.step)
            .collect()
    }

    /// Maps `v` from the axis onto the pixel range `from..to`.
    fn scale(&self, v: f64, from: f64, to: f64) -> f64 {
        from + (v - self.min) / (self.max - self.min) * (to - from)
    }

    fn label(&self, v: f64, format: ValueFormat) -> String {
        match format {
            ValueFormat::Percent => format!(
                "{}%",
                plain_number(100.0 * v, decimals_for(100.0 * self.step))
            ),
            ValueFormat::Count => {
                let largest = self.min.abs().max(self.max.abs());
                let (divisor, suffix) = if largest >= 1e6 {
                    (1e6, "M")
                } else if largest >= 1e4 {
                    (1e3, "k")
                } else {
                    (1.0, "")
                };
                let decimals = decimals_for(self.step / divisor);
                format!("{}{suffix}", plain_number(v / divisor, decimals))
            }
        }
    }
}

/// The smallest of 1, 2, 5 × 10^k that is at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= rough * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// Decimals that tell ticks `step` apart.
fn decimals_for(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        ((-step.log10()).ceil() as usize).min(6)
    }
}

fn plain_number(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    // "-0.0" and friends read as a sign error on an axis.
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

/// A bar's own label: counts whole, fractions as percentages.
fn value_label(v: f64, format: ValueFormat) -> String {
    match format {
        ValueFormat::Count if v.fract() == 0.0 => format!("{v:.0}"),
        ValueFormat::Count => format!("{v:.2}"),
        ValueFormat::Percent => format!("{:.1}%", 100.0 * v),
    }
}

fn open_svg(width: f64, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width:.0} {height:.0}\" \
         width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\" font-family=\"{FONT}\" \
         font-size=\"11\" fill=\"#334155\"><title>{}</title>",
        escape(title)
    )
}

fn text(x: f64, y: f64, anchor: &str, extra: &str, content: &str) -> String {
    format!(
        "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\"{extra}>{}</text>",
        escape(content)
    )
}

fn line(x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) -> String {
    format!(
        "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\"/>"
    )
}

fn title_text(title: &str) -> String {
    text(
        12.0,
        20.0,
        "start",
        " font-size=\"13\" font-weight=\"600\" fill=\"#0f172a\"",
        title,
    )
}

/// Swatches and names in a row ending at `right`, on the title line.
fn legend(entries: &[(&str, &str)], right: f64) -> String {
    let widths: Vec<f64> = entries
        .iter()
        .map(|(name, _)| 18.0 + name.chars().count() as f64 * CHAR_WIDTH + 12.0)
        .collect();
    let mut x = right - widths.iter().sum::<f64>();
    let mut out = String::new();
    for ((name, color), width) in entries.iter().zip(widths) {
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"11\" width=\"12\" height=\"10\" rx=\"2\" fill=\"{color}\"/>"
        ));
        out.push_str(&text(x + 16.0, 20.0, "start", "", name));
        x += width;
    }
    out
}

fn no_data(x: f64, y: f64) -> String {
    text(x, y, "middle", " fill=\"#94a3b8\"", "no data")
}

/// A line chart of `series` (x, y) points; non-finite points are left out.
pub fn line_chart(series: &[Series], opts: &LineOptions) -> String {
    let finite: Vec<(&Series, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            (s, points)
        })
        .collect();
    let all = || finite.iter().flat_map(|(_, points)| points.iter());
    let x_axis = Axis::fit(all().map(|p| p.0), None, opts.integer_x);
    let y_axis = Axis::fit(all().map(|p| p.1), opts.y_bounds, false);
    let (left, right) = (64.0, opts.width - 20.0);
    let (top, bottom) = (36.0, opts.height - 42.0);

    let mut out = open_svg(opts.width, opts.height, &opts.title);
    out.push_str(&title_text(&opts.title));
    let entries: Vec<(&str, &str)> = series.iter().map(|s| (s.name.as_str(), s.color)).collect();
    out.push_str(&legend(&entries, right));
    for tick in y_axis.ticks() {
        let y = y_axis.scale(tick, bottom, top);
        out.push_str(&line(left, y, right, y, "#e2e8f0"));
        out.push_str(&text(
            left - 6.0,
            y + 4.0,
            "end",
            "",
            &y_axis.label(tick, ValueFormat::Count),
        ));
    }
    for tick in x_axis.ticks() {
        let x = x_axis.scale(tick, left, right);
        out.push_str(&line(x, bottom, x, bottom + 4.0, "#64748b"));
        out.push_str(&text(
            x,
            bottom + 16.0,
            "middle",
            "",
            &x_axis.label(tick, ValueFormat::Count),
        ));
    }
    out.push_str(&line(left, bottom, right, bottom, "#64748b"));
    out.push_str(&line(left, top, left, bottom, "#64748b"));
    out.push_str(&text(
        (left + right) / 2.0,
        opts.height - 8.0,
        "middle",
        "",
        &opts.x_label,
    ));
    let mid = (top + bottom) / 2.0;
    out.push_str(&text(
        14.0,
        mid,
        "middle",
        &format!(" transform=\"rotate(-90 14 {mid:.1})\""),
        &opts.y_label,
    ));

    if all().next().is_none() {
        out.push_str(&no_data((left + right) / 2.0, mid));
    }
    for (s, points) in &finite {
        let pixels: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| (x_axis.scale(x, left, right), y_axis.scale(y, bottom, top)))
            .collect();
        if pixels.len() > 1 {
            let path: Vec<String> = pixels
                .iter()
                .enumerate()
                .map(|(i, (x, y))| format!("{}{x:.1},{y:.1}", if i == 0 { "M" } else { "L" }))
                .collect();
            out.push_str(&format!(
                "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\"/>",
                path.join(" "),
                s.color
            ));
        }
        if pixels.len() <= MAX_MARKED_POINTS {
            for (x, y) in &pixels {
                out.push_str(&format!(
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"/>",
                    s.color
                ));
            }
        }
    }
    out.push_str("</svg>");
    out
}

/// A horizontal bar chart: one row per group, one bar per series in each row, all on one
/// value axis that starts at 0.
pub fn bar_chart(groups: &[BarGroup], series: &[BarSeries], opts: &BarOptions) -> String {
    const BAR: f64 = 12.0;
    const BAR_GAP: f64 = 2.0;
    const GROUP_GAP: f64 = 10.0;
    let values = || {
        groups
            .iter()
            .flat_map(|g| g.values.iter().flatten().copied())
            .filter(|v| v.is_finite())
    };
    let bounds = opts
        .x_bounds
        .map_or((0.0, 0.0), |(lo, hi)| (lo.min(0.0), hi.max(0.0)));
    let axis = Axis::fit(values(), Some(bounds), opts.format == ValueFormat::Count);

    let longest = groups
        .iter()
        .map(|g| g.label.chars().count())
        .max()
        .unwrap_or(0);
    let left = (longest as f64 * CHAR_WIDTH + 16.0).clamp(48.0, 380.0);
    let right = opts.width - 56.0;
    let show_legend = opts.legend && !series.is_empty();
    let header = if opts.title.is_empty() && !show_legend {
        8.0
    } else {
        32.0
    };
    let group_height = series.len().max(1) as f64 * (BAR + BAR_GAP) - BAR_GAP + GROUP_GAP;
    let plot_top = header;
    let plot_bottom = plot_top + groups.len().max(1) as f64 * group_height;
    let footer = if opts.x_label.is_empty() { 22.0 } else { 38.0 };
    let height = plot_bottom + footer;

    let mut out = open_svg(opts.width, height, &opts.title);
    if !opts.title.is_empty() {
        out.push_str(&title_text(&opts.title));
    }
    if show_legend {
        let entries: Vec<(&str, &str)> =
            series.iter().map(|s| (s.name.as_str(), s.color)).collect();
        out.push_str(&legend(&entries, right));
    }
    for tick in axis.ticks() {
        let x = axis.scale(tick, left, right);
        out.push_str(&line(x, plot_top, x, plot_bottom, "#e2e8f0"));
        out.push_str(&text(
            x,
            plot_bottom + 14.0,
            "middle",
            "",
            &axis.label(tick, opts.format),
        ));
    }
    let zero = axis.scale(0.0, left, right);
    out.push_str(&line(zero, plot_top, zero, plot_bottom, "#64748b"));
    if !opts.x_label.is_empty() {
        out.push_str(&text(
            (left + right) / 2.0,
            height - 8.0,
            "middle",
            "",
            &opts.x_label,
        ));
    }
    if values().next().is_none() {
        out.push_str(&no_data(
            (left + right) / 2.0,
            (plot_top + plot_bottom) / 2.0,
        ));
    }
    for (row, group) in groups.iter().enumerate() {
        let y0 = plot_top + GROUP_GAP / 2.0 + row as f64 * group_height;
        let bars_height = group_height - GROUP_GAP;
        out.push_str(&text(
            left - 8.0,
            y0 + bars_height / 2.0 + 4.0,
            "end",
            "",
            &group.label,
        ));
        for (i, (value, s)) in group.values.iter().zip(series).enumerate() {
            let Some(v) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let y = y0 + i as f64 * (BAR + BAR_GAP);
            let end = axis.scale(v, left, right);
            out.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR:.0}\" fill=\"{}\"><title>{}</title></rect>",
                zero.min(end),
                (end - zero).abs(),
                s.color,
                escape(&format!("{}: {}", s.name, value_label(v, opts.format)))
            ));
            out.push_str(&text(
                zero.max(end) + 4.0,
                y + BAR - 2.0,
                "start",
                " font-size=\"10\"",
                &value_label(v, opts.format),
            ));
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: Vec<(f64, f64)>) -> Vec<Series> {
        vec![Series {
            name: "loss".into(),
            color: PALETTE[0],
            points,
        }]
    }

    fn options() -> LineOptions {
        LineOptions::new("SFT loss", "step", "loss")
    }

    /// Every number written into the chart's attributes is finite.
    fn assert_finite_numbers(svg: &str) {
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn nice_axes() {
        let axis = Axis::fit([0.13, 2.71].into_iter(), None, false);
        assert_eq!((axis.min, axis.max, axis.step), (0.0, 3.0, 1.0));
        assert_eq!(axis.ticks(), vec![0.0, 1.0, 2.0, 3.0]);
        let axis = Axis::fit([1.0, 30.0].into_iter(), None, true);
        assert_eq!((axis.min, axis.max, axis.step), (0.0, 30.0, 10.0));
        let axis = Axis::fit([0.31, 0.35].into_iter(), Some((0.0, 1.0)), false);
        assert_eq!(axis.label(0.4, ValueFormat::Percent), "40%");
        let axis = Axis::fit([-0.2, 0.2].into_iter(), None, false);
        // -0.2 + 2 × 0.1 is a hair below zero; it must not read "-0.0".
        let labels: Vec<String> = axis
            .ticks()
            .iter()
            .map(|&t| axis.label(t, ValueFormat::Count))
            .collect();
        assert_eq!(labels, ["-0.2", "-0.1", "0.0", "0.1", "0.2"]);
        assert_eq!(axis.label(-0.1, ValueFormat::Count), "-0.1");
        let axis = Axis::fit([0.0, 250_000.0].into_iter(), None, true);
        assert_eq!(axis.label(100_000.0, ValueFormat::Count), "100k");
    }

    #[test]
    fn zero_points_draw_an_empty_chart() {
        let svg = line_chart(&series(vec![]), &options());
        assert_finite_numbers(&svg);
        assert!(svg.contains("no data"));
        assert!(!svg.contains("<path") && !svg.contains("<circle"));
        let svg = line_chart(&[], &options());
        assert_finite_numbers(&svg);
        let svg = bar_chart(
            &[],
            &[],
            &BarOptions {
                title: String::new(),
                x_label: String::new(),
                width: 400.0,
                x_bounds: None,
                format: ValueFormat::Count,
                legend: true,
            },
        );
        assert_finite_numbers(&svg);
        assert!(svg.contains("no data"));
    }

    #[test]
    fn one_point_is_a_visible_dot() {
        let svg = line_chart(&series(vec![(1.0, 0.7)]), &options());
        assert_finite_numbers(&svg);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(!svg.contains("<path"));
        // x = 1 is padded to 0..2, so the dot sits in the middle of the plot.
        let (left, right) = (64.0, CHART_WIDTH - 20.0);
        assert!(
            svg.contains(&format!("cx=\"{:.1}\"", (left + right) / 2.0)),
            "{svg}"
        );
        let svg = line_chart(&series(vec![(3.0, 0.0)]), &options());
        assert_finite_numbers(&svg);
    }

    #[test]
    fn nan_losses_are_skipped() {
        let svg = line_chart(
            &series(vec![
                (1.0, 2.0),
                (2.0, f64::NAN),
                (3.0, 1.0),
                (4.0, f64::INFINITY),
            ]),
            &options(),
        );
        assert_finite_numbers(&svg);
        let path = svg.split("d=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(path.matches(['M', 'L']).count(), 2, "{path}");
        assert_eq!(svg.matches("<circle").count(), 2);
        // The y axis spans the finite losses only: ticks from 1 to 2.
        assert!(
            svg.contains(">2.0</text>") && svg.contains(">1.0</text>"),
            "{svg}"
        );
    }

    #[test]
    fn bars_scale_to_the_axis_and_label_their_values() {
        let groups = vec![
            BarGroup {
                label: "punctuation:no_comma".into(),
                values: vec![Some(0.4), Some(0.5)],
            },
            BarGroup {
                label: "<b>".into(),
                values: vec![None, Some(1.0)],
            },
        ];
        let series = vec![
            BarSeries {
                name: "before".into(),
                color: MUTED,
            },
            BarSeries {
                name: "after".into(),
                color: PALETTE[0],
            },
        ];
        let opts = BarOptions {
            title: "per type".into(),
            x_label: "strict accuracy".into(),
            width: 600.0,
            x_bounds: Some((0.0, 1.0)),
            format: ValueFormat::Percent,
            legend: true,
        };
        let svg = bar_chart(&groups, &series, &opts);
        assert_finite_numbers(&svg);
        assert_eq!(
            svg.matches("<rect x=").count(),
            2 + 3,
            "two swatches, three bars"
        );
        assert!(svg.contains(">40.0%</text>") && svg.contains(">100.0%</text>"));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert_eq!(svg, bar_chart(&groups, &series, &opts), "deterministic");
    }
}

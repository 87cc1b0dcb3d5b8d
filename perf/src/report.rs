//! Side-by-side comparison of run results: a markdown table and SVG plots.

use std::fmt::Write;

use crate::stats::RunResult;

/// The markdown report of `runs`, first run as the baseline for the ratios.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| run | workload | driver | publish msg/s | MB/s | publish p50 / p99 / p99.9 / max (µs) | end-to-end p50 / p99 / p99.9 / max (µs) | missing | errors | broker CPU s | peak RSS MiB | client CPU s |");
    let _ = writeln!(
        out,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let p = &r.publish_latency;
        let e = &r.end_to_end_latency;
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {} / {} / {} / {} | {} / {} / {} / {} | {} | {} | {} | {} | {} |",
            r.label, r.workload.name, r.driver, r.publish_msgs_per_s, r.publish_mb_per_s,
            p.p50_us, p.p99_us, p.p999_us, p.max_us, e.p50_us, e.p99_us, e.p999_us, e.max_us,
            r.missing_messages, r.errors, opt(r.broker_cpu_s), opt(r.broker_peak_rss_mib),
            opt(r.client_cpu_s)
        );
    }
    for r in runs.iter().filter(|r| r.failure.is_some()) {
        let _ = writeln!(
            out,
            "\n`{}` did not complete cleanly: {}",
            r.label,
            r.failure.as_deref().unwrap_or_default()
        );
    }
    let groups = by_label(runs);
    if groups.iter().any(|(_, g)| g.len() > 1) {
        summary(&mut out, &groups);
        return out;
    }
    if let Some((base, rest)) = runs.split_first() {
        if !rest.is_empty() {
            let _ = writeln!(out, "\nRatios against `{}`:\n", base.label);
            let _ = writeln!(out, "| run | throughput | publish p99 | end-to-end p99 |");
            let _ = writeln!(out, "|---|---:|---:|---:|");
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "–".into()
                }
            };
            for r in rest {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    r.label,
                    ratio(r.publish_msgs_per_s, base.publish_msgs_per_s),
                    ratio(
                        r.publish_latency.p99_us as f64,
                        base.publish_latency.p99_us as f64
                    ),
                    ratio(
                        r.end_to_end_latency.p99_us as f64,
                        base.end_to_end_latency.p99_us as f64
                    ),
                );
            }
        }
    }
    out
}

/// Runs grouped by label, in order of first appearance.
fn by_label(runs: &[RunResult]) -> Vec<(String, Vec<&RunResult>)> {
    let mut groups: Vec<(String, Vec<&RunResult>)> = Vec::new();
    for r in runs {
        match groups.iter_mut().find(|(l, _)| *l == r.label) {
            Some((_, g)) => g.push(r),
            None => groups.push((r.label.clone(), vec![r])),
        }
    }
    groups
}

/// The median of `v` (0 for none): the figure repeated runs are summarised by.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// (min, max) of `v`.
pub fn min_max(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Repeated runs (A/B alternation): median and min–max per label, and the ratio of medians
/// against the first label, so that the noise is visible next to the difference.
fn summary(out: &mut String, groups: &[(String, Vec<&RunResult>)]) {
    type Figure = fn(&RunResult) -> f64;
    let figures: [(&str, Figure); 3] = [
        ("publish msg/s", |r| r.publish_msgs_per_s),
        ("publish p99 µs", |r| r.publish_latency.p99_us as f64),
        ("end-to-end p99 µs", |r| r.end_to_end_latency.p99_us as f64),
    ];
    let _ = writeln!(
        out,
        "\nMedian (min–max) over repeats, ratio of medians against `{}`:\n",
        groups[0].0
    );
    let _ = write!(out, "| run | repeats |");
    for (name, _) in &figures {
        let _ = write!(out, " {name} | ratio |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|---:|{}", "---:|---:|".repeat(figures.len()));
    let base: Vec<f64> = figures
        .iter()
        .map(|(_, f)| median(groups[0].1.iter().map(|r| f(r)).collect()))
        .collect();
    for (label, g) in groups {
        let _ = write!(out, "| {label} | {} |", g.len());
        for ((_, f), b) in figures.iter().zip(&base) {
            let values: Vec<f64> = g.iter().map(|r| f(r)).collect();
            let (min, max) = min_max(&values);
            let m = median(values);
            let ratio = if *b > 0.0 {
                format!("{:.2}", m / b)
            } else {
                "–".into()
            };
            let _ = write!(out, " {m:.0} ({min:.0}–{max:.0}) | {ratio} |");
        }
        let _ = writeln!(out);
    }
}

/// The plots of a comparison: (file name, SVG).
pub fn plots(runs: &[RunResult]) -> Vec<(String, String)> {
    let bars = |f: fn(&RunResult) -> f64| {
        runs.iter()
            .map(|r| (r.label.clone(), f(r)))
            .collect::<Vec<_>>()
    };
    vec![
        (
            "throughput.svg".into(),
            bars_svg(
                "Publish throughput",
                "msg/s",
                &bars(|r| r.publish_msgs_per_s),
            ),
        ),
        (
            "publish-latency.svg".into(),
            percentiles_svg("Publish latency", runs, |r| &r.publish_latency),
        ),
        (
            "e2e-latency.svg".into(),
            percentiles_svg("End-to-end latency", runs, |r| &r.end_to_end_latency),
        ),
        ("throughput-over-time.svg".into(), series_svg(runs)),
    ]
}

const COLOURS: [&str; 6] = [
    "#4878a8", "#e07b39", "#59a14f", "#b07aa1", "#edc948", "#9c755f",
];

/// Latency percentiles (p50, p99, p99.9, max) per run, one line per run on a log scale.
pub fn percentiles_svg(
    title: &str,
    runs: &[RunResult],
    of: fn(&RunResult) -> &crate::stats::Percentiles,
) -> String {
    let (w, h, left, top, bottom) = (640.0, 320.0, 70.0, 30.0, 40.0);
    let names = ["p50", "p99", "p99.9", "max"];
    let values: Vec<[f64; 4]> = runs
        .iter()
        .map(|r| {
            let p = of(r);
            [p.p50_us, p.p99_us, p.p999_us, p.max_us].map(|v| (v.max(1)) as f64)
        })
        .collect();
    let hi = values
        .iter()
        .flatten()
        .copied()
        .fold(10.0, f64::max)
        .log10()
        .ceil();
    let lo = values
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(hi)
        .log10()
        .floor()
        .min(hi - 1.0);
    let plot_h = h - top - bottom;
    let y = |v: f64| top + plot_h * (1.0 - (v.log10() - lo) / (hi - lo));
    let x = |i: usize| left + 40.0 + i as f64 * (w - left - 200.0) / 3.0;
    let mut out = svg_start(w, h, title);
    for d in lo as i32..=hi as i32 {
        let v = 10f64.powi(d);
        grid_line(&mut out, left, w - 150.0, y(v), &format!("{} µs", human(v)));
    }
    for (i, n) in names.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}">{n}</text>"#,
            x(i) - 10.0,
            h - 15.0
        );
    }
    for (k, (r, v)) in runs.iter().zip(&values).enumerate() {
        let points = (0..4).map(|i| (x(i), y(v[i])));
        run_line(&mut out, w, k, &r.label, 2.0, points);
    }
    out.push_str("</svg>\n");
    out
}

/// Publish throughput per second of each run, one line per run.
pub fn series_svg(runs: &[RunResult]) -> String {
    let (w, h, left, top, bottom) = (640.0, 320.0, 70.0, 30.0, 40.0);
    let longest = runs
        .iter()
        .map(|r| r.publish_msgs_per_s_series.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let max = runs
        .iter()
        .flat_map(|r| r.publish_msgs_per_s_series.iter().copied())
        .fold(1.0, f64::max);
    let plot_h = h - top - bottom;
    let x = |i: usize| left + i as f64 * (w - left - 150.0) / (longest - 1) as f64;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut out = svg_start(w, h, "Publish throughput over time (msg/s)");
    for q in 0..=4 {
        let v = max * q as f64 / 4.0;
        grid_line(&mut out, left, w - 150.0, y(v), &human(v));
    }
    let _ = write!(out, r#"<text x="{left}" y="{}">seconds</text>"#, h - 15.0);
    for (k, r) in runs.iter().enumerate() {
        let series = &r.publish_msgs_per_s_series;
        let points = series.iter().enumerate().map(|(i, v)| (x(i), y(*v)));
        run_line(&mut out, w, k, &r.label, 1.5, points);
    }
    out.push_str("</svg>\n");
    out
}

/// A horizontal grid line from `left` to `right` at `y`, labelled at the left edge.
fn grid_line(out: &mut String, left: f64, right: f64, y: f64, label: &str) {
    let _ = write!(
        out,
        r##"<line x1="{left}" x2="{right}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{}</text>"##,
        y + 4.0,
        escape(label)
    );
}

/// Run `k`'s line through `points`, in its colour, with its legend entry.
fn run_line(
    out: &mut String,
    w: f64,
    k: usize,
    label: &str,
    width: f64,
    points: impl Iterator<Item = (f64, f64)>,
) {
    let colour = COLOURS[k % COLOURS.len()];
    let points: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{}"/>"#,
        points.join(" ")
    );
    legend(out, w, k, colour, label);
}

fn svg_start(w: f64, h: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="10" y="18" font-weight="bold">{}</text>"#,
        escape(title)
    )
}

fn legend(out: &mut String, w: f64, k: usize, colour: &str, label: &str) {
    let y = 40.0 + k as f64 * 18.0;
    let _ = write!(
        out,
        r#"<rect x="{}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
        w - 140.0,
        y - 10.0,
        w - 122.0,
        y,
        escape(label)
    );
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A bar chart of one figure per run, as SVG.
pub fn bars_svg(title: &str, unit: &str, values: &[(String, f64)]) -> String {
    let (w, bar_h, gap, left) = (640.0, 24.0, 10.0, 160.0);
    let h = 40.0 + values.len() as f64 * (bar_h + gap);
    let max = values.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<text x="10" y="20" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, (label, v)) in values.iter().enumerate() {
        let y = 32.0 + i as f64 * (bar_h + gap);
        let len = (w - left - 90.0) * v / max;
        let _ = write!(
            out,
            r#"<text x="10" y="{}">{}</text>"#,
            y + 16.0,
            escape(label)
        );
        let _ = write!(
            out,
            r##"<rect x="{left}" y="{y}" width="{len:.1}" height="{bar_h}" fill="#4878a8"/>"##
        );
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}">{v:.1} {}</text>"#,
            left + len + 6.0,
            y + 16.0,
            escape(unit)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn run(label: &str, rate: f64, p99: u64) -> RunResult {
        RunResult {
            label: label.into(),
            publish_msgs_per_s: rate,
            publish_latency: Percentiles {
                count: 1,
                p50_us: 1,
                p99_us: p99,
                p999_us: p99,
                max_us: p99,
            },
            ..RunResult::default()
        }
    }

    #[test]
    fn repeated_runs_are_summarised_with_their_spread() {
        let runs = [
            run("A", 1000.0, 200),
            run("B", 400.0, 300),
            run("A", 1200.0, 100),
            run("B", 600.0, 500),
        ];
        let text = markdown(&runs);
        assert!(
            text.contains("| A | 2 | 1100 (1000–1200) | 1.00 |"),
            "{text}"
        );
        assert!(
            text.contains("| B | 2 | 500 (400–600) | 0.45 | 400 (300–500) | 2.67 |"),
            "{text}"
        );
        let plots = plots(&runs);
        assert_eq!(plots.len(), 4);
        for (name, svg) in &plots {
            assert!(
                svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
                "{name}"
            );
        }
        let mut failed = run("C", 1.0, 1);
        failed.failure = Some("3 messages missing".into());
        assert!(markdown(&[failed]).contains("`C` did not complete cleanly: 3 messages missing"));
    }

    #[test]
    fn the_plots_place_values_where_they_belong() {
        let mut a = run("a", 10.0, 1000);
        a.publish_msgs_per_s_series = vec![0.0, 50.0, 100.0];
        let svg = series_svg(&[a.clone()]);
        // 3 points from x=70 to x=490; 100 msg/s (the maximum) at the top of the plot (y=30),
        // 0 at its bottom (y=280).
        assert!(
            svg.contains(r#"points="70.0,280.0 280.0,155.0 490.0,30.0""#),
            "{svg}"
        );
        let svg = percentiles_svg("p", &[a], |r| &r.publish_latency);
        // p50 = 1 µs at the bottom (10^0), p99 = 1000 µs at the top (10^3).
        assert!(svg.contains("110.0,280.0 "), "{svg}");
        assert!(svg.contains("<polyline") && svg.contains("1k µs"));
    }

    #[test]
    fn the_report_shows_every_run_and_ratios_against_the_first() {
        let text = markdown(&[run("ringtail", 1000.0, 200), run("peer", 500.0, 400)]);
        assert!(text.contains("| ringtail |") && text.contains("| peer |"));
        assert!(text.contains("| peer | 0.50 | 2.00 |"), "{text}");
        let svg = bars_svg("p99 <µs>", "µs", &[("a&b".into(), 2.0), ("c".into(), 1.0)]);
        assert!(svg.starts_with("<svg") && svg.contains("a&amp;b") && svg.contains("&lt;µs&gt;"));
    }
}

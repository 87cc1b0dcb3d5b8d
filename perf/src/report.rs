//! Side-by-side comparison of run results: a markdown table and SVG plots.

use std::fmt::Write;

use crate::stats::RunResult;

/// The markdown report of `runs`, first run as the baseline for the ratios.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| run | workload | driver | publish msg/s | MB/s | publish p50 / p99 / p99.9 / max (µs) | end-to-end p50 / p99 / p99.9 / max (µs) | missing | errors | broker CPU s | peak RSS MiB |");
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let p = &r.publish_latency;
        let e = &r.end_to_end_latency;
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {} / {} / {} / {} | {} / {} / {} / {} | {} | {} | {} | {} |",
            r.label, r.workload.name, r.driver, r.publish_msgs_per_s, r.publish_mb_per_s,
            p.p50_us, p.p99_us, p.p999_us, p.max_us, e.p50_us, e.p99_us, e.p999_us, e.max_us,
            r.missing_messages, r.errors, opt(r.broker_cpu_s), opt(r.broker_peak_rss_mib)
        );
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
    fn the_report_shows_every_run_and_ratios_against_the_first() {
        let text = markdown(&[run("ringtail", 1000.0, 200), run("peer", 500.0, 400)]);
        assert!(text.contains("| ringtail |") && text.contains("| peer |"));
        assert!(text.contains("| peer | 0.50 | 2.00 |"), "{text}");
        let svg = bars_svg("p99 <µs>", "µs", &[("a&b".into(), 2.0), ("c".into(), 1.0)]);
        assert!(svg.starts_with("<svg") && svg.contains("a&amp;b") && svg.contains("&lt;µs&gt;"));
    }
}

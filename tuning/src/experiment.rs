//! `ringtail tune experiment`: sweeps one broker parameter over a few values, runs a standard
//! perf workload against a fresh broker for each, alternating the settings run by run (A/B/C,
//! A/B/C, ...) so that a noisy machine shows as spread rather than as a difference, and says
//! which setting won, by how much, and whether that margin is beyond the noise.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringtail_perf::report::{median, min_max};
use ringtail_perf::run::{run, Driver, RunOptions};
use ringtail_perf::stats::RunResult;
use ringtail_perf::workload::Workload;

pub struct Experiment {
    /// The `ringtail` binary.
    pub broker: PathBuf,
    /// A `ringtail serve` flag without its dashes, e.g. `wal-sync`.
    pub parameter: String,
    /// Its values; the first is the baseline.
    pub values: Vec<String>,
    /// More `ringtail serve` arguments for every broker.
    pub broker_args: Vec<String>,
    pub workload: Workload,
    pub driver: Driver,
    pub duration: Duration,
    pub repeats: usize,
    /// Refuse to start an experiment estimated to take longer.
    pub max_time: Duration,
    pub out: PathBuf,
}

/// Per run besides the measured seconds: broker start, consumers joining, drain.
const RUN_OVERHEAD: Duration = Duration::from_secs(4);

/// One setting's results.
pub struct Point {
    pub value: String,
    pub runs: Vec<RunResult>,
}

impl Experiment {
    pub fn estimate(&self) -> Duration {
        (self.duration + RUN_OVERHEAD) * (self.values.len() * self.repeats) as u32
    }

    pub async fn run(&self) -> anyhow::Result<Vec<Point>> {
        anyhow::ensure!(
            self.values.len() >= 2,
            "name at least two values (the first is the baseline)"
        );
        anyhow::ensure!(self.repeats >= 1, "repeats must be at least 1");
        anyhow::ensure!(
            self.estimate() <= self.max_time,
            "estimated {:.0} s, over the limit of {:.0} s: fewer values, repeats or seconds, or raise --max-minutes",
            self.estimate().as_secs_f64(),
            self.max_time.as_secs_f64()
        );
        std::fs::create_dir_all(&self.out)?;
        let mut points: Vec<Point> = self
            .values
            .iter()
            .map(|v| Point {
                value: v.clone(),
                runs: Vec::new(),
            })
            .collect();
        let total = self.values.len() * self.repeats;
        let started = Instant::now();
        let mut n = 0;
        for r in 1..=self.repeats {
            for p in points.iter_mut() {
                n += 1;
                eprintln!(
                    "== [{n}/{total}, {:.0} s] --{}={} run {r}",
                    started.elapsed().as_secs_f64(),
                    self.parameter,
                    p.value
                );
                let result = self
                    .one(&p.value)
                    .await
                    .with_context(|| format!("--{}={} run {r}", self.parameter, p.value))?;
                let file = self.out.join(format!(
                    "{}-{}-{r}.json",
                    self.parameter,
                    sanitize(&p.value)
                ));
                std::fs::write(file, serde_json::to_vec_pretty(&result)?)?;
                p.runs.push(result);
            }
        }
        Ok(points)
    }

    async fn one(&self, value: &str) -> anyhow::Result<RunResult> {
        let dir = tempfile::tempdir()?;
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "none".into(),
            "--group-initial-rebalance-delay-ms".into(),
            "0".into(),
            "--data-dir".into(),
            dir.path().display().to_string(),
        ];
        args.extend(self.broker_args.iter().cloned());
        args.push(format!("--{}", self.parameter));
        args.push(value.to_string());
        let broker = Broker::start(&self.broker, &args)?;
        let opts = RunOptions {
            duration: Some(self.duration),
            broker_pid: Some(broker.child.id()),
            label: format!("{}={value}", self.parameter),
            ..RunOptions::new(&broker.addr, self.driver)
        };
        let result = run(&self.workload, &opts).await;
        broker.stop();
        result
    }
}

fn sanitize(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    fn start(binary: &PathBuf, args: &[String]) -> anyhow::Result<Broker> {
        let mut child = Command::new(binary)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut last = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("ringtail listening on ").nth(1) {
                    let _ = tx.send(Ok(rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()));
                }
                last.push(line);
                if last.len() > 20 {
                    last.remove(0);
                }
            }
            let _ = tx.send(Err(last.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(addr)) => Ok(Broker { child, addr }),
            Ok(Err(log)) => {
                let _ = child.wait();
                anyhow::bail!("the broker did not start:\n{log}")
            }
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("the broker did not start within 60 s")
            }
        }
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The figure an experiment optimises: publish p99 at a fixed rate (lower is better),
/// throughput when the workload runs as fast as possible (higher is better).
fn figure(w: &Workload) -> (&'static str, fn(&RunResult) -> f64, bool) {
    if w.rate > 0 {
        ("publish p99 µs", |r| r.publish_latency.p99_us as f64, false)
    } else {
        ("publish msg/s", |r| r.publish_msgs_per_s, true)
    }
}

/// The recommendation: the best setting's median against the baseline's, and whether their
/// ranges over the repeats overlap (then the difference is within the noise).
pub fn recommend(parameter: &str, w: &Workload, points: &[Point]) -> String {
    let (name, f, higher_better) = figure(w);
    let stats: Vec<(f64, (f64, f64))> = points
        .iter()
        .map(|p| {
            let v: Vec<f64> = p.runs.iter().map(f).collect();
            (median(v.clone()), min_max(&v))
        })
        .collect();
    let better = |a: f64, b: f64| if higher_better { a > b } else { a < b };
    let best = (0..points.len()).fold(0, |best, i| {
        if better(stats[i].0, stats[best].0) {
            i
        } else {
            best
        }
    });
    let (base, (bmin, bmax)) = stats[0];
    let (m, (min, max)) = stats[best];
    if best == 0 {
        return format!(
            "Keep --{parameter}={}: no other value beat it on {name} (median {base:.0}, range {bmin:.0}–{bmax:.0}).",
            points[0].value
        );
    }
    let margin = if base != 0.0 {
        (m - base) / base * 100.0
    } else {
        0.0
    };
    let beyond = if higher_better {
        min > bmax
    } else {
        max < bmin
    };
    format!(
        "{} --{parameter}={}: {name} median {m:.0} against {base:.0} for --{parameter}={} ({margin:+.1}%); ranges over the repeats {min:.0}–{max:.0} and {bmin:.0}–{bmax:.0} {}.",
        if beyond { "Use" } else { "Consider" },
        points[best].value,
        points[0].value,
        if beyond { "do not overlap: beyond the noise" } else { "overlap: within the noise, measure longer before changing" }
    )
}

/// The table: one row per setting, median (min–max) of throughput, publish and end-to-end p99.
pub fn table(parameter: &str, points: &[Point]) -> String {
    let mut out = format!(
        "| --{parameter} | runs | publish msg/s | publish p99 µs | end-to-end p99 µs | broker CPU s | errors |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for p in points {
        // Median (min–max) with `d` decimals.
        let cell_with = |f: fn(&RunResult) -> f64, d: usize| {
            let v: Vec<f64> = p.runs.iter().map(f).collect();
            let (lo, hi) = min_max(&v);
            format!("{:.d$} ({lo:.d$}–{hi:.d$})", median(v))
        };
        let cell = |f: fn(&RunResult) -> f64| cell_with(f, 0);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            p.value,
            p.runs.len(),
            cell(|r| r.publish_msgs_per_s),
            cell(|r| r.publish_latency.p99_us as f64),
            cell(|r| r.end_to_end_latency.p99_us as f64),
            cell_with(|r| r.broker_cpu_s.unwrap_or(0.0), 1),
            p.runs
                .iter()
                .map(|r| r.errors + r.missing_messages)
                .sum::<u64>()
        ));
    }
    out
}

/// Throughput and publish p99 per setting as two bar groups, medians with min–max whiskers.
pub fn svg(parameter: &str, points: &[Point]) -> String {
    let (w, h) = (720.0, 300.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="10" y="18" font-weight="bold">--{parameter}: throughput (left) and publish p99 (right), median with min–max</text>"#
    );
    type F = fn(&RunResult) -> f64;
    let panels: [(&str, F, f64); 2] = [
        ("msg/s", |r| r.publish_msgs_per_s, 20.0),
        ("p99 µs", |r| r.publish_latency.p99_us as f64, 370.0),
    ];
    for (unit, f, x0) in panels {
        let all: Vec<f64> = points.iter().flat_map(|p| p.runs.iter().map(f)).collect();
        let top = all.iter().copied().fold(1.0, f64::max);
        let (base_y, plot_h) = (260.0, 200.0);
        let slot = 320.0 / points.len().max(1) as f64;
        for (i, p) in points.iter().enumerate() {
            let v: Vec<f64> = p.runs.iter().map(f).collect();
            let (lo, hi) = min_max(&v);
            let m = median(v);
            let x = x0 + i as f64 * slot + slot * 0.2;
            let bw = slot * 0.6;
            let y = |v: f64| base_y - plot_h * v / top;
            out.push_str(&format!(
                r##"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="#4878a8"/><line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="#222"/><text x="{x:.1}" y="{}">{}</text><text x="{x:.1}" y="{:.1}">{m:.0} {unit}</text>"##,
                y(m),
                plot_h * m / top,
                y(lo),
                y(hi),
                base_y + 16.0,
                p.value.replace('&', "&amp;").replace('<', "&lt;"),
                y(hi) - 4.0,
                cx = x + bw / 2.0
            ));
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringtail_perf::stats::Percentiles;

    fn run(rate: f64, p99: u64) -> RunResult {
        RunResult {
            publish_msgs_per_s: rate,
            publish_latency: Percentiles {
                p99_us: p99,
                ..Percentiles::default()
            },
            ..RunResult::default()
        }
    }

    fn point(v: &str, runs: Vec<RunResult>) -> Point {
        Point {
            value: v.into(),
            runs,
        }
    }

    #[test]
    fn the_recommendation_weighs_the_margin_against_the_noise() {
        let mut w = Workload::load("fixed-rate-1000-1kb").unwrap();
        // Lower p99 wins at a fixed rate; ranges 900–1100 and 400–500 do not overlap.
        let points = vec![
            point("dsync", vec![run(1000.0, 900), run(1000.0, 1100)]),
            point("fdatasync", vec![run(1000.0, 400), run(1000.0, 500)]),
        ];
        let r = recommend("wal-sync", &w, &points);
        assert!(
            r.starts_with("Use --wal-sync=fdatasync")
                && r.contains("-55.0%")
                && r.contains("beyond the noise"),
            "{r}"
        );
        // Overlapping ranges: only "consider".
        let points = vec![
            point("a", vec![run(1.0, 900), run(1.0, 1100)]),
            point("b", vec![run(1.0, 800), run(1.0, 1000)]),
        ];
        assert!(recommend("x", &w, &points).starts_with("Consider --x=b"));
        // As fast as possible: throughput decides; the baseline wins here.
        w.rate = 0;
        let points = vec![
            point("a", vec![run(2000.0, 1), run(2100.0, 1)]),
            point("b", vec![run(1500.0, 1), run(1600.0, 1)]),
        ];
        assert!(recommend("x", &w, &points).starts_with("Keep --x=a"));
        let t = table("x", &points);
        assert!(t.contains("| a | 2 | 2050 (2000–2100) |"), "{t}");
        let s = svg("x", &points);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n") && s.contains("2050 msg/s"));
    }
}

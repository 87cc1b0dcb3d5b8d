//! The Prometheus text format (version 0.0.4): a family's HELP and TYPE lines, then its series
//! together; a histogram series as its cumulative buckets, sum and count. Knows no broker.

use std::fmt::Write;

use ringtail_shards::stats::HistogramSnapshot;

/// A metric family's name, type and help text.
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

pub const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: "counter",
        help,
    }
}

pub const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: "gauge",
        help,
    }
}

pub const fn histogram(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: "histogram",
        help,
    }
}

/// What one series holds: a value, or a histogram.
pub trait Sample {
    const HISTOGRAM: bool = false;
    /// Writes the series' line(s); `labels` without braces, possibly empty.
    fn write(&self, out: &mut String, name: &str, labels: &str);
}

impl Sample for u64 {
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{{{labels}}} {self}");
    }
}

impl Sample for i64 {
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{{{labels}}} {self}");
    }
}

impl Sample for HistogramSnapshot {
    const HISTOGRAM: bool = true;
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in &self.buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let count = self.count;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The exposition being written.
#[derive(Default)]
pub struct Out(String);

impl Out {
    /// A family: its HELP and TYPE lines, then its series, (labels, sample), in order.
    pub fn family<S: Sample>(&mut self, f: &Family, series: impl IntoIterator<Item = (String, S)>) {
        debug_assert_eq!(f.kind == "histogram", S::HISTOGRAM, "{}", f.name);
        let (name, kind, help) = (f.name, f.kind, f.help);
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, sample) in series {
            sample.write(&mut self.0, name, &labels);
        }
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_its_help_and_type_then_its_series() {
        let mut o = Out::default();
        let f = counter("c_total", "Things.");
        o.family(&f, [("a=\"1\"".to_string(), 2u64), (String::new(), 3)]);
        let h = HistogramSnapshot {
            buckets: vec![(0.5, 1), (1.0, 2)],
            sum: 1.25,
            count: 3,
        };
        o.family(&histogram("h_seconds", "Time."), [("a=\"1\"".into(), h)]);
        assert_eq!(
            o.finish(),
            "# HELP c_total Things.\n# TYPE c_total counter\nc_total{a=\"1\"} 2\nc_total{} 3\n\
             # HELP h_seconds Time.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{a=\"1\",le=\"0.5\"} 1\nh_seconds_bucket{a=\"1\",le=\"1\"} 2\n\
             h_seconds_bucket{a=\"1\",le=\"+Inf\"} 3\nh_seconds_sum{a=\"1\"} 1.25\n\
             h_seconds_count{a=\"1\"} 3\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

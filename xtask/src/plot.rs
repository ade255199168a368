//! SVG plots for `cargo xtask bench`: for every group whose benchmarks take a size as their
//! parameter (`1MiB`, `1000`, `10k`), the median time of each benchmark against that size, on
//! log-log axes, so that a cost that grows with size (or stays flat) shows at a glance. Plain
//! SVG text, no dependency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::Result;
use crate::bench::{Measured, format_ns};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The size a parameter names: a number with an optional unit (`k`, `M`, `KiB`, `MiB`, `GiB`,
/// `B`), e.g. `64KiB` is 65536; `None` for any other text.
pub(crate) fn quantity(parameter: &str) -> Option<f64> {
    let digits = parameter
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(parameter.len());
    let number: f64 = parameter[..digits].parse().ok()?;
    let scale = match &parameter[digits..] {
        "" | "B" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        _ => return None,
    };
    (number > 0.0).then_some(number * scale)
}

/// One line of a plot: a benchmark function and its (size, median, parameter text) points.
type Series<'a> = (&'a str, Vec<(f64, f64, &'a str)>);

/// The series of one group that can be plotted: functions with at least two sized points.
/// A group is plotted when one of them has at least three.
fn series_of<'a>(members: &[&'a Measured]) -> Vec<Series<'a>> {
    let mut by_function: BTreeMap<&str, Vec<(f64, f64, &str)>> = BTreeMap::new();
    for m in members {
        if let Some(x) = quantity(&m.parameter) {
            by_function
                .entry(&m.function)
                .or_default()
                .push((x, m.median_ns, &m.parameter));
        }
    }
    let mut series: Vec<Series<'a>> = by_function
        .into_iter()
        .filter(|(_, points)| points.len() >= 2)
        .map(|(f, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (f, points)
        })
        .collect();
    if !series.iter().any(|(_, p)| p.len() >= 3) {
        series.clear();
    }
    series
}

/// The file name of a group's plot.
fn file_name(group: &str) -> String {
    let safe: String = group
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{safe}.svg")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws one group's plot.
pub(crate) fn svg(group: &str, series: &[Series<'_>]) -> String {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_min, mut x_max) = (f64::MAX, f64::MIN);
    let (mut y_min, mut y_max) = (f64::MAX, f64::MIN);
    for &(x, y, _) in points() {
        x_min = x_min.min(x.log10());
        x_max = x_max.max(x.log10());
        y_min = y_min.min(y.max(1e-3).log10());
        y_max = y_max.max(y.max(1e-3).log10());
    }
    // Whole decades on the time axis, a margin on the size axis.
    let (y_lo, y_hi) = (y_min.floor(), y_max.ceil().max(y_min.floor() + 1.0));
    let x_pad = ((x_max - x_min) * 0.05).max(0.1);
    let (x_lo, x_hi) = (x_min - x_pad, x_max + x_pad);
    let px = |x: f64| LEFT + (x.log10() - x_lo) / (x_hi - x_lo) * (WIDTH - LEFT - RIGHT);
    let py = |y: f64| {
        HEIGHT - BOTTOM - (y.max(1e-3).log10() - y_lo) / (y_hi - y_lo) * (HEIGHT - TOP - BOTTOM)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="14">{} (median time, log-log)</text>"#,
        WIDTH / 2.0,
        escape(group)
    );
    // Axes, decade grid lines on time, a tick per measured size.
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    let _ = writeln!(
        out,
        r#"<path d="M{x0} {y1}V{y0}H{x1}" fill="none" stroke="black"/>"#
    );
    let mut decade = y_lo;
    while decade <= y_hi {
        let y = py(10f64.powf(decade));
        let _ = writeln!(
            out,
            r##"<path d="M{x0} {y:.1}H{x1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            format_ns(10f64.powf(decade))
        );
        decade += 1.0;
    }
    let mut ticks: Vec<(f64, &str)> = points().map(|&(x, _, label)| (x, label)).collect();
    ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
    ticks.dedup_by(|a, b| a.0 == b.0);
    for (x, label) in ticks {
        let _ = writeln!(
            out,
            r#"<path d="M{:.1} {y0}v5" stroke="black"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            px(x),
            y0 + 18.0,
            escape(label)
        );
    }
    for (i, (function, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y, _)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(x, y, _) in points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            ly - 4.0,
            LEFT + 28.0,
            ly,
            escape(function)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Writes a plot per plottable group into `dir` (removing plots of groups no longer plotted)
/// and returns group -> file name.
pub(crate) fn write_all(results: &[Measured], dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut groups: BTreeMap<&str, Vec<&Measured>> = BTreeMap::new();
    for m in results {
        groups.entry(&m.group).or_default().push(m);
    }
    let mut written = BTreeMap::new();
    for (group, members) in groups {
        let series = series_of(&members);
        if series.is_empty() {
            continue;
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let file = file_name(group);
        let path = dir.join(&file);
        std::fs::write(&path, svg(group, &series))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.insert(group.to_owned(), file);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".svg") && !written.values().any(|f| *f == name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(quantity("64KiB"), Some(65536.0));
        assert_eq!(quantity("1GiB"), Some(1073741824.0));
        assert_eq!(quantity("1000"), Some(1000.0));
        assert_eq!(quantity("10k"), Some(10000.0));
        assert_eq!(quantity("1M"), Some(1e6));
        assert_eq!(quantity("increment"), None);
        assert_eq!(quantity("3 pages"), None);
        assert_eq!(quantity(""), None);
        assert_eq!(quantity("0"), None);
    }

    #[test]
    fn only_groups_with_a_sized_series_of_three_are_plotted() {
        let m = |g: &str, f: &str, p: &str, ns: f64| Measured {
            group: g.into(),
            function: f.into(),
            parameter: p.into(),
            median_ns: ns,
            measured_at: SystemTime::UNIX_EPOCH,
        };
        let all = vec![
            m("open", "open_map", "1MiB", 900.0),
            m("open", "open_map", "64MiB", 1000.0),
            m("open", "open_map", "1GiB", 1200.0),
            m("open", "baseline_mmap", "1MiB", 500.0),
            m("open", "baseline_mmap", "1GiB", 600.0),
            m("pair", "a", "1", 1.0),
            m("pair", "a", "2", 2.0),
            m("words", "a", "x", 1.0),
        ];
        let dir = tempfile_dir();
        let written = write_all(&all, &dir).expect("plots");
        assert_eq!(written.keys().collect::<Vec<_>>(), ["open"]);
        let text = std::fs::read_to_string(dir.join(&written["open"])).expect("svg");
        assert!(text.starts_with("<svg"), "{text}");
        assert_eq!(text.matches("<polyline").count(), 2, "{text}");
        assert_eq!(text.matches("<circle").count(), 5, "{text}");
        assert!(
            text.contains(">64MiB<") && text.contains(">open_map<"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}

//! A hand-written SVG percentile plot (the HdrHistogram plotter's layout): x = percentile on a
//! 1/(1-p) log scale from 0% to 99.999%, y = latency in ms, one line per histogram.

use std::fmt::Write as _;

const WIDTH_PX: f64 = 900.0;
const HEIGHT_PX: f64 = 500.0;
const MARGIN_LEFT_PX: f64 = 70.0;
const MARGIN_RIGHT_PX: f64 = 180.0;
const MARGIN_TOP_PX: f64 = 40.0;
const MARGIN_BOTTOM_PX: f64 = 50.0;
/// Rightmost decade on the x axis: 10^5 = 99.999%.
const X_DECADES: f64 = 5.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One named series of (percentile in 0..=1, value in ms).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

fn x_of(p: f64) -> f64 {
    let decades = (1.0 / (1.0 - p.min(0.999_999_9))).log10().min(X_DECADES);
    MARGIN_LEFT_PX + decades / X_DECADES * (WIDTH_PX - MARGIN_LEFT_PX - MARGIN_RIGHT_PX)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn percentile_plot(title: &str, series: &[Series<'_>]) -> String {
    let plot_h = HEIGHT_PX - MARGIN_TOP_PX - MARGIN_BOTTOM_PX;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.05;
    let y_of = |v: f64| MARGIN_TOP_PX + plot_h * (1.0 - v / y_max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15">{}</text>"#,
        MARGIN_LEFT_PX,
        escape(title)
    );
    let x_end = WIDTH_PX - MARGIN_RIGHT_PX;
    let y_end = HEIGHT_PX - MARGIN_BOTTOM_PX;
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = MARGIN_LEFT_PX + i as f64 / X_DECADES * (x_end - MARGIN_LEFT_PX);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP_PX}" x2="{x:.1}" y2="{y_end}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            y_end + 16.0
        );
    }
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            out,
            r##"<line x1="{MARGIN_LEFT_PX}" y1="{y:.1}" x2="{x_end}" y2="{y:.1}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.2}</text>"#,
            MARGIN_LEFT_PX - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (MARGIN_LEFT_PX + x_end) / 2.0,
        HEIGHT_PX - 12.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (ms)</text>"#,
        MARGIN_TOP_PX + plot_h / 2.0,
        MARGIN_TOP_PX + plot_h / 2.0
    );
    let _ = writeln!(
        out,
        r#"<rect x="{MARGIN_LEFT_PX}" y="{MARGIN_TOP_PX}" width="{:.1}" height="{plot_h:.1}" fill="none" stroke="black"/>"#,
        x_end - MARGIN_LEFT_PX
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(p, v)| format!("{:.1},{:.1}", x_of(p), y_of(v)))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = MARGIN_TOP_PX + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/>"#,
            x_end + 10.0,
            x_end + 30.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x_end + 36.0,
            ly + 4.0,
            escape(s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_svg_with_one_line_per_series() {
        let svg = percentile_plot(
            "t<1>",
            &[Series {
                name: "a",
                points: vec![(0.0, 1.0), (0.99, 3.0), (1.0, 4.0)],
            }],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("t&lt;1&gt;"));
    }
}

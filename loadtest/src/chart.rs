//! A hand-written SVG line chart (no plotting crate): panels of lines over linear or log axes.

use std::fmt::Write;

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Vertical markers: (x, label, color).
    pub marks: Vec<(f64, String, &'static str)>,
}

const W: f64 = 760.0;
const H: f64 = 360.0;
const ML: f64 = 70.0;
const MR: f64 = 190.0;
const MT: f64 = 36.0;
const MB: f64 = 48.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An axis: maps data to [0, 1] and proposes tick values.
#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool) -> Self {
        let v: Vec<f64> = values.filter(|x| x.is_finite() && (!log || *x > 0.0)).collect();
        let (mut lo, mut hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        if !lo.is_finite() {
            (lo, hi) = (1.0, 10.0);
        }
        if log {
            lo = 10f64.powf(lo.log10().floor());
            hi = 10f64.powf(hi.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
        } else {
            lo = lo.min(0.0);
            hi = if hi <= lo { lo + 1.0 } else { hi * 1.05 };
        }
        Self { lo, hi, log }
    }

    fn frac(&self, x: f64) -> f64 {
        if self.log {
            (x.max(self.lo * 1e-3).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (x - self.lo) / (self.hi - self.lo)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut d = self.lo;
            while d <= self.hi * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    if d * m <= self.hi * 1.0001 {
                        t.push(d * m);
                    }
                }
                d *= 10.0;
            }
            t
        } else {
            let raw = (self.hi - self.lo) / 5.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(raw);
            let mut t = Vec::new();
            let mut x = (self.lo / step).ceil() * step;
            while x <= self.hi {
                t.push(x);
                x += step;
            }
            t
        }
    }
}

/// A number for an axis label: 1.5k, 20k, 0.25, 3.
pub fn short(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{}M", trim_num(x / 1e6))
    } else if x.abs() >= 1e3 {
        format!("{}k", trim_num(x / 1e3))
    } else {
        trim_num(x)
    }
}

fn trim_num(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn panel(out: &mut String, p: &Panel, y0: f64) {
    let xa = Axis::new(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0)), p.log_x);
    let ya = Axis::new(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)), p.log_y);
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |x: f64| ML + xa.frac(x).clamp(0.0, 1.0) * pw;
    let py = |y: f64| y0 + MT + (1.0 - ya.frac(y).clamp(0.0, 1.0)) * ph;
    let _ =
        writeln!(out, r#"<text x="{ML}" y="{}" font-size="15" font-weight="bold">{}</text>"#, y0 + 22.0, esc(&p.title));
    let _ = writeln!(out, r##"<rect x="{ML}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##, y0 + MT);
    for t in xa.ticks() {
        let x = px(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            y0 + MT,
            y0 + MT + ph,
            y0 + MT + ph + 15.0,
            short(t)
        );
    }
    for t in ya.ticks() {
        let y = py(t);
        let _ = writeln!(
            out,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            ML + pw,
            ML - 5.0,
            y + 4.0,
            short(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        ML + pw / 2.0,
        y0 + H - 10.0,
        esc(&p.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        y0 + MT + ph / 2.0,
        y0 + MT + ph / 2.0,
        esc(&p.y_label)
    );
    for (x, label, color) in &p.marks {
        let xx = px(*x);
        let _ = writeln!(
            out,
            r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{color}" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
            y0 + MT,
            y0 + MT + ph,
            xx - 3.0,
            y0 + MT + ph - 4.0,
            xx - 3.0,
            y0 + MT + ph - 4.0,
            esc(label)
        );
    }
    for (i, s) in p.series.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if s.dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            s.color
        );
        for &(x, y) in &pts {
            let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#, px(x), py(y), s.color);
        }
        let ly = y0 + MT + 10.0 + i as f64 * 18.0;
        let lx = ML + pw + 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            lx + 24.0,
            s.color,
            lx + 30.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
}

/// The whole document, panels stacked vertically.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let total_h = 40.0 + H * panels.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" viewBox="0 0 {W} {total_h}" font-family="sans-serif">"#
    );
    out.push('\n');
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="10" y="24" font-size="16">{}</text>"#, esc(title));
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, p, 40.0 + H * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_well_formed_svg() {
        let p = Panel {
            title: "latency <vs> rate".into(),
            x_label: "offered/s".into(),
            y_label: "ms".into(),
            log_x: true,
            log_y: true,
            series: vec![Series {
                name: "a".into(),
                color: "red",
                dashed: false,
                points: vec![(100.0, 1.0), (1000.0, 5.0)],
            }],
            marks: vec![(800.0, "knee".into(), "red")],
        };
        let s = render("t & t", &[p]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("latency &lt;vs&gt; rate") && s.contains("t &amp; t"));
        assert!(s.contains("<polyline"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        // An empty panel still renders (no data yet).
        let e = Panel { series: vec![], marks: vec![], ..Panel { log_y: false, ..render_dummy() } };
        assert!(!render("x", &[e]).contains("NaN"));
    }

    fn render_dummy() -> Panel {
        Panel {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: true,
            log_y: true,
            series: vec![],
            marks: vec![],
        }
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(20000.0), "20k");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(3.0), "3");
        assert_eq!(short(2_000_000.0), "2M");
    }
}

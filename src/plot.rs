//! Scatter plots with a Pareto front per series, as PNG and SVG (plotters). The font (DejaVu
//! Sans) is embedded in the binary, so no system font is needed.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// One series: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What a plot shows.
pub struct PlotSpec<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// The front joins points not dominated by another of the series: larger x and smaller y
    /// are better.
    pub series: &'a [Series],
}

/// Registered under the generic name, so that SVG viewers (which do not get the embedded font)
/// fall back to their own sans-serif.
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).ok();
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).ok();
    });
}

/// Points of `pts` on the front (max x, min y), sorted by x.
pub fn pareto_front(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = pts.to_vec();
    // Highest x first; for equal x the lowest y.
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.total_cmp(&b.1)));
    let mut front: Vec<(f64, f64)> = vec![];
    for p in sorted {
        if front.last().is_none_or(|l| p.1 < l.1) {
            front.push(p);
        }
    }
    front.reverse();
    front
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, spec: &PlotSpec) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let all: Vec<(f64, f64)> = spec.series.iter().flat_map(|s| s.points.iter().copied()).collect();
    let (mut x0, mut x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // Both axes include 0 and span at least 1 unit (percent points).
    let pad = |a: f64, b: f64| {
        let (a, b) = (a.min(0.0), b.max(a.min(0.0) + 1.0));
        let m = (b - a) * 0.08;
        (if a < 0.0 { a - m } else { a - m * 0.25 }, b + m)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    let mut chart = ChartBuilder::on(&root)
        .caption(spec.title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(spec.x_label)
        .y_desc(spec.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, s) in spec.series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let front = pareto_front(&s.points);
        chart.draw_series(LineSeries::new(front, c.stroke_width(2))).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, c.filled())))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(s.name.as_str())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperMiddle)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Write the plot as `<stem>.png` (900×600) and `<stem>.svg`.
pub fn scatter_with_fronts(stem: &Path, spec: &PlotSpec) -> Result<()> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(BitMapBackend::new(&png, (900, 600)).into_drawing_area(), spec).with_context(|| format!("cannot draw {}", png.display()))?;
    draw(SVGBackend::new(&svg, (900, 600)).into_drawing_area(), spec).with_context(|| format!("cannot draw {}", svg.display()))?;
    Ok(())
}

/// One heatmap panel: `values[row][col]` in [0, 1], drawn white (0) to blue (1) with the value
/// written in each cell.
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub col_labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

fn draw_heatmaps<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, panels: &[Heatmap]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, h) in areas.into_iter().zip(panels) {
        let rows = h.values.len().max(1) as u32;
        let cols = h.values.iter().map(|r| r.len()).max().unwrap_or(0).max(1) as u32;
        // Segmented axes put each label at the centre of its cell.
        let mut chart = ChartBuilder::on(&area)
            .caption(&h.title, (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(40)
            // A segmented 0..n range has n + 1 cells.
            .build_cartesian_2d((0..cols - 1).into_segmented(), (0..rows - 1).into_segmented())
            .map_err(err)?;
        let labels = h.col_labels.clone();
        let center = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(c) => Some(*c),
            _ => None,
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(h.x_label.as_str())
            .y_desc(h.y_label.as_str())
            .x_labels(cols as usize)
            .y_labels(rows as usize)
            .x_label_formatter(&|v| center(v).and_then(|c| labels.get(c as usize).cloned()).unwrap_or_default())
            // Row 0 at the top.
            .y_label_formatter(&|v| center(v).filter(|&c| c < rows).map(|c| (rows - 1 - c).to_string()).unwrap_or_default())
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(err)?;
        for (i, row) in h.values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let v = v.clamp(0.0, 1.0);
                let c = RGBColor((255.0 * (1.0 - 0.85 * v)) as u8, (255.0 * (1.0 - 0.6 * v)) as u8, 255);
                let (x, y) = (j as u32, rows - 1 - i as u32);
                let cell = [(SegmentValue::Exact(x), SegmentValue::Exact(y)), (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1))];
                chart.draw_series(std::iter::once(Rectangle::new(cell, c.filled()))).map_err(err)?;
                let text_color = if v > 0.6 { WHITE } else { BLACK };
                let style = (FONT, 12).into_font().color(&text_color).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{v:.2}"),
                        (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                        style,
                    )))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Heatmap panels side by side as `<stem>.png`.
pub fn heatmaps_png(stem: &Path, panels: &[Heatmap]) -> Result<()> {
    register_font();
    let png = stem.with_extension("png");
    let w = 520 * panels.len().max(1) as u32;
    draw_heatmaps(BitMapBackend::new(&png, (w, 500)).into_drawing_area(), panels).with_context(|| format!("cannot draw {}", png.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_keeps_undominated_points() {
        let f = pareto_front(&[(0.1, 5.0), (0.2, 3.0), (0.2, 4.0), (0.15, 1.0), (0.3, 10.0), (0.05, 2.0)]);
        assert_eq!(f, vec![(0.15, 1.0), (0.2, 3.0), (0.3, 10.0)]);
    }

    #[test]
    fn writes_png_and_svg() {
        let d = tempfile::tempdir().unwrap();
        let series = [
            Series { name: "alpha".into(), points: vec![(0.1, 2.0), (0.3, 5.0)] },
            Series { name: "beta".into(), points: vec![(0.2, 1.0)] },
        ];
        scatter_with_fronts(&d.path().join("p"), &PlotSpec { title: "t", x_label: "x", y_label: "y", series: &series }).unwrap();
        let png = std::fs::read(d.path().join("p.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(d.path().join("p.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("alpha") && svg.contains("font-family=\"sans-serif\""), "legend text is in the SVG");
    }

    #[test]
    fn writes_heatmaps_of_any_size() {
        let d = tempfile::tempdir().unwrap();
        let panel = |n: usize| Heatmap {
            title: format!("{n}"),
            x_label: "j".into(),
            y_label: "i".into(),
            col_labels: (0..n).map(|j| j.to_string()).collect(),
            values: vec![vec![0.5; n]; n],
        };
        heatmaps_png(&d.path().join("h"), &[panel(1), panel(3)]).unwrap();
        let png = std::fs::read(d.path().join("h.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}

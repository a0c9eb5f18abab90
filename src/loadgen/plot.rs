//! `--plot FILE.svg`: the peak-shaving picture of a run, drawn from its [`timeline`]:
//! requests arriving and backend calls per second against the backend's capacity, the
//! backlog waiting in Kafka, and the backend's in-flight against its slots.
//!
//! [`timeline`]: super::timeline

use plotters::coord::Shift;
use plotters::prelude::*;

use super::timeline::Point;

/// Rates are averaged over this many seconds, so a 250 ms sample does not draw a comb.
const RATE_WINDOW_S: f64 = 1.0;
/// The calls' colour: darker than plotters' `GREEN`, which is hard to see on white.
const DARK_GREEN: RGBColor = RGBColor(0, 150, 0);
/// The picture's size in pixels.
const SIZE: (u32, u32) = (1000, 900);

/// `(seconds, value)` pairs of one line.
pub(crate) type Line = Vec<(f64, f64)>;

/// The lines of the picture, derived from the samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Series {
    /// Requests sent per second.
    pub arrivals: Line,
    /// Calls the backend received per second (every outcome, 429s included).
    pub calls: Line,
    /// What the backend can serve per second: its slots over its mean service time
    /// (busy slot-seconds per successful call, over the whole run).
    pub capacity: Line,
    /// Requests taken and not answered that the backend is not serving: the backlog in
    /// Kafka. Empty for a target without a queue (`--direct`).
    pub backlog: Line,
    /// The backend's in-flight requests.
    pub in_flight: Line,
    /// The backend's slots.
    pub slots: Line,
}

impl Series {
    /// Derives the lines from `points`. `queued` says whether the target queues requests
    /// before the backend (everything but `--direct`).
    pub(crate) fn from_points(points: &[Point], queued: bool) -> Series {
        let with_backend: Vec<(f64, &super::scrape::BackendSample)> = points
            .iter()
            .filter_map(|p| p.backend.as_ref().map(|b| (p.t, b)))
            .collect();
        let service_s = match (with_backend.first(), with_backend.last()) {
            (Some((_, first)), Some((_, last))) if last.ok_calls > first.ok_calls => {
                Some((last.busy_seconds - first.busy_seconds) / (last.ok_calls - first.ok_calls))
            }
            _ => None,
        };
        Series {
            arrivals: rate(points.iter().map(|p| (p.t, p.sent as f64))),
            calls: rate(with_backend.iter().map(|(t, b)| (*t, b.calls))),
            capacity: match service_s {
                Some(s) if s > 0.0 => with_backend
                    .iter()
                    .map(|(t, b)| (*t, b.slots / s))
                    .collect(),
                _ => Vec::new(),
            },
            backlog: if queued {
                points
                    .iter()
                    .map(|p| {
                        let open = p.accepted.saturating_sub(p.finished) as f64;
                        let at_backend = p.backend.map_or(0.0, |b| b.in_flight);
                        (p.t, (open - at_backend).max(0.0))
                    })
                    .collect()
            } else {
                Vec::new()
            },
            in_flight: with_backend
                .iter()
                .map(|(t, b)| (*t, b.in_flight))
                .collect(),
            slots: with_backend.iter().map(|(t, b)| (*t, b.slots)).collect(),
        }
    }

    /// The last instant any line reaches (at least 1 s, so an empty run still has axes).
    fn t_max(&self) -> f64 {
        [&self.arrivals, &self.calls, &self.backlog, &self.in_flight]
            .iter()
            .filter_map(|line| line.last().map(|(t, _)| *t))
            .fold(1.0, f64::max)
    }
}

/// Per-second rate of a counter sampled at `(t, value)`: each point's increase since the
/// last sample at least [`RATE_WINDOW_S`] older (or the first), over the time between.
fn rate(samples: impl Iterator<Item = (f64, f64)>) -> Line {
    let samples: Vec<(f64, f64)> = samples.collect();
    let mut line = Vec::with_capacity(samples.len());
    let mut base = 0;
    for (i, &(t, value)) in samples.iter().enumerate().skip(1) {
        while base + 1 < i && t - samples[base + 1].0 >= RATE_WINDOW_S {
            base += 1;
        }
        let (t0, v0) = samples[base];
        if t > t0 {
            line.push((t, ((value - v0) / (t - t0)).max(0.0)));
        }
    }
    line
}

/// One line to draw: its points, its legend and its colour.
struct Drawn<'a> {
    points: &'a Line,
    label: &'a str,
    color: RGBColor,
}

/// Draws `series` as an SVG document under `title`.
pub(crate) fn render(series: &Series, title: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((3, 1));
        let t_max = series.t_max();
        // Capacity first, so the calls that run along it stay visible.
        let rates = [
            Drawn {
                points: &series.capacity,
                label: "backend capacity /s",
                color: RED,
            },
            Drawn {
                points: &series.arrivals,
                label: "requests arriving /s",
                color: BLUE,
            },
            Drawn {
                points: &series.calls,
                label: "backend calls /s",
                color: DARK_GREEN,
            },
        ];
        panel(&panels[0], "per second", t_max, &rates)?;
        let backlog = [Drawn {
            points: &series.backlog,
            label: "backlog in Kafka (taken, not answered, not at the backend)",
            color: MAGENTA,
        }];
        panel(&panels[1], "requests", t_max, &backlog)?;
        let in_flight = [
            Drawn {
                points: &series.slots,
                label: "backend slots",
                color: RED,
            },
            Drawn {
                points: &series.in_flight,
                label: "backend in flight",
                color: BLUE,
            },
        ];
        panel(&panels[2], "requests", t_max, &in_flight)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One chart: the lines of `lines` over a shared time axis, with a legend.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    y_desc: &str,
    t_max: f64,
    lines: &[Drawn<'_>],
) -> Result<(), String> {
    let y_max = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|(_, v)| *v))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first send")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| e.to_string())?;
    for line in lines.iter().filter(|line| !line.points.is_empty()) {
        let style = line.color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(|e| e.to_string())?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;

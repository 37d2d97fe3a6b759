//! The evaluation report: the figures of `ml-service eval travel_match` as text
//! and as a Markdown page with SVG plots (ROC, calibration, accuracy by
//! confidence decile), drawn here without a plotting dependency.

use crate::eval::MatchEvaluation;
use std::fmt::Write as _;

/// One line of a plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub markers: bool,
}

const W: f64 = 480.0;
const H: f64 = 400.0;
const M: f64 = 55.0;

fn px(x: f64) -> f64 {
    M + x.clamp(0.0, 1.0) * (W - 2.0 * M)
}

fn py(y: f64) -> f64 {
    H - M - y.clamp(0.0, 1.0) * (H - 2.0 * M)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart on the unit square (every plot here is of rates in 0..1).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            py(0.0),
            py(1.0),
            px(0.0),
            px(1.0),
            x = px(v),
            y = py(v)
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{v:.1}</text>"#,
            px(v),
            py(0.0) + 16.0
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.1}</text>"#,
            px(0.0) - 6.0,
            py(v) + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        px(0.0),
        py(1.0),
        px(1.0) - px(0.0),
        py(0.0) - py(1.0)
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        W / 2.0,
        H - 12.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (k, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if ser.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            pts.join(" "),
            ser.color
        );
        if ser.markers {
            for (x, y) in &ser.points {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    px(*x),
                    py(*y),
                    ser.color
                );
            }
        }
        let ly = py(1.0) + 16.0 + 16.0 * k as f64;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            px(0.0) + 8.0,
            px(0.0) + 28.0,
            ser.color,
            px(0.0) + 34.0,
            ly + 4.0,
            esc(ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The metrics table of one evaluation, in Markdown.
pub fn metrics_table(e: &MatchEvaluation) -> String {
    let mut s = String::from(
        "| predictor | AUC | log-loss | Brier | ECE |\n| --- | --- | --- | --- | --- |\n",
    );
    let rows = std::iter::once(&e.model)
        .chain(e.ceiling.iter())
        .chain(e.baselines.iter());
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            r.name, r.auc, r.log_loss, r.brier, r.ece
        );
    }
    s
}

/// One robustness row: a generator setting and its evaluation.
pub struct RobustnessRow {
    pub setting: String,
    pub users: usize,
    pub evaluation: MatchEvaluation,
}

/// The robustness table, in Markdown.
pub fn robustness_table(rows: &[RobustnessRow]) -> String {
    let mut s = String::from(
        "| generator setting | users | held-out pairs | AUC | ceiling AUC | gap | ECE | logistic AUC | overlap AUC |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let e = &r.evaluation;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.4} | {:.2} % | {:.4} | {:.4} | {:.4} |",
            r.setting,
            r.users,
            e.holdout_rows,
            e.model.auc,
            e.ceiling.as_ref().map(|c| c.auc).unwrap_or(f64::NAN),
            e.auc_gap().unwrap_or(f64::NAN) * 100.0,
            e.model.ece,
            e.baselines[1].auc,
            e.baselines[0].auc
        );
    }
    s
}

/// Write the Markdown report and its plots into `dir`.
pub fn write_match_report(
    dir: &std::path::Path,
    source: &str,
    e: &MatchEvaluation,
    robustness: &[RobustnessRow],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut roc = vec![Series {
        name: "served model",
        color: "#1f77b4",
        points: e.roc_model.clone(),
        dashed: false,
        markers: false,
    }];
    if let Some(c) = &e.roc_ceiling {
        roc.push(Series {
            name: "ceiling (true probability)",
            color: "#2ca02c",
            points: c.clone(),
            dashed: false,
            markers: false,
        });
    }
    roc.push(Series {
        name: "chance",
        color: "#999",
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        dashed: true,
        markers: false,
    });
    std::fs::write(
        dir.join("roc.svg"),
        line_chart(
            "ROC on the held-out period",
            "false-positive rate",
            "true-positive rate",
            &roc,
        ),
    )?;
    let cal = vec![
        Series {
            name: "served model",
            color: "#1f77b4",
            points: e
                .calibration
                .iter()
                .map(|b| (b.mean_predicted, b.observed_rate))
                .collect(),
            dashed: false,
            markers: true,
        },
        Series {
            name: "perfect calibration",
            color: "#999",
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            dashed: true,
            markers: false,
        },
    ];
    std::fs::write(
        dir.join("calibration.svg"),
        line_chart(
            "Calibration",
            "predicted probability",
            "observed match rate",
            &cal,
        ),
    )?;
    let dec = vec![Series {
        name: "accuracy of the yes/no call",
        color: "#d62728",
        points: e
            .confidence_deciles
            .iter()
            .map(|d| (d.mean_confidence, d.accuracy))
            .collect(),
        dashed: false,
        markers: true,
    }];
    std::fs::write(
        dir.join("confidence.svg"),
        line_chart(
            "Accuracy by confidence decile",
            "mean confidence",
            "accuracy",
            &dec,
        ),
    )?;

    let mut md = String::new();
    let _ = writeln!(md, "# travel_match: offline evaluation\n");
    let _ = writeln!(
        md,
        "Data: {source}. Held-out pairs: {} (trained on {} before).\n",
        e.holdout_rows, e.train_rows
    );
    md.push_str(&metrics_table(e));
    if let Some(g) = e.auc_gap() {
        let _ = writeln!(
            md,
            "\nAUC gap to the ceiling: {:.2} % (target < 2 %); ECE {:.4} (target < 0.02).",
            g * 100.0,
            e.model.ece
        );
    }
    md.push_str("\n![ROC](roc.svg) ![calibration](calibration.svg) ![confidence](confidence.svg)\n\n## Accuracy by confidence decile\n\n| decile | mean confidence | accuracy | pairs |\n| --- | --- | --- | --- |\n");
    for (i, d) in e.confidence_deciles.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {} |",
            i + 1,
            d.mean_confidence,
            d.accuracy,
            d.n
        );
    }
    md.push_str(
        "\n## Calibration\n\n| mean predicted | observed rate | pairs |\n| --- | --- | --- |\n",
    );
    for b in &e.calibration {
        let _ = writeln!(
            md,
            "| {:.3} | {:.3} | {} |",
            b.mean_predicted, b.observed_rate, b.n
        );
    }
    if !robustness.is_empty() {
        md.push_str("\n## Robustness across generator settings\n\nEach setting is generated, trained and evaluated on its own held-out period (the exported ONNX graph, as served).\n\n");
        md.push_str(&robustness_table(robustness));
        md.push_str("\nCorrelation of each factor with the generator's own component of its group:\n\n| generator setting | interest_overlap | travel_style | personality |\n| --- | --- | --- | --- |\n");
        for r in robustness {
            if let Some(c) = r.evaluation.factor_truth_correlation {
                let _ = writeln!(
                    md,
                    "| {} | {:.3} | {:.3} | {:.3} |",
                    r.setting, c[0], c[1], c[2]
                );
            }
        }
    }
    std::fs::write(dir.join("travel_match.md"), md)
}

/// The notification-timing evaluation, in Markdown.
pub fn timing_report(results: &[crate::timing_eval::TimingEvaluation]) -> String {
    let mut s = String::from("# notification_timing: offline evaluation\n\n");
    for e in results {
        let _ = writeln!(
            s,
            "## {}\n\n{} users, {} held-out sessions.\n",
            e.dataset, e.users, e.held_out_sessions
        );
        s.push_str("| predictor | held-out sessions within ±1 h of its best slot | log-likelihood per session (hour of week) |\n| --- | --- | --- |\n");
        let rows = std::iter::once(&e.model)
            .chain([&e.population, &e.raw_histogram])
            .chain(e.ceiling.iter());
        for r in rows {
            let _ = writeln!(
                s,
                "| {} | {:.4} | {:.4} |",
                r.name, r.share_within_1h, r.log_likelihood
            );
        }
        let _ = writeln!(
            s,
            "\nModel vs. population: {:+.1} % within ±1 h, {:+.3} nats; vs. raw histogram: {:+.1} %, {:+.3} nats.",
            (e.model.share_within_1h / e.population.share_within_1h - 1.0) * 100.0,
            e.model.log_likelihood - e.population.log_likelihood,
            (e.model.share_within_1h / e.raw_histogram.share_within_1h - 1.0) * 100.0,
            e.model.log_likelihood - e.raw_histogram.log_likelihood
        );
        if let Some(o) = &e.open_rates {
            let _ = writeln!(
                s,
                "\nTrue open probability of {} held-out notifications (medium urgency): policy {:.3}, immediately {:.3}, next 10:00 local {:.3}, as logged (random time and channel) {:.3}.",
                o.notifications, o.policy, o.immediately, o.fixed_daily, o.as_logged
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_one_polyline_per_series() {
        let svg = line_chart(
            "t <1>",
            "x",
            "y",
            &[
                Series {
                    name: "a",
                    color: "red",
                    points: vec![(0.0, 0.0), (0.5, 0.7)],
                    dashed: false,
                    markers: true,
                },
                Series {
                    name: "b",
                    color: "blue",
                    points: vec![(0.0, 1.0), (1.0, 0.0)],
                    dashed: true,
                    markers: false,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
        // (0.5, 0.7) lands inside the plot area.
        assert!(svg.contains(&format!("{:.1},{:.1}", px(0.5), py(0.7))));
    }
}

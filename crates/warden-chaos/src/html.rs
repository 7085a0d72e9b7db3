//! The report as one self-contained HTML page (no scripts, no external files): the summary,
//! the checkers' verdicts, and an inline SVG timeline with, per agent, the ground truth (down,
//! paused, cut off), the server's verdicts (suspect, failed) and the recoveries of the work
//! that ran there.

use std::fmt::Write as _;

use crate::record::{Record, TruthState};
use crate::report::Report;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 90.0;
const ROW: f64 = 46.0;
const TOP: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Render the page.
pub fn render(record: &Record, report: &Report) -> String {
    let t_min = record.schedule_start_ms.saturating_sub(2000);
    let t_max = record.end_ms.max(t_min + 1);
    let x = |t: u64| {
        LEFT + (t.clamp(t_min, t_max) - t_min) as f64 / (t_max - t_min) as f64
            * (WIDTH - LEFT - 10.0)
    };
    let height = TOP + ROW * record.agents.len() as f64 + 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    // Time axis, one tick every 5 s from the schedule start.
    let mut t = record.schedule_start_ms;
    while t <= t_max {
        let xt = x(t);
        let _ = write!(
            svg,
            r##"<line x1="{xt:.1}" y1="{TOP}" x2="{xt:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xt:.1}" y="{:.1}" text-anchor="middle">{}s</text>"##,
            height - 25.0,
            height - 12.0,
            (t - record.schedule_start_ms) / 1000
        );
        t += 5000;
    }
    for (row, agent) in record.agents.iter().enumerate() {
        let y = TOP + ROW * row as f64;
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}">{}</text><text x="4" y="{:.1}" fill="#888">truth / verdict</text>"##,
            y + 16.0,
            esc(agent),
            y + 30.0
        );
        for i in record.truth_of(agent) {
            let (color, label) = match i.state {
                TruthState::Down => ("#d62728", "down"),
                TruthState::Paused => ("#ff7f0e", "paused"),
                TruthState::Cut => ("#9467bd", "cut off"),
            };
            let (x0, x1) = (x(i.start_ms), x(i.end_ms.unwrap_or(record.end_ms)));
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="12" fill="{color}"><title>{label} {}–{} ms</title></rect>"#,
                y + 6.0,
                (x1 - x0).max(2.0),
                i.start_ms,
                i.end_ms.unwrap_or(record.end_ms)
            );
        }
        for (start, end, state) in record.verdict_intervals(agent) {
            let color = if state == "failed" {
                "#8c0000"
            } else {
                "#e6c200"
            };
            let (x0, x1) = (x(start), x(end));
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="12" fill="{color}"><title>{state} {start}–{end} ms</title></rect>"#,
                y + 22.0,
                (x1 - x0).max(2.0)
            );
        }
        for f in report.faults.iter().filter(|f| &f.target == agent) {
            for r in &f.recoveries {
                if let Some(rto) = r.rto_ms {
                    let xr = x(f.start_ms + rto);
                    let _ = write!(
                        svg,
                        r##"<path d="M{xr:.1} {:.1} l-5 8 h10 z" fill="#2ca02c"><title>{} replaced (token {} → {}) after {rto} ms</title></path>"##,
                        y + 34.0,
                        esc(&r.task),
                        r.old_token,
                        r.new_token.unwrap_or(0)
                    );
                }
            }
        }
    }
    svg.push_str("</svg>");

    let mut checks = String::new();
    for c in &report.checkers {
        let _ = write!(
            checks,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            esc(&c.checker),
            if c.passed { "pass" } else { "fail" },
            if c.passed { "pass" } else { "FAIL" },
            c.violations
                .iter()
                .map(|v| format!("{} ms: {}", v.t_ms, esc(&v.message)))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>warden chaos: {name}</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f6f6f6;padding:1em}}
td{{padding:2px 8px;vertical-align:top}} .pass{{color:#2ca02c}} .fail{{color:#d62728;font-weight:bold}}</style>
</head><body>
<h1>warden chaos: {name}</h1>
<p>{desc}</p>
<h2>Checkers</h2>
<table>{checks}</table>
<h2>Timeline</h2>
<p>Per agent, top bar: ground truth (<span style="color:#d62728">down</span>,
<span style="color:#ff7f0e">paused</span>, <span style="color:#9467bd">cut off</span>); bottom bar:
the server's verdict (<span style="color:#e6c200">suspect</span>,
<span style="color:#8c0000">failed</span>); green marks: a slot that ran there replaced. Time from
the schedule start; hover for details.</p>
{svg}
<h2>Summary</h2>
<pre>{summary}</pre>
</body></html>
"#,
        name = esc(&report.scenario),
        desc = esc(&report.description),
        summary = esc(&report.summary()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{record, transition};
    use crate::record::TruthInterval;

    #[test]
    fn renders_truth_and_verdict_bars() {
        let mut r = record();
        r.end_ms = 10_000;
        r.truth = vec![TruthInterval {
            agent: "agent-1".into(),
            state: TruthState::Paused,
            start_ms: 2_000,
            end_ms: Some(6_000),
        }];
        r.events = vec![
            transition(100, "agent-1", 1, "healthy"),
            transition(2_500, "agent-1", 1, "suspect"),
            transition(4_500, "agent-1", 1, "failed"),
            transition(7_000, "agent-1", 2, "healthy"),
        ];
        assert_eq!(
            r.verdict_intervals("agent-1"),
            vec![
                (2_500, 4_500, "suspect".to_string()),
                (4_500, 7_000, "failed".to_string())
            ]
        );
        let page = render(&r, &Report::build(&r));
        assert!(page.contains("<svg") && page.contains("paused 2000–6000 ms"));
        assert!(page.contains("failed 4500–7000 ms"));
    }
}

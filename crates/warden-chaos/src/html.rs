//! The report as one self-contained HTML page (no scripts, no external files): the checkers'
//! verdicts, the headline figures, an inline SVG timeline and the summary. The timeline has a
//! lane per agent (and one for the server when a fault hit it) with, top to bottom: the faults
//! (one colour per kind; a fault on `all` agents or on the server is drawn on every lane it
//! touches), the ground truth (down, paused, cut off — each cut of a flap is its own
//! interval), the server's verdicts (suspect, failed) and the recoveries of the work that ran
//! there.

use std::fmt::Write as _;

use crate::record::{Record, SERVER, TruthState};
use crate::report::{ALL, FaultReport, Report};
use crate::scenario::FaultKind;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 90.0;
const ROW: f64 = 54.0;
const TOP: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The colour of a fault kind on the timeline and in its legend.
pub fn kind_color(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#d62728",
        FaultKind::Pause => "#ff7f0e",
        FaultKind::Restart => "#8c564b",
        FaultKind::Upgrade => "#2ca02c",
        FaultKind::OfflineRestart => "#98df8a",
        FaultKind::Partition => "#9467bd",
        FaultKind::Oneway => "#c49c94",
        FaultKind::Flap => "#e377c2",
        FaultKind::Loss => "#17becf",
        FaultKind::Delay => "#1f77b4",
        FaultKind::Cpu => "#bcbd22",
        FaultKind::Memory => "#7f7f7f",
        FaultKind::Isolate => "#393b79",
        FaultKind::ServerKill => "#000000",
        FaultKind::LeaderKill => "#843c39",
        FaultKind::EtcdKill => "#637939",
    }
}

/// Whether fault `f` is drawn on the lane of `lane` (an agent, or [`SERVER`]).
fn on_lane(f: &FaultReport, lane: &str) -> bool {
    if f.skipped.is_some() {
        return false;
    }
    match f.kind {
        FaultKind::Isolate => true,
        // The control plane's processes share the server lane.
        FaultKind::ServerKill | FaultKind::LeaderKill | FaultKind::EtcdKill => lane == SERVER,
        FaultKind::Kill
        | FaultKind::Pause
        | FaultKind::Restart
        | FaultKind::Upgrade
        | FaultKind::OfflineRestart
        | FaultKind::Partition
        | FaultKind::Oneway
        | FaultKind::Flap
        | FaultKind::Loss
        | FaultKind::Delay
        | FaultKind::Cpu
        | FaultKind::Memory => {
            lane != SERVER && (f.target == ALL || f.target.split(',').any(|t| t == lane))
        }
    }
}

fn opt(v: Option<f64>, unit: &str, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}{unit}"))
}

/// The headline figures as table rows.
fn figures(report: &Report) -> String {
    let a = &report.accuracy;
    let rc = &report.recovery;
    let false_verdicts: usize = report.faults.iter().map(|f| f.false_verdicts).sum();
    let rows = [
        (
            "network",
            if report.network.is_empty() {
                "unknown".to_string()
            } else {
                report.network.clone()
            },
        ),
        (
            "recovery success",
            format!(
                "{} ({} slots lost their process, {} replaced, {} within {} ms)",
                opt(rc.success_rate.map(|r| r * 100.0), " %", 1),
                rc.needed,
                rc.recovered,
                rc.within_bound,
                report.rto_bound_ms
            ),
        ),
        (
            "mistakes",
            format!(
                "{} in {:.1} s of up time: λ_M {:.4}/s, T_M {}, T_MR {}, P_A {}",
                a.mistakes,
                a.up_ms as f64 / 1e3,
                a.mistake_rate_per_s,
                opt(a.mean_mistake_ms, " ms", 0),
                opt(a.mean_recurrence_ms, " ms", 0),
                opt(a.query_accuracy, "", 5)
            ),
        ),
        (
            "false Failed under loss, delay, cpu, memory",
            false_verdicts.to_string(),
        ),
    ];
    rows.iter()
        .map(|(k, v)| format!("<tr><td>{k}</td><td>{}</td></tr>", esc(v)))
        .collect()
}

/// Render the page.
pub fn render(record: &Record, report: &Report) -> String {
    let t_min = record.schedule_start_ms.saturating_sub(2000);
    let t_max = record.end_ms.max(t_min + 1);
    let x = |t: u64| {
        LEFT + (t.clamp(t_min, t_max) - t_min) as f64 / (t_max - t_min) as f64
            * (WIDTH - LEFT - 10.0)
    };
    let mut lanes: Vec<&str> = record.agents.iter().map(String::as_str).collect();
    if record.truth_of(SERVER).next().is_some() || report.faults.iter().any(|f| on_lane(f, SERVER))
    {
        lanes.push(SERVER);
    }
    let height = TOP + ROW * lanes.len() as f64 + 40.0;
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
    for (row, lane) in lanes.iter().copied().enumerate() {
        let y = TOP + ROW * row as f64;
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}">{}</text><text x="4" y="{:.1}" fill="#888">fault / truth</text><text x="4" y="{:.1}" fill="#888">verdict</text>"##,
            y + 8.0,
            esc(lane),
            y + 20.0,
            y + 35.0
        );
        for f in report.faults.iter().filter(|f| on_lane(f, lane)) {
            let end = f.end_ms.unwrap_or(record.end_ms);
            let (x0, x1) = (x(f.start_ms), x(end));
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="5" fill="{}"><title>fault {}: {} {} {}–{} ms</title></rect>"#,
                y + 2.0,
                (x1 - x0).max(2.0),
                kind_color(f.kind),
                f.index,
                f.kind.as_str(),
                esc(&f.target),
                f.start_ms,
                end
            );
        }
        for i in record.truth_of(lane) {
            let (color, label) = match i.state {
                TruthState::Down => ("#d62728", "down"),
                TruthState::Paused => ("#ff7f0e", "paused"),
                TruthState::Cut => ("#9467bd", "cut off"),
            };
            let (x0, x1) = (x(i.start_ms), x(i.end_ms.unwrap_or(record.end_ms)));
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="12" fill="{color}" stroke="#fff" stroke-width="0.5"><title>{label} {}–{} ms</title></rect>"##,
                y + 9.0,
                (x1 - x0).max(2.0),
                i.start_ms,
                i.end_ms.unwrap_or(record.end_ms)
            );
        }
        for (start, end, state) in record.verdict_intervals(lane) {
            let color = if state == "failed" {
                "#8c0000"
            } else {
                "#e6c200"
            };
            let (x0, x1) = (x(start), x(end));
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="12" fill="{color}"><title>{state} {start}–{end} ms</title></rect>"#,
                y + 25.0,
                (x1 - x0).max(2.0)
            );
        }
        for f in report.faults.iter().filter(|f| f.target == lane) {
            for r in &f.recoveries {
                if let Some(rto) = r.rto_ms {
                    let xr = x(f.start_ms + rto);
                    let _ = write!(
                        svg,
                        r##"<path d="M{xr:.1} {:.1} l-5 8 h10 z" fill="#2ca02c"><title>{} replaced (token {} → {}) after {rto} ms</title></path>"##,
                        y + 38.0,
                        esc(&r.task),
                        r.old_token,
                        r.new_token.unwrap_or(0)
                    );
                }
            }
        }
    }
    svg.push_str("</svg>");

    let mut kinds: Vec<FaultKind> = report
        .faults
        .iter()
        .filter(|f| f.skipped.is_none())
        .map(|f| f.kind)
        .collect();
    kinds.sort();
    kinds.dedup();
    let legend = kinds
        .iter()
        .map(|k| {
            format!(
                r#"<span style="display:inline-block;width:12px;height:8px;background:{}"></span> {}"#,
                kind_color(*k),
                k.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(" &nbsp; ");
    let skipped = report.faults.iter().filter(|f| f.skipped.is_some()).count();

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
<h2>Figures</h2>
<table>{figures}</table>
<h2>Timeline</h2>
<p>Per lane, a thin strip: the faults, by kind ({legend}; {skipped} skipped, not drawn); a
fault on every agent, or on the server, is drawn on every lane it touches. Top bar: ground
truth (<span style="color:#d62728">down</span>, <span style="color:#ff7f0e">paused</span>,
<span style="color:#9467bd">cut off</span>; each cut of a flap is its own bar); bottom bar:
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
        figures = figures(report),
        summary = esc(&report.summary()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::{record, transition};
    use crate::record::{FaultRecord, TruthInterval};

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

    #[test]
    fn draws_every_fault_kind_on_the_lanes_it_touches() {
        let mut r = record();
        r.agents.push("agent-3".into());
        r.network = "netns".into();
        r.end_ms = 40_000;
        let fault = |index, kind, target: &str, start_ms, end_ms| FaultRecord {
            index,
            kind,
            target: target.into(),
            start_ms,
            end_ms: Some(end_ms),
            skipped: None,
            since_failover_ms: None,
        };
        r.faults = vec![
            fault(0, FaultKind::Flap, "agent-1", 2_000, 7_000),
            fault(1, FaultKind::Delay, ALL, 10_000, 14_000),
            fault(2, FaultKind::Isolate, SERVER, 20_000, 25_000),
            fault(3, FaultKind::ServerKill, SERVER, 30_000, 31_000),
        ];
        let cut = |agent: &str, start_ms, end_ms| TruthInterval {
            agent: agent.into(),
            state: TruthState::Cut,
            start_ms,
            end_ms: Some(end_ms),
        };
        // The flap's cuts, then the isolation of the server and every agent.
        r.truth = vec![cut("agent-1", 2_000, 3_000), cut("agent-1", 4_000, 5_000)];
        for a in [SERVER, "agent-1", "agent-2", "agent-3"] {
            r.truth.push(cut(a, 20_000, 25_000));
        }
        let page = render(&r, &Report::build(&r));
        let count = |s: &str| page.matches(s).count();
        assert_eq!(count("fault 0: flap agent-1"), 1);
        assert_eq!(count("fault 1: delay all"), 3, "on every agent's lane");
        assert_eq!(
            count("fault 2: isolate server"),
            4,
            "every agent and the server"
        );
        assert_eq!(count("fault 3: server-kill server"), 1);
        assert!(page.contains("cut off 2000–3000 ms") && page.contains("cut off 4000–5000 ms"));
        assert_eq!(count("cut off 20000–25000 ms"), 4);
        for k in [
            FaultKind::Flap,
            FaultKind::Delay,
            FaultKind::Isolate,
            FaultKind::ServerKill,
        ] {
            assert!(page.contains(kind_color(k)), "{k:?}");
        }
        assert!(page.contains("<td>network</td><td>netns</td>"));
        assert!(page.contains("T_MR"));
    }

    #[test]
    fn every_fault_kind_has_its_own_colour() {
        let kinds = [
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Restart,
            FaultKind::Upgrade,
            FaultKind::OfflineRestart,
            FaultKind::Partition,
            FaultKind::Oneway,
            FaultKind::Flap,
            FaultKind::Loss,
            FaultKind::Delay,
            FaultKind::Cpu,
            FaultKind::Memory,
            FaultKind::Isolate,
            FaultKind::ServerKill,
            FaultKind::LeaderKill,
            FaultKind::EtcdKill,
        ];
        let colours: std::collections::BTreeSet<&str> =
            kinds.iter().map(|k| kind_color(*k)).collect();
        assert_eq!(colours.len(), kinds.len());
    }
}

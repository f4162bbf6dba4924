//! `echo-report RESULTS.json... [--markdown FILE] [--svg FILE]`: the tables
//! and the chart of the echo benchmark from what `echo-matrix` measured.
//! Several results files (e.g. the timed matrix from one run and the syscall
//! counts or the scale part from another) are merged: their runs are put
//! together (repetitions renumbered after the earlier files'), dates and
//! commits joined, and every file's command is listed.
//!
//! Every figure is a median over the repetitions. The CPU ratio of a server
//! on a workload is the median over repetitions of (its server CPU per round
//! trip / the plain-epoll floor's in the same repetition), followed by the
//! range of those per-repetition ratios: servers are interleaved within a
//! repetition, so each ratio compares runs made a few seconds apart. Servers
//! not built here (none on Linux; the epoll floor elsewhere) are listed as
//! pending. Without `--markdown` the tables go to stdout.

#![deny(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use readiness_bench::echo::Server;
use readiness_bench::results::{Results, Workload, median};

#[derive(Parser)]
#[command(name = "echo-report", about = "Tables and chart of the echo benchmark")]
struct Args {
    /// The results of echo-matrix (several: merged).
    #[arg(default_value = "target/bench-echo/results.json")]
    results: Vec<PathBuf>,
    /// Write the markdown here (default: stdout).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the SVG chart of the CPU ratios here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

const FLOOR: &str = "epoll";

/// Medians of one (server, workload).
#[derive(Clone)]
struct Cellstats {
    rps: Option<f64>,
    p99: Option<f64>,
    cpu: Option<f64>,
    ratio: Option<(f64, f64, f64)>,
}

fn workloads(r: &Results) -> Vec<Workload> {
    let mut seen = Vec::new();
    for w in Workload::MATRIX
        .iter()
        .copied()
        .chain(r.cells.iter().map(|c| c.workload))
        .chain(r.syscalls.iter().map(|c| c.workload))
    {
        let measured =
            r.cells.iter().any(|c| c.workload == w) || r.syscalls.iter().any(|c| c.workload == w);
        if measured && !seen.contains(&w) {
            seen.push(w);
        }
    }
    seen
}

/// Every server of the report's rows: measured ones in `Server::ALL` order,
/// the pending ones too.
fn servers(r: &Results) -> Vec<(String, bool)> {
    Server::ALL
        .iter()
        .filter_map(|s| {
            let measured = r.cells.iter().any(|c| c.server == s.name())
                || r.syscalls.iter().any(|c| c.server == s.name())
                || r.scale.iter().any(|c| c.server == s.name());
            (measured || !s.is_built()).then(|| (s.name().to_string(), measured))
        })
        .collect()
}

fn cpu_per_rt(c: &readiness_bench::results::ClientReport) -> Option<f64> {
    let cpu = c.server_cpu_s?;
    (c.round_trips > 0).then(|| cpu * 1e6 / c.round_trips as f64)
}

fn stats(r: &Results, server: &str, w: Workload) -> Cellstats {
    let cells: Vec<_> = r
        .cells
        .iter()
        .filter(|c| c.server == server && c.workload == w)
        .collect();
    let of = |f: &dyn Fn(&readiness_bench::results::ClientReport) -> Option<f64>| {
        median(
            &mut cells
                .iter()
                .filter_map(|c| f(&c.client))
                .collect::<Vec<_>>(),
        )
    };
    let (rps, p99, cpu) = (
        of(&|c| Some(c.round_trips_per_s)),
        of(&|c| Some(c.p99_us)),
        of(&cpu_per_rt),
    );
    let mut ratios: Vec<f64> = cells
        .iter()
        .filter_map(|c| {
            let floor = r
                .cells
                .iter()
                .find(|f| f.server == FLOOR && f.workload == w && f.rep == c.rep)?;
            Some(cpu_per_rt(&c.client)? / cpu_per_rt(&floor.client)?)
        })
        .collect();
    let ratio = median(&mut ratios).map(|m| {
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (m, lo, hi)
    });
    Cellstats {
        rps,
        p99,
        cpu,
        ratio,
    }
}

fn syscalls_per_rt(r: &Results, tool: &str, server: &str, w: Workload) -> Option<f64> {
    let mut v: Vec<f64> = r
        .syscalls
        .iter()
        .filter(|s| s.tool == tool && s.server == server && s.workload == w)
        .map(|s| s.per_round_trip())
        .collect();
    median(&mut v)
}

fn fmt_num(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn table(
    md: &mut String,
    title: &str,
    r: &Results,
    rows: &[(String, bool)],
    ws: &[Workload],
    cell: &dyn Fn(&str, Workload) -> Option<String>,
) {
    let _ = writeln!(md, "{title}\n");
    let _ = write!(md, "| server |");
    for w in ws {
        let _ = write!(md, " {} |", w.id());
    }
    let _ = write!(md, "\n|---|");
    for _ in ws {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md);
    for (s, measured) in rows {
        let _ = write!(md, "| {s} |");
        for &w in ws {
            let text = if *measured {
                cell(s, w).unwrap_or_else(|| "-".into())
            } else {
                "pending".into()
            };
            let _ = write!(md, " {text} |");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
    let _ = r;
}

fn markdown(r: &Results) -> String {
    let ws = workloads(r);
    let rows = servers(r);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {} on {} cores ({}), Linux {}, commit {}; {} s measured after {} s warm-up per cell; medians of {} repetitions.\n\nCommand: `{}`\n",
        r.date,
        r.cores,
        r.cpu,
        r.kernel,
        r.commit,
        r.duration_s,
        r.warmup_s,
        r.cells.iter().map(|c| c.rep + 1).max().unwrap_or(0),
        r.command
    );
    let mut loads: Vec<f64> = r.cells.iter().filter_map(|c| c.loadavg).collect();
    if let Some(m) = median(&mut loads) {
        let _ = writeln!(
            md,
            "The machine's 1-minute load average at the start of the timed runs: median {m:.1}, range {:.1}-{:.1} (2 would be this benchmark alone; more is other work sharing the cores).\n",
            loads[0],
            loads[loads.len() - 1]
        );
    }
    let _ = writeln!(md, "Workloads are `cCONNECTIONS-sSIZE-dDEPTH`.\n");
    if !r.cells.is_empty() {
        table(
            &mut md,
            "**Server CPU per round trip, as a ratio to the plain-epoll floor** (median of the per-repetition ratios, range in parentheses):",
            r,
            &rows,
            &ws,
            &|s, w| {
                stats(r, s, w).ratio.map(|(m, lo, hi)| {
                    if s == FLOOR {
                        "1.00".into()
                    } else {
                        format!("{m:.2} ({lo:.2}-{hi:.2})")
                    }
                })
            },
        );
        table(
            &mut md,
            "**Server CPU per round trip, µs** (utime + stime of the server process over the measured interval / round trips):",
            r,
            &rows,
            &ws,
            &|s, w| stats(r, s, w).cpu.map(|v| format!("{v:.2}")),
        );
        table(
            &mut md,
            "**Round trips per second** (client-side, all connections):",
            r,
            &rows,
            &ws,
            &|s, w| stats(r, s, w).rps.map(fmt_num),
        );
        table(&mut md, "**p99 latency, µs**:", r, &rows, &ws, &|s, w| {
            stats(r, s, w).p99.map(fmt_num)
        });
        let failures: u64 = r.cells.iter().map(|c| c.client.validation_failures).sum();
        let lost: u64 = r
            .cells
            .iter()
            .map(|c| c.client.disconnects + c.client.connect_errors)
            .sum();
        let _ = writeln!(
            md,
            "Validation failures over all {} timed runs: {failures}; connections failed or lost: {lost}.\n",
            r.cells.len()
        );
    }
    for (tool, what) in [
        (
            "perf",
            "counted with `perf stat` on the `raw_syscalls:sys_enter` tracepoint (the server runs at full speed)",
        ),
        (
            "strace",
            "counted with `strace -c -f` (each call stops the server, so wake-ups find more work and the figures are lower for servers whose calls depend on timing)",
        ),
    ] {
        if r.syscalls.iter().any(|s| s.tool == tool) {
            let n = r
                .syscalls
                .iter()
                .find(|s| s.tool == tool)
                .map_or(0, |s| s.round_trips);
            table(
                &mut md,
                &format!(
                    "**System calls per round trip ({tool})**, {what}, over {n} round trips after the warm-up:"
                ),
                r,
                &rows,
                &ws,
                &|s, w| syscalls_per_rt(r, tool, s, w).map(|v| format!("{v:.3}")),
            );
        }
    }
    if let Some(w) = ws
        .iter()
        .find(|w| **w == Workload::new(100, 64, 1))
        .or(ws.first())
        && r.syscalls
            .iter()
            .any(|s| s.tool == "perf" && s.workload == *w)
    {
        {
            let _ = writeln!(md, "**Which calls, per round trip (perf), {}**:\n", w.id());
            let _ = writeln!(md, "| server | calls |\n|---|---|");
            for (s, measured) in &rows {
                if !measured {
                    continue;
                }
                if let Some(c) = r
                    .syscalls
                    .iter()
                    .find(|c| c.tool == "perf" && c.server == *s && c.workload == *w)
                {
                    let mut calls = c.calls.clone();
                    calls.sort_by_key(|c| std::cmp::Reverse(c.1));
                    let text: Vec<String> = calls
                        .iter()
                        .map(|(name, n)| {
                            format!("{name} {:.3}", *n as f64 / c.round_trips.max(1) as f64)
                        })
                        .filter(|t| !t.ends_with(" 0.000"))
                        .collect();
                    let _ = writeln!(md, "| {s} | {} |", text.join(", "));
                }
            }
            let _ = writeln!(md);
        }
    }
    if !r.scale.is_empty() {
        let idle_n = r.scale.iter().map(|s| s.idle).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "**Scale**: 10 active connections (64 B, depth 1) with no idle connection and with {idle_n} idle ones (each echoed one message, then silent). Server resident memory (VmRSS) once every connection is set up; bytes per idle connection = (RSS with {idle_n} idle - RSS with none) / {idle_n}. Medians of {} repetitions.\n",
            r.scale.iter().map(|s| s.rep + 1).max().unwrap_or(0)
        );
        let _ = writeln!(
            md,
            "| server | RSS, 0 idle (KiB) | RSS, {idle_n} idle (KiB) | bytes per idle connection | p50 / p99 µs, 0 idle | p50 / p99 µs, {idle_n} idle |\n|---|---:|---:|---:|---:|---:|"
        );
        for (s, measured) in &rows {
            if !measured {
                let _ = writeln!(
                    md,
                    "| {s} | pending | pending | pending | pending | pending |"
                );
                continue;
            }
            let pick =
                |idle: u64, f: &dyn Fn(&readiness_bench::results::ClientReport) -> Option<f64>| {
                    median(
                        &mut r
                            .scale
                            .iter()
                            .filter(|x| x.server == *s && x.idle == idle)
                            .filter_map(|x| f(&x.client))
                            .collect::<Vec<_>>(),
                    )
                };
            let rss0 = pick(0, &|c| c.server_rss_connected_kib.map(|v| v as f64));
            let rss1 = pick(idle_n, &|c| c.server_rss_connected_kib.map(|v| v as f64));
            let per = match (rss0, rss1) {
                (Some(a), Some(b)) if idle_n > 0 => {
                    format!("{:.0}", (b - a) * 1024.0 / idle_n as f64)
                }
                _ => "-".into(),
            };
            let lat = |idle| match (
                pick(idle, &|c| Some(c.p50_us)),
                pick(idle, &|c| Some(c.p99_us)),
            ) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
                _ => "-".into(),
            };
            let kib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
            let _ = writeln!(
                md,
                "| {s} | {} | {} | {per} | {} | {} |",
                kib(rss0),
                kib(rss1),
                lat(0),
                lat(idle_n)
            );
        }
        let held: Vec<String> = r
            .scale
            .iter()
            .filter(|x| {
                x.idle > 0
                    && (x.client.idle_connected.is_some_and(|n| n != x.idle)
                        || x.client.connect_errors > 0
                        || x.client.disconnects > 0)
            })
            .map(|x| {
                format!(
                    "{} rep {}: {} errors, {} lost",
                    x.server, x.rep, x.client.connect_errors, x.client.disconnects
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "\nScale runs with failed or lost connections: {}.\n",
            if held.is_empty() {
                "none".to_string()
            } else {
                held.join("; ")
            }
        );
    }
    md
}

fn svg(r: &Results, path: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let ws = workloads(r);
    let rows: Vec<String> = servers(r)
        .into_iter()
        .filter(|(_, m)| *m)
        .map(|(s, _)| s)
        .collect();
    let mut ratio: BTreeMap<(usize, usize), (f64, f64, f64)> = BTreeMap::new();
    let mut top: f64 = 1.2;
    for (g, &w) in ws.iter().enumerate() {
        for (k, s) in rows.iter().enumerate() {
            if let Some(v) = stats(r, s, w).ratio {
                ratio.insert((g, k), v);
                top = top.max(v.2);
            }
        }
    }
    // Headroom for the legend above the bars.
    let top = top * 1.35;
    let slots = rows.len() as u32 + 1;
    let n = ws.len() as u32 * slots;
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Echo server CPU per round trip / plain-epoll floor (lower is better; whiskers: range over repetitions)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top)?;
    let names: Vec<String> = ws.iter().map(|w| w.id()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if i % slots == slots / 2 - 1 + (slots % 2) => {
                names.get((i / slots) as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_desc("ratio to epoll floor")
        .draw()?;
    for (k, s) in rows.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars: Vec<_> = ratio
            .iter()
            .filter(|((_, kk), _)| *kk == k)
            .map(|((g, _), &(v, _, _))| {
                let i = *g as u32 * slots + k as u32;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(s.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    // The range of the per-repetition ratios, as a whisker on each bar.
    chart.draw_series(ratio.iter().map(|((g, k), &(_, lo, hi))| {
        let i = *g as u32 * slots + *k as u32;
        PathElement::new(
            [
                (SegmentValue::CenterOf(i), lo),
                (SegmentValue::CenterOf(i), hi),
            ],
            BLACK.stroke_width(1),
        )
    }))?;
    chart.draw_series(LineSeries::new(
        [(SegmentValue::Exact(0), 1.0), (SegmentValue::Exact(n), 1.0)],
        BLACK.stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut results: Option<Results> = None;
    for path in &args.results {
        let r: Results = match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("echo-report: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        match &mut results {
            None => results = Some(r),
            Some(all) => {
                all.command = format!("{}` and `{}", all.command, r.command);
                if all.commit != r.commit {
                    all.commit = format!("{} and {}", all.commit, r.commit);
                }
                if all.date != r.date {
                    all.date = format!("{} and {}", all.date, r.date);
                }
                // Repetitions of later files come after the earlier ones
                // (ratios pair a server with the floor of its own
                // repetition, so the numbers must not collide).
                let cell_base = all.cells.iter().map(|c| c.rep + 1).max().unwrap_or(0);
                let scale_base = all.scale.iter().map(|c| c.rep + 1).max().unwrap_or(0);
                all.cells.extend(r.cells.into_iter().map(|mut c| {
                    c.rep += cell_base;
                    c
                }));
                all.syscalls.extend(r.syscalls);
                all.scale.extend(r.scale.into_iter().map(|mut c| {
                    c.rep += scale_base;
                    c
                }));
            }
        }
    }
    let Some(results) = results else {
        eprintln!("echo-report: no results file");
        return ExitCode::FAILURE;
    };
    let md = markdown(&results);
    match &args.markdown {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &md) {
                eprintln!("echo-report: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        }
        None => print!("{md}"),
    }
    if let Some(p) = &args.svg
        && let Err(e) = svg(&results, p)
    {
        eprintln!("echo-report: {}: {e}", p.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

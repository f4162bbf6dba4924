//! Prints the ratios of the `pollers` benchmark from criterion's saved
//! estimates: readiness (epoll backend) time over the fastest peer's time for
//! each benchmark, and each library's wait time at N = 19,000 over N = 1.
//!
//! Usage: `cargo run -p readiness-bench --bin bench-ratios [-- [--markdown] [DIR...]]`
//!
//! Each `DIR` is the criterion output directory of one run of
//! `cargo bench -p readiness-bench --bench pollers` (default:
//! `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the workspace's
//! `target/criterion`). A figure is criterion's median time per iteration;
//! with several runs, times are the median over the runs, and each ratio is
//! the median of the runs' own ratios (so every ratio compares figures taken
//! in the same run), followed by its range.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The readiness backend the targets apply to.
const SUBJECT: &str = "readiness-epoll";
/// Columns, in order.
const LIBS: [&str; 4] = [SUBJECT, "readiness-poll", "polling", "mio"];
/// The peers readiness is compared with.
const PEERS: [&str; 2] = ["polling", "mio"];
const SIZES: [usize; 3] = [1, 1_000, 19_000];
/// Groups with a socket-count parameter.
const WAIT_GROUPS: [&str; 2] = ["wait_level", "rearm_wait"];
/// Target: wait(N = 19,000) / wait(N = 1) below this.
const FLAT: f64 = 1.2;

fn default_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CRITERION_HOME") {
        return dir.into();
    }
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&dir).join("criterion");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion")
}

/// The median of `<dir>/<id>/new/estimates.json`, in nanoseconds.
fn median_estimate(dir: &Path, id: &str) -> Option<f64> {
    let text = fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    // {"mean":{...,"point_estimate":X,...},"median":{...,"point_estimate":Y,...},...}
    let rest = &text[text.find("\"median\"")?..];
    let rest = &rest[rest.find("\"point_estimate\"")? + "\"point_estimate\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The benchmark rows, e.g. `add_delete`, `wait_level/19000`.
fn row_names() -> Vec<String> {
    let mut names: Vec<String> = vec!["add_delete".into(), "rearm".into()];
    for group in WAIT_GROUPS {
        names.extend(SIZES.iter().map(|n| format!("{group}/{n}")));
    }
    names.push("notify".into());
    names
}

/// One run's times: `[row][lib]`.
type Run = Vec<[Option<f64>; 4]>;

fn load(dir: &Path, names: &[String]) -> Run {
    names
        .iter()
        .map(|name| {
            let (group, param) = name.split_once('/').unwrap_or((name, ""));
            LIBS.map(|lib| {
                let id = if param.is_empty() {
                    format!("{group}/{lib}")
                } else {
                    format!("{group}/{lib}/{param}")
                };
                median_estimate(dir, &id)
            })
        })
        .collect()
}

fn lib_index(lib: &str) -> usize {
    LIBS.iter().position(|&l| l == lib).expect("known library")
}

/// readiness-epoll over the fastest peer present, and that peer.
fn peer_ratio(times: &[Option<f64>; 4]) -> Option<(f64, &'static str)> {
    let subject = times[0]?;
    let (peer, t) = PEERS
        .iter()
        .filter_map(|&p| Some((p, times[lib_index(p)]?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    Some((subject / t, peer))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Median, min and max of `v`.
fn summary(v: Vec<f64>) -> Option<(f64, f64, f64)> {
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((median(v)?, min, max))
}

fn fmt_time(ns: Option<f64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns < 1e3 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        Some(ns) => format!("{:.2} ms", ns / 1e6),
    }
}

fn fmt_ratio(s: Option<(f64, f64, f64)>, runs: usize) -> String {
    // Two decimals, or none for the poll(2) backend's thousands.
    let f = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    match s {
        None => "-".into(),
        Some((m, _, _)) if runs == 1 => f(m),
        Some((m, lo, hi)) => format!("{} ({}-{})", f(m), f(lo), f(hi)),
    }
}

struct Table {
    markdown: bool,
}

impl Table {
    fn row(&self, first: &str, cells: &[String]) {
        if self.markdown {
            println!("| {first} | {} |", cells.join(" | "));
        } else {
            print!("{first:<18}");
            for cell in cells {
                print!(" {cell:>17}");
            }
            println!();
        }
    }

    fn rule(&self, columns: usize) {
        if self.markdown {
            println!("|---|{}", "---:|".repeat(columns));
        }
    }
}

fn main() -> ExitCode {
    let mut markdown = false;
    let mut dirs = Vec::new();
    for arg in env::args().skip(1) {
        match arg.as_str() {
            "--markdown" => markdown = true,
            "-h" | "--help" => {
                eprintln!("usage: bench-ratios [--markdown] [CRITERION_DIR...]");
                return ExitCode::SUCCESS;
            }
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        dirs.push(default_dir());
    }
    for dir in &dirs {
        if !dir.is_dir() {
            eprintln!(
                "no criterion results in {}: run `cargo bench -p readiness-bench --bench pollers` first",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let names = row_names();
    let runs: Vec<Run> = dirs.iter().map(|d| load(d, &names)).collect();
    let table = Table { markdown };
    let mut misses = Vec::new();

    // Times and ratio to the faster peer.
    let mut header: Vec<String> = LIBS.iter().map(|l| l.to_string()).collect();
    header.push("ratio".into());
    table.row("benchmark", &header);
    table.rule(header.len());
    for (r, name) in names.iter().enumerate() {
        let mut cells: Vec<String> = (0..LIBS.len())
            .map(|l| fmt_time(median(runs.iter().filter_map(|run| run[r][l]).collect())))
            .collect();
        let ratios: Vec<(f64, &str)> = runs.iter().filter_map(|run| peer_ratio(&run[r])).collect();
        let ratio = summary(ratios.iter().map(|x| x.0).collect());
        let mut cell = fmt_ratio(ratio, runs.len());
        if let Some((m, _, _)) = ratio {
            // The peer that was faster in most runs.
            let mio = ratios.iter().filter(|x| x.1 == "mio").count();
            let peer = if 2 * mio > ratios.len() {
                "mio"
            } else {
                "polling"
            };
            cell = format!("{cell} vs {peer}");
            if m > 1.0 {
                misses.push(name.clone());
                cell.push_str(" MISS");
            }
        }
        cells.push(cell);
        table.row(name, &cells);
    }

    // Flatness in N.
    println!();
    let mut header: Vec<String> = LIBS.iter().map(|l| l.to_string()).collect();
    header.insert(0, "N=19,000 / N=1".into());
    table.row(&header[0], &header[1..]);
    table.rule(LIBS.len());
    for group in WAIT_GROUPS {
        let small = names
            .iter()
            .position(|n| *n == format!("{group}/{}", SIZES[0]));
        let large = names
            .iter()
            .position(|n| *n == format!("{group}/{}", SIZES[2]));
        let (Some(small), Some(large)) = (small, large) else {
            continue;
        };
        let cells: Vec<String> = (0..LIBS.len())
            .map(|l| {
                let per_run = runs
                    .iter()
                    .filter_map(|run| Some(run[large][l]? / run[small][l]?))
                    .collect();
                let s = summary(per_run);
                if l == 0
                    && let Some((m, _, _)) = s
                    && m >= FLAT
                {
                    misses.push(format!("{group} N=19,000/N=1"));
                }
                fmt_ratio(s, runs.len())
            })
            .collect();
        table.row(group, &cells);
    }

    println!();
    println!(
        "runs: {}; targets for {SUBJECT}: no benchmark slower than the faster of polling and mio, \
         wait N=19,000/N=1 < {FLAT}",
        runs.len()
    );
    if misses.is_empty() {
        println!("all targets met");
    } else {
        println!("missed: {}", misses.join(", "));
    }
    ExitCode::SUCCESS
}

//! `readiness bench` run as a program, with small settings: its JSON and
//! its table report a run with round trips and no failure, `--svg` writes
//! a chart, and bad input gives one line on stderr and a non-zero exit.

use std::process::{Command, Output};

fn readiness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_readiness"))
        .args(args)
        .output()
        .expect("run the readiness binary")
}

/// A short bench: 4 connections, 1 s measured after 0.2 s warm-up.
fn small_bench(extra: &[&str]) -> Output {
    let mut args = vec![
        "bench",
        "--connections",
        "4",
        "--duration",
        "1",
        "--warmup",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let out = readiness(&args);
    assert!(
        out.status.success(),
        "{args:?}: {:?}; stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn bad_input(args: &[&str], code: i32, needle: &str) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let out = readiness(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{all:?}: stderr {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{all:?}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{all:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("readiness: "), "{stderr}");
    assert!(out.stdout.is_empty(), "{all:?}: printed a report");
}

#[test]
fn json_reports_round_trips_and_no_failure() {
    let out = small_bench(&["--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(r["connections"], 4, "{r}");
    assert_eq!(r["size"], 64, "{r}");
    assert_eq!(r["depth"], 1, "{r}");
    assert_eq!(r["validation_failures"], 0, "{r}");
    assert_eq!(r["connect_errors"], 0, "{r}");
    assert_eq!(r["disconnects"], 0, "{r}");
    let round_trips = r["round_trips"].as_u64().unwrap();
    assert!(round_trips > 0, "{r}");
    assert!(r["round_trips_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let (p50, p99, max) = (
        r["p50_us"].as_f64().unwrap(),
        r["p99_us"].as_f64().unwrap(),
        r["max_us"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    // The server echoed at least what the client counted, both ways.
    assert_eq!(r["server"]["accepted"], 4, "{r}");
    let bytes_out = r["server"]["bytes_out"].as_u64().unwrap();
    assert!(bytes_out >= round_trips * 64, "{r}");
    assert_eq!(r["server"]["bytes_in"], r["server"]["bytes_out"], "{r}");
    // Allocations are counted (whole process), CPU time where the OS
    // has a thread clock.
    assert!(r["allocations_per_round_trip"].as_f64().is_some(), "{r}");
    if cfg!(unix) {
        let cpu = r["server_cpu_us_per_round_trip"].as_f64().unwrap();
        assert!(cpu > 0.0, "{r}");
    } else {
        assert!(r["server_cpu_us_per_round_trip"].is_null(), "{r}");
    }
    if cfg!(target_os = "linux") && std::thread::available_parallelism().unwrap().get() >= 2 {
        let p = &r["pinned"];
        assert_ne!(p["server_cpu"], p["client_cpu"], "{r}");
    }
}

#[test]
fn table_names_every_figure() {
    let out = small_bench(&["--size", "100", "--depth", "2"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("4 connections, 100 B messages, depth 2"),
        "{text}"
    );
    for row in [
        "round trips/s",
        "MB/s (each way)",
        "latency p50",
        "latency p99",
        "latency p99.9",
        "latency max",
        "server CPU per round trip",
        "allocations per round trip",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(row)),
            "no row {row:?}: {text}"
        );
    }
    let value = |row: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.strip_prefix(row).is_some_and(|r| r.starts_with("  ")))
            .unwrap_or_else(|| panic!("no row {row:?}: {text}"));
        line[row.len()..].trim().to_string()
    };
    assert_eq!(value("validation failures"), "0", "{text}");
    assert_eq!(value("connect errors"), "0", "{text}");
    assert_eq!(value("connections lost"), "0", "{text}");
    assert!(value("round trips").parse::<u64>().unwrap() > 0, "{text}");
    assert!(text.contains("ok: every echoed byte checked"), "{text}");
}

#[test]
fn svg_chart_is_written() {
    let dir = std::env::temp_dir().join(format!("readiness-bench-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("latency.svg");
    let path_s = path.to_str().unwrap();
    small_bench(&["--json", "--svg", path_s]);
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("percentile"), "no axis label");
    assert!(svg.trim_end().ends_with("</svg>"));
}

#[test]
fn bad_input_is_one_line() {
    bad_input(&["--connections", "0"], 2, "--connections");
    bad_input(&["--size", "0"], 2, "--size");
    bad_input(&["--depth", "0"], 2, "--depth");
    bad_input(&["--duration", "0"], 2, "must be longer than 0");
    bad_input(&["--duration", "soon"], 2, "not a duration");
    bad_input(&["--warmup=-1"], 2, "not a duration");
    bad_input(&["--backend", "nope"], 1, "unknown backend 'nope'");
    let absent = if cfg!(windows) { "epoll" } else { "afd" };
    bad_input(&["--backend", absent], 1, "not built for this OS");
    bad_input(&["--frobnicate"], 2, "--frobnicate");
    let missing = std::env::temp_dir()
        .join("readiness-no-such-dir")
        .join("x.svg");
    bad_input(&["--svg", missing.to_str().unwrap()], 1, "--svg");
}

#[cfg(unix)]
#[test]
fn more_connections_than_descriptors_is_refused_up_front() {
    use rustix::process::{Resource, getrlimit};
    // Needs a hard limit below what 50,000 connections take (2 each).
    if getrlimit(Resource::Nofile)
        .maximum
        .is_none_or(|max| max >= 100_064)
    {
        return;
    }
    bad_input(&["--connections", "50000"], 1, "descriptors");
}

//! `readiness bench`: the project's main job. A net-layer echo server (one
//! loop thread) and the echo-client load generator in this one process on
//! loopback; a progress bar while it runs; then a table (or JSON) of round
//! trips/s, MB/s, latency percentiles, the server thread's CPU time and the
//! allocations per round trip, failures. `--svg` draws the latency curve.

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use readiness_net::{Config, LoopHandle};
use serde::Serialize;

use crate::cpu;
use crate::echo_client::{self, EchoClientArgs, Observer, Phase, Report};

/// The options of `readiness bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Poller backend of the server and the client (epoll, poll, kqueue,
    /// afd, afd-direct); default: the OS default.
    #[arg(long)]
    pub backend: Option<String>,
    /// Client connections (each costs two descriptors in this process).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub connections: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub size: u64,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub depth: u64,
    /// Measured interval, e.g. 5, 2.5s, 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration_nonzero)]
    pub duration: Duration,
    /// Warm-up before the measured interval (not recorded).
    #[arg(long, default_value = "1s", value_parser = echo_client::parse_duration)]
    pub warmup: Duration,
    /// Print the results as JSON on stdout (no table).
    #[arg(long)]
    pub json: bool,
    /// Write a latency-by-percentile chart (SVG) to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

fn parse_duration_nonzero(s: &str) -> Result<Duration, String> {
    let d = echo_client::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("'{s}': must be longer than 0"));
    }
    Ok(d)
}

/// Where the two threads ran.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pinning {
    /// The server loop thread's CPU.
    pub server_cpu: usize,
    /// The client thread's CPU.
    pub client_cpu: usize,
}

/// The server's counters over the whole run.
#[derive(Debug, Default, Serialize)]
pub struct ServerCounts {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused.
    pub refused: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Writes refused (queue full).
    pub writes_refused: u64,
}

/// What `readiness bench` measured: the client's report (its figures at the
/// top level of the JSON, its server CPU fields from the server loop
/// thread's clock) and what only the bench sees.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// The client's report; `server_cpu_s` and
    /// `server_cpu_us_per_round_trip` are the server loop thread's CPU time
    /// over the measured interval (`None` where the thread's clock is not
    /// available).
    #[serde(flatten)]
    pub client: Report,
    /// Heap allocations in the measured interval, whole process (server,
    /// client and progress bar together).
    pub allocations: u64,
    /// Heap reallocations in the measured interval, whole process.
    pub reallocations: u64,
    /// Allocations per round trip (whole process).
    pub allocations_per_round_trip: f64,
    /// The CPUs the server and client threads were pinned to (`None`:
    /// fewer than two CPUs, or not Linux).
    pub pinned: Option<Pinning>,
    /// The server's counters.
    pub server: ServerCounts,
}

impl BenchReport {
    /// Whether the run failed: a wrong byte, a failed or lost connection.
    pub fn failed(&self) -> bool {
        self.client.failed()
    }

    fn print_table(&self, out: &mut impl Write) -> io::Result<()> {
        let na = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.2} {unit}"),
            None => "n/a".to_string(),
        };
        let pinned = match self.pinned {
            Some(p) => format!(
                "server thread on CPU {}, client on CPU {}",
                p.server_cpu, p.client_cpu
            ),
            None => "threads not pinned".to_string(),
        };
        writeln!(
            out,
            "readiness bench: echo over loopback, net-layer server (1 loop) and echo-client in one process, backend {}",
            self.client.backend
        )?;
        writeln!(
            out,
            "{} connections, {} B messages, depth {}; {:.2} s measured after {:.2} s warm-up; {pinned}",
            self.client.connections,
            self.client.size,
            self.client.depth,
            self.client.elapsed_s,
            self.client.warmup_s
        )?;
        writeln!(out)?;
        let rows: Vec<(&str, String)> = vec![
            (
                "round trips/s",
                format!("{:.0}", self.client.round_trips_per_s),
            ),
            ("round trips", self.client.round_trips.to_string()),
            ("MB/s (each way)", format!("{:.2}", self.client.mb_per_s)),
            ("latency p50", format!("{:.1} µs", self.client.p50_us)),
            ("latency p99", format!("{:.1} µs", self.client.p99_us)),
            ("latency p99.9", format!("{:.1} µs", self.client.p999_us)),
            ("latency max", format!("{:.1} µs", self.client.max_us)),
            (
                "server CPU per round trip",
                na(self.client.server_cpu_us_per_round_trip, "µs"),
            ),
            (
                "allocations per round trip",
                format!("{:.3} (whole process)", self.allocations_per_round_trip),
            ),
            (
                "validation failures",
                self.client.validation_failures.to_string(),
            ),
            ("connect errors", self.client.connect_errors.to_string()),
            ("connections lost", self.client.disconnects.to_string()),
        ];
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        writeln!(out, "{:<width$}  value", "metric")?;
        writeln!(out, "{}  {}", "-".repeat(width), "-".repeat(22))?;
        for (k, v) in &rows {
            writeln!(out, "{k:<width$}  {v}")?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "server: {} accepted, {} refused, {} bytes in, {} bytes out",
            self.server.accepted, self.server.refused, self.server.bytes_in, self.server.bytes_out
        )?;
        if let Some(e) = &self.client.first_connect_error {
            writeln!(out, "first connect error: {e}")?;
        }
        if self.failed() {
            writeln!(
                out,
                "FAILED: {} validation failures, {} connect errors, {} connections lost",
                self.client.validation_failures,
                self.client.connect_errors,
                self.client.disconnects
            )?;
        } else {
            writeln!(out, "ok: every echoed byte checked")?;
        }
        Ok(())
    }
}

/// Runs `f` on the server's loop thread and waits for its result.
fn on_loop<R: Send + 'static>(
    handle: &LoopHandle,
    f: impl FnOnce() -> R + Send + 'static,
) -> io::Result<R> {
    let (tx, rx) = mpsc::channel();
    handle.post(move |_ctx| {
        let _ = tx.send(f());
    })?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the server loop did not answer"))
}

/// The progress bar on stderr, moved on by a ticker thread (hidden, and no
/// thread, when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
    /// Server bytes out when the current phase started (for the rate shown).
    base: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    fn new(server: LoopHandle, size: u64) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let base = Arc::new(AtomicU64::new(0));
        if !io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
                base,
                stop,
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{prefix:>10} {spinner} {msg}") {
            bar.set_style(style);
        }
        bar.set_prefix("starting");
        let ticker = {
            let (bar, stop, base) = (bar.clone(), stop.clone(), base.clone());
            std::thread::Builder::new()
                .name("bench-progress".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let t = bar.elapsed();
                        if bar.length().is_some_and(|l| l > 0) {
                            bar.set_position(t.as_millis() as u64);
                            let echoed = server
                                .stats()
                                .bytes_out
                                .saturating_sub(base.load(Ordering::Relaxed));
                            let rate = echoed as f64 / size as f64 / t.as_secs_f64().max(1e-3);
                            bar.set_message(format!("{rate:.0} round trips/s"));
                        }
                        bar.tick();
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .ok()
        };
        Progress {
            bar,
            base,
            stop,
            ticker,
        }
    }

    fn phase(&self, name: &str, len: Option<Duration>, server_bytes_out: u64) {
        // Length 0 first: the ticker leaves the bar alone while it changes.
        self.bar.set_length(0);
        self.base.store(server_bytes_out, Ordering::Relaxed);
        self.bar.reset();
        let style = match len {
            Some(_) => ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {elapsed:>3}/{duration:3} {msg}",
            ),
            None => ProgressStyle::with_template("{prefix:>10} {spinner} {msg}"),
        };
        self.bar.set_prefix(name.to_string());
        self.bar.set_message("");
        if let Some(d) = len {
            self.bar.set_length(d.as_millis().max(1) as u64);
        }
        // Last: a bar style drawn with length 0 would flash a full bar.
        if let Ok(style) = style {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

/// Follows the client's phases: the progress bar, and the server thread's
/// CPU time and the process's allocations at the start and end of the
/// measured interval.
struct BenchObserver {
    server: LoopHandle,
    progress: Progress,
    connections: u64,
    cpu: [Option<Duration>; 2],
    allocs: [stats_alloc::Stats; 2],
    error: Option<io::Error>,
}

impl BenchObserver {
    fn server_cpu(&mut self) -> Option<Duration> {
        match on_loop(&self.server, cpu::thread_cpu_time) {
            Ok(t) => t,
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }
}

impl Observer for BenchObserver {
    fn phase(&mut self, phase: Phase) {
        let out = self.server.stats().bytes_out;
        match phase {
            Phase::Connecting => self.progress.phase("connecting", None, out),
            Phase::Warmup(d) => self.progress.phase("warm-up", Some(d), out),
            Phase::Measuring(d) => {
                self.progress.phase("measuring", Some(d), out);
                self.allocs[0] = crate::GLOBAL.stats();
                self.cpu[0] = self.server_cpu();
            }
            Phase::Done => {
                self.cpu[1] = self.server_cpu();
                self.allocs[1] = crate::GLOBAL.stats();
                self.progress.phase("finishing", None, out);
            }
        }
        if phase == Phase::Connecting {
            self.progress
                .bar
                .set_message(format!("{} connections", self.connections));
        }
    }
}

/// Runs the benchmark; returns the report and the latency histogram.
pub fn run(args: &BenchArgs) -> io::Result<(BenchReport, Histogram<u64>)> {
    let backend = crate::backend_by_name(args.backend.as_deref())?;
    crate::check_backend(backend)?;
    // Both ends of every connection are in this process, and the poller,
    // the loop and the standard streams need a few more.
    let needed = 2 * args.connections + 64;
    if let Some(limit) = crate::raise_fd_limit()
        && needed > limit
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--connections {} needs about {needed} descriptors (both ends are in this process); the limit is {limit} (ulimit -n)",
                args.connections
            ),
        ));
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = crate::echo_server::start(loopback, 1, Config::new().backend(backend))
        .map_err(|e| io::Error::new(e.kind(), format!("starting the echo server: {e}")))?;
    let handle = server.handles()[0].clone();

    // Server on the first allowed CPU, client (this thread) on the second.
    let cpus = cpu::allowed_cpus();
    let mut pinned = None;
    if let [s, c, ..] = cpus[..] {
        let server_pin = on_loop(&handle, move || cpu::pin_current_thread(s))?;
        match server_pin.and_then(|()| cpu::pin_current_thread(c)) {
            Ok(()) => {
                pinned = Some(Pinning {
                    server_cpu: s,
                    client_cpu: c,
                })
            }
            Err(e) => tracing::warn!("pinning the threads: {e}"),
        }
    }

    let client_args = EchoClientArgs {
        addr: server.local_addr(),
        connections: args.connections,
        size: args.size,
        depth: args.depth,
        duration: args.duration,
        warmup: args.warmup,
        round_trips: None,
        idle: 0,
        local_addr: Vec::new(),
        backend: args.backend.clone(),
        connect_timeout: Duration::from_secs(10),
        server_pid: None,
        pause: false,
        json: false,
    };
    let mut observer = BenchObserver {
        progress: Progress::new(handle.clone(), args.size),
        server: handle,
        connections: args.connections,
        cpu: [None; 2],
        allocs: [stats_alloc::Stats::default(); 2],
        error: None,
    };
    let result = echo_client::run_observed(&client_args, &mut observer);
    observer.progress.finish();
    // The client's sockets are closed: a short flush is plenty.
    let stats = server.shutdown(Duration::from_secs(1));
    let (client, hist) = result?;
    let stats = stats.map_err(|e| io::Error::new(e.kind(), format!("echo server: {e}")))?;
    if let Some(e) = observer.error {
        return Err(e);
    }

    let server_cpu_s = match observer.cpu {
        [Some(a), Some(b)] => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let [a0, a1] = observer.allocs;
    let allocations = a1.allocations.saturating_sub(a0.allocations) as u64;
    let reallocations = a1.reallocations.saturating_sub(a0.reallocations) as u64;
    let round_trips = client.round_trips;
    let per_rt = |v: f64| {
        if round_trips > 0 {
            v / round_trips as f64
        } else {
            0.0
        }
    };
    let mut client = client;
    client.server_cpu_s = server_cpu_s;
    client.server_cpu_us_per_round_trip = server_cpu_s
        .filter(|_| round_trips > 0)
        .map(|s| per_rt(s * 1e6));
    let report = BenchReport {
        allocations,
        reallocations,
        allocations_per_round_trip: per_rt(allocations as f64),
        pinned,
        server: ServerCounts {
            accepted: stats.connections_accepted,
            refused: stats.connections_refused,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            writes_refused: stats.writes_refused,
        },
        client,
    };
    Ok((report, hist))
}

/// Draws latency (µs, log scale) by percentile (0 to 99.99...% on a scale
/// of nines) as an SVG file.
fn write_svg(path: &Path, report: &BenchReport, hist: &Histogram<u64>) -> io::Result<()> {
    use plotters::prelude::*;
    if hist.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no round trip was measured",
        ));
    }
    // Nines: x = -log10(1 - q); as far as the samples reach.
    let max_nines = (hist.len() as f64).log10().clamp(1.0, 6.0);
    let steps = 300;
    let points: Vec<(f64, f64)> = (0..=steps)
        .map(|k| {
            let x = max_nines * k as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            (x, hist.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    let lo = points.first().map_or(1.0, |p| p.1).max(0.001) * 0.8;
    let hi = (hist.max() as f64 / 1000.0).max(lo * 2.0) * 1.25;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let caption = format!(
            "Echo round-trip latency by percentile: {} connections, {} B, depth {}, {}",
            report.client.connections,
            report.client.size,
            report.client.depth,
            report.client.backend
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_nines, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(max_nines.floor() as usize + 1)
            .x_label_formatter(&|x| {
                let q = 100.0 * (1.0 - 10f64.powf(-x));
                let digits = (x.round() as usize).saturating_sub(2);
                format!("{q:.digits$}%")
            })
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .draw()?;
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))?;
        for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            let x = -(1.0f64 - q).log10();
            if x > max_nines {
                continue;
            }
            let y = hist.value_at_quantile(q) as f64 / 1000.0;
            chart.draw_series([Circle::new((x, y), 4, RED.filled())])?;
            chart.draw_series([Text::new(
                format!("{name} {y:.0} µs"),
                (x, y * 1.15),
                ("sans-serif", 14),
            )])?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| io::Error::other(format!("writing {}: {e}", path.display())))
}

/// Runs `readiness bench` and prints its results; `Ok(false)` if the run
/// failed (validation failures, failed or lost connections).
pub fn main(args: &BenchArgs) -> io::Result<bool> {
    if let Some(path) = &args.svg {
        // Find out now, not after the run, whether the chart can be written.
        std::fs::File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("--svg {}: {e}", path.display())))?;
    }
    let (report, hist) = run(args)?;
    if let Some(path) = &args.svg {
        write_svg(path, &report, &hist)?;
    }
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(io::Error::other)?;
        writeln!(out)?;
    } else {
        report.print_table(&mut out)?;
        if let Some(path) = &args.svg {
            writeln!(out, "latency chart: {}", path.display())?;
        }
    }
    out.flush()?;
    Ok(!report.failed())
}

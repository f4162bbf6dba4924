//! `readiness echo-client`: a load generator that validates every echoed
//! byte.
//!
//! Three parts, so the socket side can be replaced (it is to move onto the
//! net layer of issue 6) without touching the rest:
//! - [`load`]: what each connection sends, how an echo is checked, counts
//!   and latencies, with no sockets;
//! - [`Transport`]: the socket side's interface: connect every connection,
//!   then move bytes between the sockets and [`Load`] until told to stop;
//!   [`poller::PollerTransport`] implements it on the raw `readiness::Poller`;
//! - [`run`]: the phases (connect, warm-up, measure) and the report.

pub mod load;
pub mod poller;
mod procfs;

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use load::{Budget, ConnLoad, Pattern, Stats};

/// The options of `readiness echo-client`.
#[derive(Args, Debug, Clone)]
pub struct EchoClientArgs {
    /// Server address: IP:PORT (an IPv6 address in brackets) or localhost:PORT.
    #[arg(long, value_parser = parse_addr)]
    pub addr: SocketAddr,
    /// Active connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connections: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub size: u64,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub depth: u64,
    /// Measured interval, e.g. 5, 2.5s, 500ms (with --round-trips: the
    /// longest it may take).
    #[arg(long, default_value = "5s", value_parser = parse_duration_nonzero)]
    pub duration: Duration,
    /// Warm-up before the measured interval (not recorded).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measure exactly this many round trips (over all connections) instead
    /// of a duration; the warm-up's messages are all echoed first.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub round_trips: Option<u64>,
    /// Idle connections to hold besides the active ones: each echoes one
    /// message when it connects, then stays silent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub idle: u64,
    /// Local addresses to bind connections to, round robin (comma-separated),
    /// when one source address has too few ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    pub local_addr: Vec<IpAddr>,
    /// Poller backend (epoll, poll, kqueue, afd, afd-direct); default: the
    /// OS default.
    #[arg(long)]
    pub backend: Option<String>,
    /// Give up on a connection that has not connected after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration_nonzero)]
    pub connect_timeout: Duration,
    /// The server's process id (Linux): report its CPU time over the
    /// measured interval and its resident memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Once the warm-up is over and drained, print `ready` on stderr and wait
    /// for a line on stdin; after the measured interval print `done` and
    /// wait again (for tracing the server over exactly the measured part).
    #[arg(long)]
    pub pause: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (no name lookup), and
/// refuses addresses nothing can be connected to.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.strip_prefix("localhost:") {
        Some(port) => {
            let port: u16 = port.parse().map_err(|_| format!("invalid port in '{s}'"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
        None => s.parse().map_err(|_| {
            format!("'{s}' is not an address (IP:PORT, [IPv6]:PORT or localhost:PORT)")
        })?,
    };
    if addr.port() == 0 {
        return Err(format!("'{s}': port 0 cannot be connected to"));
    }
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Err(format!(
            "'{s}': the unspecified address cannot be connected to"
        ));
    }
    if ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Err(format!("'{s}': not a unicast address"));
    }
    Ok(addr)
}

/// Parses `5`, `2.5`, `2.5s`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 5, 2.5s, 500ms)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("'{s}' is not a duration between 0 and 24 h"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_duration_nonzero(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("'{s}': must be longer than 0"));
    }
    Ok(d)
}

/// Everything the run measured; printed as text or JSON.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Server address.
    pub addr: String,
    /// Poller backend used.
    pub backend: String,
    /// Active connections asked for.
    pub connections: u64,
    /// Active connections that connected.
    pub connected: u64,
    /// Idle connections asked for.
    pub idle: u64,
    /// Idle connections that connected.
    pub idle_connected: u64,
    /// Connections that failed to connect (active and idle).
    pub connect_errors: u64,
    /// The first connect error, if any.
    pub first_connect_error: Option<String>,
    /// Connections that closed or failed after connecting.
    pub disconnects: u64,
    /// Message size.
    pub size: u64,
    /// Messages in flight per connection.
    pub depth: u64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured interval, seconds.
    pub elapsed_s: f64,
    /// Round trips in the measured interval.
    pub round_trips: u64,
    /// Round trips outside it (set-up, warm-up).
    pub unrecorded_round_trips: u64,
    /// Round trips per second.
    pub round_trips_per_s: f64,
    /// Payload MB (10^6 bytes) per second, each way.
    pub mb_per_s: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// Messages whose echo differed from what was sent.
    pub validation_failures: u64,
    /// Server CPU seconds (user + system, all threads) over the measured
    /// interval, from `/proc/PID/stat` (10 ms ticks) with `--server-pid`;
    /// in `readiness bench`, the server loop thread's own clock.
    pub server_cpu_s: Option<f64>,
    /// Server CPU µs per round trip.
    pub server_cpu_us_per_round_trip: Option<f64>,
    /// Server resident memory before connecting, KiB.
    pub server_rss_start_kib: Option<u64>,
    /// Server resident memory with every connection set up, KiB.
    pub server_rss_connected_kib: Option<u64>,
}

impl Report {
    /// Whether the run failed: a wrong byte, a failed or lost connection.
    pub fn failed(&self) -> bool {
        self.validation_failures > 0 || self.connect_errors > 0 || self.disconnects > 0
    }

    fn print_text(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "echo-client: {} connections to {} ({} connected, {} connect errors), {} idle ({} held), {} B messages, depth {}, backend {}",
            self.connections,
            self.addr,
            self.connected,
            self.connect_errors,
            self.idle,
            self.idle_connected,
            self.size,
            self.depth,
            self.backend
        )?;
        writeln!(
            out,
            "measured {:.2} s after {:.2} s warm-up: {} round trips, {:.0}/s, {:.2} MB/s each way",
            self.elapsed_s, self.warmup_s, self.round_trips, self.round_trips_per_s, self.mb_per_s
        )?;
        writeln!(
            out,
            "latency: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_round_trip) {
            writeln!(out, "server CPU: {cpu:.3} s, {per:.2} µs per round trip")?;
        }
        if let (Some(a), Some(b)) = (self.server_rss_start_kib, self.server_rss_connected_kib) {
            writeln!(out, "server RSS: {a} KiB at start, {b} KiB connected")?;
        }
        writeln!(
            out,
            "validation failures: {}, connections lost: {}",
            self.validation_failures, self.disconnects
        )?;
        if let Some(e) = &self.first_connect_error {
            writeln!(out, "first connect error: {e}")?;
        }
        Ok(())
    }
}

/// All the load: every connection's state, the shared budget and stats,
/// and the connection outcomes the transport reports.
#[derive(Debug)]
pub struct Load {
    /// The byte pattern.
    pub pattern: Pattern,
    /// Connections: `0..active` active, then the idle ones.
    pub conns: Vec<ConnLoad>,
    /// Active connections (the first ones).
    pub active: usize,
    /// Messages that may still start.
    pub budget: Budget,
    /// Counts and latencies.
    pub stats: Stats,
    connected: Vec<bool>,
    /// Active and idle connections that ever connected.
    ever_connected: (u64, u64),
    connect_errors: u64,
    first_connect_error: Option<io::Error>,
    disconnects: u64,
}

impl Load {
    /// `active` connections of `size`-byte messages, `depth` in flight, and
    /// `idle` connections that echo one message each.
    pub fn new(active: u64, idle: u64, size: u64, depth: u64) -> Load {
        let mut conns = Vec::with_capacity((active + idle) as usize);
        for c in 0..active + idle {
            let is_idle = c >= active;
            let mut conn = ConnLoad::new(c * 7, size, depth, is_idle.then_some(1));
            conn.enabled = is_idle;
            conns.push(conn);
        }
        Load {
            pattern: Pattern::new(),
            connected: vec![false; conns.len()],
            ever_connected: (0, 0),
            conns,
            active: active as usize,
            budget: Budget(None),
            stats: Stats::new(),
            connect_errors: 0,
            first_connect_error: None,
            disconnects: 0,
        }
    }

    /// The next bytes connection `i` sends (see [`ConnLoad::fill`]).
    pub fn fill(&self, i: usize, out: &mut [u8]) -> usize {
        self.conns[i].fill(&self.pattern, out, self.budget)
    }

    /// Connection `i` wrote `n` of them.
    pub fn sent(&mut self, i: usize, n: usize, now: Instant) {
        self.conns[i].sent(n, now, &mut self.budget);
    }

    /// Connection `i` read `data`.
    pub fn received(&mut self, i: usize, data: &[u8], now: Instant) {
        self.conns[i].received(data, now, &self.pattern, &mut self.stats);
    }

    /// Connection `i` connected.
    pub fn on_connected(&mut self, i: usize) {
        self.connected[i] = true;
        if i < self.active {
            self.ever_connected.0 += 1;
        } else {
            self.ever_connected.1 += 1;
        }
    }

    /// Connection `i` could not connect.
    pub fn on_connect_failed(&mut self, i: usize, e: io::Error) {
        tracing::debug!(conn = i, "connect failed: {e}");
        self.connect_errors += 1;
        self.first_connect_error.get_or_insert(e);
        // It will never send: let the phases go on without it.
        self.conns[i].enabled = false;
    }

    /// Connection `i` was closed by the peer or failed after connecting.
    pub fn on_lost(&mut self, i: usize, why: &str) {
        tracing::warn!(conn = i, "connection lost: {why}");
        self.disconnects += 1;
        self.conns[i].enabled = false;
        self.connected[i] = false;
    }

    /// Whether connection `i` is connected.
    pub fn is_connected(&self, i: usize) -> bool {
        self.connected[i]
    }

    fn in_flight(&self) -> u64 {
        self.conns
            .iter()
            .zip(&self.connected)
            .filter(|(_, up)| **up)
            .map(|(c, _)| c.in_flight())
            .sum()
    }

    /// Whether the set-up is over: idle connections that connected got
    /// their echo.
    pub fn idle_settled(&self) -> bool {
        self.conns[self.active..]
            .iter()
            .zip(&self.connected[self.active..])
            .all(|(c, up)| !*up || c.finished())
    }
}

/// The socket side of the client.
pub trait Transport {
    /// The backend or stack in use, for the report.
    fn name(&self) -> String;
    /// Connects every connection of `load` (at most `timeout` each) and
    /// moves bytes until every connection has connected or failed and
    /// [`Load::idle_settled`] holds, or `deadline` passes (an error).
    fn connect(&mut self, load: &mut Load, timeout: Duration, deadline: Instant) -> io::Result<()>;
    /// Moves bytes between the connected sockets and `load` (first offering
    /// every connection a chance to send, since budgets or the enabled flags
    /// may have changed) until `done(load)` or `deadline`.
    fn pump(
        &mut self,
        load: &mut Load,
        deadline: Instant,
        done: &dyn Fn(&Load) -> bool,
    ) -> io::Result<()>;
}

fn wait_for_line(what: &str) -> io::Result<()> {
    eprintln!("{what}");
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

/// The phases of a run, as an [`Observer`] sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting (and the idle connections' one echo).
    Connecting,
    /// The warm-up starts; it lasts this long.
    Warmup(Duration),
    /// The measured interval starts now; it lasts this long at most.
    Measuring(Duration),
    /// The measured interval ended now.
    Done,
}

/// What an in-process caller (`readiness bench`) is told while the client
/// runs, so it can measure its server over exactly the measured interval
/// and show progress. Called on the client's thread, between its turns.
pub trait Observer {
    /// A phase starts.
    fn phase(&mut self, phase: Phase);
}

struct NoObserver;

impl Observer for NoObserver {
    fn phase(&mut self, _: Phase) {}
}

/// Runs the client; returns the report (the caller prints it).
pub fn run(args: &EchoClientArgs) -> io::Result<Report> {
    run_observed(args, &mut NoObserver).map(|(report, _)| report)
}

/// Runs the client in this process, telling `observer` about the phases;
/// returns the report and the measured interval's latency histogram
/// (nanoseconds).
pub fn run_observed(
    args: &EchoClientArgs,
    observer: &mut dyn Observer,
) -> io::Result<(Report, Histogram<u64>)> {
    let backend = crate::backend_by_name(args.backend.as_deref())?;
    if args.server_pid.is_some() && !procfs::AVAILABLE {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "--server-pid needs /proc (Linux)",
        ));
    }
    let pid = args.server_pid;
    if let Some(pid) = pid {
        procfs::cpu_seconds(pid)
            .map_err(|e| io::Error::new(e.kind(), format!("server process {pid}: {e}")))?;
    }
    let _ = crate::raise_fd_limit();
    let mut transport = poller::PollerTransport::new(backend, args.addr, &args.local_addr)?;
    let mut load = Load::new(args.connections, args.idle, args.size, args.depth);
    let mut report = Report {
        addr: args.addr.to_string(),
        backend: transport.name(),
        connections: args.connections,
        idle: args.idle,
        size: args.size,
        depth: args.depth,
        ..Report::default()
    };
    report.server_rss_start_kib = pid.and_then(|p| procfs::rss_kib(p).ok());

    // Connect (and the idle connections' one echo).
    observer.phase(Phase::Connecting);
    let setup_deadline = Instant::now() + args.connect_timeout + Duration::from_secs(30);
    transport.connect(&mut load, args.connect_timeout, setup_deadline)?;
    (report.connected, report.idle_connected) = load.ever_connected;
    report.connect_errors = load.connect_errors;
    report.first_connect_error = load.first_connect_error.as_ref().map(|e| e.to_string());
    if report.connected == 0 && load.disconnects == 0 {
        let e = load
            .first_connect_error
            .take()
            .unwrap_or_else(|| io::Error::other("no connection"));
        return Err(io::Error::new(
            e.kind(),
            format!("cannot connect to {}: {e}", args.addr),
        ));
    }
    report.server_rss_connected_kib = pid.and_then(|p| procfs::rss_kib(p).ok());

    // Warm-up.
    for i in 0..load.active {
        load.conns[i].enabled = load.is_connected(i);
    }
    if !args.warmup.is_zero() {
        observer.phase(Phase::Warmup(args.warmup));
        transport.pump(&mut load, Instant::now() + args.warmup, &|_| false)?;
    }
    if args.round_trips.is_some() || args.pause {
        // Let what is in flight come back, so the measured part starts clean.
        load.budget = Budget(Some(0));
        transport.pump(&mut load, Instant::now() + Duration::from_secs(30), &|l| {
            l.in_flight() == 0
        })?;
        if load.in_flight() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the warm-up's messages were not echoed within 30 s",
            ));
        }
    }
    if args.pause {
        wait_for_line("ready")?;
    }

    // The measured interval.
    load.budget = Budget(args.round_trips);
    load.stats.recording = true;
    observer.phase(Phase::Measuring(args.duration));
    let cpu0 = pid.map(procfs::cpu_seconds).transpose()?;
    let t0 = Instant::now();
    let target = args.round_trips;
    transport.pump(&mut load, t0 + args.duration, &move |l| {
        target.is_some() && l.budget == Budget(Some(0)) && l.in_flight() == 0
    })?;
    let elapsed = t0.elapsed();
    observer.phase(Phase::Done);
    let cpu1 = pid.map(procfs::cpu_seconds).transpose()?;
    load.stats.recording = false;
    load.budget = Budget(Some(0));
    if let Some(n) = target
        && load.stats.round_trips < n
    {
        tracing::warn!(
            "{} of {n} round trips done within --duration {:?}",
            load.stats.round_trips,
            args.duration
        );
    }
    if args.pause {
        wait_for_line("done")?;
    }

    let stats = &load.stats;
    let secs = elapsed.as_secs_f64();
    let us = |q: f64| stats.hist.value_at_quantile(q) as f64 / 1000.0;
    report.warmup_s = args.warmup.as_secs_f64();
    report.elapsed_s = secs;
    report.round_trips = stats.round_trips;
    report.unrecorded_round_trips = stats.unrecorded_round_trips;
    report.round_trips_per_s = stats.round_trips as f64 / secs;
    report.mb_per_s = (stats.round_trips * args.size) as f64 / secs / 1e6;
    if stats.round_trips > 0 {
        report.p50_us = us(0.50);
        report.p99_us = us(0.99);
        report.p999_us = us(0.999);
        report.max_us = stats.hist.max() as f64 / 1000.0;
    }
    report.validation_failures = stats.validation_failures;
    report.disconnects = load.disconnects;
    report.connect_errors = load.connect_errors;
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        report.server_cpu_s = Some(b - a);
        if stats.round_trips > 0 {
            report.server_cpu_us_per_round_trip = Some((b - a) * 1e6 / stats.round_trips as f64);
        }
    }
    let hist = std::mem::replace(
        &mut load.stats.hist,
        Histogram::new(1).map_err(io::Error::other)?,
    );
    Ok((report, hist))
}

/// Runs the client and prints the report; `Ok(false)` if the run failed
/// (validation failures, failed or lost connections).
pub fn main(args: &EchoClientArgs) -> io::Result<bool> {
    let report = run(args)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(io::Error::other)?;
        writeln!(out)?;
    } else {
        report.print_text(&mut out)?;
    }
    out.flush()?;
    Ok(!report.failed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("127.0.0.1:80").unwrap().port(), 80);
        assert_eq!(
            parse_addr("localhost:7").unwrap(),
            "127.0.0.1:7".parse().unwrap()
        );
        assert!(parse_addr("[::1]:9").is_ok());
        for bad in ["", "foo", "127.0.0.1", "127.0.0.1:99999", "localhost:x"] {
            assert!(parse_addr(bad).unwrap_err().contains(bad), "{bad}");
        }
        assert!(parse_addr("127.0.0.1:0").unwrap_err().contains("port 0"));
        assert!(
            parse_addr("0.0.0.0:80")
                .unwrap_err()
                .contains("unspecified")
        );
        assert!(parse_addr("224.0.0.1:80").unwrap_err().contains("unicast"));
        assert!(
            parse_addr("255.255.255.255:80")
                .unwrap_err()
                .contains("unicast")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("1e9").is_err());
        assert!(
            parse_duration_nonzero("0")
                .unwrap_err()
                .contains("longer than 0")
        );
    }
}

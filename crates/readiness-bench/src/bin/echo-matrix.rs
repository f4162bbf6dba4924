//! `echo-matrix`: runs the echo benchmark's matrix (issue 7) with the
//! `echo-peer` servers and `readiness echo-client`, and writes every raw
//! result to `OUT/results.json` (default `target/bench-echo/`), rewritten
//! after each run so an interrupted matrix keeps what it measured. The
//! markdown table and the chart come from `echo-report`. Normally started by
//! `scripts/bench-echo.sh`, which builds both binaries in release mode and
//! installs strace.
//!
//! Three parts, each optional:
//! - **timed**: for each repetition, for each workload, every server in
//!   turn (servers interleaved): server pinned to core 0, client to core 1
//!   (`taskset`), `--warmup` then `--duration` seconds; the client reports
//!   round trips, latencies and the server's CPU time over the measured
//!   interval only (`/proc/PID/stat`).
//! - **syscalls**: for each workload and server, `strace -c -f -p PID` is
//!   attached after the warm-up and detached before the client closes,
//!   around exactly `--strace-round-trips` round trips (the client's
//!   `--pause` protocol), so set-up and tear-down are not counted.
//! - **scale**: 10 active connections with 0 and with `--scale-idle` idle
//!   ones (spread over four 127.x.y.z source addresses); the server's
//!   resident memory once all are set up, and the active ones' latencies.

#![deny(unsafe_code)]
#![deny(missing_docs)]

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use readiness_bench::echo::Server;
use readiness_bench::results::{Cell, ClientReport, Results, ScaleRun, SyscallCount, Workload};

#[derive(Parser, Debug)]
#[command(name = "echo-matrix", about = "Runs the echo benchmark matrix")]
struct Args {
    /// Servers, comma-separated (default: every server built here).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<Server>,
    /// Workloads as CONNECTIONS:SIZE:DEPTH, comma-separated (default: the
    /// six of issue 7).
    #[arg(long, value_delimiter = ',', value_parser = parse_workload)]
    workloads: Vec<Workload>,
    /// Repetitions of each timed cell.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Warm-up seconds per cell (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Round trips counted per server and workload with each tool of
    /// `--syscall-tools` (0: no syscall counts).
    #[arg(long, default_value_t = 20_000)]
    strace_round_trips: u64,
    /// How system calls are counted: perf (tracepoint counters, unperturbed),
    /// strace (`strace -c -f`, as issue 7 asks), or both.
    #[arg(long, value_delimiter = ',', default_value = "perf,strace")]
    syscall_tools: Vec<String>,
    /// Skip the timed matrix.
    #[arg(long)]
    no_timed: bool,
    /// Run the scale part.
    #[arg(long)]
    scale: bool,
    /// Idle connections in the scale part.
    #[arg(long, default_value_t = 19_000)]
    scale_idle: u64,
    /// Repetitions of each scale run.
    #[arg(long, default_value_t = 2)]
    scale_reps: u32,
    /// Output directory.
    #[arg(long, default_value = "target/bench-echo")]
    out: PathBuf,
    /// The echo-peer binary (default: next to this one).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The readiness binary (default: next to this one).
    #[arg(long)]
    client: Option<PathBuf>,
    /// Do not pin server and client to cores 0 and 1.
    #[arg(long)]
    no_pin: bool,
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    let parts: Vec<u64> = s
        .split(':')
        .map(|p| {
            p.parse()
                .map_err(|_| format!("'{s}': expected CONNECTIONS:SIZE:DEPTH"))
        })
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [c, size, d] if c > 0 && size > 0 && d > 0 => Ok(Workload::new(c, size, d)),
        _ => Err(format!(
            "'{s}': expected CONNECTIONS:SIZE:DEPTH, each above 0"
        )),
    }
}

struct Env {
    peer: PathBuf,
    client: PathBuf,
    pin: bool,
    /// Runs so far: picks each run's source addresses, so TIME_WAIT ports of
    /// one run never crowd the next (and 127.0.0.1 is left to others).
    runs: u32,
}

impl Env {
    fn pinned(&self, core: u32, program: &Path) -> Command {
        if self.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Four source addresses no earlier run of this matrix used:
    /// 127.1.R.1-4 (R < 256), then 127.2.R.1-4, ...
    fn local_addrs(&mut self) -> String {
        self.runs += 1;
        let r = self.runs;
        let (hi, lo) = (1 + r / 256, r % 256);
        (1..=4)
            .map(|k| format!("127.{hi}.{lo}.{k}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A running server: killed (stdin closed, then SIGKILL) when dropped.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: String,
}

impl Peer {
    fn start(env: &Env, server: Server) -> io::Result<Peer> {
        let mut child = env
            .pinned(0, &env.peer)
            .args(["--server", server.name(), "--addr", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let addr = line.trim().to_string();
        if addr.is_empty() {
            let _ = child.kill();
            return Err(io::Error::other(format!("{server}: no address printed")));
        }
        Ok(Peer { child, stdin, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_args(w: &Workload, peer: &Peer, duration: f64, warmup: f64) -> Vec<String> {
    vec![
        "echo-client".into(),
        "--addr".into(),
        peer.addr.clone(),
        "--connections".into(),
        w.connections.to_string(),
        "--size".into(),
        w.size.to_string(),
        "--depth".into(),
        w.depth.to_string(),
        "--duration".into(),
        format!("{duration}"),
        "--warmup".into(),
        format!("{warmup}"),
        "--server-pid".into(),
        peer.pid().to_string(),
        "--json".into(),
    ]
}

/// Runs the client to completion (killed after `limit`); its report.
fn run_client(env: &Env, args: &[String], limit: Duration) -> io::Result<ClientReport> {
    let mut child = env
        .pinned(1, &env.client)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "client timed out"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: ClientReport = serde_json::from_slice(&out.stdout).map_err(|e| {
        io::Error::other(format!(
            "client report ({e}); status {}, stderr: {stderr}",
            out.status
        ))
    })?;
    if !out.status.success() {
        eprintln!("  client exited with {}: {}", out.status, stderr.trim());
    }
    Ok(report)
}

/// The 1-minute load average.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn save(out: &Path, results: &Results) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    let tmp = out.join("results.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(results).map_err(io::Error::other)?,
    )?;
    std::fs::rename(tmp, out.join("results.json"))
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(results: &mut Results) {
    results.date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    results.cores = thread::available_parallelism().map_or(0, |n| n.get() as u64);
    results.kernel = command_output("uname", &["-r"]);
    results.cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    results.commit = if dirty {
        format!("{commit} (dirty)")
    } else {
        commit
    };
    results.command = std::env::args().collect::<Vec<_>>().join(" ");
}

fn timed(
    env: &mut Env,
    args: &Args,
    servers: &[Server],
    workloads: &[Workload],
    results: &mut Results,
) -> io::Result<()> {
    let total = args.reps as usize * workloads.len() * servers.len();
    let mut n = 0;
    for rep in 0..args.reps {
        for w in workloads {
            for &server in servers {
                n += 1;
                let loadavg = loadavg();
                let peer = Peer::start(env, server)?;
                let mut cargs = client_args(w, &peer, args.duration, args.warmup);
                cargs.extend(["--local-addr".into(), env.local_addrs()]);
                let limit = Duration::from_secs_f64(args.duration + args.warmup + 90.0);
                match run_client(env, &cargs, limit) {
                    Ok(client) => {
                        eprintln!(
                            "[{n}/{total}] rep {rep} {} {server}: {:.0} rt/s, p99 {:.0} µs, server {:.2} µs/rt, failures {}",
                            w.id(),
                            client.round_trips_per_s,
                            client.p99_us,
                            client.server_cpu_s.unwrap_or(f64::NAN) * 1e6
                                / client.round_trips.max(1) as f64,
                            client.validation_failures
                        );
                        results.cells.push(Cell {
                            server: server.name().into(),
                            workload: *w,
                            rep,
                            loadavg,
                            client,
                        });
                    }
                    Err(e) => eprintln!("[{n}/{total}] rep {rep} {} {server}: FAILED: {e}", w.id()),
                }
                drop(peer);
                save(&args.out, results)?;
            }
        }
    }
    Ok(())
}

/// Parses `strace -c` output: (name, calls) per system call.
fn parse_strace(text: &str) -> Vec<(String, u64)> {
    let mut calls = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].starts_with('%') || f[0].starts_with('-') {
            continue;
        }
        let name = f[f.len() - 1];
        if name == "total" {
            continue;
        }
        if let Ok(n) = f[3].parse::<u64>() {
            calls.push((name.to_string(), n));
        }
    }
    calls
}

/// Lines of a child's stderr, on a channel.
fn lines(r: impl io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // perf ends each "ack\n" with a NUL, which starts the next line.
            Ok(line) if line.trim_matches(|c: char| c.is_whitespace() || c == '\0') == want => {
                return Ok(());
            }
            Ok(_) => {}
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no '{want}' line within {timeout:?}"),
                ));
            }
        }
    }
}

/// Waits until every thread of `pid` is traced (`TracerPid` set).
fn wait_traced(pid: u32, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
            let tracer = status
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .map(str::trim)
                .unwrap_or("0");
            all &= tracer != "0";
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "strace did not attach",
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `strace -c -f -p PID` around the client's measured round trips.
fn with_strace(
    args: &Args,
    server: Server,
    w: &Workload,
    peer: &Peer,
    cin: &mut ChildStdin,
    cerr: &mpsc::Receiver<String>,
) -> io::Result<Vec<(String, u64)>> {
    let mut strace: Option<Child> = None;
    let result = (|| {
        expect_line(cerr, "ready", Duration::from_secs(60))?;
        let file = args
            .out
            .join(format!("strace-{}-{}.txt", server.name(), w.id()));
        let child = strace.insert(
            Command::new("strace")
                .args(["-c", "-f", "-p", &peer.pid().to_string(), "-o"])
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_traced(peer.pid(), Duration::from_secs(10))?;
        writeln!(cin)?;
        expect_line(cerr, "done", Duration::from_secs(150))?;
        // SIGINT makes strace detach and write its summary.
        interrupt(child.id())?;
        child.wait()?;
        strace = None;
        writeln!(cin)?;
        Ok(parse_strace(&std::fs::read_to_string(&file)?))
    })();
    if let Some(mut child) = strace {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// System calls counted by name with perf (the rest is `other`).
const PERF_SYSCALLS: [&str; 19] = [
    "read",
    "recvfrom",
    "readv",
    "recvmsg",
    "write",
    "sendto",
    "writev",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "poll",
    "ppoll",
    "futex",
    "timerfd_settime",
    "ioctl",
    "accept4",
    "close",
];

fn interrupt(pid: u32) -> io::Result<()> {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -INT {pid} failed")))
    }
}

/// `perf stat` on the syscall tracepoints of the server, enabled and
/// disabled through its control FIFO (acknowledged) around the client's
/// measured round trips.
fn with_perf(
    args: &Args,
    server: Server,
    w: &Workload,
    peer: &Peer,
    cin: &mut ChildStdin,
    cerr: &mpsc::Receiver<String>,
) -> io::Result<Vec<(String, u64)>> {
    let dir = args.out.join("perf-ctl");
    std::fs::create_dir_all(&dir)?;
    let (ctl, ack) = (dir.join("ctl"), dir.join("ack"));
    for f in [&ctl, &ack] {
        let _ = std::fs::remove_file(f);
        if !Command::new("mkfifo").arg(f).status()?.success() {
            return Err(io::Error::other("mkfifo failed"));
        }
    }
    let file = args
        .out
        .join(format!("perf-{}-{}.csv", server.name(), w.id()));
    expect_line(cerr, "ready", Duration::from_secs(60))?;
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-x", ",", "-D", "-1", "--control"])
        .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
        .args(["-e", "raw_syscalls:sys_enter"]);
    for name in PERF_SYSCALLS {
        cmd.args(["-e", &format!("syscalls:sys_enter_{name}")]);
    }
    cmd.args(["-p", &peer.pid().to_string(), "-o"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut perf = cmd.spawn()?;
    let result = (|| {
        // O_RDWR: opening a FIFO this way does not wait for the other end.
        let open = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
        let mut ctl_w = open(&ctl)?;
        let acks = lines(open(&ack)?);
        writeln!(ctl_w, "enable")?;
        expect_line(&acks, "ack", Duration::from_secs(10))?;
        writeln!(cin)?;
        expect_line(cerr, "done", Duration::from_secs(150))?;
        writeln!(ctl_w, "disable")?;
        expect_line(&acks, "ack", Duration::from_secs(10))?;
        interrupt(perf.id())?;
        perf.wait()?;
        writeln!(cin)?;
        parse_perf(&std::fs::read_to_string(&file)?)
    })();
    if result.is_err() {
        let _ = perf.kill();
    }
    let _ = perf.wait();
    result
}

/// Parses `perf stat -x,` output into (name, calls), the calls not counted
/// by name as `other`.
fn parse_perf(text: &str) -> io::Result<Vec<(String, u64)>> {
    let mut total = None;
    let mut calls = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let count: u64 = f[0].trim().parse().unwrap_or(0);
        if f[2] == "raw_syscalls:sys_enter" {
            total = Some(count);
        } else if let Some(name) = f[2].strip_prefix("syscalls:sys_enter_")
            && count > 0
        {
            calls.push((name.to_string(), count));
        }
    }
    let total = total.ok_or_else(|| io::Error::other("no raw_syscalls count in perf output"))?;
    let named: u64 = calls.iter().map(|(_, n)| n).sum();
    if total > named {
        calls.push(("other".into(), total - named));
    }
    Ok(calls)
}

fn count_syscalls(
    env: &mut Env,
    args: &Args,
    tool: &str,
    server: Server,
    w: &Workload,
) -> io::Result<SyscallCount> {
    let peer = Peer::start(env, server)?;
    let mut cargs = client_args(w, &peer, 120.0, args.warmup.max(0.5));
    cargs.extend([
        "--round-trips".into(),
        args.strace_round_trips.to_string(),
        "--pause".into(),
        "--local-addr".into(),
        env.local_addrs(),
    ]);
    let mut client = env
        .pinned(1, &env.client)
        .args(&cargs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut cin = client.stdin.take().expect("piped");
    let cerr = lines(client.stderr.take().expect("piped"));
    let result = match tool {
        "strace" => with_strace(args, server, w, &peer, &mut cin, &cerr),
        "perf" => with_perf(args, server, w, &peer, &mut cin, &cerr),
        other => Err(io::Error::other(format!("unknown syscall tool '{other}'"))),
    };
    drop(cin);
    let out = client.wait_with_output()?;
    let calls = result?;
    let report: ClientReport = serde_json::from_slice(&out.stdout)
        .map_err(|e| io::Error::other(format!("client report: {e}")))?;
    drop(peer);
    Ok(SyscallCount {
        tool: tool.into(),
        server: server.name().into(),
        workload: *w,
        round_trips: report.round_trips,
        calls,
    })
}

fn syscalls(
    env: &mut Env,
    args: &Args,
    servers: &[Server],
    workloads: &[Workload],
    results: &mut Results,
) -> io::Result<()> {
    for tool in &args.syscall_tools {
        for w in workloads {
            for &server in servers {
                match count_syscalls(env, args, tool, server, w) {
                    Ok(count) => {
                        eprintln!(
                            "{tool} {} {server}: {:.3} calls per round trip over {} round trips",
                            w.id(),
                            count.per_round_trip(),
                            count.round_trips
                        );
                        results.syscalls.push(count);
                    }
                    Err(e) => eprintln!("{tool} {} {server}: FAILED: {e}", w.id()),
                }
                save(&args.out, results)?;
            }
        }
    }
    Ok(())
}

fn scale(env: &mut Env, args: &Args, servers: &[Server], results: &mut Results) -> io::Result<()> {
    let active = Workload::new(10, 64, 1);
    for rep in 0..args.scale_reps {
        for &server in servers {
            for idle in [0, args.scale_idle] {
                let peer = Peer::start(env, server)?;
                let mut cargs = client_args(&active, &peer, args.duration, args.warmup);
                cargs.extend([
                    "--idle".into(),
                    idle.to_string(),
                    "--local-addr".into(),
                    env.local_addrs(),
                ]);
                let limit = Duration::from_secs_f64(args.duration + args.warmup + 180.0);
                match run_client(env, &cargs, limit) {
                    Ok(client) => {
                        let per =
                            match (client.server_rss_start_kib, client.server_rss_connected_kib) {
                                (Some(a), Some(b)) => format!("RSS {a} -> {b} KiB"),
                                _ => "no RSS".into(),
                            };
                        eprintln!(
                            "scale rep {rep} {server} idle {idle}: p50 {:.1} µs, p99 {:.1} µs, {per}",
                            client.p50_us, client.p99_us
                        );
                        results.scale.push(ScaleRun {
                            server: server.name().into(),
                            idle,
                            rep,
                            client,
                        });
                    }
                    Err(e) => eprintln!("scale {server} idle {idle}: FAILED: {e}"),
                }
                drop(peer);
                save(&args.out, results)?;
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut env = Env {
        peer: args.peer.clone().unwrap_or_else(|| here.join("echo-peer")),
        client: args
            .client
            .clone()
            .unwrap_or_else(|| here.join("readiness")),
        pin: !args.no_pin,
        runs: 0,
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    if env.pin && cores < 2 {
        eprintln!("echo-matrix: fewer than 2 cores: not pinning");
        env.pin = false;
    }
    for p in [&env.peer, &env.client] {
        if !p.exists() {
            eprintln!(
                "echo-matrix: {} not found (build it with --release first)",
                p.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let servers: Vec<Server> = if args.servers.is_empty() {
        Server::built().collect()
    } else {
        args.servers.clone()
    };
    if let Some(s) = servers.iter().find(|s| !s.is_built()) {
        eprintln!("echo-matrix: the {s} server is not built for this OS");
        return ExitCode::FAILURE;
    }
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::MATRIX.to_vec()
    } else {
        args.workloads.clone()
    };
    let mut results = Results {
        duration_s: args.duration,
        warmup_s: args.warmup,
        ..Results::default()
    };
    machine(&mut results);
    let start = Instant::now();
    let run = (|| -> io::Result<()> {
        if !args.no_timed {
            timed(&mut env, &args, &servers, &workloads, &mut results)?;
        }
        if args.strace_round_trips > 0 {
            syscalls(&mut env, &args, &servers, &workloads, &mut results)?;
        }
        if args.scale {
            scale(&mut env, &args, &servers, &mut results)?;
        }
        save(&args.out, &results)
    })();
    eprintln!(
        "echo-matrix: {:.1} min; results in {}",
        start.elapsed().as_secs_f64() / 60.0,
        args.out.join("results.json").display()
    );
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-matrix: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_is_parsed() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 52.10    0.120000           5     20000           write
 40.00    0.090000           4     20000           read
  7.90    0.010000           1      9000      1200 epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.220000                 49000      1200 total
";
        assert_eq!(
            parse_strace(text),
            vec![
                ("write".into(), 20000),
                ("read".into(), 20000),
                ("epoll_wait".into(), 9000)
            ]
        );
    }

    #[test]
    fn perf_csv_is_parsed() {
        let text = "# started on Wed Dec  2 16:21:16 2026\n\n\
10534,,raw_syscalls:sys_enter,86563866,100.00,,\n\
5000,,syscalls:sys_enter_recvfrom,86554304,100.00,,\n\
<not counted>,,syscalls:sys_enter_read,0,100.00,,\n\
5000,,syscalls:sys_enter_sendto,86554304,100.00,,\n";
        assert_eq!(
            parse_perf(text).unwrap(),
            vec![
                ("recvfrom".into(), 5000),
                ("sendto".into(), 5000),
                ("other".into(), 534)
            ]
        );
        assert!(parse_perf("").is_err());
    }

    #[test]
    fn expected_lines_ignore_nuls_and_spaces() {
        let (tx, rx) = mpsc::channel();
        for l in [
            "ack",
            "\0ack",
            " done ",
            "1 of 2 round trips done within --duration",
        ] {
            tx.send(l.to_string()).unwrap();
        }
        expect_line(&rx, "ack", Duration::from_secs(1)).unwrap();
        expect_line(&rx, "ack", Duration::from_secs(1)).unwrap();
        expect_line(&rx, "done", Duration::from_secs(1)).unwrap();
        // A line that only contains the word does not count.
        assert!(expect_line(&rx, "done", Duration::from_millis(50)).is_err());
    }

    #[test]
    fn workloads_parse() {
        assert_eq!(
            parse_workload("100:64:16").unwrap(),
            Workload::new(100, 64, 16)
        );
        assert!(parse_workload("100:64").is_err());
        assert!(parse_workload("0:64:1").is_err());
    }
}

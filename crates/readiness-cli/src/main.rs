//! The `readiness` command.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use readiness::{Backend, Events, Interest, Mode, Poller};

mod bench;
mod cpu;
mod echo_client;
mod echo_server;

/// Counts every heap allocation of the process (atomics around the System
/// allocator), for `readiness bench`'s allocations per round trip.
#[global_allocator]
pub(crate) static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> =
    &stats_alloc::INSTRUMENTED_SYSTEM;

#[derive(Parser)]
#[command(name = "readiness", version, about = "Socket readiness on every OS")]
struct Cli {
    /// Diagnostics on stderr: -v info, -vv debug, -vvv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the backends built for this OS, their capabilities, and check
    /// each with a loopback connection.
    Probe,
    /// The main job: an echo server and the echo-client load generator in
    /// this process on loopback; prints round trips/s, MB/s, latency
    /// percentiles, server CPU and allocations per round trip, failures.
    Bench(bench::BenchArgs),
    /// Serve TCP echo on the net layer until Ctrl-C or SIGTERM, then shut
    /// down gracefully and print the server's statistics.
    EchoServer(echo_server::EchoServerArgs),
    /// Load an echo server: N connections, K messages in flight each, every
    /// echoed byte checked; prints round trips/s, MB/s and latencies.
    EchoClient(echo_client::EchoClientArgs),
    /// Run the article scenarios (connect refused, data, hang-ups, reset,
    /// OOB, full send buffer, local close, accept, UDP) on one backend and
    /// print, for each, the OS's own bits and the portable events.
    Explore {
        /// The backend: epoll, poll, kqueue, afd, afd-direct (default: this
        /// OS's default).
        #[arg(long)]
        backend: Option<String>,
        /// Print the markdown table of docs/EVENTS.md (this backend's column).
        #[arg(long)]
        markdown: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's first paragraph, its lines joined, without
            // the "error: " prefix.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("readiness: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.verbose);
    let result = match &cli.command {
        Command::Probe => probe().map(|()| true),
        Command::Bench(args) => {
            bench::main(args).map_err(|e| io::Error::new(e.kind(), format!("bench: {e}")))
        }
        Command::EchoServer(args) => echo_server::main(args)
            .map_err(|e| io::Error::new(e.kind(), format!("echo-server: {e}"))),
        Command::EchoClient(args) => echo_client::main(args)
            .map_err(|e| io::Error::new(e.kind(), format!("echo-client: {e}"))),
        Command::Explore { backend, markdown } => {
            explore(backend.as_deref(), *markdown).map(|()| true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("readiness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(io::stderr)
        .with_target(false)
        .init();
}

/// Raises the soft limit on open descriptors to the hard limit (Unix), so
/// the client can hold the scale test's connections; failures only warn.
/// Returns the soft limit now in force (`None`: no such limit, or unknown).
pub(crate) fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let before = limit.current;
            limit.current = limit.maximum;
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!("raising the descriptor limit: {e}");
                limit.current = before;
            }
        }
        limit.current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The backend named `name` (`None`: this OS's default). An unknown name is
/// `InvalidInput`; a backend not built for this OS is reported when it is
/// used.
pub(crate) fn backend_by_name(name: Option<&str>) -> io::Result<Backend> {
    match name {
        None => Ok(Backend::default_for_os()),
        Some(name) => Backend::from_name(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend '{name}' (epoll, poll, kqueue, afd, afd-direct)"),
            )
        }),
    }
}

/// Fails (`Unsupported`, naming it) if `backend` cannot be used here, so a
/// server's set-up errors are about its address only.
pub(crate) fn check_backend(backend: Backend) -> io::Result<()> {
    Poller::with_backend(backend).map(drop)
}

fn explore(backend: Option<&str>, markdown: bool) -> io::Result<()> {
    let backend = backend_by_name(backend)?;
    let outcomes = readiness_cli::explore::run(backend)
        .map_err(|e| io::Error::new(e.kind(), format!("explore on {backend}: {e}")))?;
    if markdown {
        print!("{}", readiness_cli::explore::table(&[(backend, outcomes)]));
    } else {
        print!("{}", readiness_cli::explore::render(backend, &outcomes));
    }
    Ok(())
}

fn probe() -> io::Result<()> {
    println!("os: {} ({})", std::env::consts::OS, std::env::consts::ARCH);
    #[cfg(windows)]
    if readiness::os::windows::running_under_wine() {
        println!("running under Wine: its \\Device\\Afd is a reimplementation (docs/WINDOWS.md)");
    }
    #[cfg(windows)]
    {
        use readiness::os::windows as win;
        let skip = win::skip_completion_port_on_success_is_safe();
        println!(
            "FILE_SKIP_COMPLETION_PORT_ON_SUCCESS: {} (every TCP/UDP provider is an IFS provider: {skip})",
            if skip { "on" } else { "off" }
        );
        println!(
            "ProcessSocketNotifications: {}",
            if win::process_socket_notifications_available() {
                "present"
            } else {
                "absent"
            }
        );
    }
    println!("default backend: {}", Backend::default_for_os());
    let mut failures = 0;
    for &backend in Backend::available() {
        let poller = match Poller::with_backend(backend) {
            Ok(p) => p,
            Err(e) => {
                println!("{backend:>10}: unavailable: {e}");
                failures += 1;
                continue;
            }
        };
        let check = match loopback_check(&poller) {
            Ok(t) => format!("loopback ok in {:.1?}", t),
            Err(e) => {
                failures += 1;
                format!("loopback FAILED: {e}")
            }
        };
        println!(
            "{:>10}: level={} edge={} priority={}; {check}",
            backend.name(),
            poller.supports_level(),
            poller.supports_edge(),
            poller.supports_priority(),
        );
    }
    if failures > 0 {
        return Err(io::Error::other(format!(
            "{failures} backend(s) failed the probe"
        )));
    }
    Ok(())
}

/// Connects on loopback and waits for the accept and the connect to be
/// reported: a backend that passes can do real work on this machine.
fn loopback_check(poller: &Poller) -> io::Result<Duration> {
    let start = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    poller.add(&listener, 1, Interest::READABLE, Mode::Oneshot)?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    client.set_nonblocking(true)?;
    poller.add(&client, 2, Interest::WRITABLE, Mode::Oneshot)?;
    let (mut accepted, mut connected) = (false, false);
    let mut events = Events::new();
    while !(accepted && connected) {
        if poller.wait(&mut events, Some(Duration::from_secs(5)))? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no readiness within 5 s",
            ));
        }
        for ev in &events {
            accepted |= ev.key() == 1 && ev.is_readable();
            connected |= ev.key() == 2 && ev.is_writable();
        }
    }
    poller.delete(&client)?;
    poller.delete(&listener)?;
    Ok(start.elapsed())
}

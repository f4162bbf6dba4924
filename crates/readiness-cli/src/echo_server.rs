//! `readiness echo-server`: the net layer's [`Server`] with the [`Echo`]
//! handler, until Ctrl-C or SIGTERM; then a graceful shutdown and the
//! loops' counters summed.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use readiness_net::{Balance, Config, Echo, Server, Stats};

/// How long the shutdown flushes what the connections still have queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// The options of `readiness echo-server`.
#[derive(Args, Debug, Clone)]
pub struct EchoServerArgs {
    /// Address to listen on: IP:PORT (an IPv6 address in brackets) or
    /// localhost:PORT; port 0 picks a free port (the first line printed
    /// names it).
    #[arg(long, default_value = "127.0.0.1:7000", value_parser = parse_listen_addr)]
    pub addr: SocketAddr,
    /// Poller backend (epoll, poll, kqueue, afd, afd-direct); default: the
    /// OS default.
    #[arg(long)]
    pub backend: Option<String>,
    /// Event loops, one thread each (several loops share the port with
    /// SO_REUSEPORT on Linux, round robin elsewhere).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: u64,
    /// Connections each loop holds at most; more are refused (reset).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,
    /// Close connections that send nothing for this many seconds (0: never).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub idle_timeout: u64,
}

/// Parses a listening address: as the client's addresses, but port 0 and
/// the unspecified address (all interfaces) are fine.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in '{s}'"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not an address (IP:PORT, [IPv6]:PORT or localhost:PORT)"))
}

/// Starts a server of `threads` loops on `addr` with `config`. A port that
/// is taken is an error (`AddrInUse`), also when the holder shares its port
/// with SO_REUSEPORT (which the loops use on Linux when there are several).
pub fn start(addr: SocketAddr, threads: usize, config: Config) -> io::Result<Server> {
    let balance = if threads == 1 {
        // One loop: nothing to balance, and no SO_REUSEPORT that would let
        // a second server share the port silently.
        Balance::RoundRobin
    } else {
        if addr.port() != 0 {
            // A plain bind fails on a port any socket listens on, with or
            // without SO_REUSEPORT.
            drop(TcpListener::bind(addr)?);
        }
        Balance::Auto
    };
    Server::builder()
        .threads(threads)
        .balance(balance)
        .config(config)
        .serve(addr, |_peer| Some(Echo::new()))
}

/// The counters that matter to an echo server, on one line each.
pub fn print_stats(out: &mut impl Write, stats: &Stats) -> io::Result<()> {
    writeln!(out, "connections accepted: {}", stats.connections_accepted)?;
    writeln!(out, "connections refused: {}", stats.connections_refused)?;
    writeln!(out, "connections open: {}", stats.connections_open)?;
    writeln!(out, "idle timeouts: {}", stats.timeouts)?;
    writeln!(out, "close timeouts: {}", stats.close_timeouts)?;
    writeln!(out, "bytes in: {}", stats.bytes_in)?;
    writeln!(out, "bytes out: {}", stats.bytes_out)?;
    writeln!(out, "bytes queued at most: {}", stats.bytes_queued_peak)?;
    writeln!(out, "writes refused: {}", stats.writes_refused)?;
    Ok(())
}

/// Sets a flag on SIGINT (Ctrl-C) and SIGTERM; a second one of either ends
/// the process at once (exit status 1). On Windows signal-hook maps Ctrl-C
/// to the C runtime's SIGINT, so this works there too.
fn shutdown_flag() -> io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first: runs when the flag is already set (a second
        // signal), and exits.
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(flag)
}

/// Runs `readiness echo-server`.
pub fn main(args: &EchoServerArgs) -> io::Result<bool> {
    let backend = crate::backend_by_name(args.backend.as_deref())?;
    crate::check_backend(backend)?;
    let mut config = Config::new()
        .backend(backend)
        .max_connections(args.max_connections as usize);
    if args.idle_timeout > 0 {
        config = config.idle_timeout(Some(Duration::from_secs(args.idle_timeout)));
    }
    let _ = crate::raise_fd_limit();
    let stop = shutdown_flag()?;
    let server = start(args.addr, args.threads as usize, config)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr)))?;
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "listening on {} ({} loop{}, backend {backend})",
            server.local_addr(),
            args.threads,
            if args.threads == 1 { "" } else { "s" }
        )?;
        out.flush()?;
    }
    eprintln!("readiness: echo-server running; Ctrl-C or SIGTERM stops it");
    // The handlers only set the flag; look at it ten times a second.
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = server.shutdown(FLUSH_DEADLINE)?;
    let mut out = io::stdout().lock();
    writeln!(out, "shut down")?;
    print_stats(&mut out, &stats)?;
    out.flush()?;
    Ok(true)
}

//! The `readiness` command.

#![forbid(unsafe_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use readiness::{Backend, Events, Interest, Mode, Poller};

#[derive(Parser)]
#[command(name = "readiness", version, about = "Socket readiness on every OS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the backends built for this OS, their capabilities, and check
    /// each with a loopback connection.
    Probe,
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

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe => probe(),
        Command::Explore { backend, markdown } => explore(backend.as_deref(), markdown),
    };
    if let Err(e) = result {
        eprintln!("readiness: {e}");
        std::process::exit(1);
    }
}

fn explore(backend: Option<&str>, markdown: bool) -> io::Result<()> {
    let backend = match backend {
        None => Backend::default_for_os(),
        Some(name) => Backend::from_name(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {name:?} (epoll, poll, kqueue, afd, afd-direct)"),
            )
        })?,
    };
    let outcomes = readiness_cli::explore::run(backend)?;
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

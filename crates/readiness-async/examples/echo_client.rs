//! A validating echo load generator on readiness-async (single thread):
//! `--connections` connections, each keeping `--depth` messages of `--size`
//! bytes in flight, until `--round-trips` round trips in all have come back.
//! Byte `i` of message `seq` on connection `c` is `(c * 7 + seq + i) % 251`;
//! every echoed byte is checked, and the exit status is non-zero on any
//! mismatch.
//!
//! With `--server-pid PID` (Linux) it also reports the server's CPU time per
//! round trip, summed over the server's threads from
//! `/proc/PID/task/*/schedstat` (nanoseconds) around the measured phase
//! only (after the connections are up and `--warmup` round trips each are
//! done).
//!
//! ```sh
//! taskset -c 0 target/release/examples/echo --addr 127.0.0.1:7000 &
//! taskset -c 1 target/release/examples/echo_client --addr 127.0.0.1:7000 \
//!     --connections 100 --size 64 --depth 1 --round-trips 300000 --server-pid $!
//! ```

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Instant;

use async_executor::LocalExecutor;
use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use readiness_async::{Async, block_on};

#[derive(Parser)]
#[command(about = "Validating echo load generator on readiness-async")]
struct Args {
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Round trips to measure, over all connections.
    #[arg(long, default_value_t = 200_000)]
    round_trips: u64,
    /// Round trips per connection before measuring.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Server process to read CPU time from (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
}

fn message(conn: usize, seq: u64, size: usize, out: &mut [u8]) {
    let base = (conn as u64 * 7 + seq) % 251;
    for (i, b) in out[..size].iter_mut().enumerate() {
        *b = ((base + i as u64) % 251) as u8;
    }
}

/// Runs `count` round trips on `stream`, continuing from message `*seq`.
async fn round_trips(
    stream: &mut Async<TcpStream>,
    conn: usize,
    seq: &mut u64,
    count: u64,
    args: &Args,
    failures: &Cell<u64>,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let depth = (args.depth as u64).min(count);
    let mut out = vec![0u8; args.size];
    let mut expected = vec![0u8; args.size];
    let mut got = vec![0u8; args.size];
    let first = *seq;
    let end = first + count;
    let mut sent = first;
    while sent < first + depth {
        message(conn, sent, args.size, &mut out);
        stream.write_all(&out).await?;
        sent += 1;
    }
    for received in first..end {
        stream.read_exact(&mut got).await?;
        message(conn, received, args.size, &mut expected);
        if got != expected {
            failures.set(failures.get() + 1);
        }
        if sent < end {
            message(conn, sent, args.size, &mut out);
            stream.write_all(&out).await?;
            sent += 1;
        }
    }
    *seq = end;
    Ok(())
}

/// CPU time of every thread of `pid`, in nanoseconds.
fn cpu_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(0) => {}
        Ok(failures) => {
            eprintln!("echo_client: {failures} messages came back wrong");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("echo_client: {e}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> io::Result<u64> {
    if args.connections == 0 || args.size == 0 || args.depth == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connections, size and depth must be at least 1",
        ));
    }
    let ex = LocalExecutor::new();
    let failures = Rc::new(Cell::new(0u64));
    block_on(ex.run(async {
        // Connect and warm up.
        let tasks: Vec<_> = (0..args.connections)
            .map(|conn| {
                let failures = failures.clone();
                ex.spawn(async move {
                    let mut stream = Async::<TcpStream>::connect(args.addr).await?;
                    stream.get_ref().set_nodelay(true)?;
                    let mut seq = 0;
                    round_trips(&mut stream, conn, &mut seq, args.warmup, args, &failures).await?;
                    io::Result::Ok((stream, seq))
                })
            })
            .collect();
        let mut streams = Vec::with_capacity(tasks.len());
        for t in tasks {
            streams.push(t.await?);
        }

        // Measure.
        let cpu_before = args.server_pid.map(cpu_ns).transpose()?;
        let start = Instant::now();
        let per_conn = args.round_trips / args.connections as u64;
        let extra = args.round_trips % args.connections as u64;
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(conn, (mut stream, mut seq))| {
                let failures = failures.clone();
                let count = per_conn + u64::from((conn as u64) < extra);
                ex.spawn(async move {
                    round_trips(&mut stream, conn, &mut seq, count, args, &failures).await
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let elapsed = start.elapsed();
        let cpu_after = args.server_pid.map(cpu_ns).transpose()?;

        let rt = args.round_trips as f64;
        print!(
            "round_trips={} seconds={:.3} round_trips_per_s={:.0} failures={}",
            args.round_trips,
            elapsed.as_secs_f64(),
            rt / elapsed.as_secs_f64(),
            failures.get()
        );
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            print!(
                " server_cpu_us_per_rt={:.3}",
                (after - before) as f64 / 1000.0 / rt
            );
        }
        println!();
        io::Result::Ok(())
    }))?;
    Ok(failures.get())
}

//! The records the matrix runner writes and the report reads
//! (`target/bench-echo/*.json`), and the client report they embed.

use serde::{Deserialize, Serialize};

/// What `readiness echo-client --json` prints (the fields the runner uses;
/// the client prints a few more).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientReport {
    /// Active connections asked for.
    pub connections: u64,
    /// Active connections that connected.
    pub connected: u64,
    /// Idle connections asked for.
    #[serde(default)]
    pub idle: u64,
    /// Idle connections that connected.
    #[serde(default)]
    pub idle_connected: Option<u64>,
    /// Connections that failed to connect.
    pub connect_errors: u64,
    /// Connections lost during the run.
    #[serde(default)]
    pub disconnects: u64,
    /// Message size in bytes.
    pub size: u64,
    /// Messages in flight per connection.
    pub depth: u64,
    /// Length of the measured interval, seconds.
    pub elapsed_s: f64,
    /// Round trips completed in the measured interval.
    pub round_trips: u64,
    /// Round trips per second.
    pub round_trips_per_s: f64,
    /// Payload megabytes (10^6) per second, each way.
    pub mb_per_s: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Maximum, microseconds.
    pub max_us: f64,
    /// Messages whose echo differed from what was sent.
    pub validation_failures: u64,
    /// CPU seconds (user + system) the server process used in the measured
    /// interval (with `--server-pid`, Linux).
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    /// Server resident memory before any connection, KiB.
    #[serde(default)]
    pub server_rss_start_kib: Option<u64>,
    /// Server resident memory once every connection (idle ones included)
    /// was set up and had echoed its first message, KiB.
    #[serde(default)]
    pub server_rss_connected_kib: Option<u64>,
}

/// A workload of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// Connections.
    pub connections: u64,
    /// Message size, bytes.
    pub size: u64,
    /// Messages in flight per connection.
    pub depth: u64,
}

impl Workload {
    /// The matrix of issue 7.
    pub const MATRIX: [Workload; 6] = [
        Workload::new(1, 64, 1),
        Workload::new(100, 64, 1),
        Workload::new(1000, 64, 1),
        Workload::new(100, 4096, 1),
        Workload::new(100, 64, 16),
        Workload::new(10, 65536, 1),
    ];

    /// A workload.
    pub const fn new(connections: u64, size: u64, depth: u64) -> Workload {
        Workload {
            connections,
            size,
            depth,
        }
    }

    /// `c100-s64-d1`.
    pub fn id(&self) -> String {
        format!("c{}-s{}-d{}", self.connections, self.size, self.depth)
    }

    /// Whether the messages are small (64 bytes).
    pub fn is_small(&self) -> bool {
        self.size <= 64
    }
}

/// One timed run of one server on one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    /// Server name.
    pub server: String,
    /// The workload.
    pub workload: Workload,
    /// Repetition (0-based).
    pub rep: u32,
    /// The machine's 1-minute load average when the run started
    /// (`/proc/loadavg`): other work on the machine shows here.
    #[serde(default)]
    pub loadavg: Option<f64>,
    /// The client's report.
    pub client: ClientReport,
}

/// One system-call count of one server on one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyscallCount {
    /// `perf` (tracepoint counters: the server runs at full speed) or
    /// `strace` (`strace -c -f`: every call stops the server, which changes
    /// how much each wake-up finds to do).
    pub tool: String,
    /// Server name.
    pub server: String,
    /// The workload.
    pub workload: Workload,
    /// Round trips the client made while strace was attached.
    pub round_trips: u64,
    /// Calls per system call name, over those round trips (with perf, the
    /// calls not counted by name are under `other`).
    pub calls: Vec<(String, u64)>,
}

impl SyscallCount {
    /// All calls over all round trips.
    pub fn per_round_trip(&self) -> f64 {
        let total: u64 = self.calls.iter().map(|(_, n)| n).sum();
        total as f64 / self.round_trips.max(1) as f64
    }
}

/// One scale run: idle connections held while 10 active ones run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRun {
    /// Server name.
    pub server: String,
    /// Idle connections asked for.
    pub idle: u64,
    /// Repetition.
    pub rep: u32,
    /// The client's report.
    pub client: ClientReport,
}

/// Everything one `echo-matrix` invocation measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// When, UTC (`date -u`), as the runner saw it.
    pub date: String,
    /// `nproc`.
    pub cores: u64,
    /// `uname -r`.
    pub kernel: String,
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// The git commit of the tree measured (and whether it was dirty).
    pub commit: String,
    /// The command line of the run.
    pub command: String,
    /// Seconds measured per cell.
    pub duration_s: f64,
    /// Warm-up seconds per cell.
    pub warmup_s: f64,
    /// The timed runs.
    pub cells: Vec<Cell>,
    /// The syscall counts.
    pub syscalls: Vec<SyscallCount>,
    /// The scale runs.
    pub scale: Vec<ScaleRun>,
}

/// The median of `values` (`None` if empty); the mean of the middle two for
/// an even count.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn workload_ids() {
        assert_eq!(Workload::MATRIX[4].id(), "c100-s64-d16");
        assert!(Workload::MATRIX[0].is_small() && !Workload::MATRIX[3].is_small());
    }

    #[test]
    fn syscalls_per_round_trip() {
        let c = SyscallCount {
            tool: "strace".into(),
            server: "x".into(),
            workload: Workload::MATRIX[0],
            round_trips: 4,
            calls: vec![
                ("read".into(), 4),
                ("write".into(), 4),
                ("epoll_wait".into(), 2),
            ],
        };
        assert_eq!(c.per_round_trip(), 2.5);
    }
}

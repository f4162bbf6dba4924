//! The server's CPU time and resident memory from `/proc` (Linux).

use std::io;

/// Whether this OS has the `/proc` files used here.
pub const AVAILABLE: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// User + system CPU seconds of process `pid`, all threads
/// (`/proc/PID/stat` fields 14 and 15, in clock ticks).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let tick = |i: usize| -> io::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
    };
    let ticks = tick(14)? + tick(15)?;
    let hz = rustix::param::clock_ticks_per_second();
    Ok(ticks as f64 / hz as f64)
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn cpu_seconds(_pid: u32) -> io::Result<f64> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn rss_kib(_pid: u32) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    #[test]
    fn own_process() {
        let me = std::process::id();
        assert!(super::cpu_seconds(me).unwrap() >= 0.0);
        assert!(super::rss_kib(me).unwrap() > 0);
        assert!(super::cpu_seconds(u32::MAX).is_err());
    }
}

//! The calling thread's CPU time and CPU affinity, where the OS offers them
//! without `unsafe` here (rustix on Unix); elsewhere they are absent and the
//! callers say so ("n/a", "not pinned").

use std::io;
use std::time::Duration;

/// CPU time (user + system) the calling thread has used, from
/// `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`; `None` where that is not
/// available (Windows: `GetThreadTimes` would need `unsafe` here).
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The CPUs this process may run on, lowest first (Linux); empty where it
/// cannot be asked.
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::thread::{CpuSet, sched_getaffinity};
        match sched_getaffinity(None) {
            Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
            Err(_) => Vec::new(),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Vec::new()
    }
}

/// Pins the calling thread to `cpu` (Linux); `Unsupported` elsewhere.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::thread::{CpuSet, sched_setaffinity};
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = cpu;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "thread pinning is only done on Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_thread() {
        if let Some(t0) = super::thread_cpu_time() {
            let mut x = 0u64;
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            assert!(super::thread_cpu_time().unwrap() >= t0);
        }
        if cfg!(target_os = "linux") {
            let cpus = super::allowed_cpus();
            assert!(!cpus.is_empty());
            std::thread::spawn(move || super::pin_current_thread(cpus[0]).unwrap())
                .join()
                .unwrap();
        }
    }
}

//! `readiness echo-client` run as a program: bad input gives one line on
//! stderr and a non-zero exit; a real run against small echo servers
//! started here validates what comes back.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;

fn readiness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_readiness"))
        .args(args)
        .output()
        .expect("run the readiness binary")
}

/// Runs echo-client with `args`; checks the exit status and that stderr is
/// exactly one line naming what was wrong.
fn bad_input(args: &[&str], code: i32, needle: &str) {
    let mut all = vec!["echo-client"];
    all.extend_from_slice(args);
    let out = readiness(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("readiness: "), "{stderr}");
}

/// A port on loopback with nothing listening (bound, then closed).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unparsable_addresses() {
    bad_input(
        &["--addr", "nowhere", "--duration", "1"],
        2,
        "'nowhere' is not an address",
    );
    bad_input(
        &["--addr", "127.0.0.1", "--duration", "1"],
        2,
        "is not an address",
    );
    bad_input(&["--addr", "127.0.0.1:70000"], 2, "is not an address");
}

#[test]
fn addresses_nothing_can_connect_to() {
    bad_input(&["--addr", "127.0.0.1:0"], 2, "port 0");
    bad_input(&["--addr", "0.0.0.0:80"], 2, "unspecified address");
    bad_input(&["--addr", "239.1.2.3:80"], 2, "not a unicast address");
}

#[test]
fn connection_refused() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let needle = format!("cannot connect to {addr}: ");
    bad_input(
        &["--addr", &addr, "--connections", "3", "--duration", "1"],
        1,
        &needle,
    );
}

#[test]
fn zero_connections_and_zero_duration() {
    bad_input(
        &["--addr", "127.0.0.1:9", "--connections", "0"],
        2,
        "--connections",
    );
    bad_input(
        &["--addr", "127.0.0.1:9", "--duration", "0"],
        2,
        "must be longer than 0",
    );
    bad_input(
        &["--addr", "127.0.0.1:9", "--duration", "soon"],
        2,
        "not a duration",
    );
    bad_input(&["--addr", "127.0.0.1:9", "--depth", "0"], 2, "--depth");
}

#[test]
fn unknown_or_absent_backend() {
    let addr = format!("127.0.0.1:{}", closed_port());
    bad_input(
        &["--addr", &addr, "--backend", "nope"],
        1,
        "unknown backend 'nope'",
    );
    let absent = if cfg!(windows) { "epoll" } else { "afd" };
    bad_input(
        &["--addr", &addr, "--backend", absent],
        1,
        "not built for this OS",
    );
}

#[test]
fn missing_address() {
    bad_input(&[], 2, "--addr");
}

/// An echo server on its own threads, one per connection; `corrupt` flips
/// one byte of everything it echoes after the first 100 bytes.
fn echo_server(corrupt: bool) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut total = 0usize;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if corrupt && total + n > 100 && total <= 100 {
                        buf[100 - total] ^= 0x40;
                    }
                    total += n;
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every backend of this OS: edge-triggered (epoll, kqueue) and oneshot
/// (poll(2), Windows) registrations take different paths in the client.
const BACKENDS: &[&str] = if cfg!(windows) {
    &["afd", "afd-direct"]
} else if cfg!(any(target_os = "linux", target_os = "android")) {
    &["epoll", "poll"]
} else {
    &["kqueue", "poll"]
};

#[test]
fn a_run_validates_every_byte() {
    for backend in BACKENDS {
        a_run_on(backend);
    }
}

fn a_run_on(backend: &str) {
    let addr = echo_server(false);
    let out = readiness(&[
        "echo-client",
        "--backend",
        backend,
        "--addr",
        &addr,
        "--connections",
        "3",
        "--size",
        "1000",
        "--depth",
        "3",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--idle",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    assert_eq!(r["backend"], backend);
    assert_eq!(r["connected"], 3);
    assert_eq!(r["idle_connected"], 2);
    assert_eq!(r["validation_failures"], 0);
    assert_eq!(r["connect_errors"], 0);
    assert!(r["round_trips"].as_u64().unwrap() > 0, "{r}");
    assert!(r["p50_us"].as_f64().unwrap() > 0.0);
    assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap());
}

#[test]
fn exactly_the_round_trips_asked_for() {
    let addr = echo_server(false);
    let out = readiness(&[
        "echo-client",
        "--addr",
        &addr,
        "--connections",
        "4",
        "--size",
        "64",
        "--depth",
        "5",
        "--duration",
        "30s",
        "--warmup",
        "50ms",
        "--round-trips",
        "1001",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["round_trips"], 1001);
}

#[test]
fn a_wrong_byte_fails_the_run() {
    let addr = echo_server(true);
    let out = readiness(&[
        "echo-client",
        "--addr",
        &addr,
        "--connections",
        "2",
        "--size",
        "64",
        "--duration",
        "200ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(
        r["validation_failures"], 2,
        "one bad message per connection: {r}"
    );
}

#[test]
fn the_server_closing_is_reported() {
    // A server that accepts and closes at once.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    let out = readiness(&[
        "echo-client",
        "--addr",
        &addr,
        "--connections",
        "2",
        "--duration",
        "200ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["disconnects"], 2, "{r}");
    // A short-lived check that the program did not hang on the closed ones.
    let _ = TcpStream::connect(&addr);
}

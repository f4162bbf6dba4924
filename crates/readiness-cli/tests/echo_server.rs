//! `readiness echo-server` run as a program: bad input gives one line on
//! stderr and a non-zero exit; a running server echoes, carries 1,000
//! connections of `readiness echo-client` without a failure, and (Unix)
//! shuts down gracefully on SIGTERM and SIGINT, printing its counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

fn readiness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_readiness"))
        .args(args)
        .output()
        .expect("run the readiness binary")
}

/// Checks that `out` failed with `code` and one stderr line holding `needle`.
fn one_line_error(what: &str, out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: stderr {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{what}: {stderr:?} lacks {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("readiness: "), "{stderr}");
}

fn bad_input(args: &[&str], code: i32, needle: &str) {
    let mut all = vec!["echo-server"];
    all.extend_from_slice(args);
    one_line_error(&format!("{all:?}"), &readiness(&all), code, needle);
}

/// A running `readiness echo-server` on a free loopback port.
struct Server {
    child: Child,
    // Read at the end on Unix; held open elsewhere (the server writes to it).
    #[cfg_attr(not(unix), allow(dead_code))]
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_readiness"))
            .args(["echo-server", "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start echo-server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // The first line names the address once the server listens.
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        Server {
            child,
            stdout,
            addr,
        }
    }

    /// Everything printed after the first line, until the process exits;
    /// and its exit status.
    #[cfg(unix)]
    fn wait(mut self) -> (String, std::process::ExitStatus) {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (rest, status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `NAME: N` in the statistics printed at shutdown.
#[cfg(unix)]
fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name:?} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn unparsable_address_unknown_backend_zero_values() {
    bad_input(&["--addr", "nowhere"], 2, "'nowhere' is not an address");
    bad_input(&["--addr", "127.0.0.1"], 2, "is not an address");
    bad_input(&["--addr", "127.0.0.1:70000"], 2, "is not an address");
    bad_input(&["--backend", "nope"], 1, "unknown backend 'nope'");
    let absent = if cfg!(windows) { "epoll" } else { "afd" };
    bad_input(&["--backend", absent], 1, "not built for this OS");
    bad_input(&["--threads", "0"], 2, "--threads");
    bad_input(&["--max-connections", "0"], 2, "--max-connections");
    bad_input(&["--idle-timeout", "soon"], 2, "--idle-timeout");
}

#[test]
fn port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for threads in ["1", "2"] {
        bad_input(
            &["--addr", &addr, "--threads", threads],
            1,
            &format!("cannot listen on {addr}: "),
        );
    }
    // And a port another echo-server holds.
    let server = Server::start(&[]);
    bad_input(
        &["--addr", &server.addr, "--threads", "2"],
        1,
        "cannot listen on",
    );
}

#[test]
fn a_1000_connection_echo_client_run_has_no_failure() {
    let server = Server::start(&[]);
    let out = readiness(&[
        "echo-client",
        "--addr",
        &server.addr,
        "--connections",
        "1000",
        "--duration",
        "1",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "echo-client failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connected"], 1000, "{r}");
    assert_eq!(r["connect_errors"], 0, "{r}");
    assert_eq!(r["validation_failures"], 0, "{r}");
    assert_eq!(r["disconnects"], 0, "{r}");
    assert!(r["round_trips"].as_u64().unwrap() > 0, "{r}");
}

/// Echoes one message with a plain blocking socket.
fn echo_once(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"hello, readiness").unwrap();
    let mut back = [0u8; 16];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello, readiness");
}

#[test]
fn serves_echo_on_every_connection() {
    let server = Server::start(&["--threads", "2"]);
    for _ in 0..4 {
        echo_once(&server.addr);
    }
}

#[cfg(unix)]
fn signal(server: &Server, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(&server.child), sig).unwrap();
}

#[cfg(unix)]
#[test]
fn sigterm_and_sigint_shut_down_gracefully_with_statistics() {
    use rustix::process::Signal;
    for (sig, threads) in [(Signal::TERM, "1"), (Signal::INT, "2")] {
        let server = Server::start(&["--threads", threads]);
        echo_once(&server.addr);
        echo_once(&server.addr);
        // A connection still open at the signal is closed by the shutdown.
        let mut open = TcpStream::connect(&server.addr).unwrap();
        open.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).unwrap();
        signal(&server, sig);
        // The shutdown closes the open connection gracefully: end of
        // stream here, and our close lets the server finish at once.
        assert_eq!(open.read(&mut one).unwrap(), 0);
        drop(open);
        let (out, status) = server.wait();
        assert!(status.success(), "{sig:?}: {status:?}; {out}");
        assert!(out.starts_with("shut down\n"), "{out}");
        assert_eq!(stat(&out, "connections accepted"), 3, "{out}");
        assert_eq!(stat(&out, "connections refused"), 0, "{out}");
        assert_eq!(stat(&out, "connections open"), 0, "{out}");
        assert_eq!(stat(&out, "bytes in"), 33, "{out}");
        assert_eq!(stat(&out, "bytes out"), 33, "{out}");
    }
}

#[cfg(unix)]
#[test]
fn max_connections_refuses_the_rest() {
    use rustix::process::Signal;
    let server = Server::start(&["--max-connections", "1"]);
    let mut held = TcpStream::connect(&server.addr).unwrap();
    held.write_all(b"y").unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    // Over the limit: reset (or closed) without an echo.
    let mut refused = TcpStream::connect(&server.addr).unwrap();
    let _ = refused.write_all(b"z");
    assert!(matches!(refused.read(&mut one), Ok(0) | Err(_)));
    signal(&server, Signal::TERM);
    assert_eq!(held.read(&mut one).unwrap(), 0);
    drop(held);
    let (out, status) = server.wait();
    assert!(status.success(), "{out}");
    assert_eq!(stat(&out, "connections accepted"), 1, "{out}");
    assert_eq!(stat(&out, "connections refused"), 1, "{out}");
}

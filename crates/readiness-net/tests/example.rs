//! Runs `examples/echo_server.rs` as a user would: start it, read the
//! address it prints, echo through it, close its stdin, check it exits 0
//! and prints its statistics. `cargo test` builds the examples next to the
//! test binaries.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn example(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    path.exists().then_some(path)
}

#[test]
fn echo_server_example_serves_and_stops_when_stdin_closes() {
    let Some(path) = example("echo_server") else {
        // The Windows pass builds test binaries only (`--tests`).
        println!("SKIPPED: the echo_server example was not built next to this test");
        if cfg!(target_os = "linux") {
            panic!("cargo test builds examples on Linux: the echo_server example is missing");
        }
        return;
    };
    let mut child = Command::new(path)
        .args(["--addr", "127.0.0.1:0", "--threads", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let mut c = util::client(addr);
    c.write_all(b"hello example").unwrap();
    assert_eq!(util::read_n(&mut c, 13), b"hello example");
    drop(c);
    drop(child.stdin.take()); // EOF: the server shuts down
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.contains("connections_accepted: 1"), "{rest}");
    assert!(rest.contains("bytes_in: 13"), "{rest}");
}

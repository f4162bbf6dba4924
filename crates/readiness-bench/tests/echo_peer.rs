//! Every built echo server, run as `echo-peer`: prints its address first,
//! echoes what several connections send (more than a socket buffer holds,
//! so partial writes happen), and exits when its stdin closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use readiness_bench::echo::Server;

fn check(server: Server, extra: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo-peer"))
        .args(["--server", server.name()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start echo-peer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().to_string();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let streams: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Write everything from one thread per connection while reading here,
    // so the server meets full send buffers.
    let writers: Vec<_> = streams
        .iter()
        .map(|s| {
            let mut w = s.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || w.write_all(&data).unwrap())
        })
        .collect();
    for s in &streams {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; data.len()];
        (&*s)
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        assert!(got == data, "{server}: the echo differs");
    }
    for w in writers {
        w.join().unwrap();
    }
    drop(streams);
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{server}: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{server}: still running after stdin closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_built_server_echoes() {
    for server in Server::built() {
        check(server, &[]);
    }
}

#[cfg(unix)]
#[test]
fn the_raw_server_on_poll_uses_oneshot() {
    check(Server::Raw, &["--backend", "poll"]);
}

#[cfg(unix)]
#[test]
fn the_net_server_on_poll_uses_oneshot() {
    check(Server::Net, &["--backend", "poll"]);
}

#[cfg(unix)]
#[test]
fn the_async_server_on_poll_uses_oneshot() {
    check(Server::Async, &["--backend", "poll"]);
}

#[test]
fn the_project_servers_are_built() {
    let built: Vec<Server> = Server::built().collect();
    assert!(built.contains(&Server::Net) && built.contains(&Server::Async));
}

#[test]
fn unknown_servers_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_echo-peer"))
        .args(["--server", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

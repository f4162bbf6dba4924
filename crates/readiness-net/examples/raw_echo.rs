//! The comparison floor for the net layer: an echo server written directly
//! on `readiness::Poller`, edge-triggered, one shared read buffer, no
//! handlers, no timers, no statistics. Same flags as `echo_server`
//! (`--addr`, `--for-secs`); serves until stdin closes.

#[path = "common/args.rs"]
mod args;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use readiness::{Events, Interest, Mode, Poller};

const LISTENER: usize = usize::MAX >> 2;

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back (the kernel was full).
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let a = args::Args::parse(&["addr", "for-secs"]);
    let addr: std::net::SocketAddr = a.get("addr", "127.0.0.1:0".parse().unwrap());
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let poller = std::sync::Arc::new(Poller::new()?);
    assert!(poller.supports_edge(), "the raw loop is edge-triggered");
    poller.add(&listener, LISTENER, Interest::READABLE, Mode::Edge)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (p, s) = (poller.clone(), stop.clone());
        let secs: u64 = a.get("for-secs", 0);
        std::thread::spawn(move || {
            if secs > 0 {
                std::thread::sleep(Duration::from_secs(secs));
            } else {
                let mut sink = [0u8; 256];
                let mut stdin = io::stdin();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            }
            s.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = p.notify();
        });
    }
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::new();
    let mut buf = vec![0u8; 256 << 10];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        poller.wait(&mut events, None)?;
        for ev in events.iter() {
            if ev.key() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            s.set_nodelay(true)?;
                            let key = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poller.add(&s, key, Interest::BOTH, Mode::Edge)?;
                            conns[key] = Some(Conn {
                                stream: s,
                                pending: Vec::new(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let key = ev.key();
            let Some(c) = conns[key].as_mut() else {
                continue;
            };
            let mut dead = false;
            if ev.is_writable() && !c.pending.is_empty() {
                match c.stream.write(&c.pending) {
                    Ok(n) => {
                        c.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => dead = true,
                }
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                loop {
                    if !c.pending.is_empty() {
                        break; // back-pressure: read again when drained
                    }
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            dead = true;
                            break;
                        }
                        Ok(n) => {
                            match c.stream.write(&buf[..n]) {
                                Ok(k) if k == n => {}
                                Ok(k) => c.pending.extend_from_slice(&buf[k..n]),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    c.pending.extend_from_slice(&buf[..n])
                                }
                                Err(_) => {
                                    dead = true;
                                    break;
                                }
                            }
                            if n < buf.len() {
                                break; // short read: drained
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
            }
            if dead {
                let c = conns[key].take().unwrap();
                let _ = poller.delete(&c.stream);
            }
        }
    }
    Ok(())
}

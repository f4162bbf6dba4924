//! The net layer's contract: for each scenario, the handler calls in order,
//! the same on every backend (epoll, poll(2), Windows afd and afd-direct).
//! Run on each with `READINESS_TEST_BACKEND` (see `tests/util`).

mod util;

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use readiness_net::{Bytes, Conn, Echo, UdpQueuePolicy, listener_fn};
use util::*;

/// A listener whose first connection is served by `make()`; returns the
/// running loop, the listener log and the connection log.
fn serve_one(
    config: readiness_net::Config,
    make: impl FnOnce(&Log) -> Recorder + Send + 'static,
) -> (Running, SocketAddr, Log, Log) {
    let llog = Log::new();
    let clog = Log::new();
    let (l2, c2) = (llog.clone(), clog.clone());
    let (running, addr) = spawn_listener(config, move || {
        let mut make = Some(make);
        RecListener::new(&l2, move |_| {
            let make = make.take().expect("only one connection in this test");
            make(&c2)
        })
    });
    (running, addr, llog, clog)
}

#[test]
fn connect_ok() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::new();
    let l2 = log.clone();
    let (running, _) = spawn(config(), move |lp| {
        lp.connect(addr, Recorder::new(&l2)).unwrap();
    });
    let (peer, _) = listener.accept().unwrap();
    log.wait_for(Call::Connected);
    drop(peer); // FIN: the default on_client_close closes
    log.assert_ends(&[Call::Connected, Call::ClientClose, Call::Disconnected]);
    running.stop();
}

#[test]
fn connect_ok_ipv6() {
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        println!("SKIPPED: no IPv6 loopback on this machine");
        return;
    };
    let addr = listener.local_addr().unwrap();
    let log = Log::new();
    let l2 = log.clone();
    let (running, _) = spawn(config(), move |lp| {
        lp.connect(addr, Recorder::new(&l2)).unwrap();
    });
    let (peer, _) = listener.accept().unwrap();
    log.wait_for(Call::Connected);
    drop(peer);
    log.assert_ends(&[Call::Connected, Call::ClientClose, Call::Disconnected]);
    running.stop();
}

#[test]
fn connect_refused() {
    let addr = closed_port();
    let log = Log::new();
    let l2 = log.clone();
    let (running, _) = spawn(config(), move |lp| {
        lp.connect(addr, Recorder::new(&l2)).unwrap();
    });
    log.assert_ends(&[
        Call::Failed(io::ErrorKind::ConnectionRefused),
        Call::Disconnected,
    ]);
    assert_eq!(fresh_stats(&running.handle).connect_failures, 1);
    running.stop();
}

/// A connect that never completes: a listener whose accept queue is full
/// (Linux, and Wine on Linux, drop the SYN; the connect stays pending). No
/// unroutable address is used: traffic stays on loopback.
#[test]
fn connect_timeout() {
    let listener = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue until a connect hangs.
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                full = true;
                break;
            }
            Err(e) => panic!(
                "filling the backlog: connect failed with {e} (a full backlog refuses here? \
                 see docs: real Windows answers a full backlog with a reset)"
            ),
        }
    }
    assert!(
        full,
        "could not fill a listen(0) backlog with 64 connections: cannot simulate a connect timeout"
    );
    let log = Log::new();
    let l2 = log.clone();
    let config = config().connect_timeout(Duration::from_millis(300));
    let (running, _) = spawn(config, move |lp| {
        lp.connect(addr, Recorder::new(&l2)).unwrap();
    });
    log.assert_ends(&[Call::Failed(io::ErrorKind::TimedOut), Call::Disconnected]);
    running.stop();
    drop(fillers);
}

#[test]
fn data_both_ways() {
    let (running, addr, llog, clog) = serve_one(config(), |log| {
        Recorder::new(log).on_data(|c, d| c.write(d).unwrap())
    });
    let mut peer = client(addr);
    write_all(&mut peer, b"ping");
    assert_eq!(read_n(&mut peer, 4), b"ping");
    peer.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut peer), b"");
    clog.assert_ends(&[
        Call::Connected,
        Call::Data(b"ping".to_vec()),
        Call::ClientClose,
        Call::Disconnected,
    ]);
    assert_eq!(llog.get(), [Call::Incoming]);
    running.stop();
    assert_eq!(llog.get(), [Call::Incoming, Call::ListenerClosed]);
}

/// Writes `total` pattern bytes in `chunk`-byte buffers, as fast as the
/// queue allows, then closes; counts refusals.
fn writer(log: &Log, total: usize, chunk: usize, refusals: Arc<AtomicUsize>) -> Recorder {
    let sent = Rc::new(RefCell::new((0usize, None::<Bytes>)));
    let s2 = sent.clone();
    let r2 = refusals.clone();
    let pump =
        move |c: &mut Conn<'_>, sent: &RefCell<(usize, Option<Bytes>)>, refusals: &AtomicUsize| {
            let mut st = sent.borrow_mut();
            loop {
                let data = match st.1.take() {
                    Some(d) => d,
                    None if st.0 < total => {
                        let n = chunk.min(total - st.0);
                        let d = pattern_bytes(st.0, n);
                        st.0 += n;
                        d
                    }
                    None => {
                        c.close();
                        return;
                    }
                };
                let len = data.len();
                let ptr = data.as_ptr();
                match c.write(data) {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                        // The data comes back whole: the same buffer.
                        let back = e.into_data();
                        assert_eq!((back.len(), back.as_ptr()), (len, ptr));
                        refusals.fetch_add(1, Ordering::Relaxed);
                        st.1 = Some(back);
                        return;
                    }
                }
            }
        };
    let pump = Rc::new(pump);
    let p2 = pump.clone();
    Recorder::new(log)
        .on_connected(move |c| pump(c, &sent, &refusals))
        .on_drained(move |c| p2(c, &s2, &r2))
}

#[test]
fn large_writes_fill_the_socket_buffer() {
    const TOTAL: usize = 32 << 20;
    let refusals = Arc::new(AtomicUsize::new(0));
    let r2 = refusals.clone();
    let config = config()
        .high_water(256 << 10)
        .low_water(64 << 10)
        .socket_buffers(SMALL.0, SMALL.1);
    let (running, addr, _llog, clog) =
        serve_one(config, move |log| writer(log, TOTAL, 64 << 10, r2));
    let mut peer = small_client(addr);
    clog.wait_for(Call::Connected);
    // Let the kernel buffers fill (not needed for correctness).
    std::thread::sleep(Duration::from_millis(200));
    let got = read_to_end(&mut peer);
    assert_eq!(got.len(), TOTAL);
    check_pattern(&got, 0);
    drop(peer); // the FIN ends the loop's close linger
    clog.assert_ends(&[Call::Connected, Call::Drained, Call::Disconnected]);
    assert!(
        refusals.load(Ordering::Relaxed) > 0,
        "the queue never hit the high-water mark"
    );
    let stats = fresh_stats(&running.handle);
    assert!(stats.bytes_queued_peak <= 256 << 10, "{stats:?}");
    assert_eq!(stats.bytes_out, TOTAL as u64);
    running.stop();
}

#[test]
fn write_over_high_water_is_refused_and_nothing_is_lost() {
    const TOTAL: usize = 4 << 20;
    let refusals = Arc::new(AtomicUsize::new(0));
    let r2 = refusals.clone();
    let config = config()
        .high_water(100_000)
        .low_water(10_000)
        .socket_buffers(SMALL.0, SMALL.1);
    let (running, addr, _llog, clog) = serve_one(config, move |log| {
        writer(log, TOTAL, 30_000, r2).on_data(|c, _| {
            // Larger than the high-water mark: refused whole, data back.
            let big = Bytes::from(vec![7u8; 100_001]);
            let e = c.write(big).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(e.into_data().len(), 100_001);
        })
    });
    let mut peer = small_client(addr);
    clog.wait_for(Call::Connected);
    write_all(&mut peer, b"x");
    std::thread::sleep(Duration::from_millis(100));
    let got = read_to_end(&mut peer);
    assert_eq!(got.len(), TOTAL);
    check_pattern(&got, 0);
    drop(peer);
    assert!(refusals.load(Ordering::Relaxed) > 0);
    let stats = fresh_stats(&running.handle);
    // The refusals counted here plus the one InvalidInput write.
    assert!(stats.writes_refused as usize > refusals.load(Ordering::Relaxed));
    assert!(stats.bytes_queued_peak <= 100_000, "{stats:?}");
    running.stop();
}

#[test]
fn peer_half_close() {
    let (running, addr, _llog, clog) = serve_one(config(), |log| {
        Recorder::new(log).on_client_close(|c| {
            // Still writable after the peer's FIN.
            c.write(Bytes::from_static(b"bye")).unwrap();
            c.close();
        })
    });
    let mut peer = client(addr);
    write_all(&mut peer, b"abc");
    peer.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut peer), b"bye");
    clog.assert_ends(&[
        Call::Connected,
        Call::Data(b"abc".to_vec()),
        Call::ClientClose,
        Call::Disconnected,
    ]);
    running.stop();
}

#[test]
fn peer_reset() {
    let (running, addr, _llog, clog) = serve_one(config(), |log| {
        Recorder::new(log).on_connected(|c| c.write(Bytes::from_static(b"unread")).unwrap())
    });
    let peer = client(addr);
    clog.wait_for(Call::Connected);
    // Unread data in the peer's buffer: its close is a reset everywhere.
    let mut buf = [0u8; 6];
    let deadline = std::time::Instant::now() + LONG;
    while peer.peek(&mut buf).unwrap() < 6 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    reset(peer);
    clog.assert_ends(&[Call::Connected, Call::Reset, Call::Disconnected]);
    running.stop();
}

#[test]
fn local_close_with_queued_data_delivers_all_of_it() {
    const TOTAL: usize = 16 << 20;
    let config = config()
        .high_water(32 << 20)
        .low_water(1 << 20)
        .socket_buffers(SMALL.0, SMALL.1);
    let (running, addr, _llog, clog) = serve_one(config, |log| {
        Recorder::new(log).on_connected(|c| {
            for i in 0..16 {
                c.write(pattern_bytes(i << 20, 1 << 20)).unwrap();
            }
            assert!(c.queued_bytes() > 0, "the kernel took 16 MiB at once");
            c.close();
            // Closing: further writes are refused.
            let e = c.write(Bytes::from_static(b"late")).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        })
    });
    let mut peer = small_client(addr);
    clog.wait_for(Call::Connected);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    let mut got = Vec::new();
    if let Err(e) = peer.read_to_end(&mut got) {
        let stats = fresh_stats(&running.handle);
        panic!(
            "read failed after {} of {TOTAL} bytes and {:?}: {e}; the loop's graceful \
             closes that timed out without progress: {} (a lost writable event?)",
            got.len(),
            t0.elapsed(),
            stats.close_timeouts
        );
    }
    assert_eq!(got.len(), TOTAL);
    check_pattern(&got, 0);
    // The peer's FIN ends the loop's close linger.
    drop(peer);
    clog.assert_ends(&[Call::Connected, Call::Disconnected]);
    assert_eq!(fresh_stats(&running.handle).close_timeouts, 0);
    running.stop();
}

#[test]
fn local_abort_resets_the_peer() {
    let (running, addr, _llog, clog) =
        serve_one(config(), |log| Recorder::new(log).on_data(|c, _| c.abort()));
    let mut peer = client(addr);
    write_all(&mut peer, b"x");
    clog.wait_for(Call::Disconnected);
    assert_reset(read_outcome(&mut peer));
    clog.assert_ends(&[
        Call::Connected,
        Call::Data(b"x".to_vec()),
        Call::Disconnected,
    ]);
    running.stop();
}

#[test]
fn oob_byte() {
    let (running, addr, _llog, clog) = serve_one(config(), Recorder::new);
    let supports = {
        let (tx, rx) = std::sync::mpsc::channel();
        running
            .handle
            .post(move |ctx| tx.send(ctx.supports_oob()).unwrap())
            .unwrap();
        rx.recv().unwrap()
    };
    let mut peer = client(addr);
    if !supports {
        assert_eq!(
            backend_name(),
            "kqueue",
            "only kqueue lacks priority events"
        );
        println!("SKIPPED on {}: no out-of-band notification", backend_name());
        return;
    }
    write_all(&mut peer, b"a");
    clog.wait_for(Call::Data(b"a".to_vec()));
    socket2::SockRef::from(&peer)
        .send_out_of_band(b"!")
        .unwrap();
    clog.wait_for(Call::Oob(b'!'));
    drop(peer);
    clog.assert_ends(&[
        Call::Connected,
        Call::Data(b"a".to_vec()),
        Call::Oob(b'!'),
        Call::ClientClose,
        Call::Disconnected,
    ]);
    running.stop();
}

#[test]
fn listener_accepts_and_refuses_over_the_limit() {
    let llog = Log::new();
    let logs = [Log::new(), Log::new()];
    let (l2, c2) = (llog.clone(), logs.clone());
    let (running, addr) = spawn_listener(config().max_connections(2), move || {
        RecListener::new(&l2, move |n| Recorder::new(&c2[n]))
    });
    let a = client(addr);
    llog.wait_for(Call::Incoming);
    let b = client(addr);
    llog.wait_until("two incoming", |v| v.len() == 2);
    let mut c = client(addr);
    llog.wait_for(Call::Refused);
    assert_reset(read_outcome(&mut c));
    assert_eq!(llog.get(), [Call::Incoming, Call::Incoming, Call::Refused]);
    let stats = fresh_stats(&running.handle);
    assert_eq!(
        (stats.connections_accepted, stats.connections_refused),
        (2, 1)
    );
    assert_eq!(stats.connections_open, 2);
    drop((a, b));
    for log in &logs {
        log.assert_ends(&[Call::Connected, Call::ClientClose, Call::Disconnected]);
    }
    running.stop();
}

#[test]
fn listener_handler_refuses() {
    let log = Log::new();
    let l2 = log.clone();
    let (running, addr) = spawn(config(), move |lp| {
        let l = lp
            .listen(
                "127.0.0.1:0".parse().unwrap(),
                16,
                listener_fn(move |_| {
                    l2.push(Call::Refused);
                    None::<Echo>
                }),
            )
            .unwrap();
        lp.listener_addr(l).unwrap()
    });
    let mut c = client(addr);
    log.wait_for(Call::Refused);
    assert_reset(read_outcome(&mut c));
    assert_eq!(fresh_stats(&running.handle).connections_refused, 1);
    running.stop();
}

#[test]
fn idle_timeout_rearmed_by_reads() {
    let config = config().idle_timeout(Some(Duration::from_millis(1000)));
    let (running, addr, _llog, clog) = serve_one(config, Recorder::new);
    let mut peer = client(addr);
    // 15 reads 100 ms apart: 1.5 s of activity, never 1 s idle.
    for _ in 0..15 {
        write_all(&mut peer, b"a");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !clog.get().contains(&Call::Timeout),
        "timed out while active: {:?}",
        clog.get()
    );
    clog.wait_for(Call::Timeout);
    // The default on_timeout closes: the peer sees the end of the stream.
    assert_eq!(read_to_end(&mut peer), b"");
    drop(peer);
    clog.assert_ends(&[
        Call::Connected,
        Call::Data(b"aaaaaaaaaaaaaaa".to_vec()),
        Call::Timeout,
        Call::Disconnected,
    ]);
    assert_eq!(fresh_stats(&running.handle).timeouts, 1);
    running.stop();
}

#[test]
fn udp_datagrams_both_ways() {
    let log = Log::new();
    let l2 = log.clone();
    let (running, addr) = spawn(config(), move |lp| {
        let id = lp
            .bind_udp(
                "127.0.0.1:0".parse().unwrap(),
                RecUdp::new(&l2).on_datagram(|u, from, d| u.send_to(d, from).unwrap()),
            )
            .unwrap();
        lp.with_udp(id, |u| u.local_addr().unwrap()).unwrap()
    });
    let peer = udp_peer();
    peer.send_to(b"hi", addr).unwrap();
    let mut buf = [0; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hi"[..], addr));
    peer.send_to(b"again", addr).unwrap();
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
    let stats = fresh_stats(&running.handle);
    assert_eq!((stats.datagrams_in, stats.datagrams_out), (2, 2));
    running.stop();
    assert_eq!(
        log.get(),
        [
            Call::Datagram(b"hi".to_vec()),
            Call::Datagram(b"again".to_vec()),
            Call::UdpClosed
        ]
    );
}

#[test]
fn udp_connected() {
    let peer = udp_peer();
    let paddr = peer.local_addr().unwrap();
    let log = Log::new();
    let l2 = log.clone();
    let (running, addr) = spawn(config(), move |lp| {
        let id = lp
            .bind_udp("127.0.0.1:0".parse().unwrap(), RecUdp::new(&l2))
            .unwrap();
        lp.with_udp(id, |u| {
            u.connect(paddr).unwrap();
            u.socket().unwrap().set_multicast_loop_v4(true).unwrap();
            u.send(Bytes::from_static(b"to peer")).unwrap();
            u.local_addr().unwrap()
        })
        .unwrap()
    });
    let mut buf = [0; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to peer"[..], addr));
    peer.send_to(b"back", addr).unwrap();
    log.wait_for(Call::Datagram(b"back".to_vec()));
    running.stop();
}

/// The datagram queue over its cap, for each policy. A UDP send on loopback
/// never blocks (the receiver drops instead), so the test makes the loop
/// behave as if the kernel were full (`simulate_kernel_full`), sends three
/// datagrams into a queue of two, then lets the queue drain.
type QueueOutcome = (
    Vec<Result<(), io::ErrorKind>>,
    Vec<Vec<u8>>,
    readiness_net::Stats,
    Vec<Call>,
);

fn udp_queue_over_cap(policy: UdpQueuePolicy) -> QueueOutcome {
    let peer = udp_peer();
    let paddr = peer.local_addr().unwrap();
    let log = Log::new();
    let l2 = log.clone();
    let config = config().udp_max_queued(2).udp_policy(policy);
    let (running, results) = spawn(config, move |lp| {
        let id = lp
            .bind_udp("127.0.0.1:0".parse().unwrap(), RecUdp::new(&l2))
            .unwrap();
        let results = lp
            .with_udp(id, |u| {
                u.simulate_kernel_full(true);
                let r: Vec<_> = [&b"1"[..], b"2", b"3"]
                    .iter()
                    .map(|d| match u.send_to(Bytes::copy_from_slice(d), paddr) {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            assert_eq!(&e.data()[..], &b"3"[..], "the refused datagram comes back");
                            Err(e.kind())
                        }
                    })
                    .collect();
                assert_eq!(u.queued(), 2);
                r
            })
            .unwrap();
        let stats = lp.stats();
        assert_eq!(stats.datagrams_queued, 2);
        lp.with_udp(id, |u| u.simulate_kernel_full(false)).unwrap();
        results
    });
    let mut got = Vec::new();
    let mut buf = [0; 16];
    for _ in 0..2 {
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        got.push(buf[..n].to_vec());
    }
    log.wait_for(Call::UdpDrained);
    let stats = fresh_stats(&running.handle);
    running.stop();
    (results, got, stats, log.get())
}

#[test]
fn udp_queue_over_cap_refuse() {
    let (results, got, stats, log) = udp_queue_over_cap(UdpQueuePolicy::Refuse);
    assert_eq!(results, [Ok(()), Ok(()), Err(io::ErrorKind::WouldBlock)]);
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
    assert_eq!((stats.datagrams_refused, stats.datagrams_dropped), (1, 0));
    assert_eq!((stats.datagrams_out, stats.datagrams_queued), (2, 0));
    assert_eq!(log, [Call::UdpDrained, Call::UdpClosed]);
}

#[test]
fn udp_queue_over_cap_drop_newest() {
    let (results, got, stats, log) = udp_queue_over_cap(UdpQueuePolicy::DropNewest);
    assert_eq!(results, [Ok(()), Ok(()), Ok(())]);
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
    assert_eq!((stats.datagrams_refused, stats.datagrams_dropped), (0, 1));
    assert_eq!(log, [Call::UdpDrained, Call::UdpClosed]);
}

#[test]
fn udp_queue_over_cap_drop_oldest() {
    let (results, got, stats, log) = udp_queue_over_cap(UdpQueuePolicy::DropOldest);
    assert_eq!(results, [Ok(()), Ok(()), Ok(())]);
    assert_eq!(got, [b"2".to_vec(), b"3".to_vec()]);
    assert_eq!((stats.datagrams_refused, stats.datagrams_dropped), (0, 1));
    assert_eq!(log, [Call::UdpDrained, Call::UdpClosed]);
}

/// A client that sends without reading: the echo server pauses reading at
/// its high-water mark, so its memory stays under the cap; once the client
/// reads, every byte comes back.
#[test]
fn non_reading_client_cannot_grow_the_server_queue() {
    const TOTAL: usize = 4 << 20;
    const HIGH: usize = 64 << 10;
    let config = config()
        .high_water(HIGH)
        .low_water(16 << 10)
        .loop_max_queued(1 << 20)
        .socket_buffers(SMALL.0, SMALL.1);
    let (running, addr) = spawn(config, |lp| {
        let l = lp
            .listen(
                "127.0.0.1:0".parse().unwrap(),
                16,
                listener_fn(|_| Some(Echo::new())),
            )
            .unwrap();
        lp.listener_addr(l).unwrap()
    });
    let mut peer = small_client(addr);
    let mut w = peer.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let data = pattern_bytes(0, TOTAL);
        w.write_all(&data).unwrap();
    });
    // The client reads nothing for a while; the server's queue stays capped.
    let handle = running.handle.clone();
    let mut max_seen = 0;
    let deadline = std::time::Instant::now() + LONG;
    let mut samples = 0;
    // At least 50 samples, and until the server has queued something.
    while samples < 50 || (max_seen == 0 && std::time::Instant::now() < deadline) {
        std::thread::sleep(Duration::from_millis(10));
        let s = handle.stats();
        max_seen = max_seen.max(s.bytes_queued);
        assert!(s.bytes_queued <= HIGH as u64, "{s:?}");
        samples += 1;
    }
    assert!(
        max_seen > 0,
        "the server never queued anything: the test proves nothing"
    );
    let got = read_n(&mut peer, TOTAL);
    check_pattern(&got, 0);
    writer.join().unwrap();
    let s = fresh_stats(&handle);
    assert!(s.bytes_queued_peak <= HIGH as u64, "{s:?}");
    assert!(s.writes_refused > 0, "{s:?}");
    running.stop();
}

#[test]
fn write_from_another_thread_and_stale_ids() {
    // Ids: a connection made by the loop, written to from this thread, then
    // closed; its id then gives NotFound.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let laddr = listener.local_addr().unwrap();
    let log = Log::new();
    let l2 = log.clone();
    let (running, id) = spawn(config(), move |lp| {
        lp.connect(laddr, Recorder::new(&l2)).unwrap()
    });
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(LONG)).unwrap();
    log.wait_for(Call::Connected);
    running
        .handle
        .write(id, Bytes::from_static(b"posted"))
        .unwrap();
    assert_eq!(read_n(&mut peer, 6), b"posted");
    drop(peer);
    log.wait_for(Call::Disconnected);
    let (tx, rx) = std::sync::mpsc::channel();
    running
        .handle
        .post(move |ctx| {
            let e = ctx.write(id, Bytes::from_static(b"stale")).unwrap_err();
            tx.send((e.kind(), ctx.close(id).unwrap_err().kind()))
                .unwrap();
        })
        .unwrap();
    assert_eq!(
        rx.recv().unwrap(),
        (io::ErrorKind::NotFound, io::ErrorKind::NotFound)
    );
    let h = running.handle.clone();
    running.stop();
    // After the stop: refused, data given back.
    let e = h.write(id, Bytes::from_static(b"late")).unwrap_err();
    assert_eq!(
        (e.kind(), &e.data()[..]),
        (io::ErrorKind::NotConnected, &b"late"[..])
    );
    assert_eq!(
        h.post(|_| {}).unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
}

#[test]
fn timers_fire_in_order_and_repeat() {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l2 = log.clone();
    let (running, _) = spawn(config(), move |lp| {
        let (a, b, c) = (l2.clone(), l2.clone(), l2.clone());
        lp.timer_after(Duration::from_millis(60), move |_| {
            a.lock().unwrap().push("60ms")
        });
        lp.timer_after(Duration::from_millis(20), move |_| {
            b.lock().unwrap().push("20ms")
        });
        let cancelled =
            lp.timer_after(Duration::from_millis(40), |_| panic!("cancelled timer ran"));
        assert!(lp.cancel_timer(cancelled));
        assert!(!lp.cancel_timer(cancelled));
        let mut n = 0;
        lp.timer_every(Duration::from_millis(25), move |ctx| {
            n += 1;
            c.lock().unwrap().push("tick");
            if n == 3 {
                ctx.stop();
            }
        });
    });
    let deadline = std::time::Instant::now() + LONG;
    while !running.handle.is_stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "timers never stopped the loop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    running.stop();
    let v = log.lock().unwrap().clone();
    assert_eq!(v.iter().filter(|s| **s == "tick").count(), 3, "{v:?}");
    assert_eq!(v[0], "20ms", "{v:?}");
    let p60 = v.iter().position(|s| *s == "60ms");
    // The third tick (75 ms) stops the loop; the 60 ms timer ran before it.
    assert!(p60.is_some(), "{v:?}");
}

#[test]
fn graceful_shutdown_flushes_and_closes_everything() {
    const TOTAL: usize = 8 << 20;
    let logs: Vec<Log> = (0..3).map(|_| Log::new()).collect();
    let l2 = logs.clone();
    let llog = Log::new();
    let ll = llog.clone();
    let config = config().high_water(16 << 20);
    let (running, addr) = spawn_listener(config, move || {
        RecListener::new(&ll, move |n| {
            Recorder::new(&l2[n]).on_data(move |c, _| {
                // The first connection gets a large reply queued.
                if n == 0 {
                    c.write(pattern_bytes(0, TOTAL)).unwrap();
                }
            })
        })
    });
    let mut peers: Vec<TcpStream> = (0..3).map(|_| client(addr)).collect();
    for p in &mut peers {
        write_all(p, b"go");
    }
    for log in &logs {
        log.wait_for(Call::Data(b"go".to_vec()));
    }
    let h = running.handle.clone();
    let reader = {
        let mut p = peers.remove(0);
        std::thread::spawn(move || read_to_end(&mut p))
    };
    h.shutdown(LONG);
    let got = reader.join().unwrap();
    assert_eq!(
        got.len(),
        TOTAL,
        "queued data was not flushed by the shutdown"
    );
    check_pattern(&got, 0);
    running.stop();
    for log in &logs {
        log.assert_ends(&[
            Call::Connected,
            Call::Data(b"go".to_vec()),
            Call::Disconnected,
        ]);
    }
    assert_eq!(llog.get().last(), Some(&Call::ListenerClosed));
    // New connections are no longer accepted.
    assert!(
        TcpStream::connect(addr).is_err() || {
            let mut s = client(addr);
            matches!(read_outcome(&mut s), Ok(0) | Err(_))
        }
    );
}

#[test]
fn writev_write_slice_request_writable_and_shutdown_write() {
    let (running, addr, _llog, clog) = serve_one(config(), |log| {
        Recorder::new(log)
            .on_connected(|c| {
                c.writev(&[
                    Bytes::from_static(b"one "),
                    Bytes::from_static(b"two "),
                    Bytes::from_static(b"three "),
                ])
                .unwrap();
                c.write_slice(b"four").unwrap();
                c.request_writable();
            })
            .on_writable(|c| {
                // Half-close: what is queued goes first, then FIN; reading
                // goes on.
                c.shutdown(Shutdown::Write).unwrap();
                assert!(!c.is_writable());
            })
            .on_client_close(|c| c.close())
    });
    let mut peer = client(addr);
    assert_eq!(read_to_end(&mut peer), b"one two three four");
    write_all(&mut peer, b"more");
    clog.wait_for(Call::Data(b"more".to_vec()));
    peer.shutdown(Shutdown::Write).unwrap();
    clog.assert_ends(&[
        Call::Connected,
        Call::Writable,
        Call::Data(b"more".to_vec()),
        Call::ClientClose,
        Call::Disconnected,
    ]);
    running.stop();
}

/// The loop's cap on queued bytes: a second connection's write is refused
/// while the first holds the loop's budget, and it gets `on_drained` once
/// the first has drained.
#[test]
fn loop_cap_refuses_and_drains() {
    const MIB: usize = 1 << 20;
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let logs = [Log::new(), Log::new()];
    let (l2, c2, r2) = (Log::new(), logs.clone(), results.clone());
    let config = config()
        .high_water(MIB)
        .low_water(MIB / 4)
        .loop_max_queued(MIB + MIB / 2)
        .socket_buffers(SMALL.0, SMALL.1);
    let (running, addr) = spawn_listener(config, move || {
        RecListener::new(&l2, move |n| {
            let (r, r3) = (r2.clone(), r2.clone());
            Recorder::new(&c2[n])
                .on_connected(move |c| {
                    let res = c.write(pattern_bytes(0, MIB)).map_err(|e| e.kind());
                    r.lock().unwrap().push((n, res));
                })
                .on_drained(move |c| {
                    // Retried at each drained call until the loop has room
                    // (a refusal here is legitimate: the first connection
                    // may not have drained far enough yet).
                    let mut r = r3.lock().unwrap();
                    if n == 1 && r.len() == 2 && c.write(pattern_bytes(0, MIB)).is_ok() {
                        r.push((n, Ok(())));
                    }
                })
        })
    });
    let mut a = small_client(addr);
    logs[0].wait_for(Call::Connected);
    let mut b = small_client(addr);
    logs[1].wait_for(Call::Connected);
    let deadline = std::time::Instant::now() + LONG;
    while results.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the handlers never wrote"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    {
        let r = results.lock().unwrap().clone();
        assert_eq!(r[0], (0, Ok(())));
        assert_eq!(r[1], (1, Err(io::ErrorKind::WouldBlock)), "{r:?}");
    }
    let got = read_n(&mut a, MIB);
    check_pattern(&got, 0);
    logs[1].wait_for(Call::Drained);
    let got = read_n(&mut b, MIB);
    check_pattern(&got, 0);
    assert_eq!(results.lock().unwrap().get(2), Some(&(1, Ok(()))));
    drop((a, b));
    running.stop();
}

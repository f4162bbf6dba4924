//! The readiness-async suite, run unchanged on every backend (epoll, poll(2),
//! Windows `afd` and `afd-direct`): see `util` for how the backend is chosen.

mod util;

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use async_executor::{Executor, LocalExecutor};
use futures_lite::future::{self, poll_once};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use readiness::{Backend, Mode};
use readiness_async::{Async, Reactor, Timer, block_on};
use util::*;

// ------------------------------------------------------------ helpers

/// Echoes everything on `stream` until the peer closes it.
async fn echo(mut stream: Async<TcpStream>) -> io::Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// An echo server on `ex`: accepts forever, one task per connection.
fn spawn_echo_server(ex: &Rc<LocalExecutor<'static>>) -> (SocketAddr, async_executor::Task<()>) {
    let listener = listener();
    let addr = listener.get_ref().local_addr().unwrap();
    let spawner = ex.clone();
    let task = ex.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            spawner.spawn(echo(stream)).detach();
        }
    });
    (addr, task)
}

/// Round trips completed by the echo clients (of every test), to tell a
/// slow run from a stalled one.
static ROUND_TRIPS: AtomicUsize = AtomicUsize::new(0);

/// Connects to `addr` and checks `messages` round trips of varied sizes.
async fn echo_client(addr: SocketAddr, conn: usize, messages: usize) -> io::Result<()> {
    let mut stream = Async::<TcpStream>::connect(addr).await?;
    stream.get_ref().set_nodelay(true)?;
    for seq in 0..messages {
        let msg = pattern(conn, seq, 1 + (conn * 7 + seq * 13) % 300);
        stream.write_all(&msg).await?;
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).await?;
        assert_eq!(back, msg, "connection {conn}, message {seq}: wrong echo");
        ROUND_TRIPS.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// A one-shot signal for any number of waiters on any threads (so the tests
/// do not depend on a channel crate).
#[derive(Default)]
struct Signal {
    set: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Signal {
    fn set(&self) {
        self.set.store(true, Ordering::SeqCst);
        for w in self.wakers.lock().unwrap().drain(..) {
            w.wake();
        }
    }

    async fn wait(&self) {
        future::poll_fn(|cx| {
            self.wakers.lock().unwrap().push(cx.waker().clone());
            if self.set.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Runs `f(executor)` inside `block_on(executor.run(..))` on this thread and
/// on `threads - 1` more threads running the same multi-threaded executor.
fn multi_threaded<T: Send + 'static, F>(
    threads: usize,
    f: impl FnOnce(Arc<Executor<'static>>) -> F,
) -> T
where
    F: Future<Output = T> + Send + 'static,
{
    let ex = Arc::new(Executor::new());
    let stop = Arc::new(Signal::default());
    let workers: Vec<_> = (1..threads)
        .map(|i| {
            let ex = ex.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("executor-{i}"))
                .spawn(move || block_on(ex.run(async move { stop.wait().await })))
                .unwrap()
        })
        .collect();
    let main = ex.spawn(f(ex.clone()));
    let output = block_on(ex.run(main));
    stop.set();
    for worker in workers {
        worker.join().unwrap();
    }
    output
}

// ------------------------------------------------------------ the reactor

#[test]
fn registration_mode_follows_the_backend() {
    let reactor = reactor();
    let edge = matches!(reactor.backend(), Backend::Epoll | Backend::Kqueue);
    let expected = if edge { Mode::Edge } else { Mode::Oneshot };
    assert_eq!(reactor.registration_mode(), expected, "{reactor:?}");
}

#[test]
fn install_after_first_use_is_refused() {
    let reactor = reactor();
    let err = Reactor::install(readiness::Builder::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert!(
        err.to_string().contains(reactor.backend().name()),
        "message names the backend: {err}"
    );
}

// ------------------------------------------------------------ echo

#[test]
fn echo_100_tasks_x_100_messages_local_executor() {
    run(|| {
        let ex = Rc::new(LocalExecutor::new());
        block_on(ex.run(async {
            let (addr, server) = spawn_echo_server(&ex);
            let clients: Vec<_> = (0..100)
                .map(|conn| ex.spawn(echo_client(addr, conn, 100)))
                .collect();
            without_stall("100 echo clients x 100 messages", &ROUND_TRIPS, async {
                for client in clients {
                    client.await.unwrap();
                }
            })
            .await;
            drop(server);
        }));
    });
}

#[test]
fn echo_100_tasks_x_100_messages_multi_threaded_executor() {
    run(|| {
        multi_threaded(3, |ex| async move {
            let listener = listener();
            let addr = listener.get_ref().local_addr().unwrap();
            let spawner = ex.clone();
            let server = ex.spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.expect("accept");
                    spawner.spawn(echo(stream)).detach();
                }
            });
            let clients: Vec<_> = (0..100)
                .map(|conn| ex.spawn(echo_client(addr, conn, 100)))
                .collect();
            without_stall(
                "100 echo clients x 100 messages on 3 threads",
                &ROUND_TRIPS,
                async {
                    for client in clients {
                        client.await.unwrap();
                    }
                },
            )
            .await;
            drop(server);
        })
    });
}

#[test]
fn echo_on_futures_thread_pool_driven_by_the_fallback_thread() {
    run(|| {
        let pool = futures::executor::ThreadPool::builder()
            .pool_size(2)
            .create()
            .unwrap();
        let listener = listener();
        let addr = listener.get_ref().local_addr().unwrap();
        let handle = pool.clone();
        pool.spawn_ok(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                handle.spawn_ok(async move {
                    let _ = echo(stream).await;
                });
            }
        });
        let (tx, rx) = mpsc::channel();
        for conn in 0..20 {
            let tx = tx.clone();
            pool.spawn_ok(async move {
                let _ = tx.send(echo_client(addr, conn, 50).await);
            });
        }
        for _ in 0..20 {
            rx.recv_timeout(LONG * 3)
                .expect("echo client on the thread pool did not finish")
                .unwrap();
        }
    });
}

// ------------------------------------------------------------ one socket, two tasks

#[test]
fn a_reader_and_a_writer_task_on_one_socket_at_once() {
    const TOTAL: usize = 4 << 20;
    run(|| {
        multi_threaded(3, |ex| async move {
            let (client, server) = tcp_pair().await;
            let echo_task = ex.spawn(echo(server));
            let client = Arc::new(client);
            let writer = {
                let client = client.clone();
                ex.spawn(async move {
                    let data = pattern(1, 0, TOTAL);
                    for chunk in data.chunks(64 << 10) {
                        (&*client).write_all(chunk).await?;
                    }
                    io::Result::Ok(())
                })
            };
            let reader = {
                let client = client.clone();
                ex.spawn(async move {
                    let expected = pattern(1, 0, TOTAL);
                    let mut got = vec![0u8; TOTAL];
                    (&*client).read_exact(&mut got).await?;
                    assert!(got == expected, "data came back altered");
                    io::Result::Ok(())
                })
            };
            within("4 MiB written and read back concurrently", async {
                writer.await.unwrap();
                reader.await.unwrap();
            })
            .await;
            drop(echo_task);
        })
    });
}

#[test]
fn a_waiting_writer_is_served_after_the_reader_of_its_socket_got_data_and_left() {
    // Under the oneshot rule one event disarms the whole registration: the
    // writer's direction must be re-armed although nobody waits to read.
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let (a, b) = tcp_pair().await;
            let chunk = vec![5u8; 64 << 10];
            let mut filled = 0usize;
            loop {
                match a.get_ref().write(&chunk) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            let a = Rc::new(a);
            let writer = {
                let a = a.clone();
                ex.spawn(async move { (&*a).write_all(&[6u8; 1000]).await })
            };
            let reader = {
                let a = a.clone();
                ex.spawn(async move {
                    let mut one = [0u8; 1];
                    (&*a).read_exact(&mut one).await.map(|()| one[0])
                })
            };
            // Both wait now (likely; the test holds either way).
            Timer::after(Duration::from_millis(20)).await;
            (&b).write_all(&[9]).await.unwrap();
            assert_eq!(within("the reader", reader).await.unwrap(), 9);
            // The reader is gone; drain the peer so the writer can go on.
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            within("the writer after the peer drained", async {
                while total < filled + 1000 {
                    total += (&b).read(&mut buf).await.unwrap();
                }
            })
            .await;
            within("the writer's result", writer).await.unwrap();
        }));
    });
}

// ------------------------------------------------------------ cancellation

#[test]
fn a_dropped_pending_read_loses_no_data() {
    run(|| {
        block_on(async {
            let (mut a, mut b) = tcp_pair().await;
            let mut buf = [0u8; 64];

            // Pending read dropped before anything arrives.
            assert!(
                poll_once(a.read(&mut buf)).await.is_none(),
                "read of an empty socket"
            );
            // Pending readable(), read_with and a read dropped after the data
            // arrived and was reported (the sleep makes that likely).
            {
                let mut readable = a.readable();
                // A new source counts as ready once: consume that first.
                let _ = poll_once(&mut readable).await;
                let mut readable = a.readable();
                let mut read_with = Box::pin(a.read_with(|s| {
                    let mut one = [0u8; 1];
                    s.peek(&mut one)
                }));
                assert!(poll_once(&mut readable).await.is_none());
                assert!(poll_once(&mut read_with).await.is_none());
                b.write_all(b"kept").await.unwrap();
                Timer::after(Duration::from_millis(20)).await;
            }
            let n = within("read after cancelled waits", a.read(&mut buf))
                .await
                .unwrap();
            assert_eq!(&buf[..n], b"kept");

            // And again: the next message after the first got through.
            assert!(poll_once(a.read(&mut buf)).await.is_none());
            b.write_all(b"more").await.unwrap();
            let n = within("second read", a.read(&mut buf)).await.unwrap();
            assert_eq!(&buf[..n], b"more");
        })
    });
}

#[test]
fn a_cancelled_accept_loses_no_connection() {
    run(|| {
        block_on(async {
            let listener = listener();
            let addr = listener.get_ref().local_addr().unwrap();
            assert!(poll_once(listener.accept()).await.is_none());
            let client = TcpStream::connect(addr).unwrap();
            let (accepted, peer) = within("accept", listener.accept()).await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            drop(accepted);
        })
    });
}

// ------------------------------------------------------------ timers

#[test]
fn timers_fire_in_deadline_order_and_never_early() {
    run(|| {
        let ex = LocalExecutor::new();
        let fired: Rc<RefCell<Vec<(u64, Instant, Instant)>>> = Rc::default();
        let start = Instant::now() + Duration::from_millis(5);
        let offsets_ms = [37u64, 5, 23, 1, 50, 12, 0, 44, 8, 30, 30, 2, 19];
        block_on(ex.run(async {
            let tasks: Vec<_> = offsets_ms
                .iter()
                .map(|&ms| {
                    let fired = fired.clone();
                    ex.spawn(async move {
                        let deadline = start + Duration::from_millis(ms);
                        let reported = Timer::at(deadline).await;
                        let now = Instant::now();
                        assert_eq!(reported, deadline, "a timer reports its deadline");
                        fired.borrow_mut().push((ms, deadline, now));
                    })
                })
                .collect();
            within("timers", async {
                for t in tasks {
                    t.await;
                }
            })
            .await;
        }));
        let fired = fired.borrow();
        for &(ms, deadline, now) in fired.iter() {
            assert!(now >= deadline, "timer of {ms} ms fired early");
            assert!(
                now - deadline < Duration::from_secs(5),
                "timer of {ms} ms fired {:?} late",
                now - deadline
            );
        }
        let order: Vec<u64> = fired.iter().map(|f| f.0).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "timers completed out of deadline order");
    });
}

#[test]
fn interval_yields_each_deadline_never_early() {
    run(|| {
        block_on(async {
            let start = Instant::now() + Duration::from_millis(2);
            let period = Duration::from_millis(7);
            let mut interval = Timer::interval_at(start, period);
            for k in 0..6u32 {
                let when = within("interval tick", interval.next()).await.unwrap();
                assert_eq!(when, start + period * k);
                assert!(Instant::now() >= when, "tick {k} early");
            }
            assert_eq!(interval.deadline(), Some(start + period * 6));
        })
    });
}

#[test]
fn timer_edge_cases() {
    run(|| {
        block_on(async {
            // In the past, or zero: completes at once.
            let past = Instant::now();
            assert_eq!(Timer::at(past).await, past);
            Timer::after(Duration::ZERO).await;
            // Never, and a duration too long to represent, never fire.
            assert!(within_short(Timer::never()).await.is_none());
            assert!(within_short(Timer::after(Duration::MAX)).await.is_none());
            assert_eq!(Timer::after(Duration::MAX).deadline(), None);
            // One-shot as a stream: one item, then the end.
            let mut once = Timer::after(Duration::from_millis(1));
            assert!(once.next().await.is_some());
            assert!(once.next().await.is_none());
            // Re-set while pending, to earlier and later.
            let mut t = Timer::after(Duration::from_secs(3600));
            assert!(poll_once(&mut t).await.is_none());
            let soon = Instant::now() + Duration::from_millis(3);
            t.set_at(soon);
            assert_eq!(within("re-set timer", &mut t).await, soon);
            t.set_after(Duration::from_secs(3600));
            assert!(within_short(&mut t).await.is_none());
        })
    });
}

#[test]
fn an_earlier_timer_wakes_a_driver_already_waiting_for_a_later_one() {
    run(|| {
        // Thread 1 blocks in block_on on a far timer; thread 2 then adds a
        // near one from a plain thread (no block_on of its own): the driver
        // must recompute its deadline.
        let far = std::thread::spawn(|| block_on(Timer::after(Duration::from_millis(600))));
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let near = Instant::now() + Duration::from_millis(20);
        let (tx, rx) = mpsc::channel();
        let pool = futures::executor::ThreadPool::builder()
            .pool_size(1)
            .create()
            .unwrap();
        pool.spawn_ok(async move {
            let t = Timer::at(near).await;
            let _ = tx.send((t, Instant::now()));
        });
        let (t, fired) = rx.recv_timeout(LONG).expect("near timer did not fire");
        assert_eq!(t, near);
        assert!(fired >= near);
        assert!(
            fired - start < Duration::from_millis(500),
            "the near timer waited for the far one ({:?})",
            fired - start
        );
        far.join().unwrap();
    });
}

// ------------------------------------------------------------ peers going away

#[test]
fn a_closed_peer_reads_as_end_of_stream() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let (a, b) = tcp_pair().await;
            let a = Rc::new(a);
            // One read waits already when the peer closes.
            let reader = {
                let a = a.clone();
                ex.spawn(async move {
                    let mut buf = [0u8; 16];
                    (&*a).read(&mut buf).await
                })
            };
            // Let the reader start waiting (likely; not needed for correctness).
            Timer::after(Duration::from_millis(20)).await;
            drop(b);
            assert_eq!(within("read at peer close", reader).await.unwrap(), 0);
            let mut buf = [0u8; 16];
            assert_eq!(
                within("read after end", (&*a).read(&mut buf))
                    .await
                    .unwrap(),
                0
            );
            assert_eq!(
                within("read after end, again", (&*a).read(&mut buf))
                    .await
                    .unwrap(),
                0
            );
            // readable() completes at once on a closed stream, every time.
            within("readable at end", a.readable()).await.unwrap();
            within("readable at end, again", a.readable())
                .await
                .unwrap();
        }));
    });
}

#[test]
fn data_then_close_delivers_the_data_then_the_end() {
    run(|| {
        block_on(async {
            let (mut a, b) = tcp_pair().await;
            (&b).write_all(b"last words").await.unwrap();
            drop(b);
            let mut got = Vec::new();
            within("read to end", a.read_to_end(&mut got))
                .await
                .unwrap();
            assert_eq!(got, b"last words");
        })
    });
}

#[test]
fn a_reset_peer_wakes_the_reader_with_an_error() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let (a, b) = tcp_pair().await;
            let a = Rc::new(a);
            let reader = {
                let a = a.clone();
                ex.spawn(async move {
                    let mut buf = [0u8; 16];
                    (&*a).read(&mut buf).await
                })
            };
            // Let the reader start waiting (likely; not needed for correctness).
            Timer::after(Duration::from_millis(20)).await;
            reset(b);
            let result = within("read at peer reset", reader).await;
            match result {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
                // Wine reports a reset as the end of the stream
                // (docs/WINDOWS.md, "A read after a reset").
                Ok(0) if under_wine() => {}
                Ok(n) => panic!("read after a reset returned Ok({n})"),
            }
            // Writing to a reset connection fails; it never hangs.
            let big = vec![7u8; 1 << 20];
            let mut writes = 0;
            let err = within("writes after reset", async {
                loop {
                    match (&*a).write(&big).await {
                        Ok(_) => writes += 1,
                        Err(e) => return e,
                    }
                }
            })
            .await;
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::NotConnected
                ),
                "write after reset (after {writes} writes): {err}"
            );
        }));
    });
}

// ------------------------------------------------------------ accept, connect

#[test]
fn accept_loop_serves_many_clients() {
    const CLIENTS: usize = 50;
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let listener = listener();
            let addr = listener.get_ref().local_addr().unwrap();
            let served = Rc::new(AtomicUsize::new(0));
            let server = {
                let served = served.clone();
                let ex = &ex;
                async move {
                    let mut incoming = listener.incoming();
                    while let Some(stream) = incoming.next().await {
                        let mut stream = stream.expect("incoming connection");
                        let served = served.clone();
                        ex.spawn(async move {
                            let mut id = [0u8; 1];
                            stream.read_exact(&mut id).await.unwrap();
                            stream.write_all(&[id[0].wrapping_add(1)]).await.unwrap();
                            served.fetch_add(1, Ordering::SeqCst);
                        })
                        .detach();
                    }
                }
            };
            let clients = async {
                let clients: Vec<_> = (0..CLIENTS)
                    .map(|i| {
                        ex.spawn(async move {
                            let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
                            s.write_all(&[i as u8]).await.unwrap();
                            let mut reply = [0u8; 1];
                            s.read_exact(&mut reply).await.unwrap();
                            assert_eq!(reply[0], (i as u8).wrapping_add(1));
                        })
                    })
                    .collect();
                for c in clients {
                    c.await;
                }
            };
            within(
                "accept loop",
                future::or(clients, async {
                    server.await;
                    unreachable!("incoming() ended")
                }),
            )
            .await;
            assert_eq!(served.load(Ordering::SeqCst), CLIENTS);
        }));
    });
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    run(|| {
        block_on(async {
            let addr = closed_port();
            let err = within("refused connect", Async::<TcpStream>::connect(addr))
                .await
                .expect_err("connect to a closed port succeeded");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        })
    });
}

#[test]
fn connect_succeeds_with_the_right_peer() {
    run(|| {
        block_on(async {
            let listener = listener();
            let addr = listener.get_ref().local_addr().unwrap();
            let (client, accepted) = within(
                "connect",
                future::zip(Async::<TcpStream>::connect(addr), listener.accept()),
            )
            .await;
            let client = client.unwrap();
            let (server, peer) = accepted.unwrap();
            assert_eq!(client.get_ref().peer_addr().unwrap(), addr);
            assert_eq!(peer, client.get_ref().local_addr().unwrap());
            assert_eq!(server.get_ref().peer_addr().unwrap(), peer);
        })
    });
}

// ------------------------------------------------------------ UDP

#[test]
fn udp_send_to_recv_from_and_connected() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let a = udp_socket();
            let b = udp_socket();
            let a_addr = a.get_ref().local_addr().unwrap();
            let b_addr = b.get_ref().local_addr().unwrap();

            // A receive that waits first, then the datagram.
            let b = Rc::new(b);
            let receiver = {
                let b = b.clone();
                ex.spawn(async move {
                    let mut buf = [0u8; 64];
                    let (n, from) = b.recv_from(&mut buf).await.unwrap();
                    (buf[..n].to_vec(), from)
                })
            };
            Timer::after(Duration::from_millis(10)).await;
            a.send_to(b"ping", b_addr).await.unwrap();
            let (got, from) = within("recv_from", receiver).await;
            assert_eq!(got, b"ping");
            assert_eq!(from, a_addr);

            // Connected sockets, 500 datagrams ping-pong.
            a.get_ref().connect(b_addr).unwrap();
            b.get_ref().connect(a_addr).unwrap();
            within("500 datagram round trips", async {
                let mut buf = [0u8; 64];
                for i in 0..500u32 {
                    a.send(&i.to_le_bytes()).await.unwrap();
                    let n = b.recv(&mut buf).await.unwrap();
                    assert_eq!(&buf[..n], &i.to_le_bytes());
                    b.send(&buf[..n]).await.unwrap();
                    let n = a.recv(&mut buf).await.unwrap();
                    assert_eq!(&buf[..n], &i.to_le_bytes());
                }
            })
            .await;

            // peek_from leaves the datagram queued.
            a.send(b"peeked").await.unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = within("peek_from", b.peek_from(&mut buf)).await.unwrap();
            assert_eq!(&buf[..n], b"peeked");
            let n = within("recv after peek", b.recv(&mut buf)).await.unwrap();
            assert_eq!(&buf[..n], b"peeked");
        }));
    });
}

// ------------------------------------------------------------ sources going away

#[test]
fn dropping_one_handle_of_a_shared_source_keeps_the_waiter_going() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let (a, mut b) = tcp_pair().await;
            let a = Arc::new(a);
            let reader = {
                let a = a.clone();
                ex.spawn(async move {
                    let mut buf = [0u8; 16];
                    let n = (&*a).read(&mut buf).await.unwrap();
                    buf[..n].to_vec()
                })
            };
            Timer::after(Duration::from_millis(10)).await;
            drop(a); // the reader's handle keeps the source registered
            b.write_all(b"still here").await.unwrap();
            assert_eq!(
                within("read on the remaining handle", reader).await,
                b"still here"
            );
        }));
    });
}

#[test]
fn a_dropped_source_does_not_disturb_a_waiter_on_another_or_its_successor() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let waited = udp_socket();
            let waited_addr = waited.get_ref().local_addr().unwrap();
            let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
            let waited = Rc::new(waited);
            let waiter = {
                let waited = waited.clone();
                ex.spawn(async move {
                    let mut buf = [0u8; 16];
                    let (n, _) = waited.recv_from(&mut buf).await.unwrap();
                    buf[..n].to_vec()
                })
            };
            // Sources that become readable and are dropped with readiness
            // pending, their keys then reused by new sources.
            for round in 0..10 {
                let doomed = udp_socket();
                sender
                    .send_to(b"unread", doomed.get_ref().local_addr().unwrap())
                    .unwrap();
                if round % 2 == 0 {
                    Timer::after(Duration::from_millis(1)).await;
                }
                drop(doomed);
                let successor = udp_socket();
                let mut buf = [0u8; 16];
                // The successor has nothing: a stale readiness may make it
                // try, but it must not report data.
                assert!(
                    within_short(successor.recv_from(&mut buf)).await.is_none(),
                    "a new source received data that was not sent to it"
                );
            }
            sender.send_to(b"for you", waited_addr).unwrap();
            assert_eq!(
                within("waiter on the surviving source", waiter).await,
                b"for you"
            );
        }));
    });
}

// ------------------------------------------------------------ readiness futures

#[test]
fn readable_waits_for_data_and_wakes_every_waiter() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let (a, mut b) = tcp_pair().await;
            let a = Rc::new(a);
            // Consume the initial "new source counts as ready".
            a.readable().await.unwrap();
            let woken = Rc::new(AtomicUsize::new(0));
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let a = a.clone();
                    let woken = woken.clone();
                    ex.spawn(async move {
                        a.readable().await.unwrap();
                        woken.fetch_add(1, Ordering::SeqCst);
                    })
                })
                .collect();
            Timer::after(SHORT).await;
            assert_eq!(woken.load(Ordering::SeqCst), 0, "readable() without data");
            b.write_all(b"x").await.unwrap();
            within("three readable() waiters", async {
                for w in waiters {
                    w.await;
                }
            })
            .await;
            assert_eq!(woken.load(Ordering::SeqCst), 3);
            let mut buf = [0u8; 4];
            assert_eq!(a.get_ref().read(&mut buf).unwrap(), 1);
            // Drained: readable() waits again.
            assert!(
                within_short(a.readable()).await.is_none(),
                "readable() after draining"
            );
        }));
    });
}

#[test]
fn writable_waits_for_room_in_a_full_send_buffer() {
    run(|| {
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let (a, b) = tcp_pair().await;
            within("writable on a new socket", a.writable())
                .await
                .unwrap();
            // Fill the send buffer (and the peer's receive buffer).
            let chunk = vec![1u8; 64 << 10];
            let mut written = 0usize;
            loop {
                match a.get_ref().write(&chunk) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
                assert!(written < 256 << 20, "the send buffer never filled");
            }
            let a = Rc::new(a);
            let waiter = {
                let a = a.clone();
                ex.spawn(async move { a.write_with(|s| (&*s).write(&[2u8; 100])).await })
            };
            Timer::after(SHORT).await;
            assert!(
                !waiter.is_finished(),
                "write_with on a full socket completed"
            );
            // Drain the peer until the writer got through.
            let mut drained = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            let mut waiter = waiter;
            let n = within("write_with after the peer drained", async {
                loop {
                    if let Some(n) = poll_once(&mut waiter).await {
                        return n.unwrap();
                    }
                    drained += b.read_with(|s| (&*s).read(&mut buf)).await.unwrap();
                }
            })
            .await;
            assert_eq!(n, 100);
            assert!(drained > 0);
        }));
    });
}

// ------------------------------------------------------------ I/O helpers

#[test]
fn vectored_reads_and_writes() {
    run(|| {
        block_on(async {
            let (mut a, mut b) = tcp_pair().await;
            let parts: [&[u8]; 3] = [b"vec", b"tored ", b"write"];
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let n = within("write_vectored", a.write_vectored(&slices))
                .await
                .unwrap();
            assert_eq!(n, 14, "a small vectored write goes through whole");
            let mut first = [0u8; 5];
            let mut second = [0u8; 9];
            let mut got = 0;
            while got < 14 {
                let mut bufs = [IoSliceMut::new(&mut first), IoSliceMut::new(&mut second)];
                let n = within("read_vectored", b.read_vectored(&mut bufs))
                    .await
                    .unwrap();
                assert!(n > 0);
                got += n;
                if got < 14 {
                    // Unusual on loopback; keep it exact anyway.
                    panic!("vectored read split the message ({n} of 14)");
                }
            }
            assert_eq!(&first, b"vecto");
            assert_eq!(&second, b"red write");
        })
    });
}

#[test]
fn read_with_and_write_with_on_a_plain_socket2_socket() {
    run(|| {
        block_on(async {
            let a =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            a.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
                .unwrap();
            let addr = a.local_addr().unwrap();
            let a = Async::new(a).unwrap();
            let b = udp_socket();
            let receiver = async {
                let mut buf = [0u8; 16];
                let n = a.read_with(|s| (&*s).read(&mut buf)).await.unwrap();
                buf[..n].to_vec()
            };
            let sender = async {
                Timer::after(Duration::from_millis(5)).await;
                b.write_with(|s| s.send_to(b"socket2", addr.as_socket().unwrap()))
                    .await
                    .unwrap()
            };
            let (got, sent) = within("socket2 datagram", future::zip(receiver, sender)).await;
            assert_eq!(got, b"socket2");
            assert_eq!(sent, 7);
        })
    });
}

#[test]
fn into_inner_deregisters_and_the_source_can_be_registered_again() {
    run(|| {
        block_on(async {
            let (a, mut b) = tcp_pair().await;
            let stream = a.into_inner().unwrap();
            let mut a = Async::new(stream).unwrap();
            b.write_all(b"again").await.unwrap();
            let mut buf = [0u8; 8];
            let n = within("read after re-registration", a.read(&mut buf))
                .await
                .unwrap();
            assert_eq!(&buf[..n], b"again");
        })
    });
}

#[test]
fn async_new_sets_non_blocking_mode() {
    run(|| {
        block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let blocking = TcpStream::connect(addr).unwrap();
            let (_server, _) = listener.accept().unwrap();
            let a = Async::new(blocking).unwrap();
            // A blocking read here would hang the test (the watchdog would
            // catch it); non-blocking, it says WouldBlock.
            let mut buf = [0u8; 1];
            let err = a.get_ref().read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        })
    });
}

#[cfg(unix)]
#[test]
fn unix_stream_pair_with_read_with_and_write_with() {
    use std::os::unix::net::UnixStream;
    run(|| {
        block_on(async {
            let (x, y) = UnixStream::pair().unwrap();
            let x = Async::new(x).unwrap();
            let y = Async::new(y).unwrap();
            let data = pattern(3, 0, 1 << 20);
            let writer = async {
                let mut done = 0;
                while done < data.len() {
                    done += x.write_with(|s| (&*s).write(&data[done..])).await.unwrap();
                }
            };
            let reader = async {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 8192];
                while got.len() < data.len() {
                    let n = y.read_with(|s| (&*s).read(&mut buf)).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                got
            };
            let ((), got) =
                within("1 MiB over a Unix socket pair", future::zip(writer, reader)).await;
            assert!(got == data);
        })
    });
}

// ------------------------------------------------------------ block_on

#[test]
fn block_on_on_several_threads_at_once() {
    run(|| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    block_on(async move {
                        let (mut a, mut b) = tcp_pair().await;
                        let mut buf = [0u8; 8];
                        for i in 0..300u64 {
                            a.write_all(&(i + t).to_le_bytes()).await.unwrap();
                            b.read_exact(&mut buf).await.unwrap();
                            assert_eq!(u64::from_le_bytes(buf), i + t);
                            if i % 50 == 0 {
                                Timer::after(Duration::from_millis(1)).await;
                            }
                        }
                        t
                    })
                })
            })
            .collect();
        for (t, thread) in threads.into_iter().enumerate() {
            assert_eq!(thread.join().unwrap(), t as u64);
        }
    });
}

#[test]
fn block_on_is_woken_from_another_thread_and_nests() {
    run(|| {
        let signal = Arc::new(Signal::default());
        let setter = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                signal.set();
            })
        };
        block_on(signal.wait());
        setter.join().unwrap();
        let inner = block_on(async {
            block_on(async {
                Timer::after(Duration::from_millis(1)).await;
                5
            }) + 1
        });
        assert_eq!(inner, 6);
    });
}

#[test]
fn futures_executor_block_on_is_served_by_the_fallback_thread() {
    run(|| {
        futures::executor::block_on(async {
            let (mut a, mut b) = tcp_pair().await;
            a.write_all(b"fallback").await.unwrap();
            let mut buf = [0u8; 8];
            b.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"fallback");
            let start = Instant::now();
            Timer::after(Duration::from_millis(5)).await;
            assert!(start.elapsed() >= Duration::from_millis(5));
        })
    });
}

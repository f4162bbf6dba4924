//! Nothing leaks when 10,000 tasks come and go: not descriptors (Linux:
//! `/proc/self/fd`), not registrations, not timers.
//!
//! One test in its own binary, so no other test's sources or timers are in
//! the process's reactor while it counts. On Windows the reactor's own counts
//! are checked; OS handles are not counted here (`GetProcessHandleCount`
//! was reported to return 0 under Wine; see docs/WINDOWS.md).

mod util;

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use async_executor::LocalExecutor;
use futures_lite::future::poll_once;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use readiness_async::{Async, Timer, block_on};
use util::*;

const TASKS: usize = 10_000;
const BATCH: usize = 500;

/// Open descriptors of this process, where the OS lets us count them.
fn open_handles() -> Option<usize> {
    if cfg!(target_os = "linux") {
        Some(std::fs::read_dir("/proc/self/fd").unwrap().count())
    } else {
        None
    }
}

/// One task's life: a registered source that is waited on and woken, and a
/// timer that is waited on and cancelled. Every tenth task uses a TCP
/// connection (connect, one byte each way, close), the others a UDP socket.
async fn one_task(n: usize, tcp_addr: std::net::SocketAddr, sender: &Async<std::net::UdpSocket>) {
    let mut timer = Timer::after(Duration::from_secs(3600));
    assert!(poll_once(&mut timer).await.is_none());
    if n.is_multiple_of(10) {
        let mut stream = Async::<TcpStream>::connect(tcp_addr).await.unwrap();
        stream.write_all(&[n as u8]).await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte[0], n as u8);
    } else {
        let socket = udp_socket();
        let addr = socket.get_ref().local_addr().unwrap();
        let mut buf = [0u8; 8];
        {
            let mut recv = Box::pin(socket.recv_from(&mut buf));
            assert!(
                poll_once(&mut recv).await.is_none(),
                "datagram before it was sent"
            );
            sender
                .send_to(&(n as u64).to_le_bytes(), addr)
                .await
                .unwrap();
            let (len, _) = within("datagram", recv).await.unwrap();
            assert_eq!(len, 8);
        }
        assert_eq!(u64::from_le_bytes(buf), n as u64);
    }
    drop(timer);
}

#[test]
fn nothing_leaks_after_10_000_tasks() {
    run(|| {
        let reactor = reactor();
        let handles_before = open_handles();
        let registered_before = reactor.registered();
        let timers_before = reactor.pending_timers();

        let sender = udp_socket();
        let ex = LocalExecutor::new();
        block_on(ex.run(async {
            let listener = listener();
            let tcp_addr = listener.get_ref().local_addr().unwrap();
            let server = ex.spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await.unwrap();
                    stream.write_all(&byte).await.unwrap();
                    // The client reads its byte and closes; wait for that.
                    let mut rest = Vec::new();
                    let _: io::Result<usize> = stream.read_to_end(&mut rest).await;
                }
            });
            for batch in 0..TASKS / BATCH {
                let tasks: Vec<_> = (0..BATCH)
                    .map(|i| ex.spawn(one_task(batch * BATCH + i, tcp_addr, &sender)))
                    .collect();
                within("a batch of tasks", async {
                    for t in tasks {
                        t.await;
                    }
                })
                .await;
            }
            let _ = server.cancel().await;
        }));
        drop(ex);
        drop(sender);

        assert_eq!(
            reactor.registered(),
            registered_before,
            "registrations leaked"
        );
        assert_eq!(reactor.pending_timers(), timers_before, "timers leaked");
        match (handles_before, open_handles()) {
            (Some(before), Some(after)) => {
                assert_eq!(after, before, "descriptors leaked after {TASKS} tasks")
            }
            _ => eprintln!(
                "leaks: OS handles not counted on this OS (see docs/WINDOWS.md); \
                 reactor registrations and timers were checked"
            ),
        }
    });
}

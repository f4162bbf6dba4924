//! readiness (epoll and poll(2) backends) against polling 3 and mio 1, in one
//! run, on the same sockets where the APIs allow it.
//!
//! Run with `cargo bench -p readiness-bench --bench pollers`, then
//! `cargo run -p readiness-bench --bin bench-ratios` for the ratios; see
//! `docs/BENCHMARKS.md` for what each group measures and why.
//!
//! Groups (criterion ids `group/function[/parameter]`):
//!
//! - `add_delete/<lib>`: register then deregister one UDP socket.
//! - `rearm/<lib>`: re-arm a registered oneshot socket (readiness `modify`,
//!   polling `modify`, mio `reregister`).
//! - `wait_level/<lib>/<N>`: one wait returning the one readable socket among
//!   N registered level-triggered. mio is edge-triggered only and is not in
//!   this group; see `rearm_wait`.
//! - `rearm_wait/<lib>/<N>`: re-arm the readable socket, then wait for it,
//!   among N registered oneshot (readiness, polling) or edge-triggered (mio):
//!   the same two system calls for every library, so mio is compared fairly.
//! - `notify/<lib>`: ping-pong between two threads, each blocked in a wait and
//!   woken by the other's notify (mio: `Waker`); one iteration is a round trip.
//!
//! All groups but `notify` measure the CPU time of the benchmark thread (see
//! [`ThreadCpu`]); `notify` measures wall time, as its cost is the wake-up.
//! At most one socket set exists at a time, built only when its benchmark is
//! selected: the process may hold 20,000 descriptors, and N goes up to 19,000.

use std::hint::black_box;
use std::io;
use std::net::UdpSocket;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use readiness::{Backend, Interest, Mode};

/// The socket-set sizes of the wait groups.
const SIZES: [usize; 3] = [1, 1_000, 19_000];
/// Event-buffer capacity, the same for every library.
const CAPACITY: usize = 64;
/// The key (token) of the single socket in `add_delete` and `rearm`.
const KEY: usize = 7;

fn config() -> Criterion {
    // Short, so that the whole run stays around two minutes on two shared
    // cores; the figures that matter are ratios within one run.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .without_plots()
}

/// Criterion measurement: CPU time (user + system) of the measuring thread.
///
/// Used for every benchmark whose iterations never block (all but
/// `notify`): on a shared two-core machine a wall clock also counts the time
/// the thread spent preempted by unrelated work, which made ratios within one
/// run swing by tens of percent; the thread's CPU clock does not.
struct ThreadCpu;

/// Wall-time durations are formatted the same way.
static WALL: WallTime = WallTime;

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

fn readiness_poller(backend: Backend) -> readiness::Poller {
    readiness::Poller::with_backend(backend).expect("readiness poller")
}

fn readiness_events() -> readiness::Events {
    readiness::Events::with_capacity(CAPACITY)
}

fn polling_events() -> polling::Events {
    polling::Events::with_capacity(NonZeroUsize::new(CAPACITY).expect("non-zero"))
}

fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1")
}

/// The readiness backends measured, with their labels.
const BACKENDS: [(&str, Backend); 2] = [
    ("readiness-epoll", Backend::Epoll),
    ("readiness-poll", Backend::Poll),
];

// ---------------------------------------------------------------------------
// 1. add + delete

fn add_delete(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("add_delete");
    let sock = udp();
    for (name, backend) in BACKENDS {
        let poller = readiness_poller(backend);
        g.bench_function(name, |b| {
            b.iter(|| {
                poller
                    .add(&sock, KEY, Interest::READABLE, Mode::Oneshot)
                    .unwrap();
                poller.delete(&sock).unwrap();
            })
        });
    }
    {
        let poller = polling::Poller::new().unwrap();
        g.bench_function("polling", |b| {
            b.iter(|| {
                // SAFETY: `sock` is deleted on the next line, long before it
                // is dropped.
                unsafe { poller.add(&sock, polling::Event::readable(KEY)) }.unwrap();
                poller.delete(&sock).unwrap();
            })
        });
    }
    {
        // The same socket, handed over to mio (which wants its own type).
        let mut sock = mio::net::UdpSocket::from_std(sock);
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry();
        g.bench_function("mio", |b| {
            b.iter(|| {
                registry
                    .register(&mut sock, mio::Token(KEY), mio::Interest::READABLE)
                    .unwrap();
                registry.deregister(&mut sock).unwrap();
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// 2. re-arming a oneshot registration

fn rearm(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("rearm");
    let sock = udp();
    for (name, backend) in BACKENDS {
        let poller = readiness_poller(backend);
        poller
            .add(&sock, KEY, Interest::READABLE, Mode::Oneshot)
            .unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                poller
                    .modify(&sock, KEY, Interest::READABLE, Mode::Oneshot)
                    .unwrap()
            })
        });
        poller.delete(&sock).unwrap();
    }
    {
        let poller = polling::Poller::new().unwrap();
        // SAFETY: deleted below, before `sock` is dropped (it is moved on to
        // mio only after that).
        unsafe { poller.add(&sock, polling::Event::readable(KEY)) }.unwrap();
        g.bench_function("polling", |b| {
            // `modify` re-arms in the default mode, oneshot.
            b.iter(|| poller.modify(&sock, polling::Event::readable(KEY)).unwrap())
        });
        poller.delete(&sock).unwrap();
    }
    {
        let mut sock = mio::net::UdpSocket::from_std(sock);
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry();
        registry
            .register(&mut sock, mio::Token(KEY), mio::Interest::READABLE)
            .unwrap();
        g.bench_function("mio", |b| {
            b.iter(|| {
                registry
                    .reregister(&mut sock, mio::Token(KEY), mio::Interest::READABLE)
                    .unwrap()
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// 3. wait among N

/// N UDP sockets (one descriptor each), of which exactly one (index `ready`)
/// is bound on 127.0.0.1 and holds one datagram that nobody reads: it stays
/// readable for good. The other N - 1 are left unbound: binding 19,000
/// ephemeral ports fills two thirds of Linux's default range (32768-60999),
/// where the kernel's randomised port search already fails now and then with
/// `EADDRINUSE`, and it would starve other programs on the machine. Binding
/// changes nothing that epoll or poll(2) look at.
struct SocketSet {
    sockets: Vec<UdpSocket>,
    ready: usize,
}

impl SocketSet {
    fn new(n: usize) -> io::Result<SocketSet> {
        let ready = n / 2;
        let sockets = (0..n)
            .map(|i| {
                if i == ready {
                    UdpSocket::bind("127.0.0.1:0")
                } else {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
                    Ok(s.into())
                }
            })
            .collect::<io::Result<Vec<_>>>()?;
        // The sender is closed at once; its datagram stays queued.
        let sender = UdpSocket::bind("127.0.0.1:0")?;
        sender.send_to(b"x", sockets[ready].local_addr()?)?;
        Ok(SocketSet { sockets, ready })
    }

    fn build(n: usize) -> SocketSet {
        SocketSet::new(n).unwrap_or_else(|e| panic!("{n} UDP sockets: {e}"))
    }
}

/// Runs `routine` as benchmark `id`, on a state built only if the benchmark
/// is selected (criterion calls the closure only then, several times) and
/// dropped as soon as it is done: at most one socket set exists at a time.
fn bench_with<S, M: Measurement>(
    g: &mut BenchmarkGroup<'_, M>,
    id: BenchmarkId,
    build: impl FnOnce() -> S,
    mut routine: impl FnMut(&mut S),
) {
    let mut build = Some(build);
    let mut state = None;
    g.bench_function(id, |b| {
        let state = state.get_or_insert_with(|| build.take().expect("built once")());
        b.iter(|| routine(state));
    });
    drop(state);
}

/// A readiness poller with a socket set registered; the poller is dropped
/// first (fields drop in order).
struct ReadinessSet {
    poller: readiness::Poller,
    events: readiness::Events,
    set: SocketSet,
}

impl ReadinessSet {
    fn new(backend: Backend, n: usize, mode: Mode) -> ReadinessSet {
        let set = SocketSet::build(n);
        let poller = readiness_poller(backend);
        for (i, s) in set.sockets.iter().enumerate() {
            poller.add(s, i, Interest::READABLE, mode).unwrap();
        }
        let mut events = readiness_events();
        // Check that a wait returns exactly the ready socket; for a oneshot
        // registration this also uses up its first report, so that every
        // measured wait follows its own re-arm.
        poller
            .wait(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let keys: Vec<usize> = events.iter().map(|e| e.key()).collect();
        assert_eq!(keys, [set.ready], "readiness: one ready socket expected");
        ReadinessSet {
            poller,
            events,
            set,
        }
    }

    fn wait(&mut self) -> Option<usize> {
        let got = self.poller.wait(&mut self.events, None).unwrap();
        debug_assert_eq!(got, 1);
        self.events.iter().next().map(|e| e.key())
    }
}

/// The same for polling, which requires every source to be deleted before
/// it is dropped.
struct PollingSet {
    poller: polling::Poller,
    events: polling::Events,
    set: SocketSet,
}

impl PollingSet {
    fn new(n: usize, mode: polling::PollMode) -> PollingSet {
        let set = SocketSet::build(n);
        let poller = polling::Poller::new().unwrap();
        for (i, s) in set.sockets.iter().enumerate() {
            // SAFETY: every socket of the set is deleted in `Drop` below,
            // before the set is dropped.
            unsafe { poller.add_with_mode(s, polling::Event::readable(i), mode) }.unwrap();
        }
        let mut events = polling_events();
        poller
            .wait(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let keys: Vec<usize> = events.iter().map(|e| e.key).collect();
        assert_eq!(keys, [set.ready], "polling: one ready socket expected");
        PollingSet {
            poller,
            events,
            set,
        }
    }

    fn wait(&mut self) -> Option<usize> {
        self.events.clear();
        let got = self.poller.wait(&mut self.events, None).unwrap();
        debug_assert_eq!(got, 1);
        self.events.iter().next().map(|e| e.key)
    }
}

impl Drop for PollingSet {
    fn drop(&mut self) {
        for s in &self.set.sockets {
            let _ = self.poller.delete(s);
        }
    }
}

/// mio, registered edge-triggered (its only mode).
struct MioSet {
    poll: mio::Poll,
    events: mio::Events,
    sockets: Vec<mio::net::UdpSocket>,
    ready: usize,
}

impl MioSet {
    fn new(n: usize) -> MioSet {
        let set = SocketSet::build(n);
        let mut sockets: Vec<mio::net::UdpSocket> = set
            .sockets
            .into_iter()
            .map(mio::net::UdpSocket::from_std)
            .collect();
        let mut poll = mio::Poll::new().unwrap();
        for (i, s) in sockets.iter_mut().enumerate() {
            poll.registry()
                .register(s, mio::Token(i), mio::Interest::READABLE)
                .unwrap();
        }
        let mut events = mio::Events::with_capacity(CAPACITY);
        // Uses up the edge of the registration, so that every measured poll
        // follows its own re-arm.
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        let tokens: Vec<mio::Token> = events.iter().map(|e| e.token()).collect();
        assert_eq!(
            tokens,
            [mio::Token(set.ready)],
            "mio: one ready socket expected"
        );
        MioSet {
            poll,
            events,
            sockets,
            ready: set.ready,
        }
    }
}

fn wait_level(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("wait_level");
    for n in SIZES {
        for (name, backend) in BACKENDS {
            bench_with(
                &mut g,
                BenchmarkId::new(name, n),
                || ReadinessSet::new(backend, n, Mode::Level),
                |s| {
                    black_box(s.wait());
                },
            );
        }
        bench_with(
            &mut g,
            BenchmarkId::new("polling", n),
            || PollingSet::new(n, polling::PollMode::Level),
            |s| {
                black_box(s.wait());
            },
        );
    }
    g.finish();
}

fn rearm_wait(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("rearm_wait");
    for n in SIZES {
        bench_with(
            &mut g,
            BenchmarkId::new("readiness-epoll", n),
            || ReadinessSet::new(Backend::Epoll, n, Mode::Oneshot),
            |s| {
                let ready = s.set.ready;
                s.poller
                    .modify(
                        &s.set.sockets[ready],
                        ready,
                        Interest::READABLE,
                        Mode::Oneshot,
                    )
                    .unwrap();
                black_box(s.wait());
            },
        );
        bench_with(
            &mut g,
            BenchmarkId::new("polling", n),
            || PollingSet::new(n, polling::PollMode::Oneshot),
            |s| {
                let ready = s.set.ready;
                s.poller
                    .modify(&s.set.sockets[ready], polling::Event::readable(ready))
                    .unwrap();
                black_box(s.wait());
            },
        );
        bench_with(
            &mut g,
            BenchmarkId::new("mio", n),
            || MioSet::new(n),
            |s| {
                // mio is edge-triggered only: `reregister` (EPOLL_CTL_MOD)
                // re-queues the still-readable socket, as a oneshot re-arm
                // does for the others.
                let ready = s.ready;
                s.poll
                    .registry()
                    .reregister(
                        &mut s.sockets[ready],
                        mio::Token(ready),
                        mio::Interest::READABLE,
                    )
                    .unwrap();
                s.poll.poll(&mut s.events, None).unwrap();
                black_box(s.events.iter().next().map(|e| e.token()));
            },
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// 4. notify-to-wake latency

/// One side of a ping-pong: what a thread blocks in.
trait Waiter: 'static {
    fn wait_wake(&mut self);
}

/// What wakes the other side.
trait Wake: Send + Sync + 'static {
    fn wake(&self);
}

struct ReadinessWaiter(Arc<readiness::Poller>, readiness::Events);

impl Waiter for ReadinessWaiter {
    fn wait_wake(&mut self) {
        self.0.wait(&mut self.1, None).unwrap();
    }
}

impl Wake for Arc<readiness::Poller> {
    fn wake(&self) {
        self.notify().unwrap();
    }
}

struct PollingWaiter(Arc<polling::Poller>, polling::Events);

impl Waiter for PollingWaiter {
    fn wait_wake(&mut self) {
        self.1.clear();
        self.0.wait(&mut self.1, None).unwrap();
    }
}

impl Wake for Arc<polling::Poller> {
    fn wake(&self) {
        self.notify().unwrap();
    }
}

struct MioWaiter(mio::Poll, mio::Events);

impl Waiter for MioWaiter {
    fn wait_wake(&mut self) {
        loop {
            match self.0.poll(&mut self.1, None) {
                Ok(()) if !self.1.is_empty() => return,
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("mio poll: {e}"),
            }
        }
    }
}

impl Wake for Arc<mio::Waker> {
    fn wake(&self) {
        mio::Waker::wake(self).unwrap();
    }
}

/// One side of a ping-pong: something that builds the waiter on the thread
/// that uses it (so no event buffer has to be `Send`), and its waker.
type Side<W, K> = (Box<dyn FnOnce() -> W + Send>, K);

/// Thread A waits in `a` and, once woken, wakes B through `b_wake`; the
/// measured thread wakes A through `a_wake` and waits in `b` for the answer.
fn ping_pong<W: Waiter, K: Wake>(
    c: &mut Criterion,
    name: &str,
    (make_a, a_wake): Side<W, K>,
    (make_b, b_wake): Side<W, K>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut a = make_a();
            loop {
                a.wait_wake();
                if stop.load(Ordering::Acquire) {
                    break;
                }
                b_wake.wake();
            }
        })
    };
    let mut b = make_b();
    c.benchmark_group("notify").bench_function(name, |bencher| {
        bencher.iter(|| {
            a_wake.wake();
            b.wait_wake();
        })
    });
    stop.store(true, Ordering::Release);
    a_wake.wake();
    echo.join().unwrap();
}

fn notify(c: &mut Criterion) {
    for (name, backend) in BACKENDS {
        let side = || -> Side<ReadinessWaiter, Arc<readiness::Poller>> {
            let p = Arc::new(readiness_poller(backend));
            let q = p.clone();
            (Box::new(move || ReadinessWaiter(q, readiness_events())), p)
        };
        ping_pong(c, name, side(), side());
    }
    {
        let side = || -> Side<PollingWaiter, Arc<polling::Poller>> {
            let p = Arc::new(polling::Poller::new().unwrap());
            let q = p.clone();
            (Box::new(move || PollingWaiter(q, polling_events())), p)
        };
        ping_pong(c, "polling", side(), side());
    }
    {
        let side = || -> Side<MioWaiter, Arc<mio::Waker>> {
            let poll = mio::Poll::new().unwrap();
            let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
            (
                Box::new(move || MioWaiter(poll, mio::Events::with_capacity(CAPACITY))),
                waker,
            )
        };
        ping_pong(c, "mio", side(), side());
    }
}

criterion_group! {
    name = cpu_time;
    config = config().with_measurement(ThreadCpu);
    targets = add_delete, rearm, wait_level, rearm_wait
}
criterion_group! {
    name = wall_time;
    config = config();
    targets = notify
}
criterion_main!(cpu_time, wall_time);

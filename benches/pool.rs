//! The pool's bookkeeping beside `deadpool::managed`, and the real pool's
//! warm lease.
//!
//! `cargo bench --bench pool`. Three parts:
//! - `lease/mechanism` (no engine): a warm lease and its return in the
//!   pool's design (a `Vec::pop` and a `push` under one `std::sync::Mutex`)
//!   beside `deadpool::managed` (a non-blocking `get`: semaphore permit, LIFO
//!   pop, the `recycle` check; the drop pushes it back).
//! - the refill scenario (no engine; plain samples): `MIN_IDLE` 2, one
//!   sandbox idle (the other was just recycled), the refill restoring the
//!   second with a start of [`START`]; a caller arrives 1 ms into it. Printed:
//!   the caller's wait for a lease, and the sandboxes idle once everything is
//!   back. This is why the pool is not built on deadpool (ARCHITECTURE.md,
//!   "Pool state"): deadpool creates an object only in a `get` that found its
//!   queue empty and has no way to add one, so a refill either takes the idle
//!   sandbox from callers for a whole start or never happens.
//! - `lease/warm` (the engine): the real pool's acquire of an idle sandbox and
//!   the finish after a `print(6*7)` (the run itself not timed); percentiles
//!   follow. Skips with a message when no engine answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{PRINT, percentiles};
use criterion::Criterion;
use deadpool::managed::{self, Metrics, Object, QueueMode, RecycleResult, Timeouts};
use mcp_code_exec::call::Limits;
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::pool::{Pool, Verdict};
use mcp_code_exec::sandbox::{CapturedOutput, RunServices};

/// What a start takes in the refill scenario (a real container: ~200 ms of
/// engine and interpreter CPU, ~700 ms with the default preload).
const START: Duration = Duration::from_millis(100);
/// How far into the refill the caller arrives.
const CALLER_AFTER: Duration = Duration::from_millis(1);
const MIN_IDLE: usize = 2;

/// Objects that are numbers, each created in `start`; checking one costs nothing.
#[derive(Debug)]
struct Numbers {
    start: Duration,
}

impl managed::Manager for Numbers {
    type Type = u32;
    type Error = std::convert::Infallible;

    async fn create(&self) -> Result<u32, Self::Error> {
        tokio::time::sleep(self.start).await;
        Ok(0)
    }

    async fn recycle(&self, _: &mut u32, _: &Metrics) -> RecycleResult<Self::Error> {
        Ok(())
    }
}

fn deadpool_of(start: Duration, max: usize) -> managed::Pool<Numbers> {
    managed::Pool::builder(Numbers { start })
        .max_size(max)
        .queue_mode(QueueMode::Lifo)
        .build()
        .unwrap()
}

fn mechanism(c: &mut Criterion, tokio: &tokio::runtime::Runtime) {
    const IDLE: u32 = 8;
    let mut group = c.benchmark_group("lease/mechanism");
    let stack = Mutex::new((0..IDLE).collect::<Vec<u32>>());
    group.bench_function("Mutex<Vec> pop + push", |b| {
        b.iter(|| {
            let object = stack.lock().unwrap().pop().unwrap();
            stack.lock().unwrap().push(std::hint::black_box(object));
        })
    });
    let pool = deadpool_of(Duration::ZERO, IDLE as usize);
    let now = Timeouts {
        wait: Some(Duration::ZERO),
        ..Timeouts::default()
    };
    tokio.block_on(async {
        let all: Vec<_> = futures_util::future::join_all((0..IDLE).map(|_| pool.get())).await;
        drop(all);
    });
    group.bench_function("deadpool get + drop", |b| {
        b.to_async(tokio).iter(|| async {
            let object = pool.timeout_get(&now).await.unwrap();
            drop(std::hint::black_box(object));
        })
    });
    group.finish();
}

/// The pool's design: the refill starts outside the lock, then pushes; the
/// caller pops the idle one meanwhile. Returns the caller's wait and the
/// idle count once everything is back.
async fn refill_as_the_pool_does() -> (Duration, usize) {
    let idle = Arc::new(Mutex::new(vec![0u32]));
    let refill = tokio::spawn({
        let idle = idle.clone();
        async move {
            tokio::time::sleep(START).await;
            idle.lock().unwrap().push(1);
        }
    });
    tokio::time::sleep(CALLER_AFTER).await;
    let asked = Instant::now();
    let leased = idle.lock().unwrap().pop().expect("the idle one");
    let waited = asked.elapsed();
    refill.await.unwrap();
    idle.lock().unwrap().push(leased);
    let count = idle.lock().unwrap().len();
    (waited, count)
}

/// deadpool with the usual pre-warming as the refill (get the objects wanted
/// idle at once, then drop them): `get` creates only when the queue is
/// empty, so the refill wanting `MIN_IDLE` takes the idle one too and holds
/// it through the other's start; `missing_only` asks for just the missing
/// one, which `get` answers with the idle one (no start at all).
async fn refill_with_deadpool(missing_only: bool) -> (Duration, usize) {
    let pool = deadpool_of(START, 4);
    // MIN_IDLE created, then one recycled (taken out for good).
    let (a, b) = tokio::join!(pool.get(), pool.get());
    let _recycled = Object::take(a.unwrap());
    drop(b);
    let refill = tokio::spawn({
        let pool = pool.clone();
        async move {
            let wanted = if missing_only { 1 } else { MIN_IDLE };
            let got = futures_util::future::join_all((0..wanted).map(|_| pool.get())).await;
            drop(got);
        }
    });
    tokio::time::sleep(CALLER_AFTER).await;
    let asked = Instant::now();
    let leased = pool.get().await.unwrap();
    let waited = asked.elapsed();
    refill.await.unwrap();
    drop(leased);
    (waited, pool.status().available)
}

fn refill_scenario(tokio: &tokio::runtime::Runtime, full: bool) {
    let n = if full { 20 } else { 2 };
    println!(
        "\nrefill: MIN_IDLE {MIN_IDLE}, one idle, a start takes {START:?}, \
         a caller {CALLER_AFTER:?} into the refill:"
    );
    let scenario = |label: &str, run: &dyn Fn() -> (Duration, usize)| {
        let samples: Vec<(Duration, usize)> = (0..n).map(|_| run()).collect();
        percentiles(label, samples.iter().map(|(waited, _)| *waited).collect());
        let idle = samples.iter().map(|(_, idle)| *idle).max().unwrap();
        println!("{:<44} then idle: {idle} (wanted {MIN_IDLE})", "");
    };
    scenario("pool design: caller's wait for a lease", &|| {
        tokio.block_on(refill_as_the_pool_does())
    });
    scenario("deadpool, refill gets MIN_IDLE: caller's wait", &|| {
        tokio.block_on(refill_with_deadpool(false))
    });
    scenario("deadpool, refill gets the missing one: wait", &|| {
        tokio.block_on(refill_with_deadpool(true))
    });
}

struct Warm {
    pool: Pool,
    config: Config,
}

impl Warm {
    fn start(tokio: &tokio::runtime::Runtime) -> Option<Self> {
        let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
        // Each lease waits (untimed) until this many are idle again.
        config.pool_min_idle = config.pool_min_idle.max(1);
        let started = tokio.block_on(async {
            let engine = Engine::connect(config.engine).await?;
            let image = engine.resolve_image(&config.image).await?;
            Ok::<_, mcp_code_exec::engine::EngineError>(Pool::start(engine, &config, &image))
        });
        let pool = match started {
            Ok(pool) => pool,
            Err(error) => {
                eprintln!("SKIPPED warm lease benchmarks: {error}");
                return None;
            }
        };
        assert!(tokio.block_on(pool.wait_warm(Duration::from_secs(60))));
        Some(Self { pool, config })
    }

    /// One lease of an idle sandbox: the time of the acquire and of the
    /// finish, not of the run nor of the wait for the last one's reset.
    async fn lease(&self) -> Duration {
        assert!(self.pool.wait_warm(Duration::from_secs(60)).await);
        let started = Instant::now();
        let mut lease = self.pool.acquire().await.expect("a warm sandbox");
        let acquired = started.elapsed();
        let limits = Limits::from(&self.config);
        let mut output = CapturedOutput::default();
        lease
            .sandbox()
            .run(
                &limits.input(PRINT, &[]),
                Duration::from_secs(30),
                RunServices::default(),
                &mut output,
            )
            .await
            .expect("print(6*7) runs");
        let finishing = Instant::now();
        lease.finish(Verdict::Reuse);
        acquired + finishing.elapsed()
    }
}

fn warm(c: &mut Criterion, tokio: &tokio::runtime::Runtime, warm: &Warm, full: bool) {
    let mut group = c.benchmark_group("lease/warm");
    group.bench_function("acquire + finish (run not timed)", |b| {
        b.to_async(tokio).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += warm.lease().await;
            }
            total
        })
    });
    group.finish();
    let n = if full { 500 } else { 2 };
    let samples = (0..n).map(|_| tokio.block_on(warm.lease())).collect();
    percentiles("warm acquire + finish (run not timed)", samples);
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut criterion = Criterion::default().configure_from_args();
    // `cargo bench`; otherwise (`cargo test --all-targets` runs benches once
    // as a smoke test) a few samples only.
    let full = std::env::args().any(|arg| arg == "--bench");
    mechanism(&mut criterion, &tokio);
    refill_scenario(&tokio, full);
    if let Some(pool) = Warm::start(&tokio) {
        warm(&mut criterion, &tokio, &pool, full);
        tokio.block_on(pool.pool.shutdown());
    }
    criterion.final_summary();
}

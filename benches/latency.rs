//! Latency of a run through the warm pool, beside the cold baseline (create +
//! start + run + remove with the same hardening flags), in the same process.
//!
//! `cargo bench --bench latency`. Criterion reports means and medians; the
//! percentile pass after it prints p50/p90/p99 from plain samples, because
//! tail latency is the promise. Skips with a message when no engine answers.

use std::time::{Duration, Instant};

mod common;

use common::{PRINT, cold_run, percentiles};
use criterion::Criterion;
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

const ONE_MB: &str = "import sys\nsys.stdout.write('x' * 1_000_000)";
const SESSION_STEP: &str = "x = globals().get('x', 0) + 1\nprint(x)";

struct Setup {
    tokio: tokio::runtime::Runtime,
    service: Service,
    runtime: Engine,
    config: Config,
    image: String,
}

fn setup() -> Option<Setup> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The defaults users run (min idle 2, max 8), unless the environment says otherwise.
    let config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    let (runtime, image) = match tokio.block_on(async {
        let runtime = Engine::connect(config.engine).await?;
        let image = runtime.resolve_image(&config.image).await?;
        Ok::<_, mcp_code_exec::engine::EngineError>((runtime, image))
    }) {
        Ok(found) => found,
        Err(error) => {
            eprintln!("SKIPPED latency benchmarks: {error}");
            return None;
        }
    };
    let service = Service::new(config.clone());
    let warm = tokio.block_on(async {
        let pool = service.pool().await.expect("the service starts");
        pool.wait_warm(Duration::from_secs(60)).await
    });
    assert!(warm, "the pool warmed up");
    Some(Setup {
        tokio,
        service,
        runtime,
        config,
        image,
    })
}

impl Setup {
    async fn warm_run(&self, code: &str) {
        let request = CallRequest {
            code: code.into(),
            ..CallRequest::default()
        };
        let report = call(&self.service, &request).await;
        assert_eq!(report.status, RunStatus::Success, "{report:?}");
    }

    /// `x += 1; print(x)` in a session that already exists (no reset after it).
    async fn session_run(&self) {
        let request = CallRequest {
            code: SESSION_STEP.into(),
            session: Some("bench".into()),
            ..CallRequest::default()
        };
        let report = call(&self.service, &request).await;
        assert_eq!(report.status, RunStatus::Success, "{report:?}");
    }

    /// What a fresh container per call costs, with our own flags and agent.
    async fn cold_run(&self) {
        cold_run(&self.runtime, &self.config, &self.image).await;
    }
}

fn criterion_benches(c: &mut Criterion, setup: &Setup) {
    let mut group = c.benchmark_group("run_python");
    group.bench_function("warm print(6*7)", |b| {
        b.to_async(&setup.tokio).iter(|| setup.warm_run(PRINT))
    });
    group.bench_function("session call x += 1", |b| {
        b.to_async(&setup.tokio).iter(|| setup.session_run())
    });
    group.bench_function("warm 1 MB of output", |b| {
        b.to_async(&setup.tokio).iter(|| setup.warm_run(ONE_MB))
    });
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("cold create+start+run+remove", |b| {
        b.to_async(&setup.tokio).iter(|| setup.cold_run())
    });
    group.finish();
}

/// Times `n` sequential calls of `call`, with `pause` (not timed) between
/// them. Back to back (no pause), each call also competes for the 2 cores
/// with the reset of the one before: that measures throughput as much as
/// latency. A short pause models an agent, whose calls come seconds apart.
fn sample<F: Future<Output = ()>>(
    setup: &Setup,
    n: usize,
    pause: Duration,
    call: impl Fn() -> F,
) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            std::thread::sleep(pause);
            let started = Instant::now();
            setup.tokio.block_on(call());
            started.elapsed()
        })
        .collect()
}

/// What skills cost a run that does not use them (the agent installs the
/// finder and binds `runtime`'s functions in every run when the store is
/// on): this service's runs beside a second service's, skills off,
/// alternating, 10 ms apart, so both see the same machine.
fn skills_cost(setup: &Setup, n: usize) {
    let mut config = setup.config.clone();
    config.skills.dir = None;
    let off = Service::new(config);
    let warm = setup.tokio.block_on(async {
        let pool = off.pool().await.expect("the service starts");
        pool.wait_warm(Duration::from_secs(60)).await
    });
    assert!(warm, "the second pool warmed up");
    let request = CallRequest {
        code: PRINT.into(),
        ..CallRequest::default()
    };
    let (mut on_samples, mut off_samples) = (Vec::new(), Vec::new());
    for _ in 0..n {
        for (service, samples) in [(&setup.service, &mut on_samples), (&off, &mut off_samples)] {
            std::thread::sleep(Duration::from_millis(10));
            let started = Instant::now();
            let report = setup.tokio.block_on(call(service, &request));
            samples.push(started.elapsed());
            assert_eq!(report.status, RunStatus::Success, "{report:?}");
        }
    }
    let on = percentiles("warm print(6*7), skills on, alternating", on_samples);
    let off_p50 = percentiles("warm print(6*7), skills off, alternating", off_samples);
    println!(
        "skills cost {:+.3} ms a run at p50",
        (on.as_secs_f64() - off_p50.as_secs_f64()) * 1e3
    );
    setup.tokio.block_on(off.shutdown());
}

/// `full`: `cargo bench`; otherwise (`cargo test --all-targets` runs benches
/// once as a smoke test) a few samples only.
fn percentile_pass(setup: &Setup, full: bool) {
    let n = |count: usize| if full { count } else { 2 };
    let config = &setup.config;
    println!(
        "\npercentiles (sequential calls, pool min idle {} / max {}):",
        config.pool_min_idle, config.pool_max
    );
    let pause = Duration::from_millis(10);
    let none = Duration::ZERO;
    let warm = percentiles(
        "warm print(6*7), 10 ms apart",
        sample(setup, n(1000), pause, || setup.warm_run(PRINT)),
    );
    percentiles(
        "warm print(6*7), back to back",
        sample(setup, n(2000), none, || setup.warm_run(PRINT)),
    );
    percentiles(
        "session call x += 1, 10 ms apart",
        sample(setup, n(1000), pause, || setup.session_run()),
    );
    percentiles(
        "warm 1 MB of output, 10 ms apart",
        sample(setup, n(300), pause, || setup.warm_run(ONE_MB)),
    );
    let cold = percentiles(
        "cold create+start+run+remove",
        sample(setup, n(20), none, || setup.cold_run()),
    );
    println!(
        "warm is {:.0}x faster than cold at p50",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
    if setup.config.skills.dir.is_some() {
        skills_cost(setup, n(500));
    }
}

fn main() {
    let Some(setup) = setup() else { return };
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &setup);
    percentile_pass(&setup, std::env::args().any(|arg| arg == "--bench"));
    setup.tokio.block_on(setup.service.shutdown());
    criterion.final_summary();
}

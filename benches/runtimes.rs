//! What gVisor costs: warm runs and cold starts under runc and runsc, side
//! by side, on the same engine, in one run.
//!
//! `cargo bench --bench runtimes`. For each OCI runtime in turn (one pool at
//! a time, so they do not compete for the CPUs): a pool of the configuration
//! users run (`MCP_BRIDGE_*` respected, the runtime set), warm `print(6*7)`
//! calls 10 ms apart once a warm sandbox is idle (under gVisor a sandbox
//! serves one run), then cold create + start + run + remove. A runtime the
//! engine does not have is a row saying so (`scripts/setup-engine.sh gvisor`
//! registers runsc with Docker); no engine at all skips with a message, as
//! the latency bench does.

use std::time::{Duration, Instant};

mod common;

use common::{PRINT, cold_run, percentiles};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

const RUNTIMES: [&str; 2] = ["runc", "runsc"];

/// Warm and cold tails of one runtime.
struct Measured {
    warm: Tail,
    cold: Tail,
}

/// p50 and p99 of `samples`.
struct Tail {
    p50: Duration,
    p99: Duration,
}

fn tail(label: &str, mut samples: Vec<Duration>) -> Tail {
    samples.sort();
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    Tail {
        p50: percentiles(label, samples),
        p99,
    }
}

/// Times `n` calls of `call`, each after `prepare` (not timed).
fn timed<F: Future<Output = ()>>(
    tokio: &tokio::runtime::Runtime,
    n: usize,
    prepare: impl Fn(),
    call: impl Fn() -> F,
) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            prepare();
            let started = Instant::now();
            tokio.block_on(call());
            started.elapsed()
        })
        .collect()
}

/// Warm and cold tails under `runtime`, or why it could not be measured.
fn measure(tokio: &tokio::runtime::Runtime, runtime: &str, full: bool) -> Result<Measured, String> {
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.oci_runtime = Some(runtime.to_owned());
    let (engine, image) = tokio
        .block_on(async {
            let engine = Engine::connect(config.engine).await?;
            engine.check_runtime(runtime).await?;
            let image = engine.resolve_image(&config.image).await?;
            Ok::<_, mcp_code_exec::engine::EngineError>((engine, image))
        })
        .map_err(|error| error.to_string())?;
    let service = Service::new(config.clone());
    let warm_up = tokio.block_on(async {
        let pool = service.pool().await.map_err(|error| error.to_string())?;
        Ok::<_, String>(pool.wait_warm(Duration::from_secs(60)).await)
    })?;
    if !warm_up {
        return Err(format!("the {runtime} pool did not warm up within 60 s"));
    }
    let request = CallRequest {
        code: PRINT.into(),
        ..CallRequest::default()
    };
    let n = |count: usize| if full { count } else { 2 };
    let pool = tokio
        .block_on(service.pool())
        .map_err(|error| error.to_string())?;
    // Under gVisor a sandbox serves one run (README, "Choosing the engine"),
    // so each call waits, untimed, for the pool to be warm again: this is
    // the latency of a call that finds a warm sandbox, as users see it when
    // their calls are further apart than a start.
    let warm_again = || {
        std::thread::sleep(Duration::from_millis(10));
        assert!(tokio.block_on(pool.wait_warm(Duration::from_secs(60))));
    };
    let warm = tail(
        &format!("{runtime}: warm print(6*7), a warm sandbox idle, 10 ms or more apart"),
        timed(
            tokio,
            n(if runtime == "runsc" { 100 } else { 500 }),
            warm_again,
            || async {
                let report = call(&service, &request).await;
                assert_eq!(report.status, RunStatus::Success, "{report:?}");
            },
        ),
    );
    tokio.block_on(service.shutdown());
    let cold = tail(
        &format!("{runtime}: cold create+start+run+remove"),
        timed(tokio, n(30), || {}, || cold_run(&engine, &config, &image)),
    );
    Ok(Measured { warm, cold })
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(error) = tokio.block_on(Engine::connect(
        Config::from_env()
            .expect("valid MCP_BRIDGE_* environment")
            .engine,
    )) {
        eprintln!("SKIPPED runtime benchmarks: {error}");
        return;
    }
    // `cargo test --all-targets` runs benches once as a smoke test: a few samples.
    let full = std::env::args().any(|arg| arg == "--bench");
    let rows: Vec<(&str, Result<Measured, String>)> = RUNTIMES
        .iter()
        .map(|runtime| (*runtime, measure(&tokio, runtime, full)))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n{:<8} {:>14} {:>14} {:>14} {:>14}",
        "runtime", "warm p50 ms", "warm p99 ms", "cold p50 ms", "cold p99 ms"
    );
    for (runtime, row) in rows {
        match row {
            Ok(Measured { warm, cold }) => println!(
                "{runtime:<8} {:>14.2} {:>14.2} {:>14.0} {:>14.0}",
                ms(warm.p50),
                ms(warm.p99),
                ms(cold.p50),
                ms(cold.p99)
            ),
            Err(why) => println!("{runtime:<8} not measured: {why}"),
        }
    }
}

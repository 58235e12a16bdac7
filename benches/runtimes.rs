//! What gVisor costs: warm runs, throughput and cold starts under runc and
//! runsc, side by side, on the same engine, in one run.
//!
//! `cargo bench --bench runtimes`. For each row in turn (one pool at a time,
//! so they do not compete for the CPUs): a pool of the configuration users
//! run (`MCP_BRIDGE_*` respected, the runtime set), warm `print(6*7)` calls
//! 10 ms apart once a warm sandbox is idle, the throughput of 4 calls in
//! flight on a pool of 4, then cold create + start + run + remove (once per
//! runtime). Then runsc with one fork source (`MCP_BRIDGE_LIGHT_SPARE=off`,
//! gVisor's default before the light zygote was on there too), and runsc
//! with single-use sandboxes (`MCP_BRIDGE_POOL_MAX_USES=1`, what gVisor had
//! before its reset was complete). A runtime the engine does not
//! have is a row saying so (`scripts/setup-engine.sh gvisor` registers runsc
//! with Docker); no engine at all skips with a message, as the latency
//! bench does.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{PRINT, cold_run, percentiles};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

/// One configuration measured.
#[derive(Clone, Copy)]
struct Row {
    label: &'static str,
    /// The OCI runtime.
    runtime: &'static str,
    /// Whether a sandbox serves one run.
    single_use: bool,
    /// `MCP_BRIDGE_LIGHT_SPARE=off`.
    one_fork_source: bool,
    /// Whether the row measures the runtime's cold start.
    cold: bool,
}

const ROWS: [Row; 4] = [
    Row {
        label: "runc",
        runtime: "runc",
        single_use: false,
        one_fork_source: false,
        cold: true,
    },
    Row {
        label: "runsc",
        runtime: "runsc",
        single_use: false,
        one_fork_source: false,
        cold: true,
    },
    Row {
        label: "runsc, one fork",
        runtime: "runsc",
        single_use: false,
        one_fork_source: true,
        cold: false,
    },
    Row {
        label: "runsc, single use",
        runtime: "runsc",
        single_use: true,
        one_fork_source: false,
        cold: false,
    },
];

/// Warm and cold tails of one row, and its throughput.
struct Measured {
    warm: Tail,
    runs_per_s: f64,
    cold: Option<Tail>,
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

/// A service of `config` once its pool is warm, or why it did not warm up.
fn warm_service(tokio: &tokio::runtime::Runtime, config: &Config) -> Result<Arc<Service>, String> {
    let service = Arc::new(Service::new(config.clone()));
    let warm_up = tokio.block_on(async {
        let pool = service.pool().await.map_err(|error| error.to_string())?;
        Ok::<_, String>(pool.wait_warm(Duration::from_secs(60)).await)
    })?;
    if !warm_up {
        return Err(format!(
            "the pool of {:?} did not warm up within 60 s",
            config.oci_runtime
        ));
    }
    Ok(service)
}

/// Runs per second of `total` calls, 4 in flight.
fn throughput(tokio: &tokio::runtime::Runtime, service: &Arc<Service>, total: usize) -> f64 {
    let started = Instant::now();
    tokio.block_on(async {
        let workers = (0..4).map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let request = CallRequest {
                    code: PRINT.into(),
                    ..CallRequest::default()
                };
                for _ in 0..total / 4 {
                    let report = call(&service, &request).await;
                    assert_eq!(report.status, RunStatus::Success, "{report:?}");
                }
            })
        });
        for worker in futures_util::future::join_all(workers).await {
            worker.unwrap();
        }
    });
    (total / 4 * 4) as f64 / started.elapsed().as_secs_f64()
}

/// Warm and cold tails of a row, and its throughput, or why it could not be
/// measured. The cold start is the runtime's, measured once per runtime.
fn measure(tokio: &tokio::runtime::Runtime, row: Row, full: bool) -> Result<Measured, String> {
    let Row {
        label,
        runtime,
        single_use,
        ..
    } = row;
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.oci_runtime = Some(runtime.to_owned());
    if single_use {
        config.pool_max_uses = 1;
    }
    if row.one_fork_source {
        config.light_spare = false;
    }
    let (engine, image) = tokio
        .block_on(async {
            let engine = Engine::connect(config.engine).await?;
            engine.check_runtime(runtime).await?;
            let image = engine.resolve_image(&config.image).await?;
            Ok::<_, mcp_code_exec::engine::EngineError>((engine, image))
        })
        .map_err(|error| error.to_string())?;
    let service = warm_service(tokio, &config)?;
    let request = CallRequest {
        code: PRINT.into(),
        ..CallRequest::default()
    };
    let n = |count: usize| if full { count } else { 2 };
    let pool = tokio
        .block_on(service.pool())
        .map_err(|error| error.to_string())?;
    // Each call waits, untimed, for the pool to be warm again: with
    // single-use sandboxes this is the latency of a call that finds a warm
    // one, as users see it when their calls are further apart than a start.
    let warm_again = || {
        std::thread::sleep(Duration::from_millis(10));
        assert!(tokio.block_on(pool.wait_warm(Duration::from_secs(60))));
    };
    let warm = tail(
        &format!("{label}: warm print(6*7), a warm sandbox idle, 10 ms or more apart"),
        timed(
            tokio,
            n(match (runtime, single_use) {
                (_, true) => 20,
                ("runsc", _) => 200,
                _ => 500,
            }),
            warm_again,
            || async {
                let report = call(&service, &request).await;
                assert_eq!(report.status, RunStatus::Success, "{report:?}");
            },
        ),
    );
    tokio.block_on(service.shutdown());
    config.pool_min_idle = 4;
    config.pool_max = 4;
    // Single-use calls wait for starts, four at a time.
    config.pool_wait_timeout = Duration::from_secs(120);
    let service = warm_service(tokio, &config)?;
    let runs_per_s = throughput(tokio, &service, n(if single_use { 40 } else { 1000 }));
    println!("{label}: {runs_per_s:.1} runs/s, 4 in flight, pool of 4");
    tokio.block_on(service.shutdown());
    let cold = row.cold.then(|| {
        tail(
            &format!("{runtime}: cold create+start+run+remove"),
            timed(tokio, n(30), || {}, || cold_run(&engine, &config, &image)),
        )
    });
    Ok(Measured {
        warm,
        runs_per_s,
        cold,
    })
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
    let rows: Vec<(&str, Result<Measured, String>)> = ROWS
        .iter()
        .map(|row| (row.label, measure(&tokio, *row, full)))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n{:<18} {:>12} {:>12} {:>14} {:>12} {:>12}",
        "runtime", "warm p50 ms", "warm p99 ms", "runs/s at 4", "cold p50 ms", "cold p99 ms"
    );
    for (label, row) in rows {
        match row {
            Ok(Measured {
                warm,
                runs_per_s,
                cold,
            }) => {
                let cold = cold.map_or_else(
                    || format!("{:>12} {:>12}", "-", "-"),
                    |cold| format!("{:>12.0} {:>12.0}", ms(cold.p50), ms(cold.p99)),
                );
                println!(
                    "{label:<18} {:>12.2} {:>12.2} {runs_per_s:>14.1} {cold}",
                    ms(warm.p50),
                    ms(warm.p99),
                );
            }
            Err(why) => println!("{label:<18} not measured: {why}"),
        }
    }
}

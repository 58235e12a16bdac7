//! The rest of the latency profile: the full MCP path through the built
//! binary (print, the data stack with and without preload, plots returned as
//! images), a cold `docker run` of the data snippet, throughput at 1/4/16
//! calls in flight, launch to the first warm sandbox, and host memory per
//! idle warm sandbox (with the default preload and without).
//!
//! `cargo bench --bench profile`. Skips with a message when no container
//! engine answers. Under `cargo test` (no `--bench`) each part runs once,
//! briefly, as a smoke test.

mod common;
#[allow(dead_code)] // the tests' driver; the bench uses part of it
#[path = "../tests/util/server.rs"]
mod server;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::percentiles;
use criterion::Criterion;
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;
use server::{Server, free_port, http_get};

fn engine_answers(tokio: &tokio::runtime::Runtime) -> bool {
    match tokio.block_on(Engine::connect(Config::default().engine)) {
        Ok(_) => true,
        Err(error) => {
            eprintln!("SKIPPED profile benchmarks: {error}");
            false
        }
    }
}

/// The data snippet of issue 10's target.
const DATA_SNIPPET: &str = "import numpy as np, pandas as pd\n\
                            print(pd.DataFrame(np.arange(6).reshape(3, 2)).sum().sum())";
/// Draws a 640x480 line plot and saves it as PNG (no image returned).
const SAVE_PLOT: &str = "import io\nimport matplotlib.pyplot as plt\n\
                         fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)\n\
                         ax.plot(range(100), [i * i for i in range(100)])\n\
                         fig.savefig(io.BytesIO(), format='png')\nplt.close(fig)";
/// Draws the same plot and returns it as an image through `plt.show()`.
const SHOW_PLOT: &str = "import matplotlib.pyplot as plt\n\
                         fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)\n\
                         ax.plot(range(100), [i * i for i in range(100)])\nplt.show()";

/// Launches `serve` as a client would (with `env` besides); returns it with
/// the time until `/readyz` said a warm sandbox is idle.
fn launch(min_idle: &str, env: &[(&str, &str)]) -> (Server, Duration) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut all = vec![
        ("MCP_BRIDGE_METRICS_ADDR", addr.as_str()),
        ("MCP_BRIDGE_POOL_MIN_IDLE", min_idle),
        ("MCP_BRIDGE_LOG_LEVEL", "warn"),
    ];
    all.extend_from_slice(env);
    let server = Server::start(&all, Stdio::null());
    while http_get(port, "/readyz").is_none_or(|(status, _)| status != 200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server never became ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (server, started.elapsed())
}

fn call_code(server: &mut Server, code: &str) {
    let result = server.run_python(serde_json::json!({ "code": code }));
    assert_eq!(result["status"], "success", "{result}");
}

/// p50/p90/p99 of `code` through the full MCP path, calls 10 ms apart.
fn mcp_percentiles(server: &mut Server, label: &str, code: &str, n: usize) {
    call_code(server, code); // every sandbox of the pool has run it once
    call_code(server, code);
    let samples = (0..n)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            let started = Instant::now();
            call_code(server, code);
            started.elapsed()
        })
        .collect();
    percentiles(label, samples);
}

fn mcp_path(criterion: &mut Criterion, full: bool) {
    let (mut server, _) = launch("2", &[]);
    criterion.bench_function("mcp tools/call run_python print(6*7), client side", |b| {
        b.iter(|| call_code(&mut server, "print(6*7)"))
    });
    let n = if full { 1000 } else { 3 };
    mcp_percentiles(
        &mut server,
        "full MCP path, calls 10 ms apart",
        "print(6*7)",
        n,
    );
    let n = if full { 300 } else { 3 };
    mcp_percentiles(
        &mut server,
        "numpy+pandas snippet, preloaded",
        DATA_SNIPPET,
        n,
    );
    let n = if full { 100 } else { 2 };
    mcp_percentiles(
        &mut server,
        "640x480 plot saved as PNG, preloaded",
        SAVE_PLOT,
        n,
    );
    mcp_percentiles(
        &mut server,
        "640x480 plot returned as an image",
        SHOW_PLOT,
        n,
    );
    drop(server);
    let (mut bare, _) = launch("2", &[("MCP_BRIDGE_PRELOAD", "none")]);
    let n = if full { 30 } else { 2 };
    mcp_percentiles(
        &mut bare,
        "numpy+pandas snippet, no preload",
        DATA_SNIPPET,
        n,
    );
}

/// The same snippet in a fresh container per call, as the Python project did.
fn cold_data_snippet(full: bool) {
    let image = Config::default().image;
    let samples = (0..if full { 5 } else { 1 })
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("docker")
                .args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--read-only",
                    "--user",
                    "65534:65534",
                ])
                .args([&image, "python3", "-c", DATA_SNIPPET])
                .stdout(Stdio::null())
                .status()
                .expect("docker runs");
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    percentiles("numpy+pandas snippet, cold docker run", samples);
}

fn launch_to_warm(full: bool) {
    for (label, env) in [
        ("default preload", &[][..]),
        ("no preload", &[("MCP_BRIDGE_PRELOAD", "none")][..]),
    ] {
        let samples: Vec<Duration> = (0..if full { 5 } else { 1 })
            .map(|_| launch("1", env).1)
            .collect();
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "launch to first warm sandbox, {label:<16} n={:<5} median {:>7.1} ms   min {:.1}   max {:.1}",
            ms.len(),
            ms[ms.len() / 2],
            ms[0],
            ms[ms.len() - 1]
        );
    }
}

fn throughput(tokio: &tokio::runtime::Runtime, full: bool, preload: Option<Vec<String>>) {
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.pool_min_idle = 4;
    config.pool_max = 4;
    let label = if preload.is_some() {
        "no preload"
    } else {
        "default preload"
    };
    if let Some(preload) = preload {
        config.preload = preload;
    }
    let service = Arc::new(Service::new(config));
    tokio.block_on(async {
        let pool = service.pool().await.expect("the service starts");
        assert!(pool.wait_warm(Duration::from_secs(60)).await);
    });
    let total = if full { 2000 } else { 16 };
    for in_flight in [1usize, 4, 16] {
        let started = Instant::now();
        tokio.block_on(async {
            let per_worker = total / in_flight;
            let workers = (0..in_flight).map(|_| {
                let service = service.clone();
                tokio::spawn(async move {
                    let request = CallRequest {
                        code: "print(6*7)".into(),
                        ..CallRequest::default()
                    };
                    for _ in 0..per_worker {
                        let report = call(&service, &request).await;
                        assert_eq!(report.status, RunStatus::Success, "{report:?}");
                    }
                })
            });
            for worker in futures_util::future::join_all(workers).await {
                worker.unwrap();
            }
        });
        let elapsed = started.elapsed();
        println!(
            "throughput, {in_flight:>2} in flight (pool of 4), {label:<16} {:>7.0} runs/s ({total} runs in {:.2} s)",
            total as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    tokio.block_on(service.shutdown());
}

/// Host memory of each idle warm sandbox: the container's cgroup (without
/// reclaimable page cache, as `docker stats` counts it) plus the PSS of its
/// containerd shim.
fn idle_memory(tokio: &tokio::runtime::Runtime, label: &str, change: fn(&mut Config)) {
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.pool_min_idle = 4;
    config.pool_max = 4;
    change(&mut config);
    let service = Service::new(config);
    tokio.block_on(async {
        let pool = service.pool().await.expect("the service starts");
        assert!(pool.wait_warm(Duration::from_secs(60)).await);
        let request = CallRequest {
            code: "print(1)".into(),
            ..CallRequest::default()
        };
        for _ in 0..8 {
            call(&service, &request).await; // each sandbox has run and reset
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let owner = tokio
        .block_on(service.pool())
        .unwrap()
        .engine()
        .owner_label();
    let ids = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=mcp-code-exec.owner={owner}"),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut per_sandbox = Vec::new();
    for id in &ids {
        let (Some(cgroup), shim) = (cgroup_bytes(id), shim_pss_bytes(id)) else {
            continue;
        };
        per_sandbox.push((cgroup, shim.unwrap_or(0)));
    }
    if per_sandbox.is_empty() {
        println!("idle sandbox memory: could not read the containers' cgroups on this host");
    } else {
        let n = per_sandbox.len() as f64;
        let cgroup = per_sandbox.iter().map(|(c, _)| *c as f64).sum::<f64>() / n / 1048576.0;
        let shim = per_sandbox.iter().map(|(_, s)| *s as f64).sum::<f64>() / n / 1048576.0;
        println!(
            "host memory per idle warm sandbox, {label:<16} n={:<5} {:.1} MiB (container cgroup {cgroup:.1} MiB + shim PSS {shim:.1} MiB)",
            per_sandbox.len(),
            cgroup + shim
        );
    }
    tokio.block_on(service.shutdown());
}

fn cgroup_bytes(id: &str) -> Option<u64> {
    // cgroup v1 (this host) or v2, with Docker's cgroupfs or systemd drivers.
    for dir in [
        format!("/sys/fs/cgroup/memory/docker/{id}"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/docker/{id}"),
    ] {
        let read = |file: &str| std::fs::read_to_string(format!("{dir}/{file}")).ok();
        let stat = |stat: &str, key: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let (Some(usage), Some(stat_text)) = (read("memory.usage_in_bytes"), read("memory.stat"))
        {
            let usage: u64 = usage.trim().parse().ok()?;
            return Some(usage.saturating_sub(stat(&stat_text, "total_inactive_file ")));
        }
        if let (Some(usage), Some(stat_text)) = (read("memory.current"), read("memory.stat")) {
            let usage: u64 = usage.trim().parse().ok()?;
            return Some(usage.saturating_sub(stat(&stat_text, "inactive_file ")));
        }
    }
    None
}

fn shim_pss_bytes(id: &str) -> Option<u64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim") && cmdline.contains(id) {
            let rollup = std::fs::read_to_string(path.join("smaps_rollup")).ok()?;
            let kib: u64 = rollup.lines().find_map(|l| {
                l.strip_prefix("Pss:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })?;
            return Some(kib * 1024);
        }
    }
    None
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !engine_answers(&tokio) {
        return;
    }
    let full = std::env::args().any(|arg| arg == "--bench");
    let mut criterion = Criterion::default().configure_from_args();
    println!();
    mcp_path(&mut criterion, full);
    cold_data_snippet(full);
    launch_to_warm(full);
    throughput(&tokio, full, None);
    throughput(&tokio, full, Some(Vec::new()));
    idle_memory(&tokio, "default preload", |_| {});
    idle_memory(&tokio, "small pages", |c| c.huge_pages = false);
    idle_memory(&tokio, "no preload", |c| c.preload.clear());
    criterion.final_summary();
}

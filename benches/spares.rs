//! The fork sources side by side, in one run (issue 25, part 1): the
//! default (a light zygote beside the preloaded one, both in huge pages),
//! the zygotes in small pages (`MCP_BRIDGE_HUGE_PAGES=off`), one fork source
//! (`MCP_BRIDGE_LIGHT_SPARE=off`: every run forked from the preloaded zygote)
//! and no preload at all (`MCP_BRIDGE_PRELOAD=none`), each on a pool of 4.
//! For `print(6*7)` and (but with no preload, which imports pandas in every
//! run: no baseline worth its half hour) the pandas snippet: back-to-back
//! p50/p99 and throughput at 4 in flight. The rounds alternate between the four, so a
//! machine that speeds up or slows down during the run moves all alike; the
//! ratios to the no-preload figures are printed at the end.
//!
//! `cargo bench --bench spares`. Under `cargo test` (no `--bench`) each part
//! runs once, briefly, as a smoke test. Skips when no engine answers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::percentiles;
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::Engine;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

const PRINT: &str = "print(6*7)";
const PANDAS: &str =
    "import numpy as np, pandas as pd\nprint(pd.DataFrame(np.arange(6).reshape(3, 2)).sum().sum())";

struct Variant {
    label: &'static str,
    service: Arc<Service>,
    back_to_back: [Vec<Duration>; 2],
    runs_per_s: [Vec<f64>; 2],
}

fn variant(
    tokio: &tokio::runtime::Runtime,
    label: &'static str,
    change: fn(&mut Config),
) -> Variant {
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.pool_min_idle = 4;
    config.pool_max = 4;
    change(&mut config);
    let service = Arc::new(Service::new(config));
    tokio.block_on(async {
        let pool = service.pool().await.expect("the service starts");
        assert!(pool.wait_warm(Duration::from_secs(60)).await);
    });
    Variant {
        label,
        service,
        back_to_back: Default::default(),
        runs_per_s: Default::default(),
    }
}

async fn one(service: &Service, code: &str) {
    let request = CallRequest {
        code: code.into(),
        ..CallRequest::default()
    };
    let report = call(service, &request).await;
    assert_eq!(report.status, RunStatus::Success, "{report:?}");
}

/// One round of `variant` on `code`: `n` calls back to back, then `n` at 4 in flight.
fn round(
    tokio: &tokio::runtime::Runtime,
    variant: &mut Variant,
    which: usize,
    code: &'static str,
    n: usize,
) {
    for _ in 0..n {
        let started = Instant::now();
        tokio.block_on(one(&variant.service, code));
        variant.back_to_back[which].push(started.elapsed());
    }
    let started = Instant::now();
    tokio.block_on(async {
        let workers = (0..4).map(|_| {
            let service = variant.service.clone();
            tokio::spawn(async move {
                for _ in 0..n / 4 {
                    one(&service, code).await;
                }
            })
        });
        for worker in futures_util::future::join_all(workers).await {
            worker.unwrap();
        }
    });
    variant.runs_per_s[which].push((n / 4 * 4) as f64 / started.elapsed().as_secs_f64());
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(error) = tokio.block_on(Engine::connect(Config::default().engine)) {
        eprintln!("SKIPPED spares benchmarks: {error}");
        return;
    }
    let full = std::env::args().any(|arg| arg == "--bench");
    let (rounds, n) = if full { (5, 400) } else { (1, 8) };
    let mut variants = [
        variant(&tokio, "default", |_| {}),
        variant(&tokio, "MCP_BRIDGE_HUGE_PAGES=off", |c| {
            c.huge_pages = false
        }),
        variant(&tokio, "MCP_BRIDGE_LIGHT_SPARE=off", |c| {
            c.light_spare = false
        }),
        variant(&tokio, "no preload", |c| c.preload.clear()),
    ];
    for _ in 0..rounds {
        for (i, variant) in variants.iter_mut().enumerate() {
            round(&tokio, variant, 0, PRINT, n);
            if i < 3 {
                round(&tokio, variant, 1, PANDAS, n);
            }
        }
    }
    println!();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut summary = Vec::new();
    for variant in &variants {
        for (which, code) in ["print(6*7)", "pandas snippet"].into_iter().enumerate() {
            if variant.back_to_back[which].is_empty() {
                continue;
            }
            let label = format!("{code}, back to back, {}", variant.label);
            let p50 = percentiles(&label, variant.back_to_back[which].clone());
            let rate = median(&variant.runs_per_s[which]);
            println!(
                "{:<44} {rate:>7.0} runs/s at 4 in flight (median of {rounds} rounds)",
                ""
            );
            summary.push((p50, rate));
        }
    }
    // print(6*7) against no preload (the targets: throughput ≥ 0.9×,
    // back-to-back p50 ≤ 1.15×); the pandas snippet against the previous
    // design (no preload imports pandas in every run: no fair baseline).
    let ratio = |label: &str,
                 code: &str,
                 (p50, rate): (Duration, f64),
                 (base_p50, base_rate): (Duration, f64),
                 base: &str| {
        println!(
            "{label:<16} {code:<15} back-to-back p50 ×{:.2}, throughput ×{:.2} of {base}",
            p50.as_secs_f64() / base_p50.as_secs_f64(),
            rate / base_rate,
        );
    };
    // In `summary`: print then pandas for each variant but the last, its print.
    let (default, small_pages, light_off, no_preload) = (0, 2, 4, 6);
    for (label, print) in [
        ("default", default),
        ("huge pages off", small_pages),
        ("light spare off", light_off),
    ] {
        ratio(
            label,
            "print(6*7)",
            summary[print],
            summary[no_preload],
            "no preload",
        );
    }
    for (base, pandas) in [
        ("huge pages off", small_pages + 1),
        ("light spare off", light_off + 1),
    ] {
        ratio(
            "default",
            "pandas snippet",
            summary[default + 1],
            summary[pandas],
            base,
        );
    }
    for variant in &variants {
        tokio.block_on(variant.service.shutdown());
    }
}

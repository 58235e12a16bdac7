//! Shared by the benchmarks: percentile summaries of plain samples (tail
//! latency is the promise; criterion reports means and medians), and the
//! cold baseline.
#![allow(dead_code)] // each bench uses what it needs

use std::time::Duration;

use mcp_code_exec::call::Limits;
use mcp_code_exec::config::Config;
use mcp_code_exec::engine::{Engine, spec};
use mcp_code_exec::sandbox::{CapturedOutput, RunServices, Sandbox, agent_command};

pub const PRINT: &str = "print(6*7)";

/// What a fresh container per call costs, with our own flags and agent:
/// create + start + `print(6*7)` + remove.
pub async fn cold_run(engine: &Engine, config: &Config, image: &str) {
    let spec = spec::container_spec(config, image, &engine.owner_label(), agent_command(config));
    let container = engine.start_container(&spec).await.unwrap();
    let id = container.id.clone();
    let mut sandbox = Sandbox::attach(container, Duration::from_secs(60))
        .await
        .unwrap();
    let mut output = CapturedOutput::default();
    let done = sandbox
        .run(
            &Limits::from(config).input(PRINT, &[]),
            Duration::from_secs(30),
            RunServices::default(),
            &mut output,
        )
        .await
        .unwrap();
    assert_eq!(
        (done.exit_code, &output.stdout.bytes[..]),
        (0, &b"42\n"[..])
    );
    drop(sandbox);
    engine.remove(&id).await;
}

/// Prints `label`, the sample count and p50/p90/p99 (and max); returns p50.
pub fn percentiles(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let at = |per_mille: usize| samples[(samples.len() * per_mille / 1000).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<44} n={:<5} p50 {:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        samples.len(),
        ms(at(500)),
        ms(at(900)),
        ms(at(990)),
        ms(*samples.last().unwrap()),
    );
    at(500)
}

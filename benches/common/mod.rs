//! Shared by the benchmarks: percentile summaries of plain samples (tail
//! latency is the promise; criterion reports means and medians).
#![allow(dead_code)] // each bench uses what it needs

use std::time::Duration;

/// Prints `label`, the sample count and p50/p90/p99 (and max); returns p50.
pub fn percentiles(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<44} n={:<5} p50 {:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        samples.len(),
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(*samples.last().unwrap()),
    );
    at(0.50)
}

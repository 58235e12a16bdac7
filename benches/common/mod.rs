//! Shared by the benchmarks: percentile summaries of plain samples (tail
//! latency is the promise; criterion reports means and medians).
#![allow(dead_code)] // each bench uses what it needs

use std::time::Duration;

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

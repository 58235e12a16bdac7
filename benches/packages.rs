//! What `packages=[…]` adds to a run, measured in one run against a real
//! package index on the host's loopback (the tests' index over the wheels
//! scripts/test.sh downloads): the first install (the host fetches the
//! wheel into an empty cache), then installs from the warm cache, of a pure
//! wheel (tabulate) and of one with a C extension (MarkupSafe), next to a
//! warm `print(6*7)` without `packages`; then scikit-learn (a 9 MB wheel and
//! four pure ones), first and from the warm cache. Warm installs are
//! measured twice over the same cache: from the host's plans (the wheels
//! unpacked without pip, the default) and with `MCP_BRIDGE_PACKAGE_PLANS=off`
//! (pip resolves and installs every time).
//!
//! `cargo bench --bench packages`. Needs the engine, the sandbox image and
//! the wheels (scripts/test.sh).

#[path = "../tests/util/web.rs"]
#[allow(dead_code)] // the tests' servers: this bench reads less of what they count
mod web;

mod common;

use std::time::{Duration, Instant};

use common::{PRINT, percentiles};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::Config;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let rounds = if full { 30 } else { 2 };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let servers = tokio.block_on(web::start(Some(web::wheels())));
    let cache = std::env::temp_dir().join(format!("packages-bench-cache-{}", std::process::id()));
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.packages.index = Some(format!("http://127.0.0.1:{}/simple", servers.http_port));
    config.packages.cache_dir = cache.clone();
    config.memory_bytes = config.memory_bytes.max(1 << 30);
    for plans in [true, false] {
        config.packages.plans = plans;
        let service = Service::new(config.clone());
        if let Err(error) = tokio.block_on(service.pool()) {
            eprintln!("SKIPPED packages benchmark: {error}");
            return;
        }
        measure(&tokio, &service, &servers, rounds, plans);
        tokio.block_on(service.shutdown());
    }
    let _ = std::fs::remove_dir_all(cache);
}

/// One service's samples: the first installs when the cache is empty,
/// then alternating warm ones.
fn measure(
    tokio: &tokio::runtime::Runtime,
    service: &Service,
    servers: &web::WebServers,
    rounds: usize,
    plans: bool,
) {
    let request = |packages: &[&str], code: &str| CallRequest {
        code: code.into(),
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        timeout_secs: Some(120.0),
        ..CallRequest::default()
    };
    // One sample: the whole call, and the install as the sandbox timed it.
    let sample = |request: &CallRequest| {
        let started = Instant::now();
        let report = tokio.block_on(call(service, request));
        let took = started.elapsed();
        assert_eq!(report.status, RunStatus::Success, "{report:?}");
        let install = report
            .packages
            .map_or(Duration::ZERO, |p| Duration::from_millis(p.duration_ms));
        (took, install)
    };
    let tabulate = request(&["tabulate"], "import tabulate");
    let markupsafe = request(&["MarkupSafe"], "import markupsafe._speedups");
    let sklearn = request(&["scikit-learn"], "import sklearn.linear_model");
    let print = request(&[], PRINT);

    let (cold_call, cold_install) = sample(&tabulate);
    let (mut warm, mut warm_install, mut native, mut plain) = (vec![], vec![], vec![], vec![]);
    let mut heavy = vec![];
    sample(&markupsafe); // its wheel into the cache (and its plan)
    let (sklearn_cold, _) = sample(&sklearn); // and its four
    for _ in 0..rounds {
        let (call, install) = sample(&tabulate);
        warm.push(call);
        warm_install.push(install);
        native.push(sample(&markupsafe).0);
        plain.push(sample(&print).0);
        heavy.push(sample(&sklearn).0);
    }
    assert_eq!(
        servers.downloads(),
        7,
        "every later install came from the cache"
    );
    let how = if plans {
        "from the host's plans (no pip)"
    } else {
        "MCP_BRIDGE_PACKAGE_PLANS=off (pip every time)"
    };
    println!("\n== {how} ==");
    if plans {
        println!("the first `packages=[\"tabulate\"]`, an empty cache (download + install):");
        println!(
            "  whole call {:.1} ms, install {:.1} ms",
            cold_call.as_secs_f64() * 1e3,
            cold_install.as_secs_f64() * 1e3
        );
        println!(
            "the first packages=[\"scikit-learn\"] (a 9 MB wheel, and joblib, cloudpickle, threadpoolctl, narwhals): {:.0} ms",
            sklearn_cold.as_secs_f64() * 1e3
        );
    }
    println!("from the warm cache, whole calls, alternating:");
    percentiles("packages=[\"tabulate\"] (pure)", warm);
    percentiles(
        "  of which the install (timed in the sandbox)",
        warm_install,
    );
    percentiles("packages=[\"MarkupSafe\"] (C extension)", native);
    percentiles(
        "packages=[\"scikit-learn\"] (and import sklearn.linear_model)",
        heavy,
    );
    percentiles(&format!("`{PRINT}` without packages"), plain);
}

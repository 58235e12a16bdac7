//! Egress through the sandbox's proxy versus the same Python on the host,
//! measured in one run against real servers on the host's loopback (the
//! tests' HTTP and HTTPS servers, with a CA made here):
//!
//! - a 100 MB HTTPS download (a CONNECT tunnel: every byte crosses the
//!   agent's channel as stream frames) with urllib;
//! - the time to the first byte of a small HTTPS GET on a new connection
//!   (name check, dial, tunnel, TLS handshake);
//! - a warm `print(6*7)` with egress on and off (the proxy port costs the
//!   runs that do not use it nothing).
//!
//! `cargo bench --bench egress`. Needs the engine and the sandbox image.

#[path = "../tests/util/web.rs"]
#[allow(dead_code)] // the tests' servers: this bench reads less of what they count
mod web;

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{PRINT, percentiles};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::{CaBundle, Config};
use mcp_code_exec::egress::Policy;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

const DOWNLOAD_BYTES: usize = 100_000_000;

/// Downloads `{base}/bytes/N` `rounds` times, then times `gets` small GETs
/// on new connections; prints one line of seconds per download, then one
/// of milliseconds per GET. `CA` is the file of the CA to trust.
const CLIENT: &str = r#"
import ssl, sys, time, urllib.request
base, ca, rounds, gets = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
context = ssl.create_default_context(cafile=ca)
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
for _ in range(rounds):
    started = time.perf_counter()
    with opener.open(f"{base}/bytes/NBYTES", timeout=120) as response:
        while response.read(1 << 20):
            pass
    print("download", time.perf_counter() - started)
for _ in range(gets):
    started = time.perf_counter()
    with opener.open(f"{base}/hello", timeout=30) as response:
        response.read(1)
        print("ttfb", (time.perf_counter() - started) * 1e3)
"#;

fn client_code() -> String {
    CLIENT.replace("NBYTES", &DOWNLOAD_BYTES.to_string())
}

/// The samples of one kind (`download` or `ttfb`) a client printed.
fn samples(stdout: &str, kind: &str, unit: Duration) -> Vec<Duration> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(kind))
        .map(|value| unit.mul_f64(value.trim().parse::<f64>().unwrap()))
        .collect()
}

fn megabytes_per_second(label: &str, downloads: &[Duration]) {
    let best = downloads.iter().min().unwrap();
    let mut sorted = downloads.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let rate = |d: &Duration| DOWNLOAD_BYTES as f64 / d.as_secs_f64() / 1e6;
    println!(
        "  {label:<44} median {:>6.1} MB/s   best {:>6.1} MB/s   ({} downloads)",
        rate(&median),
        rate(best),
        downloads.len()
    );
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (rounds, gets, prints) = if full { (5, 200, 1000) } else { (1, 5, 5) };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let servers = tokio.block_on(web::start(None));
    let https = format!("https://localhost:{}", servers.https_port);
    let ca_file = std::env::temp_dir().join(format!("egress-bench-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &servers.ca_pem).unwrap();

    // The host: the same client, the host's python3, no proxy.
    let host = std::process::Command::new("python3")
        .args(["-c", &client_code(), &https, &ca_file.to_string_lossy()])
        .args([rounds.to_string(), gets.to_string()])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let host = String::from_utf8(host.stdout).unwrap();

    let base = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    let mut allowed = base.clone();
    allowed.egress.policy = Policy::parse(&servers.allow_hosts(), "127.0.0.0/8").unwrap();
    // Room for every download of the run (the bound is a test's matter).
    allowed.egress.limits.bytes = 1 << 40;
    allowed.egress.ca_bundle = Some(CaBundle {
        path: ca_file.clone(),
        pem: servers.ca_pem.clone(),
    });
    let on = Service::new(allowed);
    let off = Service::new(base);
    for service in [&on, &off] {
        if let Err(error) = tokio.block_on(service.pool()) {
            eprintln!("SKIPPED egress benchmark: {error}");
            return;
        }
    }

    // The sandbox: the same client through the proxy (the trust file is
    // the operator's bundle, where MCP_BRIDGE_CA_BUNDLE puts it).
    let code = format!(
        "import sys\nsys.argv = ['client', {https:?}, '/run/code/ca-bundle.pem', '{rounds}', '{gets}']\n{}",
        client_code()
    );
    let request = CallRequest {
        code,
        timeout_secs: Some(120.0),
        ..CallRequest::default()
    };
    let report = tokio.block_on(call(&on, &request));
    assert_eq!(report.status, RunStatus::Success, "{report:?}");

    println!("\n{DOWNLOAD_BYTES} bytes over HTTPS with urllib:");
    megabytes_per_second(
        "host python3, direct",
        &samples(&host, "download", Duration::from_secs(1)),
    );
    megabytes_per_second(
        "sandboxed, through the proxy (CONNECT tunnel)",
        &samples(&report.stdout, "download", Duration::from_secs(1)),
    );
    println!("\ntime to the first byte of a small HTTPS GET, a new connection each:");
    percentiles(
        "host python3, direct",
        samples(&host, "ttfb", Duration::from_millis(1)),
    );
    percentiles(
        "sandboxed, through the proxy",
        samples(&report.stdout, "ttfb", Duration::from_millis(1)),
    );

    println!("\nwarm `{PRINT}`, alternating, egress on and off:");
    let print = CallRequest {
        code: PRINT.into(),
        ..CallRequest::default()
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    tokio.block_on(async {
        for _ in 0..prints {
            for (service, samples) in [(&on, &mut with), (&off, &mut without)] {
                let started = Instant::now();
                let report = call(service, &print).await;
                samples.push(started.elapsed());
                assert_eq!(report.stdout, "42\n");
            }
        }
    });
    percentiles("egress on (MCP_BRIDGE_ALLOW_HOSTS set)", with);
    percentiles("egress off", without);

    tokio.block_on(async {
        on.shutdown().await;
        off.shutdown().await;
    });
    let _ = std::fs::remove_file(Path::new(&ca_file));
}

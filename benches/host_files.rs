//! What host files cost: a 100 MiB host file read into a run (the host's
//! bounded read, the `H` frames, the agent's writes under `/workspace`),
//! next to 8 MiB passed through `files` as base64 in the request, and a
//! warm `print(6*7)` with neither. Whole calls, as a client waits for them.
//!
//! `cargo bench --bench host_files` (`-- --quick`: two rounds). Needs the
//! engine and the sandbox image.

mod common;

use std::time::Instant;

use base64::Engine as _;
use common::{PRINT, percentiles};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::config::{Config, HostRead};
use mcp_code_exec::hostfiles::HostRequest;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::sandbox::protocol::{FileContent, InputFile};
use mcp_code_exec::service::Service;

const LARGE: usize = 100 << 20;
const CARRIED: usize = 8 << 20;

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 2 } else { 10 };
    let root = std::env::temp_dir().join(format!("host-files-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..LARGE)
        .map(|i| u8::try_from(i * 31 % 251).unwrap())
        .collect();
    std::fs::write(root.join("large.bin"), &data).unwrap();
    let mut config = Config::from_env().expect("valid MCP_BRIDGE_* environment");
    config.host_read = HostRead::Folders(vec![root.clone()]);
    config.max_host_files_bytes = 128 << 20;
    config.workspace_bytes = 192 << 20;
    config.max_input_files_bytes = CARRIED as u64;
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let service = Service::new(config);
    if let Err(error) = tokio.block_on(service.pool()) {
        eprintln!("SKIPPED host files benchmark: {error}");
        return;
    }
    let check = "import os\nprint(os.path.getsize('in.bin'))";
    let host = CallRequest {
        code: check.into(),
        host_files: vec![HostRequest {
            dest: "in.bin".into(),
            host: "large.bin".into(),
        }],
        timeout_secs: Some(60.0),
        ..CallRequest::default()
    };
    let carried = CallRequest {
        code: check.into(),
        files: vec![InputFile {
            path: "in.bin".into(),
            content: FileContent::Base64(
                base64::engine::general_purpose::STANDARD.encode(&data[..CARRIED]),
            ),
        }],
        timeout_secs: Some(60.0),
        ..CallRequest::default()
    };
    let print = CallRequest {
        code: PRINT.into(),
        ..CallRequest::default()
    };
    let sample = |request: &CallRequest, expect: &str| {
        let started = Instant::now();
        let report = tokio.block_on(call(&service, request));
        let took = started.elapsed();
        assert_eq!(report.status, RunStatus::Success, "{report:?}");
        assert_eq!(report.stdout, expect);
        took
    };
    sample(&host, &format!("{LARGE}\n")); // warm: the page cache, the pool
    let (mut large, mut small, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        large.push(sample(&host, &format!("{LARGE}\n")));
        small.push(sample(&carried, &format!("{CARRIED}\n")));
        plain.push(sample(&print, "42\n"));
    }
    let median = percentiles("100 MiB host file (files={\"host\": ...})", large);
    println!(
        "  {:.0} MB/s for the whole call",
        LARGE as f64 / median.as_secs_f64() / 1e6
    );
    let median = percentiles("8 MiB through files (base64 in the request)", small);
    println!(
        "  {:.0} MB/s for the whole call",
        CARRIED as f64 / median.as_secs_f64() / 1e6
    );
    percentiles(&format!("`{PRINT}`"), plain);
    tokio.block_on(service.shutdown());
    let _ = std::fs::remove_dir_all(root);
}

//! Host memory stays bounded by what a run keeps, however much the code
//! prints. The output cap is raised (128 MiB per stream), so the flood
//! really crosses into the host: 256 MiB of frames arrive, and the host's
//! peak memory may grow by what it keeps (the capped output) and a small
//! constant, never by another copy of the stream.
//!
//! The measurement runs in a process of its own (this test binary, started
//! again for this one test), so no other test's allocations blur it.

use std::process::Command;

use crate::util::{block_on, run_on, started_service, test_config};
use mcp_code_exec::report::RunStatus;

/// Set in the child process that measures.
const MEASURE: &str = "MCP_CODE_EXEC_TEST_MEASURE_HOST_MEMORY";

/// The cap of each stream in this test, and what the host keeps of the flood.
const CAP_MIB: u64 = 128;

/// This process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

engine_test! {
    fn a_256_mib_flood_on_both_streams_leaves_host_memory_flat() {
        if std::env::var_os(MEASURE).is_some() {
            measure();
            return;
        }
        // This test's name for libtest: its path without the crate's name.
        let name = format!(
            "{}::a_256_mib_flood_on_both_streams_leaves_host_memory_flat",
            module_path!().split_once("::").unwrap().1
        );
        let output = Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(MEASURE, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines().filter(|l| l.starts_with("host peak memory")) {
            eprintln!("{line}");
        }
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the measuring process failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
}

/// The flood and the measurement, in the child process.
fn measure() {
    let mut config = test_config();
    config.max_output_bytes = CAP_MIB << 20;
    config.pool_max = 1;
    let service = started_service(config);
    // Warm everything up first (executor threads, pool, buffers).
    let warm = run_on(&service, "print('x' * 2_000_000)", None);
    assert_eq!(warm.status, RunStatus::Success);
    let before = peak_rss_mib();
    // 160 MiB per stream: the first 128 MiB of each cross into the host,
    // the rest is counted by the agent.
    let code = "import os\nchunk = b'f' * (1 << 20)\nfor _ in range(160):\n    os.write(1, chunk)\n    os.write(2, chunk)";
    let report = run_on(&service, code, Some(60.0));
    let growth = peak_rss_mib() - before;
    assert_eq!(report.status, RunStatus::Success, "{:?}", report.error);
    assert!(report.stdout_truncated && report.stderr_truncated);
    let received = report.stdout.len() + report.stderr.len();
    assert!(
        received as u64 >= 2 * (CAP_MIB << 20),
        "the host received the flood: {received} bytes"
    );
    eprintln!("host peak memory grew {growth} MiB while receiving {received} bytes");
    let kept_mib = 2 * CAP_MIB;
    assert!(
        growth < kept_mib + 32,
        "host peak memory grew {growth} MiB during a flood of which it keeps {kept_mib} MiB"
    );
    block_on(service.shutdown());
}

//! Host memory stays flat whatever the code prints. Alone in its own test
//! binary, so no other test's allocations blur the measurement.

use crate::util::{Shared, run_on};
use mcp_code_exec::report::RunStatus;

static SERVICE: Shared = Shared::new();

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
        let service = SERVICE.get();
        // Warm everything up first (runtime threads, pool, buffers).
        let warm = run_on(service, "print('x' * 2_000_000)", None);
        assert_eq!(warm.status, RunStatus::Success);
        let before = peak_rss_mib();
        let code = "import os\nchunk = b'f' * (1 << 20)\nfor _ in range(128):\n    os.write(1, chunk)\n    os.write(2, chunk)";
        let report = run_on(service, code, Some(60.0));
        let growth = peak_rss_mib() - before;
        assert_eq!(report.status, RunStatus::Success, "{:?}", report.error);
        assert!(report.stdout_truncated && report.stderr_truncated);
        assert!(
            growth < 32,
            "host peak memory grew {growth} MiB during a 256 MiB flood"
        );
    }
}

//! Host memory stays bounded by what a run keeps, however much the code
//! prints, and by the run's tool-call budget, however much it sends to or
//! asks of MCP servers.
//!
//! - Output: the cap is raised (128 MiB per stream), so the flood really
//!   crosses into the host: 256 MiB of frames arrive, and the host's peak
//!   memory may grow by what it keeps (the capped output) and a small
//!   constant, never by another copy of the stream.
//! - Tool calls: 64 calls at once whose arguments take ~19 MB each once
//!   parsed, then 64 answers of 4 MiB each and one larger than the budget:
//!   the run's calls and answers in flight hold at most
//!   `MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT` (32 MiB here), large calls are
//!   parsed and large answers encoded one at a time, and the rest are
//!   refused with an `MCPError` naming the variable; the run goes on.
//!
//! - Calls: 10,000 calls, each with 16 KiB of code and 8 KiB of output,
//!   recorded for the console (the last 200 kept) and the audit log:
//!   resident memory after the last is that after the first 2,000, within
//!   allocator noise; kept without bound, the records would add ~200 MiB.
//!
//! Each measurement runs in a process of its own (this test binary, started
//! again for that one test), so no other test's allocations blur it.

use std::process::Command;

use futures_util::StreamExt;
use std::sync::Arc;

use crate::util::{block_on, fixture_server, run_on, started_service, test_config, warmed};
use mcp_code_exec::call::{CallRequest, call};
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::report::RunStatus;
use mcp_code_exec::service::Service;

/// Set in the child process that measures.
const MEASURE: &str = "MCP_CODE_EXEC_TEST_MEASURE_HOST_MEMORY";

/// The cap of each stream in this test, and what the host keeps of the flood.
const CAP_MIB: u64 = 128;

/// This process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    status_mib("VmHWM:")
}

/// This process's resident memory now (VmRSS), in MiB.
fn rss_mib() -> u64 {
    status_mib("VmRSS:")
}

/// A size line of /proc/self/status (`field` with its colon), in MiB.
fn status_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// Runs `measure` in a process of its own: this test binary, started again
/// for the test `test` alone (its name within this module).
fn in_own_process(test: &str, measure: fn()) {
    if std::env::var_os(MEASURE).is_some() {
        measure();
        return;
    }
    // The test's name for libtest: its path without the crate's name.
    let name = format!("{}::{test}", module_path!().split_once("::").unwrap().1);
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

engine_test! {
    fn a_256_mib_flood_on_both_streams_leaves_host_memory_flat() {
        in_own_process("a_256_mib_flood_on_both_streams_leaves_host_memory_flat", flood);
    }
}

engine_test! {
    fn ten_thousand_calls_leave_host_memory_flat() {
        in_own_process("ten_thousand_calls_leave_host_memory_flat", many_calls);
    }
}

/// The calls and the measurement, in the child process.
fn many_calls() {
    let config = test_config();
    let pool_max = config.pool_max;
    let service = Arc::new(started_service(config));
    // Each call unlike the others (its number), 16 KiB of code, 8 KiB printed.
    let batch = |from: usize, to: usize| {
        let calls = (from..to).map(|n| {
            let service = service.clone();
            async move {
                let code = format!("# {}\nprint('{n}' + 'y' * 8192)", "c".repeat(16 << 10));
                let request = CallRequest {
                    code,
                    timeout_secs: Some(60.0),
                    ..CallRequest::default()
                };
                call(&service, &request).await.status
            }
        });
        let statuses: Vec<RunStatus> = block_on(async {
            futures_util::stream::iter(calls)
                .buffer_unordered(pool_max)
                .collect()
                .await
        });
        assert!(
            statuses.iter().all(|s| *s == RunStatus::Success),
            "a call failed"
        );
    };
    batch(0, 2_000);
    let before = rss_mib();
    batch(2_000, 10_000);
    let after = rss_mib();
    eprintln!(
        "host peak memory: resident {before} MiB after 2,000 calls, {after} MiB after 10,000"
    );
    assert!(
        after <= before + 24,
        "host memory grew from {before} to {after} MiB over 8,000 calls"
    );
    block_on(service.shutdown());
}

engine_test! {
    fn tool_calls_and_answers_hold_no_more_than_the_runs_budget() {
        in_own_process("tool_calls_and_answers_hold_no_more_than_the_runs_budget", tool_calls);
    }
}

/// The flood and the measurement, in the child process.
fn flood() {
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

/// What the host may hold beyond a run's tool-call budget while a run
/// floods it with calls and answers: the largest answer a server sent,
/// before it can be refused (rmcp's line buffer, the parsed result, its
/// measurement: three times its 40 MiB of JSON), one 8 MiB answer being
/// read while another is measured, and the runtime's own (its threads'
/// malloc arenas, which CI's noisy runs saw reach ~90 MiB). Without the
/// budget the 64 answers alone would hold 512 MiB of JSON.
const TOOL_CALL_SLACK_MIB: u64 = 3 * 40 + 2 * 8 + 96;

/// The calls and answers, and the measurement, in the child process.
fn tool_calls() {
    let mut config = test_config();
    config.pool_max = 1;
    config.max_sessions = 0;
    config.memory_bytes = 512 << 20;
    config.tool_bytes_in_flight = 32 << 20;
    let budget_mib = (config.tool_bytes_in_flight >> 20) as u64;
    let proxy = Arc::new(Proxy::new(vec![fixture_server("fixture")]));
    let service = warmed(Service::with_proxy(config, proxy));
    let run = |code: &str| {
        let request = CallRequest {
            code: code.into(),
            servers: vec!["fixture".into()],
            timeout_secs: Some(90.0),
            ..CallRequest::default()
        };
        block_on(call(&service, &request))
    };
    // Warm up: the fixture started, one call and one big answer made.
    let warm = run("print(await mcp_fixture.big(mib=1))");
    assert_eq!(warm.status, RunStatus::Success, "{:?}", warm.error);
    let before = peak_rss_mib();
    // Arguments of ~0.45 MB of JSON that parse into ~19 MB each.
    let calls = run(r#"
import asyncio
pad = [0] * 150_000
async def one():
    try:
        await mcp_fixture.slow(seconds=2, pad=pad)
        return "answered"
    except MCPError as error:
        return "budget" if "MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT" in str(error) else "tool: " + str(error)[:80]
results = await asyncio.gather(*(one() for _ in range(64)))
print(results.count("budget"), "refused on the budget;", len(results) - results.count("budget"), "went to the server")
"#);
    let after_calls = peak_rss_mib() - before;
    assert_eq!(calls.status, RunStatus::Success, "{calls:#?}");
    let refused: u32 = calls
        .stdout
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused > 0 && refused < 64, "{}", calls.stdout);
    // Answers of 4 MiB of text each (FastMCP sends it twice: as text and
    // as structured content), 64 at once; then one of 20 MiB (40 MiB of
    // JSON), more than the whole budget.
    let answers = run(r#"
import asyncio
async def one(mib):
    try:
        return len(await mcp_fixture.big(mib=mib, seconds=1)) >> 20
    except MCPError as error:
        return "budget" if "MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT" in str(error) else str(error)[:80]
results = await asyncio.gather(*(one(4) for _ in range(64)))
print(results.count("budget"), "refused on the budget;", results.count(4), "answered whole;", await one(20))
"#);
    let growth = peak_rss_mib() - before;
    assert_eq!(answers.status, RunStatus::Success, "{answers:#?}");
    let words: Vec<&str> = answers.stdout.split_whitespace().collect();
    let (refused, whole): (u32, u32) = (words[0].parse().unwrap(), words[5].parse().unwrap());
    assert_eq!(refused + whole, 64, "{}", answers.stdout);
    assert_eq!(words.last(), Some(&"budget"), "{}", answers.stdout);
    eprintln!(
        "host peak memory grew {after_calls} MiB during 64 large calls and {growth} MiB with 64 \
         answers of 4 MiB and one of 20 MiB ({}; {}; budget {budget_mib} MiB)",
        calls.stdout.trim(),
        answers.stdout.trim()
    );
    assert!(
        growth < budget_mib + TOOL_CALL_SLACK_MIB,
        "host peak memory grew {growth} MiB; the run's tool-call budget is {budget_mib} MiB"
    );
    block_on(service.shutdown());
}

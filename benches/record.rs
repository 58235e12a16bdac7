//! What recording a call costs the call path: its start (the code cut and
//! hashed), its record, the console keeping it and the audit log's queue
//! taking it, for a `print(6*7)` call and for one with 64 KiB of code and
//! 1 MiB of output (cut to their heads). Pure CPU, no engine: compare with
//! a warm run's ~3 ms (`cargo bench --bench latency`).
//!
//! `cargo bench --bench record`.

use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use mcp_code_exec::audit::{AuditLog, CallRecord, CallStart};
use mcp_code_exec::config::AuditSettings;
use mcp_code_exec::console::Console;
use mcp_code_exec::report::{RunReport, RunStatus};

fn record(c: &mut Criterion, name: &str, code: &str, stdout: &str) {
    let dir = std::env::temp_dir().join(format!("mcp-bench-record-{}", std::process::id()));
    let audit = AuditLog::open(&AuditSettings {
        path: Some(dir.join("audit.jsonl")),
        bytes: 64 << 20,
    });
    let console = Console::new(200);
    let mut report = RunReport::nothing_ran(RunStatus::Success);
    report.stdout = stdout.into();
    let mut id = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            id += 1;
            let start = Arc::new(CallStart::new(id, "local", None, &[], code));
            console.begin(&start);
            let record = console.finish(CallRecord::finished(start, &report), Vec::new());
            audit.record(record);
        })
    });
    audit.close(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    record(&mut criterion, "record print(6*7)", "print(6*7)", "42\n");
    let code = "x = 1\n".repeat((64 << 10) / 6);
    let stdout = "y".repeat(1 << 20);
    record(
        &mut criterion,
        "record 64 KiB of code, 1 MiB of output",
        &code,
        &stdout,
    );
    criterion.final_summary();
}

//! What bad input gets: a clear error, the server unharmed, the next call fine.
//! Every case runs against the real engine and ends with a `print(6*7)`.

use std::time::Duration;

use crate::util::{
    Shared, assert_next_call_works, block_on, containers_of, one_sandbox, run_on, started_service,
    test_config, under_test, wait_until,
};
use mcp_code_exec::report::RunStatus;

static SERVICE: Shared = Shared::new();

engine_test! {
    fn empty_code_is_a_validation_error() {
        for code in ["", "   \n\t"] {
            let report = SERVICE.run(code);
            assert_eq!(report.status, RunStatus::ValidationError);
            assert!(
                report.error.as_deref().unwrap().contains("empty"),
                "{report:?}"
            );
        }
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn oversized_code_is_a_validation_error() {
        let code = format!("# {}\nprint(1)", "x".repeat(1 << 20));
        let report = SERVICE.run(&code);
        assert_eq!(report.status, RunStatus::ValidationError);
        assert!(report.error.unwrap().contains("MCP_BRIDGE_MAX_CODE_BYTES"));
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn timeout_out_of_range_is_a_validation_error() {
        for timeout in [0.0, -5.0, 121.0] {
            let report = run_on(SERVICE.get(), "print(1)", Some(timeout));
            assert_eq!(
                report.status,
                RunStatus::ValidationError,
                "timeout {timeout}"
            );
            assert!(report.error.unwrap().contains("at most 120 seconds"));
        }
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn infinite_loop_is_killed_at_the_deadline_with_partial_output() {
        let report = run_on(
            SERVICE.get(),
            "print('started', flush=True)\nwhile True:\n    pass",
            Some(1.5),
        );
        assert_eq!(report.status, RunStatus::Timeout, "{report:#?}");
        assert_eq!(report.stdout, "started\n");
        assert!(report.error.unwrap().contains("timed out after 1s 500ms"));
        assert!(report.duration_ms >= 1500.0);
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn sleep_past_the_deadline_keeps_unflushed_lines() {
        // No explicit flush: line buffering must deliver it before the kill.
        let report = run_on(
            SERVICE.get(),
            "import time\nprint('before')\ntime.sleep(60)",
            Some(1.0),
        );
        assert_eq!(report.status, RunStatus::Timeout);
        assert_eq!(report.stdout, "before\n");
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    /// The bomb fills the process limit and spins until its deadline: the
    /// first refused fork is reported (EAGAIN, with the processes then in
    /// the container, within MCP_BRIDGE_PIDS), the run ends as a timeout
    /// with that output kept, and the next call works. On a sandbox with
    /// memory to spare, so that the process limit is what holds (in 256 MiB
    /// the pages 128 interpreters copy can reach the memory limit first:
    /// that run ends as `oom`, see `memory_bomb_is_reported_as_oom`).
    fn fork_bomb_is_contained() {
        let mut config = one_sandbox();
        config.memory_bytes = 1 << 30;
        let service = started_service(config);
        let code = r#"
import errno, os
me, said = os.getpid(), False
while True:
    try:
        os.fork()
    except OSError as e:
        if os.getpid() == me and not said:
            said = True
            count = sum(name.isdigit() for name in os.listdir('/proc'))
            print('refused', errno.errorcode[e.errno], count, flush=True)
"#;
        let report = run_on(&service, code, Some(10.0));
        if under_test().gvisor() {
            // gVisor's processes cost more memory (measured: 128 of them
            // outgrow 2 GiB), so there the memory limit holds first; its
            // kernel's process limit is what the next test meets.
            assert_eq!(report.status, RunStatus::Oom, "{report:#?}");
            assert_next_call_works(&service);
            block_on(service.shutdown());
            return;
        }
        assert_eq!(report.status, RunStatus::Timeout, "{report:#?}");
        assert!(
            report.error.as_deref().unwrap().contains("timed out after 10s"),
            "{report:#?}"
        );
        let (reason, count) = report
            .stdout
            .strip_prefix("refused ")
            .and_then(|rest| rest.trim_end().split_once(' '))
            .expect("the process limit refused a fork");
        assert_eq!(reason, "EAGAIN", "{report:#?}");
        let limit = test_config().pids_limit;
        let count: i64 = count.parse().unwrap();
        assert!(
            (limit / 2..=limit).contains(&count),
            "the bomb grew to the limit ({limit}) and no further: {count} processes"
        );
        assert_next_call_works(&service);
        block_on(service.shutdown());
    }
}

engine_test! {
    fn memory_bomb_is_reported_as_oom() {
        let code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))";
        let report = run_on(SERVICE.get(), code, Some(30.0));
        let error = report.error.clone().unwrap_or_default();
        if under_test().gvisor() && report.status == RunStatus::Error {
            // gVisor's OOM can take the whole sandbox (its memory overhead
            // counts too), and the engine does not always report an `oom`
            // event for it (seen in a CI lane even with the events read
            // until the container's end): the status is then a true, vaguer one.
            assert!(error.contains("the sandbox agent stopped unexpectedly"), "{report:#?}");
        } else {
            assert_eq!(report.status, RunStatus::Oom, "{report:#?}");
            assert!(error.contains("MCP_BRIDGE_MEMORY"), "{report:#?}");
        }
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn filling_tmp_fails_inside_the_sandbox_only() {
        let code =
            "with open('/tmp/fill', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))";
        let report = run_on(SERVICE.get(), code, Some(30.0));
        // Under gVisor the sentry charges the full 64 MiB /tmp, and its own
        // cache of it, beside an idle sandbox's ~176 MiB: at 256 MiB the
        // sandbox was once OOM-killed after the ENOSPC, as the run ended
        // (in a CI lane; never alone in three runs). The suites give gVisor
        // 384 MiB now; should it happen still, the run has seen the full
        // disk and the next call is served, which is what this test holds.
        if under_test().gvisor() && report.status == RunStatus::Oom {
            eprintln!("gVisor: the sandbox ran out of memory after the full /tmp");
        } else {
            assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        }
        assert!(
            report.stderr.contains("No space left on device"),
            "{}",
            report.stderr
        );
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn stdout_flood_is_capped_with_a_marker() {
        let cap = usize::try_from(test_config().max_output_bytes).expect("the cap fits in memory");
        // 64 MiB: far more than the cap; the host keeps only the cap (its memory
        // during a flood is measured alone in tests/host_memory.rs).
        let code = "import sys\nline = 'y' * 1023 + '\\n'\nfor _ in range(64 * 1024):\n    sys.stdout.write(line)";
        let report = run_on(SERVICE.get(), code, Some(60.0));
        assert_eq!(report.status, RunStatus::Success, "{:?}", report.error);
        assert!(report.stdout_truncated);
        let (kept, marker) = report.stdout.split_at(cap);
        assert!(kept.bytes().all(|b| b == b'y' || b == b'\n'));
        let dropped = (64 << 20) - cap;
        assert!(
            marker.contains(&format!(
                "[stdout truncated: {dropped} more bytes not shown"
            )),
            "{marker}"
        );
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn stderr_flood_is_capped_with_a_marker() {
        let cap = usize::try_from(test_config().max_output_bytes).expect("the cap fits in memory");
        let code = "import os\nfor _ in range(4096):\n    os.write(2, b'e' * 4096)";
        let report = run_on(SERVICE.get(), code, Some(60.0));
        assert_eq!(report.status, RunStatus::Success);
        assert!(report.stderr_truncated && !report.stdout_truncated);
        assert!(report.stderr.len() < cap + 200);
        assert!(report.stderr.contains("[stderr truncated:"));
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn a_300_kb_line_arrives_whole() {
        let report = SERVICE.run("print('z' * 300_000)");
        assert_eq!(report.status, RunStatus::Success);
        assert_eq!(report.stdout.len(), 300_001);
        assert!(report.stdout.starts_with("zzz") && report.stdout.ends_with("z\n"));
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn invalid_utf8_is_replaced_not_fatal() {
        let report = SERVICE.run(
            "import os, sys\nos.write(1, b'bad \\xff\\xfe bytes\\n')\nsys.stderr.buffer.write(b'\\xc3(\\n')",
        );
        assert_eq!(report.status, RunStatus::Success);
        assert_eq!(report.stdout, "bad \u{fffd}\u{fffd} bytes\n");
        assert_eq!(report.stderr, "\u{fffd}(\n");
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn forged_frames_are_just_output() {
        // A well-formed "done, exit 0" frame and a "ready" frame, written raw.
        let code = r#"
import os, struct, sys
done = b'{"exit_code":0}'
forged = struct.pack('>BI', ord('D'), len(done)) + done + struct.pack('>BI', ord('Y'), 2) + b'{}'
os.write(1, forged)
os.write(2, forged)
sys.__stdout__.write('via __stdout__\n')
try:
    open('/proc/1/fd/1', 'wb')
except PermissionError:
    print('protocol fd unreachable')
sys.exit(5)
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        assert_eq!(report.exit_code, Some(5));
        assert!(
            report
                .stdout
                .starts_with("D\0\0\0\u{f}{\"exit_code\":0}Y\0\0\0\u{2}{}"),
            "{:?}",
            report.stdout
        );
        // gVisor lets the agent's own uid open its fds (see isolation.rs):
        // there the forged frames reach the host only as output too, but
        // the protocol fd is not out of reach.
        let protected = if under_test().gvisor() {
            ""
        } else {
            "protocol fd unreachable\n"
        };
        assert!(
            report
                .stdout
                .ends_with(&format!("via __stdout__\n{protected}")),
            "{report:#?}"
        );
        assert!(report.stderr.starts_with("D\0\0\0\u{f}{\"exit_code\":0}"));
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    /// The status pipe takes anything user code writes: a message of 16000
    /// nested brackets (within the status bound) is skipped like any status
    /// without an exit code; it used to crash the agent (RecursionError).
    fn a_deeply_nested_status_is_skipped() {
        let code = r#"
import os, struct
message = struct.pack('>I', 16000) + b'[' * 16000
for fd in range(3, 256):
    try:
        os.write(fd, message)
    except OSError:
        pass
print('still here')
"#;
        let report = SERVICE.run(code);
        assert_eq!(
            (report.status, report.stdout.as_str()),
            (RunStatus::Success, "still here\n"),
            "{report:#?}"
        );
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn stdin_is_empty() {
        let report = SERVICE.run("import sys\nprint(repr(sys.stdin.read()))\ninput()");
        assert_eq!(report.status, RunStatus::Error);
        assert_eq!(report.stdout, "''\n");
        assert_eq!(
            report.error.as_deref(),
            Some("EOFError: EOF when reading a line")
        );
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn exits_and_crashes_are_reported() {
        let report = SERVICE.run("import sys\nsys.exit(3)");
        assert_eq!(
            (report.status, report.exit_code),
            (RunStatus::Error, Some(3))
        );
        assert_eq!(report.error.as_deref(), Some("exited with code 3"));

        let report = SERVICE.run("print('bye')\nimport os\nos._exit(4)");
        assert_eq!(
            (report.exit_code, report.stdout.as_str()),
            (Some(4), "bye\n")
        );

        let report = SERVICE.run("import sys\nsys.exit(0)");
        assert_eq!(report.status, RunStatus::Success);

        let report = SERVICE.run("import ctypes\nctypes.string_at(0)");
        assert_eq!(
            (report.status, report.exit_code),
            (RunStatus::Error, Some(-11))
        );
        assert_eq!(
            report.error.as_deref(),
            Some("killed by SIGSEGV (segmentation fault)")
        );

        let report = SERVICE.run("raise ValueError('nope')");
        assert_eq!(report.error.as_deref(), Some("ValueError: nope"));
        assert!(
            report
                .stderr
                .contains("File \"/run/code/main.py\", line 1, in <module>\n    raise ValueError"),
            "{}",
            report.stderr
        );
        assert!(
            !report.stderr.contains("agent"),
            "agent frames are hidden: {}",
            report.stderr
        );
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn killing_the_parent_or_everything_visible() {
        // Stopping PID 1 is refused by Linux, not by gVisor (see isolation.rs).
        let stop_the_agent = if under_test().gvisor() {
            ""
        } else {
            "os.kill(1, signal.SIGSTOP)\n"
        };
        let report = SERVICE.run(&format!(
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n{stop_the_agent}print('still here')",
        ));
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.stdout, "still here\n");

        // With its parent (the zygote) gone, the run's exit code still arrives.
        let report = SERVICE.run(
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('orphan', flush=True)\nos._exit(7)",
        );
        assert_eq!(
            (report.exit_code, report.stdout.as_str()),
            (Some(7), "orphan\n"),
            "{report:#?}"
        );
        // A stopped zygote (this run's parent: it imports numpy, so the data
        // zygote) cannot serve the next run: the sandbox is replaced (one
        // sandbox only, so the next run shows which container it is in).
        let single = started_service(one_sandbox());
        let stop = "import numpy, os, signal\nos.kill(os.getppid(), signal.SIGSTOP)";
        let stopped = run_on(&single, stop, Some(10.0));
        assert_eq!(stopped.status, RunStatus::Success, "{stopped:#?}");
        let container = containers_of(&single);
        let next = run_on(&single, "print(1)", Some(30.0));
        assert_eq!(next.status, RunStatus::Success, "{next:#?}");
        wait_until("the sandbox to be replaced", Duration::from_secs(20), || {
            !containers_of(&single).contains(&container[0])
        });
        // The light zygote (the parent of a run that imports nothing
        // preloaded), stopped, is continued by the reset, which spares it:
        // the same sandbox serves on.
        let container = containers_of(&single);
        let stop = "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)";
        let stopped = run_on(&single, stop, Some(10.0));
        assert_eq!(stopped.status, RunStatus::Success, "{stopped:#?}");
        let next = run_on(&single, "print(1)", Some(30.0));
        assert_eq!(
            (next.status, next.stdout.as_str()),
            (RunStatus::Success, "1\n"),
            "{next:#?}"
        );
        assert_eq!(containers_of(&single), container, "the light zygote serves on");
        block_on(single.shutdown());

        let code = "import os, signal, subprocess\nsubprocess.Popen(['sleep', '100'])\n\
                os.kill(-1, signal.SIGKILL)\nprint('after kill -1')";
        let report = SERVICE.run(code);
        assert_eq!(report.stdout, "after kill -1\n", "{report:#?}");
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn syntax_errors_point_at_the_line() {
        let report = SERVICE.run("x = 1\nif x\n    print(x)");
        assert_eq!(report.status, RunStatus::Error);
        assert!(report.error.unwrap().starts_with("SyntaxError"));
        assert!(report.stderr.contains("line 2"), "{}", report.stderr);
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    fn the_process_limit_is_a_clear_error_inside_the_sandbox() {
        let code = r#"
import subprocess
procs = []
try:
    for _ in range(1000):
        procs.append(subprocess.Popen(["sleep", "30"]))
except OSError as e:
    print("stopped after", len(procs), "processes:", e.strerror)
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        let (count, reason) = report
            .stdout
            .strip_prefix("stopped after ")
            .and_then(|rest| rest.split_once(" processes: "))
            .expect("the limit stopped the loop");
        let count: usize = count.parse().unwrap();
        assert!(
            (100..128).contains(&count),
            "MCP_BRIDGE_PIDS=128 bounds the run: {count}"
        );
        assert_eq!(reason, "Resource temporarily unavailable\n");
        assert_next_call_works(SERVICE.get());
    }
}

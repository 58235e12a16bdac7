//! The user's MCP servers called from sandboxed Python, against real servers:
//! `mcp-server-time` (PyPI), `@modelcontextprotocol/server-everything` (npm)
//! and the project's fixture server (tests/e2e/fixture_server.py), all
//! installed by scripts/test.sh. No mock of MCP anywhere.

use std::sync::Arc;
use std::time::Duration;

use crate::util::{
    FIXTURE_SCRIPT, Shared, block_on, everything, fixture_server, one_sandbox, python, request,
    server, test_config, warmed,
};
use mcp_code_exec::call::call;
use mcp_code_exec::proxy::Proxy;
use mcp_code_exec::proxy::discovery::ServerDefinition;
use mcp_code_exec::report::{RunReport, RunStatus};
use mcp_code_exec::service::Service;

/// Separate fixture processes per test, so their counters don't mix.
const FIXTURES: [&str; 9] = [
    "fixture",
    "fixture-oversize",
    "fixture-concurrency",
    "fixture-cancel",
    "fixture-crash",
    "fixture-tools",
    "fixture-start-once",
    "fixture-refresh",
    "fixture-stderr",
];

/// The suite's service: every server above, the real ones and the broken.
static SERVICE: Shared = Shared::with(|| {
    let mut servers = vec![
        time_server(),
        server("everything", everything(), &["stdio"]),
    ];
    servers.extend(FIXTURES.iter().map(|name| fixture_server(name)));
    servers.push(server(
        "fixture-hang-list",
        python(),
        &[FIXTURE_SCRIPT, "--hang-tools-list"],
    ));
    let mut broken = server("broken", python(), &[]);
    broken.command = "/nonexistent/mcp-server".into();
    servers.push(broken);
    let mut config = test_config();
    config.pool_max = 6;
    Service::with_proxy(config, Arc::new(Proxy::new(servers)))
});

/// `mcp-server-time` (PyPI), installed beside the test Python.
fn time_server() -> ServerDefinition {
    server(
        "time",
        python().with_file_name("mcp-server-time"),
        &["--local-timezone", "UTC"],
    )
}

fn run(code: &str, servers: &[&str]) -> RunReport {
    let mut request = request(code, Some(60.0));
    request.servers = servers.iter().map(|s| s.to_string()).collect();
    let service = SERVICE.get();
    // Every wait of a run is bounded: the run's 60 s plus the proxy's start
    // timeouts (initialize 30 s, tools/list 10 s).
    let report = block_on(async {
        tokio::time::timeout(Duration::from_secs(120), call(service, &request)).await
    })
    .expect("every run is answered within its bounds");
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        report.stdout, report.stderr
    );
    report
}

fn run_ok(code: &str, servers: &[&str]) -> String {
    let report = run(code, servers);
    assert_eq!(report.status, RunStatus::Success, "{report:#?}");
    report.stdout
}

engine_test! {
    fn real_servers_are_called_and_chained() {
        let code = r#"
now = await mcp_time.get_current_time(timezone="Asia/Tokyo")
print(now["timezone"])
echoed = await mcp_everything.echo(message=f"it is {now['datetime']}")
print(echoed == f"Echo: it is {now['datetime']}")
print(await mcp_everything.get_sum(a=2, b=40))
"#;
        let stdout = run_ok(code, &["time", "everything"]);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "Asia/Tokyo");
        assert_eq!(lines[1], "True");
        assert!(lines[2].contains("42"), "{stdout}");
    }
}

engine_test! {
    fn all_three_access_patterns_and_the_runtime_api() {
        let code = r#"
from mcp.servers.time import get_current_time, convert_time
import mcp.runtime
a = await mcp_servers["time"].get_current_time(timezone="UTC")
b = await mcp_time.get_current_time(timezone="UTC")
c = await get_current_time(timezone="UTC")
print(a["timezone"], b["timezone"], c["timezone"])
print(runtime is mcp.runtime, runtime.list_servers())
print(runtime.discovered_servers()[:3])
print(runtime.list_tools("time"))
print(runtime.describe_server("time")["tools"][0]["name"])
print(runtime.query_tool_docs("time", "convert_time", detail="full")[0]["input_schema"]["required"])
print([d["tool"] for d in runtime.search_tool_docs("convert between timezones", limit=1)])
print("time (mcp_time): get_current_time, convert_time" in runtime.capability_summary())
print(len(runtime.list_loaded_server_metadata()))
print(runtime.call_tool_sync("time", "get_current_time", {"timezone": "UTC"})["timezone"])
raw = await runtime.call_tool_raw("time", "get_current_time", {"timezone": "UTC"})
print(sorted(raw))
print("Convert time between timezones" in convert_time.__doc__, "source_timezone: str" in convert_time.__doc__)
import inspect
print(inspect.signature(convert_time))
"#;
        let stdout = run_ok(code, &["time"]);
        assert_eq!(
            stdout,
            "UTC UTC UTC\nTrue ['time']\n['time', 'everything', 'fixture']\n\
         ['get_current_time', 'convert_time']\nget_current_time\n['source_timezone', 'time', 'target_timezone']\n\
         ['convert_time']\nTrue\n1\nUTC\n['content', 'isError']\nTrue True\n(*, source_timezone: str, time: str, target_timezone: str)\n"
        );
    }
}

engine_test! {
    fn calls_run_concurrently_while_output_keeps_draining() {
        let code = r#"
import asyncio, sys
async def chatter():
    for i in range(2000):
        print("line", i)
        await asyncio.sleep(0)
calls = [mcp_fixture_concurrency.slow(seconds=0.5) for _ in range(10)]
results = await asyncio.gather(chatter(), *calls)
stats = await mcp_fixture_concurrency.stats()
print("max in flight", stats["max_in_flight"], "completed", stats["completed"])
"#;
        let stdout = run_ok(code, &["fixture-concurrency"]);
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("line ")).count(),
            2000
        );
        assert!(
            stdout.ends_with("max in flight 10 completed 10\n"),
            "{stdout}"
        );
    }
}

engine_test! {
    fn results_of_16_mib_pass_intact() {
        let code = r#"
big = await mcp_fixture.big(mib=16)
print(len(big), big == "0123456789abcdef" * (16 * 65536))
"#;
        assert_eq!(run_ok(code, &["fixture"]), "16777216 True\n");
    }
}

engine_test! {
    /// An answer over 64 MiB (the largest message read from a server) fails
    /// its call at once, not at the run's deadline, and the server is
    /// restarted for the next call (a call that waited for the deadline
    /// would end the run as a timeout, with nothing printed).
    fn an_answer_over_the_message_limit_fails_at_once_and_the_server_restarts() {
        let code = r#"
first = await mcp_fixture_oversize.pid()
try:
    await mcp_fixture_oversize.big(mib=65)
except MCPError as e:
    print("refused:", "over 64 MiB" in str(e))
print("restarted:", await mcp_fixture_oversize.pid() != first)
"#;
        let mut request = request(code, Some(60.0));
        request.servers = vec!["fixture-oversize".into()];
        let report = block_on(call(SERVICE.get(), &request));
        assert_eq!(report.stdout, "refused: True\nrestarted: True\n", "{report:#?}");
    }
}

engine_test! {
    fn a_timed_out_run_cancels_its_calls_in_flight() {
        let mut timed_out = request("await mcp_fixture_cancel.slow(seconds=30)", Some(1.0));
        timed_out.servers = vec!["fixture-cancel".into()];
        let service = SERVICE.get();
        let report = block_on(call(service, &timed_out));
        assert_eq!(report.status, RunStatus::Timeout, "{report:#?}");
        let code = r#"
import asyncio
for _ in range(50):
    stats = await mcp_fixture_cancel.stats()
    if stats["cancelled"]:
        break
    await asyncio.sleep(0.1)
print(stats["cancelled"], stats["completed"], stats["in_flight"])
"#;
        assert_eq!(run_ok(code, &["fixture-cancel"]), "1 0 0\n");
    }
}

engine_test! {
    fn errors_are_clear() {
        let code = r#"
try:
    await mcp_fixture.fail(message="boom")
except MCPError as e:
    print(type(e).__name__, e.server, e.tool, "boom" in str(e))
try:
    await runtime.call_tool("time", "get_current_time", {})
except MCPError as e:
    print("not in this run:", "not available in this run" in str(e))
"#;
        assert_eq!(
            run_ok(code, &["fixture"]),
            "MCPError fixture fail True\nnot in this run: True\n"
        );

        let report = run("print(1)", &["no-such-server"]);
        assert_eq!(report.status, RunStatus::ValidationError);
        let error = report.error.unwrap();
        assert!(
            error.contains("unknown MCP server \"no-such-server\"")
                && error.contains("time, everything, fixture"),
            "{error}"
        );
    }
}

engine_test! {
    fn a_crashed_server_is_restarted_on_next_use() {
        let code = r#"
try:
    await mcp_fixture_crash.crash()
except MCPError as e:
    print("crashed:", e.server)
"#;
        assert_eq!(run_ok(code, &["fixture-crash"]), "crashed: fixture-crash\n");
        let after = run_ok(
            "print((await mcp_fixture_crash.structured(name='x'))['greeting'])",
            &["fixture-crash"],
        );
        assert_eq!(after, "hello x\n");
    }
}

engine_test! {
    fn a_tool_list_change_reaches_the_next_run() {
        let before = run_ok(
            "print('late_tool' in runtime.list_tools('fixture-tools'))",
            &["fixture-tools"],
        );
        assert_eq!(before, "False\n");
        run_ok(
            "print(await mcp_fixture_tools.add_tool(name='late_tool'))",
            &["fixture-tools"],
        );
        let code = "print(runtime.list_tools('fixture-tools')[-1])\nprint(await mcp_fixture_tools.late_tool())";
        assert_eq!(
            run_ok(code, &["fixture-tools"]),
            "late_tool\nI am late_tool\n"
        );
    }
}

engine_test! {
    fn a_warm_sandbox_serves_any_combination_of_servers() {
        let config = one_sandbox();
        let service = warmed(Service::with_proxy(
            config,
            Arc::new(Proxy::new(vec![time_server()])),
        ));
        let one = |servers: Vec<String>| {
            let mut r = request(
                "print(runtime.list_servers(), 'mcp_time' in globals())",
                None,
            );
            r.servers = servers;
            block_on(call(&service, &r))
        };
        assert_eq!(one(vec!["time".into()]).stdout, "['time'] True\n");
        assert_eq!(one(vec![]).stdout, "[] False\n");
        assert_eq!(one(vec!["time".into()]).stdout, "['time'] True\n");
        block_on(service.shutdown());
    }
}

engine_test! {
    fn concurrent_first_uses_start_a_server_once() {
        let code = "print(await mcp_fixture_start_once.pid())";
        let mut request = request(code, Some(60.0));
        request.servers = vec!["fixture-start-once".into()];
        let service = SERVICE.get();
        let (a, b) = block_on(async { tokio::join!(call(service, &request), call(service, &request)) });
        assert_eq!(a.status, RunStatus::Success, "{a:#?}");
        assert_eq!(
            a.stdout, b.stdout,
            "both calls reached the same server process"
        );
    }
}

engine_test! {
    fn a_server_that_cannot_start_is_a_clear_error() {
        let report = run("print(1)", &["broken"]);
        assert_eq!(report.status, RunStatus::Error);
        let error = report.error.unwrap();
        assert!(
            error.contains("MCP server \"broken\" could not be started")
                && error.contains("/nonexistent/mcp-server"),
            "{error}"
        );
        // The next attempt within the backoff says so instead of retrying at once.
        let again = run("print(1)", &["broken"]).error.unwrap();
        assert!(again.contains("next attempt in"), "{again}");
    }
}

engine_test! {
    fn calls_in_flight_per_run_are_bounded() {
        let code = r#"
import asyncio
results = await asyncio.gather(*(mcp_fixture.slow(seconds=0.3) for _ in range(100)), return_exceptions=True)
errors = [r for r in results if isinstance(r, MCPError)]
print(len(results) - len(errors), len(errors), "more than 64 MCP calls in flight" in str(errors[0]))
"#;
        assert_eq!(run_ok(code, &["fixture"]), "64 36 True\n");
    }
}

/// Python for a run that talks to its call pipe by hand, as hostile code
/// can, past the `mcp` package's own checks: `ask(line)` writes one call
/// line and returns the answer line to it, parsed.
const BY_HAND: &str = r#"
import json, os
channel = runtime._channel
def ask(line):
    view = memoryview(line)
    while view:
        view = view[os.write(channel._out, view):]
    answer = b""
    while not answer.endswith(b"\n"):
        answer += os.read(channel._in, 1 << 16)
    return json.loads(answer)
"#;

engine_test! {
    /// The host enforces the run's servers itself: a call written by hand
    /// to a server the run did not ask for gets the host's refusal (the
    /// `mcp` package's own check is not in the way).
    fn the_host_refuses_a_server_the_run_did_not_ask_for() {
        let code = format!(
            "{BY_HAND}print(ask(b'{{\"id\":900001,\"server\":\"other\",\"tool\":\"x\",\"arguments\":{{}}}}\\n'))"
        );
        assert_eq!(
            run_ok(&code, &["fixture"]),
            "{'id': 900001, 'ok': False, 'error': 'server \"other\" is not available in this run; \
             pass it in run_python(servers=[...])'}\n"
        );
    }
}

engine_test! {
    /// A call over 16 MiB is refused with a clear error and the run goes
    /// on: by the `mcp` package, and, written by hand past it, by the agent
    /// (which answers it by its id and drops it as it comes; the host never
    /// sees it).
    fn an_oversized_call_is_a_clear_error_and_the_run_goes_on() {
        let code = r#"
try:
    await mcp_fixture.structured(name="x" * (17 << 20))
except MCPError as e:
    print("refused:", "16 MiB" in str(e))
print((await mcp_fixture.structured(name="small"))["greeting"])
"#;
        assert_eq!(run_ok(code, &["fixture"]), "refused: True\nhello small\n");
        let by_hand = format!(
            "{BY_HAND}line = b'{{\"id\":900002,\"server\":\"fixture\",\"tool\":\"structured\",\"arguments\":{{\"name\":\"' + b'x' * (17 << 20) + b'\"}}}}\\n'\n\
             answer = ask(line)\n\
             print(answer['id'], answer['ok'], answer['error'])\n\
             print((await mcp_fixture.structured(name='small'))['greeting'])"
        );
        assert_eq!(
            run_ok(&by_hand, &["fixture"]),
            "900002 False the call is over 16 MiB, the most a call may carry: refused\nhello small\n"
        );
    }
}

engine_test! {
    /// Host writes never stop the draining of the agent's output: answers of
    /// 4 × 8 MiB go in while the code keeps both streams full, on a pool of one
    /// sandbox. Before, the host wrote each answer inline, outside the run's
    /// deadline, while the agent was blocked writing output nobody read: the
    /// run hung for good and the pool's only sandbox with it.
    fn big_answers_while_the_code_floods_both_streams() {
        let mut config = test_config();
        config.pool_min_idle = 1;
        config.pool_max = 1;
        // Four 8 MiB answers at once, as JSON and as strings, in the agent and the code.
        config.memory_bytes = 512 << 20;
        // FastMCP sends each twice (text and structured): 4 x 16 MiB in flight.
        config.tool_bytes_in_flight = 128 << 20;
        // Output must keep flowing while the answers are written: a cap the
        // flood reaches early would stop it (the agent counts, not sends, the rest).
        config.max_output_bytes = 256 << 20;
        let fixture = fixture_server("fixture-duplex");
        let service = warmed(Service::with_proxy(config, Arc::new(Proxy::new(vec![fixture]))));
        // The answers come back together after 1 s; the code floods both
        // streams from just before that until it has them all.
        let code = r#"
import asyncio, os, time
started = time.monotonic()
calls = [asyncio.ensure_future(mcp_fixture_duplex.big(mib=8, seconds=1)) for _ in range(4)]
chunk = b"x" * 65536
while time.monotonic() - started < 0.8:
    await asyncio.sleep(0.05)
flooded = 0
while not all(call.done() for call in calls):
    os.write(1, chunk)
    os.write(2, chunk)
    flooded += 1
    await asyncio.sleep(0)
assert [len(call.result()) for call in calls] == [8 << 20] * 4
assert flooded > 0
"#;
        let mut flood = request(code, Some(60.0));
        flood.servers = vec!["fixture-duplex".into()];
        let report = block_on(async {
            tokio::time::timeout(Duration::from_secs(90), call(&service, &flood)).await
        });
        let report = report.expect("the run ends by its 60 s deadline at the latest");
        // Success means the code checked all four answers.
        assert!(
            matches!(report.status, RunStatus::Success | RunStatus::Timeout),
            "{:?}: {:?}",
            report.status,
            report.error
        );
        let next = block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                call(&service, &request("print(6*7)", Some(20.0))),
            )
            .await
        });
        let next = next.expect("the next call is answered");
        assert_eq!(next.status, RunStatus::Success, "{next:#?}");
        assert_eq!(next.stdout, "42\n");
        block_on(service.shutdown());
    }
}

engine_test! {
    fn a_server_whose_tools_list_hangs_is_a_clear_error() {
        let report = run("print(1)", &["fixture-hang-list"]);
        assert_eq!(report.status, RunStatus::Error, "{report:#?}");
        let error = report.error.unwrap();
        assert!(
            error.contains("MCP server \"fixture-hang-list\" could not be started")
                && error.contains("no answer to tools/list within 10s"),
            "{error}"
        );
    }
}

engine_test! {
    /// A server that stops answering tools/list after announcing a change: the
    /// run that refreshes waits at most the timeout and keeps the previous list;
    /// a run that starts meanwhile is not held up by it at all.
    fn a_hung_tools_refresh_holds_up_no_other_run() {
        run_ok(
            "print(await mcp_fixture_refresh.hang_tools_list())",
            &["fixture-refresh"],
        );
        let code = "print((await mcp_fixture_refresh.structured(name='x'))['greeting'])";
        let mut refreshing = request(code, Some(60.0));
        refreshing.servers = vec!["fixture-refresh".into()];
        let started = std::time::Instant::now();
        let (first, second) = block_on(async {
            let first = async {
                let report = call(SERVICE.get(), &refreshing).await;
                (report, started.elapsed())
            };
            let second = async {
                // Starts once the first run is waiting for the hung refresh.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let report = call(SERVICE.get(), &refreshing).await;
                (report, started.elapsed())
            };
            tokio::time::timeout(Duration::from_secs(60), async {
                tokio::join!(first, second)
            })
            .await
            .expect("both runs are answered within the refresh timeout")
        });
        for (report, _) in [&first, &second] {
            assert_eq!(report.status, RunStatus::Success, "{report:#?}");
            assert_eq!(report.stdout, "hello x\n");
        }
        // The first run waited out the 10 s refresh timeout; the second, started
        // 2 s in, did not wait for it.
        assert!(
            second.1 + Duration::from_secs(5) < first.1,
            "the second run waited for the first one's refresh: done after {:?} vs {:?}",
            second.1,
            first.1
        );
    }
}

engine_test! {
    fn a_server_writing_any_bytes_to_stderr_keeps_serving() {
        let code = r#"
for _ in range(2):
    print(await mcp_fixture_stderr.noisy_stderr(kib=512))
"#;
        assert_eq!(
            run_ok(code, &["fixture-stderr"]),
            "wrote 512 KiB to stderr\nwrote 512 KiB to stderr\n"
        );
    }
}
